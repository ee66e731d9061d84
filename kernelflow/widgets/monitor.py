"""`TrainingMonitor`: a live notebook widget for training jobs (``job.monitor()``).

Records arrive on the client's notification thread (``Job.subscribe``); the callback only
queues them. A render thread of the monitor takes the queue at most ``1 / redraw_interval_s``
times per second, appends to the full series, and sends each changed chart's visible points
(at most ``max_points`` per series, min/max-preserving) in one held sync. The cell that
created the monitor is free meanwhile; the full history stays in ``job.history``.

Parent header (ipykernel >= 7): comm messages sent from a thread are tagged with the request
the kernel is serving (a running cell, else the last one); on a kernel that has none for a
thread, the render thread takes the parent of the cell that created the monitor.

Contents: TrainingMonitor, status_badge.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np

from ..errors import DeadlineExceededError, KernelflowError, UnavailableError
from .charts import HistogramPanel, MetricChart, Series, metric_group, series_color
from .downsample import MAX_POINTS
from .images import ImagePanel
from .media import AudioPanel, TextPanel

log = logging.getLogger("kernelflow.widgets.monitor")

ENDED = ("completed", "stopped", "failed", "interrupted")
BADGE_COLORS = {"queued": "#757575", "running": "#1565c0", "paused": "#ef6c00", "completed": "#2e7d32",
                "stopped": "#546e7a", "failed": "#c62828", "interrupted": "#6a1b9a", "disconnected": "#37474f"}
STATUS_POLL_S = 0.25   # the render thread reads the cached job status this often when no records come
IDLE_EXIT_S = 2.0      # once every job has ended, the render thread stops after this long without news
HEARTBEAT_S = 1.0      # with no news for this long, the render thread asks the runtime (a lost server shows)
# Redraws may take at most this share of one core: a slow redraw (many series, a busy kernel)
# stretches the interval. The kernel shares the machine with the training job on a laptop,
# where every percent of a core taken from the job's BLAS threads slows its steps.
REDRAW_CPU_SHARE = 0.01


def status_badge(status: str) -> str:
    """HTML of the coloured status badge."""
    color = BADGE_COLORS.get(status, "#757575")
    return (f'<span class="kf-badge kf-badge-{html.escape(status)}" style="background:{color};color:white;'
            f'padding:1px 8px;border-radius:8px;font-size:12px">{html.escape(status)}</span>')


def _hms(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _cached_status(job: Any) -> dict:
    """The job's status as the notification stream last reported it (no RPC)."""
    return job.last_status  # the client's mirror, refreshed by every job.records notification


class _JobHeader:
    """Name, badge, progress numbers and bar, and Pause / Resume / Stop for one job.

    Every part has a fixed width, so the buttons stay where they are whatever the state says.
    """

    def __init__(self, monitor: TrainingMonitor, job: Any, color: str):
        self.monitor, self.job = monitor, job
        self.title = widgets.HTML(layout=widgets.Layout(width="250px", overflow="hidden"))
        self.numbers = widgets.HTML(layout=widgets.Layout(width="400px", overflow="hidden"))
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="200px"))
        self.bar.style.bar_color = color
        self.pause = widgets.Button(description="Pause", icon="pause", layout=widgets.Layout(width="90px"))
        self.resume = widgets.Button(description="Resume", icon="play", layout=widgets.Layout(width="95px"))
        self.stop = widgets.Button(description="Stop", icon="stop", button_style="danger",
                                   layout=widgets.Layout(width="80px"))
        for b, cls in ((self.pause, "kf-pause"), (self.resume, "kf-resume"), (self.stop, "kf-stop")):
            b.add_class(cls)
        self.pause.on_click(lambda _: self.act("pause"))
        self.resume.on_click(lambda _: self.act("resume"))
        self.stop.on_click(lambda _: self.act("stop"))
        self.buttons = widgets.HBox([self.pause, self.resume, self.stop],
                                    layout=widgets.Layout(flex_flow="row nowrap", flex="0 0 auto"))
        self.buttons.add_class("kf-buttons")
        self.widget = widgets.HBox([self.title, self.bar, self.numbers, self.buttons],
                                   layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
        self.widget.add_class("kf-monitor-header")
        self.status: str | None = None
        self.connected = True
        self._st: dict = {}
        self._shown: tuple | None = None

    def act(self, action: str) -> None:
        """What a button does: pause, resume or stop the job on the runtime."""
        try:
            if action == "pause":
                self.job.pause(timeout=30)
            elif action == "resume":
                self.job.resume()
            else:
                self.job.stop(timeout=30)
            self.monitor.message.value = ""
            self.show(self.job.refresh())
        except KernelflowError as e:
            self.monitor.message.value = f'<span style="color:#c62828">{html.escape(f"{action}: {e}")}</span>'
        self.monitor._ensure_thread()

    def set_connected(self, connected: bool) -> None:
        """Show the job as reachable again, or the "disconnected" badge (numbers frozen, buttons off)."""
        if connected != self.connected:
            self.connected = connected
            self.show(self._st)

    def show(self, st: dict) -> None:
        self._st = st
        status = st.get("status", "?")
        step, total = st.get("step") or 0, st.get("total_steps")
        key = (status, self.connected, step, total, st.get("examples_per_s"), st.get("eta_s"),
               round(st.get("elapsed_s") or 0))
        if key == self._shown:
            return
        self._shown = key
        self.status = status
        rate = st.get("examples_per_s")
        epochs = st.get("epochs")
        parts = [f"step <b>{step}</b>" + (f" / {total}" if total else ""),
                 f"epoch {st.get('epoch', 0)}" + (f" / {epochs}" if epochs else "")]
        if status == "running" and self.connected:  # a rate and an ETA only while it runs (and we hear it)
            parts += [f"{rate:,.0f} ex/s" if rate else "– ex/s", f"elapsed {_hms(st.get('elapsed_s'))}",
                      f"ETA {_hms(st.get('eta_s'))}"]
        else:
            parts.append(f"elapsed {_hms(st.get('elapsed_s'))}")
        badge = status_badge(status) if self.connected else status_badge("disconnected")
        with self.widget.hold_sync():
            # one line each (no wrap): the row keeps its height, so the buttons do not move
            self.title.value = (f'<span style="white-space:nowrap"><b class="kf-job-name">'
                                f'{html.escape(str(st.get("name") or self.job.id))}</b> {badge}</span>')
            self.numbers.value = ('<span class="kf-numbers" style="white-space:nowrap">' + " · ".join(parts)
                                  + "</span>")
            self.bar.value = min(1.0, step / total) if total else 0.0
            on = self.connected
            self.pause.disabled = not on or status not in ("running", "queued")
            self.resume.disabled = not on or status not in ("paused", "interrupted")
            self.stop.disabled = not on or status not in ("running", "queued", "paused")


class TrainingMonitor(widgets.VBox):
    """A live view of one or more training jobs: header and controls per job, one chart per metric
    group, histograms, images, audio, text, and a CSV download.

    Args:
        jobs: a `Job` or a list of jobs (their curves overlay, with a legend).
        smoothing: initial weight of the debiased EMA (0 = raw values; TensorBoard's default 0.6).
        max_points: points per series on screen at most.
        redraw_interval_s: least time between two redraws (longer when a redraw costs more than
            `REDRAW_CPU_SHARE` of a core at that rate).
        live: start the render thread (False: only `flush` draws; for tests).

    Attributes:
        charts: ``{group: MetricChart}``.
        histograms: the `HistogramPanel`.
        images: the `ImagePanel` (hidden until an image record arrives).
        audio: the `AudioPanel` (playable clips; hidden until an audio record arrives).
        text: the `TextPanel` (hidden until a text record arrives).
        records_received: records handed to the monitor so far.
        redraws: redraws that sent data.
        delivery_threads: names of the threads records came on.

    Example:
        >>> job = g.fit(train, data=ds, feed={x: "x", y: "y"}, metrics={"loss": loss})
        >>> TrainingMonitor(job)   # or job.monitor()
    """

    def __init__(self, jobs: Any, *, smoothing: float = 0.6, max_points: int = MAX_POINTS,
                 redraw_interval_s: float = 0.1, live: bool = True):
        self.jobs: list[Any] = list(jobs) if isinstance(jobs, Sequence) else [jobs]
        if not self.jobs:
            raise ValueError("TrainingMonitor: give at least one job")
        self.max_points = max_points
        self.redraw_interval_s = redraw_interval_s
        self.charts: dict[str, MetricChart] = {}
        self.series: dict[tuple[int, str], Series] = {}
        self.histograms = HistogramPanel()
        self.images = ImagePanel()
        self.audio = AudioPanel()
        self.text = TextPanel()
        self.records_received = 0
        self.redraws = 0
        self.delivery_threads: set[str] = set()
        self._t0: dict[int, float] = {}
        self._pending: list[tuple[int, list[dict]]] = []
        self._stubbed: set[int] = set()       # jobs whose media records came without payload (fill_media)
        self._lock = threading.RLock()        # guards the series and the charts
        self._qlock = threading.Lock()        # guards the queue (the notification thread takes only this)
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._parent = _kernel_parent()
        self._callbacks: list[tuple[Any, Any]] = []
        self._last_news = self._last_probe = time.monotonic()

        self.headers = [_JobHeader(self, j, series_color(i, False)) for i, j in enumerate(self.jobs)]
        self.smoothing = widgets.FloatSlider(value=smoothing, min=0.0, max=0.99, step=0.01, description="smoothing",
                                             readout_format=".2f", continuous_update=False)
        self.ignore_outliers = widgets.Checkbox(value=False, description="ignore outliers", indent=False)
        self.log_scale = widgets.Checkbox(value=False, description="log scale", indent=False)
        self.x_axis = widgets.ToggleButtons(options=[("step", "step"), ("epoch", "epoch"), ("wall time", "wall")],
                                            value="step", style={"button_width": "86px"})
        self.reset_zoom = widgets.Button(description="reset zoom", icon="expand", layout=widgets.Layout(width="110px"))
        self.csv_button = widgets.Button(description="CSV", icon="download", tooltip="prepare a CSV download link",
                                         layout=widgets.Layout(width="80px"))
        self.csv_link = widgets.HTML()
        self.message = widgets.HTML()
        self.smoothing.observe(self._on_smoothing, "value")
        self.ignore_outliers.observe(lambda ch: self._for_charts(lambda c: c.set_outliers(ch["new"])), "value")
        self.log_scale.observe(lambda ch: self._for_charts(lambda c: c.set_log(ch["new"]), redraw=True), "value")
        self.x_axis.observe(lambda ch: self._for_charts(lambda c: c.set_x_by(ch["new"]), redraw=True), "value")
        self.reset_zoom.on_click(lambda _: self._for_charts(lambda c: c.reset_zoom()))
        self.csv_button.on_click(lambda _: self.make_csv_link())
        controls = widgets.HBox([self.smoothing, self.ignore_outliers, self.log_scale, self.x_axis, self.reset_zoom,
                                 self.csv_button, self.csv_link], layout=widgets.Layout(flex_flow="row wrap",
                                                                                        align_items="center"))
        self.chart_box = widgets.Box(layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([*[h.widget for h in self.headers], controls, self.message, self.chart_box,
                          self.histograms.widget, self.images.widget, self.audio.widget, self.text.widget])
        self.add_class("kf-monitor")
        for h, j in zip(self.headers, self.jobs):
            h.show(_cached_status(j))
        for i, job in enumerate(self.jobs):
            cb = self._callback(i)
            job.subscribe(cb)  # calls back at once with the history so far
            self._callbacks.append((job, cb))
        self.flush()
        if live:
            self._ensure_thread()

    # ----------------------------------------------------------------- records in
    def _callback(self, job_index: int) -> Any:
        def on_records(records: list[dict]) -> None:
            # the notification thread: queue and wake, nothing more
            self._last_news = time.monotonic()
            with self._qlock:
                self._pending.append((job_index, records))
                self.records_received += len(records)
                self.delivery_threads.add(threading.current_thread().name)
            self._wake.set()
        return on_records

    def _ingest(self) -> bool:
        with self._qlock:
            batches, self._pending = self._pending, []
        for job_index, records in batches:
            cols: dict[str, tuple[list, list, list, list]] = {}
            for r in records:
                kind = r.get("kind")
                if kind == "scalars":
                    self._t0.setdefault(job_index, float(r["wall_time"]))
                    for k, v in r["values"].items():
                        c = cols.setdefault(k, ([], [], [], []))
                        c[0].append(r["step"])
                        c[1].append(r["wall_time"])
                        c[2].append(np.nan if v is None else v)
                        c[3].append(r.get("epoch", np.nan))
                elif kind == "histogram":
                    self.histograms.add(self._key(job_index, r), r["step"], r["edges"], r["counts"])
                elif kind == "images" and r.get("images") is not None:
                    self.images.add(self._key(job_index, r), r["step"], r["images"])
                elif kind == "audio" and r.get("audio") is not None:
                    self.audio.add(self._key(job_index, r), r["step"], r["audio"], r["sample_rate"])
                elif kind in ("images", "audio"):
                    self._stubbed.add(job_index)  # a notification sends the payload of the newest per name only
                elif kind == "text":
                    self.text.add(self._key(job_index, r), r["step"], r["text"])
            for metric, (s, w, v, e) in cols.items():
                self._series(job_index, metric).extend(s, w, v, e)
        return bool(batches)

    def _fill_stubs(self) -> None:
        """Fetch the payloads of media records that came as stubs (not on the notification thread)."""
        jobs, self._stubbed = self._stubbed, set()
        for i in sorted(jobs):
            fill = getattr(self.jobs[i], "fill_media", None)
            if fill is None:
                continue
            try:
                records = fill()
            except Exception:  # a lost connection: the next stub asks again
                log.debug("training monitor: fetching %s's media failed", self.jobs[i].id, exc_info=True)
                continue
            if records:
                with self._qlock:
                    self._pending.append((i, records))

    def _key(self, job_index: int, r: dict) -> str:
        return r["name"] if len(self.jobs) == 1 else f"{self._job_name(job_index)}: {r['name']}"

    def _job_name(self, i: int) -> str:
        return str(_cached_status(self.jobs[i]).get("name") or self.jobs[i].id)

    def _series(self, job_index: int, metric: str) -> Series:
        s = self.series.get((job_index, metric))
        if s is None:
            s = self.series[(job_index, metric)] = Series(job_index, self._job_name(job_index), metric,
                                                          self.smoothing.value, self.max_points)
            group = metric_group(metric)
            chart = self.charts.get(group)
            if chart is None:
                chart = self.charts[group] = MetricChart(group, x_by=self.x_axis.value, log_y=self.log_scale.value,
                                                         ignore_outliers=self.ignore_outliers.value)
                self.chart_box.children = [*self.chart_box.children, chart.widget]
            chart.add(s, show_job=len(self.jobs) > 1)
        return s

    # ----------------------------------------------------------------- drawing
    def flush(self) -> int:
        """Take the queued records and redraw what changed, now; returns the series sent."""
        return self._draw(throttle=False)

    def _draw(self, throttle: bool) -> int:
        with self._lock:
            self._ingest()
            if self._stubbed:
                self._fill_stubs()
                self._ingest()
            sent = sum(c.redraw(self._t0) for c in self.charts.values())
            self.histograms.redraw()
            self.images.redraw(throttle=throttle)  # the render thread: new images at most once a second
            self.audio.redraw(throttle=throttle)
            self.text.redraw()
            for h, j in zip(self.headers, self.jobs):
                h.show(_cached_status(j))
            if sent:
                self.redraws += 1
            return sent

    def _for_charts(self, fn: Any, redraw: bool = False) -> None:
        with self._lock:
            for c in self.charts.values():
                fn(c)
            if redraw:
                for c in self.charts.values():
                    c.redraw(self._t0, force=True)

    def _on_smoothing(self, change: dict) -> None:
        with self._lock:
            for s in self.series.values():
                s.set_smoothing(change["new"])
            for c in self.charts.values():
                c.redraw(self._t0)

    # ----------------------------------------------------------------- the render thread
    def _ensure_thread(self) -> None:
        if self._closed or (self._thread is not None and self._thread.is_alive()):
            return
        self._thread = threading.Thread(target=self._run, name="kf-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        _adopt_parent(self._parent)
        last_draw = 0.0
        interval = self.redraw_interval_s
        quiet_since = time.monotonic()
        while not self._closed:
            woke = self._wake.wait(STATUS_POLL_S)
            if self._closed:
                return
            if woke:
                # coalesce: whatever arrives until the interval is up goes into the same redraw
                time.sleep(max(0.0, last_draw + interval - time.monotonic()))
                self._wake.clear()
            t_draw = time.thread_time()
            try:
                sent = self._draw(throttle=True)
            except Exception:
                log.error("training monitor: redraw failed", exc_info=True)
                sent = 0
            if sent:
                interval = max(self.redraw_interval_s, (time.thread_time() - t_draw) / REDRAW_CPU_SHARE)
            now = time.monotonic()
            if woke or sent:
                last_draw = quiet_since = now
            if now - max(self._last_news, self._last_probe) > HEARTBEAT_S:
                self._probe()
            ended = all(h.status in ENDED and h.connected for h in self.headers)
            if ended and now - quiet_since > IDLE_EXIT_S:
                self.flush()
                return

    def _probe(self) -> None:
        """Ask the runtime for each job's status: a failure to reach it shows the "disconnected"
        badge, the next success (the transport reconnects by itself, and re-subscribes) clears it."""
        self._last_probe = time.monotonic()
        lost = []
        for h, job in zip(self.headers, self.jobs):
            if h.status in ENDED and h.connected:
                continue
            try:
                st = job.refresh()
            except (UnavailableError, DeadlineExceededError) as e:
                lost.append(str(e))
                h.set_connected(False)
                continue
            except KernelflowError as e:  # reachable, but the job is not (deleted, a new runtime)
                self.message.value = f'<span style="color:#c62828">{html.escape(str(e))}</span>'
                h.set_connected(True)
                continue
            h.set_connected(True)
            h.show(st)
        text = ""
        if lost:
            text = (f'<span class="kf-connection" style="color:#c62828">lost the runtime ({html.escape(lost[0])}); '
                    f"retrying every {HEARTBEAT_S:g} s</span>")
        if text or "kf-connection" in self.message.value:
            self.message.value = text

    @property
    def connected(self) -> bool:
        """False while the runtime of some job cannot be reached (the header shows "disconnected")."""
        return all(h.connected for h in self.headers)

    def close(self) -> None:
        """Stop the render thread, unsubscribe from the jobs and close the widgets."""
        self._closed = True
        self._wake.set()
        for job, cb in self._callbacks:
            try:
                job.unsubscribe(cb)
            except KernelflowError:
                log.warning("training monitor: unsubscribe from %s failed", job.id, exc_info=True)
        self._callbacks = []
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for c in self.charts.values():
            c.figure.close()
        super().close()

    # ----------------------------------------------------------------- numbers out
    def csv_text(self) -> str:
        """Every logged value (full history, not the downsampled view) as CSV:
        ``job,metric,step,wall_time,value``."""
        out = io.StringIO()
        out.write("job,metric,step,wall_time,value\n")
        with self._lock:
            self._ingest()
            for (_, metric), s in sorted(self.series.items()):
                n = len(s.value)
                name = s.job_name.replace(",", " ")
                for st, w, v in zip(s.step.view[:n].tolist(), s.wall.view[:n].tolist(), s.value.view[:n].tolist()):
                    out.write(f"{name},{metric},{st},{w:.6f},{v!r}\n")
        return out.getvalue()

    def make_csv_link(self) -> str:
        """Fill ``csv_link`` with a "download CSV" link (a ``data:`` URI, so it needs no server)."""
        data = base64.b64encode(self.csv_text().encode()).decode()
        fname = "-".join(self._job_name(i) for i in range(len(self.jobs)))[:80] + ".csv"
        self.csv_link.value = (f'<a class="kf-csv" download="{html.escape(fname)}" '
                               f'href="data:text/csv;base64,{data}">download CSV</a>')
        return self.csv_link.value


def _kernel_parent() -> tuple[Any, dict] | None:
    """``(ident, parent)`` of the request the kernel is serving now (the cell creating the monitor)."""
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:
        return None
    if not Kernel.initialized():
        return None
    k = Kernel.instance()
    try:
        parent = k.get_parent()
        ident = k._shell_parent_ident.get() if hasattr(k, "_shell_parent_ident") else None
    except LookupError:
        return None
    return (ident, parent) if parent else None


def _adopt_parent(captured: tuple[Any, dict] | None) -> None:
    """In the render thread: when the kernel has no parent for this thread, use the creating cell's."""
    if captured is None:
        return
    from ipykernel.kernelbase import Kernel

    k = Kernel.instance()
    try:
        has = bool(k.get_parent().get("header"))
    except LookupError:
        has = False
    if not has:
        k.set_parent(captured[0], captured[1])
