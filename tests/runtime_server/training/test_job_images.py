"""Image records of training jobs (issue #5, ``g.fit(images=...)``): pixels evaluated in the
step's own run and converted to uint8 on the runtime, streamed (newest per name per
notification), bounded to ``image_keep`` per name in memory and in the state dir, and back
after a restart of a real `kernelflow serve` subprocess; bad shapes and dtypes fail at
``job.start`` naming the image and its shape.

The image tensors are functions of the step's batch (``shuffle=False``), so the pixels
expected at step ``s`` are known exactly: rows ``(s - 1) * batch ...`` of the dataset.
"""

from __future__ import annotations

import io
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.errors import InvalidArgumentError
from kernelflow.runtime_server.training.fit_loop import to_uint8_images
from tests.support.server import ServerProcess
from tests.support.waiting import WAIT_S, wait_for

from .test_jobs import state_runtime

ROWS, BATCH = 48, 8  # 6 steps per epoch
X = (np.arange(ROWS * 16, dtype="float32").reshape(ROWS, 16) % 97) / 96.0  # every value in [0, 1]


def build(rt: kf.Runtime, name: str):
    """A graph whose train op nudges ``w`` and whose image tensors are the batch as 4x4 images."""
    ds = rt.dataset(f"{name}-data", {"x": X}, overwrite=True)
    g = rt.graph(name)
    x = g.placeholder((None, 16), "float32", name="x")
    w = g.variable(np.ones(16, "float32"), name="w")
    loss = kf.mean(x * w)
    train = kf.optim.SGD(0.01).minimize(loss)
    gray = kf.reshape(x, (-1, 4, 4))                                      # NHW, in [0, 1]
    nchw = kf.reshape(kf.concat([x, x * 2.0 - 5.0, x], axis=1), (-1, 3, 2, 8))  # NCHW, out of [0, 1]
    rgba = kf.cast(kf.reshape(x * 255.0, (-1, 2, 2, 4)), "uint8")      # NHWC uint8, C = 4
    return ds, g, x, train, loss, {"gray": gray, "nchw": nchw, "rgba": rgba}


def batch_rows(step: int) -> np.ndarray:
    lo = (step - 1) * BATCH % ROWS
    return X[lo:lo + BATCH]


def expected(name: str, step: int, n: int) -> np.ndarray:
    rows = batch_rows(step)[:n]
    if name == "gray":
        return np.rint(rows.reshape(-1, 4, 4, 1) * 255).astype(np.uint8)
    if name == "nchw":
        chw = np.concatenate([rows, rows * 2.0 - 5.0, rows], axis=1).reshape(-1, 3, 2, 8).astype(np.float32)
        hwc = chw.transpose(0, 2, 3, 1)
        lo = hwc.min(axis=(1, 2, 3), keepdims=True)
        hi = hwc.max(axis=(1, 2, 3), keepdims=True)
        return np.rint((hwc - lo) / (hi - lo) * 255).astype(np.uint8)
    return (rows * np.float32(255.0)).astype(np.uint8).reshape(-1, 2, 2, 4)


# ----------------------------------------------------------------- both runtimes
def test_fit_images_arrive_with_the_pixels_of_their_step(rt):
    ds, g, x, train, loss, images = build(rt, "img_pixels")
    seen: list[dict] = []
    lock = threading.Lock()
    job = g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=30, shuffle=False, metrics={"loss": loss},
                log_every=5, images=images, image_every=4, image_max=3, checkpoint_every_s=None)

    def on_records(recs):
        with lock:
            seen.extend(recs)

    job.subscribe(on_records)
    assert job.wait(timeout=WAIT_S) == "completed", job.error
    hist = job.image_history
    steps = [4, 8, 12, 16, 20, 24, 28, 30]  # every 4th step and the last
    for name in ("gray", "nchw", "rgba"):
        assert [s for s, _ in hist[name]] == steps
        for s, a in hist[name]:
            assert a.dtype == np.uint8 and a.shape[0] == 3
            np.testing.assert_array_equal(a, expected(name, s, 3), err_msg=f"{name} at step {s}")
    assert job.images["nchw"][0] == 30 and job.images["nchw"][1].shape == (3, 2, 8, 3)
    assert job.images["rgba"][1].shape == (3, 2, 2, 4)
    assert job.history["loss"]["step"].tolist() == [5, 10, 15, 20, 25, 30]  # scalars unaffected
    # the stream: every image record once, in order, the newest per name with pixels
    wait_for(lambda: len([r for r in seen if r["kind"] == "images"]) == 3 * len(steps), "every image record")
    with lock:
        got = [r for r in seen if r["kind"] == "images" and r["name"] == "gray"]
    assert [r["step"] for r in got] == steps and got[-1]["images"] is not None
    for r in got:
        if r["images"] is not None:
            np.testing.assert_array_equal(r["images"], expected("gray", r["step"], 3))
    job.unsubscribe(on_records)


@pytest.mark.parametrize("make, shape", [
    (lambda x: x, "(None, 16)"),                                    # rank 2
    (lambda x: kf.reshape(x, (-1, 2, 2, 2, 2)), "(None, 2, 2, 2, 2)"),  # rank 5
    (lambda x: kf.reshape(x, (-1, 2, 4, 2)), "(None, 2, 4, 2)"),        # C = 2 either way
])
def test_fit_image_with_bad_shape_raises_invalid_argument_naming_key_and_shape(rt, make, shape):
    ds, g, x, train, loss, _ = build(rt, "img_bad_shape")
    with pytest.raises(InvalidArgumentError, match=r"image 'bad'.*\(N, H, W\).*its shape is " + shape.replace(
            "(", r"\(").replace(")", r"\)")):
        g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=2, images={"bad": make(x)})


def test_fit_image_with_integer_dtype_raises_invalid_argument_naming_key_and_dtype(rt):
    ds, g, x, train, loss, _ = build(rt, "img_bad_dtype")
    with pytest.raises(InvalidArgumentError, match=r"image 'counts'.*float or uint8; its dtype is int32"):
        g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=2,
              images={"counts": kf.cast(kf.reshape(x, (-1, 4, 4)), "int32")})


def test_fit_images_not_a_map_raises_invalid_argument(rt):
    ds, g, x, train, loss, images = build(rt, "img_list")
    with pytest.raises(InvalidArgumentError, match="images must map names"):
        g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=2, images=[images["gray"]])


# ----------------------------------------------------------------- bounds (in-process, looks at the service)
def test_image_records_beyond_image_keep_lose_pixels_but_keep_their_place(inproc_rt):
    ds, g, x, train, loss, images = build(inproc_rt, "img_keep")
    job = g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=40, shuffle=False, metrics={"loss": loss},
                log_every=1, images={"gray": images["gray"]}, image_every=2, image_keep=3, checkpoint_every_s=None)
    assert job.wait(timeout=WAIT_S) == "completed", job.error
    server_job = inproc_rt._transport.service.jobs.get(job.id)
    recs = [r for r in server_job.records if r["kind"] == "images"]
    assert [r["step"] for r in recs] == list(range(2, 41, 2))  # every record keeps its place
    assert [r["step"] for r in recs if r["images"] is not None] == [36, 38, 40]
    assert [s for s, _ in job.image_history["gray"]] == [36, 38, 40]  # the client mirror is bounded too
    mirror = [r for r in job._m.records if r["kind"] == "images" and r["images"] is not None]
    assert len(mirror) == 3


def test_newest_images_only_stubs_older_records_of_a_name_in_one_notification():
    from kernelflow.runtime_server.training.jobs import newest_images_only

    a = np.zeros((1, 2, 2, 1), np.uint8)
    recs = [{"kind": "images", "step": s, "name": n, "images": a} for s in (1, 2, 3) for n in ("p", "q")]
    recs.insert(2, {"kind": "scalars", "step": 1, "values": {}})
    out = newest_images_only(recs)
    assert [(r["step"], r.get("name"), r.get("images") is not None) for r in out] == [
        (1, "p", False), (1, "q", False), (1, None, False), (2, "p", False), (2, "q", False), (3, "p", True),
        (3, "q", True)]
    assert recs[0]["images"] is a  # the job's own records are untouched


# ----------------------------------------------------------------- conversion
def test_to_uint8_images_scales_unit_floats_and_normalises_others_per_image():
    unit = np.array([[[0.0, 0.5], [1.0, 0.25]]], np.float32)
    np.testing.assert_array_equal(to_uint8_images("u", unit, 16)[..., 0], [[[0, 128], [255, 64]]])
    wide = np.stack([unit[0] * 10 - 3, unit[0] + 7])  # two images, two ranges
    np.testing.assert_array_equal(to_uint8_images("w", wide, 16)[..., 0], [[[0, 128], [255, 64]]] * 2)
    odd = np.array([[[np.nan, 2.0], [np.inf, 4.0]], [[3.0, 3.0], [3.0, 3.0]]])
    np.testing.assert_array_equal(to_uint8_images("o", odd, 16)[..., 0], [[[0, 0], [0, 255]], [[0, 0], [0, 0]]])


def test_to_uint8_images_keeps_first_max_n_and_moves_channels_last():
    a = np.arange(5 * 3 * 2 * 2, dtype=np.uint8).reshape(5, 3, 2, 2)  # NCHW
    out = to_uint8_images("c", a, 2)
    assert out.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(out, a[:2].transpose(0, 2, 3, 1))


@pytest.mark.parametrize("shape", [(3, 4), (2, 4, 4, 2), (2, 0, 4)])
def test_to_uint8_images_bad_value_shape_raises_naming_key_and_shape(shape):
    with pytest.raises(InvalidArgumentError, match=r"image 'k' must be .* its value has shape \(" + str(shape[0])):
        to_uint8_images("k", np.zeros(shape, np.float32), 4)


# ----------------------------------------------------------------- state dir
def _check_reloaded(job: kf.Job, keep: int, last: int) -> None:
    hist = job.image_history
    want = list(range(last - 2 * (keep - 1), last + 1, 2))
    assert [s for s, _ in hist["gray"]] == want
    for s, a in hist["gray"]:
        np.testing.assert_array_equal(a, expected("gray", s, 16))
    assert job.images["gray"][0] == last


def test_image_history_back_after_inproc_restart_bounded_on_disk(tmp_path):
    from kernelflow.runtime_server.persist.records import fs_name
    from kernelflow.runtime_server.persist.state import StateDir

    state = tmp_path / "state"
    rt = state_runtime(state)
    ds, g, x, train, loss, images = build(rt, "img_state")
    job = g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=60, shuffle=False, log_every=0,
                images={"gray": images["gray"]}, image_every=2, image_keep=4, checkpoint_every_s=None)
    assert job.wait(timeout=WAIT_S) == "completed", job.error
    rt.close()
    on_disk = StateDir(state).logs.load(state / "jobs" / fs_name(job.id) / "images.log")
    assert 4 <= len(on_disk) <= 8  # compacted to the newest 4 whenever it passed 2 x 4

    rt2 = state_runtime(state)
    j = rt2.job(job.id)
    _check_reloaded(j, 4, 60)
    recs = [r for r in rt2._transport.service.jobs.get(job.id).records if r["kind"] == "images"]
    assert len(recs) == 30 and sum(r["images"] is not None for r in recs) == 4
    rt2.close()


def test_image_history_back_after_server_subprocess_restart(tmp_path):
    state = tmp_path / "state"
    srv = ServerProcess(tmp_path / "a", "--state-dir", str(state)).wait_listening()
    try:
        rt = srv.connect()
        ds, g, x, train, loss, images = build(rt, "img_restart")
        job = g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=40, shuffle=False, metrics={"loss": loss},
                    log_every=2, images={"gray": images["gray"]}, image_every=2, image_keep=5,
                    checkpoint_every_s=None)
        assert job.wait(timeout=WAIT_S) == "completed", job.error
        _check_reloaded(job, 5, 40)
        rt.close()
    finally:
        srv.stop()
    srv = ServerProcess(tmp_path / "b", "--state-dir", str(state)).wait_listening()
    try:
        rt = srv.connect()
        j = rt.job(job.id)
        _check_reloaded(j, 5, 40)
        seen: list[dict] = []
        j.subscribe(seen.extend)  # a re-attached monitor gets them from subscribe
        assert [r["step"] for r in seen if r["kind"] == "images" and r["images"] is not None] == [32, 34, 36, 38, 40]
        j.unsubscribe()
        rt.close()
    finally:
        srv.stop()


def test_image_history_on_a_live_connection_fetches_pixels_the_stream_left_out(rt):
    ds, g, x, train, loss, images = build(rt, "img_gaps")
    job = g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=1_000_000, shuffle=False, log_every=0,
                images={"gray": images["gray"]}, image_every=1, image_max=2, image_keep=50, checkpoint_every_s=None)
    seen: list[dict] = []
    job.subscribe(seen.extend)
    try:
        wait_for(lambda: any(r["kind"] == "images" and r["images"] is None for r in list(seen)),
                 "a notification with several records of one name (older ones without pixels)")
        wait_for(lambda: job.progress["step"] >= 60, "more steps than image_keep")
    finally:
        assert job.stop() == "stopped"
    job.unsubscribe()
    hist = job.image_history["gray"]
    last = job.refresh()["step"]
    assert [s for s, _ in hist] == list(range(last - 49, last + 1))  # the newest image_keep, none missing
    for s, a in hist:
        np.testing.assert_array_equal(a, expected("gray", s, 2))


def test_image_whose_shape_is_known_only_at_run_time_fails_the_job_naming_key_and_shape(rt):
    ds = rt.dataset("img-dyn-data", {"z": np.zeros((ROWS, 2, 4, 2), "float32")}, overwrite=True)
    g = rt.graph("img_dyn")
    z = g.placeholder((None, None, None, None), "float32", name="z")
    w = g.variable(np.float32(1.0), name="w")
    train = kf.optim.SGD(0.1).minimize(kf.mean(z) * w)
    job = g.fit(train, data=ds, feed={z: "z"}, batch_size=BATCH, steps=10, images={"planes": z}, image_every=3)
    assert job.wait(timeout=WAIT_S) == "failed"
    err = job.error
    assert err["type"] == "InvalidArgumentError" and err["step"] == 3
    assert "image 'planes' must be" in err["message"] and "(8, 2, 4, 2)" in err["message"]


def test_image_records_reach_the_tensorboard_event_files_as_image_summaries(tmp_path):
    from tensorboardX.proto.event_pb2 import Event

    rt = state_runtime(tmp_path / "state")
    ds, g, x, train, loss, images = build(rt, "img_tb")
    job = g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=6, shuffle=False, log_every=0,
                images={"gray": images["gray"]}, image_every=3, image_max=2, checkpoint_every_s=None)
    assert job.wait(timeout=WAIT_S) == "completed", job.error
    logdir = job.refresh()["tensorboard_dir"]
    rt.close()  # an in-process runtime with a state dir shuts down: event writers flushed and closed
    found: dict[int, bytes] = {}
    for f in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data, i = f.read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.tag == "gray":
                    found[ev.step] = v.image.encoded_image_string
    assert sorted(found) == [3, 6]
    from PIL import Image

    grid = np.asarray(Image.open(io.BytesIO(found[6])))
    # tensorboardX tiles the 2 images of step 6 into one grid; both 4x4 digits' pixels are in it.
    for img in expected("gray", 6, 2)[..., 0]:
        assert any(np.array_equal(grid[r:r + 4, c:c + 4, 0] if grid.ndim == 3 else grid[r:r + 4, c:c + 4], img)
                   for r in range(grid.shape[0] - 3) for c in range(grid.shape[1] - 3))


def test_mirror_asks_only_for_stubs_the_runtime_still_keeps_each_once():
    from kernelflow.client.mirror import Mirror

    m = Mirror()
    m.status = {"image_keep": 2}
    px = np.zeros((1, 2, 2, 1), np.uint8)
    recs = [{"kind": "scalars", "step": s, "wall_time": 0.0, "values": {"loss": 1.0}} for s in range(1000)]
    m.apply(0, recs)
    assert m.missing_images() is None
    # a notification sends pixels only for the newest record of a name: 1000 and 1001 come as stubs
    m.apply(1000, [{"kind": "images", "step": s, "wall_time": 0.0, "name": "a", "images": None} for s in (0, 1)]
            + [{"kind": "images", "step": 2, "wall_time": 0.0, "name": "a", "images": px}])
    assert m.missing_images() == 1001  # 1000 is older than the newest 2 of "a": the runtime dropped it
    m.fill_images(1001, [{"kind": "images", "step": 1, "wall_time": 0.0, "name": "a", "images": px + 1}])
    assert m.records[1001]["images"] is not None and m.records[1001]["images"][0, 0, 0, 0] == 1
    assert m.missing_images() is None  # asked once; nothing else is missing


def test_bounded_mirror_indexes_by_history_index_and_forgets_stubs_it_dropped():
    from kernelflow.client.mirror import Mirror

    m = Mirror(max_records=4)
    m.status = {"image_keep": 2}
    px = np.zeros((1, 2, 2, 1), np.uint8)
    got: list[dict] = []
    m.callbacks.append(got.extend)
    m.apply(0, [{"kind": "scalars", "step": s, "wall_time": 0.0, "values": {"loss": float(s)}} for s in range(6)])
    assert m.base == 2 and m.n == 6 and [r["step"] for r in m.records] == [2, 3, 4, 5]
    assert [r["step"] for r in got] == list(range(6))  # callbacks get every record, the mirror keeps 4
    m.apply(6, [{"kind": "images", "step": s, "wall_time": 0.0, "name": "a", "images": None} for s in (6, 7)]
            + [{"kind": "images", "step": 8, "wall_time": 0.0, "name": "a", "images": px}])
    assert m.base == 5 and m.missing_images() == 7  # 6: older than the newest 2 of "a"
    m.apply(6, [{"kind": "scalars", "step": 99, "wall_time": 0.0, "values": {}}])  # already seen: ignored
    assert m.n == 9 and len(got) == 9
    m.fill_images(7, [{"kind": "images", "step": 7, "wall_time": 0.0, "name": "a", "images": px + 1}])
    assert m.records[7 - m.base]["images"][0, 0, 0, 0] == 1 and m.missing_images() is None
    m.apply(9, [{"kind": "scalars", "step": s, "wall_time": 0.0, "values": {}} for s in range(9, 13)])
    assert m.base == 9 and m.missing_images() is None  # the stubs below the mirror are forgotten
    m.fill_images(7, [{"kind": "images", "step": 7, "wall_time": 0.0, "name": "a", "images": px}])  # below: no-op
    assert len(m.records) == 4
