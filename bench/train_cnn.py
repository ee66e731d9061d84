"""CNN training-step benchmark: kernelflow (compiler on and off) beside TensorFlow 1.x graph mode and PyTorch.

The model: batch 64 of 32x32x3 images, conv3x3(32, SAME) + ReLU, max-pool 2, conv3x3(64, SAME)
+ ReLU, max-pool 2, dense(10), softmax cross-entropy (mean), Adam (lr 1e-3). float32 on the
CPU; every implementation starts from the same weights and sees the same batches. They run
interleaved in rounds in this one process, after a warm-up; the table gives median and best
steps/s and the ratio to PyTorch.

Usage:
    python bench/train_cnn.py
    python bench/train_cnn.py --only kf torch --rounds 5
    python bench/train_cnn.py --profile        # cProfile of the kernelflow step only
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Contender, machine_facts, median, print_facts, print_table, run_interleaved  # noqa: E402

BATCH, HW, CIN, C1, C2, CLASSES = 64, 32, 3, 32, 64, 10
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-7
IMPLS = ("kf", "kf-nocompile", "tf1", "torch")


def make_batches(n_batches: int = 4, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        x = rng.standard_normal((BATCH, HW, HW, CIN), dtype=np.float32)
        y = rng.integers(0, CLASSES, BATCH).astype(np.int64)
        out.append((x, y))
    return out


def make_weights(seed: int = 1) -> dict[str, np.ndarray]:
    """Glorot-uniform filters (kh, kw, in, out) and dense kernel, zero biases."""
    rng = np.random.default_rng(seed)

    def glorot(shape: tuple, fan_in: int, fan_out: int) -> np.ndarray:
        lim = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-lim, lim, shape).astype(np.float32)

    flat = (HW // 4) * (HW // 4) * C2
    return {"f1": glorot((3, 3, CIN, C1), 9 * CIN, 9 * C1), "b1": np.zeros(C1, np.float32),
            "f2": glorot((3, 3, C1, C2), 9 * C1, 9 * C2), "b2": np.zeros(C2, np.float32),
            "w3": glorot((flat, CLASSES), flat, CLASSES), "b3": np.zeros(CLASSES, np.float32)}


def build_kf(weights: dict, threads: int, compile: bool = True) -> Callable[[np.ndarray, np.ndarray], Any]:
    import kernelflow as kf

    rt = kf.connect("inproc")
    g = rt.graph(f"cnn_{id(weights)}_{compile}")
    x = g.placeholder((None, HW, HW, CIN), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    v = {k: g.variable(a, name=k) for k, a in weights.items()}
    h = kf.max_pool2d(kf.relu(kf.conv2d(x, v["f1"], padding="SAME") + v["b1"]), 2)
    h = kf.max_pool2d(kf.relu(kf.conv2d(h, v["f2"], padding="SAME") + v["b2"]), 2)
    logits = kf.flatten(h) @ v["w3"] + v["b3"]
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    train = kf.optim.Adam(lr=LR, beta1=BETA1, beta2=BETA2, epsilon=EPS).minimize(loss)
    step = g.make_callable([train, loss], feed_list=[x, y], compile=compile)
    build_kf.graph = g
    build_kf.runtimes = [*getattr(build_kf, "runtimes", []), rt]
    return lambda xb, yb: step(xb, yb)[1]


def build_tf1(weights: dict, threads: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, (None, HW, HW, CIN))
        y = v1.placeholder(tf.int64, (None,))
        w = {k: tf.Variable(a) for k, a in weights.items()}
        h = tf.nn.relu(tf.nn.conv2d(x, w["f1"], 1, "SAME") + w["b1"])
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        h = tf.nn.relu(tf.nn.conv2d(h, w["f2"], 1, "SAME") + w["b2"])
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        logits = tf.matmul(tf.reshape(h, (-1, (HW // 4) ** 2 * C2)), w["w3"]) + w["b3"]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        train = v1.train.AdamOptimizer(LR, BETA1, BETA2, EPS).minimize(loss)
        init = v1.global_variables_initializer()
    config = v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    sess = v1.Session(graph=graph, config=config)
    sess.run(init)
    return lambda xb, yb: sess.run([train, loss], feed_dict={x: xb, y: yb})[1]


def build_torch(weights: dict, threads: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    """PyTorch in its native NCHW layout (inputs transposed once, outside the step)."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    conv1, conv2 = nn.Conv2d(CIN, C1, 3, padding=1), nn.Conv2d(C1, C2, 3, padding=1)
    dense = nn.Linear((HW // 4) ** 2 * C2, CLASSES)
    with torch.no_grad():
        conv1.weight.copy_(torch.from_numpy(weights["f1"].transpose(3, 2, 0, 1).copy()))
        conv1.bias.copy_(torch.from_numpy(weights["b1"]))
        conv2.weight.copy_(torch.from_numpy(weights["f2"].transpose(3, 2, 0, 1).copy()))
        conv2.bias.copy_(torch.from_numpy(weights["b2"]))
        dense.weight.copy_(torch.from_numpy(weights["w3"].T.copy()))
        dense.bias.copy_(torch.from_numpy(weights["b3"]))
    params = [*conv1.parameters(), *conv2.parameters(), *dense.parameters()]
    opt = torch.optim.Adam(params, lr=LR, betas=(BETA1, BETA2), eps=EPS)
    pool = nn.MaxPool2d(2)
    loss_fn = nn.CrossEntropyLoss()
    cache: dict[int, Any] = {}

    def step(xb: np.ndarray, yb: np.ndarray) -> float:
        key = id(xb)
        if key not in cache:  # NCHW copy made once per batch array, as a torch data loader would
            cache[key] = (torch.from_numpy(xb.transpose(0, 3, 1, 2).copy()), torch.from_numpy(yb))
        xt, yt = cache[key]
        opt.zero_grad(set_to_none=True)
        h = pool(torch.relu(conv1(xt)))
        h = pool(torch.relu(conv2(h)))
        logits = dense(h.permute(0, 2, 3, 1).reshape(h.shape[0], -1))  # NHWC flatten order, as kf and TF
        loss = loss_fn(logits, yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


BUILDERS = {"kf": build_kf, "kf-nocompile": lambda w, t: build_kf(w, t, compile=False), "tf1": build_tf1,
            "torch": build_torch}


def available(name: str) -> bool:
    mod = {"tf1": "tensorflow", "torch": "torch"}.get(name)
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None


def wait_for_kernels() -> None:
    """Let the kf runtime's background compiles finish before timing (compile cost is measured elsewhere)."""
    for rt in getattr(build_kf, "runtimes", []):
        comp = rt._transport.service.compiler  # bench only: the in-process runtime's compiler
        if comp is not None:
            comp.wait_idle()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--block-s", type=float, default=1.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--gap-s", type=float, default=0.2)
    p.add_argument("--sanity-steps", type=int, default=10)
    p.add_argument("--profile", action="store_true", help="cProfile of the kf step; no peers")
    p.add_argument("--profile-steps", type=int, default=30)
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads, user_api="blas")
    batches = make_batches()
    weights = make_weights()
    if args.profile:
        import cProfile
        import pstats

        step = build_kf(weights, args.threads)
        for k in range(5):
            step(*batches[k % len(batches)])
        wait_for_kernels()
        prof = cProfile.Profile()
        prof.enable()
        for k in range(args.profile_steps):
            step(*batches[k % len(batches)])
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
        return
    impls = [n for n in args.only if available(n)]
    steps = {n: BUILDERS[n](weights, args.threads) for n in impls}
    losses = {}
    for name, step in steps.items():
        seq = [float(step(*batches[k % len(batches)])) for k in range(args.sanity_steps)]
        losses[name] = (seq[0], seq[-1])
    wait_for_kernels()
    contenders = []
    for name, step in steps.items():
        cycle = itertools.cycle(batches)
        contenders.append(Contender(name, lambda s=step, c=cycle: s(*next(c))))
    run_interleaved(contenders, rounds=args.rounds, block_s=args.block_s, warmup_s=args.warmup_s, gap_s=args.gap_s)
    ref = next((c for c in contenders if c.name == "torch"), None)
    base, base_best = (median(ref.rates), max(ref.rates)) if ref else (None, None)
    rows = []
    for c in contenders:
        med, best = median(c.rates), max(c.rates)
        rows.append([c.name, f"{med:,.1f}", f"{1000 / med:.1f}", f"{med / base:.2f}x" if base else "-",
                     f"{best:,.1f}", f"{best / base_best:.2f}x" if base_best else "-",
                     f"{losses[c.name][0]:.4f}", f"{losses[c.name][1]:.4f}"])
    print(f"\n## CNN batch {BATCH}, {HW}x{HW}x{CIN} (threads={args.threads}, rounds={args.rounds})")
    print_table(["impl", "steps/s (median)", "ms/step", "vs torch", "steps/s (best)", "best vs torch", "loss@1",
                 f"loss@{args.sanity_steps}"], rows)
    print()
    print_facts(machine_facts())


if __name__ == "__main__":
    main()
