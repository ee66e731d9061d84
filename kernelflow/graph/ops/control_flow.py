"""Control-flow ops: schemas, shape rules and gradients of case, while, scan and their helpers.

Each control-flow node holds its branches or body as `Subgraph` attrs and yields several
values (its aval has ``parts``, read with ``tuple_get``). Gradients are built as new
control-flow nodes: a case of per-branch gradient functions, and a ``loop_grad`` node that
runs the body's vjp backwards over the per-iteration values the forward loop saved.
The user-facing builders (kf.cond, kf.while_loop, kf.scan...) live in `kernelflow.graph.control_flow`.

Contents: tuple_get, case_op, while_op, scan_op, loop_grad_op and their rules.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError
from ..ir import Aval, Tensor
from ..registry import REQUIRED, define_op
from ..shapes import FLOATING, INTEGER, format_shape
from ..subgraph import Subgraph, TraceGraph, close, describe, inline, parent_graph

__all__ = ["tuple_get"]


def _fits(value: tuple, declared: tuple) -> bool:
    """True when a value of static shape ``value`` is allowed where ``declared`` is expected."""
    return len(value) == len(declared) and all(d is None or d == v for v, d in zip(value, declared))


def merge_shapes(a: tuple, b: tuple) -> tuple | None:
    """The most specific shape both fit (None dims where they differ); None when ranks differ."""
    if len(a) != len(b):
        return None
    return tuple(x if x == y else None for x, y in zip(a, b))


def _check_args(what: str, sub: Subgraph, avals: tuple, start: int = 0) -> None:
    """The node's inputs ``avals`` fit ``sub``'s input placeholders from position ``start``."""
    ins = sub.in_avals[start:start + len(avals)]
    if len(sub.inputs) < start + len(avals):
        raise InvalidArgumentError(f"{what}: sub-graph takes {len(sub.inputs)} inputs; the node gives "
                                   f"{start + len(avals)}")
    for i, (a, p) in enumerate(zip(avals, ins)):
        if a.dtype != p.dtype or not _fits(a.shape, p.shape):
            raise InvalidArgumentError(f"{what}: input {start + i} is {a}, the sub-graph expects {p}")


def _check_checkpoint(what: str, every: Any) -> None:
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise InvalidArgumentError(f"{what}: checkpoint must be a non-negative int (iterations between saved "
                                   f"carries; 0 saves every one); got {every!r}")


def _is_sub(v: Any) -> bool:
    return isinstance(v, Subgraph)


def _float(a: Any) -> bool:
    return a.dtype in FLOATING


# --------------------------------------------------------------------------- tuple_get
def _tuple_get_aval(tup: Any, index: int) -> Aval:
    if tup.parts is None:
        raise InvalidArgumentError(f"tuple_get: the input must be a multi-output (control-flow) node; got {tup}")
    if not isinstance(index, int) or not 0 <= index < len(tup.parts):
        raise InvalidArgumentError(f"tuple_get: index must be in [0, {len(tup.parts)}); got {index!r}")
    return tup.parts[index]


def _tuple_get_vjp(g: Tensor, out: Tensor, tup: Tensor, index: int) -> tuple:
    parts: list[Any] = [None] * len(tup.aval.parts)
    parts[index] = g
    return (parts,)


tuple_get_op = define_op("tuple_get", ("tup",), attrs={"index": REQUIRED},
                         shape_rule=lambda tup, index: _tuple_get_aval(tup, index).shape,
                         dtype_rule=lambda tup, index: _tuple_get_aval(tup, index).dtype,
                         vjp=_tuple_get_vjp, alias=True, doc="one output of a control-flow node")


def tuple_get(t: Tensor, index: int, name: str | None = None) -> Tensor:
    """Output ``index`` of multi-output node ``t``."""
    return t.graph.add_node(tuple_get_op, (t,), {"index": int(index)}, name or f"{t.name.rsplit('/', 1)[-1]}_{index}")


def zeros_like(t: Tensor) -> Tensor:
    from .movement import broadcast_like

    return broadcast_like(t.graph.constant(0, dtype=t.dtype), t)


# --------------------------------------------------------------------------- case (cond, switch_case)
def _case_parts(index: Any, *args: Any, branches: tuple, what: str) -> tuple:
    if index.shape != () or (index.dtype not in INTEGER and index.dtype != "bool"):
        raise InvalidArgumentError(f"{what}: the {'predicate' if what == 'cond' else 'branch index'} must be a "
                                   f"scalar {'bool' if what == 'cond' else 'integer'} tensor; got {index}")
    if not isinstance(branches, tuple) or not branches or not all(_is_sub(b) for b in branches):
        raise InvalidArgumentError(f"{what}: attr 'branches' must be a non-empty list of sub-graphs")
    outs = branches[0].out_avals
    for i, b in enumerate(branches):
        _check_args(f"{what} branch {i}", b, args)
        if len(b.inputs) != len(args):
            raise InvalidArgumentError(f"{what}: branch {i} takes {len(b.inputs)} inputs; the node gives {len(args)}")
        got = b.out_avals
        if len(got) != len(outs) or any(x.dtype != y.dtype for x, y in zip(got, outs)):
            raise InvalidArgumentError(f"{what}: branches must return the same structure and dtypes; branch 0 "
                                       f"returned {describe(outs)}, branch {i} returned {describe(got)}")
        merged = []
        for x, y in zip(outs, got):
            s = merge_shapes(x.shape, y.shape)
            if s is None:
                raise InvalidArgumentError(f"{what}: branch outputs differ in rank: branch 0 returned "
                                           f"{describe(outs)}, branch {i} returned {describe(got)}")
            merged.append(Aval(s, x.dtype))
        outs = tuple(merged)
    return outs


def _case_vjp(ct: list, out: Tensor, index: Tensor, *args: Tensor, branches: tuple, what: str) -> tuple:
    fa = [_float(a) for a in args]
    fo = [_float(p) for p in out.aval.parts]
    cts = [c if c is not None else zeros_like(tuple_get(out, i)) for i, c in enumerate(ct) if fo[i]]
    if not any(fa) or not cts:
        return (None,) * (1 + len(args))
    graph = parent_graph([out], what)
    ct_avals = [p for p, f in zip(out.aval.parts, fo) if f]
    subs = []
    for k, b in enumerate(branches):
        tg = TraceGraph(graph, f"gradient of {what} branch {k}")
        arg_phs = [tg.placeholder(a.shape, a.dtype, name=f"arg{i}") for i, a in enumerate(b.in_avals)]
        ct_phs = [tg.placeholder(a.shape, a.dtype, name=f"ct{i}") for i, a in enumerate(ct_avals)]
        outs = inline(b, arg_phs, tg)
        ys = [o for o, f in zip(outs, fo) if f]
        subs.append(close(tg, arg_phs + ct_phs, _grads(ys, [p for p, f in zip(arg_phs, fa) if f], ct_phs)))
    node = case_op.bind(index, *args, *cts, branches=tuple(subs), what=what, name=f"{what}_grad")
    it = iter(range(sum(fa)))
    return (None,) + tuple(tuple_get(node, next(it)) if f else None for f in fa)


def _grads(ys: list[Tensor], xs: list[Tensor], seeds: list[Tensor]) -> list[Tensor]:
    """d(sum ys . seeds)/d xs, zeros where unconnected (built into the graph of ``xs``)."""
    from ..autodiff import gradients

    if not xs:
        return []
    if not ys:
        return [zeros_like(x) for x in xs]
    return list(gradients(ys, xs, grad_ys=seeds, unconnected="zero"))


case_op = define_op("case", ("index", "*args"), attrs={"branches": REQUIRED, "what": "switch_case"},
                    shape_rule=lambda *a, **k: (), dtype_rule=lambda *a, **k: None, parts_rule=_case_parts,
                    vjp=_case_vjp, alias=True, doc="runs branch[index] (the last one when out of range)")


# --------------------------------------------------------------------------- while
def _while_parts(max_iters: Any, *args: Any, cond: Any, body: Any, n_vars: int, saved_limit: int,
                 checkpoint: int) -> tuple:
    if not _is_sub(cond) or not _is_sub(body):
        raise InvalidArgumentError("while_loop: attrs 'cond' and 'body' must be sub-graphs")
    _check_checkpoint("while_loop", checkpoint)
    if max_iters.shape != () or max_iters.dtype not in INTEGER:
        raise InvalidArgumentError(f"while_loop: maximum_iterations must be a scalar integer; got {max_iters}")
    if not isinstance(n_vars, int) or not 0 <= n_vars <= len(args):
        raise InvalidArgumentError(f"while_loop: n_vars must be in [0, {len(args)}]; got {n_vars!r}")
    for what, sub in (("cond", cond), ("body", body)):
        if len(sub.inputs) != len(args):
            raise InvalidArgumentError(f"while_loop {what}: takes {len(sub.inputs)} inputs; the node gives {len(args)}")
        _check_args(f"while_loop {what}", sub, args)
    c = cond.out_avals
    if len(c) != 1 or c[0].shape != () or c[0].dtype != "bool":
        raise InvalidArgumentError(f"while_loop: cond_fn must return one scalar bool tensor; got {describe(c)}")
    vars_in = body.in_avals[:n_vars]
    outs = body.out_avals
    if len(outs) != n_vars:
        raise InvalidArgumentError(f"while_loop: body_fn must return {n_vars} loop variables; got {len(outs)}")
    for i, (o, v) in enumerate(zip(outs, vars_in)):
        if o.dtype != v.dtype or not _fits(o.shape, v.shape):
            raise InvalidArgumentError(f"while_loop: body_fn returned {o} for loop variable {i}, which is {v}; "
                                       "a loop variable keeps its dtype and rank")
    return vars_in


def _while_vjp(ct: list, out: Tensor, max_iters: Tensor, *args: Tensor, cond: Subgraph, body: Subgraph,
               n_vars: int, saved_limit: int, checkpoint: int) -> tuple:
    cts = loop_vjp(ct, out, body, n_vars, args[:n_vars], (), args[n_vars:], n_ys=0, reverse=False,
                   what="while_loop")
    return (None,) + cts


while_op = define_op("while", ("max_iters", "*args"),
                     attrs={"cond": REQUIRED, "body": REQUIRED, "n_vars": REQUIRED, "saved_limit": 0,
                            "checkpoint": 0},
                     shape_rule=lambda *a, **k: (), dtype_rule=lambda *a, **k: None, parts_rule=_while_parts,
                     vjp=_while_vjp, alias=True,
                     doc="loop vars = body(loop vars) while cond(loop vars) and fewer than max_iters (< 0: no bound)")


# --------------------------------------------------------------------------- scan
def _scan_parts(*args: Any, fn: Any, n_carry: int, n_xs: int, length: int, reverse: bool,
                saved_limit: int, checkpoint: int) -> tuple:
    if not _is_sub(fn):
        raise InvalidArgumentError("scan: attr 'fn' must be a sub-graph")
    _check_checkpoint("scan", checkpoint)
    if not (isinstance(n_carry, int) and isinstance(n_xs, int) and 0 <= n_carry and 0 <= n_xs
            and n_carry + n_xs <= len(args)):
        raise InvalidArgumentError(f"scan: bad n_carry={n_carry!r} / n_xs={n_xs!r} for {len(args)} inputs")
    xs = args[n_carry:n_carry + n_xs]
    if n_xs == 0 and (not isinstance(length, int) or length < 0):
        raise InvalidArgumentError(f"scan: without elems a non-negative length is needed; got {length!r}")
    lead = None if n_xs else length
    for i, x in enumerate(xs):
        if x.ndim == 0:
            raise InvalidArgumentError(f"scan: elems must have a leading axis to scan over; elems {i} is {x}")
        if lead is None:
            lead = x.shape[0]
        elif x.shape[0] is not None and x.shape[0] != lead:
            raise InvalidArgumentError(f"scan: elems disagree in their leading dim: {describe(xs)}")
    if len(fn.inputs) != len(args):
        raise InvalidArgumentError(f"scan: fn takes {len(fn.inputs)} inputs; the node gives {len(args)}")
    elem_avals = tuple(Aval(x.shape[1:], x.dtype) for x in xs)
    _check_args("scan", fn, tuple(args[:n_carry]))
    _check_args("scan", fn, elem_avals, n_carry)
    _check_args("scan", fn, tuple(args[n_carry + n_xs:]), n_carry + n_xs)
    outs = fn.out_avals
    carry = fn.in_avals[:n_carry]
    if len(outs) < n_carry:
        raise InvalidArgumentError(f"scan: fn must return the {n_carry} carried values first; got {len(outs)} outputs")
    for i, (o, v) in enumerate(zip(outs, carry)):
        if o.dtype != v.dtype or not _fits(o.shape, v.shape):
            raise InvalidArgumentError(f"scan: fn returned {o} for carried value {i}, which is {v}; a carried "
                                       "value keeps its dtype and rank")
    return tuple(carry) + tuple(Aval((lead,) + o.shape, o.dtype) for o in outs[n_carry:])


def _scan_vjp(ct: list, out: Tensor, *args: Tensor, fn: Subgraph, n_carry: int, n_xs: int, length: int,
              reverse: bool, saved_limit: int, checkpoint: int) -> tuple:
    return loop_vjp(ct, out, fn, n_carry, args[:n_carry], args[n_carry:n_carry + n_xs], args[n_carry + n_xs:],
                    n_ys=len(fn.outputs) - n_carry, reverse=reverse, what="scan")


scan_op = define_op("scan", ("*args",),
                    attrs={"fn": REQUIRED, "n_carry": REQUIRED, "n_xs": REQUIRED, "length": -1, "reverse": False,
                           "saved_limit": 0, "checkpoint": 0},
                    shape_rule=lambda *a, **k: (), dtype_rule=lambda *a, **k: None, parts_rule=_scan_parts,
                    vjp=_scan_vjp, alias=True,
                    doc="(carry, y) = fn(carry, x) over the leading axis of xs; yields the last carry and stacked ys")


# --------------------------------------------------------------------------- loop gradient
def loop_vjp(ct: list, out: Tensor, fn: Subgraph, n_carry: int, carry_in: tuple, xs: tuple, caps: tuple,
             n_ys: int, reverse: bool, what: str) -> tuple:
    """Cotangents of a loop node's inputs (carry, xs, captures) given those of its outputs.

    Builds the vjp of one iteration as a sub-graph (the body is recomputed from the saved
    carry, then differentiated) and a ``loop_grad`` node that runs it backwards.
    """
    fc = [_float(a) for a in fn.in_avals[:n_carry]]
    fy = [_float(a) for a in fn.out_avals[n_carry:n_carry + n_ys]]
    fx = [_float(x) for x in xs]
    fk = [_float(c) for c in caps]
    if all(c is None for c in ct) or not (any(fc) or any(fx) or any(fk)):
        return (None,) * (len(carry_in) + len(xs) + len(caps))
    ct_carry = [ct[i] if ct[i] is not None else zeros_like(tuple_get(out, i)) for i in range(n_carry) if fc[i]]
    ct_ys = [ct[n_carry + j] if ct[n_carry + j] is not None else zeros_like(tuple_get(out, n_carry + j))
             for j in range(n_ys) if fy[j]]
    graph = parent_graph([out], what)
    tg = TraceGraph(graph, f"gradient of {what} body")
    ins = fn.in_avals
    n_x = len(xs)
    phs = [tg.placeholder(a.shape, a.dtype, name=f"arg{i}") for i, a in enumerate(ins)]
    ct_c_phs = [tg.placeholder(ins[i].shape, ins[i].dtype, name=f"ct_carry{i}") for i in range(n_carry) if fc[i]]
    ys_avals = fn.out_avals[n_carry:n_carry + n_ys]
    ct_y_phs = [tg.placeholder(a.shape, a.dtype, name=f"ct_y{j}") for j, a in enumerate(ys_avals) if fy[j]]
    outs = inline(fn, phs, tg)
    ys = [outs[i] for i in range(n_carry) if fc[i]] + [outs[n_carry + j] for j in range(n_ys) if fy[j]]
    wrt = ([phs[i] for i in range(n_carry) if fc[i]] + [phs[n_carry + i] for i in range(n_x) if fx[i]]
           + [phs[n_carry + n_x + i] for i in range(len(caps)) if fk[i]])
    vjp_fn = close(tg, phs + ct_c_phs + ct_y_phs, _grads(ys, wrt, ct_c_phs + ct_y_phs))
    recompute = fn if out.attrs.get("checkpoint") else None  # checkpointed: the body reruns between saves
    node = loop_grad_op.bind(out, *ct_carry, *ct_ys, *xs, *caps, fn=vjp_fn, fwd_fn=recompute, n_carry=n_carry,
                             float_carry=tuple(fc), float_ys=tuple(fy), float_xs=tuple(fx), float_caps=tuple(fk),
                             reverse=bool(reverse), name=f"{what}_grad")
    it = iter(range(sum(fc) + sum(fx) + sum(fk)))
    return tuple(tuple_get(node, next(it)) if f else None for f in fc + fx + fk)


def _loop_grad_parts(fwd: Any, *args: Any, fn: Any, fwd_fn: Any, n_carry: int, float_carry: tuple, float_ys: tuple,
                     float_xs: tuple, float_caps: tuple, reverse: bool) -> tuple:
    if fwd.parts is None or not _is_sub(fn) or not (fwd_fn is None or _is_sub(fwd_fn)):
        raise InvalidArgumentError("loop_grad: needs a loop node, a vjp sub-graph and an optional forward sub-graph")
    k = sum(float_carry) + sum(float_ys)
    n_x = len(float_xs)
    if len(args) != k + n_x + len(float_caps) or len(float_carry) != n_carry:
        raise InvalidArgumentError(f"loop_grad: {len(args)} inputs do not match the float masks")
    xs = args[k:k + n_x]
    caps = args[k + n_x:]
    carry = [a for a, f in zip(fn.in_avals[:n_carry], float_carry) if f]
    return (tuple(carry) + tuple(x for x, f in zip(xs, float_xs) if f)
            + tuple(c for c, f in zip(caps, float_caps) if f))


loop_grad_op = define_op("loop_grad", ("fwd", "*args"),
                         attrs={"fn": REQUIRED, "fwd_fn": None, "n_carry": REQUIRED, "float_carry": (), "float_ys": (),
                                "float_xs": (), "float_caps": (), "reverse": False},
                         shape_rule=lambda *a, **k: (), dtype_rule=lambda *a, **k: None, parts_rule=_loop_grad_parts,
                         differentiable=False,
                         doc="runs a loop body's vjp backwards over the carries its forward loop saved")

_ = format_shape
