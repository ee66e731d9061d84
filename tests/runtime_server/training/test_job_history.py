"""Job histories spill to the job's record log (issue #15 item 9): a long job's records
(scalars every step, images, audio, text) do not all live in server memory. The in-memory
structure (`History`) holds a bounded tail and the kept image / audio records; ``job.records``
still returns every record in order, from any index, also after a restart on the same state
dir (in-process and a real `kernelflow serve`), and without a state dir (a temp log).

Memory is counted as what `History` holds (records), not as RSS.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.runtime_server.training.history import MARK_STRIDE, TAIL_RECORDS
from tests.support.server import ServerProcess
from tests.support.waiting import WAIT_S

from .test_job_images import BATCH, ROWS, X, build
from .test_jobs import state_runtime

KEEP = 3
PER_STEP = 4  # scalars, an image, an audio clip and a text record every step


def _fit(rt: kf.Runtime, name: str, steps: int) -> kf.Job:
    ds, g, x, train, loss, images = build(rt, name)
    codes = kf.cast(x * 25.0 + 65.0, "int32")  # letters A..Z: text of the step's batch
    job = g.fit(train, data=ds, feed={x: "x"}, batch_size=BATCH, steps=steps, shuffle=False,
                metrics={"loss": loss}, log_every=1, images={"gray": images["gray"]},
                audio={"wave": x * 0.5}, text={"codes": codes}, image_every=1, image_max=1, audio_max=1,
                image_keep=KEEP, checkpoint_every_s=None)
    assert job.wait(timeout=WAIT_S * 4) == "completed", job.error
    return job


def _batch(step: int) -> np.ndarray:
    lo = (step - 1) * BATCH % ROWS
    return X[lo:lo + BATCH]


def _check_history(recs: list[dict], steps: int) -> None:
    """Every record of every step, in step order, each holding its own step's values; only the
    newest KEEP images and audio clips keep their payload."""
    assert len(recs) == PER_STEP * steps
    assert [r["step"] for r in recs] == [s for s in range(1, steps + 1) for _ in range(PER_STEP)]
    for s in range(1, steps + 1):
        step_recs = {r["kind"]: r for r in recs[(s - 1) * PER_STEP:s * PER_STEP]}
        assert sorted(step_recs) == ["audio", "images", "scalars", "text"]
        b = _batch(s)
        # the scalar of step s is the loss of the weights the step started from: only the first is known
        if s == 1:
            assert step_recs["scalars"]["values"]["loss"] == pytest.approx(float(np.mean(b)), rel=1e-5)
        assert step_recs["text"]["text"][0] == "".join(chr(int(c)) for c in (b[0] * 25.0 + 65.0).astype("int32"))
        for kind in ("images", "audio"):
            has = step_recs[kind][kind] is not None
            assert has == (s > steps - KEEP), (s, kind)
        if s > steps - KEEP:
            np.testing.assert_array_equal(step_recs["images"]["images"][0, ..., 0],
                                          np.rint(b[0].reshape(4, 4) * 255).astype(np.uint8))


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], np.ndarray) or isinstance(y[k], np.ndarray):
                np.testing.assert_array_equal(x[k], y[k])
            else:
                assert x[k] == y[k], (k, x[k], y[k])


def _held(rt: kf.Runtime, job_id: str):
    h = rt._transport.service.jobs.get(job_id).history
    return h, h.held()


def test_long_job_history_bounded_in_memory_and_whole_through_the_rpc_and_a_restart(tmp_path):
    steps = 700  # 2800 records: the tail (1024) overflows more than twice
    state = tmp_path / "state"
    rt = state_runtime(state)
    job = _fit(rt, "hist", steps)
    h, held = _held(rt, job.id)
    assert h.n == PER_STEP * steps
    assert held <= TAIL_RECORDS + 2 * KEEP  # the tail and the kept images and clips: not the history
    assert h.base >= PER_STEP * steps - TAIL_RECORDS and len(h.marks) == -(-h.persisted // MARK_STRIDE)
    full = rt.call("job.records", [job.id, 0])["records"]
    _check_history(full, steps)
    for since in (1, MARK_STRIDE - 1, MARK_STRIDE, 1000, h.base - 1, h.base, h.n - 1, h.n, h.n + 5):
        _same(rt.call("job.records", [job.id, since])["records"], full[since:])
    seen = rt.call("job.subscribe", [job.id])["records"]
    _same(seen, full)
    assert rt.call("job.status", [job.id])["records"] == len(full)
    rt.close()

    rt2 = state_runtime(state)
    h2, held2 = _held(rt2, job.id)
    assert held2 <= TAIL_RECORDS + 2 * KEEP and h2.n == len(full)
    _same(rt2.call("job.records", [job.id, 0])["records"], full)
    _same(rt2.call("job.records", [job.id, 777])["records"], full[777:])
    assert rt2.call("job.status", [job.id])["metrics"]["loss"] == full[-PER_STEP]["values"]["loss"]
    rt2.close()


def test_without_a_state_dir_the_history_spills_to_a_temp_log_removed_with_the_job():
    rt = kf.connect("inproc")
    try:
        steps = 400
        job = _fit(rt, "hist_mem", steps)
        h, held = _held(rt, job.id)
        assert held <= TAIL_RECORDS + 2 * KEEP and h.n == PER_STEP * steps
        spill_dir = h.log.path.parent
        assert h.log.path.exists()
        # one private dir per job: the spilled history beside the TensorBoard event files
        assert str(spill_dir) == rt.job(job.id).refresh()["tensorboard_dir"]
        full = rt.call("job.records", [job.id, 0])["records"]
        _check_history(full, steps)
        _same(rt.call("job.records", [job.id, 300])["records"], full[300:])
        assert rt.call("job.delete", [job.id]) is True
        assert not spill_dir.exists()
    finally:
        rt.close()


def test_history_of_a_real_server_whole_in_order_after_a_restart(tmp_path):
    steps = 300  # 1200 records: older ones come from history.log
    state = tmp_path / "state"
    srv = ServerProcess(tmp_path / "a", "--state-dir", str(state)).wait_listening()
    try:
        with srv.connect() as rt:
            job = _fit(rt, "hist_srv", steps)
            full = rt.call("job.records", [job.id, 0])["records"]
            _check_history(full, steps)
            _same(rt.call("job.records", [job.id, 100])["records"], full[100:])
    finally:
        srv.stop()
    again = ServerProcess(tmp_path / "b", "--state-dir", str(state)).wait_listening()
    try:
        with again.connect() as rt:
            _same(rt.call("job.records", [job.id, 0])["records"], full)
            _same(rt.call("job.subscribe", [job.id])["records"], full)
    finally:
        again.stop()
