"""ONNX forms of a recurrent layer: onnxruntime latency of ONNX's LSTM / GRU op with the input projection
folded into W, against the same op fed kernelflow's projections through an identity W, and the Scan.

The question (issue #17 follow-up): what does exporting kf.nn.LSTM / GRU as ONNX's own op, with
the kernel in its W, buy over the two earlier forms? One classifier per cell (20 steps of 8
features; LSTM(32) or GRU(32), dense 4, softmax), exported three ways:

- ``folded``: what ``g.export_onnx`` writes (no MatMul before the op);
- ``identity W``: the op over ``inputs @ kernel`` (a MatMul) through a gate-reordering identity W
  (the export before the fold; made here by switching off the fold's pattern match);
- ``scan``: the Scan of the decomposed step (what a masked or float64 layer keeps).

All three are checked equal to ``g.run`` first, then run by onnxruntime (CPUExecutionProvider,
default optimisations) in interleaved rounds; the table gives median µs per call and the ratio
to ``folded`` (above 1: folded is faster).

Usage:
    python bench/onnx_rnn.py                  # 5 rounds of 0.5 s, onnxruntime's default threads
    python bench/onnx_rnn.py --rounds 1 --block-s 0.2 --threads 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
from _common import Contender, machine_facts, median, print_facts, print_table, run_interleaved  # noqa: E402

# bench/onnx.py would shadow the onnx package while this directory is on sys.path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]


def _export(g, x, probs, path: Path, form: str) -> None:
    from kernelflow.interop import onnx_recurrent as R

    saved = R._projection, R._fused
    try:
        if form == "identity W":
            R._projection = lambda *a: None
        elif form == "scan":
            R._fused = lambda *a: False
        g.export_onnx(path, inputs={"x": x}, outputs={"probs": probs})
    finally:
        R._projection, R._fused = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-s", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    args = ap.parse_args()

    import onnxruntime as ort

    import kernelflow as kf

    facts = machine_facts()
    facts["onnxruntime"] = f"{ort.__version__} (CPUExecutionProvider, intra-op threads {args.threads or 'default'})"
    print_facts(facts)
    rt = kf.connect("inproc")
    forms = ("folded", "identity W", "scan")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind, cls in (("LSTM", kf.nn.LSTM), ("GRU", kf.nn.GRU)):
            g = rt.graph(f"bench_onnx_{kind.lower()}")
            x = g.placeholder((None, 20, 8), "float32", name="x")
            probs = kf.softmax(kf.nn.Dense(4, name="fc", seed=2)(cls(32, name="rnn", seed=1)(x)))
            so = ort.SessionOptions()
            if args.threads:
                so.intra_op_num_threads = args.threads
            sessions = {}
            for form in forms:
                path = Path(tmp) / f"{kind}_{form.replace(' ', '_')}.onnx"
                _export(g, x, probs, path, form)
                sessions[form] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            for batch in (1, 64):
                xb = np.random.default_rng(batch).standard_normal((batch, 20, 8)).astype("float32")
                want = g.run(probs, feed={x: xb})
                for s in sessions.values():
                    np.testing.assert_allclose(s.run(None, {"x": xb})[0], want, rtol=1e-4, atol=1e-5)
                cs = [Contender(f, lambda s=sessions[f], a=xb: s.run(None, {"x": a})) for f in forms]
                print(f"{kind}, batch {batch}:", flush=True)
                run_interleaved(cs, rounds=args.rounds, block_s=args.block_s, log=print)
                us = [1e6 / median(c.rates) for c in cs]
                rows.append((f"{kind} 20x8 -> 32", batch, *(f"{u:,.0f}" for u in us),
                             *(f"{u / us[0]:.2f}x" for u in us[1:])))
    rt.close()
    print()
    print_table(["model", "batch", "folded µs", "identity W µs", "scan µs", "identity W / folded",
                 "scan / folded"], rows)


if __name__ == "__main__":
    main()
