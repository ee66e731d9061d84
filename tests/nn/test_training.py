"""End-to-end learning: an MLP and a small CNN learn scikit-learn's digits to >= 0.95."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import kernelflow as kf


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = (d.data / 16.0).astype("float32")
    y = d.target.astype("int64")
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def _fit(g, x, labels, logits, data, epochs, lr, batch=64):
    X_train, X_test, y_train, y_test = data
    loss = kf.mean(kf.softmax_cross_entropy(logits, labels))
    acc = kf.mean(kf.cast(kf.equal(kf.argmax(logits, axis=1), labels), "float32"))
    train = kf.optim.Adam(lr=lr).minimize(loss)
    step = g.make_callable([train, loss], feed_list=[x, labels])
    rng = np.random.default_rng(0)
    first = last = None
    for _ in range(epochs):
        order = rng.permutation(len(X_train))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            _, value = step(X_train[idx], y_train[idx])
            first = value if first is None else first
            last = value
    return float(g.run(acc, {x: X_test, labels: y_test})), float(first), float(last)


def test_mlp_learns_digits_to_95_percent(rt, digits):
    g = rt.graph("mlp")
    x = g.placeholder((None, 64), "float32", name="x")
    labels = g.placeholder((None,), "int64", name="y")
    h = kf.layers.dense(x, 128, activation=kf.relu, name="dense1", seed=0)
    logits = kf.layers.dense(h, 10, name="dense2", seed=1)
    test_acc, first, last = _fit(g, x, labels, logits, digits, epochs=15, lr=1e-2)
    assert last < first / 10
    assert test_acc >= 0.95


def test_cnn_learns_digits_to_95_percent(rt, digits):
    g = rt.graph("cnn")
    x = g.placeholder((None, 64), "float32", name="x")
    labels = g.placeholder((None,), "int64", name="y")
    img = kf.reshape(x, (-1, 8, 8, 1))
    c = kf.layers.conv2d(img, 16, 3, padding="SAME", activation=kf.relu, name="conv1", seed=0)
    p = kf.max_pool2d(c, 2)                                  # (batch, 4, 4, 16)
    flat = kf.reshape(p, (-1, 4 * 4 * 16))
    logits = kf.layers.dense(flat, 10, name="dense", seed=1)
    test_acc, first, last = _fit(g, x, labels, logits, digits, epochs=8, lr=5e-3)
    assert last < first / 5
    assert test_acc >= 0.95
