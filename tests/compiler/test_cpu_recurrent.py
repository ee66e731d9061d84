"""The compiled LSTM and GRU kernels (compiler/cpu_recurrent.py) are bitwise the numpy kernels, for
every layout the drivers take, and fall back to them for what they do not take."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler import cpu_recurrent
from kernelflow.compiler.cpu_kernels import _Module
from kernelflow.compiler.numba_backend import digest
from kernelflow.graph.ops import recurrent as R
from kernelflow.kernels.registry import get_kernel

pytest.importorskip("numba")

T, B, U = 7, 5, 6


@pytest.fixture(scope="module")
def ov(kcache):
    return cpu_recurrent.overrides(kcache)


def _numpy(op):
    return get_kernel(op, "numpy").fn


def _inputs(rng, dtype, masked):
    x = rng.standard_normal((T, B, 4 * U)).astype(dtype)
    h0 = rng.standard_normal((B, U)).astype(dtype)
    c0 = rng.standard_normal((B, U)).astype(dtype)
    rk = (rng.standard_normal((U, 4 * U)) * 0.5).astype(dtype)
    bias = rng.standard_normal(4 * U).astype(dtype)
    mask = (rng.random((T, B)) > 0.3,) if masked else ()
    if masked:
        mask[0][0, 0] = mask[0][-1, 1] = False  # a row padded at the start and one at the end
    return x, h0, c0, rk, bias, mask


def _layouts(rng, dtype):
    """The output cotangents (time, batch, units) as C-ordered, as the transpose of a batch-major
    array (what a batch-first layer feeds) and as a strided slice."""
    tm = rng.standard_normal((T, B, U)).astype(dtype)
    bm = np.ascontiguousarray(tm.transpose(1, 0, 2)).transpose(1, 0, 2)
    wide = np.zeros((T, B, 2 * U), dtype)
    wide[..., ::2] = tm
    return {"time-major": tm, "batch-major": bm, "strided": wide[..., ::2]}


def _gru_inputs(rng, dtype, masked):
    x, h0, _, _, _, mask = _inputs(rng, dtype, masked)
    x = x[..., :3 * U].copy()
    rk = (rng.standard_normal((U, 3 * U)) * 0.5).astype(dtype)
    bias = rng.standard_normal((2, 3 * U)).astype(dtype)
    return x, h0, rk, bias, mask


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gru_forward_and_gradient_are_bitwise_the_numpy_kernels(ov, rng, dtype, masked):
    x, h0, rk, bias, mask = _gru_inputs(rng, dtype, masked)
    want = _numpy(R.gru_sequence_op)(None, np, x, h0, rk, bias, *mask)
    got = ov[R.gru_sequence_op].fn(None, np, x, h0, rk, bias, *mask)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    hs, res = want
    for name, dhs in _layouts(rng, dtype).items():
        gw = _numpy(R.gru_sequence_grad_op)(np, h0, rk, hs, res, dhs, *mask)
        gg = ov[R.gru_sequence_grad_op].fn(np, h0, rk, hs, res, dhs, *mask)
        for w, g in zip(gw, gg):
            np.testing.assert_array_equal(g, w, err_msg=name)
        assert np.abs(gg[2]).max() > 0.01  # the recurrent kernel's gradient: not a test on zeros


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_and_gradient_are_bitwise_the_numpy_kernels(ov, rng, dtype, masked):
    x, h0, c0, rk, bias, mask = _inputs(rng, dtype, masked)
    want = _numpy(R.lstm_sequence_op)(None, np, x, h0, c0, rk, bias, *mask)
    got = ov[R.lstm_sequence_op].fn(None, np, x, h0, c0, rk, bias, *mask)
    for w, g in zip(want, got):
        assert g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    hs, _, res = want
    dcl = rng.standard_normal((B, U)).astype(dtype)
    for name, dhs in _layouts(rng, dtype).items():
        gw = _numpy(R.lstm_sequence_grad_op)(np, h0, c0, rk, hs, res, dhs, dcl, *mask)
        gg = ov[R.lstm_sequence_grad_op].fn(np, h0, c0, rk, hs, res, dhs, dcl, *mask)
        for w, g in zip(gw, gg):
            np.testing.assert_array_equal(g, w, err_msg=name)


def test_float32_kernels_track_a_float64_run(ov, rng):
    x, h0, c0, rk, bias, mask = _inputs(rng, "float64", True)
    dhs = rng.standard_normal((T, B, U))
    dcl = rng.standard_normal((B, U))
    ref_f = _numpy(R.lstm_sequence_op)(None, np, x, h0, c0, rk, bias, *mask)
    ref_g = _numpy(R.lstm_sequence_grad_op)(np, h0, c0, rk, ref_f[0], ref_f[2], dhs, dcl, *mask)
    f32 = [a.astype(np.float32) for a in (x, h0, c0, rk, bias)]
    out = ov[R.lstm_sequence_op].fn(None, np, *f32, *mask)
    grads = ov[R.lstm_sequence_grad_op].fn(np, f32[1], f32[2], f32[3], out[0], out[2], dhs.astype(np.float32),
                                           dcl.astype(np.float32), *mask)
    for a, b in zip(out[:2], ref_f[:2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, ref_g):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert np.abs(ref_g[0]).max() > 0.1  # not a test on zeros


def test_broadcast_initial_state_and_no_steps(ov, rng):
    x, _, _, rk, bias, _ = _inputs(rng, "float32", False)
    h0 = np.broadcast_to(rng.standard_normal(U).astype(np.float32), (B, U))  # stride 0, as broadcast_like makes
    c0 = np.broadcast_to(np.float32(0.5), (B, U))
    want = _numpy(R.lstm_sequence_op)(None, np, x, h0, c0, rk, bias)
    got = ov[R.lstm_sequence_op].fn(None, np, x, h0, c0, rk, bias)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    empty = ov[R.lstm_sequence_op].fn(None, np, x[:0], h0, c0, rk, bias)
    assert empty[0].shape == (0, B, U)
    np.testing.assert_array_equal(empty[1], c0)


def test_read_only_cotangents_fall_back_then_get_their_own_variant(kcache, rng):
    ov = cpu_recurrent.overrides(kcache)
    x, h0, c0, rk, bias, _ = _inputs(rng, "float32", False)
    hs, _, res = _numpy(R.lstm_sequence_op)(None, np, x, h0, c0, rk, bias)
    dhs = rng.standard_normal((T, B, U)).astype(np.float32)
    dcl = np.zeros((B, U), np.float32)
    want = _numpy(R.lstm_sequence_grad_op)(np, h0, c0, rk, hs, res, dhs, dcl)
    ov[R.lstm_sequence_grad_op].fn(np, h0, c0, rk, hs, res, dhs, dcl)  # compiled for writable arrays
    frozen = dhs.copy()
    frozen.flags.writeable = False
    for _ in range(2):  # first: TypeError inside, numpy answers and a read-only variant compiles; then compiled
        got = ov[R.lstm_sequence_grad_op].fn(np, h0, c0, rk, hs, res, frozen, dcl)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g, w)
    fn = _Module(kcache, 1, cpu_recurrent.SOURCE).get("lstm_bwd_step", (), 0)[0]
    assert len(fn.signatures) >= 2


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_training_with_the_compiler_equals_without_and_uses_the_compiled_loops(rng, cell):
    """kf.nn.LSTM / GRU (batch-first, masked by sequence_length) trained a few Adam steps: the
    weights are bitwise the same with the compiler on and off, and the compiled loops did run."""
    xv = rng.standard_normal((4, 9, 3)).astype(np.float32)
    lengths = np.array([9, 4, 7, 1], np.int32)
    yv = rng.standard_normal((4, 5)).astype(np.float32)
    weights = {}
    for mode in ("sync", "off"):
        rt = kf.connect("inproc", compile=mode)
        g = rt.graph("lstm")
        x = g.placeholder((None, 9, 3), "float32", name="x")
        n = g.placeholder((None,), "int32", name="n")
        y = g.placeholder((None, 5), "float32", name="y")
        layer = getattr(kf.nn, cell)(5, seed=3)
        loss = kf.mean(kf.square(layer(x, sequence_length=n) - y))
        train = kf.optim.Adam(lr=0.05).minimize(loss)
        for _ in range(3):
            g.run(train, {x: xv, n: lengths, y: yv})
        weights[mode] = [w.value() for w in layer.weights]
        if mode == "sync":
            cache = rt._transport.service.compiler.cache
            src = _Module(cache, 1, cpu_recurrent.SOURCE).source
            p = cell.lower()
            assert all(cache._ready.get(digest(src(k, False)[0])) is not None
                       for k in (f"{p}_fwd_in", f"{p}_fwd_cell", f"{p}_fwd_out", f"{p}_bwd_step"))
        rt.close()
    for on, off in zip(weights["sync"], weights["off"]):
        np.testing.assert_array_equal(on, off)
