"""Per-node dispatch cost: a chain of 1,000 scalar adds (float32, 0-d) run as one graph.

kernelflow runs the chain through the in-process runtime (``make_callable``, and ``g.run``
for comparison). The first run compiles the plan and is reported apart; the figure is the
median over the later runs, divided by the number of add nodes. Beside it: the same chain
as plain Python numpy calls (the floor: one ufunc call per add, no graph) and, when
installed, a TensorFlow 1.x session running the same chain.

Usage:
    python bench/dispatch.py [--nodes 1000] [--runs 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_facts, print_facts, print_table  # noqa: E402

TARGET_US = 4.0


def _times(fn: Callable[[], Any], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def kf_chain(nodes: int) -> tuple[Any, Any, Any]:
    """(graph, placeholder, last tensor): x + 1 + 1 + ... with one shared constant."""
    import kernelflow as kf

    rt = kf.connect("inproc")
    g = rt.graph("dispatch")
    x = g.placeholder((), "float32", name="x")
    one = g.constant(np.float32(1), name="one")
    t = x
    for _ in range(nodes):
        t = kf.add(t, one)
    return g, x, t


def bench_kf(nodes: int, runs: int, x0: np.ndarray) -> list[list[str]]:
    rows = []
    for mode, n in (("make_callable", nodes), ("g.run", nodes), ("1 node: per-run cost", 1)):
        g, x, t = kf_chain(n)
        if mode == "make_callable":
            step = g.make_callable(t, feed_list=[x])
            call = lambda s=step: s(x0)
        else:
            call = lambda g=g, x=x, t=t: g.run(t, feed={x: x0})
        t0 = time.perf_counter()
        first = call()
        compile_s = time.perf_counter() - t0
        assert float(first) == float(x0) + n, first
        times = _times(call, runs)
        med = statistics.median(times)
        rows.append([f"kernelflow ({mode})", f"{med * 1e6 / n:.2f}", f"{min(times) * 1e6 / n:.2f}",
                     f"{med * 1e3:.2f}", f"{compile_s * 1e3:.1f}"])
    return rows


def bench_numpy(nodes: int, runs: int, x0: np.ndarray) -> list[str]:
    one = np.asarray(1, np.float32)
    add = np.add

    def chain() -> Any:
        t = x0
        for _ in range(nodes):
            t = add(t, one)
        return t

    times = _times(chain, runs)
    med = statistics.median(times)
    return ["numpy calls (floor)", f"{med * 1e6 / nodes:.2f}", f"{min(times) * 1e6 / nodes:.2f}",
            f"{med * 1e3:.2f}", "-"]


def bench_tf1(nodes: int, runs: int, x0: np.ndarray, threads: int) -> list[str] | None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up notices out of the table
    try:
        import tensorflow as tf
    except ImportError:
        return None
    v1 = tf.compat.v1
    v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, (), name="x")
        one = tf.constant(1, tf.float32)
        t = x
        for _ in range(nodes):
            t = tf.add(t, one)
    config = v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=1)
    # Grappler would fold the chain of adds into one AddN: switch it off to time 1,000 nodes.
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    sess = v1.Session(graph=graph, config=config)
    t0 = time.perf_counter()
    sess.run(t, feed_dict={x: x0})
    compile_s = time.perf_counter() - t0
    call = sess.make_callable(t, feed_list=[x])
    call(x0)
    times = _times(lambda: call(x0), runs)
    med = statistics.median(times)
    return ["TF1 session (make_callable, no grappler)", f"{med * 1e6 / nodes:.2f}", f"{min(times) * 1e6 / nodes:.2f}",
            f"{med * 1e3:.2f}", f"{compile_s * 1e3:.1f}"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--no-tf", action="store_true", help="skip the TF1 comparison")
    args = p.parse_args(argv)

    x0 = np.asarray(0.5, np.float32)
    rows = bench_kf(args.nodes, args.runs, x0)
    rows.append(bench_numpy(args.nodes, args.runs, x0))
    if not args.no_tf:
        tf_row = bench_tf1(args.nodes, args.runs, x0, args.threads)
        if tf_row:
            rows.append(tf_row)
    print(f"\n## dispatch: chain of {args.nodes} float32 scalar adds, median of {args.runs} runs "
          f"(first run excluded)")
    print_table(["runner", "µs/node (median)", "µs/node (best)", "ms/run", "first run (ms)"], rows)
    kf_us = float(rows[0][1])
    verdict = "hit" if kf_us <= TARGET_US else "MISS"
    print(f"\ntarget <= {TARGET_US} µs/node: {verdict} ({kf_us:.2f} µs/node with make_callable)")
    print()
    print_facts(machine_facts())


if __name__ == "__main__":
    main()
