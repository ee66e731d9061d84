"""A follower rank: its own RuntimeService (no state dir, no clients) driven by rank 0's commands.

The loop takes commands in order from the control communicator and applies them to the
service. A command whose outcome differs from rank 0's (rank 0 only sends what succeeded
there) is a divergence: logged, kept, and shown by ``world.report``. ``job.replica`` starts
this rank's side of a data-parallel job on a thread (one at a time, in command order); the
job's own collectives keep it in step with rank 0. The loop ends on ``world.shutdown``, or
when rank 0 has been silent for `SILENCE_S` (it heartbeats every few seconds), so followers
of a dead front do not linger.

Contents: SILENCE_S, STOP_GRACE_S, Follower, variable_checksums.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import numpy as np

from ...errors import KernelflowError
from ...protocol.codec import encode
from ..engine.devices import to_host
from .replication import TAG_COMMAND, TAG_REPLY, decode_command
from .world import World

log = logging.getLogger("kernelflow.distributed")

SILENCE_S = 30.0
STOP_GRACE_S = 20.0


def variable_checksums(service: Any) -> dict[str, dict]:
    """Per graph: its version and a sha1 of each variable's bytes (what `world.report` compares)."""
    out = {}
    for s in service.graphs.sessions():
        with s.lock:
            sums = {n: hashlib.sha1(np.ascontiguousarray(to_host(a)).tobytes()).hexdigest()[:16]
                    for n, a in s.variables.items()}
            out[s.name] = {"version": s.graph.version, "variables": sums}
    return out


class Follower:
    """Rank ``r > 0``: applies rank 0's command stream to ``service``.

    Args:
        world: this rank's world.
        service: the rank's RuntimeService.
        run_replica: ``run_replica(job_id, spec_map)`` runs this rank's side of a data-parallel job
            (blocking; called on the follower's job thread).
    """

    def __init__(self, world: World, service: Any, run_replica: Any):
        from mpi4py import MPI

        self.MPI = MPI
        self.world = world
        self.service = service
        self.run_replica = run_replica
        self.comm = world.control
        self.divergences: list[dict] = []
        self.applied = 0
        self._jobs: list[tuple[str, dict]] = []
        self._jobs_cond = threading.Condition()
        self._stop = threading.Event()
        self._terminating: float | None = None
        self._job_thread = threading.Thread(target=self._job_loop, name="kf-replica-jobs", daemon=True)

    def stop(self) -> None:
        """SIGTERM from the launcher: rank 0 got it too and will stop its jobs at a step boundary, which
        needs this rank, then send ``world.shutdown``; leave on that, or after `STOP_GRACE_S`."""
        if self._terminating is None:
            self._terminating = time.monotonic()

    def run(self) -> None:
        """Take and apply commands until ``world.shutdown``, `stop` or rank 0's silence."""
        self._job_thread.start()
        status = self.MPI.Status()
        last = time.monotonic()
        sleep = 0.0001
        try:
            while not self._stop.is_set():
                msg = self.comm.Improbe(source=0, tag=TAG_COMMAND, status=status)
                if msg is None:
                    if self._terminating is not None and time.monotonic() - self._terminating > STOP_GRACE_S:
                        log.warning("world: no world.shutdown from rank 0 %.0f s after SIGTERM; rank %d stops",
                                    STOP_GRACE_S, self.world.rank)
                        break
                    if time.monotonic() - last > SILENCE_S:
                        log.error("world: rank 0 silent for %.0f s; rank %d stops", SILENCE_S, self.world.rank)
                        break
                    time.sleep(sleep)
                    sleep = min(sleep * 2, 0.002)
                    continue
                buf = bytearray(status.Get_count(self.MPI.BYTE))
                msg.Recv(buf)
                last, sleep = time.monotonic(), 0.0001
                self.apply(decode_command(buf))
        finally:
            self._stop.set()
            self.world.data.failure_notice.set()  # a replica waiting on rank 0 gives up
            with self._jobs_cond:
                self._jobs_cond.notify_all()

    # ----------------------------------------------------------------- commands
    def apply(self, cmd: list) -> None:
        name, args = cmd[0], cmd[1:]
        if name == "world.heartbeat":
            return
        self.applied += 1
        try:
            if name == "world.shutdown":
                self._stop.set()
            elif name == "world.report":
                self._reply({"qid": args[0], **self.report()})
            elif name == "job.replica":
                with self._jobs_cond:
                    self._jobs.append((args[0], args[1]))
                    self._jobs_cond.notify_all()
            elif name == "dataset.install":
                self._install_dataset(*args)
            elif name == "dataset.install_view":
                self._install_view(*args)
            elif name == "graph.install":
                gname, seed, dicts = args
                self.service.graphs.graph_open(gname, seed)
                self.service.graphs.session(gname).extend(dicts, 0)
            elif name == "graph.set_variables":
                self.service.graphs.session(args[0]).load_variables(args[1], strict=True)
            else:
                self.service.call(name, list(args))
        except KernelflowError as e:
            self._diverged(name, args, e)
        except Exception as e:  # noqa: BLE001 - a follower never dies of a command
            log.error("world: command %s failed on rank %d", name, self.world.rank, exc_info=True)
            self._diverged(name, args, e)

    def _diverged(self, name: str, args: list, e: BaseException) -> None:
        what = args[0] if args and isinstance(args[0], str) else None
        d = {"command": name, "target": what, "error": f"{type(e).__name__}: {e}"}
        self.divergences.append(d)
        del self.divergences[:-100]
        log.error("world: rank %d diverged from rank 0: %s on %r succeeded there, failed here: %s",
                  self.world.rank, name, what, d["error"])

    def _install_dataset(self, name: str, columns: dict, meta: dict) -> None:
        ds = self.service.datasets
        spec = {c: {"dtype": a.dtype.str, "shape": list(a.shape)} for c, a in columns.items()}
        up = ds.begin(name, spec, {"overwrite": True, "fingerprint": meta.get("fingerprint")})
        if not up.get("reused"):
            for c, a in columns.items():
                ds.put(up["upload"], c, 0, a)
            ds.commit(up["upload"])
        if meta.get("shard"):  # this rank's shard of a dataset of meta["shard"][2] rows (shards.py)
            ds.get(name).meta["shard"] = [int(x) for x in meta["shard"]]

    def _install_view(self, name: str, root: str, index: np.ndarray, meta: dict) -> None:
        ds = self.service.datasets
        view = ds._make_view(name, ds.get(root), np.asarray(index, np.int64), meta)
        with ds._lock:
            ds.datasets[name] = view

    def report(self) -> dict:
        """What this rank holds: graphs (versions, variable checksums), datasets, divergences."""
        return {"rank": self.world.rank, "graphs": variable_checksums(self.service),
                "datasets": {d["name"]: d["length"] for d in self.service.datasets.list()},
                "divergences": list(self.divergences), "applied": self.applied}

    def _reply(self, rep: dict) -> None:
        data = b"".join(bytes(f) for f in encode(rep))
        req = self.comm.Isend(data, dest=0, tag=TAG_REPLY)
        deadline = time.monotonic() + 30.0
        while not req.Test():
            if time.monotonic() > deadline:
                log.error("world: rank 0 did not take a report within 30 s")
                return
            time.sleep(0.0005)

    # ----------------------------------------------------------------- jobs
    def _job_loop(self) -> None:
        while True:
            with self._jobs_cond:
                while not self._jobs and not self._stop.is_set():
                    self._jobs_cond.wait(0.5)
                if self._stop.is_set():
                    return
                job_id, spec = self._jobs.pop(0)
            try:
                self.run_replica(job_id, spec)
            except Exception:
                log.error("world: replica of job %s failed on rank %d", job_id, self.world.rank, exc_info=True)
