"""Kernels of the linear-algebra ops (same order as graph/ops/linalg.py)."""

from __future__ import annotations

from ..graph.ops import linalg as L
from .registry import kernel, xp_kernel

xp_kernel(L.matmul_op, "matmul")

# a @ W.T with few rows of a and a long inner dimension: OpenBLAS (0.3.31, SkylakeX kernels)
# runs the product as (W @ a.T).T 1.3-2x faster (32x512 @ (512x512).T: 0.20 vs 0.31 ms;
# docs/compiler.md). Below ~128 inner elements the gain is smaller than what the result's
# column-major layout costs the next elementwise kernel.
_FEW_ROWS = 128
_LONG_INNER = 128


@kernel(L.matmul_op, backend="numpy")
def matmul_numpy_kernel(xp, a, b):
    # The result of the swapped form is a transposed (Fortran-ordered) view; kernels take any layout.
    if (a.ndim == 2 and b.ndim == 2 and a.shape[0] <= _FEW_ROWS and a.shape[1] >= _LONG_INNER
            and a.dtype == b.dtype and a.dtype.kind == "f" and a.flags.c_contiguous and b.flags.f_contiguous
            and not b.flags.c_contiguous):
        return xp.matmul(b.T, a.T).T
    return xp.matmul(a, b)


# Below this many elements, planning a contraction order costs more than it saves (~10 us).
_OPTIMIZE_MIN_SIZE = 4096


@kernel(L.einsum_op)
def einsum_kernel(xp, *operands, subscripts):
    # optimize lets numpy route contractions through BLAS matmul (about 9x faster on
    # 'bhqd,bhkd->bhqk' at 8x8x128x64) and pick a good order for three or more operands.
    optimize = len(operands) > 2 or (len(operands) == 2 and max(o.size for o in operands) >= _OPTIMIZE_MIN_SIZE)
    return xp.einsum(subscripts, *operands, optimize=optimize)
