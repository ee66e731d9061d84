"""Training-job benchmark (issue #4): the MLP of bench/train_mlp.py trained three ways.

(a) ``client loop``: a Python loop in this process feeding every batch to a ``kernelflow
    serve`` subprocess over TCP (``g.make_callable([train, loss], feed_list=[x, y])``);
(b) ``server job``: ``g.fit`` on a dataset resident in that server, no metrics fetched
    (``log_every=0``), and (b') the same job fetching the loss every 10 steps;
(b'') the same logging job with a live `TrainingMonitor` attached in this process (its comm
    messages are built and counted by bench/monitor.py's CountingComm instead of a kernel);
(c) ``numpy loop``: bench/train_mlp.py's hand-written numpy step, in this process.

Batches are shuffled rows of one synthetic dataset (8192 examples; train_mlp's teacher
labels). The contenders run interleaved in rounds of about ``--block-s`` seconds each; a job
round is one ``g.fit`` of as many steps as fill the block, and its rate is steps over the
job's own running time (``elapsed_s``, measured by the server from its first step to its
last); the order of the contenders alternates between rounds. The table gives the median
steps/s over the rounds and the ratios the issue sets targets for: job >= 1.5x client loop
at batch 32, job >= 0.9x numpy at batch 256, logging every 10 steps costing <= 3% of the
job's throughput, and a monitor attached and updating keeping >= 0.97x of the throughput of
the same job without one (paired by round: the two run next to each other in every round).

Usage:
    python bench/jobs.py                      # batch 32 and 256
    python bench/jobs.py --batch 32 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_facts, median, print_facts, print_table  # noqa: E402
from rpc import Child  # noqa: E402
from train_mlp import SIZES, NumpyMLP, build_kf_graph, make_batches, make_weights  # noqa: E402

TOKEN = "bench-jobs-token"
N_EXAMPLES = 8192
TARGET_JOB_VS_CLIENT_32 = 1.5
TARGET_JOB_VS_NUMPY_256 = 0.9
TARGET_LOG_COST = 0.03
TARGET_MONITOR = 0.97
LOGGED = "server job, loss every 10"
MONITORED = "server job, loss every 10, monitor"


def build_graph(rt: Any, name: str, weights: list) -> dict[str, Any]:
    """train_mlp's kernelflow MLP on ``rt``, synced to the runtime."""
    m = build_kf_graph(rt, name, weights)
    m["g"].sync()
    return m


class Loop:
    """A contender run as a Python loop over pre-cut shuffled batches: ``run(n)`` times n steps."""

    def __init__(self, name: str, step: Any, batches: list[tuple[np.ndarray, np.ndarray]]):
        self.name, self.step, self.batches = name, step, batches
        self.rates: list[float] = []

    def run(self, n: int) -> float:
        bs, k = self.batches, len(self.batches)
        t0 = time.perf_counter()
        for i in range(n):
            xb, yb = bs[i % k]
            self.step(xb, yb)
        return n / (time.perf_counter() - t0)


SERVER_PID: list[int] = []  # the server subprocess, for its CPU time


def server_cpu_s() -> float:
    """User + system CPU seconds of the server subprocess so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{SERVER_PID[0]}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class JobRunner:
    """A contender run as server-side jobs: ``run(n)`` is one ``g.fit`` of n steps."""

    def __init__(self, name: str, m: dict[str, Any], ds: Any, batch: int, log_every: int, monitor: bool = False):
        self.name, self.m, self.ds, self.batch, self.log_every = name, m, ds, batch, log_every
        self.monitor = monitor
        self.rates: list[float] = []
        self.redraws: list[int] = []
        self.cpu: list[tuple[float, float]] = []  # (server, this process) CPU seconds per step

    def run(self, n: int) -> float:
        m = self.m
        cpu0, here0 = server_cpu_s(), time.process_time()
        job = m["g"].fit(m["train"], data=self.ds, feed={m["x"]: "x", m["y"]: "y"}, batch_size=self.batch, steps=n,
                         metrics={"loss": m["loss"]} if self.log_every else None, log_every=self.log_every,
                         checkpoint_every_s=None)
        mon = None
        if self.monitor:
            import comm
            from monitor import CountingComm  # bench/monitor.py: a comm that counts instead of sending

            from kernelflow.widgets import TrainingMonitor

            comm.create_comm = CountingComm
            mon = TrainingMonitor(job)  # subscribes; its render thread redraws at most 10 times a second
            here0 = time.process_time()  # the widgets' construction is not a per-step cost
        status = job.wait(timeout=600)
        if mon is not None:
            self.redraws.append(mon.redraws)
            mon.close()
        self.cpu.append(((server_cpu_s() - cpu0) / n, (time.process_time() - here0) / n))
        if status != "completed":
            raise RuntimeError(f"{self.name}: job ended {status}: {job.error}")
        st = job.refresh()
        logged = -(-n // self.log_every) if self.log_every else 0  # every log_every-th step and the last
        if self.log_every and len(job.history["loss"]["step"]) != logged:
            raise RuntimeError(f"{self.name}: expected {logged} logged losses")
        return st["step"] / st["elapsed_s"]


def bench_batch(batch: int, rt: Any, ds: Any, data: tuple[np.ndarray, np.ndarray], args: argparse.Namespace) -> dict:
    weights = make_weights()
    X, Y = data
    rng = np.random.default_rng(1)
    order = rng.permutation(len(X))
    batches = [(X[order[i:i + batch]], Y[order[i:i + batch]]) for i in range(0, len(X) - batch + 1, batch)]
    client = build_graph(rt, f"client-{batch}", weights)
    client_step = client["g"].make_callable([client["train"], client["loss"]], feed_list=[client["x"], client["y"]])
    contenders: list[Any] = [
        Loop("client loop (TCP feed)", client_step, batches),
        JobRunner("server job", build_graph(rt, f"job-{batch}", weights), ds, batch, 0),
        JobRunner(LOGGED, build_graph(rt, f"joblog-{batch}", weights), ds, batch, 10),
        JobRunner(MONITORED, build_graph(rt, f"jobmon-{batch}", weights), ds, batch, 10, monitor=True),
        Loop("numpy loop", NumpyMLP(weights).step, batches),
    ]
    # Warm-up, which also sizes each contender's block to about block_s seconds.
    sizes = {}
    for c in contenders:
        n = 20
        rate = c.run(n)
        n = max(20, int(rate * 0.5))
        rate = c.run(n)
        sizes[c.name] = max(20, int(rate * args.block_s) // 10 * 10)
        print(f"  warm-up batch {batch} {c.name}: {rate:,.1f} steps/s, block of {sizes[c.name]}", flush=True)
    for r in range(args.rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:  # alternate the order: no contender always first
            time.sleep(args.gap_s)
            c.rates.append(c.run(sizes[c.name]))
        print(f"  round {r + 1}/{args.rounds}: " + "  ".join(f"{c.name} {c.rates[-1]:,.1f}" for c in contenders),
              flush=True)
    mon = next(c for c in contenders if c.name == MONITORED)
    print(f"  monitor redraws per job round: {mon.redraws}", flush=True)
    out: dict[str, Any] = {c.name: c.rates for c in contenders}
    out["cpu"] = {c.name: c.cpu for c in contenders if isinstance(c, JobRunner)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block-s", type=float, default=1.0)
    p.add_argument("--gap-s", type=float, default=0.2)
    args = p.parse_args(argv)

    import kernelflow as kf

    t_start = time.time()
    logdir = Path(tempfile.mkdtemp(prefix="kf-bench-jobs-"))
    server = Child("kf-server", [sys.executable, "-m", "kernelflow", "serve", "--port", "0", "--token", TOKEN],
                   logdir, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(logdir / "runtime")})
    try:
        url = server.ready(r"listening on (kf://127\.0\.0\.1:\d+)").group(1)
        SERVER_PID.append(server.proc.pid)
        rt = kf.connect(url, token=TOKEN, timeout=600)
        pieces = make_batches(N_EXAMPLES // 8, n_batches=8)
        X = np.concatenate([b[0] for b in pieces])
        Y = np.concatenate([b[1] for b in pieces])
        ds = rt.dataset("bench", {"x": X, "y": Y})
        results = {b: bench_batch(b, rt, ds, (X, Y), args) for b in args.batch}
        rt.close()
    finally:
        server.stop()

    print(f"\n## Training jobs: client loop over TCP vs server-side job vs numpy  ({time.time() - t_start:.0f} s)\n")
    print_facts(machine_facts())
    print(f"\nMLP {'-'.join(map(str, SIZES))}, Adam, float32; {N_EXAMPLES} examples resident on the server; "
          f"median and best of {args.rounds} rounds of ~{args.block_s:g} s.\n")
    rows = []
    verdicts = []
    for b, res in results.items():
        cpu = res.pop("cpu")
        med = {k: median(v) for k, v in res.items()}
        best = {k: max(v) for k, v in res.items()}
        client, numpy = "client loop (TCP feed)", "numpy loop"
        for k in res:
            rows.append([b, k, f"{med[k]:,.1f}", f"{best[k]:,.1f}",
                         f"{med[k] / med[client]:.2f}x / {best[k] / best[client]:.2f}x",
                         f"{med[k] / med[numpy]:.2f}x / {best[k] / best[numpy]:.2f}x"])

        def ratio(a: str, c: str, med: dict = med, best: dict = best) -> str:
            return f"{med[a] / med[c]:.2f}x (best {best[a] / best[c]:.2f}x)"

        if b == 32:
            ok = med["server job"] / med["client loop (TCP feed)"] >= TARGET_JOB_VS_CLIENT_32
            verdicts.append(f"batch 32: job / client loop = {ratio('server job', 'client loop (TCP feed)')}, target "
                            f">= {TARGET_JOB_VS_CLIENT_32}x: {'met' if ok else 'MISSED'}")
        if b == 256:
            ok = med["server job"] / med["numpy loop"] >= TARGET_JOB_VS_NUMPY_256
            verdicts.append(f"batch 256: job / numpy = {ratio('server job', 'numpy loop')}, target >= "
                            f"{TARGET_JOB_VS_NUMPY_256}x: {'met' if ok else 'MISSED'}")
        # Paired per round too: the logging cost varies less within a round than across rounds.
        paired = statistics.median(1 - a / j for a, j in zip(res[LOGGED], res["server job"]))
        cost = 1 - med[LOGGED] / med["server job"]
        cost_best = 1 - best[LOGGED] / best["server job"]
        ok = paired <= TARGET_LOG_COST
        verdicts.append(f"batch {b}: logging every 10 steps costs {paired:.1%} paired by round ({cost:.1%} of medians, "
                        f"{cost_best:.1%} of bests), target <= {TARGET_LOG_COST:.0%}: {'met' if ok else 'MISSED'}")
        mon_paired = statistics.median(a / j for a, j in zip(res[MONITORED], res[LOGGED]))
        ok = mon_paired >= TARGET_MONITOR
        verdicts.append(f"batch {b}: with a monitor attached and updating / without = {mon_paired:.3f}x paired by "
                        f"round ({med[MONITORED] / med[LOGGED]:.3f}x of medians, "
                        f"{best[MONITORED] / best[LOGGED]:.3f}x of bests), target >= {TARGET_MONITOR}x: "
                        f"{'met' if ok else 'MISSED'}")
        # CPU per step is steadier than throughput on a shared machine: what the monitor adds
        srv = {k: statistics.median(c[0] for c in v) * 1e6 for k, v in cpu.items()}
        here = {k: statistics.median(c[1] for c in v) * 1e6 for k, v in cpu.items()}
        extra = srv[MONITORED] - srv[LOGGED] + here[MONITORED] - here[LOGGED]
        verdicts.append(f"batch {b}: CPU per step, median: server {srv[LOGGED]:,.0f} µs without a monitor, "
                        f"{srv[MONITORED]:,.0f} µs with; client process {here[LOGGED]:,.1f} µs without, "
                        f"{here[MONITORED]:,.1f} µs with (the monitor adds {extra:+,.1f} µs per step, "
                        f"{extra / srv[LOGGED]:+.1%} of the job's server CPU)")
    print_table(["batch", "contender", "steps/s (median)", "steps/s (best)", "vs client loop (median / best)",
                 "vs numpy (median / best)"], rows, "rlrrrr")
    print()
    for v in verdicts:
        print(f"- {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
