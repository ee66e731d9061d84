"""Whole models on the GPU agree with the CPU: a CNN's training steps (conv and pool kernels on
CuPy), masked LSTM/GRU layers (the fused sequence ops) and their gradients, beam search in one
run, and the compiler's CuPy kernels (fused groups, one step compiled vs not). Skipped without
CuPy and a CUDA GPU (CI has neither)."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler.cupy_backend import CupyFusedKernel

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
if not cupy.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)


def _cnn_losses(device, compile="off"):
    rt = kf.connect("inproc", device=device, compile=compile)
    g = rt.graph("cnn")
    x = g.placeholder((None, 12, 12, 3), "float64", name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = kf.layers.conv2d(x, 8, 3, activation=kf.relu, padding="SAME", name="c1", seed=0)
    h = kf.max_pool2d(h, 2, 2, "VALID")
    h = kf.layers.conv2d(h, 16, 3, activation=kf.relu, padding="SAME", name="c2", seed=1)
    h = kf.avg_pool2d(h, 2, 2, "VALID")
    logits = kf.layers.dense(kf.reshape(h, (-1, 3 * 3 * 16)), 5, name="d", seed=2)
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    train = kf.optim.Adam(lr=1e-2).minimize(loss)
    rng = np.random.default_rng(0)
    xb, yb = rng.standard_normal((16, 12, 12, 3)), rng.integers(0, 5, 16)
    losses = [float(g.run([train, loss], {x: xb, y: yb})[1]) for _ in range(4)]
    w = g["c1/w"].value()
    rt.close()
    return losses, w


def test_cnn_training_on_gpu_matches_cpu():
    (lc, wc), (lg, wg) = _cnn_losses("cpu"), _cnn_losses("gpu")
    assert lc[-1] < lc[0]
    np.testing.assert_allclose(lg, lc, rtol=1e-9)
    np.testing.assert_allclose(wg, wc, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_masked_recurrent_layer_and_gradients_on_gpu_match_cpu(cell):
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((4, 9, 3))
    lengths = np.array([9, 4, 7, 1], np.int32)
    out = {}
    for device in ("cpu", "gpu"):
        rt = kf.connect("inproc", device=device)
        g = rt.graph("rnn")
        x = g.placeholder((None, 9, 3), "float64", name="x")
        n = g.placeholder((None,), "int32", name="n")
        layer = getattr(kf.nn, cell)(5, return_sequences=True, seed=3)
        y = layer(x, sequence_length=n)
        loss = kf.sum(y * kf.sin(y + 1.0))
        grads = kf.gradients(loss, [x] + layer.weights)
        out[device] = g.run([y] + grads, {x: xv, n: lengths})
        rt.close()
    for c, d in zip(out["cpu"], out["gpu"]):
        np.testing.assert_allclose(d, c, rtol=1e-9, atol=1e-12)
    assert np.abs(out["cpu"][2]).max() > 1e-3  # the kernel's gradient: not a test on zeros


def test_beam_search_on_gpu_matches_cpu():
    rng = np.random.default_rng(2)
    A, E, W = rng.standard_normal((6, 6)) * 0.5, rng.standard_normal((11, 6)), rng.standard_normal((6, 11))
    got = {}
    for device in ("cpu", "gpu"):
        rt = kf.connect("inproc", device=device)
        g = rt.graph("beam")
        a, e, w = g.constant(A), g.constant(E), g.constant(W)

        def step(tokens, h, t, a=a, e=e, w=w):
            h = kf.tanh(h @ a + kf.gather(e, tokens))
            return kf.log_softmax(h @ w), h

        st = g.placeholder((None,), "int32", name="start")
        h0 = g.placeholder((None, 6), "float64", name="h0")
        ids, scores, lengths = kf.nn.beam_search(step, h0, st, 1, 4, max_length=7, length_penalty=0.6)
        got[device] = g.run([ids, scores, lengths], {st: np.array([0, 3, 5], "int32"),
                                                      h0: rng.standard_normal((3, 6)) * 0 + 0.1})
        rt.close()
    np.testing.assert_array_equal(got["gpu"][0], got["cpu"][0])
    np.testing.assert_allclose(got["gpu"][1], got["cpu"][1], rtol=1e-10)
    np.testing.assert_array_equal(got["gpu"][2], got["cpu"][2])


def test_compiled_mlp_training_on_gpu_equals_uncompiled():
    """The compiler's CuPy backend: fused elementwise/reduction kernels in a training step give the
    unfused run's numbers (float32, within rounding)."""
    rng = np.random.default_rng(3)
    xb, yb = rng.standard_normal((64, 20)).astype(np.float32), rng.integers(0, 4, 64)
    results = {}
    before = len(CupyFusedKernel.fallbacks)
    for mode in ("sync", "off"):
        rt = kf.connect("inproc", device="gpu", compile=mode)
        g = rt.graph("mlp")
        x = g.placeholder((None, 20), "float32", name="x")
        y = g.placeholder((None,), "int64", name="y")
        h = kf.layers.dense(x, 32, activation=kf.relu, name="d1", seed=0)
        h = kf.layers.dense(h, 32, activation=kf.tanh, name="d2", seed=1)
        logits = kf.layers.dense(h, 4, name="d3", seed=2)
        loss = kf.mean(kf.softmax_cross_entropy(logits, y))
        train = kf.optim.Adam(lr=1e-2).minimize(loss)
        if mode == "sync":
            assert g.fused_groups([train, loss], feeds=[x, y])  # there is something to fuse
        losses = [float(g.run([train, loss], {x: xb, y: yb})[1]) for _ in range(5)]
        results[mode] = (losses, g["d1/w"].value())
        rt.close()
    assert CupyFusedKernel.fallbacks[before:] == []  # the fused kernels built and ran on the GPU
    assert results["off"][0][-1] < results["off"][0][0]
    np.testing.assert_allclose(results["sync"][0], results["off"][0], rtol=1e-5)
    np.testing.assert_allclose(results["sync"][1], results["off"][1], rtol=1e-4, atol=1e-6)
