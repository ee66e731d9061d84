"""The data-parallel fit loop (``g.fit(..., replicas="all")``): every rank of the world runs it
on its slice of each global batch, and the ranks all-reduce gradients before the update.

The train op is split at its optimizer updates (the fused ``apply_*`` ops): plan A runs the
forward and backward pass on the rank's rows and fetches the gradients each update consumes;
the gradients are summed over the ranks through fusion buckets (each weighted by the rank's
row count, then divided by the global batch size: the global batch's mean gradient for a loss
that is a mean over rows); plan B runs the train op with those gradients fed, which prunes the
forward and backward pass away and applies the same update on every rank, so variables stay
identical. Floating variables that the train op writes from the batch outside the optimizer
(batch-norm moving statistics) are averaged the same way after the update.

Overlap: the buckets are filled in the order plan A makes the gradients, and while plan A runs
the executor reports each gradient as its kernel finishes (`Ready`); a bucket's all-reduce
starts as soon as its last gradient is in, while the backward pass goes on, and the update
waits for every bucket (`reduce_gradients`). With one bucket or one rank there is nothing to
overlap and the plan runs plainly.

Random ops (dropout) in plan A draw, at each step, from streams keyed by (job seed, rank,
step): ranks draw different masks, and a step draws the same masks whenever it runs again
(also after a resume with the same number of ranks).

Global batch = ``batch_size`` rows, cut from the epoch's permutation exactly as a one-rank job
cuts it; rank r takes rows ``[lo + m*r//N, lo + m*(r+1)//N)`` of a batch of m rows. So an
N-rank job sees the batches a one-rank job sees (same seed, same order) and resumes on them.
With sharded datasets (``--shard-datasets``) each rank draws its rows from its own shard
instead (shards.py: other batches than a one-rank job's, depending on N).

Every step starts with a control word broadcast by rank 0 (run / pause / stop / interrupt,
the step number, whether metrics are fetched), so job control reaches every rank at the same
step; a rank whose step differs stops the job naming both. The first exchange checks that
the ranks agree on the graph version, the gradient list and the data (names in the error),
then rank 0 broadcasts the step and every variable (a resumed job restores its checkpoint on
rank 0 only). Every collective has the communicator's watchdog: a dead rank ends the job
``interrupted`` instead of hanging it. Metrics are row-weighted means over the ranks; on
logging steps rank 0 also records each rank's step time and the share spent communicating.

Contents: TrainSplit, split_train_op, check_start, reduce_gradients, ReplicaJob, DataParallelLoop,
run_replica, DataParallel.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ...errors import DeadlineExceededError, FailedPreconditionError, InvalidArgumentError, UnavailableError
from ...graph.ir import Tensor
from ...graph.ops.state import placeholder_op
from ...graph.shapes import FLOATING
from ...protocol.jobspec import JobSpec
from ..engine.devices import to_host
from ..engine.executor import Plan, Ready
from ..training.fit_loop import Bound, FitLoop, Halt, bind
from .comm import check_agreement
from .fusion import DEFAULT_BUCKET_BYTES, GradientReducer, ReduceRound
from .replication import ensure_delivery
from .shards import global_length, shard_order, shard_range, shard_rows

log = logging.getLogger("kernelflow.jobs")

RUN, PAUSE, STOP, INTERRUPT = 0, 1, 2, 3
_SEED_MASK = (1 << 64) - 1
_HALT_CODE = {"stopped": STOP, "interrupted": INTERRUPT}


@dataclass
class TrainSplit:
    """Where the train op is cut: gradient tensors (one per updated variable) and batch-written variables."""

    grads: list[Tensor]
    grad_vars: list[str]
    averaged: list[str] = field(default_factory=list)


def _walk(roots: list[Tensor]) -> list[Tensor]:
    seen: dict[int, Tensor] = {}
    stack = list(roots)
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen[id(t)] = t
        stack.extend(t.inputs)
        stack.extend(t.control_inputs)
    return sorted(seen.values(), key=lambda t: t.index)


def split_train_op(train: Tensor) -> TrainSplit:
    """The gradients the optimizer updates under ``train`` consume, and the batch-written variables.

    Raises:
        InvalidArgumentError: ``train`` applies no optimizer update (nothing to all-reduce).
    """
    nodes = _walk([train])
    grads, grad_vars, seen = [], [], set()
    averaged = []
    for n in nodes:
        if not n.op.mutates:
            continue
        if "grad" in n.op.inputs:
            gr = n.inputs[n.op.inputs.index("grad")]
            if id(gr) not in seen:
                seen.add(id(gr))
                grads.append(gr)
                grad_vars.append(n.inputs[0].name)
        else:
            var = n.inputs[0]
            if var.dtype in FLOATING and any(t.op is placeholder_op for t in _walk(list(n.inputs[1:]))):
                averaged.append(var.name)
    if not grads:
        raise InvalidArgumentError(f"fit(replicas=...): train op '{train.name}' applies no optimizer update "
                                   "(kf.optim ... minimize / apply_gradients); there are no gradients to all-reduce",
                                   node=train.name)
    return TrainSplit(grads, grad_vars, sorted(set(averaged)))


def check_start(world: Any, spec: JobSpec, b: Bound) -> None:
    """What ``job.start`` / ``job.resume`` checks for a data-parallel spec, so that the caller hears it.

    Raises:
        InvalidArgumentError: ``replicas`` does not fit the world, or the train op has no optimizer update.
        UnavailableError: the world is broken (a rank died); it must be restarted first.
    """
    if spec.replicas not in ("all", world.size):
        raise InvalidArgumentError(f"fit: replicas={spec.replicas!r} but the world has {world.size} rank(s); give "
                                   "replicas='all' (or start the world with that many ranks)")
    split_train_op(b.session.graph[spec.train_op])
    ensure_delivery(world, "fit(replicas=...)")


def ready_order(plan: Plan, k: int) -> list[int]:
    """Fetches ``0..k-1`` of ``plan`` in the order its kernels make them (ties: fetch order)."""
    at = plan.ready_steps(range(k))
    return sorted(range(k), key=lambda i: (at[i], i))


def reduce_gradients(plan: Plan, batch: list[Any], reducer: GradientReducer, k: int, what: str, scale: float,
                     overlap: bool, events: list | None = None,
                     control: Any = None) -> tuple[list[Any], Callable[[], list[Any]]]:
    """Run ``plan`` (its first ``k`` fetches are the gradients) and sum ``scale *`` gradients over the ranks.

    With ``overlap``, each bucket's all-reduce starts while the plan still runs, as soon as the
    executor has made the bucket's gradients; otherwise all of them after the plan. ``events``
    (if given) records ``("ready", i)``, ``("start", bucket)`` and ``("done",)`` (the plan
    returned) in the order they happen.

    Returns:
        (the plan's outputs, ``finish``): ``finish()`` waits for the collectives (those not yet
        started start first) and returns the sums as views of the fusion buffers. Call it
        outside the graph's lock: the wait is the communication the backward pass did not hide.
    """
    if not overlap:
        out = plan.run(batch, control)
        if events is not None:
            events.append(("done",))
        return out, lambda: reducer.reduce(out[:k], what, scale=scale)
    rnd: ReduceRound = reducer.begin(what, scale, events)

    def ready(i: int, value: Any) -> None:
        if events is not None:
            events.append(("ready", i))
        rnd.add(i, value)

    out = plan.run(batch, control, ready=Ready(range(k), ready))
    if events is not None:
        events.append(("done",))
    return out, rnd.finish


def overlap_share(events: list, buckets: int) -> float:
    """The share of the buckets whose all-reduce started before the last gradient was made."""
    last = max((j for j, e in enumerate(events) if e[0] == "ready"), default=-1)
    early = sum(1 for e in events[:last] if e[0] == "start")
    return early / buckets if buckets else 0.0


class ReplicaJob:
    """The follower-side stand-in of a `Job`: a step counter and the spec, nothing persisted."""

    def __init__(self, job_id: str, spec: JobSpec):
        self.id = job_id
        self.spec = spec
        self.step = 0
        self.failing_step = 0
        self.request: str | None = None
        self.steps_per_s: float | None = None

    def can_checkpoint(self) -> bool:
        return False

    def note_rate(self, steps_per_s: float | None, batch_size: int) -> None:
        self.steps_per_s = steps_per_s


class DataParallelLoop(FitLoop):
    """One rank's side of a data-parallel job (rank 0: the real `Job`; others: a `ReplicaJob`).

    Args:
        job: the job (rank 0) or its replica (followers).
        b: the spec bound on this rank's service.
        world: the world (`kernelflow.runtime_server.distributed.world.World`).
        leader: rank 0's command stream (None on followers and in a one-rank world).
        bucket_bytes: the fusion threshold of the gradient all-reduce.
    """

    def __init__(self, job: Any, b: Bound, world: Any, leader: Any = None, bucket_bytes: int = 16 << 20):
        super().__init__(job, b)
        self.world = world
        self.comm = world.data
        self.leader = leader
        self.is_front = world.rank == 0
        self.bucket_bytes = bucket_bytes
        g = b.session.graph
        self.split = split_train_op(g[job.spec.train_op])
        self.timings: dict[str, float] = {"compute_s": 0.0, "comm_s": 0.0, "steps": 0, "overlap": 0.0}
        self.sharded = bool(getattr(world, "shard_datasets", False)) and world.size > 1

    # ----------------------------------------------------------------- set-up
    def _facts(self) -> dict[str, Any]:
        b, spec = self.b, self.job.spec
        return {"job": self.job.id, "graph": spec.graph, "version": b.session.graph.version,
                "grads": [[v, t.name, list(t.shape), t.dtype] for v, t in zip(self.split.grad_vars, self.split.grads)],
                "buckets": self.reducer.signature(), "overlap": self.overlap,
                "averaged": self.split.averaged, "total_steps": b.total_steps, "steps_per_epoch": b.steps_per_epoch,
                "data": [b.data.name, global_length(b.data), sorted(b.columns)], "sharded": self.sharded,
                "bind_error": None}

    def _plans(self) -> None:
        s, b = self.b.session, self.b
        grad_names = [t.name for t in self.split.grads]
        with s.lock:
            try:
                # with the runtime's compiler: the updates of all variables are one kernel call (update groups)
                self.apply_plan = Plan(s, [s.graph[self.job.spec.train_op]], self.split.grads, compiler=s.compiler)
                self.apply_feeds_batch = False
            except InvalidArgumentError:  # the update also reads the batch (e.g. batch-norm statistics)
                feeds = self.split.grads + [s.graph[n] for n in b.feed_names]
                self.apply_plan = Plan(s, [s.graph[self.job.spec.train_op]], feeds, compiler=s.compiler)
                self.apply_feeds_batch = True
            grad_plan = s.plan(grad_names, b.feed_names)
        self.grad_names = grad_names
        specs = [(t.name, tuple(t.shape), t.dtype) for t in self.split.grads]
        order = ready_order(grad_plan, len(grad_names))  # buckets fill as the backward pass makes them
        self.grad_places = [s.placement(t) for t in self.split.grads]
        on_gpu = any(p.backend != "numpy" for p in self.grad_places)
        if on_gpu and self.world.device_comm is not None:  # NCCL on the device buffers, never via the host
            import cupy

            with cupy.cuda.Device(self.grad_places[0].index):
                self.reducer = GradientReducer(self.world.device_comm, specs, self.bucket_bytes, xp=cupy, order=order)
        else:  # MPI on host buffers (device gradients are copied to the host and back)
            self.reducer = GradientReducer(self.comm, specs, self.bucket_bytes, order=order)
        self.overlap = self.comm.size > 1 and len(self.reducer.buckets) > 1
        self.events: list = []  # the last step's ("ready", i) / ("start", bucket) / ("done",) in order
        avg = [(n, tuple(s.graph[n].shape), s.graph[n].dtype) for n in self.split.averaged]
        self.avg_reducer = GradientReducer(self.comm, avg, self.bucket_bytes) if avg else None

    def _sync_start(self) -> None:
        """Agree on what runs, then take rank 0's step and variables."""
        check_agreement(self.comm, self._facts(), f"job {self.job.id}")
        step = np.array([self.job.step], np.int64)
        self.comm.broadcast(step, 0, f"job {self.job.id}: start step")
        self.job.step = int(step[0])
        s = self.b.session
        with s.lock:
            for name in sorted(s.variables):
                a = s.variables[name]
                if isinstance(a, np.ndarray) and a.flags.c_contiguous:
                    self.comm.broadcast(a, 0, f"job {self.job.id}: variable '{name}'")
                else:
                    host = np.ascontiguousarray(to_host(a))
                    self.comm.broadcast(host, 0, f"job {self.job.id}: variable '{name}'")
                    s.variables[name] = s._fresh_storage(s.graph[name], host)

    # ----------------------------------------------------------------- the loop
    def run(self) -> None:
        """All steps of this rank; Halt ends it stopped/interrupted, a collective failure interrupted."""
        if not self.is_front:
            self._run()
            return
        spec = self.job.spec
        if spec.replicas not in ("all", self.world.size):
            raise InvalidArgumentError(f"fit: replicas={spec.replicas!r} but the world has {self.world.size} rank(s); "
                                       "give replicas='all' (or start the world with that many ranks)")
        ensure_delivery(self.world, f"job {self.job.id}")
        lock = world_job_lock()
        while not lock.acquire(timeout=0.2):  # another data-parallel job holds the world
            if self.job.request in ("stop", "interrupt"):
                raise Halt("stopped" if self.job.request == "stop" else "interrupted")
        try:
            if self.leader is not None:
                with self.leader.order_lock:  # no replicated change of the graph slips in between
                    self.leader.active_graphs[spec.graph] = self.job.id
                    self.leader.send(["job.replica", self.job.id, spec.to_map()])
            self._run()
        finally:
            if self.leader is not None:
                self.leader.active_graphs.pop(spec.graph, None)
            lock.release()

    def _run(self) -> None:
        try:
            self._plans()
            self._sync_start()
            self._steps()
        except (DeadlineExceededError, UnavailableError) as e:
            log.error("job %s: rank %d: %s; the job is interrupted (resume it after restarting the world)",
                      self.job.id, self.world.rank, e)
            if self.leader is not None:
                self.leader.find_lost()  # names the dead rank(s) in rt.info()["world"]["lost"]
            raise Halt("interrupted") from e

    def _control(self, is_log: bool) -> tuple[int, int, bool]:
        word = np.zeros(3, np.int64)
        what = f"job {self.job.id}: control"
        if self.is_front:
            job = self.job
            if job.request is not None:
                if job.request == "pause":
                    word[:] = (PAUSE, job.step, 0)
                    self.comm.broadcast(word, 0, what)
                try:
                    job.boundary()
                except Halt as h:
                    word[:] = (_HALT_CODE[h.status], job.step, 0)
                    self.comm.broadcast(word, 0, what)
                    raise
            word[:] = (RUN, job.step, int(is_log))
            self.comm.broadcast(word, 0, what)
            return RUN, job.step, is_log
        while True:  # a follower waits as long as rank 0 takes between steps (validation, pauses)
            self.comm.broadcast(word, 0, what, timeout_s=math.inf)
            code = int(word[0])
            if code == PAUSE:
                continue
            if code in (STOP, INTERRUPT):
                raise Halt("stopped" if code == STOP else "interrupted")
            if int(word[1]) != self.job.step:
                raise FailedPreconditionError(f"job {self.job.id}: rank 0 is at step {int(word[1])}, rank "
                                              f"{self.world.rank} at step {self.job.step}")
            return code, int(word[1]), bool(word[2])

    def _steps(self) -> None:
        job, b, spec = self.job, self.b, self.job.spec
        data, session, comm = b.data, b.session, self.comm
        spe, total, bs, n = b.steps_per_epoch, b.total_steps, spec.batch_size, global_length(data)
        rank, size = self.world.rank, self.world.size
        # sharded: rank 0 holds the whole dataset and uses shard 0's rows; a follower holds its shard
        base = shard_rows(n, rank, size) if self.sharded and data.meta.get("shard") is None else None
        n_local = len(base) if base is not None else data.length
        last_ckpt = time.monotonic()
        cached_epoch, rows = -1, None
        mark_t, mark_step = time.monotonic(), job.step
        k = len(self.grad_names)
        while job.step < total:
            s = job.step
            step_no = s + 1
            want_log = bool(self.log_every and b.metric_names and (step_no % self.log_every == 0 or step_no == total))
            _, _, is_log = self._control(want_log)
            epoch, pos = divmod(s, spe)
            if epoch != cached_epoch:
                if self.sharded:
                    local = shard_order(spec.seed, epoch, rank, n_local, spec.shuffle)
                    order = base[local] if base is not None else (local if spec.shuffle else None)
                else:
                    order = np.random.default_rng([spec.seed, epoch]).permutation(n) if spec.shuffle else None
                rows, cached_epoch = data.epoch_rows(order, self.devices), epoch
            lo = pos * bs
            m = min(lo + bs, n) - lo
            if self.sharded:  # the epoch interleaves the ranks' shuffled shards (shards.py)
                r_lo, r_hi = shard_range(lo, m, rank, size)
            else:
                r_lo, r_hi = lo + m * rank // size, lo + m * (rank + 1) // size
            n_r = r_hi - r_lo
            is_img = bool(self.is_front and self.img_every and (step_no % self.img_every == 0 or step_no == total))
            job.failing_step = step_no
            t0 = time.perf_counter()
            batch = data.gather(b.columns, rows, r_lo, r_hi)
            for i, place in enumerate(b.feed_places):
                if place is not None:
                    batch[i] = self.devices.to_device(batch[i], place)
            fetch = self.grad_names + (b.log_fetch[1:] if is_log else []) + (b.image_fetch if is_img else [])
            what = f"job {job.id} step {step_no}: gradients"
            events: list = []
            if n_r > 0:
                with session.lock, session.keyed_random((spec.seed & _SEED_MASK, rank, step_no)):
                    out, finish = reduce_gradients(session.plan(fetch, b.feed_names), batch, self.reducer, k,
                                                   what, n_r, self.overlap, events)
            else:  # a last batch smaller than the world: this rank adds nothing (weight 0)
                out = [np.zeros(t.shape, t.dtype) for t in self.split.grads] + [0.0] * (len(fetch) - k)
                events.append(("done",))
                finish = partial(self.reducer.reduce, out[:k], what, scale=0)
            t1 = time.perf_counter()  # with overlap, [t0, t1] includes the collectives the backward pass hid
            summed = finish()
            t2 = time.perf_counter()
            self.events = events
            self.timings["overlap"] = overlap_share(events, len(self.reducer.buckets))
            inv = 1.0 / m
            for i, a in enumerate(summed):
                a *= a.dtype.type(inv)
                if self.grad_places[i].backend != "numpy" and isinstance(a, np.ndarray):
                    summed[i] = self.devices.to_device(a, self.grad_places[i])
            with session.lock:
                self.apply_plan.run(summed + (batch if self.apply_feeds_batch else []))
                if self.avg_reducer is not None:
                    self._average_batch_written(n_r, m, step_no)
            t3 = time.perf_counter()
            comm_s = (t2 - t1) + (t3 - t2 if self.avg_reducer is not None else 0.0)
            self.timings["compute_s"] += (t1 - t0) + (t3 - t2)
            self.timings["comm_s"] += t2 - t1
            self.timings["steps"] += 1
            job.step = step_no
            if is_log:
                vals = [float(to_host(v)) * n_r for v in out[k:k + len(b.metric_names)]]
                mine = np.array([n_r, t3 - t0, comm_s, self.timings["overlap"], *vals], np.float64)
                table = comm.allgather(mine, f"job {job.id} step {step_no}: metrics")
                if self.is_front:
                    self._log_world(step_no, table, m)
            if not self.is_front:
                continue
            now = time.monotonic()
            if now - mark_t >= (0.5 if job.steps_per_s else 0.05) or step_no == total:
                job.note_rate((step_no - mark_step) / (now - mark_t) if now > mark_t else None, bs)
                mark_t, mark_step = now, step_no
            if is_img:
                self._images(step_no, out[len(fetch) - len(b.image_fetch):])
            if self.hist_every and (step_no % self.hist_every == 0 or step_no == total):
                self._histograms(step_no)
            if self.val_every and (step_no % self.val_every == 0 or step_no == total):
                self._validate(step_no)
            if self.ckpt_every_s is not None and time.monotonic() - last_ckpt >= self.ckpt_every_s:
                job.checkpoint("periodic")
                last_ckpt = time.monotonic()

    def _average_batch_written(self, n_r: int, m: int, step_no: int) -> None:
        s = self.b.session
        assert self.avg_reducer is not None
        vals = [np.asarray(to_host(s.variables[n])) for n in self.split.averaged]
        summed = self.avg_reducer.reduce(vals, f"job {self.job.id} step {step_no}: batch-written variables",
                                         scale=n_r)
        for name, a in zip(self.split.averaged, summed):
            s.variables[name][...] = a * a.dtype.type(1.0 / m)

    def _log_world(self, step: int, table: np.ndarray, m: int) -> None:
        names = self.b.metric_names
        metrics = {k: float(table[:, 4 + i].sum() / m) for i, k in enumerate(names)}
        self._scalars(step, metrics)
        world = {}
        for r in range(table.shape[0]):
            step_s, comm_s = float(table[r, 1]), float(table[r, 2])
            world[f"world/rank{r}_step_ms"] = step_s * 1e3
            world[f"world/rank{r}_comm_share"] = comm_s / step_s if step_s > 0 else 0.0
            world[f"world/rank{r}_overlap"] = float(table[r, 3])
        self.job.add_record({"kind": "scalars", "step": step, "epoch": round(step / self.b.steps_per_epoch, 6),
                             "wall_time": time.time(), "values": world})


def run_replica(service: Any, world: Any, job_id: str, spec_map: dict, bucket_bytes: int = 16 << 20) -> str:
    """A follower's side of data-parallel job ``job_id``; returns how it ended."""
    spec = JobSpec.from_map(spec_map)
    job = ReplicaJob(job_id, spec)
    try:
        b = bind(service.graphs, service.datasets, spec)
        loop = DataParallelLoop(job, b, world, None, bucket_bytes)
    except Exception as e:  # tell rank 0 in the agreement check, which then fails everywhere
        log.error("job %s: rank %d cannot run it: %s", job_id, world.rank, e)
        try:
            check_agreement(world.data, {"job": job_id, "bind_error": f"{type(e).__name__}: {e}"}, f"job {job_id}")
        except Exception:
            pass
        return "failed"
    try:
        loop.run()
        status = "completed"
    except Halt as h:
        status = h.status
    except Exception as e:
        log.error("job %s failed on rank %d at step %d: %s", job_id, world.rank, job.failing_step, e)
        status = "failed"
    log.info("job %s: rank %d %s at step %d", job_id, world.rank, status, job.step)
    return status


_world_job_lock = threading.Lock()


def world_job_lock() -> threading.Lock:
    """One data-parallel job at a time in a world: their collectives share one communicator."""
    return _world_job_lock


class DataParallel:
    """What the JobManager needs for ``replicas`` jobs (handed to it by the service).

    Args:
        world: the world of ranks.
        fusion_bytes: the fusion threshold of the gradient all-reduce.
    """

    def __init__(self, world: Any, fusion_bytes: int = DEFAULT_BUCKET_BYTES):
        self.world = world
        self.leader: Any = None   # rank 0's command stream, once there is one
        self.fusion_bytes = fusion_bytes

    def check_start(self, spec: JobSpec, b: Bound) -> None:
        """See `check_start`."""
        check_start(self.world, spec, b)

    def make_loop(self, job: Any, b: Bound) -> DataParallelLoop:
        return DataParallelLoop(job, b, self.world, self.leader, self.fusion_bytes)
