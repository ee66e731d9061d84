"""Export: a graph's inference subgraph written as a model version (format: `kernelflow.protocol.model_dir`).

Export binds training-mode switches to inference: a bool scalar placeholder the outputs need
that is not among the inputs (the ``training`` flag of dropout / batch norm) becomes the
constant False, and a ``where`` on it keeps only its inference branch, so the random mask of
dropout is not in the exported graph. A random op left on the path is InvalidArgumentError
naming it (dropout built with ``training=True``).

Contents: export_model, prune_for_inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import InvalidArgumentError
from ...graph.ir import Tensor, node_to_dict
from ...graph.ops.elementwise import where_op
from ...graph.ops.state import placeholder_op, variable_op
from ...graph.shapes import format_shape
from ...protocol.model_dir import FORMAT, KEY_RE, PREDICT_METHOD, SIGNATURE_NAME, check_model_name, write_version
from ..engine.session import GraphSession


def _is_training_flag(t: Tensor) -> bool:
    return t.op is placeholder_op and t.dtype == "bool" and len(t.shape) == 0


def prune_for_inference(outputs: list[Tensor], inputs: dict[int, Tensor]) -> tuple[list[Tensor], dict[int, Tensor]]:
    """The nodes the outputs need by data edges, stopping at inputs; control edges are dropped
    (they order training updates, which inference does not run).

    A ``where(flag, a, b)`` whose condition is a training flag (see `_is_training_flag`) that is
    not an input is walked into ``b`` only: with the flag bound to False it is ``b``. Returns
    (nodes in graph order, {id(where node): its inference branch}).
    """
    seen: dict[int, Tensor] = {}
    folded: dict[int, Tensor] = {}
    stack = list(outputs)
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen[id(t)] = t
        if id(t) in inputs:
            continue
        if t.op is where_op and _is_training_flag(t.inputs[0]) and id(t.inputs[0]) not in inputs \
                and t.inputs[2].shape == t.shape and t.inputs[2].dtype == t.dtype:
            folded[id(t)] = t.inputs[2]
            stack.append(t.inputs[2])
            continue
        stack.extend(t.inputs)
    return sorted(seen.values(), key=lambda t: t.index), folded


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
        dicts, var_names, bound = _inference_dicts(in_nodes, out_nodes, sorted(inputs))
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


def _inference_dicts(in_nodes: dict[str, Tensor], out_nodes: dict[str, Tensor],
                     input_keys: list[str]) -> tuple[list[dict], list[str], dict[str, bool]]:
    """The node dicts of the inference subgraph (inputs as placeholders, training flags bound to False),
    the names of the variables it reads, and the bound flags."""
    fed = {id(t): t for t in in_nodes.values()}
    nodes, folded = prune_for_inference(list(out_nodes.values()), fed)
    dicts, var_names, bound = [], [], {}
    for n in nodes:
        if id(n) in fed:
            # An input that is not a placeholder (e.g. a hidden layer) becomes one.
            dicts.append({"name": n.name, "op": "placeholder", "inputs": [],
                          "attrs": {"shape": list(n.shape), "dtype": n.dtype}})
            continue
        if id(n) in folded:  # where(training, train_branch, inference_branch) -> the inference branch
            dicts.append({"name": n.name, "op": "identity", "inputs": [folded[id(n)].name], "attrs": {}})
            bound[n.inputs[0].name] = False
            continue
        if n.op is placeholder_op and _is_training_flag(n):
            # A training-mode switch (dropout, batch norm): served models run in inference mode.
            dicts.append({"name": n.name, "op": "constant", "inputs": [], "attrs": {"value": np.array(False)}})
            bound[n.name] = False
            continue
        if n.op is placeholder_op:
            raise InvalidArgumentError(
                f"model.export: the outputs need placeholder '{n.name}' ({n.dtype}{format_shape(n.shape)}), "
                f"which is not among the inputs {input_keys}; add it to inputs",
                node=n.name, source=n.source)
        if n.op.mutates:
            raise InvalidArgumentError(f"model.export: node '{n.name}' ({n.op.name}) updates a variable; "
                                       "an exported model only reads its variables", node=n.name)
        if n.op.random:
            raise InvalidArgumentError(
                f"model.export: the outputs need random node '{n.name}' ({n.op.name}), so the served model "
                "would answer differently each time (dropout built with training=True?); build the exported "
                "outputs with training=False, or pass a bool scalar placeholder as training (export binds "
                "it to False)", node=n.name, source=n.source)
        d = node_to_dict(n)
        d.pop("control_inputs", None)
        d.pop("device", None)
        if n.op is variable_op:
            d["attrs"] = {k: v for k, v in d["attrs"].items() if k != "initial"}
            var_names.append(n.name)
        dicts.append(d)
    return dicts, var_names, bound
