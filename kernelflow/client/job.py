"""`Job`: a handle on a training job that runs on the runtime; `fit` starts one (``g.fit``),
`attach_job` re-attaches to one by id (``rt.job``) from any client, with its full history.

The client keeps one mirror of each job's history per connection, filled by ``job.records``
calls and by ``job.records`` notifications once subscribed, a page (`PAGE_RECORDS`) at a time.
Both carry the index of their first record, so the mirror takes each record once whatever order
they arrive in. The mirror holds only the newest `MIRROR_RECORDS` records (``job.mirror_records``);
``job.records(start, stop)`` and a new subscriber's history so far ask the runtime for older ones
again, page by page. ``job.history``, ``histograms``, ``image_history``, ``audio`` and ``text``
read each record once, into the mirror's `kernelflow.client.digest.Digest`: a second access pages
nothing again. Like the runtime, the mirror keeps the pixels of only the newest ``image_keep``
image records per name.

Contents: Job, fit, attach_job (the mirror: `kernelflow.client.mirror`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DeadlineExceededError, InvalidArgumentError, KernelflowError, NotFoundError
from ..graph.ir import Tensor
from ..protocol.jobspec import (
    FIT_OPTIONS,
    PAGE_RECORDS,
    JobSpec,
)
from .mirror import Mirror
from .notebook import live_sleep

if TYPE_CHECKING:
    from .graph import RemoteGraph
    from .runtime import Runtime

log = logging.getLogger("kernelflow.client")

ENDED = ("completed", "stopped", "failed", "interrupted")
_PROGRESS_KEYS = ("step", "epoch", "epochs", "total_steps", "steps_per_epoch", "examples_per_s", "steps_per_s",
                  "elapsed_s", "eta_s")


class _Streams:
    """The mirrors of one connection, and its ``job.records`` notification handler."""

    def __init__(self, runtime: Runtime):
        self.transport = runtime._transport
        self.mirrors: dict[str, Mirror] = {}
        self.lock = threading.Lock()
        self.listening = False

    def mirror(self, job_id: str) -> Mirror:
        with self.lock:
            m = self.mirrors.get(job_id)
            if m is None:
                m = self.mirrors[job_id] = Mirror()
            return m

    def listen(self) -> None:
        with self.lock:
            if self.listening:
                return
            self.listening = True
        self.transport.on_notification("job.records", self._on_records)
        if hasattr(self.transport, "on_reconnect"):
            self.transport.on_reconnect(self._resubscribe)

    def _resubscribe(self) -> None:
        """Subscriptions live on a connection: after a reconnect, ask again for every subscribed job.

        The stream starts where the mirror ends: the answer carries the first page of what it
        lacks, notifications the rest.
        """
        with self.lock:
            mirrors = [(job_id, m) for job_id, m in self.mirrors.items() if m.subscribed]
        for job_id, m in mirrors:
            try:
                r = self.transport.call("job.subscribe", [job_id, m.n, PAGE_RECORDS])
            except KernelflowError as e:
                log.warning("re-subscribing to job %s after a reconnect failed: %s", job_id, e)
                continue
            m.status = r["status"]
            m.apply(int(r["start"]), list(r["records"]))

    def _on_records(self, params: list) -> None:
        job_id, start, records, status = params
        m = self.mirrors.get(job_id)
        if m is not None:
            if status:
                m.status = status
            m.apply(int(start), list(records))


_STREAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STREAMS_LOCK = threading.Lock()


def _streams(runtime: Runtime) -> _Streams:
    with _STREAMS_LOCK:
        s = _STREAMS.get(runtime._transport)
        if s is None:
            s = _STREAMS[runtime._transport] = _Streams(runtime)
        return s


class JobStatus(str):
    """A job's status word (``"running"``, ...); ``job.status`` reads it, and ``job.status()`` works
    too, like ``job.pause()`` / ``job.resume()`` / ``job.stop()``."""

    def __call__(self) -> str:
        """The status word itself (``job.status()``)."""
        return str(self)


class Job:
    """A training job on the runtime. Made by ``g.fit(...)`` or ``rt.job(name_or_id)``.

    A job also reads like its status map as last heard (``job["status"]``, ``job.get("step")``),
    which is what ``rt.jobs()`` returned before it returned handles.

    Attributes:
        id: the job's id on the runtime.
        runtime: the `Runtime` it was reached through.
    """

    def __init__(self, runtime: Runtime, status: dict):
        self.runtime = runtime
        self.id: str = status["id"]
        self._streams = _streams(runtime)
        self._m = self._streams.mirror(self.id)
        self._m.status = status
        self._mine: list[Callable] = []

    def __repr__(self) -> str:
        st = self._m.status
        return (f"<kf.Job {self.id} '{st.get('name')}' on graph '{st.get('graph')}': {st.get('status')}, step "
                f"{st.get('step')}/{st.get('total_steps')}>")

    def __getitem__(self, key: str) -> Any:
        """A field of the status map as last heard (no request): ``job["status"]``, ``job["step"]``."""
        return self._m.status[key]

    def get(self, key: str, default: Any = None) -> Any:
        """A field of the status map as last heard, or ``default``."""
        return self._m.status.get(key, default)

    def _repr_html_(self) -> str:
        from .joblist import JobList

        return JobList([self])._repr_html_()

    # ----------------------------------------------------------------- status
    def refresh(self) -> dict:
        """The job's status map, fresh from the runtime."""
        __tracebackhide__ = True  # noqa: F841
        st = self.runtime.call("job.status", [self.id])
        self._m.status = st
        return st

    @property
    def last_status(self) -> dict:
        """The status map as this client last heard it (no request): from the last call, or from
        the last ``job.records`` notification while subscribed. Safe inside subscribe callbacks."""
        return dict(self._m.status)

    @property
    def name(self) -> str:
        """The job's name (``g.fit(..., name=...)``; its id when it has none)."""
        return self._m.status.get("name") or self.id

    @property
    def graph(self) -> str:
        """Name of the graph the job trains."""
        return self._m.status["graph"]

    @property
    def status(self) -> JobStatus:
        """queued, running, paused, completed, stopped, failed or interrupted (fresh from the runtime;
        ``job.status()`` works too)."""
        return JobStatus(self.refresh()["status"])

    @property
    def error(self) -> dict | None:
        """For a failed job: ``{"type", "message", "step", "node", "source"}``; else None."""
        return self.refresh()["error"]

    @property
    def progress(self) -> dict:
        """``{"step", "epoch", "epochs", "total_steps", "steps_per_epoch", "examples_per_s",
        "steps_per_s", "elapsed_s", "eta_s"}`` (rates and eta None until measured)."""
        st = self.refresh()
        return {k: st.get(k) for k in _PROGRESS_KEYS}

    @property
    def metrics(self) -> dict[str, float]:
        """The latest value of every metric."""
        return dict(self.refresh()["metrics"])

    # ----------------------------------------------------------------- history
    def _pages(self, start: int, stop: int | None = None) -> Iterator[dict]:
        """``job.records`` answers from ``start``, a page each, up to ``stop`` (None: the newest)."""
        while stop is None or start < stop:
            limit = PAGE_RECORDS if stop is None else min(PAGE_RECORDS, stop - start)
            r = self.runtime.call("job.records", [self.id, start, limit])
            self._m.status = r["status"]
            yield r
            nxt = int(r.get("next", int(r["start"]) + len(r["records"])))
            if not r.get("more") or nxt <= start:
                return
            start = nxt

    def _catch_up(self) -> None:
        """Bring the mirror up to the runtime's newest record, page by page (a mirror nobody
        subscribed to starts at its bound below the newest)."""
        m = self._m
        known = int(m.status.get("records") or 0)
        m.skip_to(known - m.max_records)
        for r in self._pages(m.n):
            m.apply(int(r["start"]), list(r["records"]))

    def _chunks(self, start: int = 0, stop: int | None = None) -> Iterator[list[dict]]:
        """Records ``[start, stop)`` in order, in chunks: those below the mirror read back from the
        runtime, the others from the mirror."""
        m = self._m
        pos = start
        while True:
            with m.lock:
                end = m.n if stop is None else min(stop, m.n)
                if pos >= end:
                    return
                if pos >= m.base:
                    yield m.records[pos - m.base:end - m.base]
                    return
                below = min(end, m.base)
            for r in self._pages(pos, below):
                recs = list(r["records"])[:below - pos]
                if not recs:
                    return
                yield recs
                pos += len(recs)

    def records(self, start: int = 0, stop: int | None = None) -> list[dict]:
        """The job's records ``[start, stop)`` (history indices; stop None: the newest), in order.

        The client mirrors only the newest ``mirror_records`` records of a job; older ones are read
        back from the runtime (page by page) for this call and not kept.

        Raises:
            InvalidArgumentError: ``start`` or ``stop`` not an integer >= 0.
        """
        for what, v in (("start", start), ("stop", stop)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise InvalidArgumentError(f"job.records: {what} must be an integer >= 0; got {v!r}")
        self._catch_up()
        out: list[dict] = []
        for chunk in self._chunks(start, stop):
            out.extend(chunk)
        return out

    @property
    def mirror_records(self) -> int:
        """How many of the newest records this client keeps in memory for the job (default
        `MIRROR_RECORDS`); setting it trims the mirror. Older records are read back when asked for."""
        return self._m.max_records

    @mirror_records.setter
    def mirror_records(self, n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise InvalidArgumentError(f"job.mirror_records must be an integer >= 1; got {n!r}")
        self._m.max_records = n
        self._m.trim()

    @property
    def mirrored(self) -> int:
        """How many records the client holds in memory for the job now (at most ``mirror_records``)."""
        return len(self._m.records)

    def fill_media(self) -> list[dict]:
        """Fetch the payloads that notifications left out and the runtime still keeps; returns the image
        and audio records that got theirs (oldest first; none, usually, and then no call is made).

        A notification carries the pixels (or samples) of only the newest record per name; the
        others come as stubs (``"images": None``). Subscribers that want every kept record (the
        training monitor's step sliders) call this off the notification thread.
        """
        gap = self._m.missing_images()
        if gap is None:
            return []
        filled = []
        for r in self._pages(gap, self._m.n):
            filled += self._m.fill_images(int(r["start"]), list(r["records"]))
        if filled:
            with self._m.digest.lock:
                self._m.digest.refill(self._m.record)
        return filled

    def _built(self) -> tuple[dict, dict, dict, dict, dict]:
        """(history, histograms, image_history, audio_history, text), from the mirror's `Digest`: the
        records it has not taken yet are read once (those older than the mirror from the runtime)."""
        self._catch_up()
        self.fill_media()
        m = self._m
        d = m.digest
        with d.lock:
            n = m.n
            if d.n < n:
                for chunk in self._chunks(d.n, n):
                    d.take(d.n, chunk, m.keep())
            return d.views()

    @property
    def history(self) -> dict[str, dict[str, np.ndarray]]:
        """Every logged metric: ``{name: {"step", "wall_time", "value"}}`` (numpy arrays, in step order)."""
        return self._built()[0]

    @property
    def histograms(self) -> dict[str, list[tuple[int, np.ndarray, np.ndarray]]]:
        """Histograms of the variables asked for: ``{name: [(step, bin_edges, counts), ...]}``."""
        return self._built()[1]

    @property
    def images(self) -> dict[str, tuple[int, np.ndarray]]:
        """The newest logged images of every name: ``{name: (step, uint8 array (N, H, W, C))}``."""
        return {k: v[-1] for k, v in self._built()[2].items()}

    @property
    def image_history(self) -> dict[str, list[tuple[int, np.ndarray]]]:
        """Every image record still kept (the newest ``image_keep`` per name): ``{name: [(step, images)]}``."""
        return self._built()[2]

    @property
    def audio(self) -> dict[str, tuple[int, np.ndarray, float]]:
        """The newest logged audio of every name: ``{name: (step, int16 PCM (clips, frames, channels),
        sample_rate)}``."""
        return {k: v[-1] for k, v in self._built()[3].items()}

    @property
    def audio_history(self) -> dict[str, list[tuple[int, np.ndarray, float]]]:
        """Every audio record still kept (the newest ``image_keep`` per name): ``{name: [(step, int16 PCM,
        sample_rate), ...]}``, in step order."""
        return self._built()[3]

    @property
    def text(self) -> dict[str, list[tuple[int, list[str]]]]:
        """Every logged text record: ``{name: [(step, [row strings]), ...]}``, in step order."""
        return self._built()[4]

    def history_frame(self) -> Any:
        """The history as a pandas DataFrame: one row per logged step (index ``step``), one column per
        metric, plus ``wall_time``."""
        import pandas as pd

        rows: dict[int, dict[str, float]] = {}
        for name, h in self.history.items():
            for s, w, v in zip(h["step"].tolist(), h["wall_time"].tolist(), h["value"].tolist()):
                row = rows.setdefault(s, {})
                row[name] = v
                row["wall_time"] = max(row.get("wall_time", w), w)
        df = pd.DataFrame.from_dict(rows, orient="index").sort_index()
        df.index.name = "step"
        return df

    # ----------------------------------------------------------------- control
    def _wait_while(self, statuses: tuple[str, ...], timeout: float | None, bar: Any = None) -> str:
        # In a notebook cell the wait handles widget messages (the monitor's Pause) as it sleeps.
        with live_sleep() as sleep:
            return self._wait_loop(statuses, timeout, bar, sleep)

    def _wait_loop(self, statuses: tuple[str, ...], timeout: float | None, bar: Any, sleep: Callable) -> str:
        __tracebackhide__ = True  # noqa: F841  (IPython: the user's frame raises, not this one)
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = 0.01
        while True:
            st = self.refresh()
            if bar is not None:
                _update_bar(bar, st)
            if st["status"] not in statuses:
                return st["status"]
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceededError(f"job {self.id} is still {st['status']} (step {st['step']}/"
                                            f"{st['total_steps']}) after {timeout} s")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            sleep(interval if left is None else min(interval, left))
            interval = min(interval * 1.5, 0.25)

    def monitor(self, *, smoothing: float = 0.6, max_points: int | None = None,
                redraw_interval_s: float = 0.1) -> Any:
        """A live `kernelflow.widgets.TrainingMonitor` of this job in a notebook; outside one (no
        running IPython kernel), the terminal progress bar of ``wait(progress=True)``.

        Args:
            smoothing: the charts' EMA weight (TensorBoard's slider), 0 to 1.
            max_points: points per series on screen (default: the monitor's, 2,000).
            redraw_interval_s: the least time between two redraws.

        Returns:
            The monitor widget, or the job's final status outside a notebook.
        """
        try:
            from ipykernel.kernelbase import Kernel

            in_kernel = Kernel.initialized()
        except ImportError:
            in_kernel = False
        if not in_kernel:
            return self.wait(progress=True)
        from ..widgets import TrainingMonitor  # lazily: the widget layer sits above the client

        extra = {} if max_points is None else {"max_points": max_points}
        return TrainingMonitor(self, smoothing=smoothing, redraw_interval_s=redraw_interval_s, **extra)

    def wait(self, timeout: float | None = None, progress: bool = False) -> str:
        """Block until the job is no longer queued or running; returns its status.

        In a notebook cell the widgets stay live meanwhile (jupyter-ui-poll): the monitor's Pause
        and Stop act during the wait (a pause ends it: it returns "paused"). Cells run meanwhile
        wait for this one.

        Args:
            timeout: seconds to wait at most (None: no limit).
            progress: show a live progress bar (tqdm) with the latest metrics.

        Raises:
            DeadlineExceededError: the job still runs after ``timeout`` seconds.
        """
        bar = None
        if progress:
            from tqdm.auto import tqdm

            st = self.refresh()
            bar = tqdm(total=st.get("total_steps"), initial=st.get("step") or 0, unit="step", desc=self.name)
        try:
            return self._wait_while(("queued", "running"), timeout, bar)
        finally:
            if bar is not None:
                bar.close()

    def pause(self, timeout: float | None = 60.0) -> str:
        """Pause at the next step boundary (the job's variables stay as they are); returns the status
        once the job has paused (a queued job pauses when its turn comes)."""
        self.runtime.call("job.pause", [self.id])
        return self._wait_while(("running",), timeout)

    def resume(self) -> str:
        """Resume a paused job, or an interrupted one (after a server restart) from its newest
        checkpoint: the same step counter and the same data order. Returns the status."""
        st = self.runtime.call("job.resume", [self.id])
        self._m.status = st
        return st["status"]

    def stop(self, timeout: float | None = 60.0) -> str:
        """Stop at the next step boundary (the job checkpoints when the runtime has a state dir);
        returns the final status once it has stopped."""
        self.runtime.call("job.stop", [self.id])
        return self._wait_while(("queued", "running", "paused"), timeout)

    def delete(self) -> None:
        """Forget this ended job on the runtime: its status and history (in the state dir too).

        Its checkpoints and TensorBoard event files stay. A running, paused or queued job raises
        FailedPreconditionError: stop it first.
        """
        self.runtime.call("job.delete", [self.id])
        with self._streams.lock:
            self._streams.mirrors.pop(self.id, None)

    # ----------------------------------------------------------------- streaming
    def subscribe(self, callback: Callable[[list[dict]], Any]) -> None:
        """Call ``callback(records)`` with the history so far (in pages of at most `PAGE_RECORDS`
        records when it is long; those older than the mirror are read back from the runtime), then
        with each batch of new records (at most every 100 ms), each record once, in order.

        A record is ``{"kind": "scalars", "step", "epoch", "wall_time", "values": {name: float}}`` or
        ``{"kind": "histogram", "step", "wall_time", "name", "edges", "counts"}`` or
        ``{"kind": "images", "step", "wall_time", "name", "images": uint8 (N, H, W, C) or None}`` (None:
        pixels not kept, or not sent since a newer record of the name came in the same batch). Callbacks run on
        the connection's notification thread (right after a reconnect, on the thread that reconnected):
        keep them short and do not call the runtime from them.
        """
        m = self._m
        self._streams.listen()
        with m.lock:
            need = not m.subscribed
            m.subscribed = True
        if need:
            try:
                self._catch_up()  # page by page; the subscription starts where the mirror ends
                r = self.runtime.call("job.subscribe", [self.id, m.n, PAGE_RECORDS])
            except BaseException:
                m.subscribed = False
                raise
            m.status = r["status"]
            m.apply(int(r["start"]), list(r["records"]))  # more: in notifications, a page each
        self.fill_media()  # the history handed over has the kept pixels, also on a live connection
        pos = 0  # the history so far: what is older than the mirror from the runtime, then the mirror
        while True:
            with m.lock:
                if pos >= m.base:
                    if m.records[pos - m.base:]:
                        callback(list(m.records[pos - m.base:]))
                    m.callbacks.append(callback)
                    self._mine.append(callback)
                    return
                below = m.base
            before = pos
            for chunk in self._chunks(pos, below):
                callback(chunk)
                pos += len(chunk)
            if pos == before:  # the runtime has none of them any more (the job was deleted)
                pos = below

    def unsubscribe(self, callback: Callable[[list[dict]], Any] | None = None) -> None:
        """Stop calling ``callback`` (None: every callback this handle subscribed)."""
        m = self._m
        with m.lock:
            for cb in [callback] if callback is not None else list(self._mine):
                if cb in m.callbacks:
                    m.callbacks.remove(cb)
                if cb in self._mine:
                    self._mine.remove(cb)
            last = m.subscribed and not m.callbacks
            if last:
                m.subscribed = False
        if last:
            self.runtime.call("job.unsubscribe", [self.id])


def _update_bar(bar: Any, st: dict) -> None:
    if st.get("total_steps") and bar.total != st["total_steps"]:
        bar.total = st["total_steps"]
    bar.n = st.get("step") or 0
    metrics = {k: f"{v:.4g}" for k, v in (st.get("metrics") or {}).items()}
    metrics["status"] = st["status"]
    bar.set_postfix(metrics, refresh=False)
    bar.refresh()


def attach_job(runtime: Runtime, name_or_id: str) -> Job:
    """``rt.job(name_or_id)``: a handle on an existing job, with its full history. A name that several
    jobs share means the newest of them.

    Raises:
        NotFoundError: no job has that id or name (the message lists the names there are).
    """
    __tracebackhide__ = True  # noqa: F841
    try:
        return Job(runtime, runtime.call("job.status", [name_or_id]))
    except NotFoundError:
        jobs = runtime.call("job.list", [])
        named = [j for j in jobs if j.get("name") == name_or_id]
        if not named:
            names = sorted({str(j.get("name") or j["id"]) for j in jobs})
            raise NotFoundError(f"no job '{name_or_id}' (by id or name) on {runtime.url}; jobs: "
                                f"{names or 'none'}") from None
        return Job(runtime, max(named, key=lambda j: (j.get("created") or 0.0, j["id"])))


def _node_name(graph: RemoteGraph, t: Any, what: str) -> str:
    if isinstance(t, Tensor):
        if t.graph is not graph:
            raise InvalidArgumentError(f"fit: {what} '{t.name}' belongs to graph '{t.graph.name}', not '{graph.name}'")
        return t.name
    if isinstance(t, str):
        return graph[t].name
    raise InvalidArgumentError(f"fit: {what} must be a tensor or a node name; got {type(t).__name__}")


def _dataset_name(d: Any, what: str) -> str:
    name = getattr(d, "name", d)
    if not isinstance(name, str):
        raise InvalidArgumentError(f"fit: {what} must be a Dataset or a dataset name; got {type(d).__name__}")
    return name


def fit_signature(with_self: bool = False) -> inspect.Signature:
    """`fit`'s signature with every job option spelled out (``batch_size=32``, ...) instead of
    ``**options``, so ``help(g.fit)`` and Jupyter's Shift-Tab show them (issue #14)."""
    base = inspect.signature(fit)
    params = [p for p in base.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    if with_self:
        params[0] = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    defaults = {f.name: f for f in dataclasses.fields(JobSpec)}
    named = {p.name for p in params}
    for name in FIT_OPTIONS:
        if name in named:  # metrics, histograms, images: fit's own arguments
            continue
        f = defaults[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type))
    return base.replace(parameters=params)


def fit(graph: RemoteGraph, train_op: Any, *, data: Any, feed: dict, metrics: dict | None = None,
        validation: tuple | None = None, histograms: list | None = None, images: dict | None = None,
        audio: dict | None = None, text: dict | None = None, **options: Any) -> Job:
    """Start a training job on the runtime (``g.fit``); returns a `Job` at once.

    The runtime runs the loop on its own thread: minibatches are cut (and shuffled, per epoch,
    from ``seed``) from the resident dataset on its device, each step runs ``train_op``, and
    metrics are fetched only every ``log_every`` steps.

    Args:
        graph: the graph to train.
        train_op: the op one step runs (e.g. ``opt.minimize(loss)``).
        data: the training `Dataset` (or its name).
        feed: ``{placeholder: array name}``: which dataset array feeds which node.
        metrics: ``{name: scalar tensor}`` logged every ``log_every`` steps (on that step's batch).
        validation: ``(dataset, {name: scalar tensor})``, evaluated over the whole dataset in batches
            (the mean of batch values weighted by batch size).
        histograms: variables whose value histograms are recorded every ``histogram_every`` steps.
        images: ``{name: image tensor}`` logged every ``image_every`` steps; see ``job.images``.
        audio: ``{name: waveform tensor}`` (float ``[batch, frames]`` or ``[batch, frames, channels]`` in
            [-1, 1], at ``audio_sample_rate`` samples/s) logged with the images; see ``job.audio``.
        text: ``{name: character-code tensor}`` (``[batch, length]`` ints, 0 = padding) logged with the
            images; see ``job.text``. In-graph summaries (``kf.summary.*``) are logged without being listed.
        **options: the other fields of `kernelflow.protocol.jobspec.JobSpec`, with its defaults and
            meanings: batch_size=32, epochs=None (1), steps=None, shuffle=True, seed=0, log_every=10,
            validate_every=None ("epoch" with validation), validation_batch_size=None,
            histogram_every=100, histogram_bins=30, image_every=100, image_max=16, image_keep=100,
            audio_sample_rate=16000, audio_max=4, summaries=True,
            checkpoint_every_s=60.0, keep_checkpoints=None, stop_on_nan=False,
            drop_remainder=False, name=None, replicas=None (``"all"``: data-parallel over every rank
            of a distributed runtime, ``batch_size`` being the global batch; docs/distributed.md).

    Returns:
        A `Job`.

    Raises:
        NotFoundError: an unknown dataset or node.
        InvalidArgumentError: an unknown option, a dataset array that cannot feed its node (dtype or
            shape, naming both), a non-scalar metric, bad numbers.

    Example:
        >>> job = g.fit(train, data=train_ds, feed={x: "x", y: "y"}, batch_size=64, epochs=10,
        ...             metrics={"loss": loss}, validation=(val_ds, {"val_accuracy": acc}))
        >>> job.wait(progress=True)
    """
    __tracebackhide__ = True  # noqa: F841
    unknown = sorted(k for k in options if k not in FIT_OPTIONS)
    if unknown:
        raise InvalidArgumentError(f"fit: unknown option(s) {unknown}; known: {sorted(FIT_OPTIONS)}")
    if not isinstance(feed, dict) or not feed:
        raise InvalidArgumentError("fit: feed must map placeholders to dataset array names, e.g. {x: 'x', y: 'y'}")
    for what, m in (("images", images), ("audio", audio), ("text", text)):
        if m is not None and not isinstance(m, dict):
            raise InvalidArgumentError(f"fit: {what} must map names to tensors, e.g. {{'samples': t}}; got "
                                       f"{type(m).__name__}")
    graph.sync()
    spec = JobSpec(graph=graph.name, train_op=_node_name(graph, train_op, "train_op"),
                   data=_dataset_name(data, "data"),
                   feed={_node_name(graph, k, "feed key"): str(v) for k, v in feed.items()},
                   metrics={str(k): _node_name(graph, v, f"metric '{k}'") for k, v in (metrics or {}).items()},
                   histograms=[_node_name(graph, v, "histogram") for v in (histograms or [])],
                   images={str(k): _node_name(graph, v, f"image '{k}'") for k, v in (images or {}).items()},
                   audio={str(k): _node_name(graph, v, f"audio '{k}'") for k, v in (audio or {}).items()},
                   text={str(k): _node_name(graph, v, f"text '{k}'") for k, v in (text or {}).items()},
                   **options)
    if validation is not None:
        if not (isinstance(validation, (tuple, list)) and len(validation) == 2 and isinstance(validation[1], dict)):
            raise InvalidArgumentError("fit: validation must be (dataset, {name: scalar tensor})")
        spec.validation_data = _dataset_name(validation[0], "validation dataset")
        spec.validation_metrics = {str(k): _node_name(graph, v, f"validation metric '{k}'")
                                   for k, v in validation[1].items()}
    spec.check()  # bad numbers fail here, before the wire (the runtime checks again)
    return Job(graph.runtime, graph.runtime.call("job.start", [spec.to_map()]))
