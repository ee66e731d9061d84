"""Kernels of the control-flow ops (same order as graph/ops/control_flow.py).

They run their sub-graphs through ``ctx.subgraph(sub)``: a function of the sub-graph's
input values returning its output values, compiled once per plan by the executor with the
same plan machinery and the node's device; a loop ``bind``s its captured values once and calls
the bound function with the per-iteration values (engine/subgraphs.py). A loop saves its per-iteration carries (device
arrays, in a list: shapes may change) only when a ``loop_grad`` node of the same run
consumes it; the saved list rides as the hidden last element of the loop's value.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InvalidArgumentError, ResourceExhaustedError
from ..graph.ops import control_flow as cf
from .registry import kernel

DEFAULT_SAVED_LIMIT_BYTES = int(os.environ.get("KERNELFLOW_SAVED_LIMIT_BYTES", str(2 << 30)))
"""Bytes a loop may save for its gradient unless the node sets ``saved_limit``."""


class Checkpoints:
    """What a checkpointed loop saves: the carry every ``stride`` iterations, and the trip count."""

    __slots__ = ("stride", "carries", "steps")

    def __init__(self, stride: int):
        self.stride = stride
        self.carries: list[list] = []
        self.steps = 0


class _Saver:
    """Collects a loop's per-iteration carries for its gradient, within the memory limit."""

    def __init__(self, ctx: Any, limit: int, stride: int):
        self.ctx = ctx
        self.limit = limit or DEFAULT_SAVED_LIMIT_BYTES
        self.saved: Any = Checkpoints(stride) if stride else []
        self.nbytes = 0

    def add(self, i: int, carry: list) -> None:
        s = self.saved
        if isinstance(s, Checkpoints):
            s.steps = i + 1
            if i % s.stride:
                return
            s.carries.append(carry)
        else:
            s.append(carry)
        self.nbytes += _nbytes(carry)
        if self.nbytes > self.limit:
            raise _too_much(self.ctx, self.limit, self.nbytes, i + 1)


def _saves(ctx: Any) -> bool:
    return any(c.op is cf.loop_grad_op for c in ctx.consumers())


def _nbytes(values: list) -> int:
    return sum(int(getattr(v, "nbytes", 0)) for v in values)


def _too_much(ctx: Any, limit: int, nbytes: int, steps: int) -> ResourceExhaustedError:
    node = ctx.node
    return ResourceExhaustedError(
        f"{node.op.name} '{node.name}': the per-iteration values saved for the gradient exceed the memory limit of "
        f"{limit} bytes ({nbytes} bytes after {steps} iterations); bound the loop with maximum_iterations or raise "
        "saved_memory_limit", node=node.name, source=node.source)


def _fresh(outs: list, ins: tuple) -> list:
    """``outs`` with copies of values that are one of ``ins`` (a variable's storage passed through a
    branch or a zero-trip loop) or read-only (a body's constant): the node's results are its own."""
    return [o.copy() if any(o is i for i in ins) or not getattr(getattr(o, "flags", None), "writeable", True) else o
            for o in outs]


@kernel(cf.tuple_get_op)
def tuple_get_kernel(xp, tup, index):
    return tup[index]


@kernel(cf.case_op, needs_ctx=True)
def case_kernel(ctx, xp, index, *args, branches, what):
    i = int(index)
    if not 0 <= i < len(branches):
        i = len(branches) - 1
    return tuple(_fresh(ctx.subgraph(branches[i])(list(args)), args))


@kernel(cf.while_op, needs_ctx=True)
def while_kernel(ctx, xp, max_iters, *args, cond, body, n_vars, saved_limit, checkpoint):
    caps = args[n_vars:]
    run_cond = ctx.subgraph(cond).bind(caps)
    run_body = ctx.subgraph(body).bind(caps)
    vals = list(args[:n_vars])
    limit = int(max_iters)
    saver = _Saver(ctx, saved_limit, checkpoint) if _saves(ctx) else None
    if limit < 0 and saver is None:  # the common loop, kept lean: each run_cond call checks cancellation
        while run_cond(vals)[0]:
            vals = run_body(vals)
    else:
        i = 0
        while (limit < 0 or i < limit) and run_cond(vals)[0]:
            if saver is not None:
                saver.add(i, vals)
            vals = run_body(vals)
            i += 1
    return (*_fresh(vals, args), saver.saved if saver is not None else None)


@kernel(cf.scan_op, needs_ctx=True)
def scan_kernel(ctx, xp, *args, fn, n_carry, n_xs, length, reverse, saved_limit, checkpoint):
    carry = list(args[:n_carry])
    xs = args[n_carry:n_carry + n_xs]
    run = ctx.subgraph(fn).bind(args[n_carry + n_xs:])
    steps = int(xs[0].shape[0]) if n_xs else int(length)
    for x in xs:
        if int(x.shape[0]) != steps:
            raise InvalidArgumentError(f"scan '{ctx.node.name}': elems disagree in their leading dim: "
                                       f"{[tuple(x.shape) for x in xs]}", node=ctx.node.name)
    n_ys = len(fn.outputs) - n_carry
    ys: list[list] = [[] for _ in range(n_ys)]
    saver = _Saver(ctx, saved_limit, checkpoint) if _saves(ctx) else None
    for k in range(steps):
        t = steps - 1 - k if reverse else k
        if saver is not None:
            saver.add(k, carry)
        outs = run(carry + [x[t] for x in xs])
        carry = outs[:n_carry]
        for j in range(n_ys):
            ys[j].append(outs[n_carry + j])
    stacked = []
    for j, seq in enumerate(ys):
        if reverse:
            seq.reverse()
        if seq:
            stacked.append(xp.stack(seq))
        else:
            aval = fn.outputs[n_carry + j].aval
            stacked.append(xp.zeros((0,) + tuple(d or 0 for d in aval.shape), dtype=aval.dtype))
    return (*_fresh(carry, args), *stacked, saver.saved if saver is not None else None)


@kernel(cf.loop_grad_op, needs_ctx=True)
def loop_grad_kernel(ctx, xp, fwd, *args, fn, fwd_fn, n_carry, float_carry, float_ys, float_xs, float_caps,
                     reverse):
    saved = fwd[-1]
    if saved is None:  # the forward loop ran in another plan: cannot happen within one run
        raise InvalidArgumentError(f"loop_grad '{ctx.node.name}': the forward loop saved nothing", node=ctx.node.name)
    k_c, k_y, n_x = sum(float_carry), sum(float_ys), len(float_xs)
    ct_carry = list(args[:k_c])
    ct_ys = args[k_c:k_c + k_y]
    xs = args[k_c + k_y:k_c + k_y + n_x]
    caps = list(args[k_c + k_y + n_x:])
    run = ctx.subgraph(fn).bind(caps, start=n_carry + n_x)  # inputs: carry, xs, caps, ct_carry, ct_ys
    fx = [i for i, f in enumerate(float_xs) if f]
    fk = [i for i, f in enumerate(float_caps) if f]
    ct_xs = [xp.zeros_like(xs[i]) for i in fx]
    ct_caps: list[Any] = [None] * len(fk)
    steps = saved.steps if isinstance(saved, Checkpoints) else len(saved)

    def back(k: int, carry: list) -> None:  # the vjp of iteration k, from the carry it started with
        nonlocal ct_carry
        t = steps - 1 - k if reverse else k
        outs = run(list(carry) + [x[t] for x in xs] + ct_carry + [c[t] for c in ct_ys])
        ct_carry = outs[:k_c]
        for j in range(len(fx)):
            ct_xs[j][t] = outs[k_c + j]
        for j in range(len(fk)):
            c = outs[k_c + len(fx) + j]
            ct_caps[j] = c if ct_caps[j] is None else ct_caps[j] + c

    if isinstance(saved, Checkpoints):
        # Recompute each segment's carries forward from its checkpoint, then go back through it.
        run_fwd = ctx.subgraph(fwd_fn).bind(caps)
        stride = saved.stride
        for seg in reversed(range(len(saved.carries))):
            start = seg * stride
            carries = [saved.carries[seg]]
            for k in range(start, min(start + stride, steps) - 1):
                t = steps - 1 - k if reverse else k
                carries.append(run_fwd(list(carries[-1]) + [x[t] for x in xs])[:n_carry])
            for k in reversed(range(start, start + len(carries))):
                back(k, carries[k - start])
    else:
        for k in reversed(range(steps)):
            back(k, saved[k])
    for j, i in enumerate(fk):
        if ct_caps[j] is None:
            ct_caps[j] = xp.zeros_like(caps[i])
    return (*ct_carry, *ct_xs, *ct_caps)
