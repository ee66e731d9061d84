"""Distributed training benchmark (issue #18): data-parallel step time and scaling efficiency,
the compute / all-reduce split of a step, and the all-reduce itself against MPI's own figures.

Part 1 (``train``): the MLP of bench/train_mlp.py (784-512-512-10, Adam, global batch 256) and a
small CNN (conv 3x3x16 - maxpool - conv 3x3x32 - maxpool - dense 10 on 28x28x1, global batch
64) trained as server jobs for ``--steps`` steps in three set-ups with the same global batch:
one process with 2 BLAS threads (``kernelflow serve``), one process with 1 thread, and two
ranks with 1 thread each (``mpiexec -n 2 kernelflow serve --distributed``, ``replicas="all"``).
Each set-up runs ``--rounds`` jobs; the table gives median steps/s, the 2-rank speedup over one
1-thread process and the scaling efficiency (speedup / 2), and, from the job's records, each
rank's median step time and the share of it spent in the gradient all-reduce.

Part 2 (``allreduce``, run by itself under ``mpiexec -n 2``): median time of one all-reduce
through the watchdog communicator and through plain blocking ``MPI.Allreduce``, from 4 B to
64 MiB (algorithm bandwidth = bytes / time); the MLP's and a many-small-tensors gradient list
reduced with fusion off (one collective per tensor) and on (16 MiB buckets); and MPI's own
ping-pong (``python -m mpi4py.bench pingpong``) for the latency and bandwidth of the machine.

Part 3 (``overlap``): 2 ranks x 1 thread, the same jobs with the fusion threshold at 16 MiB
(one bucket for both models: the all-reduce follows the backward pass) and smaller
(``--fusion``: several buckets, whose all-reduces start during the backward pass); median
steps/s, the exposed all-reduce share of a step, and the share of buckets started before the
backward pass made its last gradient, with the speed-up over the one-bucket run.

Usage:
    python bench/distributed.py                 # parts 1, 2 and the projection
    python bench/distributed.py --part train --steps 200 --rounds 3
    python bench/distributed.py --part allreduce
    python bench/distributed.py --part overlap --steps 200 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
from _common import machine_facts, median, print_facts, print_table  # noqa: E402

MPIEXEC = Path(sys.executable).parent / "mpiexec"
TOKEN = "bench-token"


# --------------------------------------------------------------------------- part 1: training
def _env(threads: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    return env


def _start(ranks: int, threads: int, tmp: Path, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    serve = [sys.executable, "-m", "kernelflow", "serve", "--port", "0", "--http-port", "-1", "--token", TOKEN]
    if ranks:
        cmd = [str(MPIEXEC), "-disable-auto-cleanup", "-n", str(ranks), *serve, "--distributed", *extra]
    else:
        cmd = serve
    env = {**_env(threads), "JUPYTER_RUNTIME_DIR": str(tmp)}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    deadline = time.monotonic() + 60
    assert p.stdout is not None
    for line in p.stdout:
        m = re.search(r"listening on (kf://\S+)", line)
        if m:
            return p, m.group(1)
        if time.monotonic() > deadline:
            break
    p.terminate()
    raise RuntimeError("server did not start")


@contextmanager
def _runtime(ranks: int, threads: int, tmp: Path, extra: tuple[str, ...] = ()) -> Iterator[Any]:
    """A client of a fresh `_start` world; the world is terminated on exit."""
    import kernelflow as kf

    p, url = _start(ranks, threads, tmp, extra)
    try:
        rt = kf.connect(url, token=TOKEN, timeout=600)
        yield rt
        rt.close()
    finally:
        p.terminate()
        p.wait(timeout=60)


def _mlp(rt: Any, name: str) -> tuple[Any, dict, Any]:
    from train_mlp import build_kf_graph, make_weights

    m = build_kf_graph(rt, name, make_weights())
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8192, 784), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((784, 10), dtype=np.float32), axis=1).astype(np.int64)
    ds = rt.dataset(f"{name}-data", {"x": x, "y": y})
    return m, {m["x"]: "x", m["y"]: "y"}, ds


def _cnn(rt: Any, name: str) -> tuple[Any, dict, Any]:
    import kernelflow as kf

    g = rt.graph(name)
    rng = np.random.default_rng(1)
    x = g.placeholder((None, 28, 28, 1), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    f1 = g.variable((rng.standard_normal((3, 3, 1, 16)) * 0.3).astype("float32"), name="f1")
    f2 = g.variable((rng.standard_normal((3, 3, 16, 32)) * 0.1).astype("float32"), name="f2")
    w = g.variable((rng.standard_normal((5 * 5 * 32, 10)) * 0.05).astype("float32"), name="w")
    b = g.variable(np.zeros(10, "float32"), name="b")
    h = kf.max_pool2d(kf.relu(kf.conv2d(x, f1)), 2)
    h = kf.max_pool2d(kf.relu(kf.conv2d(h, f2)), 2)
    logits = kf.flatten(h) @ w + b
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    train = kf.optim.Adam(lr=1e-3).minimize(loss)
    xs = rng.standard_normal((4096, 28, 28, 1), dtype=np.float32)
    ys = rng.integers(0, 10, 4096).astype(np.int64)
    ds = rt.dataset(f"{name}-data", {"x": xs, "y": ys})
    return {"g": g, "train": train, "loss": loss}, {x: "x", y: "y"}, ds


MODELS = {"mlp": (_mlp, 256), "cnn": (_cnn, 64)}


def _job(rt: Any, model: str, steps: int, replicas: str | None, k: int) -> dict:
    build, batch = MODELS[model]
    m, feed, ds = _mlp(rt, f"{model}{k}") if model == "mlp" else build(rt, f"{model}{k}")
    kw: dict[str, Any] = {"data": ds, "feed": feed, "batch_size": batch, "steps": steps,
                          "metrics": {"loss": m["loss"]}, "log_every": 10, "checkpoint_every_s": None}
    if replicas:
        kw["replicas"] = replicas
    job = m["g"].fit(m["train"], **kw)
    job.wait(timeout=1800)
    st = job.refresh()
    recs = rt.call("job.records", [job.id, 0])["records"]
    world = [r["values"] for r in recs if r["kind"] == "scalars" and any(k.startswith("world/") for k in r["values"])]
    return {"steps_per_s": steps / st["elapsed_s"], "world": world}


def bench_train(args: argparse.Namespace) -> dict:

    setups = [("1 process, 2 threads", 0, 2, None), ("1 process, 1 thread", 0, 1, None),
              ("2 ranks x 1 thread", 2, 1, "all")]
    out: dict[str, dict] = {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"kf-bench-dist-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for label, ranks, threads, replicas in setups:
        with _runtime(ranks, threads, tmp) as rt:
            for model in args.models:
                runs = [_job(rt, model, args.steps, replicas, k) for k in range(args.rounds)]
                out.setdefault(model, {})[label] = runs
                print(f"  {model} / {label}: {[round(r['steps_per_s'], 1) for r in runs]} steps/s", flush=True)
    return out


def report_train(res: dict) -> None:
    print("\n### Data-parallel training, global batch the same in every set-up (median steps/s)\n")
    rows = []
    for model, by in res.items():
        rate = {k: median([r["steps_per_s"] for r in v]) for k, v in by.items()}
        one, two_thr, ranks = rate["1 process, 1 thread"], rate["1 process, 2 threads"], rate["2 ranks x 1 thread"]
        rows.append([model, f"{two_thr:.1f}", f"{one:.1f}", f"{ranks:.1f}", f"{ranks / one:.2f}x",
                     f"{ranks / one / 2:.0%}", f"{ranks / two_thr:.2f}x"])
    print_table(["model", "1 proc 2 thr", "1 proc 1 thr", "2 ranks x 1 thr", "speedup vs 1 thr",
                 "scaling eff.", "vs 1 proc 2 thr"], rows)
    print("\n### Where a data-parallel step goes (2 ranks; medians over logged steps)\n")
    rows = []
    for model, by in res.items():
        recs = [w for r in by["2 ranks x 1 thread"] for w in r["world"]]
        for rank in (0, 1):
            ms = median([w[f"world/rank{rank}_step_ms"] for w in recs])
            share = median([w[f"world/rank{rank}_comm_share"] for w in recs])
            rows.append([model, rank, f"{ms:.2f}", f"{ms * (1 - share):.2f}", f"{ms * share:.2f}", f"{share:.0%}"])
    print_table(["model", "rank", "step ms", "compute ms", "all-reduce ms", "comm share"], rows)


# --------------------------------------------------------------------------- part 3: overlap
def bench_overlap(args: argparse.Namespace) -> dict:

    out: dict[str, dict] = {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"kf-bench-overlap-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for fb in [16 << 20, *[f for f in args.fusion if f != 16 << 20]]:
        with _runtime(2, 1, tmp, ("--fusion-bytes", str(fb))) as rt:
            for model in args.models:
                _job(rt, model, 10, "all", 99)  # warm-up: plans, compiled kernels (the first server fills the cache)
                runs = [_job(rt, model, args.steps, "all", k) for k in range(args.rounds)]
                out.setdefault(model, {})[fb] = runs
                print(f"  {model} / fusion {fb} B: {[round(r['steps_per_s'], 1) for r in runs]} steps/s", flush=True)
    return out


def report_overlap(res: dict) -> None:
    print("\n### All-reduce overlapped with the backward pass (2 ranks x 1 thread; medians)\n")
    rows = []
    for model, by in res.items():
        base = median([r["steps_per_s"] for r in by[16 << 20]])
        for fb, runs in by.items():
            recs = [w for r in runs for w in r["world"]]
            rate = median([r["steps_per_s"] for r in runs])
            share = median([w[f"world/rank{k}_comm_share"] for w in recs for k in (0, 1)])
            early = median([w.get(f"world/rank{k}_overlap", 0.0) for w in recs for k in (0, 1)])
            rows.append([model, f"{fb // 1024} KiB", f"{rate:.1f}", f"{share:.0%}", f"{early:.0%}",
                         f"{rate / base:.2f}x"])
    print_table(["model", "fusion", "steps/s", "exposed all-reduce share", "buckets started early",
                 "vs one bucket"], rows)


# --------------------------------------------------------------------------- part 2: the all-reduce
def _time(fn: Any, reps: int) -> float:
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return median(ts)


def allreduce_worker() -> None:
    """Runs on every rank under mpiexec; rank 0 prints one JSON line."""
    from mpi4py import MPI

    from kernelflow.runtime_server.distributed.fusion import GradientReducer
    from kernelflow.runtime_server.distributed.world import mpi_world

    w = mpi_world(timeout_s=120.0)
    comm = w.data
    raw = MPI.COMM_WORLD.Dup()
    sizes = [4 << k for k in range(0, 25, 2)]  # 4 B .. 64 MiB
    rows = []
    for nbytes in sizes:
        buf = np.ones(max(1, nbytes // 4), np.float32)
        reps = 200 if nbytes <= 1 << 16 else 30 if nbytes <= 1 << 22 else 8
        raw.Barrier()
        t_kf = _time(lambda b=buf: comm.allreduce_sum([b], "bench"), reps)
        raw.Barrier()
        t_mpi = _time(lambda b=buf: raw.Allreduce(MPI.IN_PLACE, b, op=MPI.SUM), reps)
        rows.append([nbytes, t_kf, t_mpi])
    from train_mlp import SIZES

    lists = {
        "MLP gradients (6 tensors, 2.7 MB)": [(f"g{i}", s, "float32") for i, s in enumerate(
            [(SIZES[0], SIZES[1]), (SIZES[1],), (SIZES[1], SIZES[2]), (SIZES[2],), (SIZES[2], SIZES[3]), (SIZES[3],)])],
        "200 tensors of 1 KiB": [(f"s{i}", (256,), "float32") for i in range(200)],
    }
    fusion = []
    for label, specs in lists.items():
        grads = [np.ones(s, np.float32) for _, s, _ in specs]
        for bb in (0, 16 << 20):
            red = GradientReducer(comm, specs, bb)
            raw.Barrier()
            fusion.append([label, bb, len(red.buckets), _time(lambda r=red, g=grads: r.reduce(g, "bench"), 30)])
    if w.rank == 0:
        print("RESULT " + json.dumps({"sizes": rows, "fusion": fusion}), flush=True)


def bench_allreduce() -> dict:
    env = {**_env(1)}
    p = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, __file__, "--allreduce-worker"], env=env,
                       capture_output=True, text=True, cwd=ROOT, timeout=1800)
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    pp = subprocess.run([str(MPIEXEC), "-n", "2", sys.executable, "-m", "mpi4py.bench", "pingpong", "-n", "67108864"],
                        env=env, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    res["pingpong"] = [[float(v) for v in re.findall(r"[\d.e+-]+", ln)[:3]] for ln in pp.stdout.splitlines()
                       if ln.strip() and not ln.startswith("#")]
    return res


def report_allreduce(res: dict) -> None:
    print("\n### One all-reduce of N bytes, 2 ranks, shared memory (median)\n")
    pp = {int(r[0]): r for r in res["pingpong"]}
    rows = []
    for nbytes, t_kf, t_mpi in res["sizes"]:
        ping = pp.get(nbytes)
        rows.append([nbytes, f"{t_kf * 1e6:.1f}", f"{t_mpi * 1e6:.1f}", f"{t_kf / t_mpi:.2f}",
                     f"{nbytes / t_kf / 1e6:.1f}", f"{ping[2] * 1e6:.1f}" if ping else "-",
                     f"{ping[1]:.1f}" if ping else "-"])
    print_table(["bytes", "kf (watchdog) us", "MPI.Allreduce us", "kf / MPI", "kf algbw MB/s",
                 "pingpong us (mpi4py.bench)", "pingpong MB/s"], rows)
    print("\n### Tensor fusion: one gradient list per step, fusion off (0) vs 16 MiB buckets (median)\n")
    rows = []
    by = {}
    for label, bb, nb, t in res["fusion"]:
        by.setdefault(label, {})[bb] = (nb, t)
    for label, d in by.items():
        (n0, t0), (n1, t1) = d[0], d[16 << 20]
        rows.append([label, n0, f"{t0 * 1e3:.3f}", n1, f"{t1 * 1e3:.3f}", f"{t0 / t1:.2f}x"])
    print_table(["gradients", "collectives (off)", "ms (off)", "collectives (on)", "ms (on)", "fusion speedup"], rows)


# --------------------------------------------------------------------------- part 3: a scaling model
# Published / assumed figures (docs/distributed.md gives the sources and caveats):
NVLINK_BUSBW = 200e9      # B/s, NCCL all-reduce bus bandwidth in one 8-GPU NVLink node (nccl-tests, A100/H100)
IB_BUSBW = 22e9           # B/s per GPU across nodes: one 200 Gb/s HDR InfiniBand NIC per GPU, ~90 % of line rate
ALPHA_NV, ALPHA_IB = 5e-6, 10e-6   # s, per-step latency of a ring/tree hop inside a node / across nodes
GPUS_PER_NODE = 8
# model: gradient bytes (fp32), compute seconds per step per GPU at its per-GPU batch
WORKLOADS = {
    "MLP 784-512-512-10 (b=256/GPU)": (2_678_824, 0.4e-3),
    "CNN of the bench (b=64/GPU)": (51_048, 0.3e-3),
    "ResNet-50 (b=64/GPU, fp32)": (102_228_128, 180e-3),
}


def allreduce_s(nbytes: float, n: int) -> float:
    """Time of one all-reduce of ``nbytes`` over ``n`` GPUs: ring bandwidth term + latency term
    (a tree's log2(n) hops once past one node)."""
    import math

    if n <= 1:
        return 0.0
    if n <= GPUS_PER_NODE:
        return 2 * (n - 1) / n * nbytes / NVLINK_BUSBW + 2 * (n - 1) * ALPHA_NV
    return 2 * (n - 1) / n * nbytes / IB_BUSBW + 2 * math.log2(n) * ALPHA_IB + 2 * (GPUS_PER_NODE - 1) * ALPHA_NV


def projection(measured: dict[str, float] | None = None) -> list[list[str]]:
    """Scaling efficiency at 8, 16, 64, 512 GPUs (weak scaling: fixed per-GPU batch), without
    overlap (kernelflow today: the all-reduce follows the backward pass) and with full overlap."""
    rows = []
    work = dict(WORKLOADS)
    for name, (nbytes, t_c) in (measured or {}).items():
        work[name] = (nbytes, t_c)
    for name, (nbytes, t_c) in work.items():
        cells = [name]
        for n in (8, 16, 64, 512):
            t_ar = allreduce_s(nbytes, n)
            cells.append(f"{t_c / (t_c + t_ar):.0%} / {t_c / max(t_c, t_ar):.0%}")
        rows.append(cells)
    return rows


def report_projection() -> None:
    print("\n### Projected scaling efficiency, no overlap / full overlap (model, not measured)\n")
    print_table(["workload", "8 GPUs", "16 GPUs", "64 GPUs", "512 GPUs"], projection())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("all", "train", "allreduce", "project", "overlap"), default="all")
    ap.add_argument("--fusion", nargs="+", type=int, default=[1 << 20, 16 << 10],
                    help="fusion thresholds (bytes) of the overlap part, beside 16 MiB")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(MODELS))
    ap.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.allreduce_worker:
        allreduce_worker()
        return 0
    print_facts(machine_facts())
    if args.part in ("all", "train"):
        report_train(bench_train(args))
    if args.part in ("all", "allreduce"):
        report_allreduce(bench_allreduce())
    if args.part in ("all", "project"):
        report_projection()
    if args.part == "overlap":
        report_overlap(bench_overlap(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
