"""Training-step benchmark: kernelflow beside hand-written numpy, TensorFlow 1.x graph mode and PyTorch.

The model is an MLP 784 -> 512 -> 512 -> 10 with ReLU, softmax cross-entropy (mean over the
batch) and Adam (lr 1e-3, beta1 0.9, beta2 0.999, eps 1e-7), in float32 on the CPU. Every
implementation starts from the same weights and sees the same synthetic batches. They run
interleaved in rounds (kf, numpy, tf1, torch, kf, numpy, ...) in this one process, after a
warm-up; the table gives the median steps/s over the rounds and the ratio to numpy.

Thread counts are the same for all (``--threads``, default: all cores): numpy's BLAS through
threadpoolctl, ``torch.set_num_threads``, and TF's intra-op pool (inter-op pool: 1 thread,
so that no implementation runs more compute threads than the others).

Usage:
    python bench/train_mlp.py                    # batch 256 and 32, every peer installed
    python bench/train_mlp.py --batch 32 --only kf numpy
    python bench/train_mlp.py --profile 256      # cProfile of the kernelflow step only
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
from _common import Contender, machine_facts, median, print_facts, print_table, run_interleaved, tune_malloc  # noqa: E402

SIZES = (784, 512, 512, 10)
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-7
IMPLS = ("kf", "numpy", "tf1", "torch")
EXTRA_IMPLS = ("kf-unfused", "kf-nocompile", "kf-nogroup")


# --------------------------------------------------------------------------- data and weights
def make_batches(batch: int, n_batches: int = 8, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic batches: standard-normal inputs, labels from a fixed random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_batches * batch, SIZES[0]), dtype=np.float32)
    teacher = rng.standard_normal((SIZES[0], SIZES[-1]), dtype=np.float32)
    y = np.argmax(x @ teacher, axis=1).astype(np.int64)
    return [(x[i * batch:(i + 1) * batch].copy(), y[i * batch:(i + 1) * batch].copy()) for i in range(n_batches)]


def make_weights(seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """Glorot-uniform kernels (in, out) and zero biases, float32."""
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)
        out.append((w, np.zeros(fan_out, np.float32)))
    return out


# --------------------------------------------------------------------------- implementations
def build_kf_graph(rt: Any, name: str, weights: list, fused_adam: bool = True) -> dict[str, Any]:
    """The MLP on runtime ``rt``: placeholders, dense layers, kf.optim.Adam (or, with
    ``fused_adam=False``, kf.gradients and assign ops); returns {g, x, y, loss, train}.
    Shared by bench/rpc.py and bench/jobs.py, which build it on other runtimes."""
    import kernelflow as kf

    g = rt.graph(name)
    x = g.placeholder((None, SIZES[0]), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = x
    params = []
    for i, (w0, b0) in enumerate(weights):
        with g.name_scope(f"dense{i + 1}"):
            w = g.variable(w0, name="w")
            b = g.variable(b0, name="b")
            params += [w, b]
            h = h @ w + b
            if i < len(weights) - 1:
                h = kf.relu(h)
    loss = kf.mean(kf.softmax_cross_entropy(h, y))
    if fused_adam:
        train = kf.optim.Adam(lr=LR, beta1=BETA1, beta2=BETA2, epsilon=EPS).minimize(loss)
    else:
        train = _kf_manual_adam(kf, g, loss, params, weights)
    return {"g": g, "x": x, "y": y, "loss": loss, "train": train}


def build_kf(weights: list, threads: int, fused_adam: bool = True, compile: bool = True,
             group_updates: bool = True) -> Callable[[np.ndarray, np.ndarray], Any]:
    """kernelflow in-process runtime: placeholders, autodiff, kf.optim.Adam, one callable per step.

    With ``fused_adam=False`` the update is built from kf.gradients and assign ops instead of
    the optimiser's fused in-place kernel (the ``kf-unfused`` contender); with ``compile=False``
    the graph compiler is off for its runs (the ``kf-nocompile`` contender); with
    ``group_updates=False`` the compiler leaves each variable's Adam update a kernel call of its
    own instead of one call for all (``$KERNELFLOW_GROUP_UPDATES=0``, the ``kf-nogroup`` contender).
    """
    import kernelflow as kf

    saved = os.environ.get("KERNELFLOW_GROUP_UPDATES")
    os.environ["KERNELFLOW_GROUP_UPDATES"] = "1" if group_updates else "0"
    try:
        rt = kf.connect("inproc")
    finally:
        if saved is None:
            del os.environ["KERNELFLOW_GROUP_UPDATES"]
        else:
            os.environ["KERNELFLOW_GROUP_UPDATES"] = saved
    m = build_kf_graph(rt, f"mlp_{id(weights)}_{compile}_{group_updates}", weights, fused_adam)
    g, x, y, loss, train = m["g"], m["x"], m["y"], m["loss"], m["train"]
    step = g.make_callable([train, loss], feed_list=[x, y], compile=compile)
    build_kf.runtimes = [*getattr(build_kf, "runtimes", []), rt]
    build_kf.graph = g  # for --profile and node counts
    return lambda xb, yb: step(xb, yb)[1]


def _kf_manual_adam(kf: Any, g: Any, loss: Any, params: list, weights: list) -> Any:
    grads = kf.gradients(loss, params)
    arrays = [a for pair in weights for a in pair]
    with g.name_scope("adam"):
        t = g.variable(np.float32(0), name="t", trainable=False)
        t1 = kf.assign_add(t, 1.0)
        lr_t = LR * kf.sqrt(1 - BETA2 ** t1) / (1 - BETA1 ** t1)
        updates = []
        for p, gr, a in zip(params, grads, arrays):
            m = g.variable(np.zeros_like(a), name="m", trainable=False)
            v = g.variable(np.zeros_like(a), name="v", trainable=False)
            m1 = kf.assign(m, BETA1 * m + (1 - BETA1) * gr)
            v1 = kf.assign(v, BETA2 * v + (1 - BETA2) * kf.square(gr))
            updates.append(kf.assign_sub(p, lr_t * m1 / (kf.sqrt(v1) + EPS)))
    return kf.group(*updates)


class NumpyMLP:
    """The same step by hand, as a competent numpy user writes it (BLAS matmuls, Adam state
    updated in place, temporaries elsewhere); TF1's Adam form (bias correction folded into lr)."""

    def __init__(self, weights: list):
        self.params = [a.copy() for pair in weights for a in pair]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        w1, b1, w2, b2, w3, b3 = self.params
        n = x.shape[0]
        a1 = np.maximum(x @ w1 + b1, 0)
        a2 = np.maximum(a1 @ w2 + b2, 0)
        logits = a2 @ w3 + b3
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = float(np.mean(np.log(s[:, 0]) - z[rows, y]))
        d3 = e / s
        d3[rows, y] -= 1
        d3 /= n
        d2 = d3 @ w3.T
        d2 *= a2 > 0
        d1 = d2 @ w2.T
        d1 *= a1 > 0
        grads = [x.T @ d1, d1.sum(axis=0), a1.T @ d2, d2.sum(axis=0), a2.T @ d3, d3.sum(axis=0)]
        self.t += 1
        lr_t = LR * np.sqrt(1 - BETA2 ** self.t) / (1 - BETA1 ** self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= BETA1
            m += (1 - BETA1) * g
            v *= BETA2
            v += (1 - BETA2) * g * g
            p -= lr_t * m / (np.sqrt(v) + EPS)
        return loss


def build_numpy(weights: list, threads: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    return NumpyMLP(weights).step


def build_tf1(weights: list, threads: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    """TensorFlow 1.x graph mode: placeholders, AdamOptimizer, Session.run with feed_dict."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up notices out of the table
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, (None, SIZES[0]), name="x")
        y = v1.placeholder(tf.int64, (None,), name="y")
        h = x
        for i, (w0, b0) in enumerate(weights):
            h = tf.matmul(h, tf.Variable(w0)) + tf.Variable(b0)
            if i < len(weights) - 1:
                h = tf.nn.relu(h)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=h))
        train = v1.train.AdamOptimizer(LR, BETA1, BETA2, EPS).minimize(loss)
        init = v1.global_variables_initializer()
    config = v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    sess = v1.Session(graph=graph, config=config)
    sess.run(init)
    fetches = [train, loss]
    return lambda xb, yb: sess.run(fetches, feed_dict={x: xb, y: yb})[1]


def build_torch(weights: list, threads: int) -> Callable[[np.ndarray, np.ndarray], Any]:
    """PyTorch CPU: nn.Linear layers holding the same weights, torch.optim.Adam, the usual loop."""
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    layers: list[Any] = []
    for i, (w0, b0) in enumerate(weights):
        lin = nn.Linear(*w0.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w0.T))
            lin.bias.copy_(torch.from_numpy(b0))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS)
    loss_fn = nn.CrossEntropyLoss()

    def step(xb: np.ndarray, yb: np.ndarray) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return loss.item()

    return step


BUILDERS = {"kf": build_kf, "numpy": build_numpy, "tf1": build_tf1, "torch": build_torch,
            "kf-unfused": lambda w, t: build_kf(w, t, fused_adam=False),
            "kf-nocompile": lambda w, t: build_kf(w, t, compile=False),
            "kf-nogroup": lambda w, t: build_kf(w, t, group_updates=False)}


def wait_for_kernels() -> None:
    """Let background kernel compiles finish before timing (compile cost is measured on its own)."""
    for rt in getattr(build_kf, "runtimes", []):
        comp = rt._transport.service.compiler  # bench only: the in-process runtime's compiler
        if comp is not None:
            comp.wait_idle()


def available(name: str) -> bool:
    mod = {"tf1": "tensorflow", "torch": "torch"}.get(name)
    if mod is None:
        return True
    import importlib.util

    return importlib.util.find_spec(mod) is not None


# --------------------------------------------------------------------------- the run
def bench_batch(batch: int, impls: list[str], args: argparse.Namespace) -> None:
    batches = make_batches(batch)
    weights = make_weights()
    steps = {name: BUILDERS[name](weights, args.threads) for name in impls}
    # Sanity: from the same start on the same batches, the losses must fall alike.
    n = args.sanity_steps
    losses = {}
    for name, step in steps.items():
        seq = [float(step(*batches[k % len(batches)])) for k in range(n)]
        losses[name] = (seq[0], seq[-1])
    wait_for_kernels()
    print(f"\n## batch {batch}  (threads={args.threads}, rounds={args.rounds}, block ~{args.block_s}s, malloc "
          f"{'tuned' if args.malloc_tuned else 'default'})")
    contenders = []
    for name, step in steps.items():
        cycle = itertools.cycle(batches)
        contenders.append(Contender(name, lambda s=step, c=cycle: s(*next(c))))
    run_interleaved(contenders, rounds=args.rounds, block_s=args.block_s, warmup_s=args.warmup_s, gap_s=args.gap_s,
                    log=print if args.verbose else None)
    ref = next((c for c in contenders if c.name == "numpy"), None)
    base = median(ref.rates) if ref else None
    base_best = max(ref.rates) if ref else None
    rows = []
    for c in contenders:
        med = median(c.rates)
        ratio = f"{med / base:.2f}x" if base else "-"
        best = max(c.rates)
        best_ratio = f"{best / base_best:.2f}x" if base_best else "-"
        rows.append([c.name, f"{med:,.1f}", f"{1000 / med:.2f}", ratio, f"{best:,.1f}", best_ratio,
                     f"{median(c.faults):,.0f}", f"{losses[c.name][0]:.4f}", f"{losses[c.name][1]:.4f}"])
    print_table(["impl", "steps/s (median)", "ms/step", "vs numpy", "steps/s (best)", "best vs numpy",
                 "page faults/step", "loss@1", f"loss@{n}"], rows)


def profile_kf(batch: int, args: argparse.Namespace) -> None:
    """cProfile of the kernelflow step alone (after warm-up), sorted by own time."""
    import cProfile
    import pstats

    batches = make_batches(batch)
    step = build_kf(make_weights(), args.threads)
    for k in range(20):
        step(*batches[k % len(batches)])
    wait_for_kernels()
    prof = cProfile.Profile()
    prof.enable()
    for k in range(args.profile_steps):
        step(*batches[k % len(batches)])
    prof.disable()
    print(f"\n## cProfile of {args.profile_steps} kernelflow steps at batch {batch}")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[256, 32])
    p.add_argument("--only", nargs="+", choices=IMPLS + EXTRA_IMPLS, default=list(IMPLS))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block-s", type=float, default=0.5, help="seconds per implementation per round")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--gap-s", type=float, default=0.2, help="idle pause before each block")
    p.add_argument("--sanity-steps", type=int, default=50)
    p.add_argument("--profile", type=int, nargs="+", metavar="BATCH", help="profile the kf step; no peers")
    p.add_argument("--profile-steps", type=int, default=200)
    p.add_argument("--malloc-tuned", action="store_true",
                   help="keep freed memory in glibc's heap (mallopt), so big temporaries cause no page faults")
    p.add_argument("-v", "--verbose", action="store_true", help="print every round")
    args = p.parse_args(argv)

    if args.malloc_tuned:
        tune_malloc()

    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads, user_api="blas")
    if args.profile:
        for b in args.profile:
            profile_kf(b, args)
        return
    impls = [name for name in args.only if available(name)]
    for name in set(args.only) - set(impls):
        print(f"(skipping {name}: not installed; `pip install -e '.[bench]'`)")
    for b in args.batch:
        bench_batch(b, impls, args)
    print()
    print_facts(machine_facts())


if __name__ == "__main__":
    main()
