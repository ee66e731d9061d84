"""Server-side training jobs (issue #4): the digits MLP fitted as a job, pause/resume/stop,
concurrency with other jobs and with ``g.run``, streamed records (each once, at most every
100 ms), failures, TensorBoard event files, and state-dir restarts (clean and kill -9) with
``resume()`` finishing an interrupted job on the same batches.

Real `kernelflow serve` subprocesses for the end-to-end tests, in-process runtimes for the
fast ones. Every wait has a deadline.
"""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from tests.support.models import MLP, digits, mlp  # noqa: F401
from tests.support.server import ServerProcess
from tests.support.waiting import WAIT_S, wait_for


def state_runtime(state_dir: Path) -> kf.Runtime:
    """An in-process runtime with a state dir."""
    return kf.connect("inproc", state_dir=state_dir)


def read_events(logdir: str) -> dict[str, list[int]]:
    """{tag: [steps]} of every scalar and histogram in the TensorBoard event files of ``logdir``."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[int]] = {}
    for f in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data = f.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            if i + 12 + n + 4 > len(data):
                break
            ev = Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append(ev.step)
    return out


@pytest.fixture(scope="module")
def shared_digits(server):
    with server.connect() as rt:
        digits(rt, "digits")


# ----------------------------------------------------------------- end to end over TCP
def test_fit_digits_mlp_job_reaches_095_validation_accuracy(server, remote, shared_digits):
    train, val = remote.dataset("digits.train"), remote.dataset("digits.val")
    m = mlp(remote, "digits-fit")
    job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, batch_size=64, epochs=20,
                  metrics={"loss": m.loss, "accuracy": m.acc}, log_every=10,
                  validation=(val, {"val_loss": m.loss, "val_accuracy": m.acc}),
                  histograms=[m.w1], histogram_every=100, name="digits")
    assert job.name == "digits" and job.graph == "digits-fit"
    assert job.wait(timeout=WAIT_S) == "completed"
    spe = int(np.ceil(len(train) / 64))
    total = 20 * spe
    p = job.progress
    assert (p["step"], p["total_steps"], p["epoch"], p["steps_per_epoch"]) == (total, total, 20, spe)
    assert p["examples_per_s"] > 0 and p["elapsed_s"] > 0
    h = job.history
    assert h["val_accuracy"]["value"][-1] >= 0.95
    assert h["loss"]["value"][-1] < h["loss"]["value"][0]
    np.testing.assert_array_equal(h["loss"]["step"], np.arange(10, total + 1, 10))
    np.testing.assert_array_equal(h["val_accuracy"]["step"], np.arange(spe, total + 1, spe))
    assert h["loss"]["wall_time"].dtype == np.float64 and np.all(np.diff(h["loss"]["wall_time"]) >= 0)
    hist = job.histograms["w1"]
    assert [s for s, _, _ in hist] == [*range(100, total + 1, 100), total]
    for _, edges, counts in hist:
        assert edges.shape == (31,) and counts.shape == (30,) and counts.sum() == 64 * 32
    frame = job.history_frame()
    assert frame.index.name == "step" and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(frame.columns)
    assert frame.loc[total, "val_accuracy"] == pytest.approx(h["val_accuracy"]["value"][-1])
    # Another client re-attaches with the full history.
    with server.connect() as rt2:
        j2 = rt2.job(job.id)
        assert j2.status == "completed"
        np.testing.assert_array_equal(j2.history["loss"]["value"], h["loss"]["value"])
        assert job.id in [j["id"] for j in rt2.jobs()]
    # TensorBoard event files with the same scalars and the histograms.
    logdir = job.refresh()["tensorboard_dir"]
    events = wait_for(lambda: (lambda e: e if len(e.get("w1", [])) == len(hist) else None)(read_events(logdir)),
                      "the event files")
    assert events["loss"] == list(range(10, total + 1, 10))
    assert events["val_accuracy"] == list(range(spe, total + 1, spe))


def test_job_pause_resume_stop(remote, shared_digits):
    m = mlp(remote, "pausing")
    job = m.g.fit(m.train, data="digits.train", feed={m.x: "x", m.y: "y"}, batch_size=32, steps=10_000_000,
                  metrics={"loss": m.loss}, log_every=20)
    wait_for(lambda: job.progress["step"] > 20 and job.progress["eta_s"] is not None, "steps and a rate")
    assert job.pause() == "paused"
    s1 = job.progress["step"]
    w = [m.g.run(m.w1) for _ in range(5)]  # the graph is served; the job does not move meanwhile
    assert job.progress["step"] == s1 and job.status == "paused"
    np.testing.assert_array_equal(w[0], w[-1])
    assert job.progress["eta_s"] is not None
    assert job.resume() in ("running", "paused")
    wait_for(lambda: job.progress["step"] > s1 + 20, "steps after resume")
    assert job.stop() == "stopped"
    s2 = job.progress["step"]
    assert s2 > s1 and job.error is None
    n = len(job.history["loss"]["step"])
    assert m.g.run(m.loss, feed={m.x: np.zeros((2, 64), "float32"), m.y: np.zeros(2, "int64")}) > 0
    assert job.progress["step"] == s2 and len(job.history["loss"]["step"]) == n
    with pytest.raises(FailedPreconditionError, match=r"is stopped; only paused or interrupted jobs resume"):
        job.resume()


def test_subscription_survives_a_silent_connection_drop_without_any_call(server, shared_digits):
    import socket

    rt = server.connect()
    try:
        m = mlp(rt, "dropped")
        job = m.g.fit(m.train, data="digits.train", feed={m.x: "x", m.y: "y"}, batch_size=32, steps=10_000_000,
                      metrics={"loss": m.loss}, log_every=5)
        steps: list[int] = []
        got = threading.Condition()

        def on_records(records):
            with got:
                steps.extend(r["step"] for r in records if r["kind"] == "scalars")
                got.notify_all()

        job.subscribe(on_records)
        with got:
            assert got.wait_for(lambda: len(steps) >= 3, WAIT_S)
            before = len(steps)
        rt._transport._sock.shutdown(socket.SHUT_RDWR)  # the network drops it; this client calls nothing
        with got:  # the notification thread reconnects and re-subscribes; records keep coming
            assert got.wait_for(lambda: len(steps) >= before + 20, WAIT_S), steps[-3:]
        assert steps == list(range(5, 5 * len(steps) + 1, 5))  # each record once, none lost
        assert job.stop() == "stopped"
    finally:
        rt.close()


def test_two_jobs_on_two_graphs_run_at_once(remote, shared_digits):
    jobs = []
    for name in ("left", "right"):
        m = mlp(remote, name)
        jobs.append(m.g.fit(m.train, data="digits.train", feed={m.x: "x", m.y: "y"}, steps=10_000_000))
    marks = wait_for(lambda: (lambda ps: ps if all(p["status"] == "running" and p["step"] > 0 for p in ps)
                              else None)([j.refresh() for j in jobs]), "both jobs running")
    wait_for(lambda: all(j.refresh()["step"] > p["step"] + 10 for j, p in zip(jobs, marks)), "both advancing")
    assert [j.stop() for j in jobs] == ["stopped", "stopped"]


def test_graph_run_and_variable_assign_served_between_steps_of_a_job(remote, shared_digits):
    m = mlp(remote, "busy")
    job = m.g.fit(m.train, data="digits.train", feed={m.x: "x", m.y: "y"}, steps=10_000_000)
    wait_for(lambda: job.progress["step"] > 10, "steps")
    xb, yb = np.zeros((4, 64), "float32"), np.zeros(4, "int64")
    for _ in range(10):
        assert np.isfinite(m.g.run(m.loss, feed={m.x: xb, m.y: yb}))
    assert job.status in ("running", "queued")  # served between the job's steps, not after it
    m.lr.set(np.float32(0.0))  # Adam with lr 0 leaves the weights where they are
    s = job.progress["step"]
    w_a = m.g.run(m.w1)
    wait_for(lambda: job.progress["step"] > s + 50, "steps at lr 0")
    np.testing.assert_array_equal(m.g.run(m.w1), w_a)
    assert job.status == "running"
    assert job.stop() == "stopped"


def test_late_subscriber_gets_every_record_exactly_once(server, remote, shared_digits):
    m = mlp(remote, "stream", hidden=8)
    total = 6000
    job = m.g.fit(m.train, data="digits.train", feed={m.x: "x", m.y: "y"}, steps=total, metrics={"loss": m.loss},
                  log_every=1)
    wait_for(lambda: job.refresh()["records"] >= 100, "the first records")
    got: list[int] = []
    batches: list[int] = []
    lock = threading.Lock()

    def on_records(records):
        with lock:
            got.extend(r["step"] for r in records)
            batches.append(len(records))

    with server.connect() as late:  # a second client, subscribing mid-job
        lj = late.job(job.id)
        lj.subscribe(on_records)
        assert job.wait(timeout=WAIT_S) == "completed"
        wait_for(lambda: len(got) >= total, "every record")
        with lock:
            assert got == list(range(1, total + 1))
            assert len(batches) >= 2  # the history, then the stream
        lj.unsubscribe(on_records)


def test_job_whose_step_raises_fails_with_error_and_step_and_server_goes_on(remote, shared_digits):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    remote.dataset("narrow", {"x": (X[:, :63] / 16).astype("float32"), "y": y.astype("int64")})
    m = mlp(remote, "broken", width=None)  # x of unknown width: the matmul fails at run time
    job = m.g.fit(m.train, data="narrow", feed={m.x: "x", m.y: "y"}, steps=100)
    assert job.wait(timeout=WAIT_S) == "failed"
    err = job.error
    assert err["type"] == "InvalidArgumentError" and err["step"] == 1
    assert "matmul" in err["message"] and "(32, 63)" in err["message"]
    ok = mlp(remote, "after-failure")
    job2 = ok.g.fit(ok.train, data="digits.train", feed={ok.x: "x", ok.y: "y"}, steps=30)
    assert job2.wait(timeout=WAIT_S) == "completed"


def test_stop_on_nan_fails_job_at_the_first_nan_metric(remote, shared_digits):
    m = mlp(remote, "nan")
    job = m.g.fit(m.train, data="digits.train", feed={m.x: "x", m.y: "y"}, steps=10_000_000,
                  metrics={"loss": m.loss}, log_every=5, stop_on_nan=True)
    wait_for(lambda: job.progress["step"] > 20, "steps")
    s = job.progress["step"]
    m.scale.set(np.float32(np.nan))
    assert job.wait(timeout=WAIT_S) == "failed"
    err = job.error
    assert err["step"] > s and err["step"] % 5 == 0
    assert f"metric 'loss' is nan at step {err['step']}" in err["message"]
    assert job.progress["step"] == err["step"]  # that step's update ran in the same run as its metrics


# ----------------------------------------------------------------- in-process: spec checks, queueing, streaming
@pytest.fixture
def local():
    rt = kf.connect("inproc")
    train, val = digits(rt)
    yield rt, train, val
    for j in rt.jobs():
        if j["status"] in ("queued", "running", "paused"):
            rt.job(j["id"]).stop()
    rt.close()


@pytest.mark.parametrize("kw, err, match", [
    ({"feed": {"x": "y", "y": "y"}}, InvalidArgumentError,
     r"fit: feed 'x' \(float32\(None, 64\)\) <- array 'y' of dataset 'digits.train' \(int64\(None,\)\): dtypes differ"),
    ({"feed": {"x": "nope", "y": "y"}}, InvalidArgumentError, r"dataset 'digits.train' has no array 'nope'"),
    ({"feed": {"x": "x"}}, InvalidArgumentError, r"placeholder 'y' .* must be fed"),
    ({"metrics": {"acc": "x"}}, InvalidArgumentError, r"metric 'acc' \(x\) must be a scalar"),
    ({"epochs": 2, "steps": 5}, InvalidArgumentError, r"give epochs or steps, not both"),
    ({"batch_size": 0}, InvalidArgumentError, r"batch_size must be an integer >= 1; got 0"),
    ({"data": "missing"}, NotFoundError, r"no dataset named 'missing'"),
    ({"histograms": ["x"]}, InvalidArgumentError, r"histograms are of variables; 'x' is a placeholder node"),
])
def test_fit_bad_spec_raises_at_start(local, kw, err, match):
    rt, train, _ = local
    m = mlp(rt, "spec")
    args = {"data": train, "feed": {m.x: "x", m.y: "y"}, **kw}
    with pytest.raises(err, match=match):
        m.g.fit(m.train, **args)
    assert rt.jobs() == []


def test_second_job_on_same_graph_waits_queued_until_first_ends(local):
    rt, train, _ = local
    m = mlp(rt, "queue")
    first = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=10_000_000)
    second = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=20)
    wait_for(lambda: first.status == "running", "the first job")
    assert second.status == "queued" and second.progress["step"] == 0
    assert first.stop() == "stopped"
    assert second.wait(timeout=WAIT_S) == "completed"
    assert second.progress["step"] == 20


def test_stopping_a_queued_job_ends_it_without_running(local):
    rt, train, _ = local
    m = mlp(rt, "queue-stop")
    first = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=10_000_000)
    second = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=20)
    assert second.stop() == "stopped" and second.progress["step"] == 0
    assert first.status in ("queued", "running")


def test_records_pushed_at_most_every_100ms_none_dropped(local):
    rt, train, _ = local
    sent: list[tuple[float, int, int]] = []
    tr = rt._transport
    notify = tr.notify

    def timed(method, params):
        if method == "job.records":
            sent.append((time.monotonic(), params[1], len(params[2])))
        notify(method, params)

    tr.notify = timed
    m = mlp(rt, "rate", hidden=8)
    job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=3000, metrics={"loss": m.loss},
                  log_every=1)
    got: list[int] = []
    job.subscribe(lambda recs: got.extend(r["step"] for r in recs))
    assert job.wait(timeout=WAIT_S) == "completed"
    wait_for(lambda: len(got) >= 3000, "every record")
    assert got == list(range(1, 3001))
    times = [t for t, _, _ in sent]
    assert len(times) >= 2 and min(np.diff(times)) >= 0.095
    starts = [s for _, s, n in sent if n]
    assert starts == sorted(starts)
    assert max(n for _, _, n in sent) > 1  # records in between go together


def test_job_without_metrics_or_logging_runs_train_op_only(local):
    rt, train, _ = local
    m = mlp(rt, "silent")
    job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, epochs=2, batch_size=100, shuffle=False,
                  drop_remainder=True, log_every=0)
    assert job.wait(timeout=WAIT_S) == "completed"
    assert job.progress["step"] == 2 * (len(train) // 100)
    assert job.history == {} and job.histograms == {}
    assert job.history_frame().empty


def test_job_wait_with_progress_shows_bar_with_latest_metrics(local, capsys):
    rt, train, _ = local
    m = mlp(rt, "bar")
    job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=300, metrics={"loss": m.loss}, name="bar")
    assert job.wait(timeout=WAIT_S, progress=True) == "completed"
    err = capsys.readouterr().err
    assert "bar: 100%" in err and "300/300" in err and "loss=" in err and "status=completed" in err


def test_job_wait_timeout_raises_deadline_exceeded(local):
    rt, train, _ = local
    m = mlp(rt, "slow")
    job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=10_000_000)
    with pytest.raises(kf.errors.DeadlineExceededError, match=r"job job-\w+ is still (queued|running) .* after 0.05 s"):
        job.wait(timeout=0.05)


def test_an_in_memory_runtime_removes_its_jobs_temp_event_dirs_on_delete_and_on_close():
    rt = kf.connect("inproc")
    train, _ = digits(rt)
    m = mlp(rt, "temp-events")
    dirs = []
    for _ in range(2):
        job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=20, metrics={"loss": m.loss},
                      log_every=5)
        job.wait(timeout=WAIT_S)
        logdir = job.refresh()["tensorboard_dir"]
        assert Path(logdir).is_dir() and not logdir.startswith(str(Path.cwd()))
        dirs.append((job, Path(logdir)))
    (first, first_dir), (_, second_dir) = dirs
    first.delete()
    assert not first_dir.exists() and second_dir.is_dir()
    rt.close()
    assert not second_dir.exists()


# ----------------------------------------------------------------- state dir: shutdown, kill -9, resume
def test_delete_refuses_a_running_job_then_forgets_it_in_memory_and_state_dir(tmp_path):
    from kernelflow.runtime_server.persist.records import fs_name

    state = tmp_path / "state"
    rt = state_runtime(state)
    train, _ = digits(rt)
    m = mlp(rt, "deleting")
    job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=10_000_000, metrics={"loss": m.loss},
                  log_every=5)
    wait_for(lambda: job.progress["step"] > 10, "steps")
    with pytest.raises(FailedPreconditionError, match=rf"job {job.id} is running; stop it first"):
        job.delete()
    assert job.stop() == "stopped"
    kept = rt.job(job.id).history["loss"]["value"]
    assert len(kept) >= 2 and (state / "jobs" / fs_name(job.id)).is_dir()
    server_job = rt._transport.service.jobs.get(job.id)
    job.delete()
    # a status or history write that lost the race with the delete writes nothing
    server_job.persist_status()
    server_job.persist_records()
    assert job.id not in [j["id"] for j in rt.jobs()]
    with pytest.raises(NotFoundError, match=rf"no job '{job.id}'"):
        rt.job(job.id)
    assert not (state / "jobs" / fs_name(job.id)).exists()
    assert m.g.checkpoints()  # the job's checkpoints stay with the graph
    rt.close()
    rt2 = state_runtime(state)  # and it stays forgotten after a restart
    try:
        assert job.id not in [j["id"] for j in rt2.jobs()]
    finally:
        rt2.close()


def test_clean_shutdown_interrupts_job_and_resume_finishes_with_same_batches(tmp_path):
    rt = state_runtime(tmp_path / "state")
    train, _ = digits(rt)
    ref = mlp(rt, "reference")
    total = 2000  # long enough to pause it mid-way on a loaded machine
    kw = dict(data=train, feed={ref.x: "x", ref.y: "y"}, steps=total, metrics={"loss": ref.loss}, log_every=10,
              batch_size=32, checkpoint_every_s=3600)
    assert ref.g.fit(ref.train, **kw).wait(timeout=WAIT_S) == "completed"
    w_ref = ref.g.run(ref.w1)
    m = mlp(rt, "interrupted")
    job = m.g.fit(m.train, **{**kw, "feed": {m.x: "x", m.y: "y"}, "metrics": {"loss": m.loss}})
    ckpts = wait_for(m.g.checkpoints, "the checkpoint of the job's start")
    assert ckpts[0]["job"] == job.id and ckpts[0]["step"] == 0
    wait_for(lambda: job.progress["step"] >= 100, "steps")
    assert job.pause() == "paused"
    rt._transport.service.shutdown()
    assert job.status == "interrupted"
    s = job.progress["step"]
    assert 100 <= s < total and m.g.checkpoints()[-1]["step"] == s and m.g.checkpoints()[-1]["job"] == job.id
    rt.close()

    rt2 = state_runtime(tmp_path / "state")
    j = rt2.job(job.id)
    assert j.status == "interrupted" and j.progress["step"] == s
    assert [r["name"] for r in rt2.datasets()] == ["digits", "digits.train", "digits.val"]
    np.testing.assert_array_equal(j.history["loss"]["step"], np.arange(10, (s // 10) * 10 + 1, 10))
    assert j.resume() in ("queued", "running", "completed")
    assert j.wait(timeout=WAIT_S) == "completed"
    assert j.progress["step"] == total
    np.testing.assert_array_equal(j.history["loss"]["step"], np.arange(10, total + 1, 10))
    g2 = rt2.graph("interrupted")
    np.testing.assert_allclose(g2.run(g2["w1"]), w_ref, rtol=1e-5, atol=1e-6)  # same batches, same order
    assert g2.checkpoints()[-1]["step"] == total
    rt2.close()


def test_kill9_mid_job_restart_finds_graphs_checkpoint_history_and_resume_finishes(tmp_path):
    from safetensors.numpy import load_file

    from kernelflow.runtime_server.persist.records import fs_name

    state = tmp_path / "state"
    srv = ServerProcess(tmp_path / "a", "--state-dir", str(state)).wait_listening()
    total = 6000
    try:
        rt = srv.connect()
        train, val = digits(rt)
        m = mlp(rt, "killed")
        other = rt.graph("bystander")
        other.variable(np.arange(3, dtype="float32"), name="v")
        other.sync()
        job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=total, metrics={"loss": m.loss},
                      log_every=10, validation=(val, {"val_accuracy": m.acc}), validate_every=500,
                      checkpoint_every_s=0.2)
        wait_for(lambda: (job.refresh()["checkpoint"] or {}).get("step", 0) >= 200, "a periodic checkpoint")
        assert job.status == "running"
    finally:
        srv.proc.kill()
        srv.proc.wait(timeout=10)
    srv = ServerProcess(tmp_path / "b", "--state-dir", str(state)).wait_listening()
    try:
        rt = srv.connect()
        assert sorted(rt.graphs()) == ["bystander", "killed"]
        np.testing.assert_array_equal(rt.graph("bystander")["v"].value(), np.arange(3, dtype="float32"))
        j = rt.job(job.id)
        st = j.refresh()
        assert st["status"] == "interrupted"
        last = [c for c in rt.graph("killed").checkpoints() if c["job"] == job.id][-1]
        assert st["step"] == last["step"] >= 200
        arrays = load_file(str(state / "checkpoints" / fs_name("killed") / last["file"]))
        g = rt.graph("killed")
        for name in ("w1", "b1", "w2", "b2"):
            np.testing.assert_array_equal(g[name].value(), arrays[name])
        steps = j.history["loss"]["step"]
        assert steps[-1] >= last["step"] // 10 * 10  # every step logged before the checkpoint is on disk
        np.testing.assert_array_equal(steps, np.arange(10, steps[-1] + 1, 10))
        j.resume()
        assert j.wait(timeout=WAIT_S) == "completed"
        assert j.progress["step"] == total
        np.testing.assert_array_equal(j.history["loss"]["step"], np.arange(10, total + 1, 10))
        np.testing.assert_array_equal(j.history["val_accuracy"]["step"], np.arange(500, total + 1, 500))
        assert j.history["val_accuracy"]["value"][-1] >= 0.9
        rt.close()
    finally:
        srv.stop()
