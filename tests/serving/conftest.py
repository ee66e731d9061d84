"""Shared fixtures of the serving tests: the digits classifier, trained a few steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import kernelflow as kf


@dataclass
class Digits:
    g: kf.Graph
    x: kf.Tensor
    probs: kf.Tensor
    cls: kf.Tensor
    X: np.ndarray


def build_digits(rt: kf.Runtime, name: str = "digits", steps: int = 20) -> Digits:
    """A 64 -> 32 -> 10 MLP on sklearn's digits, trained ``steps`` Adam steps."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype("float32")
    g = rt.graph(name)
    x = g.placeholder((None, 64), "float32", name="x")
    labels = g.placeholder((None,), "int64", name="y")
    rng = np.random.default_rng(0)
    w1 = g.variable((rng.standard_normal((64, 32)) * 0.1).astype("float32"), name="w1")
    b1 = g.variable(np.zeros(32, "float32"), name="b1")
    w2 = g.variable((rng.standard_normal((32, 10)) * 0.1).astype("float32"), name="w2")
    b2 = g.variable(np.zeros(10, "float32"), name="b2")
    logits = kf.relu(x @ w1 + b1) @ w2 + b2
    loss = kf.mean(kf.softmax_cross_entropy(logits, labels))
    train = kf.optim.Adam(lr=1e-2).minimize(loss)
    probs = kf.softmax(logits)
    cls = kf.argmax(logits, axis=1)
    for i in range(steps):
        sl = slice((i * 128) % 1536, (i * 128) % 1536 + 128)
        g.run(train, feed={x: X[sl], labels: y[sl].astype("int64")})
    return Digits(g, x, probs, cls, X)


@pytest.fixture
def inproc_state(tmp_path):
    """An in-process runtime with a state dir (so it can export)."""
    from kernelflow.client.transport import InprocTransport
    from kernelflow.runtime_server.service import RuntimeService

    tr = InprocTransport()
    tr.service = RuntimeService(state_dir=str(tmp_path / "state"))
    tr._call = tr.service.call
    rt = kf.Runtime(tr)
    yield rt
    tr.service.shutdown()
