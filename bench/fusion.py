"""Fusion benchmark: a 10-op elementwise chain over 16M float32, fused vs unfused vs one memcpy.

The chain is ``relu(sqrt(min(max(abs(x * 2 + 1 - y), 0.5), 3) * x + 1))``-like: ten ops that
are cheap per element, so an unfused executor is bound by memory traffic (each op reads and
writes 64 MB) and a fused kernel by one read of x and y and one write. Contenders, interleaved
in rounds in one process:

- ``kf fused``: ``g.run`` with the compiler on (kernels compiled before timing);
- ``kf unfused``: the same graph with ``compile=False``;
- ``numpy``: the same expression in numpy (a temporary per op);
- ``memcpy``: ``x.copy()`` (allocating, as the runs do) and ``copyto`` into a reused array.

Usage:
    python bench/fusion.py [--n 16777216] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import Contender, machine_facts, median, print_facts, print_table, run_interleaved, tune_malloc  # noqa: E402


def chain(kf, x, y):
    """The ten ops (kernelflow or numpy spelling)."""
    t = x * 2.0
    t = t + 1.0
    t = t - y
    t = kf.abs(t)
    t = kf.maximum(t, 0.5)
    t = kf.minimum(t, 3.0)
    t = t * x
    t = t + 1.0
    t = kf.sqrt(kf.abs(t))
    return t


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1 << 24)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block-s", type=float, default=0.5)
    p.add_argument("--malloc-default", action="store_true",
                   help="leave glibc's malloc as is (default: tuned as `kernelflow serve` tunes it, so a "
                        "64 MiB result reuses freed heap instead of fresh zero pages)")
    args = p.parse_args(argv)
    if not args.malloc_default:
        tune_malloc()
    import kernelflow as kf

    rng = np.random.default_rng(0)
    xv = rng.standard_normal(args.n, dtype=np.float32)
    yv = rng.standard_normal(args.n, dtype=np.float32)
    rt = kf.connect("inproc", compile="sync")
    g = rt.graph("fusion")
    x = g.placeholder((None,), "float32", name="x")
    y = g.placeholder((None,), "float32", name="y")
    out = chain(kf, x, y)
    fused = g.make_callable(out, [x, y])
    unfused = g.make_callable(out, [x, y], compile=False)
    a, b = fused(xv, yv), unfused(xv, yv)
    ref = chain(np, xv.astype(np.float64), yv.astype(np.float64))
    err = float(np.max(np.abs(a - ref)) / np.max(np.abs(ref)))
    assert np.allclose(a, b, rtol=1e-6), "fused and unfused differ"
    buf = np.empty_like(xv)
    contenders = [Contender("kf fused", lambda: fused(xv, yv)), Contender("kf unfused", lambda: unfused(xv, yv)),
                  Contender("numpy", lambda: chain(np, xv, yv)), Contender("memcpy (x.copy())", xv.copy),
                  Contender("memcpy (copyto)", lambda: np.copyto(buf, xv))]
    run_interleaved(contenders, rounds=args.rounds, block_s=args.block_s, warmup_s=1.0, gap_s=0.1)
    mem = median(next(c for c in contenders if c.name == "memcpy (x.copy())").rates)
    rows = []
    for c in contenders:
        med = median(c.rates)
        rows.append([c.name, f"{1000 / med:.1f}", f"{1000 / max(c.rates):.1f}", f"{mem / med:.2f}x"])
    print(f"\n## 10-op elementwise chain over {args.n:,} float32 ({args.n * 4 / 2**20:.0f} MiB per array); "
          f"max error vs float64 (relative to max |value|) {err:.1e}")
    print_table(["impl", "ms (median)", "ms (best)", "time vs memcpy"], rows)
    print()
    print(g.plan(out, feeds=[x, y]))
    print()
    print_facts(machine_facts())
    rt.close()


if __name__ == "__main__":
    main()
