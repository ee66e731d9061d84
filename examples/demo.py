"""kernelflow demo: train a digits classifier (scikit-learn's 8x8 handwritten digits, no
download) on the local runtime server and print the loss per epoch and the test accuracy.

`kf.connect()` re-uses the local runtime server if one runs, or starts one detached on
127.0.0.1 (it keeps running afterwards: `kernelflow status` lists it, `kernelflow stop`
stops it). Pass `--inproc` to train in this process instead. Run with `make demo`.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import kernelflow as kf


def main() -> float:
    digits = load_digits()
    X = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)

    rt = kf.connect("inproc" if "--inproc" in sys.argv else None)
    info = rt.info()
    print(f"runtime: {rt.url}  (kernelflow {info['version']}, devices {info['devices']})")
    if "digits" in rt.graphs():  # a re-used server still holds the last demo's graph
        rt.delete_graph("digits")
    g = rt.graph("digits")
    x = g.placeholder((None, 64), "float32", name="x")
    labels = g.placeholder((None,), "int64", name="y")
    h = kf.layers.dense(x, 128, activation=kf.relu, name="dense1", seed=0)
    logits = kf.layers.dense(h, 10, name="dense2", seed=1)
    loss = kf.mean(kf.softmax_cross_entropy(logits, labels), name="loss")
    accuracy = kf.mean(kf.cast(kf.equal(kf.argmax(logits, axis=1), labels), "float32"), name="accuracy")
    train = kf.optim.Adam(lr=1e-2).minimize(loss)

    step = g.make_callable([train, loss], feed_list=[x, labels])
    rng = np.random.default_rng(0)
    batch = 64
    start = time.perf_counter()
    for epoch in range(1, 16):
        order = rng.permutation(len(X_train))
        losses = []
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            _, batch_loss = step(X_train[idx], y_train[idx])
            losses.append(float(batch_loss))
        print(f"epoch {epoch:2d}  loss {np.mean(losses):.4f}")
    test_acc = float(g.run(accuracy, {x: X_test, labels: y_test}))
    print(f"test accuracy {test_acc:.4f}  ({time.perf_counter() - start:.1f} s of training)")
    if test_acc < 0.95:
        raise SystemExit(f"demo: test accuracy {test_acc:.4f} is below 0.95")
    return test_acc


if __name__ == "__main__":
    main()
