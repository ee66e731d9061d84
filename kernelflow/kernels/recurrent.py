"""Kernels of the fused recurrent ops (same order as graph/ops/recurrent.py)."""

from __future__ import annotations

import contextlib

import numpy as np

from ..errors import ResourceExhaustedError
from ..graph.ops import control_flow as cf
from ..graph.ops import recurrent as R
from .control_flow import DEFAULT_SAVED_LIMIT_BYTES
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
# activations of gates i, f, o, then the candidate g, the cell state the step started from
# (c_prev) and tanh of its new c before masking. Every elementwise operation below then runs
# on contiguous (batch, units) blocks (numpy is 2-3x slower on column slices of a (batch,
# 4 * units) array), and the three sigmoid gates' derivative partners (g, c_prev, tanh(c))
# are one contiguous block too. x and dx stay in Keras's (batch, 4 * units) layout, gates
# i, f, c, o.
_I, _F, _O, _G, _CP, _TC = range(6)


def _quiet(xp):
    """numpy: no overflow warning from exp(-z) of a very negative z (1 / (1 + inf) is the right 0)."""
    return np.errstate(over="ignore") if xp is np else contextlib.nullcontext()


def _gate_major(a, u):
    """(batch, 4 * units) -> a (4, batch, units) view, Keras's gate order i, f, c, o."""
    return a.reshape(a.shape[0], 4, u).transpose(1, 0, 2)


def _reserve(ctx, xp, n_t, b, u, dtype, blocks=6, index=2, what="lstm_sequence"):
    """(time, 6, batch, units) when this run's plan takes the gradient (the reserve output is
    read), else two steps' worth used in turn: a forward-only run keeps no history.

    Raises:
        ResourceExhaustedError: the reserve would exceed the saved-values memory limit of loops.
    """
    wanted = ctx is None or any(c.op is cf.tuple_get_op and c.attrs["index"] == index for c in ctx.consumers())
    if not wanted:
        return xp.empty((2, blocks, b, u), dtype), False
    nbytes = n_t * blocks * b * u * np.dtype(dtype).itemsize
    if nbytes > DEFAULT_SAVED_LIMIT_BYTES:
        node = ctx.node
        raise ResourceExhaustedError(
            f"{what} '{node.name}': the values saved for the gradient ({nbytes} bytes for {n_t} steps) exceed "
            f"the memory limit of {DEFAULT_SAVED_LIMIT_BYTES} bytes (KERNELFLOW_SAVED_LIMIT_BYTES); use shorter "
            "sequences or smaller batches", node=node.name, source=node.source)
    return xp.empty((n_t, blocks, b, u), dtype), True


class LstmForward:
    """What both the numpy kernel and the compiled one (compiler/cpu_recurrent.py) set up before
    their step loops: outputs, the reserve and the recurrent kernel gate-major, negated for the
    sigmoid gates (their ``exp(-v)`` then comes straight from the product)."""

    def __init__(self, ctx, xp, x, h0, c0, rk):
        self.n_t, b, g4 = x.shape
        self.u = u = g4 // 4
        self.hs = xp.empty((self.n_t, b, u), x.dtype)
        self.c_last = xp.empty((b, u), x.dtype)
        self.res, self.saving = (xp.empty((0, 6, b, u), x.dtype), True) if self.n_t == 0 else \
            _reserve(ctx, xp, self.n_t, b, u, x.dtype)
        r4 = rk.reshape(u, 4, u).transpose(1, 0, 2)  # Keras's i, f, c, o
        self.nr4 = nr4 = xp.empty((4, u, u), rk.dtype)
        xp.negative(r4[:2], out=nr4[:2])
        xp.negative(r4[3], out=nr4[_O])
        nr4[_G] = r4[2]
        if self.n_t == 0:
            self.c_last[...] = c0
        else:
            self.res[0, _CP] = c0

    def step_blocks(self, t):
        """(the reserve block of step t, where its new c goes)."""
        n_t, res = self.n_t, self.res
        r = res[t if self.saving else t % 2]
        cn = (res[t + 1 if self.saving else (t + 1) % 2, _CP] if t + 1 < n_t else self.c_last)
        return r, cn

    def outputs(self):
        return self.hs, self.c_last, self.res if self.saving else None


@kernel(R.lstm_sequence_op, needs_ctx=True)
def lstm_sequence_kernel(ctx, xp, x, h0, c0, rk, bias, *mask):
    f = LstmForward(ctx, xp, x, h0, c0, rk)
    n_t, b, u = f.hs.shape
    if n_t == 0:
        return f.outputs()
    # The recurrent product goes straight into the reserve's gate blocks as one batched product
    # h @ (4, units, units): negated for the sigmoid gates, whose exp(-v) it then feeds.
    pad = ~mask[0][:, :, None] if mask else None  # (T, B, 1): True where a row keeps its state
    tmp = xp.empty((b, u), x.dtype)
    xc = xp.empty((4, b, u), x.dtype)  # x[t] + bias gate-major: one strided pass, then contiguous arithmetic
    b4 = xp.empty((4, b, u), x.dtype)  # the bias per gate and row (numpy adds a broadcast (4, 1, u) 2x slower)
    b4[...] = bias.reshape(4, 1, u)
    h = h0
    with _quiet(xp):
        for t in range(n_t):
            r, cn = f.step_blocks(t)
            xp.add(_gate_major(x[t], u), b4, out=xc)
            xp.matmul(h, f.nr4, out=r[:4])
            sig = r[:_G]
            sig[:2] -= xc[:2]  # -(x + h @ rk); sigmoid(v) = 1 / (1 + exp(-v)), TensorFlow's formula
            sig[_O] -= xc[3]
            r[_G] += xc[2]
            xp.exp(sig, out=sig)
            sig += 1
            xp.reciprocal(sig, out=sig)
            xp.tanh(r[_G], out=r[_G])
            hn = f.hs[t]
            xp.multiply(r[_F], r[_CP], out=cn)
            xp.multiply(r[_I], r[_G], out=tmp)
            cn += tmp
            xp.tanh(cn, out=r[_TC])
            xp.multiply(r[_O], r[_TC], out=hn)
            if pad is not None:
                xp.copyto(hn, h, where=pad[t])
                xp.copyto(cn, r[_CP], where=pad[t])
            h = hn
    return f.outputs()


@kernel(R.lstm_sequence_grad_op)
def lstm_sequence_grad_kernel(xp, h0, c0, rk, hs, res, dhs, dc_last, *mask):
    n_t, b, u = hs.shape
    g4 = 4 * u
    dx = xp.empty((n_t, b, g4), hs.dtype)
    dh = xp.zeros((b, u), hs.dtype)  # the cotangents carried back into the previous step
    dc = dc_last.astype(hs.dtype, copy=True)
    dcc = xp.empty((b, u), hs.dtype)  # of the step's new c before masking
    # What does not depend on the carried cotangents, for every step at once (a few big array
    # operations instead of a dozen small ones per step): the sigmoid gates' s (1 - s) times g,
    # c_prev, tanh(c') for i, f, o; the candidate's (1 - g^2) i; and o (1 - tanh(c')^2).
    sg = res[:, :_G]
    ds_all = 1 - sg
    ds_all *= sg
    ds_all *= res[:, _G:]
    dg_all = xp.multiply(res[:, _G], res[:, _G])
    xp.subtract(1, dg_all, out=dg_all)
    dg_all *= res[:, _I]
    do_all = xp.multiply(res[:, _TC], res[:, _TC])
    xp.subtract(1, do_all, out=do_all)
    do_all *= res[:, _O]
    dzc = xp.empty((4, b, u), hs.dtype)  # dz gate-major (Keras's order), copied into dx in one pass
    keep = mask[0][:, :, None].astype(hs.dtype) if mask else None  # 1 where a step counts, 0 where it is padding
    rt4 = lstm_rt4(xp, rk)
    dhg4 = xp.empty((4, b, u), hs.dtype)
    dhg = xp.empty((b, u), hs.dtype)
    for t in range(n_t - 1, -1, -1):
        dh += dhs[t]
        if keep is not None:
            m = keep[t]
            dhn, dcn = dh * m, dc * m  # what reaches the step's new (h, c); the rest skips the step
            dh -= dhn
            dc -= dcn
        else:
            dhn, dcn = dh, dc
        xp.multiply(do_all[t], dhn, out=dcc)  # dc' = dcn + dhn * o * (1 - tanh(c')^2)
        dcc += dcn
        ds = ds_all[t]
        xp.multiply(ds[:2], dcc, out=dzc[:2])
        xp.multiply(dg_all[t], dcc, out=dzc[2])
        xp.multiply(ds[2], dhn, out=dzc[3])
        dz = dx[t]
        _gate_major(dz, u)[...] = dzc
        if keep is not None:
            dc += dcc * res[t, _F]
            lstm_dh(xp, dzc, rt4, dhg4, dhg)
            dh += dhg
        else:
            xp.multiply(dcc, res[t, _F], out=dc)
            lstm_dh(xp, dzc, rt4, dhg4, dh)
    return lstm_grad_outputs(xp, h0, rk, hs, dx, dh, dc)


def lstm_rt4(xp, rk):
    """The recurrent kernel per gate, transposed: (4, units, units), [k] = rk[:, k u:(k + 1) u].T."""
    u = rk.shape[0]
    return xp.ascontiguousarray(rk.reshape(u, 4, u).transpose(1, 2, 0))


def lstm_dh(xp, dzc, rt4, dhg4, out):
    """out = dz @ rk.T from dz gate-major (4, batch, units): four (units x units) products summed,
    ~20 % faster with OpenBLAS than one product with a 4 * units inner dimension."""
    xp.matmul(dzc, rt4, out=dhg4)
    xp.sum(dhg4, axis=0, out=out)


def lstm_grad_outputs(xp, h0, rk, hs, dx, dh, dc):
    """The gradient op's outputs once the step loop has made dx and the carried dh, dc: adds the
    recurrent kernel's gradient, one product over all steps (sum_t h_{t-1}^T dz_t), and the bias's."""
    n_t, _, u = hs.shape
    g4 = 4 * u
    if n_t:
        drk = xp.matmul(h0.T, dx[0])
        if n_t > 1:
            drk += xp.matmul(hs[:-1].reshape(-1, u).T, dx[1:].reshape(-1, g4))
    else:
        drk = xp.zeros_like(rk)
    return dx, dh, dc, drk, dx.reshape(-1, g4).sum(axis=0)


# --------------------------------------------------------------------------- whole-sequence GRU
# Reserve (time, 4, batch, units): z, r, the candidate hh and the recurrent part of its
# pre-activation (h @ recurrent_kernel_h + recurrent bias_h), which the reset gate scales.
_Z, _R, _HH, _IH = range(4)


def _gates3(a, u):
    """(batch, 3 * units) -> a (3, batch, units) view, Keras's gate order z, r, h."""
    return a.reshape(a.shape[0], 3, u).transpose(1, 0, 2)


def gru_setup(ctx, xp, x, rk):
    """(outputs, reserve, whether it is saved, the recurrent kernel per gate (3, units, units)):
    what the numpy kernel and the compiled one (compiler/cpu_recurrent.py) set up alike."""
    n_t, b, g3 = x.shape
    u = g3 // 3
    hs = xp.empty((n_t, b, u), x.dtype)
    res, saving = (xp.empty((0, 4, b, u), x.dtype), True) if n_t == 0 else \
        _reserve(ctx, xp, n_t, b, u, x.dtype, blocks=4, index=1, what="gru_sequence")
    return hs, res, saving, xp.ascontiguousarray(rk.reshape(u, 3, u).transpose(1, 0, 2))


@kernel(R.gru_sequence_op, needs_ctx=True)
def gru_sequence_kernel(ctx, xp, x, h0, rk, bias, *mask):
    hs, res, saving, r3 = gru_setup(ctx, xp, x, rk)
    n_t, b, u = hs.shape
    if n_t == 0:
        return hs, res
    bx = xp.empty((3, b, u), x.dtype)  # the biases per gate and row (a broadcast add is 2x slower)
    bx[...] = bias[0].reshape(3, 1, u)
    bi = xp.empty((3, b, u), x.dtype)
    bi[...] = bias[1].reshape(3, 1, u)
    xc = xp.empty((3, b, u), x.dtype)
    inner = xp.empty((3, b, u), x.dtype)
    tmp = xp.empty((b, u), x.dtype)
    pad = ~mask[0][:, :, None] if mask else None
    h = h0
    with _quiet(xp):
        for t in range(n_t):
            r = res[t if saving else t % 2]
            xp.add(_gates3(x[t], u), bx, out=xc)
            xp.matmul(h, r3, out=inner)
            inner += bi
            sig = r[:_HH]
            xp.add(xc[:2], inner[:2], out=sig)  # z, r = sigmoid(x + inner)
            xp.negative(sig, out=sig)
            xp.exp(sig, out=sig)
            sig += 1
            xp.reciprocal(sig, out=sig)
            r[_IH] = inner[2]
            hh = r[_HH]
            xp.multiply(r[_R], inner[2], out=hh)  # hh = tanh(x_h + r * inner_h)
            hh += xc[2]
            xp.tanh(hh, out=hh)
            hn = hs[t]
            xp.multiply(r[_Z], h, out=hn)  # h' = z * h + (1 - z) * hh, Keras's form
            xp.subtract(1, r[_Z], out=tmp)
            tmp *= hh
            hn += tmp
            if pad is not None:
                xp.copyto(hn, h, where=pad[t])
            h = hn
    return hs, res if saving else None


@kernel(R.gru_sequence_grad_op)
def gru_sequence_grad_kernel(xp, h0, rk, hs, res, dhs, *mask):
    n_t, b, u = hs.shape
    g3 = 3 * u
    dx = xp.empty((n_t, b, g3), hs.dtype)
    di = xp.empty((n_t, b, g3), hs.dtype)  # of the recurrent pre-activations h @ rk + bias[1]
    dh = xp.zeros((b, u), hs.dtype)
    rt3 = gru_rt3(xp, rk)
    dxc = xp.empty((3, b, u), hs.dtype)
    dic = xp.empty((3, b, u), hs.dtype)
    dhg = xp.empty((3, b, u), hs.dtype)
    tmp = xp.empty((b, u), hs.dtype)
    tmp2 = xp.empty((b, u), hs.dtype)
    direct = xp.empty((b, u), hs.dtype)
    keep = mask[0][:, :, None].astype(hs.dtype) if mask else None
    for t in range(n_t - 1, -1, -1):
        r = res[t]
        z, rr, hh, ih = r[_Z], r[_R], r[_HH], r[_IH]
        hp = hs[t - 1] if t else h0
        dh += dhs[t]
        if keep is not None:
            dhn = dh * keep[t]  # what reaches the step's new h; the rest skips the step
            dh -= dhn
        else:
            dhn = dh
        xp.subtract(hp, hh, out=tmp)  # z: dhn * (h - hh) * z (1 - z)
        tmp *= dhn
        xp.subtract(1, z, out=tmp2)
        tmp2 *= z
        xp.multiply(tmp, tmp2, out=dxc[0])
        xp.subtract(1, z, out=tmp)  # the candidate's pre-activation: dhn * (1 - z) * (1 - hh^2)
        tmp *= dhn
        xp.multiply(hh, hh, out=tmp2)
        xp.subtract(1, tmp2, out=tmp2)
        xp.multiply(tmp, tmp2, out=dxc[2])
        xp.multiply(dxc[2], ih, out=tmp)  # r: that * inner_h * r (1 - r)
        xp.subtract(1, rr, out=tmp2)
        tmp2 *= rr
        xp.multiply(tmp, tmp2, out=dxc[1])
        dic[:2] = dxc[:2]
        xp.multiply(dxc[2], rr, out=dic[2])
        xp.multiply(dhn, z, out=direct)  # h' = z * h + ...: the direct path to h
        _gates3(dx[t], u)[...] = dxc
        _gates3(di[t], u)[...] = dic
        xp.matmul(dic, rt3, out=dhg)
        if keep is not None:
            dh += direct
            dh += dhg.sum(axis=0)
        else:
            xp.sum(dhg, axis=0, out=dh)
            dh += direct
    return gru_grad_outputs(xp, h0, rk, hs, dx, di, dh)


def gru_rt3(xp, rk):
    """The recurrent kernel per gate, transposed: (3, units, units), [k] = rk[:, k u:(k + 1) u].T."""
    u = rk.shape[0]
    return xp.ascontiguousarray(rk.reshape(u, 3, u).transpose(1, 2, 0))


def gru_grad_outputs(xp, h0, rk, hs, dx, di, dh):
    """The gradient op's outputs once the step loop has made dx, di (the recurrent pre-activations'
    cotangents) and the carried dh: adds the recurrent kernel's gradient and the biases'."""
    n_t, _, u = hs.shape
    g3 = 3 * u
    drk = xp.matmul(h0.T, di[0]) if n_t else xp.zeros_like(rk)
    if n_t > 1:
        drk += xp.matmul(hs[:-1].reshape(-1, u).T, di[1:].reshape(-1, g3))
    dbias = xp.stack([dx.reshape(-1, g3).sum(axis=0), di.reshape(-1, g3).sum(axis=0)])
    return dx, dh, drk, dbias
