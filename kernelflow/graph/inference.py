"""The inference subgraph of a graph: pruned at its inputs, training switches folded to False.

Shared by every exporter (the served-model directory and ONNX): both must cut the same
nodes and fold the same training flags, so the rules live here once.

A bool scalar placeholder the outputs need that is not among the inputs (the ``training``
flag of dropout / batch norm) is bound to False, and a ``where`` on it keeps only its
inference branch, so the random mask of dropout is not in the exported graph. A random op
left on the path, a node that updates a variable, or any other placeholder that is not an
input is InvalidArgumentError naming the node.

Contents: InferenceNode, inference_nodes, is_training_flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidArgumentError
from .ir import Tensor
from .ops.elementwise import where_op
from .ops.state import placeholder_op
from .shapes import format_shape

Role = Literal["input", "fold", "flag", "node"]


@dataclass(frozen=True)
class InferenceNode:
    """One node of an inference subgraph and what an exporter must make of it.

    Attributes:
        node: the graph's node.
        role: ``"input"`` (fed: becomes a graph input, whatever its op), ``"fold"`` (a
            ``where`` on a training flag: the identity of ``branch``), ``"flag"`` (a
            training-flag placeholder: the constant False), or ``"node"`` (kept as it is).
        branch: the inference branch of a ``"fold"`` node, else None.
    """

    node: Tensor
    role: Role
    branch: Tensor | None = None


def is_training_flag(t: Tensor) -> bool:
    """True for a bool scalar placeholder (a ``training`` switch)."""
    return t.op is placeholder_op and t.dtype == "bool" and len(t.shape) == 0


def _prune(outputs: list[Tensor], inputs: dict[int, Tensor]) -> tuple[list[Tensor], dict[int, Tensor]]:
    """The nodes the outputs need by data edges, stopping at inputs; control edges are dropped
    (they order training updates, which inference does not run). Returns (nodes in graph
    order, {id(where node): its inference branch})."""
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
        if t.op is where_op and is_training_flag(t.inputs[0]) and id(t.inputs[0]) not in inputs \
                and t.inputs[2].shape == t.shape and t.inputs[2].dtype == t.dtype:
            folded[id(t)] = t.inputs[2]
            stack.append(t.inputs[2])
            continue
        stack.extend(t.inputs)
    return sorted(seen.values(), key=lambda t: t.index), folded


def inference_nodes(outputs: list[Tensor], inputs: list[Tensor], who: str) -> list[InferenceNode]:
    """The nodes ``outputs`` need from ``inputs`` in inference mode, in graph order.

    Args:
        outputs: the tensors to compute.
        inputs: the tensors that will be fed (placeholders or any inner node).
        who: the caller's name for error messages (``"model.export"``, ``"export_onnx"``).

    Returns:
        One `InferenceNode` per kept node.

    Raises:
        InvalidArgumentError: naming the node: a placeholder the outputs need that is not an
            input, a node that updates a variable, a random op, or an output with no value.
    """
    fed = {id(t): t for t in inputs}
    for t in outputs:
        if t.dtype is None:
            raise InvalidArgumentError(f"{who}: output node '{t.name}' ({t.op.name}) has no value", node=t.name)
    nodes, folded = _prune(list(outputs), fed)
    names = sorted(t.name for t in inputs)
    out = []
    for n in nodes:
        if id(n) in fed:
            out.append(InferenceNode(n, "input"))
        elif id(n) in folded:
            out.append(InferenceNode(n, "fold", folded[id(n)]))
        elif is_training_flag(n):
            out.append(InferenceNode(n, "flag"))
        elif n.op is placeholder_op:
            raise InvalidArgumentError(
                f"{who}: the outputs need placeholder '{n.name}' ({n.dtype}{format_shape(n.shape)}), "
                f"which is not among the inputs {names}; add it to inputs", node=n.name, source=n.source)
        elif n.op.mutates:
            raise InvalidArgumentError(f"{who}: node '{n.name}' ({n.op.name}) updates a variable; "
                                       "an exported model only reads its variables", node=n.name)
        elif n.op.random:
            raise InvalidArgumentError(
                f"{who}: the outputs need random node '{n.name}' ({n.op.name}), so the exported model "
                "would answer differently each time (dropout built with training=True?); build the exported "
                "outputs with training=False, or pass a bool scalar placeholder as training (export binds "
                "it to False)", node=n.name, source=n.source)
        else:
            out.append(InferenceNode(n, "node"))
    return out
