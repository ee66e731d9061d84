"""Kernels of the fused recurrent ops (same order as graph/ops/recurrent.py)."""

from __future__ import annotations

import contextlib

import numpy as np

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


# --------------------------------------------------------------------------- whole-sequence LSTM
def _quiet(xp):
    """numpy: no overflow warning from exp(-z) of a very negative z (1 / (1 + inf) is the right 0)."""
    return np.errstate(over="ignore") if xp is np else contextlib.nullcontext()


def _sigmoid(xp, z, out):
    """``1 / (1 + exp(-z))`` into ``out`` (TensorFlow's formula; scipy's expit is 3x slower here)."""
    xp.negative(z, out=out)
    xp.exp(out, out=out)
    out += 1
    xp.reciprocal(out, out=out)


@kernel(R.lstm_sequence_op)
def lstm_sequence_kernel(xp, x, h0, c0, rk, *mask):
    n_t, b, g4 = x.shape
    u = g4 // 4
    hs = xp.empty((n_t, b, u), x.dtype)
    cs = xp.empty((n_t, b, u), x.dtype)
    res = xp.empty((n_t, b, 5 * u), x.dtype)  # per step: i, f, g, o activations and tanh(c) before masking
    z = xp.empty((b, g4), x.dtype)
    tmp = xp.empty((b, u), x.dtype)
    pad = ~mask[0][:, :, None] if mask else None  # (T, B, 1): True where a row keeps its state
    h, c = h0, c0
    with _quiet(xp):
        for t in range(n_t):
            xp.matmul(h, rk, out=z)
            z += x[t]
            r = res[t]
            _sigmoid(xp, z, r[:, :g4])
            xp.tanh(z[:, 2 * u:3 * u], out=r[:, 2 * u:3 * u])
            hn, cn, tc = hs[t], cs[t], r[:, 4 * u:]
            xp.multiply(r[:, u:2 * u], c, out=cn)
            xp.multiply(r[:, :u], r[:, 2 * u:3 * u], out=tmp)
            cn += tmp
            xp.tanh(cn, out=tc)
            xp.multiply(r[:, 3 * u:4 * u], tc, out=hn)
            if pad is not None:
                xp.copyto(hn, h, where=pad[t])
                xp.copyto(cn, c, where=pad[t])
            h, c = hn, cn
    return hs, cs, res


@kernel(R.lstm_sequence_grad_op)
def lstm_sequence_grad_kernel(xp, h0, c0, rk, hs, cs, res, dhs, dcs, *mask):
    n_t, b, u = hs.shape
    g4 = 4 * u
    dx = xp.empty((n_t, b, g4), hs.dtype)
    dh = xp.zeros((b, u), hs.dtype)  # the cotangents carried back into the previous step
    dc = xp.zeros((b, u), hs.dtype)
    dcc = xp.empty((b, u), hs.dtype)  # of c before masking
    keep = mask[0][:, :, None].astype(hs.dtype) if mask else None  # 1 where a step counts, 0 where it is padding
    rk_t = rk.T
    for t in range(n_t - 1, -1, -1):
        r = res[t]
        i, f, g, o, tc = (r[:, k * u:(k + 1) * u] for k in range(5))
        c_prev = cs[t - 1] if t else c0
        dh += dhs[t]
        dc += dcs[t]
        if keep is not None:
            m = keep[t]
            dhn, dcn = dh * m, dc * m  # what reaches the step's new (h, c); the rest skips it
            dh -= dhn
            dc -= dcn
        else:
            dhn, dcn = dh, dc
        # dc' = dcn + dhn * o * (1 - tanh(c')^2)
        xp.multiply(tc, tc, out=dcc)
        xp.subtract(1, dcc, out=dcc)
        dcc *= o
        dcc *= dhn
        dcc += dcn
        dz = dx[t]
        act = r[:, :g4]
        xp.subtract(1, act, out=dz)  # sigmoid' = s (1 - s) for i, f, o
        dz *= act
        dg = dz[:, 2 * u:3 * u]
        xp.multiply(g, g, out=dg)  # tanh' = 1 - g^2 for the candidate
        xp.subtract(1, dg, out=dg)
        dz[:, :u] *= g
        dz[:, u:2 * u] *= c_prev
        dg *= i
        dz[:, 3 * u:] *= tc
        dz3 = dz.reshape(b, 4, u)
        dz3[:, :3] *= dcc[:, None, :]
        dz[:, 3 * u:] *= dhn
        if keep is not None:
            dc += dcc * f
            dh += xp.matmul(dz, rk_t)
        else:
            xp.multiply(dcc, f, out=dc)
            xp.matmul(dz, rk_t, out=dh)
    if n_t:
        # The recurrent kernel's gradient, one product over all steps: sum_t h_{t-1}^T dz_t.
        drk = xp.matmul(h0.T, dx[0])
        if n_t > 1:
            drk += xp.matmul(hs[:-1].reshape(-1, u).T, dx[1:].reshape(-1, g4))
    else:
        drk = xp.zeros_like(rk)
    return dx, dh, dc, drk
