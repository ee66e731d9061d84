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
# The reserve (saved for the gradient) is gate-major, (time, 6, batch, units): per step the
# activations of gates i, f, o, then the candidate g, then tanh(c) before masking and c after
# it, so every elementwise operation below runs on contiguous (batch, units) blocks (numpy is
# 2-3x slower on column slices of a (batch, 4 * units) array). The projections themselves,
# x and dx, stay in Keras's (batch, 4 * units) layout with gates i, f, c, o.
_I, _F, _O, _G, _TC, _C = range(6)


def _quiet(xp):
    """numpy: no overflow warning from exp(-z) of a very negative z (1 / (1 + inf) is the right 0)."""
    return np.errstate(over="ignore") if xp is np else contextlib.nullcontext()


@kernel(R.lstm_sequence_op)
def lstm_sequence_kernel(xp, x, h0, c0, rk, *mask):
    n_t, b, g4 = x.shape
    u = g4 // 4
    hs = xp.empty((n_t, b, u), x.dtype)
    res = xp.empty((n_t, 6, b, u), x.dtype)
    z = xp.empty((b, g4), x.dtype)
    zg = z.reshape(b, 4, u).transpose(1, 0, 2)  # gate-major view of z: i, f, c, o
    tmp = xp.empty((b, u), x.dtype)
    pad = ~mask[0][:, :, None] if mask else None  # (T, B, 1): True where a row keeps its state
    h, c = h0, c0
    with _quiet(xp):
        for t in range(n_t):
            xp.matmul(h, rk, out=z)
            z += x[t]
            r = res[t]
            sig = r[:_G]
            xp.negative(zg[:2], out=sig[:2])  # sigmoid(z) = 1 / (1 + exp(-z)), TensorFlow's formula
            xp.negative(zg[3], out=sig[2])
            xp.exp(sig, out=sig)
            sig += 1
            xp.reciprocal(sig, out=sig)
            xp.tanh(zg[2], out=r[_G])
            cn, hn = r[_C], hs[t]
            xp.multiply(r[_F], c, out=cn)
            xp.multiply(r[_I], r[_G], out=tmp)
            cn += tmp
            xp.tanh(cn, out=r[_TC])
            xp.multiply(r[_O], r[_TC], out=hn)
            if pad is not None:
                xp.copyto(hn, h, where=pad[t])
                xp.copyto(cn, c, where=pad[t])
            h, c = hn, cn
    return hs, (res[-1, _C].copy() if n_t else c0.copy()), res


@kernel(R.lstm_sequence_grad_op)
def lstm_sequence_grad_kernel(xp, h0, c0, rk, hs, res, dhs, dc_last, *mask):
    n_t, b, u = hs.shape
    g4 = 4 * u
    dx = xp.empty((n_t, b, g4), hs.dtype)
    dh = xp.zeros((b, u), hs.dtype)  # the cotangents carried back into the previous step
    dc = dc_last.astype(hs.dtype, copy=True)
    dcc = xp.empty((b, u), hs.dtype)  # of c before masking
    dzg = xp.empty((4, b, u), hs.dtype)  # of the pre-activations, gate-major: i, f, o, g
    keep = mask[0][:, :, None].astype(hs.dtype) if mask else None  # 1 where a step counts, 0 where it is padding
    rk_t = rk.T
    for t in range(n_t - 1, -1, -1):
        r = res[t]
        c_prev = res[t - 1, _C] if t else c0
        dh += dhs[t]
        if keep is not None:
            m = keep[t]
            dhn, dcn = dh * m, dc * m  # what reaches the step's new (h, c); the rest skips it
            dh -= dhn
            dc -= dcn
        else:
            dhn, dcn = dh, dc
        tc = r[_TC]
        xp.multiply(tc, tc, out=dcc)  # dc' = dcn + dhn * o * (1 - tanh(c')^2)
        xp.subtract(1, dcc, out=dcc)
        dcc *= r[_O]
        dcc *= dhn
        dcc += dcn
        sig = dzg[:_G]
        xp.subtract(1, r[:_G], out=sig)  # sigmoid' = s (1 - s) for i, f, o
        sig *= r[:_G]
        xp.multiply(r[_G], r[_G], out=dzg[_G])  # tanh' = 1 - g^2 for the candidate
        xp.subtract(1, dzg[_G], out=dzg[_G])
        dzg[_I] *= r[_G]
        dzg[_F] *= c_prev
        dzg[_O] *= tc
        dzg[_G] *= r[_I]
        dzg[_I:_F + 1] *= dcc
        dzg[_G] *= dcc
        dzg[_O] *= dhn
        dzt = dx[t].reshape(b, 4, u).transpose(1, 0, 2)  # Keras's order i, f, c, o
        dzt[:2] = dzg[:2]
        dzt[2] = dzg[_G]
        dzt[3] = dzg[_O]
        if keep is not None:
            dc += dcc * r[_F]
            dh += xp.matmul(dx[t], rk_t)
        else:
            xp.multiply(dcc, r[_F], out=dc)
            xp.matmul(dx[t], rk_t, out=dh)
    if n_t:
        # The recurrent kernel's gradient, one product over all steps: sum_t h_{t-1}^T dz_t.
        drk = xp.matmul(h0.T, dx[0])
        if n_t > 1:
            drk += xp.matmul(hs[:-1].reshape(-1, u).T, dx[1:].reshape(-1, g4))
    else:
        drk = xp.zeros_like(rk)
    return dx, dh, dc, drk
