"""Run under ``mpiexec -n N``: exercises the MPI communicator, fusion buckets and watchdog and
writes what each rank saw to ``<out>/rank<r>.json`` (the pytest side asserts on it)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

from kernelflow.errors import DeadlineExceededError, FailedPreconditionError, UnavailableError
from kernelflow.runtime_server.distributed.comm import check_agreement
from kernelflow.runtime_server.distributed.fusion import GradientReducer
from kernelflow.runtime_server.distributed.world import mpi_world

SPECS = [("w1", (64, 32), "float32"), ("b1", (32,), "float32"), ("w2", (32, 10), "float32"), ("b2", (10,), "float32"),
         ("scale", (), "float64"), ("big", (300, 100), "float32")]


def grads_of(rank: int) -> list[np.ndarray]:
    rng = np.random.default_rng(100 + rank)
    return [rng.standard_normal(s).astype(d) for _, s, d in SPECS]


def overlap(w) -> dict:
    """The data-parallel loop's gradient step (`reduce_gradients`) on an MLP, overlapped and not."""
    import kernelflow as kf
    from kernelflow.runtime_server.distributed.data_parallel import (
        overlap_share,
        ready_order,
        reduce_gradients,
        split_train_op,
    )
    from tests.support.models import mlp

    rt = kf.connect("inproc")
    m = mlp(rt, "ov")
    m.g.sync()
    s = rt._transport.service.graphs.session("ov")
    split = split_train_op(s.graph[m.train.name])
    names = [t.name for t in split.grads]
    specs = [(t.name, tuple(t.shape), t.dtype) for t in split.grads]

    def rows(r: int) -> list[np.ndarray]:
        rng = np.random.default_rng(50 + r)
        return [rng.standard_normal((8 + r, 64)).astype("float32"), rng.integers(0, 10, 8 + r)]

    plan = s.plan(names, ["x", "y"])
    per_rank = [plan.run(rows(r)) for r in range(w.size)]
    ref = [sum(per_rank[r][i].astype(np.float64) * (8 + r) for r in range(w.size)) for i in range(len(names))]
    out: dict = {}
    for bucket_bytes in (4096, 16 << 20):
        red = GradientReducer(w.data, specs, bucket_bytes, order=ready_order(plan, len(names)))
        for overlapped in (True, False):
            events: list = []
            fetched, finish = reduce_gradients(plan, rows(w.rank), red, len(names), "test gradients", 8 + w.rank,
                                               overlapped, events)
            summed = finish()
            key = f"{bucket_bytes}_{int(overlapped)}"
            out[f"events_{key}"] = [list(e) for e in events]
            out[f"share_{key}"] = overlap_share(events, len(red.buckets))
            out[f"buckets_{key}"] = [b.members for b in red.buckets]
            out[f"maxerr_{key}"] = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(summed, ref))
            out[f"fetched_same_{key}"] = all(np.array_equal(a, b) for a, b in zip(fetched, per_rank[w.rank]))
    out["grad_vars"] = list(split.grad_vars)
    rt.close()
    return out


def main(out_dir: str, mode: str) -> None:
    w = mpi_world(timeout_s=60.0 if mode == "killed" else 3.0)
    rank, size = w.rank, w.size
    res: dict = {"rank": rank, "size": size, "ranks": w.ranks}
    if mode == "ok":
        ref = [sum(grads_of(r)[i].astype(np.float64) for r in range(size)) for i in range(len(SPECS))]
        for bucket_bytes in (0, 4096, 16 << 20):
            red = GradientReducer(w.data, SPECS, bucket_bytes)
            got = red.reduce(grads_of(rank), "test all-reduce")
            res[f"buckets_{bucket_bytes}"] = len(red.buckets)
            res[f"maxerr_{bucket_bytes}"] = max(float(np.max(np.abs(g - r))) for g, r in zip(got, ref))
            res[f"dtypes_{bucket_bytes}"] = [str(g.dtype) for g in got]
            res[f"sig_{bucket_bytes}"] = red.signature()
        b = np.arange(5, dtype=np.float32) * (rank + 1)
        w.data.broadcast(b, 0, "test broadcast")
        res["bcast"] = b.tolist()
        res["gather"] = [x.decode() for x in w.data.allgather_bytes(("x" * rank + f"r{rank}").encode(), "test gather")]
        res["allgather"] = w.data.allgather(np.array([rank, rank * 10]), "test allgather").tolist()
        try:
            check_agreement(w.data, {"version": 7, "tensors": ["w1", "b1"] + (["extra"] if rank == 1 else [])},
                            "job x")
            res["agreement"] = "ok"
        except FailedPreconditionError as e:
            res["agreement"] = str(e)
        res["agree_same"] = len(check_agreement(w.data, {"version": 7, "tensors": ["a"]}, "job y"))
    elif mode == "overlap":
        res.update(overlap(w))
    elif mode in ("absent", "killed"):
        if rank == size - 1:
            if mode == "killed":  # mid-run, while the others wait in the collective
                time.sleep(1.5)
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(4.5)  # absent from the collective beyond the others' 3 s watchdog
        else:
            t0 = time.monotonic()
            red = GradientReducer(w.data, SPECS, 4096)
            try:
                red.reduce(grads_of(rank), "test all-reduce")
                res["error"] = None
            except (DeadlineExceededError, UnavailableError) as e:
                res["error"] = [type(e).__name__, str(e)]
            res["waited_s"] = time.monotonic() - t0
            try:
                w.data.broadcast(np.zeros(3), 0, "after")
                res["after"] = None
            except UnavailableError as e:
                res["after"] = [type(e).__name__, str(e)]
            res["broken"] = w.broken()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f)
    sys.stdout.flush()
    if mode != "ok":
        os._exit(0)  # a collective was abandoned: MPI_Finalize would wait for it


if __name__ == "__main__":
    from kernelflow.runtime_server.distributed.launch import needs_supervisor, supervise

    if needs_supervisor():  # as `kernelflow serve --distributed` does: see launch.py
        sys.exit(supervise([sys.executable, "-m", "tests.runtime_server.distributed.prog_collectives", *sys.argv[1:]]))
    main(sys.argv[1], sys.argv[2])
