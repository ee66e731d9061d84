"""ONNX import: an ONNX model as nodes of a kernelflow graph (the ops the exporter writes; onnx imported lazily).

`import_onnx` walks the model's nodes in order and builds each with kernelflow's own op
builders through the table of `kernelflow.interop.onnx_import_ops`, so the imported graph runs,
differentiates and trains like any other: graph inputs become placeholders (a symbolic dim is
None), float initializers of rank >= 1 become variables (trainable weights, named after the
initializer) and the others constants. Values ONNX passes as tensors but kernelflow needs as
static attributes (a Reshape's shape, a Slice's bounds, reduction axes) must be initializers
or Constant nodes, as the exporter writes them. ``If`` becomes `kf.cond`, ``Loop`` a
`kf.while_loop` (with the iteration count and the condition as loop variables), ``Scan`` a
`kf.scan`-style loop; their bodies are traced as functions, reading outer values by name.

Contents: OnnxImportError, ImportedModel, import_onnx.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..graph.ir import Graph, Tensor


class OnnxImportError(InvalidArgumentError):
    """An ONNX model kernelflow cannot build: an op it does not import, or a form it cannot express."""


@dataclass
class ImportedModel:
    """What `import_onnx` built.

    Attributes:
        graph: the kernelflow graph the nodes went into.
        inputs: {ONNX input name: placeholder}.
        outputs: {ONNX output name: tensor}.
        variables: {initializer name: variable} (the weights, trainable).
    """

    graph: Graph
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    variables: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Init:
    """An initializer: static for the ops that need a static value, a constant or variable (named after
    it, made once) for the others."""

    name: str
    value: np.ndarray


@dataclass
class ShapeOf:
    """The value of ONNX ``Shape(x)``: kept symbolic for the Reshape / Expand that read it."""

    of: Tensor


class Env:
    """ONNX value name -> kernelflow value, one per graph scope (a body sees its outer scopes).

    A value is a Tensor, an `Init`, a static numpy array (a Constant's), or a `ShapeOf`; the
    static ones become tensors on first use as one.
    """

    def __init__(self, onnx: Any, graph: Graph, parent: Env | None = None, trainable: bool = True):
        self.onnx = onnx
        self.graph = graph
        self.parent = parent
        self.trainable = trainable
        self.values: dict[str, Any] = {}
        self.variables: dict[str, Tensor] = parent.variables if parent else {}
        self.node: Any = None  # the ONNX node being built (for messages)
        self.made: dict[str, Tensor] = {}  # initializer name -> its tensor (the root's)

    def fail(self, what: str) -> OnnxImportError:
        n = self.node
        where = f"node '{n.name or n.output[0]}' ({n.op_type})" if n is not None else "import_onnx"
        return OnnxImportError(f"import_onnx: {where}: {what}")

    def lookup(self, name: str) -> Any:
        env: Env | None = self
        while env is not None:
            if name in env.values:
                return env.values[name]
            env = env.parent
        raise self.fail(f"reads value '{name}', which no earlier node, input or initializer defines")

    def tensor(self, v: Any) -> Tensor:
        """Value ``v`` as a tensor; an initializer becomes a variable or constant, once."""
        if isinstance(v, Tensor):
            return v
        if isinstance(v, ShapeOf):
            raise self.fail("uses Shape(...) other than as the shape of a Reshape or Expand")
        root = self
        while root.parent is not None:
            root = root.parent
        if not isinstance(v, Init):
            return root.graph.constant(np.asarray(v))
        made = root.made.get(v.name)
        if made is None:
            arr = v.value
            if self.trainable and arr.dtype.kind == "f" and arr.ndim >= 1:
                made = self.variables[v.name] = root.graph.variable(arr, name=v.name)
            else:
                made = root.graph.constant(arr)
            root.made[v.name] = made
        return made

    def static(self, v: Any, what: str) -> np.ndarray:
        """``v`` as a numpy array known now (an initializer or Constant)."""
        if isinstance(v, Init):
            return v.value
        if isinstance(v, (np.ndarray, np.generic)):
            return np.asarray(v)
        if isinstance(v, Tensor) and v.op.name == "constant":
            return np.asarray(v.attrs["value"])
        raise self.fail(f"needs its {what} as an initializer or Constant (kernelflow takes it as a static "
                        f"attribute); got a value computed at run time")

    def dtype(self, elem_type: int) -> str:
        return np.dtype(self.onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name

    def attrs(self, node: Any) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def run(self, nodes: Any) -> None:
        """Build every node of an ONNX graph in order."""
        from .onnx_import_ops import IMPORTERS

        for node in nodes:
            self.node = node
            if node.domain not in ("", "ai.onnx"):
                raise self.fail(f"is in domain '{node.domain}'; only the default ONNX domain is imported")
            fn = IMPORTERS.get(node.op_type)
            if fn is None:
                raise self.fail("has no kernelflow form (kernelflow imports the ONNX ops its exporter writes: "
                                "see docs/onnx.md)")
            args = [self.lookup(i) if i else None for i in node.input]
            try:
                outs = fn(self, node, args, self.attrs(node))
            except OnnxImportError:
                raise
            except InvalidArgumentError as e:
                raise self.fail(e.message) from e
            for name, v in zip(node.output, outs):
                if name:
                    self.values[name] = v
        self.node = None

    def body(self, graph_proto: Any, args: list) -> list[Tensor]:
        """Build a body graph (If branch, Loop / Scan body) in the current trace, inputs bound to ``args``."""
        inner = Env(self.onnx, self.graph, self, self.trainable)
        for vi, a in zip(graph_proto.input, args):
            inner.values[vi.name] = a
        for init in graph_proto.initializer:
            inner.values[init.name] = Init(init.name, self.onnx.numpy_helper.to_array(init))
        inner.run(graph_proto.node)
        return [inner.tensor(inner.lookup(o.name)) for o in graph_proto.output]


def _load(model: Any, onnx: Any) -> Any:
    if isinstance(model, (str, os.PathLike)):
        try:
            return onnx.load(os.fspath(model), load_external_data=False)
        except Exception as e:  # OSError, or protobuf's DecodeError for a file that is not ONNX
            raise InvalidArgumentError(f"import_onnx: cannot read an ONNX model from '{model}': {e}") from e
    if isinstance(model, onnx.ModelProto):
        return model
    raise InvalidArgumentError(f"import_onnx: expected a path or an onnx.ModelProto; got {type(model).__name__}")


def import_onnx(model: Any, graph: Graph, trainable: bool = True) -> ImportedModel:
    """Build an ONNX model's nodes into ``graph``.

    Args:
        model: a ``.onnx`` path or an ``onnx.ModelProto``.
        graph: the kernelflow graph to add to (``rt.graph("name")``).
        trainable: float initializers of rank >= 1 become variables (else all are constants).

    Returns:
        An `ImportedModel`: its ``inputs`` (placeholders) and ``outputs`` by their ONNX names.

    Raises:
        OnnxImportError: naming the ONNX node: an op with no kernelflow form (the importer
            covers the ops the exporter writes), or a form it cannot express.
        InvalidArgumentError: an unreadable file.
        FailedPreconditionError: the ``onnx`` package is not installed.

    Example:
        >>> m = kf.import_onnx("digits.onnx", rt.graph("imported"))
        >>> m.graph.run(m.outputs["probabilities"], feed={m.inputs["image"]: batch})
    """
    try:
        import onnx
    except ImportError as e:  # an optional dependency
        raise FailedPreconditionError("import_onnx needs the 'onnx' package: pip install 'kernelflow[onnx]'") from e
    m = _load(model, onnx)
    env = Env(onnx, graph, trainable=trainable)
    for init in m.graph.initializer:
        env.values[init.name] = Init(init.name, onnx.numpy_helper.to_array(init))
    inputs = {}
    for vi in m.graph.input:
        if vi.name in env.values:
            continue  # an initializer listed as an input too (older exporters)
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        inputs[vi.name] = env.values[vi.name] = graph.placeholder(shape, env.dtype(tt.elem_type), name=vi.name)
    env.run(m.graph.node)
    outputs = {o.name: env.tensor(env.lookup(o.name)) for o in m.graph.output}
    return ImportedModel(graph, inputs, outputs, dict(env.variables))
