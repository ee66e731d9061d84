"""Keras-style models benchmark (issue #12): ``model.fit`` beside the raw ``g.fit`` job, tf.keras
``model.fit`` and a PyTorch loop, and the per-fit overhead of the scikit-learn wrapper.

Part 1 trains the MLP of bench/train_mlp.py (784 -> 512 -> 512 -> 10, ReLU, softmax
cross-entropy, Adam lr 1e-3, float32, CPU) from the same weights on the same 8192 synthetic
rows, ``--epochs`` epochs per round, four ways:

- ``g.fit (raw)``: train_mlp's hand-built graph, ``g.fit`` on a resident dataset, loss logged
  every 10 steps, on an in-process runtime;
- ``model.fit``: ``kf.Sequential`` of ``kf.nn.Dense`` layers compiled with Adam and
  ``SparseCategoricalCrossentropy(from_logits=True)``, ``model.fit(x, y)`` (same logging);
- ``tf.keras fit``: the same model in Keras 3 on TensorFlow (``jit_compile=False``), ``fit``;
- ``torch loop``: the usual PyTorch loop over shuffled minibatches.

They run interleaved in rounds; the table gives the median steps/s over the rounds of each
and its ratio to the raw job. Rates of the two kernelflow contenders are steps over the job's
own running time (``elapsed_s``, from its first step to its last), and, end to end, steps over
the wall time of the call (the data upload is a fingerprint check after the first round). Keras
and torch rates are wall time of their fit / loop (after a warm-up epoch). All get ``--threads``
compute threads.

Part 2 times ``KFClassifier(hidden_layers=(64,), epochs=1).fit`` on the digits data
(1797 x 64) ``--sk-fits`` times: the wall time of fit minus the job's training time (graph
build, dataset upload, job start and wait, compile of the plans) plus the time of deleting its
graph, per fit (the wrapper's overhead the issue bounds at 200 ms).

Usage:
    python bench/models.py                       # batch 256, 3 rounds, every peer installed
    python bench/models.py --batch 32 --epochs 1 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_facts, median, print_facts, print_table  # noqa: E402
from train_mlp import BETA1, BETA2, EPS, LR, SIZES, build_kf_graph, make_batches, make_weights  # noqa: E402

N_ROWS = 8192


def kf_raw(rt: Any, weights: list, x: np.ndarray, y: np.ndarray, batch: int) -> Any:
    m = build_kf_graph(rt, "bench_raw", weights)
    ds = rt.dataset("bench_raw.data", {"x": x, "y": y}, overwrite=True)

    def run(epochs: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        job = m["g"].fit(m["train"], data=ds, feed={m["x"]: "x", m["y"]: "y"}, batch_size=batch, epochs=epochs,
                         metrics={"loss": m["loss"]}, log_every=10, checkpoint_every_s=None)
        assert job.wait() == "completed", job.error
        wall = time.perf_counter() - t0
        st = job.refresh()
        return st["step"] / st["elapsed_s"], st["step"] / wall

    return run


def kf_model(rt: Any, weights: list, x: np.ndarray, y: np.ndarray, batch: int) -> Any:
    import kernelflow as kf

    model = kf.Sequential([kf.Input((SIZES[0],)), kf.nn.Dense(SIZES[1], activation="relu"),
                           kf.nn.Dense(SIZES[2], activation="relu"), kf.nn.Dense(SIZES[3])], rt=rt)
    model.compile(kf.optim.Adam(lr=LR, beta1=BETA1, beta2=BETA2, epsilon=EPS),
                  kf.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.set_weights([a for pair in weights for a in pair])

    def run(epochs: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, log_every=10, checkpoint_every_s=None)
        wall = time.perf_counter() - t0
        st = model.last_job.refresh()
        return st["step"] / st["elapsed_s"], st["step"] / wall

    return run


def tf_keras(weights: list, x: np.ndarray, y: np.ndarray, batch: int, threads: int) -> Any:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    model = keras.Sequential([keras.Input((SIZES[0],)), keras.layers.Dense(SIZES[1], activation="relu"),
                              keras.layers.Dense(SIZES[2], activation="relu"), keras.layers.Dense(SIZES[3])])
    model.compile(keras.optimizers.Adam(LR, beta_1=BETA1, beta_2=BETA2, epsilon=EPS),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    model.set_weights([a for pair in weights for a in pair])
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # warm-up: traces the step function
    steps = -(-len(x) // batch)

    def run(epochs: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
        rate = steps * epochs / (time.perf_counter() - t0)
        return rate, rate

    return run


def torch_loop(weights: list, x: np.ndarray, y: np.ndarray, batch: int, threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    layers = []
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(0)

    def run(epochs: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        steps = 0
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=gen)
            for lo in range(0, len(xt), batch):
                idx = order[lo:lo + batch]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                steps += 1
        rate = steps / (time.perf_counter() - t0)
        return rate, rate

    return run


def sklearn_overhead(n_fits: int) -> dict[str, float]:
    """Per-fit overhead of KFClassifier on digits: fit wall - job training time, + graph deletion."""
    from sklearn.datasets import load_digits

    from kernelflow.sklearn import KFClassifier

    d = load_digits()
    X, y = d.data / 16.0, d.target
    KFClassifier(epochs=1, random_state=0).fit(X, y)  # warm-up (imports, the runtime)
    over, train, delete = [], [], []
    for i in range(n_fits):
        est = KFClassifier(hidden_layers=(64,), epochs=1, random_state=i)
        t0 = time.perf_counter()
        est.fit(X, y)
        wall = time.perf_counter() - t0
        job_s = est._kf_model.last_job.refresh()["elapsed_s"]
        t1 = time.perf_counter()
        est._drop_model()
        dt = time.perf_counter() - t1
        over.append(wall - job_s + dt)
        train.append(job_s)
        delete.append(dt)
    return {"overhead": median(over), "train": median(train), "delete": median(delete)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1, help="epochs per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--sk-fits", type=int, default=10)
    p.add_argument("--only", nargs="*", default=None, help="subset of: raw model keras torch sklearn")
    args = p.parse_args(argv)
    only = set(args.only or ["raw", "model", "keras", "torch", "sklearn"])
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    import kernelflow as kf

    print_facts({**machine_facts(), "batch": str(args.batch), "epochs/round": str(args.epochs),
                 "rounds": str(args.rounds), "threads": str(args.threads)})
    batches = make_batches(args.batch, n_batches=N_ROWS // args.batch)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    weights = make_weights()
    rt = kf.connect("inproc")
    runners: dict[str, Any] = {}
    if "raw" in only:
        runners["g.fit (raw)"] = kf_raw(rt, weights, x, y, args.batch)
    if "model" in only:
        runners["model.fit"] = kf_model(rt, weights, x, y, args.batch)
    if "keras" in only:
        try:
            runners["tf.keras fit"] = tf_keras(weights, x, y, args.batch, args.threads)
        except ImportError as e:
            print(f"tf.keras skipped: {e}")
    if "torch" in only:
        try:
            runners["torch loop"] = torch_loop(weights, x, y, args.batch, args.threads)
        except ImportError as e:
            print(f"torch skipped: {e}")
    for run in runners.values():  # warm-up: plans compiled, datasets uploaded
        run(1)
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in runners}
    for r in range(args.rounds):
        names = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in names:
            time.sleep(0.2)
            rates[name].append(runners[name](args.epochs))
        print(f"  round {r + 1}: " + "  ".join(f"{k} {v[-1][0]:,.1f}" for k, v in rates.items()), flush=True)
    if rates:
        base = median([a for a, _ in rates["g.fit (raw)"]]) if "g.fit (raw)" in rates else float("nan")
        rows = []
        for name, rs in rates.items():
            job, wall = median([a for a, _ in rs]), median([b for _, b in rs])
            rows.append([name, f"{job:,.1f}", f"{wall:,.1f}", f"{job / base:.3f}"])
        print()
        print_table(["contender", "steps/s (job time)", "steps/s (wall)", "ratio to g.fit (job time)"], rows)
    if "sklearn" in only:
        s = sklearn_overhead(args.sk_fits)
        print()
        print_table(["KFClassifier digits MLP, per fit (median)", "ms"],
                    [["overhead: build + upload + job start/wait + delete", f"{s['overhead'] * 1e3:.1f}"],
                     ["of which: deleting the graph and datasets", f"{s['delete'] * 1e3:.1f}"],
                     ["training (the job's elapsed_s, 1 epoch)", f"{s['train'] * 1e3:.1f}"]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
