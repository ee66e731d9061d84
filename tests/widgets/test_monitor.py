"""TrainingMonitor without a browser (issue #5): downsampling and smoothing against numpy
references, chart data after many records, several jobs, CSV, and the buttons acting on a real
in-process job while the badge follows its status."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("bqplot")

import kernelflow as kf  # noqa: E402
from kernelflow.widgets import TrainingMonitor  # noqa: E402
from kernelflow.widgets.charts import metric_group  # noqa: E402
from kernelflow.widgets.downsample import (  # noqa: E402
    Ema,
    MinMaxDownsampler,
    debiased_ema,
    histogram_percentiles,
    outlier_range,
)
from tests.support.models import digits, mlp
from tests.support.waiting import wait_for  # noqa: E402


def ema_reference(values: np.ndarray, w: float) -> np.ndarray:
    """TensorBoard's smoothing loop, written out."""
    last, k, out = 0.0, 0, []
    for v in values:
        if not np.isfinite(v):
            out.append(v)
            continue
        last = last * w + (1 - w) * v
        k += 1
        out.append(last / (1 - w ** k))
    return np.array(out)


class FakeJob:
    """Just what the monitor uses of a `Job`: id, cached status, subscribe/unsubscribe, refresh."""

    def __init__(self, name: str = "fake", status: str = "running"):
        self.id = name
        self.last_status = {"id": name, "name": name, "status": status, "step": 0, "total_steps": 1000,
                            "epoch": 0, "epochs": 1, "examples_per_s": None, "elapsed_s": 0.0, "eta_s": None}
        self.callbacks: list = []
        self.history: list[dict] = []

    def subscribe(self, cb):
        if self.history:
            cb(list(self.history))
        self.callbacks.append(cb)

    def unsubscribe(self, cb=None):
        self.callbacks.remove(cb)

    def refresh(self):
        return self.last_status

    def push(self, records: list[dict]) -> None:
        self.history += records
        for cb in self.callbacks:
            cb(records)


def scalars(steps, **metrics) -> list[dict]:
    return [{"kind": "scalars", "step": int(s), "epoch": 0, "wall_time": 1000.0 + 0.01 * int(s),
             "values": {k: float(v[i]) for k, v in metrics.items()}} for i, s in enumerate(steps)]


# ----------------------------------------------------------------- numbers
def test_downsampler_grown_in_chunks_keeps_every_bucket_extreme_under_2000_points():
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.standard_normal(300_000))
    values[123_457] = 1e6                 # a spike must survive
    values[200_001] = -1e6
    ds = MinMaxDownsampler(2000)
    for end in (10, 1999, 2000, 2001, 50_000, 123_456, 123_458, 299_999, 300_000):
        idx = ds.indices(values[:end])
        assert len(idx) <= 2000 and np.all(np.diff(idx) > 0)
        assert idx[0] == 0 and idx[-1] == end - 1
        v = values[:end]
        assert v[idx].max() == v.max() and v[idx].min() == v.min()
        if end <= 2000:
            np.testing.assert_array_equal(idx, np.arange(end))
    # every finished bucket keeps its own min and max
    w, done = ds.width, ds.done
    blocks = values[:done].reshape(-1, w)
    shown = set(idx.tolist())
    starts = np.arange(len(blocks)) * w
    assert all(int(i) in shown for i in starts + blocks.argmin(axis=1))
    assert all(int(i) in shown for i in starts + blocks.argmax(axis=1))
    assert len(idx) >= 990  # buckets merge in pairs: at least half the budget is used
    fresh = MinMaxDownsampler(2000).indices(values)
    assert len(fresh) <= 2000 and values[fresh].max() == 1e6 and values[fresh].min() == -1e6


def test_downsampler_nan_never_wins_a_bucket_with_finite_values():
    v = np.arange(10_000, dtype=np.float64)
    v[::7] = np.nan
    idx = MinMaxDownsampler(100).indices(v)
    assert np.isfinite(v[idx[1:]]).all() and len(idx) <= 100  # idx[0]: the first point is always drawn


@pytest.mark.parametrize("w", [0.0, 0.6, 0.9, 0.99])
def test_debiased_ema_matches_tensorboard_loop_also_in_chunks_and_with_nan(w):
    rng = np.random.default_rng(1)
    v = rng.standard_normal(1000) * 3 + 5
    v[[10, 500]] = np.nan
    v[700] = np.inf
    ref = ema_reference(v, w)
    np.testing.assert_allclose(debiased_ema(v, w), ref, rtol=1e-12, equal_nan=True)
    e = Ema(w)
    parts = np.concatenate([e.extend(v[:3]), e.extend(v[3:11]), e.extend(v[11:11]), e.extend(v[11:])])
    np.testing.assert_allclose(parts, ref, rtol=1e-12, equal_nan=True)
    assert debiased_ema(np.full(5, 2.5), w) == pytest.approx(np.full(5, 2.5))  # debiased: no pull to 0


def test_histogram_percentiles_match_the_data_they_count():
    rng = np.random.default_rng(2)
    data = rng.normal(size=200_000)
    counts, edges = np.histogram(data, bins=200)
    p = histogram_percentiles(edges, counts, (0, 15.87, 50, 84.13, 100))
    np.testing.assert_allclose(p[1:4], np.percentile(data, [15.87, 50, 84.13]), atol=0.02)
    assert p[0] == edges[0] and p[-1] == edges[-1]
    # empty bins at both ends: 0 and 100 are the outer edges of the non-empty bins
    p2 = histogram_percentiles(np.arange(6.0), np.array([0, 2, 0, 2, 0]), (0, 50, 100))
    assert p2[0] == 1.0 and p2[-1] == 4.0
    assert np.isnan(histogram_percentiles(np.arange(3.0), np.zeros(2))).all()


def test_outlier_range_ignores_a_spike():
    v = np.concatenate([np.linspace(1.0, 2.0, 1000), [1e9]])
    lo, hi = outlier_range(v)
    assert 0.8 < lo < 1.1 and 1.9 < hi < 2.2
    assert outlier_range(np.array([np.nan])) is None


def test_metric_group_pairs_train_and_validation():
    assert [metric_group(m) for m in ("loss", "val_loss", "validation_accuracy", "val_")] == \
        ["loss", "loss", "accuracy", "val_"]


# ----------------------------------------------------------------- the widget, fed by hand
def test_monitor_after_100k_records_draws_downsampled_series_with_extremes():
    job = FakeJob()
    rng = np.random.default_rng(3)
    n = 100_000
    loss = np.abs(np.cumsum(rng.standard_normal(n))) + 1.0
    loss[77_777] = 1e4
    steps = np.arange(1, n + 1)
    job.push(scalars(steps[:5000], loss=loss[:5000]))    # history before the monitor
    mon = TrainingMonitor(job, live=False)
    for a in range(5000, n, 9000):                       # live batches
        job.push(scalars(steps[a:a + 9000], loss=loss[a:a + 9000]))
        mon.flush()
    vals = np.arange(1, n + 1, 100)
    job.push(scalars(vals, val_loss=np.linspace(3, 1, len(vals))))
    mon.flush()
    assert mon.records_received == n + len(vals)
    chart = mon.charts["loss"]
    assert list(mon.charts) == ["loss"]                 # val_loss overlays loss
    raw, smooth = chart.raw_marks[0], chart.smooth_marks[0]
    assert len(raw.x) <= 2000 and len(raw.x) == len(raw.y) == len(smooth.y)
    assert raw.y.dtype == np.float32  # what goes on the wire
    assert raw.y.max() == 1e4 and raw.y.min() == np.float32(loss.min())
    assert raw.x[0] == 1 and raw.x[-1] == n
    np.testing.assert_array_equal(raw.y, loss[raw.x.astype(int) - 1].astype(np.float32))
    np.testing.assert_array_equal(chart.smooth_marks[1].x, vals)  # small series: every point
    assert [m.labels for m in chart.smooth_marks] == [["loss"], ["val_loss"]]
    assert chart.smooth_marks[1].line_style == "dashed"
    assert chart.smooth_marks[0].colors != chart.smooth_marks[1].colors  # issue #14: not only dashes
    assert len(chart.hover_marks[0].x) <= 201 and chart.hover_marks[0].x[-1] == n
    # the full history stays with the monitor's series (and in job.history)
    assert len(mon.series[(0, "loss")].value) == n
    mon.close()


def test_monitor_smoothing_slider_shows_debiased_ema_of_the_series():
    job = FakeJob()
    rng = np.random.default_rng(4)
    v = rng.standard_normal(5000) + np.linspace(5, 0, 5000)
    job.push(scalars(np.arange(5000), loss=v))
    mon = TrainingMonitor(job, live=False)
    sm = mon.charts["loss"].smooth_marks[0]
    idx = sm.x.astype(int)
    np.testing.assert_allclose(sm.y, ema_reference(v, 0.6)[idx].astype(np.float32), rtol=2e-7)
    mon.smoothing.value = 0.95
    np.testing.assert_allclose(sm.y, ema_reference(v, 0.95)[sm.x.astype(int)].astype(np.float32), rtol=2e-7)
    mon.smoothing.value = 0.0
    np.testing.assert_array_equal(sm.y, mon.charts["loss"].raw_marks[0].y)
    # new records continue the average where it stopped
    mon.smoothing.value = 0.8
    more = rng.standard_normal(100)
    job.push(scalars(np.arange(5000, 5100), loss=more))
    mon.flush()
    full = np.concatenate([v, more])
    np.testing.assert_allclose(sm.y, ema_reference(full, 0.8)[sm.x.astype(int)].astype(np.float32), rtol=2e-7)
    mon.close()


def test_monitor_toggles_log_scale_wall_time_and_outliers():
    job = FakeJob()
    v = np.linspace(1.0, 0.01, 500)
    v[250] = -1.0
    job.push(scalars(np.arange(500), loss=v))
    mon = TrainingMonitor(job, live=False)
    chart = mon.charts["loss"]
    mon.log_scale.value = True
    assert chart.y_axis.scale is chart.ys_log and chart.smooth_marks[0].scales["y"] is chart.ys_log
    assert np.isnan(chart.raw_marks[0].y[250]) and np.isfinite(chart.raw_marks[0].y[:250]).all()
    mon.log_scale.value = False
    mon.x_axis.value = "wall"
    np.testing.assert_allclose(chart.raw_marks[0].x, 0.01 * np.arange(500), atol=1e-6)
    assert chart.x_axis.label == "wall time (s)"
    mon.ignore_outliers.value = True
    assert chart.ys_lin.min > -0.5  # the -1 dip does not stretch the range
    mon.ignore_outliers.value = False
    assert (chart.ys_lin.min, chart.ys_lin.max) == (-1.0, 1.0)  # the whole data range again
    mon.close()


def test_monitor_two_jobs_overlay_with_legend_and_csv_holds_full_history():
    a, b = FakeJob("run-a"), FakeJob("run-b")
    a.push(scalars(range(1, 4), loss=[3.0, 2.0, 1.0]))
    b.push(scalars(range(1, 3), loss=[4.0, 3.5]))
    b.push([{"kind": "histogram", "step": 2, "wall_time": 1.0, "name": "w1", "edges": np.linspace(-1, 1, 5),
             "counts": np.array([1, 2, 3, 4])}])
    mon = TrainingMonitor([a, b], live=False)
    chart = mon.charts["loss"]
    assert [m.labels for m in chart.smooth_marks] == [["run-a: loss"], ["run-b: loss"]]
    assert chart.smooth_marks[0].colors != chart.smooth_marks[1].colors
    assert len(mon.headers) == 2 and "run-b" in mon.headers[1].title.value
    assert mon.histograms.choice.options == ("run-b: w1",)
    np.testing.assert_array_equal(mon.histograms.bars.y, [1, 2, 3, 4])
    assert mon.histograms.median.y[0] == pytest.approx(1 / 3)  # count 5 of 10: 2 of the 3rd bin's 3, into [0, 0.5]
    text = mon.csv_text()
    assert text.splitlines() == ["job,metric,step,wall_time,value", "run-a,loss,1,1000.010000,3.0",
                                 "run-a,loss,2,1000.020000,2.0", "run-a,loss,3,1000.030000,1.0",
                                 "run-b,loss,1,1000.010000,4.0", "run-b,loss,2,1000.020000,3.5"]
    link = mon.make_csv_link()
    assert 'download="run-a-run-b.csv"' in link and "data:text/csv;base64," in link
    mon.close()


def test_monitor_render_thread_coalesces_records_into_at_most_10_redraws_per_second():
    job = FakeJob()
    mon = TrainingMonitor(job)
    t0 = time.monotonic()
    for i in range(200):  # 200 batches in ~1 s from another thread
        threading.Thread(target=job.push, args=(scalars([i], loss=[float(i)]),)).start()
        time.sleep(0.005)
    wait_for(lambda: len(mon.charts["loss"].smooth_marks[0].x) == 200
             if "loss" in mon.charts and mon.charts["loss"].smooth_marks else False,
             "all points drawn", 10)
    elapsed = time.monotonic() - t0
    assert mon.redraws <= 10 * elapsed + 2
    assert mon.redraws >= 2
    mon.close()
    assert not mon._thread.is_alive()


# ----------------------------------------------------------------- a real job on an in-process runtime
@pytest.fixture
def live_job():
    rt = kf.connect("inproc")
    train, _ = digits(rt, "digits-monitor")
    m = mlp(rt, "monitor-live")
    job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, batch_size=32, steps=10_000_000,
                  metrics={"loss": m.loss}, log_every=5, name="live")
    yield rt, job
    if job.refresh()["status"] in ("running", "paused", "queued"):
        job.stop()
    rt.close()


def test_monitor_buttons_pause_resume_stop_the_job_and_badge_follows(live_job):
    rt, job = live_job
    mon = TrainingMonitor(job)
    h = mon.headers[0]
    # The render thread creates the chart and its marks: look only once both exist.
    wait_for(lambda: "loss" in mon.charts and mon.charts["loss"].smooth_marks
             and len(mon.charts["loss"].smooth_marks[0].x) > 5, "points drawn")
    wait_for(lambda: h.status == "running", "badge running")
    assert "kf-badge-running" in h.title.value and not h.pause.disabled and h.resume.disabled
    me = threading.current_thread().name
    wait_for(lambda: any(t != me for t in mon.delivery_threads), "records from the notification thread")
    h.pause.click()
    assert job.refresh()["status"] == "paused"
    # a notification sent just before the click may show the old status for one more redraw
    wait_for(lambda: "kf-badge-paused" in h.title.value and h.pause.disabled and not h.resume.disabled,
             "badge paused", 10)
    h.resume.click()
    assert job.refresh()["status"] in ("running", "paused")
    wait_for(lambda: "kf-badge-running" in h.title.value, "badge running again")
    n = len(mon.series[(0, "loss")].value)
    wait_for(lambda: len(mon.series[(0, "loss")].value) > n, "records after resume")
    h.stop.click()
    assert job.refresh()["status"] == "stopped"
    wait_for(lambda: "kf-badge-stopped" in h.title.value and h.stop.disabled and h.pause.disabled
             and h.resume.disabled, "badge stopped", 10)
    h.resume.click()  # a stopped job cannot resume: the message says so, nothing raises
    assert "only paused or interrupted jobs resume" in mon.message.value
    # re-attach: a fresh handle and monitor show the whole history
    wait_for(lambda: not mon._thread.is_alive(), "render thread ends after the job", 10)
    mon.flush()
    mon2 = TrainingMonitor(rt.job(job.id), live=False)
    full = job.history["loss"]["value"]
    assert len(mon2.series[(0, "loss")].value) == len(full)
    np.testing.assert_array_equal(mon2.series[(0, "loss")].value.view, full)
    mon.close()
    mon2.close()
