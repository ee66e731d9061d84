"""Kernels of the fused recurrent-cell ops (same order as graph/ops/recurrent.py)."""

from __future__ import annotations

from ..graph.ops import recurrent as R
from .registry import kernel, special


def _gates(xp, z, c):
    u = c.shape[-1]
    s = special(xp).expit(z)
    i, f, o = s[:, :u], s[:, u:2 * u], s[:, 3 * u:]
    g = xp.tanh(z[:, 2 * u:3 * u])
    c2 = f * c + i * g
    return i, f, g, o, c2


@kernel(R.lstm_cell_op)
def lstm_cell_kernel(xp, z, c):
    i, f, g, o, c2 = _gates(xp, z, c)
    return (o * xp.tanh(c2), c2)


@kernel(R.lstm_cell_grad_op)
def lstm_cell_grad_kernel(xp, z, c, dh, dc):
    i, f, g, o, c2 = _gates(xp, z, c)
    u = c.shape[-1]
    tc = xp.tanh(c2)
    dc2 = dc + dh * o * (1 - tc * tc)
    dz = xp.empty_like(z)
    dz[:, :u] = dc2 * g * i * (1 - i)
    dz[:, u:2 * u] = dc2 * c * f * (1 - f)
    dz[:, 2 * u:3 * u] = dc2 * i * (1 - g * g)
    dz[:, 3 * u:] = dh * tc * o * (1 - o)
    return (dz, dc2 * f)
