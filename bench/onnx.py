"""ONNX benchmark (issue #17): onnxruntime's CPU latency on an exported model against kernelflow's own run.

Three models, each exported with ``g.export_onnx`` and run on the same inputs:

- the digits MLP of tests/serving (64 -> 32 -> 10, softmax),
- the CNN of tests/interop (16x16x3 input; conv 3x3x8, max pool, conv 3x3x16 stride 2, avg pool,
  dense 10, softmax), and
- an LSTM classifier (20 steps of 8 features; kf.nn.LSTM(32), dense 4, softmax): ONNX's LSTM op
  (the input projection folded into its W), and the same with kf.nn.GRU(32): ONNX's GRU op.

For batch 1 and 64, contenders run interleaved in rounds (`_common.run_interleaved`), so drift
of the machine hits all alike:

- ``kernelflow``: ``g.make_callable(probs, [x])`` on an in-process runtime (the run path a
  served model takes, without the network);
- ``onnxruntime``: ``InferenceSession(..., providers=["CPUExecutionProvider"]).run`` with its
  default graph optimisations and thread pool.

The table gives the median latency per call and the ratio kernelflow / onnxruntime (above 1:
onnxruntime is faster). First, onnxruntime's outputs are checked against kernelflow's.

Usage:
    python bench/onnx.py                # 5 rounds of 0.5 s per contender
    python bench/onnx.py --rounds 3 --threads 1
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

# This file is named onnx.py: with its directory on sys.path, `import onnx` would find it, not the package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_mlp(rt):
    from tests.runtime_server.serving.conftest import build_digits

    d = build_digits(rt, name="bench_mlp", steps=5)
    return d.g, d.x, d.probs, (64,)


def build_cnn(rt):
    import kernelflow as kf

    g = rt.graph("bench_cnn")
    x = g.placeholder((None, 16, 16, 3), "float32", name="x")
    h = kf.layers.conv2d(x, 8, 3, activation=kf.relu, name="conv1", seed=1)
    h = kf.max_pool2d(h, 2, 2, padding="SAME")
    h = kf.layers.conv2d(h, 16, 3, strides=2, padding="VALID", activation=kf.relu, name="conv2", seed=2)
    h = kf.avg_pool2d(h, 2, 1, padding="SAME")
    logits = kf.layers.dense(kf.flatten(h), 10, name="fc", seed=3)
    return g, x, kf.softmax(logits), (16, 16, 3)


def build_lstm(rt):
    import kernelflow as kf

    g = rt.graph("bench_lstm")
    x = g.placeholder((None, 20, 8), "float32", name="x")
    logits = kf.nn.Dense(4, name="fc", seed=2)(kf.nn.LSTM(32, name="lstm", seed=1)(x))
    return g, x, kf.softmax(logits), (20, 8)


def build_gru(rt):
    import kernelflow as kf

    g = rt.graph("bench_gru")
    x = g.placeholder((None, 20, 8), "float32", name="x")
    logits = kf.nn.Dense(4, name="fc", seed=2)(kf.nn.GRU(32, name="gru", seed=1)(x))
    return g, x, kf.softmax(logits), (20, 8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-s", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--models", default="mlp,cnn,lstm,gru", help="comma-separated subset of mlp, cnn, lstm, gru")
    args = ap.parse_args()

    import onnxruntime as ort

    import kernelflow as kf

    facts = machine_facts()
    facts["onnxruntime"] = f"{ort.__version__} (CPUExecutionProvider, intra-op threads {args.threads or 'default'})"
    print_facts(facts)
    rt = kf.connect("inproc")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"mlp": ("digits MLP", build_mlp), "cnn": ("CNN 16x16x3", build_cnn),
                  "lstm": ("LSTM 20x8 -> 32", build_lstm), "gru": ("GRU 20x8 -> 32", build_gru)}
        for name, build in (models[m] for m in args.models.split(",")):
            g, x, probs, shape = build(rt)
            path = Path(tmp) / f"{g.name}.onnx"
            g.export_onnx(path, inputs={"x": x}, outputs={"probs": probs})
            so = ort.SessionOptions()
            if args.threads:
                so.intra_op_num_threads = args.threads
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            run_kf = g.make_callable(probs, [x])
            for batch in (1, 64):
                xb = np.random.default_rng(batch).standard_normal((batch, *shape)).astype("float32")
                np.testing.assert_allclose(sess.run(None, {"x": xb})[0], run_kf(xb), rtol=1e-4, atol=1e-5)
                cs = [Contender("kernelflow", lambda f=run_kf, a=xb: f(a)),
                      Contender("onnxruntime", lambda s=sess, a=xb: s.run(None, {"x": a}))]
                print(f"{name}, batch {batch}:", flush=True)
                run_interleaved(cs, rounds=args.rounds, block_s=args.block_s, log=print)
                kf_us, ort_us = (1e6 / median(c.rates) for c in cs)
                rows.append((name, batch, f"{kf_us:,.0f}", f"{ort_us:,.0f}", f"{kf_us / ort_us:.1f}x",
                             f"{batch * 1e6 / ort_us:,.0f}"))
    rt.close()
    print()
    print_table(["model", "batch", "kernelflow µs/call", "onnxruntime µs/call", "kernelflow / onnxruntime",
                 "onnxruntime rows/s"], rows)


if __name__ == "__main__":
    main()
