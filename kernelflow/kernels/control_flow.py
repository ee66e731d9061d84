"""Kernels of the control-flow ops (same order as graph/ops/control_flow.py).

They run their sub-graphs through ``ctx.subgraph(sub)``: a function of the sub-graph's
input values returning its output values, compiled once per plan by the executor with the
same plan machinery and the node's device. A loop saves its per-iteration carries (device
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


@kernel(cf.tuple_get_op)
def tuple_get_kernel(xp, tup, index):
    return tup[index]


@kernel(cf.case_op, needs_ctx=True)
def case_kernel(ctx, xp, index, *args, branches, what):
    i = int(index)
    if not 0 <= i < len(branches):
        i = len(branches) - 1
    return tuple(ctx.subgraph(branches[i])(list(args)))


@kernel(cf.while_op, needs_ctx=True)
def while_kernel(ctx, xp, max_iters, *args, cond, body, n_vars, saved_limit):
    run_cond = ctx.subgraph(cond)
    run_body = ctx.subgraph(body)
    vals = list(args[:n_vars])
    caps = list(args[n_vars:])
    limit = int(max_iters)
    saved: list | None = [] if _saves(ctx) else None
    mem_limit = saved_limit or DEFAULT_SAVED_LIMIT_BYTES
    nbytes = 0
    i = 0
    while (limit < 0 or i < limit) and run_cond(vals + caps)[0]:
        if saved is not None:
            saved.append(vals)
            nbytes += _nbytes(vals)
            if nbytes > mem_limit:
                raise _too_much(ctx, mem_limit, nbytes, i + 1)
        vals = run_body(vals + caps)
        i += 1
    return (*vals, saved)


@kernel(cf.scan_op, needs_ctx=True)
def scan_kernel(ctx, xp, *args, fn, n_carry, n_xs, length, reverse, saved_limit):
    run = ctx.subgraph(fn)
    carry = list(args[:n_carry])
    xs = args[n_carry:n_carry + n_xs]
    caps = list(args[n_carry + n_xs:])
    steps = int(xs[0].shape[0]) if n_xs else int(length)
    for x in xs:
        if int(x.shape[0]) != steps:
            raise InvalidArgumentError(f"scan '{ctx.node.name}': elems disagree in their leading dim: "
                                       f"{[tuple(x.shape) for x in xs]}", node=ctx.node.name)
    n_ys = len(fn.outputs) - n_carry
    ys: list[list] = [[] for _ in range(n_ys)]
    saved: list | None = [] if _saves(ctx) else None
    mem_limit = saved_limit or DEFAULT_SAVED_LIMIT_BYTES
    nbytes = 0
    for k in range(steps):
        t = steps - 1 - k if reverse else k
        if saved is not None:
            saved.append(carry)
            nbytes += _nbytes(carry)
            if nbytes > mem_limit:
                raise _too_much(ctx, mem_limit, nbytes, k + 1)
        outs = run(carry + [x[t] for x in xs] + caps)
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
    return (*carry, *stacked, saved)


@kernel(cf.loop_grad_op, needs_ctx=True)
def loop_grad_kernel(ctx, xp, fwd, *args, fn, n_carry, float_carry, float_ys, float_xs, float_caps, reverse):
    saved = fwd[-1]
    if saved is None:  # the forward loop ran in another plan: cannot happen within one run
        raise InvalidArgumentError(f"loop_grad '{ctx.node.name}': the forward loop saved nothing", node=ctx.node.name)
    run = ctx.subgraph(fn)
    k_c, k_y, n_x = sum(float_carry), sum(float_ys), len(float_xs)
    ct_carry = list(args[:k_c])
    ct_ys = args[k_c:k_c + k_y]
    xs = args[k_c + k_y:k_c + k_y + n_x]
    caps = list(args[k_c + k_y + n_x:])
    fx = [i for i, f in enumerate(float_xs) if f]
    fk = [i for i, f in enumerate(float_caps) if f]
    ct_xs = [xp.zeros_like(xs[i]) for i in fx]
    ct_caps: list[Any] = [None] * len(fk)
    steps = len(saved)
    for k in reversed(range(steps)):
        t = steps - 1 - k if reverse else k
        feed = list(saved[k]) + [x[t] for x in xs] + caps + ct_carry + [c[t] for c in ct_ys]
        outs = run(feed)
        ct_carry = outs[:k_c]
        for j in range(len(fx)):
            ct_xs[j][t] = outs[k_c + j]
        for j in range(len(fk)):
            c = outs[k_c + len(fx) + j]
            ct_caps[j] = c if ct_caps[j] is None else ct_caps[j] + c
    for j, i in enumerate(fk):
        if ct_caps[j] is None:
            ct_caps[j] = xp.zeros_like(caps[i])
    return (*ct_carry, *ct_xs, *ct_caps)
