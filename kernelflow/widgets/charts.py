"""The training monitor's bqplot charts: one `MetricChart` per metric group (``loss`` with
``val_loss``) and the `HistogramPanel` (latest histogram and percentile bands over time).

A `Series` holds one metric of one job in full (growing numpy buffers) with its smoothed
twin and downsampler; a chart draws at most ``max_points`` of each series.

Contents: Series, MetricChart, HistogramPanel, metric_group, PALETTE.
"""

from __future__ import annotations

import html
import math
import threading
from typing import Any

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from .downsample import Ema, GrowingArray, MinMaxDownsampler, histogram_percentiles, outlier_range
from .ticks import data_range, format_tick, ticks_for

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
HOVER_POINTS = 200  # hover markers per series: tooltips need a mark per point, lines have none
_VAL_PREFIXES = ("val_", "validation_")
X_LABELS = {"step": "step", "epoch": "epoch", "wall": "wall time (s)"}
FIG_MARGIN = {"top": 40, "bottom": 40, "left": 50, "right": 30}


def metric_group(name: str) -> str:
    """The chart a metric goes to: ``val_loss`` and ``loss`` share the chart ``loss``."""
    for p in _VAL_PREFIXES:
        if name.startswith(p) and len(name) > len(p):
            return name[len(p):]
    return name


class Series:
    """One metric of one job: the whole history, its smoothed values and what is on screen."""

    def __init__(self, job_index: int, job_name: str, metric: str, smoothing: float, max_points: int):
        self.job_index, self.job_name, self.metric = job_index, job_name, metric
        self.step = GrowingArray("int64")
        self.epoch = GrowingArray("float64")
        self.wall = GrowingArray("float64")
        self.value = GrowingArray("float64")
        self.smoothed = GrowingArray("float64")
        self.ema = Ema(smoothing)
        self.sampler = MinMaxDownsampler(max_points)
        self.dirty = True

    def extend(self, steps: list, walls: list, values: list, epochs: list | None = None) -> None:
        """Append points; ``epochs``: the records' fractional epochs (default: unknown, NaN)."""
        self.step.extend(np.asarray(steps, np.int64))
        self.epoch.extend(np.asarray(epochs if epochs is not None else [np.nan] * len(steps), np.float64))
        self.wall.extend(np.asarray(walls, np.float64))
        v = np.asarray(values, np.float64)
        self.value.extend(v)
        self.smoothed.extend(self.ema.extend(v))
        self.dirty = True

    def set_smoothing(self, weight: float) -> None:
        self.ema = Ema(weight)
        self.smoothed = GrowingArray("float64")
        self.smoothed.extend(self.ema.extend(self.value.view))
        self.dirty = True

    def visible(self, x_by: str, t0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(x, raw, smoothed)`` of the points to draw (at most ``max_points``), as float32."""
        idx = self.sampler.indices(self.value.view)
        if x_by == "step":
            x = self.step.view[idx]
        elif x_by == "epoch":
            x = self.epoch.view[idx]
        else:
            x = self.wall.view[idx] - t0
        # float32 on the wire: half the bytes of every redraw for the kernel and the browser; exact for
        # steps below 2**24, and 7 significant digits are more than a chart shows
        return x.astype(np.float32), self.value.view[idx].astype(np.float32), self.smoothed.view[idx].astype(np.float32)


class MetricChart:
    """A bqplot figure with the series of one metric group (train and validation, every job), and
    its legend below it (an HTML row, so it never covers a curve).

    The chart owns its domains and ticks (`kernelflow.widgets.ticks`): after each redraw it sets
    every scale's ``min``/``max`` to the data range (or the outlier-free range), and the axes'
    ``tick_values``/``tick_format`` to round values in one format. A pan or zoom in the browser
    changes ``min``/``max`` from the front end: the ticks follow that domain until `reset_zoom`.
    The y axis is one `bq.Axis` per scale (linear and log) swapped in the figure, never an axis
    whose scale changes: bqplot keeps the old scale's labels then.
    """

    def __init__(self, group: str, *, x_by: str = "step", log_y: bool = False, ignore_outliers: bool = False):
        self.group = group
        self.series: list[Series] = []
        self.x_by, self.log_y, self.ignore_outliers = x_by, log_y, ignore_outliers
        self.xs = bq.LinearScale()
        self.ys_lin, self.ys_log = bq.LinearScale(), bq.LogScale()
        self.x_axis = bq.Axis(scale=self.xs, label=X_LABELS[x_by], grid_lines="dashed", tick_values=np.zeros(0))
        self.y_axes = {log: bq.Axis(scale=sc, side="left", grid_lines="dashed", tick_values=np.zeros(0))
                       for log, sc in ((False, self.ys_lin), (True, self.ys_log))}
        self._panzoom = {log: bq.PanZoom(scales={"x": [self.xs], "y": [sc]})
                         for log, sc in ((False, self.ys_lin), (True, self.ys_log))}
        self.raw_marks: list[bq.Lines] = []
        self.smooth_marks: list[bq.Lines] = []
        self.hover_marks: list[bq.Scatter] = []
        self.figure = bq.Figure(title=group, marks=[], axes=[self.x_axis, self.y_axis],
                                fig_margin=dict(FIG_MARGIN), interaction=self._panzoom[log_y],
                                layout=widgets.Layout(width="480px", height="300px", min_width="300px"))
        self.figure.add_class("kf-monitor-chart")
        self.legend = widgets.HTML(layout=widgets.Layout(margin="0 0 0 60px"))
        self.legend.add_class("kf-legend")
        self.widget = widgets.VBox([self.figure, self.legend])
        self._zoomed = {"x": False, "y": False}
        self._setter: int | None = None  # the thread setting domains now (its changes are no zoom)
        for sc in (self.xs, self.ys_lin, self.ys_log):
            sc.observe(self._on_domain, names=["min", "max"])

    @property
    def y_axis(self) -> bq.Axis:
        """The y axis on show (the linear or the log one)."""
        return self.y_axes[self.log_y]

    @property
    def ys(self) -> bq.Scale:
        """The y scale on show."""
        return self.ys_log if self.log_y else self.ys_lin

    def add(self, series: Series, show_job: bool) -> None:
        is_val = metric_group(series.metric) != series.metric
        color = series_color(series.job_index, is_val)
        label = f"{series.job_name}: {series.metric}" if show_job else series.metric
        scales = {"x": self.xs, "y": self.ys}
        style = "dashed" if is_val else "solid"
        raw = bq.Lines(x=np.zeros(0), y=np.zeros(0), scales=scales, colors=[color], opacities=[0.25],
                       stroke_width=1, line_style=style, display_legend=False)
        smooth = bq.Lines(x=np.zeros(0), y=np.zeros(0), scales=scales, colors=[color], stroke_width=2,
                          line_style=style, labels=[label], display_legend=False)
        hover = bq.Scatter(x=np.zeros(0), y=np.zeros(0), scales=scales, colors=[color], default_size=12,
                           opacities=[0.05], marker="circle",
                           tooltip=bq.Tooltip(fields=["x", "y"], labels=[X_LABELS[self.x_by], label],
                                              formats=[".6g", ".4g"]))
        self.series.append(series)
        self.raw_marks.append(raw)
        self.smooth_marks.append(smooth)
        self.hover_marks.append(hover)
        self.figure.marks = [*self.raw_marks, *self.smooth_marks, *self.hover_marks]
        self.legend.value = "".join(_legend_item(m.labels[0], m.colors[0], m.line_style) for m in self.smooth_marks)

    def set_log(self, log_y: bool) -> None:
        if log_y == self.log_y:
            return
        self.log_y = log_y
        self._zoomed["y"] = False
        with self.figure.hold_sync():
            for m in (*self.raw_marks, *self.smooth_marks, *self.hover_marks):
                m.scales = {"x": self.xs, "y": self.ys}
            self.figure.axes = [self.x_axis, self.y_axis]
            self.figure.interaction = self._panzoom[log_y]
        self.mark_all_dirty()

    def set_x_by(self, x_by: str) -> None:
        if x_by != self.x_by:
            self.x_by = x_by
            self.x_axis.label = X_LABELS[x_by]
            for h in self.hover_marks:
                h.tooltip.labels = [X_LABELS[x_by], h.tooltip.labels[1]]
            self._zoomed["x"] = False
            self.mark_all_dirty()

    def mark_all_dirty(self) -> None:
        for s in self.series:
            s.dirty = True

    def redraw(self, t0: dict[int, float], force: bool = False) -> int:
        """Send the visible points of every changed series, then the domains and ticks; returns how
        many series were sent."""
        sent = 0
        with self.figure.hold_sync():
            for s, raw_m, sm_m, hov_m in zip(self.series, self.raw_marks, self.smooth_marks, self.hover_marks):
                if not (s.dirty or force):
                    continue
                x, raw, sm = s.visible(self.x_by, t0.get(s.job_index, 0.0))
                if self.log_y:  # a log scale cannot place values <= 0: leave gaps there
                    raw = np.where(raw > 0, raw, np.nan)
                    sm = np.where(sm > 0, sm, np.nan)
                every = max(1, math.ceil(len(x) / HOVER_POINTS))
                hx, hy = x[::every], sm[::every]
                if len(x) and hx[-1] != x[-1]:
                    hx, hy = np.append(hx, x[-1]), np.append(hy, sm[-1])
                with raw_m.hold_sync():
                    raw_m.x, raw_m.y = x, raw
                with sm_m.hold_sync():
                    sm_m.x, sm_m.y = x, sm
                with hov_m.hold_sync():
                    hov_m.x, hov_m.y = hx, hy
                s.dirty = False
                sent += 1
            if sent:
                self.fit_domains()
        return sent

    # ----------------------------------------------------------------- domains and ticks
    def auto_y_range(self) -> tuple[float, float] | None:
        """The y range the data asks for: all finite values (> 0 on a log scale), or with
        ignore-outliers the 5th to 95th percentile of the raw values, padded (in log space on a
        log scale)."""
        raws = [np.asarray(m.y, np.float64) for m in self.raw_marks]
        smooth = [np.asarray(m.y, np.float64) for m in self.smooth_marks]
        if self.ignore_outliers and raws:
            v = np.concatenate([r.ravel() for r in raws])
            if self.log_y:
                v = v[np.isfinite(v) & (v > 0)]
                r = outlier_range(np.log10(v)) if len(v) else None
                return None if r is None else (10.0 ** r[0], 10.0 ** r[1])
            return outlier_range(v)
        return data_range(raws + smooth, positive=self.log_y)

    def fit_domains(self) -> None:
        """Set the scales' domains from the data (unless zoomed) and the axes' ticks from the domains."""
        self._setter = threading.get_ident()
        try:
            with self.figure.hold_sync():
                if not self._zoomed["x"]:
                    r = data_range([np.asarray(m.x, np.float64) for m in self.raw_marks])
                    if r is not None:
                        _set_domain(self.xs, *_widen(*r, log=False))
                if not self._zoomed["y"]:
                    r = self.auto_y_range()
                    if r is not None:
                        _set_domain(self.ys, *_widen(*r, log=self.log_y))
                self._set_ticks()
        finally:
            self._setter = None

    def _set_ticks(self) -> None:
        for axis, sc, log, integer, target in ((self.x_axis, self.xs, False, self.x_by == "step", 6),
                                               (self.y_axis, self.ys, self.log_y, False, 5)):
            if sc.min is None or sc.max is None:
                continue
            t = ticks_for(sc.min, sc.max, log=log, integer=integer, target=target)
            if tuple(np.asarray(axis.tick_values).tolist()) != t.values:
                axis.tick_values = np.array(t.values, np.float64)
            if axis.tick_format != t.fmt:
                axis.tick_format = t.fmt
        # room for the longest y label (11 px sans-serif: ~7 px a character)
        y_labels = [format_tick(v, self.y_axis.tick_format) for v in np.asarray(self.y_axis.tick_values).tolist()]
        left = max(FIG_MARGIN["left"], 7 * max((len(s) for s in y_labels), default=0) + 22)
        if self.figure.fig_margin.get("left") != left:
            self.figure.fig_margin = {**FIG_MARGIN, "left": left}

    def _on_domain(self, change: dict) -> None:
        if self._setter == threading.get_ident():
            return
        sc = change["owner"]  # a pan or zoom in the browser
        if sc.min is None or sc.max is None:
            return
        self._zoomed["x" if sc is self.xs else "y"] = True
        self._setter = threading.get_ident()
        try:
            self._set_ticks()
        finally:
            self._setter = None

    def set_outliers(self, ignore: bool) -> None:
        self.ignore_outliers = ignore
        self._zoomed["y"] = False
        self.fit_domains()

    def reset_zoom(self) -> None:
        """Back to the automatic ranges (after pan/zoom)."""
        self._zoomed = {"x": False, "y": False}
        self.fit_domains()


def _set_domain(sc: bq.Scale, lo: float, hi: float) -> None:
    if sc.min != lo or sc.max != hi:
        with sc.hold_sync():
            sc.min, sc.max = lo, hi


def _widen(lo: float, hi: float, log: bool) -> tuple[float, float]:
    """A domain of non-zero width around a flat series."""
    if hi > lo:
        return lo, hi
    if log:
        return lo / 2, hi * 2
    pad = abs(lo) * 0.1 or 1.0
    return lo - pad, hi + pad


def series_color(job_index: int, is_val: bool) -> str:
    """Train and validation of job ``i``: ``PALETTE[2i]`` and ``PALETTE[2i + 1]`` (blue and orange for
    the first job), so the two curves differ by colour, not only by dashes."""
    return PALETTE[(2 * job_index + int(is_val)) % len(PALETTE)]


def _legend_item(label: str, color: str, style: str) -> str:
    dash = ' stroke-dasharray="5 3"' if style == "dashed" else ""
    return (f'<span class="kf-legend-item" data-color="{color}" style="margin-right:14px;white-space:nowrap">'
            f'<svg width="22" height="10"><line x1="1" y1="5" x2="21" y2="5" stroke="{color}" stroke-width="2.5"'
            f"{dash}/></svg> {html.escape(label)}</span>")


class HistogramPanel:
    """The logged histograms: the latest one as bars, and percentile bands over the steps.

    The figures enter the page with the first histogram: a bqplot figure drawn while hidden
    (``display: none``, zero size) computes negative widths, which the browser logs as errors.
    """

    def __init__(self) -> None:
        self.data: dict[str, tuple[list[int], list[np.ndarray], tuple[np.ndarray, np.ndarray] | None]] = {}
        self.choice = widgets.Dropdown(options=[], description="histogram", layout=widgets.Layout(width="320px"))
        self.choice.observe(lambda _: self.redraw(force=True), "value")
        bx, by = bq.LinearScale(), bq.LinearScale(min=0.0)
        self.bars = bq.Bars(x=np.zeros(0), y=np.zeros(0), scales={"x": bx, "y": by}, colors=[PALETTE[0]],
                            padding=0.05)
        self.value_axis = bq.Axis(scale=bx, label="value", tick_values=np.zeros(0))
        self.count_axis = bq.Axis(scale=by, side="left", label="count", tick_values=np.zeros(0))
        self.latest = bq.Figure(title="latest", marks=[self.bars], axes=[self.value_axis, self.count_axis],
                                fig_margin=dict(FIG_MARGIN), layout=widgets.Layout(width="420px", height="260px"))
        sx, sy = bq.LinearScale(), bq.LinearScale()
        # outermost band first so the inner, darker ones are drawn over it
        self.bands = [bq.Lines(x=np.zeros(0), y=np.zeros((2, 0)), scales={"x": sx, "y": sy}, fill="between",
                               colors=[PALETTE[0]], fill_colors=[PALETTE[0]], fill_opacities=[0.15 + 0.15 * i],
                               stroke_width=0, opacities=[0.0]) for i in range(4)]
        self.median = bq.Lines(x=np.zeros(0), y=np.zeros(0), scales={"x": sx, "y": sy}, colors=[PALETTE[0]],
                               stroke_width=2)
        self.step_axis = bq.Axis(scale=sx, label="step", tick_values=np.zeros(0))
        self.band_axis = bq.Axis(scale=sy, side="left", tick_values=np.zeros(0))
        self.over_time = bq.Figure(title="distribution over steps", marks=[*self.bands, self.median],
                                   axes=[self.step_axis, self.band_axis], fig_margin=dict(FIG_MARGIN),
                                   layout=widgets.Layout(width="420px", height="260px"))
        self.widget = widgets.VBox([])  # filled with the first histogram
        self.widget.add_class("kf-monitor-histograms")
        self.dirty = False

    def add(self, key: str, step: int, edges: Any, counts: Any) -> None:
        edges, counts = np.asarray(edges, np.float64), np.asarray(counts, np.float64)
        steps, pcts, _ = self.data.get(key, ([], [], None))
        steps.append(int(step))
        pcts.append(histogram_percentiles(edges, counts))
        self.data[key] = (steps, pcts, (edges, counts))
        self.dirty = True

    def redraw(self, force: bool = False) -> None:
        if not (self.dirty or force) or not self.data:
            return
        keys = sorted(self.data)
        if list(self.choice.options) != keys:
            self.choice.options = keys
        if self.choice.value not in keys:
            self.choice.value = keys[0]  # observe calls redraw again
            return
        steps, pcts, latest = self.data[self.choice.value]
        p = np.array(pcts)  # (steps, 9)
        x = np.asarray(steps, np.float64)
        with self.over_time.hold_sync():
            for i, band in enumerate(self.bands):
                with band.hold_sync():
                    band.x, band.y = x, np.stack([p[:, i], p[:, -1 - i]])
            with self.median.hold_sync():
                self.median.x, self.median.y = x, p[:, 4]
            _fit_axis(self.step_axis, *_widen(x.min(), x.max(), log=False), integer=True)
            r = data_range([p])
            if r is not None:
                _fit_axis(self.band_axis, *_widen(*r, log=False))
        if latest is not None:
            edges, counts = latest
            with self.latest.hold_sync():
                with self.bars.hold_sync():
                    self.bars.x, self.bars.y = (edges[:-1] + edges[1:]) / 2, counts
                _fit_axis(self.value_axis, float(edges[0]), float(edges[-1]))
                _fit_axis(self.count_axis, 0.0, max(1.0, float(counts.max(initial=0.0))), integer=True)
                self.latest.title = f"latest (step {steps[-1]})"
        if not self.widget.children:
            self.widget.children = [self.choice, widgets.HBox([self.latest, self.over_time])]
        self.dirty = False


def _fit_axis(axis: bq.Axis, lo: float, hi: float, integer: bool = False) -> None:
    """Set ``axis``'s scale to ``[lo, hi]`` and its ticks to round values there (whole ones with ``integer``)."""
    _set_domain(axis.scale, lo, hi)
    t = ticks_for(lo, hi, integer=integer)
    if tuple(np.asarray(axis.tick_values).tolist()) != t.values:
        axis.tick_values = np.array(t.values, np.float64)
    if axis.tick_format != t.fmt:
        axis.tick_format = t.fmt
