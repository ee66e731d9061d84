"""Reverse-mode autodiff: builds gradient nodes into the graph. Refers to no op by name.

Each op's `vjp` gives cotangents for equal shapes; this engine does the rest once for all
ops: un-broadcasting (``sum_to``), dtype matching, accumulation, and arity checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ..errors import InternalError, InvalidArgumentError
from .ir import Tensor, current_graph
from .shapes import FLOATING

__all__ = ["gradients"]


def _as_list(x: Any, what: str) -> tuple[list[Tensor], bool]:
    if isinstance(x, Tensor):
        return [x], True
    if isinstance(x, (list, tuple)):
        for t in x:
            if not isinstance(t, Tensor):
                raise InvalidArgumentError(f"gradients: {what} must be tensors; got {type(t).__name__}")
        return list(x), False
    raise InvalidArgumentError(f"gradients: {what} must be a tensor or a list of tensors; got {type(x).__name__}")


def _fits(ct: Tensor, x: Tensor) -> bool:
    """True when ``ct`` certainly has the runtime shape of ``x`` (no un-broadcasting needed)."""
    return ct.shape == x.shape and all(d is not None for d in x.shape)


def gradients(ys: Any, xs: Any, grad_ys: Any = None, unconnected: str = "none") -> Any:
    """Symbolic gradients of ``sum(ys)`` with respect to each of ``xs``.

    Args:
        ys: a tensor or list of tensors to differentiate.
        xs: a tensor or list of tensors (usually variables).
        grad_ys: optional seed cotangents, one per ``ys`` (default: ones).
        unconnected: ``"none"`` (default) gives None for an x that ``ys`` does not depend on;
            ``"zero"`` gives zeros of x's shape.

    Returns:
        One gradient tensor (or None) per x, as a list, or a single one if ``xs`` was a tensor.

    Raises:
        InvalidArgumentError: for non-tensor arguments, a bad ``unconnected`` or ``grad_ys``.

    Example:
        >>> gw, gb = kf.gradients(loss, [w, b])
    """
    if unconnected not in ("none", "zero"):
        raise InvalidArgumentError(f"gradients: unconnected must be 'none' or 'zero'; got {unconnected!r}")
    y_list, _ = _as_list(ys, "ys")
    x_list, single = _as_list(xs, "xs")
    graph = current_graph(y_list + x_list)
    if grad_ys is None:
        seeds: list[Any] = [None] * len(y_list)
    else:
        seeds, _ = _as_list(grad_ys, "grad_ys") if not isinstance(grad_ys, Tensor) else ([grad_ys], True)
        if len(seeds) != len(y_list):
            raise InvalidArgumentError(f"gradients: got {len(seeds)} grad_ys for {len(y_list)} ys")

    with graph.name_scope("gradients"), graph.control_dependencies(None):
        return _build(graph, y_list, x_list, seeds, unconnected, single)


def _build(graph: Any, y_list: list[Tensor], x_list: list[Tensor], seeds: list[Any], unconnected: str,
           single: bool) -> Any:
    from .ops.elementwise import cast
    from .ops.movement import broadcast_like
    from .ops.reduce import sum_to

    # Nodes on a path from some x to some y, through data edges only.
    x_ids = {id(x) for x in x_list}
    backward: dict[int, Tensor] = {}
    stack = list(y_list)
    while stack:
        t = stack.pop()
        if id(t) not in backward:
            backward[id(t)] = t
            stack.extend(t.inputs)
    reaches_x: set[int] = set()
    for t in sorted(backward.values(), key=lambda n: n.index):
        if id(t) in x_ids or any(id(i) in reaches_x for i in t.inputs):
            reaches_x.add(id(t))

    pending: dict[int, list[Tensor]] = {}
    for y, seed in zip(y_list, seeds):
        if id(y) not in reaches_x:
            continue
        if y.dtype not in FLOATING:
            raise InvalidArgumentError(f"gradients: y '{y.name}' has dtype {y.dtype}; only floating ys have gradients")
        if seed is None:
            one = graph.constant(1, dtype=y.dtype)
            seed = one if y.ndim == 0 else broadcast_like(one, y)
        pending.setdefault(id(y), []).append(seed)

    grads: dict[int, Tensor] = {}
    for node in sorted((backward[i] for i in reaches_x), key=lambda n: n.index, reverse=True):
        cts = pending.pop(id(node), None)
        if not cts:
            continue
        # The backward nodes of a node go in its forward scope under gradients/ (TensorFlow's
        # naming): the inspector then shows gradients/dense1/... as small groups, not one flat
        # scope of thousands of nodes.
        scope = node.name.rpartition("/")[0]
        with graph.name_scope(scope) if scope else contextlib.nullcontext():
            if node.aval.parts is not None:  # a control-flow node: one cotangent (or None) per part
                ct = _sum_parts(cts)
                if all(c is None for c in ct):
                    continue
            else:
                ct = cts[0]
                for c in cts[1:]:
                    ct = ct + c
            grads[id(node)] = ct
            if not node.inputs or not node.op.differentiable or not any(id(i) in reaches_x for i in node.inputs):
                continue
            in_cts = node.op.vjp(ct, node, *node.inputs, **node.attrs)
            if not isinstance(in_cts, (tuple, list)) or len(in_cts) != len(node.inputs):
                got = len(in_cts) if isinstance(in_cts, (tuple, list)) else repr(in_cts)
                raise InternalError(f"vjp of {node.op.name} returned {got} cotangents for {len(node.inputs)} inputs",
                                    node=node.name)
            for x, c in zip(node.inputs, in_cts):
                if c is None or id(x) not in reaches_x:
                    continue
                if x.aval.parts is not None:
                    pending.setdefault(id(x), []).append(list(c))
                    continue
                if x.dtype not in FLOATING:
                    continue
                if not _fits(c, x):
                    c = sum_to(c, x)
                if c.dtype != x.dtype:
                    c = cast(c, x.dtype)
                pending.setdefault(id(x), []).append(c)

    out: list[Any] = []
    for x in x_list:
        g = grads.get(id(x))
        if g is None and unconnected == "zero":
            g = broadcast_like(graph.constant(0, dtype=x.dtype), x)
        out.append(g)
    return out[0] if single else out


def _sum_parts(cts: list[list[Any]]) -> list[Any]:
    """Per-part sums of the cotangent lists a multi-output node received (None: no cotangent)."""
    out = list(cts[0])
    for c in cts[1:]:
        for i, part in enumerate(c):
            if part is not None:
                out[i] = part if out[i] is None else out[i] + part
    return out


_ = Sequence
