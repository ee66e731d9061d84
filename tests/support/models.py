"""Small data and models the job, widget and bench tests share: sklearn digits as a resident dataset, an MLP.

Contents: digits, MLP, mlp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import kernelflow as kf


def digits(rt: kf.Runtime, name: str = "digits"):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    ds = rt.dataset(name, {"x": (X / 16.0).astype("float32"), "y": y.astype("int64")})
    return ds.split(0.9, seed=0)


@dataclass
class MLP:
    g: kf.Graph
    x: kf.Tensor
    y: kf.Tensor
    loss: kf.Tensor
    acc: kf.Tensor
    train: kf.Tensor
    w1: kf.Variable
    lr: kf.Variable
    scale: kf.Variable


def mlp(rt: kf.Runtime, name: str, hidden: int = 32, lr: float = 1e-2, width=64) -> MLP:
    """64 -> hidden -> 10 with ReLU and Adam; fixed initial weights (same on every graph)."""
    g = rt.graph(name)
    x = g.placeholder((None, width), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    rng = np.random.default_rng(0)
    w1 = g.variable((rng.standard_normal((64, hidden)) * 0.1).astype("float32"), name="w1")
    b1 = g.variable(np.zeros(hidden, "float32"), name="b1")
    w2 = g.variable((rng.standard_normal((hidden, 10)) * 0.1).astype("float32"), name="w2")
    b2 = g.variable(np.zeros(10, "float32"), name="b2")
    lr_v = g.variable(np.float32(lr), name="lr", trainable=False)
    scale = g.variable(np.float32(1.0), name="scale", trainable=False)
    logits = kf.relu(x @ w1 + b1) @ w2 + b2
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    acc = kf.mean(kf.cast(kf.equal(kf.argmax(logits, axis=1), y), "float32"))
    train = kf.optim.Adam(lr=lr_v).minimize(loss)
    return MLP(g, x, y, loss * scale, acc, train, w1, lr_v, scale)
