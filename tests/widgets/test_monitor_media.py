"""The monitor's audio and text panels without a browser (issue #17): hidden without records, players
whose WAVs decode back to the record's samples, the step slider of the images panel, text rows
escaped, and fed live by a real in-process job."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

pytest.importorskip("bqplot")

import kernelflow as kf  # noqa: E402
from kernelflow.protocol.media import wav_bytes  # noqa: E402
from kernelflow.widgets import TrainingMonitor  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402
from tests.widgets.test_monitor import FakeJob, scalars  # noqa: E402


def audio_record(step: int, name: str, clips: np.ndarray, rate: float = 8000.0) -> dict:
    return {"kind": "audio", "step": step, "wall_time": 1000.0 + step, "name": name, "audio": clips,
            "sample_rate": rate}


def text_record(step: int, name: str, rows: list[str]) -> dict:
    return {"kind": "text", "step": step, "wall_time": 1000.0 + step, "name": name, "text": rows}


def clips(step: int, n: int = 3, frames: int = 800, ch: int = 1) -> np.ndarray:
    return np.random.default_rng(step).integers(-30000, 30000, (n, frames, ch)).astype(np.int16)


def decode(wav: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(wav)) as f:
        a = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, f.getnchannels())
        return a, f.getframerate()


@pytest.mark.parametrize("ch", [1, 2])
def test_wav_bytes_decode_back_to_the_samples(ch):
    a = clips(0, 1, 321, ch)[0]
    got, rate = decode(wav_bytes(a, 22050))
    np.testing.assert_array_equal(got, a)
    assert rate == 22050


def test_audio_and_text_panels_hidden_without_their_records():
    job = FakeJob()
    job.history = scalars(range(3), loss=np.arange(3.0))
    mon = TrainingMonitor(job, live=False)
    assert mon.audio.widget.layout.display == "none" and not mon.audio.players.children
    assert mon.text.widget.layout.display == "none" and mon.text.body.value == ""
    mon.close()


def test_audio_panel_plays_the_newest_record_and_slider_goes_back():
    job = FakeJob()
    job.history = [audio_record(5, "speech", clips(5)), audio_record(10, "speech", clips(10, n=2)),
                   audio_record(10, "noise", clips(99, n=1, ch=2), rate=16000.0)]
    mon = TrainingMonitor(job, live=False)
    p = mon.audio
    assert p.widget.layout.display is None
    assert list(p.choice.options) == ["noise", "speech"]
    p.show("speech", -1)
    assert len(p.players.children) == 2 and all(pl.format == "wav" and pl.controls for pl in p.players.children)
    for pl, want in zip(p.players.children, clips(10, n=2)):
        got, rate = decode(pl.value)
        np.testing.assert_array_equal(got, want)
        assert rate == 8000
    assert "step <b>10</b>" in p.label.value and "0.10 s at 8000 Hz" in p.label.value
    p.slider.value = 0  # back to step 5: three clips, and it stays there when a record comes
    assert len(p.players.children) == 3
    np.testing.assert_array_equal(decode(p.players.children[2].value)[0], clips(5)[2])
    job.push([audio_record(15, "speech", clips(15))])
    mon.flush()
    assert "step <b>5</b>" in p.label.value and p.slider.max == 2
    p.slider.value = 2  # to the end: follows again
    assert "step <b>15</b>" in p.label.value
    mon.close()


def test_text_panel_shows_rows_escaped_with_slider():
    job = FakeJob()
    job.history = [text_record(3, "decoded", ["Hi!", "<b>x</b> & y"]), text_record(6, "decoded", ["later"])]
    mon = TrainingMonitor(job, live=False)
    t = mon.text
    assert t.widget.layout.display is None and "later" in t.body.value and "step <b>6</b>" in t.label.value
    t.slider.value = 0
    assert "Hi!" in t.body.value and "&lt;b&gt;x&lt;/b&gt; &amp; y" in t.body.value and "<b>x</b>" not in t.body.value
    mon.close()


def test_monitor_of_a_real_job_gets_its_audio_and_text():
    rt = kf.connect("inproc")
    try:
        w = (np.sin(np.arange(16 * 200).reshape(16, 200) * 0.1) * 0.5).astype("float32")
        codes = np.tile(np.array([75, 70, 0], "int32"), (16, 1))
        ds = rt.dataset("media-mon", {"w": w, "c": codes}, overwrite=True)
        g = rt.graph("media_mon")
        x = g.placeholder((None, 200), "float32", name="w")
        c = g.placeholder((None, 3), "int32", name="c")
        v = g.variable(np.ones(200, "float32"), name="v")
        train = kf.optim.SGD(0.01).minimize(kf.mean(x * v))
        job = g.fit(train, data=ds, feed={x: "w", c: "c"}, batch_size=4, steps=4, shuffle=False, log_every=0,
                    audio={"wave": x}, text={"codes": c}, image_every=2, audio_max=2, checkpoint_every_s=None)
        mon = TrainingMonitor(job, live=False)
        assert job.wait(timeout=60) == "completed", job.error
        wait_for(lambda: mon.flush() is not None and len(mon.audio.data.get("wave", [])) == 2, "two audio records")
        assert [s for s, _ in mon.audio.data["wave"]] == [2, 4]
        got, rate = decode(mon.audio.players.children[1].value)
        np.testing.assert_array_equal(got[:, 0], np.rint(w[13] * 32767).astype(np.int16))
        assert rate == 16000
        assert mon.text.data["codes"][-1] == (4, ["KF"] * 4)
        mon.close()
    finally:
        rt.close()


def test_stubbed_media_records_are_fetched_and_go_in_step_order():
    """A notification carries the payload of the newest record per name only; the monitor asks the
    job for the rest (``fill_media``) off the notification thread and slots them in by step."""
    full = [audio_record(2, "speech", clips(2)), audio_record(4, "speech", clips(4))]
    job = FakeJob()
    asked = []

    def fill_media():
        asked.append(True)
        return [full[0]]
    job.fill_media = fill_media
    mon = TrainingMonitor(job, live=False)
    job.push([{**full[0], "audio": None}, full[1]])
    mon.flush()
    assert asked == [True]
    assert [s for s, _ in mon.audio.data["speech"]] == [2, 4]
    np.testing.assert_array_equal(mon.audio.data["speech"][0][1][0], clips(2))
    mon.flush()
    assert asked == [True]  # nothing stubbed since: no second call
    job.push([audio_record(4, "speech", clips(44))])  # the same step again replaces it
    mon.flush()
    assert [s for s, _ in mon.audio.data["speech"]] == [2, 4]
    np.testing.assert_array_equal(mon.audio.data["speech"][1][1][0], clips(44))
    mon.close()
