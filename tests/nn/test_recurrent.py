"""Recurrent layers (issue #13) against Keras's layers with the same weights, float64: outputs,
final states and gradients (inputs and weights), with and without sequence_length masking."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf

B, T, F, U = 3, 5, 4, 6
LENGTHS = np.array([5, 2, 3])


@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("tensorflow")
    import keras

    return keras


@pytest.fixture
def g():
    rt = kf.connect("inproc")
    yield rt.graph("rnn")
    rt.close()


def _inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((B, T, F)), rng.standard_normal


def _keras_run(keras, layer, x, masked, ct):
    import tensorflow as tf

    xv = tf.Variable(x)
    mask = tf.constant(np.arange(T)[None, :] < LENGTHS[:, None]) if masked else None
    with tf.GradientTape() as tape:
        outs = layer(xv, mask=mask)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        obj = sum(tf.reduce_sum(o * c) for o, c in zip(outs, ct))
    grads = tape.gradient(obj, [xv] + list(layer.weights))
    return [o.numpy() for o in outs], [gr.numpy() for gr in grads]


def _kf_run(g, layer, x, masked, ct, weights):
    xp = g.placeholder((None, None, F), "float64", name="x")
    lengths = g.placeholder((None,), "int64", name="lengths")
    outs = layer(xp, sequence_length=lengths if masked else None)
    outs = outs if isinstance(outs, list) else [outs]
    kf_weights = layer.weights
    for v, w in zip(kf_weights, weights):
        v.set(w)
    obj = kf.sum(outs[0] * ct[0])
    for o, c in zip(outs[1:], ct[1:]):
        obj = obj + kf.sum(o * c)
    grads = kf.gradients(obj, [xp] + kf_weights)
    return g.run([outs, grads], {xp: x, lengths: LENGTHS})


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_recurrent_layer_matches_keras(keras, g, kind, masked):
    x, _ = _inputs()
    k_layer = getattr(keras.layers, kind)(U, return_sequences=True, return_state=True, dtype="float64")
    k_layer.build((B, T, F))
    rng = np.random.default_rng(1)
    weights = [rng.standard_normal(w.shape) * 0.4 for w in k_layer.weights]
    k_layer.set_weights(weights)
    n_out = len(k_layer(x))
    ct = [rng.standard_normal((B, T, U))] + [rng.standard_normal((B, U)) for _ in range(n_out - 1)]
    k_outs, k_grads = _keras_run(keras, k_layer, x, masked, ct)
    layer = getattr(kf.nn, kind)(U, return_sequences=True, return_state=True)
    outs, grads = _kf_run(g, layer, x, masked, ct, weights)
    assert [w.shape for w in layer.weights] == [tuple(w.shape) for w in k_layer.weights]
    for a, b in zip(outs, k_outs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    for a, b in zip(grads, k_grads):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kwargs", [{"go_backwards": True}, {"activation": "relu"}, {"unit_forget_bias": False},
                                    {"use_bias": False}],
                         ids=["go_backwards", "relu_scan_path", "no_forget_bias", "no_bias"])
def test_lstm_variants_match_keras_with_mask(keras, g, kwargs):
    _variant_matches_keras(keras, g, "LSTM", kwargs)


@pytest.mark.parametrize("kwargs", [{"go_backwards": True}, {"activation": "relu"}, {"use_bias": False}],
                         ids=["go_backwards", "relu_scan_path", "no_bias"])
def test_gru_variants_match_keras_with_mask(keras, g, kwargs):
    _variant_matches_keras(keras, g, "GRU", kwargs)


def _variant_matches_keras(keras, g, kind, kwargs):
    x, _ = _inputs()
    k_layer = getattr(keras.layers, kind)(U, return_sequences=True, return_state=True, dtype="float64", **kwargs)
    k_layer.build((B, T, F))
    rng = np.random.default_rng(5)
    weights = [rng.standard_normal(w.shape) * 0.4 for w in k_layer.weights]
    k_layer.set_weights(weights)
    ct = [rng.standard_normal((B, T, U))] + [rng.standard_normal((B, U)) for _ in range(2 if kind == "LSTM" else 1)]
    k_outs, k_grads = _keras_run(keras, k_layer, x, True, ct)
    layer = getattr(kf.nn, kind)(U, return_sequences=True, return_state=True, **kwargs)
    outs, grads = _kf_run(g, layer, x, True, ct, weights)
    ops = {n.op.name for n in g.nodes()}
    assert (f"{kind.lower()}_sequence" in ops) == ("activation" not in kwargs)  # relu: the generic scan path
    for a, b in zip(outs, k_outs):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    for a, b in zip(grads, k_grads):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("go_backwards", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_fused_layer_equals_the_scan_of_its_cell(g, kind, masked, go_backwards):
    """kf.nn.LSTM's / GRU's whole-sequence op against the same layer run step by step (kf.scan
    of the cell's formulas, forced by an activation that is tanh but not the tanh op object)."""
    x, _ = _inputs()
    rng = np.random.default_rng(6)
    n_s = 2 if kind == "LSTM" else 1
    cts = [rng.standard_normal((B, T, U))] + [rng.standard_normal((B, U)) for _ in range(n_s)]
    k = 4 if kind == "LSTM" else 3
    weights = [rng.standard_normal(s) * 0.4 for s in ((F, k * U), (U, k * U), (k * U,) if k == 4 else (2, k * U))]
    xp = g.placeholder((None, None, F), "float64", name="x")
    res = []
    for act in ("tanh", lambda v: kf.tanh(v)):
        layer = getattr(kf.nn, kind)(U, return_sequences=True, return_state=True, go_backwards=go_backwards,
                                     zero_output_for_mask=True, activation=act)
        outs = layer(xp, sequence_length=LENGTHS if masked else None)
        for v, w in zip(layer.weights, weights):
            v.set(w)
        obj = sum(kf.sum(o * c) for o, c in zip(outs, cts))
        res.append(g.run([outs, kf.gradients(obj, [xp] + layer.weights)], {xp: x}))
    ops = [n.op.name for n in g.nodes()]
    assert ops.count(f"{kind.lower()}_sequence") == 1 and ops.count("scan") == 1
    (fused_outs, fused_grads), (scan_outs, scan_grads) = res
    for a, b in zip(fused_outs + fused_grads, scan_outs + scan_grads):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    if masked:  # zero_output_for_mask: padded steps output zeros
        np.testing.assert_array_equal(fused_outs[0][1, 2:] if not go_backwards else fused_outs[0][1, :T - 2], 0)


def test_lstm_sequence_rejects_bad_shapes(g):
    x = g.placeholder((5, 3, 8), "float32", name="x")
    h = g.placeholder((3, 2), "float32", name="h")
    rk = g.placeholder((2, 8), "float32", name="rk")
    with pytest.raises(kf.errors.ShapeError, match="lstm_sequence: the units"):
        kf.lstm_sequence(x, h, h, g.placeholder((3, 12), "float32", name="rk3"))
    with pytest.raises(kf.errors.ShapeError, match="lstm_sequence: the units"):
        kf.lstm_sequence(x, h, h, rk, g.placeholder((12,), "float32", name="b12"))
    with pytest.raises(kf.errors.ShapeError, match="lstm_sequence: x, h0, c0, recurrent_kernel and bias must share"):
        kf.lstm_sequence(x, h, h, g.placeholder((2, 8), "float64", name="rk64"))
    with pytest.raises(kf.errors.ShapeError, match=r"lstm_sequence: the mask must be a \(time, batch\) bool"):
        kf.lstm_sequence(x, h, h, rk, mask=g.placeholder((5, 3), "float32", name="m"))
    with pytest.raises(kf.errors.ShapeError, match="lstm_sequence: the time dims"):
        kf.lstm_sequence(x, h, h, rk, mask=g.placeholder((4, 3), "bool", name="m4"))
    with pytest.raises(kf.errors.ShapeError, match="lstm_sequence: expected x"):
        kf.lstm_sequence(h, h, h, rk)
    hs, c = kf.lstm_sequence(x, h, h, rk)
    assert (hs.shape, c.shape) == ((5, 3, 2), (3, 2))


def test_masked_steps_change_neither_output_nor_state(g):
    x, _ = _inputs()
    layer = kf.nn.LSTM(U, return_sequences=True, return_state=True, seed=0)
    xp = g.placeholder((B, T, F), "float64", name="x")
    y, h, c = layer(xp, sequence_length=LENGTHS)
    noisy = x.copy()
    for b, n in enumerate(LENGTHS):
        noisy[b, n:] = 1e3  # padding content must not matter
    a = g.run([y, h, c], {xp: x})
    b = g.run([y, h, c], {xp: noisy})
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(a[0][1, 2:], np.repeat(a[0][1, 1:2], T - 2, axis=0))
    np.testing.assert_array_equal(a[1][1], a[0][1, 1])


def test_bidirectional_matches_keras(keras, g):
    import tensorflow as tf

    x, _ = _inputs()
    k_layer = keras.layers.Bidirectional(keras.layers.LSTM(U, return_sequences=True, dtype="float64"),
                                         dtype="float64")
    k_layer.build((B, T, F))
    rng = np.random.default_rng(2)
    weights = [rng.standard_normal(w.shape) * 0.4 for w in k_layer.weights]
    k_layer.set_weights(weights)
    mask = tf.constant(np.arange(T)[None, :] < LENGTHS[:, None])
    want = k_layer(x, mask=mask).numpy()
    layer = kf.nn.Bidirectional(kf.nn.LSTM(U, return_sequences=True))
    xp = g.placeholder((None, T, F), "float64", name="x")
    y = layer(xp, sequence_length=LENGTHS)
    for v, w in zip(layer.forward_layer.weights + layer.backward_layer.weights, weights):
        v.set(w)
    np.testing.assert_allclose(g.run(y, {xp: x}), want, rtol=1e-9, atol=1e-10)


def test_lstm_cell_inside_a_user_while_loop(g):
    cell = kf.nn.LSTMCell(U, seed=3)
    x = g.placeholder((B, F), "float64", name="x")
    h0 = g.constant(np.zeros((B, U)))

    def body(i, h, c):
        out, (h2, c2) = cell(x * kf.cast(i + 1, "float64"), [h, c])
        return i + 1, h2, c2

    _, h, c = kf.while_loop(lambda i, h, c: i < 3, body, (0, h0, h0))
    assert sorted(v.name for v in g.variables()) == ["lstm_cell/bias", "lstm_cell/kernel",
                                                     "lstm_cell/recurrent_kernel"]
    xv = np.random.default_rng(4).standard_normal((B, F))
    kv, rv, bv = (g.run(cell.kernel), g.run(cell.recurrent_kernel), g.run(cell.bias))
    hv, cv = np.zeros((B, U)), np.zeros((B, U))
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for i in range(3):
        z = (xv * (i + 1)) @ kv + hv @ rv + bv
        ig, fg, gg, og = sig(z[:, :U]), sig(z[:, U:2 * U]), np.tanh(z[:, 2 * U:3 * U]), sig(z[:, 3 * U:])
        cv = fg * cv + ig * gg
        hv = og * np.tanh(cv)
    got = g.run([h, c], {x: xv})
    np.testing.assert_allclose(got[0], hv, rtol=1e-12)
    np.testing.assert_allclose(got[1], cv, rtol=1e-12)
    assert all(gr is not None for gr in kf.gradients(kf.sum(h), g.variables()))


def test_forward_only_runs_keep_no_history_and_agree_with_training_runs(g):
    """A run without the gradient computes the LSTM with a two-step workspace, not the (time, 6,
    batch, units) reserve; its outputs (masked too) equal those of a run that takes the gradient."""
    x, _ = _inputs()
    xp = g.placeholder((None, None, F), "float64", name="x")
    layer = kf.nn.LSTM(U, return_sequences=True, return_state=True, seed=8)
    outs = layer(xp, sequence_length=LENGTHS)
    grads = kf.gradients(kf.sum(outs[0]) + kf.sum(outs[2]), layer.weights)
    alone = g.run(outs, {xp: x})
    with_grads, _ = g.run([outs, grads], {xp: x})
    for a, b in zip(alone, with_grads):
        np.testing.assert_array_equal(a, b)


def test_lstm_reserve_over_the_saved_memory_limit_is_a_typed_error(g, monkeypatch):
    from kernelflow.kernels import recurrent as kernels

    x, _ = _inputs()
    xp = g.placeholder((None, None, F), "float64", name="x")
    layer = kf.nn.LSTM(U, return_sequences=True, seed=9)
    y = layer(xp)
    grads = kf.gradients(kf.sum(y), layer.weights)
    need = T * 6 * B * U * 8
    monkeypatch.setattr(kernels, "DEFAULT_SAVED_LIMIT_BYTES", need - 1)
    with pytest.raises(kf.errors.ResourceExhaustedError, match=f"lstm_sequence '.*': the values saved for the "
                                                              f"gradient \\({need} bytes for {T} steps\\) exceed"):
        g.run(grads, {xp: x})
    assert g.run(y, {xp: x}).shape == (B, T, U)  # a forward-only run saves nothing: not limited
    monkeypatch.setattr(kernels, "DEFAULT_SAVED_LIMIT_BYTES", need)
    assert all(np.isfinite(v).all() for v in g.run(grads, {xp: x}))
