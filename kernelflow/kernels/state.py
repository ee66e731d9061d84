"""Kernels of the state and structure ops (same order as graph/ops/state.py).

Placeholders have no kernel: the executor puts the fed value in their slot. Variable
kernels work on the runtime's storage through the node context (``ctx.storage``), and
update it in place, so a variable never changes identity within a run.
"""

from __future__ import annotations

import logging

from ..graph.ops import state as S
from .registry import kernel

log = logging.getLogger("kernelflow.print")


@kernel(S.constant_op, needs_ctx=True)
def constant_kernel(ctx, xp, value):
    return ctx.device_constant(value)


@kernel(S.variable_op, needs_ctx=True)
def variable_kernel(ctx, xp, initial, trainable):
    return ctx.storage(ctx.node)


@kernel(S.assign_op, needs_ctx=True)
def assign_kernel(ctx, xp, ref, value):
    x = ctx.storage(ctx.node.inputs[0])
    xp.copyto(x, value)
    return x


@kernel(S.assign_add_op, needs_ctx=True)
def assign_add_kernel(ctx, xp, ref, value):
    x = ctx.storage(ctx.node.inputs[0])
    return xp.add(x, value, out=x)


@kernel(S.assign_sub_op, needs_ctx=True)
def assign_sub_kernel(ctx, xp, ref, value):
    x = ctx.storage(ctx.node.inputs[0])
    return xp.subtract(x, value, out=x)


@kernel(S.read_variable_op, needs_ctx=True)
def read_variable_kernel(ctx, xp, ref):
    return ctx.storage(ctx.node.inputs[0])


@kernel(S.group_op)
def group_kernel(xp, *inputs):
    return None


@kernel(S.no_op_op)
def no_op_kernel(xp):
    return None


@kernel(S.identity_op)
def identity_kernel(xp, x):
    return x


@kernel(S.stop_gradient_op)
def stop_gradient_kernel(xp, x):
    return x


@kernel(S.print_op, needs_ctx=True)
def print_kernel(ctx, xp, x, message, summarize):
    flat = x.reshape(-1)[:summarize].tolist() if hasattr(x, "reshape") else x
    ctx.log(f"{message}{ctx.node.name} shape={tuple(x.shape)} dtype={x.dtype} values={flat}")
    return x
