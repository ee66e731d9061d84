"""kernelflow: a dataflow-graph deep-learning runtime built for Jupyter.

Example:
    >>> import kernelflow as kf
    >>> rt = kf.connect("inproc")
    >>> g = rt.graph("demo")
    >>> x = g.placeholder((None, 3), "float32", name="x")
    >>> y = kf.sum(x * 2.0, axis=1)
"""

from . import errors, nn
from ._version import __version__
from .client import Runtime, connect
from .client.model import load_model
from .graph import Graph, Tensor, Variable, gradients
from .graph.control_flow import cond, fori_loop, map_fn, scan, switch_case, while_loop
from .graph.ops import *  # builders: add, matmul, relu, softmax_cross_entropy, ...
from .graph.ops import __all__ as _ops_all
from .graph.ops import summary
from .graph.shapes import canonical_dtype as as_dtype
from .nn import callbacks, init, layers, losses, optim
from .nn import nn_models as models
from .nn.layer_base import Input
from .nn.models import Model, Sequential, set_runtime_factory

set_runtime_factory(connect)

__all__ = ["errors", "connect", "load_model", "Runtime", "Graph", "Tensor", "Variable", "gradients", "init",
           "layers", "optim", "losses", "callbacks", "models", "nn", "Input", "Model", "Sequential", "as_dtype",
           "__version__", "summary", "cond", "switch_case", "while_loop", "scan", "map_fn",
           "fori_loop", "import_onnx"] + list(_ops_all)


def import_onnx(model: object, graph: Graph, trainable: bool = True) -> object:
    """Build an ONNX model (a path or ModelProto) into ``graph``; see `kernelflow.interop.import_onnx`.

    Returns:
        An `kernelflow.interop.ImportedModel` with ``inputs`` and ``outputs`` by ONNX name.
    """
    from .interop import import_onnx as build  # lazily: onnx is an optional dependency

    return build(model, graph, trainable)


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext kernelflow``: register the ``%kf`` magic."""
    from .extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext kernelflow``: remove the ``%kf`` magic."""
    from .extension import unload_ipython_extension as unload

    unload(ipython)


def __getattr__(name: str) -> object:
    # kf.widgets imports ipywidgets/anywidget: load it on first use, not with `import kernelflow`.
    if name == "widgets":
        import importlib

        return importlib.import_module(".widgets", __name__)
    raise AttributeError(f"module 'kernelflow' has no attribute {name!r}")
