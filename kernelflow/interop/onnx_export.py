"""ONNX export: the inference subgraph of a kernelflow graph as an ONNX model (onnx, imported lazily).

The subgraph is the one `g.export` writes (`kernelflow.graph.inference`: pruned at the
inputs, training flags bound to False, dropout folded away). Placeholders become graph
inputs named by the signature keys, with a dim that is None kept symbolic (``batch`` for the
first), so the batch size stays free; variables become initializers holding the values
given; each kernelflow node becomes the ONNX nodes of `kernelflow.interop.onnx_ops`, named
after it. The model passes ``onnx.checker`` (with shape inference) before a byte is written,
and the file appears whole (temp file, then rename) or not at all.

Contents: to_onnx, export_onnx, DEFAULT_OPSET (OnnxExportError and OnnxBuilder: `onnx_builder`).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..graph.inference import InferenceNode, inference_nodes
from ..graph.ir import Graph, Tensor
from . import onnx_control, onnx_recurrent  # noqa: F401  (register their converters in the table)
from .onnx_builder import OnnxBuilder, OnnxExportError, move_initializers, prune

DEFAULT_OPSET = 18
"""ONNX opset of the exports: every op we use has its current form there (Reduce* take axes
as an input from 18 on), and onnxruntime >= 1.14 runs it."""


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as e:  # an optional dependency
        raise FailedPreconditionError("export_onnx needs the 'onnx' package: pip install 'kernelflow[onnx]'") from e
    return onnx


def _resolve(graph: Graph, m: Any, what: str) -> dict[str, Tensor]:
    if not isinstance(m, Mapping) or not m:
        raise InvalidArgumentError(f"export_onnx: {what} must be a non-empty dict of name -> tensor; got {m!r}")
    out = {}
    for k, t in m.items():
        if not isinstance(k, str) or not k:
            raise InvalidArgumentError(f"export_onnx: {what} keys must be non-empty strings; got {k!r}")
        if isinstance(t, str):
            t = graph[t]
        if not isinstance(t, Tensor) or t.graph is not graph:
            raise InvalidArgumentError(f"export_onnx: {what}['{k}'] must be a tensor of graph '{graph.name}'; "
                                       f"got {t!r}")
        out[k] = t
    return out


def _dims(shape: tuple, key: str) -> list:
    return [d if d is not None else ("batch" if i == 0 else f"{key}_dim{i}") for i, d in enumerate(shape)]


def _signature(graph: Graph, inputs: Any, outputs: Any) -> tuple[dict, dict, list[InferenceNode]]:
    """The resolved inputs and outputs and the inference plan between them."""
    ins, outs = _resolve(graph, inputs, "inputs"), _resolve(graph, outputs, "outputs")
    plan = inference_nodes(list(outs.values()), list(ins.values()), "export_onnx")
    if len(set(ins) | set(outs)) != len(ins) + len(outs):
        raise InvalidArgumentError(f"export_onnx: input and output names must differ; both have "
                                   f"{sorted(set(ins) & set(outs))}")
    return ins, outs, plan


def _emit_plan(b: OnnxBuilder, plan: list[InferenceNode], ins: dict, keys: set,
               variables: Mapping[str, np.ndarray] | None) -> tuple[list, dict[int, str]]:
    """The main graph's inputs and nodes; returns (input ValueInfos, {id(node): ONNX value name})."""
    input_key = {id(t): k for k, t in ins.items()}
    names: dict[int, str] = {}
    for item in plan:  # value names are the node names, unless one is an input or output key
        n = item.node
        names[id(n)] = input_key.get(id(n)) or (n.name if n.name not in keys else f"{n.name}:kf")
    b.reserve(list(names.values()) + list(keys))
    b.names = names
    graph_inputs = []
    for item in plan:
        n, name = item.node, names[id(item.node)]
        if item.role == "input":
            graph_inputs.append(b.onnx.helper.make_tensor_value_info(name, b.onnx_dtype(n.dtype), _dims(n.shape, name)))
        elif item.role == "fold":
            assert item.branch is not None
            b.op("Identity", [names[id(item.branch)]], name)
        elif item.role == "flag":
            b.initializer(name, np.asarray(False))
        elif n.op.name == "variable":
            value = variables.get(n.name) if variables is not None else n.attrs.get("initial")
            if not isinstance(value, np.ndarray):
                raise InvalidArgumentError(f"export_onnx: no value for variable '{n.name}'", node=n.name)
            b.initializer(name, value.astype(n.dtype, copy=False))
        else:
            b.emit(n, [names[id(i)] for i in n.inputs], name)
    return graph_inputs, names


def to_onnx(graph: Graph, inputs: Mapping[str, Any], outputs: Mapping[str, Any],
            variables: Mapping[str, np.ndarray] | None = None, opset: int = DEFAULT_OPSET) -> Any:
    """The ONNX ``ModelProto`` of the inference subgraph from ``inputs`` to ``outputs``, checked.

    Args:
        graph: the graph (any `kernelflow.graph.Graph`; nothing is run).
        inputs: {ONNX input name: tensor or node name}, the values the model is fed.
        outputs: {ONNX output name: tensor or node name}.
        variables: {variable name: value} for the variables the outputs read (default: each
            variable's ``initial`` attr, i.e. a graph loaded from a model directory).
        opset: the ONNX opset (default `DEFAULT_OPSET`).

    Returns:
        An ``onnx.ModelProto`` that passed ``onnx.checker.check_model(full_check=True)``.

    Raises:
        OnnxExportError: naming the node: an op with no ONNX form, or one it cannot express.
        InvalidArgumentError: naming the node: a placeholder the outputs need that is not an
            input, a random op or a variable update on the path; a missing variable value.
    """
    onnx = _onnx()
    model = _model(onnx, graph, inputs, outputs, variables, opset)
    _check(onnx, model, graph.name)
    return model


def _model(onnx: Any, graph: Graph, inputs: Mapping[str, Any], outputs: Mapping[str, Any],
           variables: Mapping[str, np.ndarray] | None, opset: int) -> Any:
    """`to_onnx`'s model, not checked yet. Each value is held once: the builder converts it to a
    TensorProto as it comes (no numpy copy kept), and the model takes them over one at a time."""
    from .._version import __version__

    ins, outs, plan = _signature(graph, inputs, outputs)
    b = OnnxBuilder(onnx)
    graph_inputs, names = _emit_plan(b, plan, ins, set(ins) | set(outs), variables)
    graph_outputs = []
    batch_free = any(t.shape and t.shape[0] is None for t in ins.values())
    for key, t in outs.items():
        b.op("Identity", [names[id(t)]], key)
        dims = [d if d is not None else ("batch" if i == 0 and batch_free else None) for i, d in enumerate(t.shape)]
        graph_outputs.append(onnx.helper.make_tensor_value_info(key, b.onnx_dtype(t.dtype), dims))
    nodes, inits = prune(b, list(outs))
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, graph.name, graph_inputs, graph_outputs),
                                   opset_imports=[onnx.helper.make_opsetid("", int(opset))],
                                   producer_name="kernelflow", producer_version=__version__)
    move_initializers(model.graph, inits)  # into the model itself: make_graph and make_model copy theirs
    model.ir_version = min(model.ir_version, 9)  # readable by onnxruntime releases of the last two years
    return model


def _check(onnx: Any, model: Any, name: str) -> None:
    """``onnx.checker`` with shape inference on ``model`` (a ModelProto, or the path of a file)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise OnnxExportError(f"export_onnx: the ONNX model of graph '{name}' fails onnx.checker: {e}") from e


def export_onnx(graph: Graph, path: str | os.PathLike, inputs: Mapping[str, Any], outputs: Mapping[str, Any],
                variables: Mapping[str, np.ndarray] | None = None, opset: int = DEFAULT_OPSET) -> dict:
    """Write the inference subgraph as an ONNX file; see `to_onnx` for the arguments.

    The file is written to a temp name next to ``path`` and renamed, only after the file
    passed the checker: a failed export leaves nothing behind. The model is serialised once and
    dropped before the checker reads the file, so a big model's weights are not held twice over.

    Returns:
        ``{"path", "opset", "inputs", "outputs", "nodes", "initializers"}``.
    """
    onnx = _onnx()
    model = _model(onnx, graph, inputs, outputs, variables, opset)
    info = {"opset": int(opset), "inputs": [i.name for i in model.graph.input],
            "outputs": [o.name for o in model.graph.output], "nodes": len(model.graph.node),
            "initializers": len(model.graph.initializer)}
    dest = Path(path)
    tmp = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(4)}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(model.SerializeToString())
        del model  # the checker reads the file: neither the model nor its bytes are held meanwhile
        _check(onnx, str(tmp), graph.name)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(dest), **info}
