"""The training monitor's bqplot charts: one `MetricChart` per metric group (``loss`` with
``val_loss``) and the `HistogramPanel` (latest histogram and percentile bands over time).

A `Series` holds one metric of one job in full (growing numpy buffers) with its smoothed
twin and downsampler; a chart draws at most ``max_points`` of each series.

Contents: Series, MetricChart, HistogramPanel, metric_group, PALETTE.
"""

from __future__ import annotations

import math
from typing import Any

import bqplot as bq
import ipywidgets as widgets
import numpy as np

from .downsample import Ema, GrowingArray, MinMaxDownsampler, histogram_percentiles, outlier_range

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
HOVER_POINTS = 200  # hover markers per series: tooltips need a mark per point, lines have none
_VAL_PREFIXES = ("val_", "validation_")


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
        self.wall = GrowingArray("float64")
        self.value = GrowingArray("float64")
        self.smoothed = GrowingArray("float64")
        self.ema = Ema(smoothing)
        self.sampler = MinMaxDownsampler(max_points)
        self.dirty = True

    def extend(self, steps: list, walls: list, values: list) -> None:
        self.step.extend(np.asarray(steps, np.int64))
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
        x = self.step.view[idx] if x_by == "step" else self.wall.view[idx] - t0
        # float32 on the wire: half the bytes of every redraw for the kernel and the browser; exact for
        # steps below 2**24, and 7 significant digits are more than a chart shows
        return x.astype(np.float32), self.value.view[idx].astype(np.float32), self.smoothed.view[idx].astype(np.float32)


class MetricChart:
    """A bqplot figure with the series of one metric group (train and validation, every job)."""

    def __init__(self, group: str, *, x_by: str = "step", log_y: bool = False, ignore_outliers: bool = False):
        self.group = group
        self.series: list[Series] = []
        self.x_by, self.log_y, self.ignore_outliers = x_by, log_y, ignore_outliers
        self.xs = bq.LinearScale()
        self.ys_lin, self.ys_log = bq.LinearScale(), bq.LogScale()
        ys = self.ys_log if log_y else self.ys_lin
        self.x_axis = bq.Axis(scale=self.xs, label=self._x_label(), grid_lines="dashed", num_ticks=6)
        self.y_axis = bq.Axis(scale=ys, side="left", grid_lines="dashed", tick_format=".3g")
        self.raw_marks: list[bq.Lines] = []
        self.smooth_marks: list[bq.Lines] = []
        self.hover_marks: list[bq.Scatter] = []
        self.figure = bq.Figure(title=group, marks=[], axes=[self.x_axis, self.y_axis], legend_location="top-right",
                                fig_margin={"top": 40, "bottom": 40, "left": 60, "right": 20},
                                layout=widgets.Layout(width="480px", height="300px", min_width="300px"),
                                interaction=bq.PanZoom(scales={"x": [self.xs], "y": [ys]}))
        self.figure.add_class("kf-monitor-chart")

    def _x_label(self) -> str:
        return "step" if self.x_by == "step" else "wall time (s)"

    def add(self, series: Series, show_job: bool) -> None:
        color = PALETTE[series.job_index % len(PALETTE)]
        is_val = metric_group(series.metric) != series.metric
        label = f"{series.job_name}: {series.metric}" if show_job else series.metric
        ys = self.ys_log if self.log_y else self.ys_lin
        scales = {"x": self.xs, "y": ys}
        style = "dashed" if is_val else "solid"
        raw = bq.Lines(x=np.zeros(0), y=np.zeros(0), scales=scales, colors=[color], opacities=[0.25],
                       stroke_width=1, line_style=style, display_legend=False)
        smooth = bq.Lines(x=np.zeros(0), y=np.zeros(0), scales=scales, colors=[color], stroke_width=2,
                          line_style=style, labels=[label], display_legend=True)
        hover = bq.Scatter(x=np.zeros(0), y=np.zeros(0), scales=scales, colors=[color], default_size=12,
                           opacities=[0.05], marker="circle",
                           tooltip=bq.Tooltip(fields=["x", "y"], labels=[self._x_label(), label],
                                              formats=[".6g", ".4g"]))
        self.series.append(series)
        self.raw_marks.append(raw)
        self.smooth_marks.append(smooth)
        self.hover_marks.append(hover)
        self.figure.marks = [*self.raw_marks, *self.smooth_marks, *self.hover_marks]

    def set_log(self, log_y: bool) -> None:
        if log_y == self.log_y:
            return
        self.log_y = log_y
        ys = self.ys_log if log_y else self.ys_lin
        with self.figure.hold_sync():
            for m in (*self.raw_marks, *self.smooth_marks, *self.hover_marks):
                m.scales = {"x": self.xs, "y": ys}
            self.y_axis.scale = ys
            self.figure.interaction = bq.PanZoom(scales={"x": [self.xs], "y": [ys]})
        self.mark_all_dirty()

    def set_x_by(self, x_by: str) -> None:
        if x_by != self.x_by:
            self.x_by = x_by
            self.x_axis.label = self._x_label()
            for h in self.hover_marks:
                h.tooltip.labels = [self._x_label(), h.tooltip.labels[1]]
            self.xs.min = self.xs.max = None
            self.mark_all_dirty()

    def mark_all_dirty(self) -> None:
        for s in self.series:
            s.dirty = True

    def redraw(self, t0: dict[int, float], force: bool = False) -> int:
        """Send the visible points of every changed series; returns how many series were sent."""
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
            if sent and self.ignore_outliers:
                self._fit_y()
        return sent

    def _fit_y(self) -> None:
        shown = np.concatenate([np.asarray(m.y, np.float64).ravel() for m in self.raw_marks])
        r = outlier_range(shown)
        if r is None:
            return
        lo, hi = r
        ys = self.ys_log if self.log_y else self.ys_lin
        if self.log_y:
            positive = shown[np.isfinite(shown) & (shown > 0)]
            lo = max(lo, float(positive.min()) if len(positive) else 1e-12)
            hi = max(hi, lo * 10)
        ys.min, ys.max = lo, hi

    def set_outliers(self, ignore: bool) -> None:
        self.ignore_outliers = ignore
        if ignore:
            self._fit_y()
        else:
            self.reset_zoom()

    def reset_zoom(self) -> None:
        """Back to the automatic ranges (after pan/zoom or ignore-outliers)."""
        with self.figure.hold_sync():
            for sc in (self.xs, self.ys_lin, self.ys_log):
                sc.min = sc.max = None
        if self.ignore_outliers:
            self._fit_y()


class HistogramPanel:
    """The logged histograms: the latest one as bars, and percentile bands over the steps."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[list[int], list[np.ndarray], tuple[np.ndarray, np.ndarray] | None]] = {}
        self.choice = widgets.Dropdown(options=[], description="histogram", layout=widgets.Layout(width="320px"))
        self.choice.observe(lambda _: self.redraw(force=True), "value")
        bx, by = bq.LinearScale(), bq.LinearScale()
        self.bars = bq.Bars(x=np.zeros(0), y=np.zeros(0), scales={"x": bx, "y": by}, colors=[PALETTE[0]],
                            padding=0.05)
        self.latest = bq.Figure(title="latest", marks=[self.bars],
                                axes=[bq.Axis(scale=bx, label="value", tick_format=".3g", num_ticks=5),
                                      bq.Axis(scale=by, side="left", label="count")],
                                fig_margin={"top": 40, "bottom": 40, "left": 60, "right": 20},
                                layout=widgets.Layout(width="420px", height="260px"))
        sx, sy = bq.LinearScale(), bq.LinearScale()
        # outermost band first so the inner, darker ones are drawn over it
        self.bands = [bq.Lines(x=np.zeros(0), y=np.zeros((2, 0)), scales={"x": sx, "y": sy}, fill="between",
                               colors=[PALETTE[0]], fill_colors=[PALETTE[0]], fill_opacities=[0.15 + 0.15 * i],
                               stroke_width=0, opacities=[0.0]) for i in range(4)]
        self.median = bq.Lines(x=np.zeros(0), y=np.zeros(0), scales={"x": sx, "y": sy}, colors=[PALETTE[0]],
                               stroke_width=2)
        self.over_time = bq.Figure(title="distribution over steps", marks=[*self.bands, self.median],
                                   axes=[bq.Axis(scale=sx, label="step", num_ticks=5),
                                         bq.Axis(scale=sy, side="left", tick_format=".3g")],
                                   fig_margin={"top": 40, "bottom": 40, "left": 60, "right": 20},
                                   layout=widgets.Layout(width="420px", height="260px"),
                                   interaction=bq.PanZoom(scales={"x": [sx], "y": [sy]}))
        self.widget = widgets.VBox([self.choice, widgets.HBox([self.latest, self.over_time])],
                                   layout=widgets.Layout(display="none"))
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
        if latest is not None:
            edges, counts = latest
            with self.bars.hold_sync():
                self.bars.x, self.bars.y = (edges[:-1] + edges[1:]) / 2, counts
            self.latest.title = f"latest (step {steps[-1]})"
        self.widget.layout.display = None
        self.dirty = False
