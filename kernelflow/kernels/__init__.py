"""Op kernels: numpy always, CuPy for nodes on a GPU. Imports cupy only when first asked."""

from .registry import array_module, get_kernel, has_kernel, kernel

__all__ = ["kernel", "get_kernel", "has_kernel", "array_module"]
