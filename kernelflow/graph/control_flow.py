"""The control-flow builders: kf.cond, switch_case, while_loop, scan, map_fn, fori_loop.

Branch and body functions are Python functions traced once (twice when a loop variable's
shape relaxes) into sub-graphs held by one node. They take one argument per loop variable,
as `tf.while_loop` does; loop variables may be any nest of tuples, lists, dicts and
namedtuples of tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .ir import Aval, Tensor
from .ops.control_flow import case_op, merge_shapes, scan_op, tuple_get, while_op
from .shapes import INTEGER, format_shape
from .subgraph import as_tensor, flatten, parent_graph, same_structure, trace, tree_str, unflatten, with_captures

__all__ = ["cond", "switch_case", "while_loop", "scan", "map_fn", "fori_loop"]


def _outputs(node: Tensor, tree: Any) -> Any:
    n = len(node.aval.parts)
    return unflatten(tree, [tuple_get(node, i) for i in range(n)])


def _stride(checkpoint: Any, bound: int | None, what: str) -> int:
    """Iterations between saved carries: 0 saves every one; True picks about sqrt(bound)."""
    if checkpoint is False or checkpoint is None or checkpoint == 0:
        return 0
    if checkpoint is True:
        return max(1, math.isqrt(bound)) if bound else 32
    if not isinstance(checkpoint, int) or checkpoint < 0:
        raise InvalidArgumentError(f"{what}: checkpoint must be a bool or a positive int; got {checkpoint!r}")
    return int(checkpoint)


def _check_limit(limit: Any, what: str) -> int:
    if limit is None:
        return 0
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        raise InvalidArgumentError(f"{what}: saved_memory_limit must be a positive number of bytes; got {limit!r}")
    return int(limit)


# --------------------------------------------------------------------------- cond / switch_case
def cond(pred: Any, true_fn: Callable[[], Any], false_fn: Callable[[], Any], name: str | None = None) -> Any:
    """``true_fn()`` if ``pred`` else ``false_fn()``, decided at run time; only the taken branch runs.

    Args:
        pred: a scalar bool tensor (a Python bool picks the branch now).
        true_fn, false_fn: functions of no arguments returning the same structure of tensors with
            the same dtypes; shapes merge to the most specific common shape.
        name: optional node name.

    Returns:
        The taken branch's outputs, in the branches' structure.

    Raises:
        InvalidArgumentError: a non-scalar or non-bool predicate; branches returning different
            structures or dtypes.

    Example:
        >>> y = kf.cond(x > 0, lambda: x * 2.0, lambda: -x)
    """
    if isinstance(pred, (bool, np.bool_)):
        return true_fn() if pred else false_fn()
    if not isinstance(pred, Tensor):
        raise InvalidArgumentError(f"cond: pred must be a scalar bool tensor; got {type(pred).__name__}")
    if pred.shape != () or pred.dtype != "bool":
        raise InvalidArgumentError(f"cond: pred must be a scalar bool tensor; got '{pred.name}' "
                                   f"{pred.dtype}{format_shape(pred.shape)}")
    return _case("cond", pred, [false_fn, true_fn], ["false_fn", "true_fn"], name)


def switch_case(branch_index: Any, branch_fns: Any, default: Callable[[], Any] | None = None,
                name: str | None = None) -> Any:
    """Run ``branch_fns[branch_index]()`` (TF's ``tf.switch_case``); out-of-range indices run ``default``.

    Args:
        branch_index: a scalar integer tensor.
        branch_fns: a list of functions of no arguments, or a dict {0: fn, 1: fn, ...}.
        default: run for an index outside the branches (default: the last branch).
        name: optional node name.

    Returns:
        The outputs of the branch that ran.

    Raises:
        InvalidArgumentError: a non-scalar or non-integer index, no branches, or branches that
            return different structures or dtypes.
    """
    if isinstance(branch_fns, dict):
        keys = sorted(branch_fns)
        if keys != list(range(len(keys))):
            raise InvalidArgumentError(f"switch_case: dict keys must be 0..n-1; got {keys}")
        branch_fns = [branch_fns[k] for k in keys]
    fns = list(branch_fns)
    if not fns or not all(callable(f) for f in fns):
        raise InvalidArgumentError("switch_case: branch_fns must be a non-empty list of functions")
    labels = [f"branch {i}" for i in range(len(fns))]
    if default is not None:
        fns.append(default)
        labels.append("default")
    if isinstance(branch_index, (int, np.integer)) and not isinstance(branch_index, bool):
        i = int(branch_index)
        return (fns[i] if 0 <= i < len(branch_fns) else fns[-1])()
    if not isinstance(branch_index, Tensor) or branch_index.shape != () or branch_index.dtype not in INTEGER:
        got = (f"'{branch_index.name}' {branch_index.dtype}{format_shape(branch_index.shape)}"
               if isinstance(branch_index, Tensor) else type(branch_index).__name__)
        raise InvalidArgumentError(f"switch_case: branch_index must be a scalar integer tensor; got {got}")
    return _case("switch_case", branch_index, fns, labels, name)


def _case(what: str, index: Tensor, fns: list, labels: list[str], name: str | None) -> Any:
    graph = parent_graph([index], what)
    traces = []
    trees = []
    for fn, label in zip(fns, labels):
        tg, _, outs, tree = trace(graph, fn, [], f"{what} {label}")
        traces.append((tg, [], outs))
        trees.append(tree)
    for label, tree, (_, _, outs) in zip(labels[1:], trees[1:], traces[1:]):
        first = traces[0][2]
        if not same_structure(tree, trees[0]):
            raise InvalidArgumentError(f"{what}: {labels[0]} returned {tree_str(trees[0])} but {label} returned "
                                       f"{tree_str(tree)}; branches must return the same structure")
        for k, (a, b) in enumerate(zip(first, outs)):
            if a.dtype != b.dtype:
                raise InvalidArgumentError(f"{what}: output {k} is {a.dtype} in {labels[0]} but {b.dtype} in "
                                           f"{label}; branches must return the same dtypes")
    caps, subs = with_captures(traces)
    idx = as_tensor(graph, index, what)
    node = graph.add_node(case_op, [idx, *[as_tensor(graph, c, what) for c in caps]],
                          {"branches": tuple(subs), "what": what}, name or what)
    return _outputs(node, trees[0])


# --------------------------------------------------------------------------- while_loop
def _loop_call(fn: Callable, tree: Any, single: bool) -> Callable[[list], Any]:
    """Call ``fn`` with one argument per loop variable (TF's convention)."""

    def call(phs: list) -> Any:
        args = unflatten(tree, phs)
        return fn(args) if single else fn(*args)

    return call


def _relax(what: str, avals: list[Aval], outs: list[Tensor]) -> list[Aval]:
    merged = []
    for i, (a, o) in enumerate(zip(avals, outs)):
        if o.dtype != a.dtype:
            raise InvalidArgumentError(f"{what}: returned {o.dtype}{format_shape(o.shape)} for loop variable {i}, "
                                       f"which is {a.dtype}{format_shape(a.shape)}; a loop variable keeps its dtype")
        s = merge_shapes(a.shape, o.shape)
        if s is None:
            raise InvalidArgumentError(f"{what}: returned rank {len(o.shape)} {format_shape(o.shape)} for loop "
                                       f"variable {i}, which has rank {len(a.shape)} {format_shape(a.shape)}; a loop "
                                       "variable keeps its rank")
        merged.append(Aval(s, a.dtype))
    return merged


def _trace_body(what: str, graph: Any, fn: Callable, tree: Any, single: bool, avals: list[Aval],
                out_tree_ok: Callable[[Any], bool], expected: str) -> tuple:
    """Trace a loop body until its output shapes fit its input shapes (None dims where they change)."""
    for _ in range(len(avals) + 2):
        tg, phs, outs, out_tree = trace(graph, fn, avals, what, call=_loop_call(fn, tree, single))
        if len(outs) != len(avals) or not out_tree_ok(out_tree):
            raise InvalidArgumentError(f"{what}: must return {expected}; got {tree_str(out_tree)} "
                                       f"({len(outs)} tensors)")
        relaxed = _relax(what, avals, outs)
        if relaxed == avals:
            return tg, phs, outs
        avals = relaxed
    raise InvalidArgumentError(f"{what}: loop variable shapes did not settle")  # unreachable: each pass adds a None


def while_loop(cond_fn: Callable[..., Any], body_fn: Callable[..., Any], loop_vars: Any,
               maximum_iterations: Any = None, saved_memory_limit: int | None = None,
               checkpoint: bool | int = False, name: str | None = None) -> Any:
    """Repeat ``loop_vars = body_fn(*loop_vars)`` while ``cond_fn(*loop_vars)`` is true.

    Args:
        cond_fn: loop variables -> scalar bool tensor.
        body_fn: loop variables -> new loop variables (same structure and dtypes; a dimension
            that changes becomes None, no shape invariants needed).
        loop_vars: a tensor or any nest (tuple, list, dict, namedtuple) of tensors and numbers.
            A list/tuple is passed as one argument per element, as in ``tf.while_loop``.
        maximum_iterations: the loop stops after this many iterations (an int or integer scalar
            tensor), as in TensorFlow; it also bounds the memory its gradient saves.
        saved_memory_limit: bytes the per-iteration values saved for the gradient may take
            (default: the runtime's limit, 2 GiB); beyond it the run fails with ResourceExhaustedError.
        checkpoint: for long loops: save the loop variables only every ``checkpoint`` iterations
            (True: about sqrt(maximum_iterations), else 32) and recompute the others in the
            backward pass: less memory for one more forward pass.
        name: optional node name.

    Returns:
        The final loop variables, in the structure of ``loop_vars``.

    Raises:
        InvalidArgumentError: ``body_fn`` returning another structure, dtype or rank; ``cond_fn``
            returning anything but a scalar bool.

    Example:
        >>> i, total = kf.while_loop(lambda i, s: i < n, lambda i, s: (i + 1, s + x[i]), (0, 0.0))
    """
    single = not isinstance(loop_vars, (list, tuple))
    leaves, tree = flatten(loop_vars)
    graph = parent_graph(leaves + ([maximum_iterations] if isinstance(maximum_iterations, Tensor) else []),
                         "while_loop")
    init = [as_tensor(graph, v, "while_loop loop_vars") for v in leaves]

    def ok(out_tree: Any) -> bool:
        return same_structure(out_tree, tree) or len(init) == 1

    tb, phs_b, outs_b = _trace_body("while_loop body_fn", graph, body_fn, tree, single, [t.aval for t in init], ok,
                                    tree_str(tree))
    avals = [p.aval for p in phs_b]
    tc, phs_c, outs_c, c_tree = trace(graph, cond_fn, avals, "while_loop cond_fn",
                                      call=_loop_call(cond_fn, tree, single))
    if len(outs_c) != 1 or outs_c[0].shape != () or outs_c[0].dtype != "bool":
        got = ", ".join(f"{o.dtype}{format_shape(o.shape)}" for o in outs_c) or tree_str(c_tree)
        raise InvalidArgumentError(f"while_loop: cond_fn must return one scalar bool tensor; got {got}")
    caps, (sub_c, sub_b) = with_captures([(tc, phs_c, outs_c), (tb, phs_b, outs_b)])
    if maximum_iterations is None:
        limit = graph.constant(-1, dtype="int64")
    else:
        limit = as_tensor(graph, maximum_iterations, "while_loop maximum_iterations")
    bound = maximum_iterations if isinstance(maximum_iterations, int) else None
    attrs = {"cond": sub_c, "body": sub_b, "n_vars": len(init),
             "saved_limit": _check_limit(saved_memory_limit, "while_loop"),
             "checkpoint": _stride(checkpoint, bound, "while_loop")}
    node = graph.add_node(while_op, [limit, *init, *[as_tensor(graph, c, "while_loop") for c in caps]], attrs,
                          name or "while")
    return _outputs(node, tree)


def fori_loop(lower: Any, upper: Any, body_fn: Callable[[Any, Any], Any], init_val: Any,
              checkpoint: bool | int = False, name: str | None = None) -> Any:
    """``for i in range(lower, upper): val = body_fn(i, val)`` (JAX's ``lax.fori_loop``), differentiable.

    Args:
        lower, upper: integer scalars (ints or tensors).
        body_fn: ``(i, val) -> val`` with ``val`` any nest of tensors.
        init_val: the initial value.
        checkpoint: as for `while_loop`.
        name: optional node name.

    Returns:
        The final value.
    """
    if isinstance(lower, Tensor) or isinstance(upper, Tensor):
        bound = None
    else:
        bound = max(int(upper) - int(lower), 0)
    leaves, _ = flatten(init_val)
    graph = parent_graph(leaves + [v for v in (lower, upper) if isinstance(v, Tensor)], "fori_loop")
    dtype = next((t.dtype for t in (lower, upper) if isinstance(t, Tensor)), "int32")
    lo = lower if isinstance(lower, Tensor) else graph.constant(int(lower), dtype=dtype)
    up = upper if isinstance(upper, Tensor) else graph.constant(int(upper), dtype=dtype)
    _, val = while_loop(lambda i, v: i < up, lambda i, v: (i + 1, body_fn(i, v)), (lo, init_val),
                        maximum_iterations=bound, checkpoint=checkpoint, name=name or "fori_loop")
    return val


# --------------------------------------------------------------------------- scan / map_fn
def _elems(elems: Any, what: str, graph: Any) -> tuple[list[Tensor], Any]:
    leaves, tree = flatten(elems)
    if not leaves:
        raise InvalidArgumentError(f"{what}: elems must hold at least one tensor")
    xs = [as_tensor(graph, v, f"{what} elems") for v in leaves]
    for x in xs:
        if x.ndim == 0:
            raise InvalidArgumentError(f"{what}: elems must have a leading axis; '{x.name}' is a scalar")
    return xs, tree


def _scan(what: str, fn2: Callable[[Any, Any], tuple[Any, Any]], carry: Any, elems: Any, reverse: bool,
          name: str | None, expected: str, checkpoint: Any = False) -> tuple[Tensor, Any, Any, int]:
    """JAX-style scan: ``fn2(carry, x) -> (carry, y)``; returns (node, carry tree, ys tree, n_carry)."""
    c_leaves, c_tree = flatten(carry)
    e_leaves, _ = flatten(elems)
    graph = parent_graph(c_leaves + e_leaves, what)
    init = [as_tensor(graph, v, f"{what} initializer") for v in c_leaves]
    xs, e_tree = _elems(elems, what, graph)
    n_c = len(init)
    x_avals = [Aval(x.shape[1:], x.dtype) for x in xs]
    y_tree: list[Any] = [None]

    def call(phs: list) -> Any:
        new_c, y = fn2(unflatten(c_tree, phs[:n_c]), unflatten(e_tree, phs[n_c:]))
        yl, yt = flatten(y)
        y_tree[0] = yt
        cl, ct = flatten(new_c)
        if not same_structure(ct, c_tree):
            raise InvalidArgumentError(f"{what}: fn must return {expected} {tree_str(c_tree)}; got {tree_str(ct)}")
        return cl + yl

    avals = [t.aval for t in init]
    for _ in range(n_c + 2):
        tg, phs, outs, _ = trace(graph, fn2, avals + x_avals, what, call=call)
        relaxed = _relax(what, avals, outs[:n_c])
        if relaxed == avals:
            break
        avals = relaxed
    caps, (sub,) = with_captures([(tg, phs, outs)])
    node = graph.add_node(scan_op, [*init, *xs, *[as_tensor(graph, c, what) for c in caps]],
                          {"fn": sub, "n_carry": n_c, "n_xs": len(xs), "reverse": bool(reverse),
                           "checkpoint": _stride(checkpoint, xs[0].shape[0], what)}, name or what)
    return node, c_tree, y_tree[0], n_c


def scan(fn: Callable[[Any, Any], Any], elems: Any, initializer: Any = None, reverse: bool = False,
         checkpoint: bool | int = False, name: str | None = None) -> Any:
    """TensorFlow's ``tf.scan``: ``acc = fn(acc, elem)`` over the leading axis of ``elems``; the stacked accs.

    Args:
        fn: ``(accumulator, element) -> accumulator`` (same structure and dtypes).
        elems: a tensor or nest of tensors sharing their leading dim (the steps).
        initializer: the first accumulator; None uses ``elems[0]`` and scans the rest.
        reverse: scan from the last element to the first (outputs stay in elems' order).
        checkpoint: as for `while_loop` (the gradient saves the accumulator every ``checkpoint``
            steps and recomputes the rest).
        name: optional node name.

    Returns:
        The accumulators after each step, stacked along a new leading axis, in the structure of
        the accumulator.

    Example:
        >>> cumsum = kf.scan(lambda a, x: a + x, xs, initializer=kf.zeros_like(xs[0]))
    """
    first = None
    if initializer is None:
        leaves, tree = flatten(elems)
        from .ops.movement import expand_dims

        first = [(v[-1] if reverse else v[0]) for v in leaves]
        initializer = unflatten(tree, first)
        elems = unflatten(tree, [(v[:-1] if reverse else v[1:]) for v in leaves])

    def fn2(acc: Any, x: Any) -> tuple[Any, Any]:
        new = fn(acc, x)
        return new, new

    node, c_tree, _, n_c = _scan("scan", fn2, initializer, elems, reverse, name, "the accumulator's structure",
                                 checkpoint)
    ys = [tuple_get(node, n_c + i) for i in range(n_c)]
    if first is not None:
        from .ops.movement import concat

        ys = [concat([y, expand_dims(f, 0)] if reverse else [expand_dims(f, 0), y], axis=0)
              for y, f in zip(ys, first)]
    return unflatten(c_tree, ys)


def map_fn(fn: Callable[[Any], Any], elems: Any, name: str | None = None) -> Any:
    """``fn`` applied to each element along the leading axis of ``elems``, results stacked (``tf.map_fn``).

    Args:
        fn: element (a tensor or the nest of ``elems``) -> a tensor or nest of tensors.
        elems: a tensor or nest of tensors sharing their leading dim.
        name: optional node name.

    Returns:
        ``fn``'s outputs stacked along a new leading axis, in ``fn``'s output structure.
    """
    node, _, y_tree, n_c = _scan("map_fn", lambda c, x: ((), fn(x)), (), elems, False, name, "no carry")
    return _outputs_from(node, y_tree, n_c)


def _outputs_from(node: Tensor, tree: Any, start: int) -> Any:
    n = len(node.aval.parts)
    return unflatten(tree, [tuple_get(node, i) for i in range(start, n)])


_ = Sequence
