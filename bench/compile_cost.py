"""Compile cost of the MLP training plan (bench/train_mlp.py's model, Adam): cold and warm from disk.

Each measurement is a fresh Python process (a server restart): it builds the graph, runs one
training step with the compiler in "sync" mode (every kernel the step needs is compiled or
loaded before it runs) and reports that first step's time minus a steady-state step's time,
i.e. what planning and compiling cost. The first process starts with an empty cache dir
("cold"); the next ones find the kernels on disk ("warm").

Usage:
    python bench/compile_cost.py [--batch 256] [--warm-runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import numpy as np
import kernelflow as kf
from kernelflow.compiler.numba_backend import prewarm_numba
t0 = time.perf_counter()
prewarm_numba()  # what `kernelflow serve` does at start (Compiler.prewarm), off the first run's path
numba_s = time.perf_counter() - t0
sys.path.insert(0, sys.argv[2])
from train_mlp import build_kf_graph, make_batches, make_weights
batch = int(sys.argv[1])
xb, yb = make_batches(batch, 2)[0]
rt = kf.connect("inproc", compile="sync")
m = build_kf_graph(rt, "mlp", make_weights())
step = m["g"].make_callable([m["train"], m["loss"]], [m["x"], m["y"]])
t1 = time.perf_counter()
step(xb, yb)
first = time.perf_counter() - t1
steady = []
for _ in range(5):
    t = time.perf_counter(); step(xb, yb); steady.append(time.perf_counter() - t)
comp = rt._transport.service.compiler  # bench only: counts of the in-process runtime's kernel cache
c = comp.cache
print(json.dumps({"numba_s": numba_s, "first_s": first, "steady_s": min(steady), "kernels": c.compiled,
                  "compile_s": c.compile_s,
                  "from_disk": c.disk_hits, "failed": c.failed}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--warm-runs", type=int, default=3)
    args = p.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, KERNELFLOW_CACHE_DIR=cache, KERNELFLOW_FUSE_MIN_ELEMENTS="4096")
        rows = []
        for k in range(1 + args.warm_runs):
            out = subprocess.run([sys.executable, "-c", CHILD, str(args.batch), here], env=env, check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            cost = r["first_s"] - r["steady_s"]
            rows.append(("cold" if k == 0 else f"warm #{k}", cost, r))
    print(f"\n## compile cost of the MLP training plan (batch {args.batch}; each row a new process; numba "
          "imported at process start, as `kernelflow serve` does)")
    print("| run | compile/load time of its kernels | first step - steady step | first step | steady step | kernels | "
          "from disk | "
          "numba import + warm-up (at start) |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for name, cost, r in rows:
        print(f"| {name} | {r['compile_s'] * 1000:,.0f} ms | {cost * 1000:,.0f} ms | {r['first_s'] * 1000:,.0f} ms | "
              f"{r['steady_s'] * 1000:,.1f} ms | "
              f"{r['kernels']} | {r['from_disk']} | {r['numba_s'] * 1000:,.0f} ms |")


if __name__ == "__main__":
    main()
