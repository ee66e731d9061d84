"""The monitor's charts (issue #14 item 2): ticks at round values with one format per axis, log
scale labels right in every toggle order, train/validation colours, a legend off the data, step /
epoch / wall-time x axes, whole-number histogram counts, figures that enter the page with data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("bqplot")

from kernelflow.widgets import TrainingMonitor  # noqa: E402
from kernelflow.widgets.ticks import format_tick, integer_ticks, linear_ticks, log_ticks, tick_format  # noqa: E402
from tests.widgets.test_monitor import FakeJob, scalars  # noqa: E402


def _is_round_step(step: float) -> bool:
    mant = step / 10.0 ** math.floor(math.log10(step))
    return any(abs(mant - m) < 1e-6 for m in (1.0, 2.0, 2.5, 5.0, 10.0))


# ----------------------------------------------------------------- ticks
def test_linear_ticks_of_the_reported_range_are_round():
    # the issue saw -83, 2652, 5387, ... (bqplot's num_ticks spaces ticks evenly between the ends)
    t = linear_ticks(-83.0, 13_590.0, 6)
    assert t == [0.0, 2500.0, 5000.0, 7500.0, 10_000.0, 12_500.0]
    assert linear_ticks(0.0, 2.4, 5) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert linear_ticks(0.1, 0.7, 5) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]  # no 0.30000000000000004


@settings(max_examples=300, deadline=None)
@given(st.floats(-1e9, 1e9), st.floats(1e-6, 1e9), st.integers(3, 8))
def test_linear_ticks_are_multiples_of_a_round_step_inside_the_domain(lo, rel_span, target):
    span = rel_span * max(1.0, abs(lo))  # a chart's float32 data never asks for finer ranges
    hi = lo + span
    t = linear_ticks(lo, hi, target)
    assert 2 <= len(t) <= 2 * target + 1, (lo, hi, t)
    assert all(lo - 1e-9 * span <= v <= hi + 1e-9 * span for v in t)
    steps = np.diff(t)
    assert np.allclose(steps, steps[0], rtol=1e-6)
    assert _is_round_step(float(steps[0]))
    assert all(abs(v / steps[0] - round(v / steps[0])) < 1e-6 * max(1.0, abs(v / steps[0])) for v in t)


@pytest.mark.parametrize("lo, hi, want", [
    (0.011, 2.4, [0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]),
    (1.3e-7, 2.2, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]),
    (0.05, 0.4, [0.05, 0.1, 0.2]),
    (0.31, 0.48, [0.35, 0.4, 0.45]),  # within a decade: round linear values (at least two)
])
def test_log_ticks(lo, hi, want):
    assert log_ticks(lo, hi) == pytest.approx(want)


def test_integer_ticks_step_by_whole_numbers():
    assert integer_ticks(0, 3) == [0.0, 1.0, 2.0, 3.0]  # not 0, 0.5, 1, ...
    assert integer_ticks(0, 1) == [0.0, 1.0]
    assert integer_ticks(0, 1234) == [0.0, 250.0, 500.0, 750.0, 1000.0]
    assert integer_ticks(0, 9) == [0.0, 2.0, 4.0, 6.0, 8.0]  # 2.5 would not be whole


@pytest.mark.parametrize("values, labels", [
    ([0.0, 0.2, 0.4, 1.0], ["0.0", "0.2", "0.4", "1.0"]),       # not 0.00 / 0.200 / 1.00
    ([0.0, 0.25, 0.5], ["0.00", "0.25", "0.50"]),
    ([0.0, 5000.0, 10000.0], ["0", "5,000", "10,000"]),
    ([1e-7, 1e-6, 1e-5], ["1e-7", "1e-6", "1e-5"]),            # not 1.00e-7 beside .00000100
    ([1e-6, 1e-3, 1.0], ["1e-6", "1e-3", "1e+0"]),
    ([2e6, 4e6], ["2e+6", "4e+6"]),
    ([0.02, 0.05, 0.1, 1.0, 2.0], ["0.02", "0.05", "0.10", "1.00", "2.00"]),
])
def test_tick_format_is_one_format_per_axis(values, labels):
    fmt = tick_format(values)
    assert [format_tick(v, fmt) for v in values] == labels


# ----------------------------------------------------------------- charts in the monitor
def _loss_monitor(**kw):
    job = FakeJob()
    n = 400
    steps = np.arange(1, n + 1)
    loss = 2.3 * np.exp(-steps / 60.0) + 0.01   # 2.3 -> 0.01: two decades
    job.push([{**r, "epoch": r["step"] / 100} for r in scalars(steps, loss=loss)])
    job.push([{**r, "epoch": r["step"] / 100} for r in scalars(steps[::50], val_loss=loss[::50] * 1.2)])
    return TrainingMonitor(job, live=False, **kw), loss


def _check_axes(chart, log: bool, lo: float, hi: float):
    """The axis on show is the y scale's, its ticks lie in the domain, and the domain is [lo, hi]."""
    ys = chart.ys_log if log else chart.ys_lin
    assert chart.figure.axes[1] is chart.y_axis and chart.y_axis.scale is ys
    assert all(m.scales["y"] is ys for m in (*chart.raw_marks, *chart.smooth_marks, *chart.hover_marks))
    assert ys.min == pytest.approx(lo, rel=1e-6) and ys.max == pytest.approx(hi, rel=1e-6)
    ticks = np.asarray(chart.y_axis.tick_values)
    assert len(ticks) >= 2 and ((ticks >= ys.min * (1 - 1e-9)) & (ticks <= ys.max * (1 + 1e-9))).all()
    if log:
        mant = ticks / 10.0 ** np.floor(np.log10(ticks) + 1e-9)
        assert np.isin(np.round(mant, 6), [1.0, 2.0, 5.0]).all(), ticks
    else:
        assert np.allclose(np.diff(ticks), ticks[1] - ticks[0])
    labels = [format_tick(v, chart.y_axis.tick_format) for v in ticks]
    assert len(set(labels)) == len(labels)
    return ticks


@pytest.mark.parametrize("order", [("log", "unlog"), ("log", "outliers", "unlog"), ("outliers", "log", "unoutliers",
                                                                                       "unlog")])
def test_log_scale_ticks_follow_the_scale_in_every_toggle_order(order):
    mon, loss = _loss_monitor()
    chart = mon.charts["loss"]
    data = np.concatenate([loss, loss[::50] * 1.2]).astype(np.float32).astype(np.float64)
    _check_axes(chart, False, data.min(), data.max())
    for step in order:
        if step in ("log", "unlog"):
            mon.log_scale.value = step == "log"
        else:
            mon.ignore_outliers.value = step == "outliers"
        log, outliers = mon.log_scale.value, mon.ignore_outliers.value
        if outliers:
            # the domain is the chart's outlier-free range (checked in the other tests); ticks follow it
            ys = chart.ys_log if log else chart.ys_lin
            _check_axes(chart, log, ys.min, ys.max)
            assert ys.max < data.max()
        else:
            _check_axes(chart, log, data.min(), data.max())
    mon.close()


def test_train_and_validation_have_distinct_colours_and_a_legend_off_the_plot():
    mon, _ = _loss_monitor()
    chart = mon.charts["loss"]
    train, val = chart.smooth_marks
    assert train.colors[0] != val.colors[0]
    assert chart.raw_marks[0].colors == train.colors and chart.raw_marks[1].colors == val.colors
    assert not any(m.display_legend for m in chart.figure.marks)  # bqplot's legend sits on the data
    assert chart.legend in chart.widget.children and chart.widget in mon.chart_box.children
    legend = chart.legend.value
    assert legend.index(">loss<" if ">loss<" in legend else " loss<") < legend.index("val_loss")
    assert f'data-color="{train.colors[0]}"' in legend and f'data-color="{val.colors[0]}"' in legend
    assert "stroke-dasharray" in legend.split("val_loss")[0].rsplit("kf-legend-item", 1)[1]
    mon.close()


def test_x_axis_by_step_epoch_and_wall_time():
    mon, _ = _loss_monitor()
    chart = mon.charts["loss"]
    np.testing.assert_array_equal(chart.raw_marks[0].x[:3], [1, 2, 3])
    assert chart.x_axis.tick_format == ",.0f" and set(np.asarray(chart.x_axis.tick_values)) <= set(range(0, 401))
    mon.x_axis.value = "epoch"
    assert chart.x_axis.label == "epoch"
    np.testing.assert_allclose(chart.raw_marks[0].x[:3], [0.01, 0.02, 0.03], rtol=1e-6)
    assert (chart.xs.min, chart.xs.max) == (pytest.approx(0.01), pytest.approx(4.0))
    assert list(np.asarray(chart.x_axis.tick_values)) == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    mon.x_axis.value = "wall"
    assert chart.x_axis.label == "wall time (s)"
    np.testing.assert_allclose(chart.raw_marks[0].x[:3], [0.0, 0.01, 0.02], atol=1e-6)
    mon.close()


def test_pan_zoom_from_the_front_end_keeps_its_domain_and_ticks_follow_until_reset():
    mon, loss = _loss_monitor()
    chart = mon.charts["loss"]
    chart.xs.min, chart.xs.max = 100.0, 200.0  # what a PanZoom in the browser syncs back
    assert list(np.asarray(chart.x_axis.tick_values)) == [100.0, 120.0, 140.0, 160.0, 180.0, 200.0]
    mon.flush()
    chart.redraw({}, force=True)
    assert (chart.xs.min, chart.xs.max) == (100.0, 200.0)  # new data does not undo the zoom
    mon.reset_zoom.click()
    assert (chart.xs.min, chart.xs.max) == (1.0, 400.0)
    mon.close()


def test_histogram_counts_step_by_whole_numbers_and_figures_wait_for_data():
    job = FakeJob()
    mon = TrainingMonitor(job, live=False)
    assert mon.histograms.widget.children == ()  # no zero-size bqplot figure in the page
    job.push([{"kind": "histogram", "step": 10, "wall_time": 1.0, "name": "w", "edges": np.linspace(-1, 1, 6),
               "counts": np.array([1, 3, 2, 0, 1])}])
    mon.flush()
    h = mon.histograms
    assert h.latest in h.widget.children[1].children
    assert list(np.asarray(h.count_axis.tick_values)) == [0.0, 1.0, 2.0, 3.0]
    assert h.count_axis.tick_format == ",.0f"
    assert list(np.asarray(h.value_axis.tick_values)) == pytest.approx([-1.0, -0.5, 0.0, 0.5, 1.0])
    mon.close()
