"""kernelflow demo: what a runtime that outlives its clients gives you, in five printed steps.

1. the local runtime server (started detached if none runs: `kernelflow status` lists it,
   `kernelflow stop` stops it);
2. a resident dataset (scikit-learn's 8x8 digits, no download), uploaded once: the runtime cuts
   the minibatches, no Python feed loop;
3. a training job on the runtime, watched with a terminal progress bar, then left running while
   this client disconnects;
4. a second process that re-attaches to the job by name and follows it to the end;
5. the model exported and answered over REST (TensorFlow Serving's API) with plain urllib.

Run with `make demo` (under a minute). ``--inproc`` runs steps 1-4 inside this process and
skips the second process and REST.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
from sklearn.datasets import load_digits

import kernelflow as kf

GRAPH = "kernelflow-demo"
DATASET = "kernelflow-demo-digits"
MODEL = "kernelflow-demo-digits"
EPOCHS = 150


def step(n: int, text: str) -> None:
    print(f"\n[{n}/5] {text}", flush=True)


def build(rt: kf.Runtime):
    """The digits MLP on a fresh graph (an old demo graph is dropped, never another name)."""
    if GRAPH in rt.graphs():
        rt.delete_graph(GRAPH)
    g = rt.graph(GRAPH, seed=0)
    x = g.placeholder((None, 64), "float32", name="x")
    labels = g.placeholder((None,), "int64", name="y")
    h = kf.layers.dense(x, 128, activation=kf.relu, name="dense1")
    logits = kf.layers.dense(h, 10, name="dense2")
    probs = kf.softmax(logits, name="probs")
    loss = kf.mean(kf.softmax_cross_entropy(logits, labels), name="loss")
    accuracy = kf.mean(kf.cast(kf.equal(kf.argmax(logits, axis=1), labels), "float32"), name="accuracy")
    train = kf.optim.Adam(lr=3e-3).minimize(loss)
    return g, x, labels, probs, loss, accuracy, train


def attach(job_name: str, url: str) -> None:
    """Step 4, in a second process: re-attach to the job by name and follow it to the end."""
    rt = kf.connect(url)
    job = rt.job(job_name)
    print(f"      pid {os.getpid()}: re-attached to job '{job.name}' ({job.id}) at step {job.last_status['step']}, "
          f"{len(job.history['loss']['step'])} logged steps of history", flush=True)
    status = job.wait(progress=True)
    acc = job.history["val_accuracy"]["value"]
    print(f"      pid {os.getpid()}: job {status}; val_accuracy per epoch "
          + " ".join(f"{a:.2f}" for a in acc[:: max(1, len(acc) // 8)]) + f" ... {acc[-1]:.3f}", flush=True)
    rt.close()


def main() -> float:
    t_start = time.perf_counter()
    inproc = "--inproc" in sys.argv
    step(1, "runtime")
    rt = kf.connect("inproc" if inproc else None)
    info = rt.info()
    print(f"      {rt.url}: kernelflow {info['version']}, devices {info['devices']}"
          + (f", REST {info['rest_url']}" if info.get("rest_url") else ""))

    step(2, "resident dataset")
    X, y = load_digits(return_X_y=True)
    data = rt.dataset(DATASET, {"x": (X / 16.0).astype("float32"), "y": y.astype("int64")}, overwrite=True)
    train_ds, test_ds = data.split(0.8, seed=0)
    print(f"      '{DATASET}': {len(X)} rows uploaded once; the job cuts shuffled batches on the runtime")

    step(3, "a training job on the runtime")
    g, x, labels, probs, loss, accuracy, train = build(rt)
    job_name = f"demo-{os.getpid()}"
    job = g.fit(train, data=train_ds, feed={x: "x", labels: "y"}, batch_size=32, epochs=EPOCHS,
                metrics={"loss": loss}, log_every=5,
                validation=(test_ds, {"val_loss": loss, "val_accuracy": accuracy}), name=job_name)
    try:
        job.wait(timeout=1.5 if not inproc else None, progress=True)
    except kf.errors.DeadlineExceededError:
        pass
    if not inproc:
        print(f"      this client disconnects at step {job.refresh()['step']}; the job keeps running")
        url = rt.url
        rt.close()
        step(4, "a second process re-attaches by name")
        subprocess.run([sys.executable, __file__, "--attach", job_name, url], check=True)
        rt = kf.connect(url)
        job = rt.job(job_name)
        test_ds = rt.dataset(test_ds.name)  # handles belong to a connection: re-attach on the new one
    else:
        step(4, "(skipped in process: no second process can reach it)")
        job.wait()
    status = job.refresh()["status"]
    if status != "completed":
        raise SystemExit(f"demo: the job ended {status}")

    step(5, "export, then an answer over REST")
    g = rt.graph(GRAPH)
    version = g.export(MODEL, inputs={"x": g["x"]}, outputs={"probs": g["probs"]})
    X_test, y_test = test_ds.read("x"), test_ds.read("y")  # the rows the job validated on
    test_acc = float(np.mean(np.argmax(rt.model(MODEL).predict({"x": X_test})["probs"], axis=1) == y_test))
    print(f"      model '{MODEL}' version {version}; test accuracy over RPC {test_acc:.4f}")
    rest = None if inproc else rt.model(MODEL).rest_url
    if rest:
        body = json.dumps({"instances": [{"x": row.tolist()} for row in X_test[:5]]}).encode()
        req = urllib.request.Request(f"{rest}:predict", data=body, headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 30
        while True:  # the server's model manager picks the new version up within a poll
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    answer = json.loads(r.read())
                break
            except urllib.error.HTTPError as e:
                if e.code not in (404, 503) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        got = [int(np.argmax(p["probs"] if isinstance(p, dict) else p)) for p in answer["predictions"]]
        print(f"      POST {rest}:predict -> {got} (labels {y_test[:5].tolist()})")
    print(f"\ndone in {time.perf_counter() - t_start:.1f} s")
    if test_acc < 0.9:
        raise SystemExit(f"demo: test accuracy {test_acc:.4f} is below 0.9")
    return test_acc


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--attach":
        attach(sys.argv[2], sys.argv[3])
    else:
        main()
