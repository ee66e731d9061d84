"""TrainingMonitor costs (issue #5): training throughput with a live monitor vs without, and the
widget's Python time per redraw at 2,000 points per series.

1. Throughput: the digits MLP trained as a job on a real `kernelflow serve` subprocess (the
   notebook is a thin client), logging every step so the monitor redraws at its 10/s cap;
   rounds with and without a monitor alternate; steps/s from the job's own elapsed time.
   Target: >= 0.97x.
2. Redraw: a monitor on 4 series (loss, val_loss, accuracy, val_accuracy) of 1,000,000 points
   each, 50 new records per series per redraw, every comm message built and serialised (a
   counting comm stands in for the kernel's). Target: < 5 ms per redraw.
3. Images: one new image record drawn by the images panel (PNG encoding with Pillow and the
   Image widgets' messages), 16 images of 8x8 grey and of 64x64 RGB.

    .venv/bin/python bench/monitor.py [--rounds 3] [--steps 3000]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

import comm
import numpy as np
from comm.base_comm import BaseComm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from kernelflow.widgets import TrainingMonitor  # noqa: E402


class CountingComm(BaseComm):
    """A comm that takes every message the widgets would send to a front end, and counts it."""

    sent_msgs = 0
    sent_bytes = 0

    def __init__(self, *args, **kwargs):
        self.kernel = object()  # ipywidgets only sends when a comm has a kernel
        super().__init__(*args, **kwargs)

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        CountingComm.sent_msgs += 1
        CountingComm.sent_bytes += sum(memoryview(b).nbytes for b in buffers or ())


class SyntheticJob:
    """What the monitor uses of a `Job`, fed by hand."""

    def __init__(self) -> None:
        self.id = "bench"
        self.last_status = {"id": "bench", "name": "bench", "status": "running", "step": 0, "total_steps": None}
        self.callbacks: list = []

    def subscribe(self, cb) -> None:
        self.callbacks.append(cb)

    def unsubscribe(self, cb=None) -> None:
        self.callbacks.remove(cb)

    def refresh(self) -> dict:
        return self.last_status

    def push(self, start: int, n: int, rng: np.random.Generator) -> None:
        recs = [{"kind": "scalars", "step": s, "epoch": 0, "wall_time": 1e9 + s * 1e-3,
                 "values": {"loss": float(v), "val_loss": float(v) + 0.1, "accuracy": 1 - float(v),
                            "val_accuracy": 0.9 - float(v)}}
                for s, v in zip(range(start, start + n), rng.random(n))]
        for cb in self.callbacks:
            cb(recs)


def bench_redraw(history: int, per_redraw: int, redraws: int) -> tuple[float, int, float]:
    comm.create_comm = CountingComm
    rng = np.random.default_rng(0)
    job = SyntheticJob()
    mon = TrainingMonitor(job, live=False)
    step = 0
    while step < history:  # the history, in big batches (not timed)
        n = min(100_000, history - step)
        job.push(step, n, rng)
        mon.flush()
        step += n
    times = []
    CountingComm.sent_msgs = CountingComm.sent_bytes = 0
    for _ in range(redraws):
        job.push(step, per_redraw, rng)
        step += per_redraw
        t0 = time.perf_counter()
        mon.flush()
        times.append(time.perf_counter() - t0)
    points = max(len(m.x) for c in mon.charts.values() for m in c.smooth_marks)
    mon.close()
    return statistics.median(times) * 1e3, points, CountingComm.sent_bytes / redraws / 1e3


def bench_images(shape: tuple[int, ...], draws: int = 50) -> tuple[float, float]:
    from kernelflow.widgets.images import ImagePanel

    comm.create_comm = CountingComm
    rng = np.random.default_rng(0)
    panel = ImagePanel()
    times = []
    CountingComm.sent_bytes = 0
    for step in range(draws):
        panel.add("x", step, rng.integers(0, 256, shape, dtype=np.uint8))
        t0 = time.perf_counter()
        panel.redraw()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, CountingComm.sent_bytes / draws / 1e3


def bench_throughput(rounds: int, steps: int) -> tuple[list[float], list[float], list[float], list[int]]:
    from tests.support.models import digits, mlp
    from tests.support.server import ServerProcess

    comm.create_comm = CountingComm
    with tempfile.TemporaryDirectory() as d:
        srv = ServerProcess(pathlib.Path(d)).wait_listening()
        try:
            rt = srv.connect()
            train, _ = digits(rt, "digits")
            plain, subscribed, monitored, draws = [], [], [], []
            for r in range(3 * rounds + 1):
                kind = ("plain", "subscribed", "monitored")[r % 3]
                with_monitor = kind == "monitored"
                m = mlp(rt, f"bench{r}")
                job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, batch_size=64, steps=steps,
                              metrics={"loss": m.loss, "accuracy": m.acc}, log_every=1,
                              checkpoint_every_s=None, name=f"round{r}")
                mon = TrainingMonitor(job) if with_monitor else None
                noop = (lambda recs: None)
                if kind == "subscribed":
                    job.subscribe(noop)
                job.wait(timeout=600)
                st = job.refresh()
                rate = st["step"] / st["elapsed_s"]
                if mon is not None:
                    draws.append(mon.redraws)
                    mon.close()
                if r == 0:
                    continue  # warm-up
                if kind == "subscribed":
                    job.unsubscribe(noop)
                {"plain": plain, "subscribed": subscribed, "monitored": monitored}[kind].append(rate)
            rt.close()
        finally:
            srv.stop()
    return plain, subscribed, monitored, draws


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()
    for history in (2_000, 1_000_000):
        ms, pts, kb = bench_redraw(history, 50, 50)
        print(f"redraw, 4 series x {history:>9,} points ({pts} on screen each), 50 new per series: "
              f"{ms:.2f} ms median, {kb:.0f} kB sent per redraw")
    for shape in ((16, 8, 8, 1), (16, 64, 64, 3)):
        ms, kb = bench_images(shape)
        print(f"images panel, a new record of {shape[0]} x {shape[1]}x{shape[2]}x{shape[3]}: {ms:.2f} ms median, "
              f"{kb:.0f} kB sent")
    plain, subscribed, monitored, draws = bench_throughput(args.rounds, args.steps)
    p, m = statistics.median(plain), statistics.median(monitored)
    print(f"throughput without monitor: {p:,.0f} steps/s  {[round(x) for x in plain]}")
    print(f"throughput, subscribed with a no-op callback: {statistics.median(subscribed):,.0f} steps/s  "
          f"{[round(x) for x in subscribed]}")
    print(f"throughput with monitor:    {m:,.0f} steps/s  {[round(x) for x in monitored]}  "
          f"(redraws per run: {draws})")
    print(f"ratio: {m / p:.3f}x (target >= 0.97x)")


if __name__ == "__main__":
    main()
