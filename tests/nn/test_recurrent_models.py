"""Recurrent layers as first-class layers: in kf.Sequential and the functional API, fit on a
synthetic sequence task, summary parameter counts equal Keras's, save/load and export."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.errors import InvalidArgumentError

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VOCAB, T, CLASSES = 12, 8, 3


@pytest.fixture(scope="module")
def rt():
    runtime = kf.connect("inproc")
    yield runtime
    runtime.close()


def _data(n: int, seed: int):
    """Class = the last token mod 3 (the earlier tokens are noise): a recurrent layer must carry it."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, (n, T)).astype("int64")
    return x, (x[:, -1] % CLASSES).astype("int64")


def _arch(kind: str, lib):
    keras = lib if lib is not kf else None
    L = keras.layers if keras is not None else kf.nn
    if kind == "lstm":
        body = [L.LSTM(16)]
    elif kind == "gru":
        body = [L.GRU(12)]
    else:
        body = [L.Bidirectional(L.LSTM(8, return_sequences=True)), L.Flatten()]
    layers = [L.Embedding(VOCAB, 8), *body, L.Dense(CLASSES, activation="softmax")]
    return layers


def _kf_model(kind: str, rt, name: str | None = None):
    return kf.Sequential([kf.Input((T,), dtype="int64"), *_arch(kind, kf)], rt=rt, name=name, seed=1)


@pytest.mark.parametrize("kind", ["lstm", "gru", "bilstm"])
def test_recurrent_sequential_fits_evaluates_predicts(rt, kind):
    x, y = _data(600, 0)
    xt, yt = _data(300, 1)
    model = _kf_model(kind, rt)
    model.compile(kf.nn.optim.Adam(lr=0.02), "sparse_categorical_crossentropy", metrics=["accuracy"])
    loss0, acc0 = model.evaluate(xt, yt)
    hist = model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    losses = hist.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    loss, acc = model.evaluate(xt, yt)
    assert loss < loss0 and acc > 0.8, (loss0, acc0, loss, acc)  # chance is 1/3
    p = model.predict(xt[:20])
    assert p.shape == (20, CLASSES)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    assert (p.argmax(1) == yt[:20]).mean() > 0.7


@pytest.mark.parametrize("kind", ["lstm", "gru", "bilstm"])
def test_recurrent_summary_param_counts_equal_keras(rt, kind):
    keras = pytest.importorskip("keras")
    ours = _kf_model(kind, rt)
    theirs = keras.Sequential([keras.Input((T,), dtype="int64"), *_arch(kind, keras)])
    text = ours.summary(print_fn=None)
    total = theirs.count_params()
    assert f"Total params: {total:,}" in text
    assert ours.count_params() == total
    rows = {(r[1], r[3]) for r in ours._summary() if r[3]}
    assert rows == {(type(la).__name__, la.count_params()) for la in theirs.layers if la.count_params()}
    shapes = {r[1]: r[2] for r in ours._summary()}
    want = {"lstm": "(None, 16)", "gru": "(None, 12)", "bilstm": f"(None, {T}, 16)"}[kind]
    assert shapes[{"lstm": "LSTM", "gru": "GRU", "bilstm": "Bidirectional"}[kind]] == want


def test_lstm_in_a_functional_model_uses_keras_weight_layout(rt):
    inp = kf.Input((T,), dtype="int64")
    lstm = kf.nn.LSTM(5, return_sequences=True, name="enc")
    h = lstm(kf.nn.Embedding(VOCAB, 4)(inp))
    out = kf.nn.Dense(2)(kf.nn.GRU(3)(h))
    model = kf.Model(inp, out, rt=rt)
    x, _ = _data(4, 2)
    assert model.predict(x).shape == (4, 2)
    assert [(v.name, tuple(v.shape)) for v in lstm.weights] == [
        ("enc/kernel", (4, 20)), ("enc/recurrent_kernel", (5, 20)), ("enc/bias", (20,))]
    np.testing.assert_array_equal(lstm.get_weights()[2][5:10], 1.0)  # unit_forget_bias
    with pytest.raises(InvalidArgumentError, match="sequence_length"):
        kf.nn.LSTM(3)(inp, sequence_length=[1])


def test_recurrent_config_round_trips():
    for layer in (kf.nn.LSTM(7, return_sequences=True, go_backwards=True, activation="relu", name="l7", seed=3),
                  kf.nn.GRU(4, use_bias=False), kf.nn.SimpleRNN(2, return_state=True),
                  kf.nn.Bidirectional(kf.nn.GRU(3, return_sequences=True), merge_mode="sum")):
        cfg = layer.get_config()
        again = type(layer).from_config(cfg)
        assert again.get_config() == cfg
    with pytest.raises(InvalidArgumentError, match="units must be a positive int"):
        kf.nn.LSTM(0)
    with pytest.raises(InvalidArgumentError, match="merge_mode"):
        kf.nn.Bidirectional(kf.nn.LSTM(2), merge_mode="max")


def test_lstm_model_save_load_and_export_predict_the_same(tmp_path):
    x, y = _data(300, 3)
    state = str(tmp_path / "state")
    rt = kf.connect("inproc", state_dir=state)
    try:
        model = _kf_model("lstm", rt, name="rnn_saved")
        model.compile(kf.nn.optim.Adam(lr=0.02), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=2, verbose=0)
        before = model.predict(x[:40])
        summary = model.summary(print_fn=None)
        model.save(tag="fitted")
        assert model.export("rnn_served") == 1
        served = rt.model("rnn_served").predict({"x": x[:40]})["output"]
        np.testing.assert_allclose(served, before, rtol=1e-6, atol=1e-7)
    finally:
        rt.close()
    rt2 = kf.connect("inproc", state_dir=state)
    try:
        loaded = kf.models.load("rnn_saved", rt=rt2)
        np.testing.assert_allclose(loaded.predict(x[:40]), before, rtol=1e-6, atol=1e-7)
        assert loaded.summary(print_fn=None) == summary
        served = rt2.model("rnn_served").predict({"x": x[:40]})["output"]
        np.testing.assert_allclose(served, before, rtol=1e-6, atol=1e-7)
    finally:
        rt2.close()


def test_cell_of_a_built_layer_uses_its_weights_inside_a_loop(rt):
    """Decoding with ``layer.cell`` inside a while_loop body steps with the layer's own weights."""
    g = rt.graph("cell_reuse")
    x = g.placeholder((None, 4, 3), "float32", name="x")
    gru = kf.nn.GRU(5, return_sequences=True, return_state=True, name="dec", seed=3)
    y, h_last = gru(x)
    names = sorted(v.name for v in g.variables())

    def body(i, h):
        _, (h2,) = gru.cell(x[:, 3], [h])
        return i + 1, h2

    _, h_loop = kf.while_loop(lambda i, h: i < 1, body, (0, y[:, 2]))
    assert sorted(v.name for v in g.variables()) == names == ["dec/bias", "dec/kernel", "dec/recurrent_kernel"]
    xv = np.random.default_rng(5).standard_normal((2, 4, 3)).astype("float32")
    got, want = g.run([h_loop, h_last], {x: xv})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # step 4 again, from step 3's state
