"""Control-flow benchmark (issue #13): while_loop overhead, LSTM forward+backward, beam search in one run.

Three parts, one table each:

(a) Per-iteration overhead of a trivial ``while_loop`` (``i < n: i + 1``) with n = 20000 fed per
    run: kernelflow in-process beside TF1's ``tf.compat.v1.while_loop`` in a Session.
    Target: < 15 us per iteration and below TF1.
(b) LSTM forward+backward step, batch 32, 128 inputs and units, 50 steps, float32 (loss
    ``sum(outputs * c)``, gradients w.r.t. the inputs and the three weights): kf.nn.LSTM (one
    fused ``lstm_sequence`` op and its BPTT gradient, in-process) beside TF1's ``dynamic_rnn``
    with ``LSTMCell`` in a Session and PyTorch's ``nn.LSTM`` (autograd over oneDNN's fused RNN
    kernels). Targets: ahead of TF1, within 1.2x of PyTorch.
(c) Beam search (width 5, 30 steps, batch 8, vocab 1000, a 128-unit tanh RNN step) through a
    ``kernelflow serve`` on loopback: ``kf.nn.beam_search`` as one ``g.run`` beside a Python
    loop doing the search in numpy with one ``g.run`` of the step per time step (30 round
    trips). Reported: the speed-up.

Contenders are timed in interleaved rounds (bench/_common.py); medians, because the machine
is small and shared. glibc's malloc is tuned as ``kernelflow serve`` tunes it (for every
contender; ``--malloc-default`` leaves it). Usage:
``python bench/control_flow.py [--quick] [--rounds N] [--part a,b,c] [--malloc-default]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from _common import (  # noqa: E402
    Contender,
    machine_facts,
    median,
    print_facts,
    print_table,
    run_interleaved,
    tune_malloc,
)

# One BLAS/compute thread for every contender: on a small shared machine, multi-threaded BLAS on
# (32, 128) @ (128, 512) spends more time waking threads than multiplying (36 ms instead of 0.1 ms).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TF1's LSTMCell needs tf_keras under Keras-3 TensorFlow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import kernelflow as kf  # noqa: E402

N_ITERS = 20_000
B, T, F, U = 32, 50, 128, 128
BEAM_B, BEAM_K, BEAM_T, VOCAB, HID = 8, 5, 30, 1000, 128
TOKEN = "bench-cf"


def _tf1():
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    return tf, tf.compat.v1


def _one_thread(tf1):
    return tf1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)


# --------------------------------------------------------------------------- (a) while_loop
def while_contenders() -> list[Contender]:
    rt = kf.connect("inproc")
    g = rt.graph("while")
    n = g.placeholder((), "int64", name="n")
    i = kf.while_loop(lambda i: i < n, lambda i: i + 1, [g.constant(0, dtype="int64")])[0]
    kf_run = g.make_callable(i, [n])
    assert int(kf_run(N_ITERS)) == N_ITERS

    tf, tf1 = _tf1()
    graph = tf.Graph()
    with graph.as_default():
        tn = tf1.placeholder(tf.int64, ())
        ti = tf1.while_loop(lambda i: i < tn, lambda i: i + 1, [tf.constant(0, tf.int64)])
    sess = tf1.Session(graph=graph, config=_one_thread(tf1))
    assert int(sess.run(ti, {tn: N_ITERS})) == N_ITERS
    return [Contender("kernelflow in-process", lambda: kf_run(N_ITERS)),
            Contender("TF1 tf.while_loop, Session", lambda: sess.run(ti, {tn: N_ITERS}))]


# --------------------------------------------------------------------------- (b) LSTM
def lstm_contenders() -> list[Contender]:
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((B, T, F)).astype("float32")
    cv = rng.standard_normal((B, T, U)).astype("float32")
    out = []

    rt = kf.connect("inproc")
    g = rt.graph("lstm")
    x = g.placeholder((B, T, F), "float32", name="x")
    layer = kf.nn.LSTM(U, return_sequences=True, seed=0)
    y = layer(x)
    loss = kf.sum(y * g.constant(cv))
    grads = kf.gradients(loss, [x] + layer.weights)
    kf_step = g.make_callable(grads, [x])
    kf_step(xv)
    comp = rt._transport.service.compiler  # bench only: the compiled LSTM loops are ready before timing
    if comp is not None:
        comp.wait_idle()
    out.append(Contender("kf.nn.LSTM (fused lstm_sequence), in-process", lambda: kf_step(xv)))

    tf, tf1 = _tf1()
    graph = tf.Graph()
    with graph.as_default():
        tx = tf1.placeholder(tf.float32, (B, T, F))
        cell = tf1.nn.rnn_cell.LSTMCell(U)
        ty, _ = tf1.nn.dynamic_rnn(cell, tx, dtype=tf.float32)
        tloss = tf.reduce_sum(ty * tf.constant(cv))
        tgrads = tf1.gradients(tloss, [tx] + tf1.trainable_variables())
        init = tf1.global_variables_initializer()
    sess = tf1.Session(graph=graph, config=_one_thread(tf1))
    sess.run(init)
    sess.run(tgrads, {tx: xv})
    out.append(Contender("TF1 dynamic_rnn(LSTMCell), Session", lambda: sess.run(tgrads, {tx: xv})))

    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(F, U, batch_first=True)
    txv = torch.tensor(xv, requires_grad=True)
    tcv = torch.tensor(cv)

    def torch_step():
        lstm.zero_grad()
        txv.grad = None
        yv, _ = lstm(txv)
        (yv * tcv).sum().backward()
        return txv.grad

    torch_step()
    out.append(Contender(f"PyTorch nn.LSTM ({torch.get_num_threads()} threads)", torch_step))
    return out


# --------------------------------------------------------------------------- (c) beam search over TCP
def _start_server() -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "kernelflow", "serve", "--port", "0", "--token", TOKEN],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"listening on (kf://127\.0\.0\.1:\d+)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("kernelflow serve did not start")


def _beam_weights() -> dict:
    rng = np.random.default_rng(1)
    w = {"A": (rng.standard_normal((HID, HID)) * 0.1).astype("float32"),
         "E": rng.standard_normal((VOCAB, HID)).astype("float32"),
         "W": rng.standard_normal((HID, VOCAB)).astype("float32"),
         "h0": rng.standard_normal((BEAM_B, HID)).astype("float32")}
    w["b"] = np.zeros(VOCAB, "float32")
    w["b"][1] = -1e4  # the end token never wins: all 30 steps run
    return w


def beam_contenders(url: str) -> list[Contender]:
    w = _beam_weights()
    rt = kf.connect(url, token=TOKEN, timeout=120)
    g = rt.graph("beam")
    A, Em, W, bias = (g.constant(w[k]) for k in ("A", "E", "W", "b"))

    def step(tokens, h, t):
        h = kf.tanh(h @ A + kf.gather(Em, tokens))
        return h @ W + bias, h

    start = g.placeholder((None,), "int32", name="start")
    h0 = g.placeholder((None, HID), "float32", name="h0")
    ids, scores, _ = kf.nn.beam_search(step, h0, start, 1, BEAM_K, BEAM_T)
    one_run = g.make_callable([ids, scores], [start, h0])
    start_v = np.zeros(BEAM_B, "int32")

    tok = g.placeholder((None,), "int32", name="tok")
    hs = g.placeholder((None, HID), "float32", name="hs")
    lp, h_next = step(tok, hs, None)
    lp = kf.log_softmax(lp)
    step_run = g.make_callable([lp, h_next], [tok, hs])

    def python_loop():
        k = BEAM_K
        h = np.repeat(w["h0"], k, axis=0)
        tokens = np.zeros(BEAM_B * k, "int32")
        logp = np.tile(np.r_[0.0, np.full(k - 1, -1e30)], (BEAM_B, 1))
        ids_l, parents = [], []
        for _ in range(BEAM_T):
            step_lp, h = step_run(tokens, h)
            total = (logp[:, :, None] + step_lp.reshape(BEAM_B, k, VOCAB)).reshape(BEAM_B, -1)
            top = np.argpartition(-total, k - 1, axis=1)[:, :k]  # the loop's best case: O(n), then sort k
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(total, top, 1), axis=1, kind="stable"), 1)
            logp = np.take_along_axis(total, top, 1)
            beam, word = top // VOCAB, top % VOCAB
            h = h[(beam + np.arange(BEAM_B)[:, None] * k).reshape(-1)]
            tokens = word.reshape(-1).astype("int32")
            ids_l.append(word)
            parents.append(beam)
        return ids_l, parents, logp

    got = one_run(start_v, w["h0"])
    _, _, logp = python_loop()
    np.testing.assert_allclose(got[1], logp, rtol=1e-4)  # both searches find the same beams
    return [Contender("beam_search: one g.run (TCP)", lambda: one_run(start_v, w["h0"])),
            Contender("Python loop of g.run per step (TCP)", python_loop)], rt


def _table(title: str, contenders: list[Contender], unit: str, per: float, ref: int) -> None:
    print(f"\n### {title}\n")
    base = median(contenders[ref].rates)
    rows = []
    for c in contenders:
        r = median(c.rates)
        rows.append((c.name, f"{per / r * 1e6:,.1f} {unit}", f"{r / base:.2f}x"))
    print_table(("implementation", "median", f"speed vs {contenders[ref].name}"), rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 9, 3 with --quick)")
    p.add_argument("--part", default="a,b,c", help="which parts to run, comma-separated (default a,b,c)")
    p.add_argument("--malloc-default", action="store_true",
                   help="leave glibc's malloc as is (default: tuned as `kernelflow serve` tunes it, for every "
                        "contender alike, so the LSTM's MB-sized per-step arrays reuse freed heap, not fresh pages)")
    args = p.parse_args(argv)
    if not args.malloc_default:
        tune_malloc()
    rounds = args.rounds or (3 if args.quick else 9)
    parts = set(args.part.split(","))
    print_facts(machine_facts())
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731

    if "a" in parts:
        part_a(rounds, log)
    if "b" in parts:
        part_b(rounds, log)
    if "c" in parts:
        part_c(rounds, log)
    return 0


def part_a(rounds: int, log: Any) -> None:
    """(a) the trivial while_loop beside TF1."""
    wc = while_contenders()
    run_interleaved(wc, rounds=rounds, block_s=0.5, log=log)
    _table(f"(a) trivial while_loop, {N_ITERS} iterations per run: time per iteration", wc, "us", 1 / N_ITERS, 1)
    us = 1e6 / N_ITERS / median(wc[0].rates)
    print(f"\ntarget < 15 us/iteration and below TF1: {us:.1f} us -> "
          f"{'met' if us < 15 and median(wc[0].rates) > median(wc[1].rates) else 'MISSED'}")


def part_b(rounds: int, log: Any) -> None:
    """(b) the LSTM forward+backward beside TF1 and PyTorch."""
    lc = lstm_contenders()
    run_interleaved(lc, rounds=rounds, block_s=1.0, log=log)
    _table(f"(b) LSTM forward+backward, batch {B}, {U} units, {T} steps: time per step", lc, "ms", 1e-3, 2)
    kf_r, tf_r, pt_r = (median(c.rates) for c in lc)
    print(f"\ntargets: ahead of TF1 ({kf_r / tf_r:.2f}x -> {'met' if kf_r > tf_r else 'MISSED'}), within 1.2x of "
          f"PyTorch ({pt_r / kf_r:.2f}x slower -> {'met' if pt_r / kf_r <= 1.2 else 'MISSED'})")


def part_c(rounds: int, log: Any) -> None:
    """(c) beam search as one g.run beside a Python loop of g.run, over TCP."""
    proc, url = _start_server()
    try:
        bc, rt = beam_contenders(url)
        run_interleaved(bc, rounds=rounds, block_s=1.0, log=log)
        _table(f"(c) beam search, width {BEAM_K}, {BEAM_T} steps, batch {BEAM_B}, vocab {VOCAB}, over TCP: time "
               "per search", bc, "ms", 1e-3, 1)
        print(f"\nspeed-up of one g.run over the Python loop: {median(bc[0].rates) / median(bc[1].rates):.1f}x")
        rt.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
