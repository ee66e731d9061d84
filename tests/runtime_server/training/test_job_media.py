"""Audio and text records, in-graph summaries and the graph in TensorBoard (issue #17).

The audio and text tensors are functions of the step's batch (``shuffle=False``), so what
step ``s`` must log is known exactly: rows ``(s - 1) * batch ...`` of the dataset. The
TensorBoard checks use TensorBoard's own loader (EventAccumulator) and a real
``tensorboard`` server's HTTP data API.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
import wave

import numpy as np
import pytest

import kernelflow as kf
from tests.support.waiting import WAIT_S, wait_for

from .test_jobs import state_runtime

ROWS, BATCH, FRAMES = 48, 8, 400
WAVES = (np.sin(np.arange(ROWS * FRAMES).reshape(ROWS, FRAMES) * 0.05) * 1.2).astype("float32")  # some > 1
CODES = np.zeros((ROWS, 6), "int32")
CODES[:, :3] = [72, 105, 33]        # "Hi!"
CODES[::2, 3] = 0x263A              # even rows end in a smiley; zeros after are padding
CODES[:, 4] = np.arange(ROWS) % 10 + 48 # a digit after the padding gap: padding is dropped, not an end


def build(rt: kf.Runtime, name: str):
    ds = rt.dataset(f"{name}-data", {"w": WAVES, "c": CODES}, overwrite=True)
    g = rt.graph(name)
    w = g.placeholder((None, FRAMES), "float32", name="w")
    c = g.placeholder((None, 6), "int32", name="c")
    v = g.variable(np.ones(FRAMES, "float32"), name="v")
    loss = kf.mean(w * v)
    train = kf.optim.SGD(0.01).minimize(loss)
    return ds, g, w, c, v, loss, train


def rows(step: int) -> slice:
    lo = (step - 1) * BATCH % ROWS
    return slice(lo, lo + BATCH)


def pcm(a: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(a, -1, 1) * 32767).astype(np.int16)


def text_of(r: np.ndarray) -> str:
    return "".join(chr(x) for x in r if x)


def test_fit_audio_and_text_hold_their_steps_batch(remote):
    ds, g, w, c, v, loss, train = build(remote, "media_records")
    stereo = kf.stack([w, -w], axis=2)
    job = g.fit(train, data=ds, feed={w: "w", c: "c"}, batch_size=BATCH, steps=7, shuffle=False, log_every=0,
                audio={"mono": w, "stereo": stereo}, text={"codes": c}, audio_sample_rate=8000, audio_max=3,
                image_every=3, image_max=5, checkpoint_every_s=None)
    assert job.wait(timeout=WAIT_S) == "completed", job.error
    step, clips, rate = job.audio["mono"]
    assert (step, clips.shape, clips.dtype, rate) == (7, (3, FRAMES, 1), np.int16, 8000.0)
    np.testing.assert_array_equal(clips[..., 0], pcm(WAVES[rows(7)][:3]))
    _, st, _ = job.audio["stereo"]
    np.testing.assert_array_equal(st[..., 1], pcm(-WAVES[rows(7)][:3]))
    texts = job.text["codes"]
    assert [s for s, _ in texts] == [3, 6, 7]
    for s, got in texts:
        assert got == [text_of(r) for r in CODES[rows(s)][:5]]
    assert texts[0][1][:2] == ["Hi!\u263a6", "Hi!7"]  # rows 16, 17: the padding gap is dropped


def test_fit_audio_of_wrong_dtype_or_rank_fails_at_start_naming_it(remote):
    ds, g, w, c, v, loss, train = build(remote, "media_bad")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"audio 'a' \(c\) must be float"):
        g.fit(train, data=ds, feed={w: "w", c: "c"}, audio={"a": c})
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"text 't' \(w\) must be integer character codes"):
        g.fit(train, data=ds, feed={w: "w", c: "c"}, text={"t": w})
    with pytest.raises(kf.errors.InvalidArgumentError, match="audio_sample_rate must be"):
        g.fit(train, data=ds, feed={w: "w", c: "c"}, audio={"a": w}, audio_sample_rate=0)


def test_in_graph_summaries_are_collected_on_logging_steps_by_scope(remote):
    ds, g, w, c, v, loss, train = build(remote, "media_summaries")
    with g.name_scope("stats"):
        kf.summary.scalar("loss", loss)
        kf.summary.histogram("v", v)
        kf.summary.image("img", kf.reshape(w[:, :16] * 0.4 + 0.5, (-1, 4, 4)))
        kf.summary.audio("wave", w * 0.5, sample_rate=4000)
        kf.summary.text("chars", c)
    other = g.placeholder((None,), "float32", name="not_fed")
    kf.summary.scalar("needs_other", kf.mean(other))  # the job's feed lacks it: not collected, no error
    job = g.fit(train, data=ds, feed={w: "w", c: "c"}, batch_size=BATCH, steps=6, shuffle=False, log_every=3,
                checkpoint_every_s=None)
    assert job.wait(timeout=WAIT_S) == "completed", job.error
    h = job.history
    assert sorted(h) == ["stats/loss"]
    assert h["stats/loss"]["step"].tolist() == [3, 6]
    # The loss logged at step s is that of the weights before step s's update.
    assert abs(h["stats/loss"]["value"][0] - float(np.mean(WAVES[rows(3)] * v_before(job, 3)))) < 1e-4
    assert [s for s, _, _ in job.histograms["stats/v"]] == [3, 6]
    assert job.images["stats/img"][0] == 6
    step, clips, rate = job.audio["stats/wave"]
    assert (step, rate) == (6, 4000.0)
    np.testing.assert_array_equal(clips[..., 0], pcm(WAVES[rows(6)][:4] * 0.5))
    assert job.text["stats/chars"][-1] == (6, [text_of(r) for r in CODES[rows(6)]])


def v_before(job: object, step: int) -> np.ndarray:
    """v before step ``step`` of SGD(0.01) on mean(w * v): each step subtracts 0.01 * mean over the batch
    of w, divided by the frame count (the gradient of the mean)."""
    v = np.ones(FRAMES, np.float64)
    for s in range(1, step):
        v -= 0.01 * WAVES[rows(s)].mean(axis=0) / FRAMES
    return v


def _event_accumulator(logdir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logdir, size_guidance={"audio": 0, "images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tb_job(tmp_path_factory):
    """A finished job of an in-process runtime with a state dir (closed: its event files are flushed)."""
    tmp = tmp_path_factory.mktemp("tb")
    rt = state_runtime(tmp / "state")
    ds, g, w, c, v, loss, train = build(rt, "media_tb")
    with g.name_scope("stats"):
        kf.summary.histogram("v", v)
    job = g.fit(train, data=ds, feed={w: "w", c: "c"}, batch_size=BATCH, steps=6, shuffle=False, log_every=3,
                metrics={"loss": loss}, images={"img": kf.reshape(w[:, :16] * 0.4 + 0.5, (-1, 4, 4))},
                audio={"wave": w}, text={"codes": c}, image_every=3, audio_max=2, checkpoint_every_s=None)
    assert job.wait(timeout=WAIT_S) == "completed", job.error
    logdir = job.refresh()["tensorboard_dir"]
    nodes = [(n.name, n.op.name, [i.name for i in n.inputs] + ["^" + i.name for i in n.control_inputs])
             for n in g.nodes()]
    rt.close()
    return logdir, nodes


def test_event_file_has_all_five_dashboards_and_the_graph_equals_kernelflows(tb_job):
    logdir, nodes = tb_job
    acc = _event_accumulator(logdir)
    tags = acc.Tags()
    assert tags["scalars"] == ["loss"]
    assert tags["images"] == ["img"]
    assert sorted(tags["audio"]) == ["wave/audio/0", "wave/audio/1"]
    assert tags["histograms"] == ["stats/v"]
    assert tags["graph"] is True
    assert "codes/text_summary" in tags["tensors"]
    au = acc.Audio("wave/audio/1")
    assert [a.step for a in au] == [3, 6]
    with wave.open(io.BytesIO(au[-1].encoded_audio_string)) as f:
        assert (f.getframerate(), f.getnchannels(), f.getnframes()) == (16000, 1, FRAMES)
        got = np.frombuffer(f.readframes(FRAMES), "<i2")
    np.testing.assert_array_equal(got, pcm(WAVES[rows(6)][1]))
    gd = acc.Graph()
    assert [(n.name, n.op, list(n.input)) for n in gd.node] == nodes
    assert all(n.device == "/device:CPU:0" for n in gd.node)
    # The first step is profiled: per-node times on the node's device, as TensorBoard's run metadata.
    assert tags["run_metadata"] == ["step 1"]
    (dev,) = acc.RunMetadata("step 1").step_stats.dev_stats
    assert dev.device == "/device:CPU:0"
    names = [ns.node_name for ns in dev.node_stats]
    assert set(names) <= {n for n, _, _ in nodes} and "SGD/update_v" in names and len(set(names)) == len(names)
    assert all(ns.all_end_rel_micros >= 0 and ns.all_start_micros > 1e15 for ns in dev.node_stats)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_real_tensorboard_serves_the_jobs_audio_and_graph(tb_job):
    logdir, nodes = tb_job
    port = _free_port()  # tensorboard takes no port 0: a free one, which a race could take (then: retry)
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
                             "--port", str(port), "--load_fast=false", "--reload_interval", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}/data/plugin"
    try:
        deadline = time.monotonic() + 180
        tags: dict = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                tags = json.loads(_get(f"{base}/audio/tags")).get(".", {})
            except OSError:
                tags = {}
            if "wave/audio/0" in tags:
                break
            time.sleep(0.5)  # polling a server that loads the files on its own schedule
        assert sorted(tags) == ["wave/audio/0", "wave/audio/1"]
        clips = json.loads(_get(f"{base}/audio/audio?run=.&tag=wave/audio/0&sample=0"))
        assert [c["step"] for c in clips] == [3, 6] and clips[0]["contentType"] == "audio/wav"
        wav = _get(f"{base}/audio/individualAudio?{clips[-1]['query']}")
        with wave.open(io.BytesIO(wav)) as f:
            got = np.frombuffer(f.readframes(f.getnframes()), "<i2")
        np.testing.assert_array_equal(got, pcm(WAVES[rows(6)][0]))
        assert json.loads(_get(f"{base}/graphs/info"))["."]["run_graph"] is True
        pbtxt = _get(f"{base}/graphs/graph?run=.&conceptual=false").decode()
        from google.protobuf import text_format
        from tensorboard.compat.proto.graph_pb2 import GraphDef

        gd = text_format.Parse(pbtxt, GraphDef())
        assert [(n.name, n.op, list(n.input)) for n in gd.node] == nodes
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_audio_history_on_a_live_connection_fetches_samples_the_stream_left_out(remote):
    """A notification carries the samples of the newest audio record per name only; ``fill_media``
    (and ``audio_history``) fetch the others the runtime still keeps."""
    ds, g, w, c, v, loss, train = build(remote, "media_gaps")
    job = g.fit(train, data=ds, feed={w: "w"}, batch_size=BATCH, steps=1_000_000, shuffle=False, log_every=0,
                audio={"mono": w}, audio_max=1, image_every=1, image_keep=20, checkpoint_every_s=None)
    seen: list[dict] = []
    job.subscribe(seen.extend)
    try:
        wait_for(lambda: any(r["kind"] == "audio" and r["audio"] is None for r in list(seen)),
                 "a notification with several audio records of one name (older ones without samples)")
    finally:
        assert job.stop() == "stopped"
    job.unsubscribe()
    hist = job.audio_history["mono"]
    last = job.refresh()["step"]
    assert [s for s, _, _ in hist] == list(range(max(1, last - 19), last + 1))  # the newest image_keep, none missing
    for s, clips, rate in hist:
        np.testing.assert_array_equal(clips[..., 0], pcm(WAVES[rows(s)][:1]))
        assert rate == 16000.0
    assert job.fill_media() == []  # nothing is missing any more: no call, nothing filled
