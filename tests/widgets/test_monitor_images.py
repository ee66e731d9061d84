"""The training monitor's images panel without a browser (issue #5): hidden without image
records, a grid of PNGs that decode back to the record's uint8 pixels, following new records
unless the step slider was moved back, and fed live by a real in-process job."""

from __future__ import annotations

import io

import numpy as np
import pytest

pytest.importorskip("bqplot")
Image = pytest.importorskip("PIL.Image")

import kernelflow as kf  # noqa: E402
from kernelflow.widgets import TrainingMonitor  # noqa: E402
from kernelflow.widgets.images import ImagePanel, png_bytes  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402
from tests.widgets.test_monitor import FakeJob, scalars  # noqa: E402


def image_record(step: int, name: str, images: np.ndarray) -> dict:
    return {"kind": "images", "step": step, "wall_time": 1000.0 + step, "name": name, "images": images}


def decode(png: bytes) -> np.ndarray:
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG"
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def shown(mon: TrainingMonitor) -> np.ndarray:
    return np.stack([decode(im.value) for im in mon.images.grid.children])


def batch(step: int, n: int = 6, h: int = 5, w: int = 7, c: int = 1) -> np.ndarray:
    return np.random.default_rng(step).integers(0, 256, (n, h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("c", [1, 3, 4])
def test_png_bytes_decode_back_to_the_uint8_image(c):
    a = batch(0, 1, 9, 4, c)[0]
    np.testing.assert_array_equal(decode(png_bytes(a)), a)


def test_images_panel_hidden_without_image_records():
    job = FakeJob()
    job.history = scalars(range(5), loss=np.arange(5.0))
    mon = TrainingMonitor(job, live=False)
    assert mon.images.widget.layout.display == "none" and not mon.images.grid.children
    mon.close()


def test_images_panel_shows_the_newest_record_as_pngs_of_its_pixels():
    job = FakeJob()
    job.history = [*scalars([10], loss=[1.0]), image_record(10, "samples", batch(10)),
                   image_record(10, "filters", batch(99, 3, 8, 8, 3))]
    mon = TrainingMonitor(job, live=False)
    p = mon.images
    assert p.widget.layout.display is None
    assert list(p.choice.options) == ["filters", "samples"]
    p.show("samples", -1)
    assert len(p.grid.children) == 6
    np.testing.assert_array_equal(shown(mon), batch(10))
    assert "step <b>10</b>" in p.label.value and "6 images 5×7" in p.label.value
    w = p.grid.children[0].layout.width
    assert w == f"{7 * (96 // 7)}px"  # small images scaled up by an integer factor
    six = list(p.grid.children)
    job.push([image_record(20, "samples", batch(20, 4)), {**image_record(30, "samples", None)}])
    mon.flush()
    assert len(p.grid.children) == 4 and "step <b>20</b>" in p.label.value  # a stub (None) is skipped
    assert [im.comm is None for im in six] == [False] * 4 + [True] * 2  # the two left over are closed
    np.testing.assert_array_equal(shown(mon), batch(20, 4))
    p.choice.value = "filters"
    np.testing.assert_array_equal(shown(mon), batch(99, 3, 8, 8, 3))
    mon.close()


def test_images_slider_moved_back_stays_there_while_new_records_arrive():
    job = FakeJob()
    job.history = [image_record(s, "x", batch(s)) for s in (1, 2, 3)]
    mon = TrainingMonitor(job, live=False)
    p = mon.images
    assert p.slider.max == 2 and p.slider.value == 2
    p.slider.value = 0
    np.testing.assert_array_equal(shown(mon), batch(1))
    job.push([image_record(4, "x", batch(4))])
    mon.flush()
    assert p.slider.max == 3 and p.slider.value == 0 and "step <b>1</b>" in p.label.value
    p.slider.value = 3  # back at the end: follows again
    job.push([image_record(5, "x", batch(5))])
    mon.flush()
    assert p.slider.value == 4
    np.testing.assert_array_equal(shown(mon), batch(5))
    mon.close()


def test_images_panel_keeps_at_most_keep_records_per_name():
    p = ImagePanel(keep=3)
    for s in range(10):
        p.add("x", s, batch(s, 1))
    p.redraw()
    assert [s for s, _ in p.data["x"]] == [7, 8, 9] and p.slider.max == 2
    assert len(p._png) == 1  # only the record on screen was encoded


def test_monitor_on_a_real_job_shows_its_logged_images(inproc_rt):
    ds = inproc_rt.dataset("img-mon", {"x": np.linspace(0, 1, 64 * 16, dtype="float32").reshape(64, 16)})
    g = inproc_rt.graph("img-mon")
    x = g.placeholder((None, 16), "float32", name="x")
    w = g.variable(np.ones(16, "float32"), name="w")
    loss = kf.mean(x * w)
    job = g.fit(kf.optim.SGD(0.1).minimize(loss), data=ds, feed={x: "x"}, batch_size=8, steps=40, shuffle=False,
                metrics={"loss": loss}, log_every=5, images={"digits": kf.reshape(x, (-1, 4, 4))}, image_every=10,
                image_max=5)
    mon = TrainingMonitor(job)
    wait_for(lambda: mon.images.data.get("digits") and mon.images.data["digits"][-1][0] == 40, "the last images")
    assert job.wait(timeout=60) == "completed"
    mon.flush()
    # live, a notification carries the pixels of only the newest record of a name: some may be skipped
    assert {s for s, _ in mon.images.data["digits"]} <= {10, 20, 30, 40}
    assert len(mon.images.grid.children) == 5
    np.testing.assert_array_equal(shown(mon), job.images["digits"][1])
    mon.close()
    # a monitor made later (same connection) gets every kept record with its pixels
    again = TrainingMonitor(job, live=False)
    assert [s for s, _ in again.images.data["digits"]] == [10, 20, 30, 40]
    for s, a in again.images.data["digits"]:
        np.testing.assert_array_equal(a, dict(job.image_history["digits"])[s])
    again.close()


def test_images_panel_throttled_redraw_draws_new_records_at_most_once_per_interval():
    p = ImagePanel(min_interval_s=3600)
    p.add("x", 1, batch(1, 2))
    p.redraw(throttle=True)
    assert "step <b>1</b>" in p.label.value
    p.add("x", 2, batch(2, 2))
    p.redraw(throttle=True)  # the render thread: too soon
    assert "step <b>1</b>" in p.label.value and p.dirty
    p.redraw()  # monitor.flush(): now
    assert "step <b>2</b>" in p.label.value and not p.dirty
    np.testing.assert_array_equal(np.stack([decode(im.value) for im in p.grid.children]), batch(2, 2))
