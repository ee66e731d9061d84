"""Export: a graph's inference subgraph written as a model version (format: `kernelflow.protocol.model_dir`).

Which nodes are exported, and how training-mode switches are bound to inference, is
`kernelflow.graph.inference` (shared with the ONNX exporter): a bool scalar training-flag
placeholder becomes the constant False, a ``where`` on it keeps only its inference branch, and
a random op left on the path is InvalidArgumentError naming it.

Contents: export_model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import InvalidArgumentError
from ...graph.inference import inference_nodes
from ...graph.ir import Tensor, node_to_dict
from ...graph.ops.state import variable_op
from ...protocol.model_dir import FORMAT, KEY_RE, PREDICT_METHOD, SIGNATURE_NAME, check_model_name, write_version
from ..engine.session import GraphSession


def _tensor_spec(t: Tensor) -> dict:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


def export_model(session: GraphSession, base: Path, name: str, inputs: dict, outputs: dict,
                 version: int | None = None) -> dict:
    """Write the inference subgraph of ``session`` from ``inputs`` to ``outputs`` as a model version.

    Args:
        session: the graph's session.
        base: the model base path (``<state dir>/models``).
        name: the model's name.
        inputs: {signature input name: node name}.
        outputs: {signature output name: node name}.
        version: the version number (None: one more than the highest there).

    Returns:
        ``{"name", "version", "path", "signature"}``.

    Raises:
        InvalidArgumentError: a bad name, an unknown node, a placeholder the outputs need that
            is not among the inputs, or a node that updates a variable.
        AlreadyExistsError: ``version`` exists already.
    """
    _check_request(session, name, inputs, outputs, version)
    with session.lock:
        g = session.graph
        in_nodes = {k: g[v] for k, v in inputs.items()}
        out_nodes = {k: g[v] for k, v in outputs.items()}
        for k, t in out_nodes.items():
            if t.dtype is None:
                raise InvalidArgumentError(f"model.export: output '{k}' (node '{t.name}', op {t.op.name}) has no value")
        dicts, var_names, bound = _inference_dicts(in_nodes, out_nodes)
        values = session.snapshot_variables()
        arrays = {v: np.ascontiguousarray(values[v]) for v in var_names}
    signature = {"signature_name": SIGNATURE_NAME, "method_name": PREDICT_METHOD, "format": FORMAT,
                 "graph": session.name,
                 "inputs": {k: _tensor_spec(t) for k, t in in_nodes.items()},
                 "outputs": {k: _tensor_spec(t) for k, t in out_nodes.items()}}
    if bound:
        signature["bound"] = bound  # placeholders fixed at export (training flags -> False)
    return write_version(base, name, version, dicts, arrays, signature)


def _check_request(session: GraphSession, name: str, inputs: dict, outputs: dict, version: int | None) -> None:
    """The request's names, maps and version, before the graph's lock is taken."""
    check_model_name(name)
    for what, m in (("inputs", inputs), ("outputs", outputs)):
        if not isinstance(m, dict) or not m:
            raise InvalidArgumentError(f"model.export: {what} must be a non-empty map of name -> node")
        for k, v in m.items():
            if not isinstance(k, str) or not KEY_RE.fullmatch(k):
                raise InvalidArgumentError(f"model.export: {what} key {k!r} must match [A-Za-z_][A-Za-z0-9_.-]*")
            if not isinstance(v, str) or v not in session.graph:
                raise InvalidArgumentError(f"model.export: {what}['{k}'] = {v!r} is not a node of graph "
                                           f"'{session.name}'")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise InvalidArgumentError(f"model.export: version must be a positive integer; got {version!r}")


def _inference_dicts(in_nodes: dict[str, Tensor],
                     out_nodes: dict[str, Tensor]) -> tuple[list[dict], list[str], dict[str, bool]]:
    """The node dicts of the inference subgraph (inputs as placeholders, training flags bound to False),
    the names of the variables it reads, and the bound flags. The walk and its errors are
    `kernelflow.graph.inference.inference_nodes` (the ONNX exporter takes the same subgraph)."""
    dicts, var_names, bound = [], [], {}
    for item in inference_nodes(list(out_nodes.values()), list(in_nodes.values()), "model.export"):
        n = item.node
        if item.role == "input":
            # An input that is not a placeholder (e.g. a hidden layer) becomes one.
            dicts.append({"name": n.name, "op": "placeholder", "inputs": [],
                          "attrs": {"shape": list(n.shape), "dtype": n.dtype}})
        elif item.role == "fold":  # where(training, train_branch, inference_branch) -> the inference branch
            assert item.branch is not None
            dicts.append({"name": n.name, "op": "identity", "inputs": [item.branch.name], "attrs": {}})
            bound[n.inputs[0].name] = False
        elif item.role == "flag":
            # A training-mode switch (dropout, batch norm): served models run in inference mode.
            dicts.append({"name": n.name, "op": "constant", "inputs": [], "attrs": {"value": np.array(False)}})
            bound[n.name] = False
        else:
            d = node_to_dict(n)
            d.pop("control_inputs", None)
            d.pop("device", None)
            if n.op is variable_op:
                d["attrs"] = {k: v for k, v in d["attrs"].items() if k != "initial"}
                var_names.append(n.name)
            dicts.append(d)
    return dicts, var_names, bound
