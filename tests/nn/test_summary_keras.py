"""model.summary() parameter counts equal Keras's for the same architectures."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kernelflow as kf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def rt():
    runtime = kf.connect("inproc")
    yield runtime
    runtime.close()


def _cnn(lib, rt=None):
    L = lib.layers if lib is keras else kf.nn
    layers = [L.Conv2D(8, 3, activation="relu"), L.BatchNormalization(), L.MaxPool2D() if lib is kf else
              L.MaxPooling2D(), L.Conv2DTranspose(4, 3, strides=2), L.Flatten(), L.Dense(10, activation="softmax")]
    inp = kf.Input((8, 8, 1)) if lib is kf else keras.Input((8, 8, 1))
    return kf.Sequential([inp, *layers], rt=rt) if lib is kf else keras.Sequential([inp, *layers])


def _mlp(lib, rt=None):
    L = lib.layers if lib is keras else kf.nn
    layers = [L.Dense(64, activation="relu"), L.BatchNormalization(), L.Dropout(0.2), L.Dense(32), L.Dense(1)]
    inp = kf.Input((20,)) if lib is kf else keras.Input((20,))
    return kf.Sequential([inp, *layers], rt=rt) if lib is kf else keras.Sequential([inp, *layers])


def _text(lib, rt=None):
    L = lib.layers if lib is keras else kf.nn
    inp = kf.Input((12,), dtype="int64") if lib is kf else keras.Input((12,), dtype="int64")
    h = L.Embedding(50, 8)(inp)
    a = L.MultiHeadAttention(2, 4)(h, h)
    h = L.LayerNormalization()(L.Add()([h, a]))
    h = L.Conv1D(6, 3)(h)
    h = L.Concatenate()([L.Flatten()(h), L.Flatten()(L.Embedding(50, 2)(inp))])
    out = L.Dense(3, activation="softmax")(h)
    return kf.Model(inp, out, rt=rt) if lib is kf else keras.Model(inp, out)


def _keras_rows(model):
    return {(type(layer).__name__, layer.count_params()) for layer in model.layers if layer.count_params()}


@pytest.mark.parametrize("arch", [_cnn, _mlp, _text])
def test_summary_param_counts_equal_keras(rt, arch):
    ours, theirs = arch(kf, rt), arch(keras)
    text = ours.summary(print_fn=None)
    total = theirs.count_params()
    trainable = int(sum(np.prod(w.shape) for w in theirs.trainable_weights))
    assert f"Total params: {total:,}" in text
    assert f"Trainable params: {trainable:,}" in text
    assert f"Non-trainable params: {total - trainable:,}" in text
    assert ours.count_params() == total
    rows = {(r[1], r[3]) for r in ours._summary() if r[3]}
    names = {"MaxPool2D": "MaxPooling2D"}
    assert {(names.get(c, c), n) for c, n in rows} == _keras_rows(theirs)
