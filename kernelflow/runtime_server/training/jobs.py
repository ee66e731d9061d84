"""Server-side training jobs: the fit loop on a worker thread, metrics streamed to subscribers.

A job runs on its own thread (`fit_loop.FitLoop`); jobs on one graph run one at a time in
the order they were started (the others wait as ``queued``), jobs on different graphs run
at once. Logged records (scalars, histograms, images, audio, text) are appended to the job's history; one
flusher thread pushes them to subscribed connections as ``job.records`` notifications at
most every 100 ms (records in between go together, none dropped; of the image records in one
notification only the newest per name keeps its pixels) and appends them to the state dir.
The history in memory is bounded (`history.History`): the newest records and the kept image
records; older ones are read back from the job's record log when a client asks for them.
Only the newest ``image_keep`` image records per name keep their pixels, in memory and in the
state dir; older ones stay in the history as stubs (``"images": None``) so indices hold.
Audio records (``"audio"``: 16-bit PCM) follow the same rule, counted apart from images.
A subscriber gets the history from the index it asks for in pages (``limit`` records, default
`PAGE_RECORDS`): the first in the answer to ``job.subscribe``, the rest in notifications of at
most a page each (one page per subscriber per flush), then the stream of new records. Answer
and stream are cut at the same record index under the job's lock, and every notification
carries the index of its first record, so a client sees each record once. ``job.records``
answers one page too, with ``next`` and ``more`` to ask for the following one.

Contents: STATUSES, PAGE_RECORDS, MAX_PAGE_RECORDS, Job, JobManager.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import FailedPreconditionError, InvalidArgumentError, KernelflowError, NotFoundError
from ...protocol.jobspec import PAGE_RECORDS, JobSpec, has_media, media_key, media_stub
from .fit_loop import Bound, FitLoop, Halt, bind
from .history import TAIL_RECORDS, History, StateLog, TempLog
from .tb_events import EventWriter

if TYPE_CHECKING:
    from ..datasets import DatasetStore
    from ..graphs import GraphStore
    from ..persist.state import StateDir

log = logging.getLogger("kernelflow.jobs")

STATUSES = ("queued", "running", "paused", "completed", "stopped", "failed", "interrupted")
ACTIVE = frozenset({"queued", "running", "paused"})
FLUSH_INTERVAL_S = 0.1
SHUTDOWN_WAIT_S = 60.0
MAX_PAGE_RECORDS = 1_000_000
"""The largest ``limit`` those methods take."""


def _check_page(method: str, since: int, limit: int) -> None:
    """``since`` an index >= 0, ``limit`` a page size in [1, MAX_PAGE_RECORDS] (typed error naming each)."""
    if not isinstance(since, int) or isinstance(since, bool) or since < 0:
        raise InvalidArgumentError(f"{method}: since must be an integer >= 0; got {since!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_RECORDS:
        raise InvalidArgumentError(f"{method}: limit must be an integer from 1 to {MAX_PAGE_RECORDS:,} "
                                   f"(records per page); got {limit!r}")


@dataclass
class _Subscription:
    next: int      # index of the first record not yet sent
    version: int   # job.version last sent
    step: int      # job.step last sent
    limit: int = 0  # records per notification at most (0: no limit)


class Job:
    """One job's state; ``cond`` guards status, request, records and subscribers."""

    def __init__(self, manager: JobManager, job_id: str, spec: JobSpec, created: float):
        self.manager = manager
        self.graphs = manager.graphs
        self.state = manager.state
        self.id = job_id
        self.spec = spec
        self.created = created
        self.cond = threading.Condition()
        self.status = "queued"
        self.error: dict | None = None
        self.request: str | None = None       # "pause", "stop" or "interrupt", seen at the next step boundary
        self.history = (History(self.cond, spec.image_keep, StateLog(self.state, job_id, spec.image_keep))
                        if self.state is not None else
                        History(self.cond, spec.image_keep, make_log=lambda: TempLog(self.scratch_dir())))
        self.subscribers: dict[Any, _Subscription] = {}
        self.version = 0
        self.step = 0
        self.failing_step = 0
        self.total_steps: int | None = None
        self.steps_per_epoch: int | None = None
        self.steps_per_s: float | None = None
        self.batch_size = spec.batch_size
        self.elapsed_s = 0.0
        self._run_t0: float | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.latest: dict[str, float] = {}
        self.last_checkpoint: dict | None = None
        self.tensorboard_dir: str | None = None
        self.logged_upto = 0                   # records at or below this step exist already (resume)
        self._persist_lock = threading.Lock()
        self._scratch: str | None = None  # see scratch_dir
        self._scratch_lock = threading.Lock()
        self.deleted = False                   # set under _persist_lock: nothing is written for it again
        self.thread: threading.Thread | None = None
        self.bound: Bound | None = None

    # ----------------------------------------------------------------- status
    def status_map(self) -> dict[str, Any]:
        with self.cond:
            return self._status_map_locked()

    def _status_map_locked(self) -> dict[str, Any]:
        spe, total, step = self.steps_per_epoch, self.total_steps, self.step
        elapsed = self.elapsed_s + (time.monotonic() - self._run_t0 if self._run_t0 is not None else 0.0)
        rate = self.steps_per_s
        eta = (total - step) / rate if rate and total is not None and self.status in ACTIVE else None
        return {"id": self.id, "name": self.spec.name or self.id, "graph": self.spec.graph, "status": self.status,
                "error": self.error, "step": step, "epoch": step // spe if spe else 0,
                "epochs": self.spec.epochs, "total_steps": total, "steps_per_epoch": spe,
                "steps_per_s": rate, "examples_per_s": rate * self.batch_size if rate else None,
                "elapsed_s": elapsed, "eta_s": eta, "metrics": dict(self.latest), "records": self.history.n,
                "data": self.spec.data, "created": self.created, "started": self.started,
                "finished": self.finished, "checkpoint": self.last_checkpoint,
                "tensorboard_dir": self.tensorboard_dir, "image_keep": self.spec.image_keep,
                "train_op": self.spec.train_op, "feed": dict(self.spec.feed)}

    def set_status(self, status: str, error: dict | None = None) -> None:
        with self.cond:
            self._set_locked(status, error)
        self.persist_status()

    def _set_locked(self, status: str, error: dict | None = None) -> None:
        now = time.monotonic()
        if status == "running" and self._run_t0 is None:
            self._run_t0 = now
            self.started = self.started or time.time()
        elif status != "running" and self._run_t0 is not None:
            self.elapsed_s += now - self._run_t0
            self._run_t0 = None
        if status not in ACTIVE:
            self.finished = time.time()
        self.status = status
        self.error = error
        self.version += 1
        self.cond.notify_all()

    def note_rate(self, steps_per_s: float | None, batch_size: int) -> None:
        self.steps_per_s = steps_per_s

    # ----------------------------------------------------------------- requests (RPC threads)
    def request_pause(self) -> None:
        with self.cond:
            if self.status in ("running", "queued"):
                self.request = "pause"
            elif self.status != "paused":
                raise FailedPreconditionError(f"job {self.id} is {self.status}; only a running job can pause")

    def request_stop(self, how: str = "stop") -> None:
        with self.cond:
            if self.status in ACTIVE:
                self.request = how
                self.cond.notify_all()
            elif self.status == "interrupted" and how == "stop":
                self._set_locked("stopped")
            else:
                return
        self.manager.wake()
        if self.status == "stopped":
            self.persist_status()

    def boundary(self) -> None:
        """Between two steps (job thread): pause while asked to, raise Halt when asked to stop."""
        while True:
            changed = done = False
            with self.cond:
                req = self.request
                if req in ("stop", "interrupt"):
                    raise Halt("stopped" if req == "stop" else "interrupted")
                if req == "pause":
                    if self.status != "paused":
                        self._set_locked("paused")
                        changed = True
                    else:
                        self.cond.wait()
                else:
                    if self.status == "paused":
                        self._set_locked("running")
                        changed = True
                    done = True
            if changed:
                self.persist_status()
            if done:
                return

    # ----------------------------------------------------------------- records
    @property
    def records(self) -> list[dict]:
        """The whole history as a list (read back from the log; for tests and tools, not the RPCs)."""
        return self.history.read(0)

    def add_record(self, rec: dict) -> bool:
        """Append a logged record; False (dropped) for a step logged before a restart."""
        with self.cond:
            if rec["step"] <= self.logged_upto:
                return False
            self.history.append(rec)
            if rec["kind"] == "scalars":
                self.latest.update(rec["values"])
            self.version += 1
            behind = self.history.n - self.history.persisted > 4 * TAIL_RECORDS
        if self.tensorboard_dir is not None:
            self.manager.events.write(self.id, rec)
        if behind:  # logging faster than the flusher writes: bound memory here, on the job's thread
            self.persist_records()
        return True

    def profiled(self, step: int, times: list) -> None:
        """Per-node times of a profiled step, as TensorBoard run metadata (tag ``step N``)."""
        if self.tensorboard_dir is None:
            return
        from ...interop.graphdef import run_metadata  # lazily, as open_tensorboard

        self.manager.events.run_metadata(self.id, f"step {step}",
                                         run_metadata((n.name, dev, t0, t1) for n, dev, t0, t1 in times))

    def scratch_dir(self) -> str:
        """The job's private temp dir on a runtime without a state dir: its TensorBoard event files
        and its spilled history go there; removed with the job or at shutdown (`remove_scratch`)."""
        with self._scratch_lock:
            if self._scratch is None:
                self._scratch = tempfile.mkdtemp(prefix=f"kf-{self.id}-")
            return self._scratch

    def remove_scratch(self) -> None:
        """Remove `scratch_dir`, if one was made."""
        with self._scratch_lock:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    def persist_records(self) -> None:
        """Append the records not yet in the job's log (the state dir's, else a temp one once the
        in-memory tail overflows) and drop the oldest from memory."""
        with self._persist_lock:
            if self.deleted:
                return
            self.history.spill()

    def persist_status(self) -> None:
        state = self.state
        if state is None:
            return
        with self._persist_lock:
            if self.deleted:
                return  # a status write racing job.delete must not bring the job back
            try:
                state.write_job(self.id, self.spec.to_map(), self.status_map())
            except Exception:
                log.error("job %s: cannot write its status to the state dir", self.id, exc_info=True)

    # ----------------------------------------------------------------- checkpoints
    def can_checkpoint(self) -> bool:
        return self.state is not None

    def checkpoint(self, reason: str) -> None:
        """Checkpoint the graph at this step boundary, after the history up to here is on disk."""
        if not self.can_checkpoint() or (self.last_checkpoint and self.last_checkpoint["step"] == self.step):
            return
        self.persist_records()
        m = self.graphs.checkpoint_graph(self.spec.graph, tag=f"{self.id}-s{self.step:09d}",
                                          manifest={"step": self.step, "job": self.id, "metrics": dict(self.latest),
                                                    "reason": reason}, keep_last=self.spec.keep_checkpoints)
        with self.cond:
            self.last_checkpoint = {"tag": m["tag"], "step": self.step, "time": m.get("time")}
            self.version += 1
        self.persist_status()

    def restore_checkpoint(self) -> None:
        """Set the graph's variables and the step from this job's newest intact checkpoint."""
        state = self.state
        mine = [m for m in (state.list_checkpoints(self.spec.graph) if state is not None else [])
                if m.get("job") == self.id and isinstance(m.get("step"), int)]
        for m in reversed(mine):
            try:
                self.graphs.restore_graph(self.spec.graph, m["tag"])
            except KernelflowError as e:
                log.warning("job %s: checkpoint %s cannot be restored (%s); trying the previous one", self.id,
                            m["tag"], e)
                continue
            self.step = int(m["step"])
            self.last_checkpoint = {"tag": m["tag"], "step": self.step, "time": m.get("time")}
            return
        log.warning("job %s: no checkpoint of it to resume from; it starts again at step 0 from the graph's "
                    "current variables", self.id)
        self.step = 0

    # ----------------------------------------------------------------- the thread
    def start(self, bound: Bound, resume: bool) -> None:
        self.bound = bound
        self.total_steps, self.steps_per_epoch = bound.total_steps, bound.steps_per_epoch
        self.thread = threading.Thread(target=self._main, args=(resume,), name=f"kf-job-{self.id}", daemon=True)
        self.thread.start()

    def _main(self, resume: bool) -> None:
        tb = False
        final, error = "completed", None
        b = self.bound
        assert b is not None
        try:
            if not self.manager.wait_turn(self):
                raise Halt("stopped" if self.request == "stop" else "interrupted")
            if resume:
                with b.session.lock:
                    self.restore_checkpoint()
                self.logged_upto = self.history.max_step
            tb = self.manager.open_tensorboard(self, b)
            self.set_status("running")
            self.checkpoint("start")
            self.manager.make_loop(self, b).run()
        except Halt as h:
            final = h.status
        except Exception as e:
            final = "failed"
            error = {"type": type(e).__name__ if isinstance(e, KernelflowError) else "InternalError",
                     "message": str(e) if isinstance(e, KernelflowError) else f"{type(e).__name__}: {e}",
                     "step": self.failing_step, "node": getattr(e, "node", None), "source": getattr(e, "source", None)}
            level = logging.INFO if isinstance(e, KernelflowError) else logging.ERROR
            log.log(level, "job %s failed at step %d: %s", self.id, self.failing_step, e,
                    exc_info=level == logging.ERROR)
        try:
            if final != "failed" and self.status != "queued":
                self.checkpoint(final)
        except Exception:
            log.error("job %s: final checkpoint failed", self.id, exc_info=True)
        finally:
            if tb:
                self.manager.events.close(self.id)
            self.manager.release_turn(self)
            try:
                self.persist_records()
            except Exception:
                log.error("job %s: cannot append its history to the state dir", self.id, exc_info=True)
            with self.cond:
                self.request = None
            self.set_status(final, error)
            log.info("job %s %s at step %d", self.id, final, self.step)


def newest_images_only(recs: list[dict]) -> list[dict]:
    """``recs`` with every image record but the newest per name stubbed (what one notification sends)."""
    seen: set[str] = set()
    out = None
    for i in range(len(recs) - 1, -1, -1):
        r = recs[i]
        if has_media(r):
            if media_key(r) in seen:
                if out is None:
                    out = list(recs)
                out[i] = media_stub(r)
            seen.add(media_key(r))
    return recs if out is None else out


class JobManager:
    """The runtime's jobs and the ``job.*`` RPC methods."""

    def __init__(self, graphs: GraphStore, datasets: DatasetStore, state: StateDir | None):
        self.graphs = graphs
        self.datasets = datasets
        self.state = state
        self.jobs: dict[str, Job] = {}
        self._cond = threading.Condition()           # guards jobs, the per-graph queues and turns
        self._queues: dict[str, list[Job]] = {}
        self._active: dict[str, Job] = {}
        self._closed = threading.Event()
        self._flusher: threading.Thread | None = None
        self.events = EventWriter()
        # Data-parallel jobs (``replicas``, issue #18): the service hands in the world's
        # `distributed.data_parallel.DataParallel` (check_start, make_loop); None: refused.
        self.data_parallel: Any = None

    def make_loop(self, job: Job, b: Bound) -> FitLoop:
        """The loop of ``job``: a `FitLoop`, or a data-parallel one over the world's ranks (``replicas``)."""
        if job.spec.replicas is None:
            return FitLoop(job, b)
        return self.data_parallel.make_loop(job, b)

    def _check_replicas(self, spec: JobSpec, b: Bound) -> None:
        if spec.replicas is None:
            return
        if self.data_parallel is None:
            raise FailedPreconditionError("fit(replicas=...): this runtime has no world of ranks to run a "
                                          "data-parallel job on")
        self.data_parallel.check_start(spec, b)

    def get(self, job_id: Any) -> Job:
        with self._cond:
            job = self.jobs.get(job_id) if isinstance(job_id, str) else None
            if job is None:
                raise NotFoundError(f"no job {job_id!r}; jobs: {sorted(self.jobs)}")
            return job

    # ----------------------------------------------------------------- RPC methods
    def start(self, spec: dict) -> dict:
        """Start a job (``fit``); returns its status map at once."""
        if self._closed.is_set():
            raise FailedPreconditionError("job.start: the runtime is shutting down")
        s = JobSpec.from_map(spec)
        bound = bind(self.graphs, self.datasets, s)
        self._check_replicas(s, bound)
        job = Job(self, f"job-{secrets.token_hex(4)}", s, time.time())
        job.total_steps, job.steps_per_epoch = bound.total_steps, bound.steps_per_epoch
        with self._cond:
            self.jobs[job.id] = job
        job.persist_status()
        self._ensure_flusher()
        job.start(bound, resume=False)
        log.info("job %s started on graph '%s': %d steps", job.id, s.graph, bound.total_steps)
        return job.status_map()

    def list(self) -> list[dict]:
        """Status maps of every job, oldest first."""
        with self._cond:
            jobs = sorted(self.jobs.values(), key=lambda j: j.created)
        return [j.status_map() for j in jobs]

    def status(self, job_id: str) -> dict:
        """A job's status map (status, error, step, epoch, rates, latest metrics...)."""
        return self.get(job_id).status_map()

    def records(self, job_id: str, since: int = 0, limit: int = PAGE_RECORDS) -> dict:
        """A page of the history: ``{"start": since, "records": history[since:since + limit],
        "next": index after the page, "more": whether records from ``next`` exist, "status": ...}``."""
        job = self.get(job_id)
        _check_page("job.records", since, limit)
        with job.cond:
            n, status = job.history.n, job._status_map_locked()
        stop = min(n, since + limit)
        return {"start": since, "records": job.history.read(since, stop), "next": max(since, stop),
                "more": stop < n, "status": status}

    def pause(self, job_id: str) -> dict:
        """Ask a running job to pause at its next step boundary."""
        job = self.get(job_id)
        job.request_pause()
        return job.status_map()

    def resume(self, job_id: str) -> dict:
        """Resume a paused job, or an interrupted one from its newest checkpoint (same step, same data order)."""
        job = self.get(job_id)
        with job.cond:
            status = job.status
            if status in ("running", "queued", "paused"):
                if job.request == "pause":
                    job.request = None
                    job.cond.notify_all()
                return job._status_map_locked()
            if status != "interrupted":
                raise FailedPreconditionError(f"job {job.id} is {status}; only paused or interrupted jobs resume "
                                              "(start a new one with g.fit)")
        if self._closed.is_set():
            raise FailedPreconditionError("job.resume: the runtime is shutting down")
        bound = bind(self.graphs, self.datasets, job.spec)
        self._check_replicas(job.spec, bound)
        with job.cond:
            if job.status != "interrupted":  # another client resumed it meanwhile
                return job._status_map_locked()
            job.request = None
            job._set_locked("queued")
        job.persist_status()
        self._ensure_flusher()
        job.start(bound, resume=True)
        return job.status_map()

    def stop(self, job_id: str) -> dict:
        """Ask a job to stop at its next step boundary (it checkpoints, then ends ``stopped``)."""
        job = self.get(job_id)
        job.request_stop("stop")
        return job.status_map()

    def delete(self, job_id: str) -> bool:
        """Forget an ended job: its status and history, in memory and in the state dir.

        Its checkpoints (graph checkpoints tagged with the job id) and TensorBoard event files stay.
        """
        job = self.get(job_id)
        with job.cond:
            if job.status in ("queued", "running", "paused"):
                raise FailedPreconditionError(f"job.delete: job {job_id} is {job.status}; stop it first "
                                              "(job.stop), then delete it")
            job.subscribers.clear()
        with self._cond:
            self.jobs.pop(job_id, None)
        with job._persist_lock:  # waits for a status or history write in flight, then forbids more
            job.deleted = True
            job.history.close()
            if self.state is not None:
                self.state.delete_job(job_id)
        if self.state is None:
            self.events.close(job_id)
            job.remove_scratch()
        log.info("job %s deleted", job_id)
        return True

    def subscribe(self, job_id: str, since: int = 0, limit: int = PAGE_RECORDS, *, peer: Any = None) -> dict:
        """Stream the job's records to the caller from index ``since``: the answer holds the first
        page (at most ``limit`` records; ``more`` says whether the history goes on), the
        ``job.records`` notifications carry the rest, each at most ``limit`` records."""
        job = self.get(job_id)
        _check_page("job.subscribe", since, limit)
        if peer is None or not hasattr(peer, "notify"):
            raise FailedPreconditionError("job.subscribe: this connection cannot receive notifications")
        with job.cond:
            n = job.history.n
            stop = min(n, since + limit)
            job.subscribers[peer] = _Subscription(max(since, stop), job.version, job.step, limit)
            status = job._status_map_locked()
        self._ensure_flusher()
        return {"start": since, "records": job.history.read(since, stop), "next": max(since, stop),
                "more": stop < n, "status": status}

    def unsubscribe(self, job_id: str, *, peer: Any = None) -> bool:
        """Stop streaming the job to the caller."""
        job = self.get(job_id)
        with job.cond:
            return job.subscribers.pop(peer, None) is not None

    def peer_closed(self, peer: Any) -> None:
        with self._cond:
            jobs = list(self.jobs.values())
        for job in jobs:
            with job.cond:
                job.subscribers.pop(peer, None)

    # ----------------------------------------------------------------- turns (one job per graph at a time)
    def wait_turn(self, job: Job) -> bool:
        """Block while other jobs on the graph run or wait ahead; False if stopped meanwhile."""
        graph = job.spec.graph
        with self._cond:
            q = self._queues.setdefault(graph, [])
            q.append(job)
            while True:
                if job.request in ("stop", "interrupt"):
                    q.remove(job)
                    self._cond.notify_all()
                    return False
                if q[0] is job and graph not in self._active:
                    q.pop(0)
                    self._active[graph] = job
                    return True
                self._cond.wait(0.5)

    def release_turn(self, job: Job) -> None:
        with self._cond:
            if self._active.get(job.spec.graph) is job:
                del self._active[job.spec.graph]
            self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ----------------------------------------------------------------- streaming and persistence
    def _ensure_flusher(self) -> None:
        with self._cond:
            if self._flusher is None and not self._closed.is_set():
                self._flusher = threading.Thread(target=self._flush_loop, name="kf-job-flusher", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            t0 = time.monotonic()
            self.flush()
            if self._closed.wait(max(0.0, FLUSH_INTERVAL_S - (time.monotonic() - t0))):
                return

    def flush(self) -> None:
        """Push new records and progress to subscribers, append new records to the state dir."""
        with self._cond:
            jobs = list(self.jobs.values())
        for job in jobs:
            try:
                self._push(job)
                job.persist_records()
            except Exception:
                log.error("job %s: streaming or persisting records failed", job.id, exc_info=True)

    def _push(self, job: Job) -> None:
        sends = []
        with job.cond:
            if not job.subscribers:
                return
            n, status = job.history.n, None
            for peer, sub in list(job.subscribers.items()):
                if getattr(peer, "closed", False):
                    del job.subscribers[peer]
                    continue
                if sub.next < n or sub.version != job.version or sub.step != job.step:
                    status = status or job._status_map_locked()
                    stop = min(n, sub.next + sub.limit) if sub.limit else n  # a subscriber far behind: one page
                    sends.append((peer, sub.next, stop))
                    sub.next, sub.version, sub.step = max(sub.next, stop), job.version, job.step
        read: dict[tuple[int, int], list[dict]] = {}  # subscribers at the same place share one read
        for peer, start, stop in sends:
            if (start, stop) not in read:
                read[start, stop] = newest_images_only(job.history.read(start, stop))
            peer.notify("job.records", [job.id, start, read[start, stop], status])

    def open_tensorboard(self, job: Job, b: Bound) -> bool:
        """Start the job's TensorBoard event files (under the state dir, else in a temp dir), the
        graph first (TensorBoard's Graphs dashboard), with the device each node runs on."""
        from ...interop.graphdef import graph_def  # lazily: only jobs write GraphDefs

        state = self.state
        logdir = str(state.tensorboard_dir(job.id)) if state is not None else job.scratch_dir()
        job.tensorboard_dir = logdir
        self.events.open(job.id, logdir)
        with b.session.lock:
            nodes = b.session.graph.nodes()
        default = b.session.devices.default
        self.events.graph(job.id, graph_def(nodes, {n.name: n.device or default for n in nodes}))
        return True

    # ----------------------------------------------------------------- state dir and shutdown
    def load_from_state(self) -> None:
        """Bring back the jobs of the state dir with their histories; those that were running
        (or paused, or queued) come back ``interrupted``."""
        state = self.state
        if state is None:
            return
        for job_id, spec_map, st in state.load_jobs():
            try:
                job = Job(self, job_id, JobSpec.from_map(spec_map), float(st.get("created") or time.time()))
            except KernelflowError as e:
                log.error("state dir: job %s has a bad spec (%s); skipped", job_id, e)
                continue
            job.history, latest = History.load(job.cond, job.spec.image_keep, state, job_id)
            job.latest.update(latest)
            job.status = st.get("status") if st.get("status") in STATUSES else "interrupted"
            job.error = st.get("error")
            job.step = int(st.get("step") or 0)
            job.total_steps, job.steps_per_epoch = st.get("total_steps"), st.get("steps_per_epoch")
            job.elapsed_s = float(st.get("elapsed_s") or 0.0)
            job.started, job.finished = st.get("started"), st.get("finished")
            job.last_checkpoint = st.get("checkpoint")
            job.tensorboard_dir = st.get("tensorboard_dir")
            with self._cond:
                self.jobs[job_id] = job
            if job.status in ACTIVE:
                job.status = "interrupted"
                ckpt = job.last_checkpoint
                last = [m for m in state.list_checkpoints(job.spec.graph) if m.get("job") == job_id]
                if last:
                    ckpt = {"tag": last[-1]["tag"], "step": last[-1].get("step"), "time": last[-1].get("time")}
                    job.step = int(ckpt["step"] or 0)
                job.last_checkpoint = ckpt
                job.persist_status()
                log.info("state dir: job %s was running; it is back as interrupted (resume() continues from "
                         "step %d)", job_id, job.step)

    def shutdown(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Stop running jobs at a step boundary with a checkpoint (they come back ``interrupted``);
        waits up to ``wait_s`` for them."""
        self._closed.set()
        with self._cond:
            jobs = list(self.jobs.values())
            self._cond.notify_all()
        for job in jobs:
            with job.cond:
                if job.status in ACTIVE:
                    job.request = "interrupt"
                    job.cond.notify_all()
        self.wake()
        deadline = time.monotonic() + wait_s
        for job in jobs:
            t = job.thread
            if t is not None and t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
                if t.is_alive():
                    log.error("job %s did not reach a step boundary within %.0f s", job.id, wait_s)
        self.flush()
        self.events.shutdown()
        if self.state is None:  # a memory-only runtime keeps nothing
            for job in jobs:
                job.history.close()
                job.remove_scratch()
