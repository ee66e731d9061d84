"""A distributed runtime (issue #18) under real ``mpiexec``: replicated graphs, variables and
datasets; data-parallel jobs equal to one-rank jobs (2 and 3 ranks); job control across ranks;
a client seeing no difference but ``rt.info()``; kill -9 of a rank mid-job, restart and resume.

Every wait polls with a deadline; the reference is the same job on an in-process runtime.
"""

from __future__ import annotations

import hashlib
import os
import signal

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.client.job import attach_job
from kernelflow.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from tests.support.models import digits, mlp
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for

from .mpirun import WorldServer, require_mpi


@pytest.fixture(scope="module")
def world2(tmp_path_factory):
    require_mpi()
    # 4 KiB fusion buckets: the MLP's gradients fill two (b2, w2, b1 | w1), so the 2-rank jobs overlap
    srv = WorldServer(tmp_path_factory.mktemp("world2"), 2, "--fusion-bytes", "4096").wait_listening()
    yield srv
    srv.stop()


@pytest.fixture
def rt2(world2):
    rt = world2.connect()
    yield rt
    rt.close()


def checksum(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def report(rt: kf.Runtime) -> list[dict]:
    return rt.call("world.report", [])


def fit(m, data, replicas=None, **kw):
    args = dict(data=data, feed={m.x: "x", m.y: "y"}, batch_size=64, metrics={"loss": m.loss}, log_every=5)
    args.update(kw)
    if replicas is not None:
        args["replicas"] = replicas
    return m.g.fit(m.train, **args)


def reference(name: str, **kw) -> dict[str, np.ndarray]:
    """Variables after the same job on an in-process one-rank runtime (no replicas)."""
    rt = kf.connect("inproc")
    try:
        tr, _ = digits(rt)
        m = mlp(rt, name)
        job = fit(m, tr, **kw)
        assert job.wait(timeout=300) == "completed", job.error
        names = ["w1", "b1", "w2", "b2"]
        return {n: m.g.run(m.g[n]) for n in names} | {"loss": np.float64(job.metrics["loss"])}
    finally:
        rt.close()


def assert_same_as_reference(rt: kf.Runtime, m, job, ref: dict, size: int) -> None:
    for n in ("w1", "b1", "w2", "b2"):
        got = m.g.run(m.g[n])
        np.testing.assert_allclose(got, ref[n], rtol=1e-4, atol=2e-5, err_msg=n)  # float32 sums in another order
        assert not np.allclose(got, mlp_initial(n), atol=1e-3), f"{n} did not train"
    assert abs(job.metrics["loss"] - float(ref["loss"])) < 1e-4
    reps = report(rt)
    assert [r["rank"] for r in reps] == list(range(size))
    sums = [r["graphs"][m.g.name]["variables"] for r in reps]
    assert all(s == sums[0] for s in sums), sums  # every rank holds the very same bytes
    assert sums[0]["w1"] == checksum(m.g.run(m.w1))
    assert all(r["divergences"] == [] for r in reps)


_INITIAL: dict[str, np.ndarray] = {}


def mlp_initial(name: str) -> np.ndarray:
    if not _INITIAL:
        rt = kf.connect("inproc")
        m = mlp(rt, "init")
        _INITIAL.update({n: m.g.run(m.g[n]) for n in ("w1", "b1", "w2", "b2")})
        rt.close()
    return _INITIAL[name]


# ----------------------------------------------------------------- replication
def test_info_shows_the_world_of_two_ranks(rt2):
    w = rt2.info()["world"]
    assert w["size"] == 2 and w["backend"] == "mpi" and w["broken"] is None
    assert [r["rank"] for r in w["ranks"]] == [0, 1]
    assert len({r["pid"] for r in w["ranks"]}) == 2 and w["hosts"] == [w["ranks"][0]["host"]]


def test_graphs_variables_and_datasets_made_through_rank0_are_on_every_rank(rt2):
    g = rt2.graph("repl")
    v = g.variable(np.arange(6, dtype="float32").reshape(2, 3), name="v")
    c = g.variable(np.float32(0.0), name="c")
    inc = c.assign_add(np.float32(1.5))
    dbl = v * 2.0
    g.run(dbl)
    before = report(rt2)
    assert before[1]["graphs"]["repl"]["variables"] == before[0]["graphs"]["repl"]["variables"]
    applied = before[1]["applied"]
    g.run(dbl)  # a pure read runs on rank 0 alone
    assert report(rt2)[1]["applied"] == applied + 1  # the report command itself, nothing else
    g.run(inc)  # a write is replicated
    v.set(np.full((2, 3), 7.0, "float32"))
    after = report(rt2)
    mine = after[0]["graphs"]["repl"]["variables"]
    assert mine == after[1]["graphs"]["repl"]["variables"]
    assert mine["c"] == checksum(np.float32(1.5)) and mine["v"] == checksum(np.full((2, 3), 7.0, "float32"))
    assert after[1]["graphs"]["repl"]["version"] == after[0]["graphs"]["repl"]["version"] > 0
    ds = rt2.dataset("repl-data", {"x": np.arange(20, dtype="float32").reshape(10, 2)})
    ds.split(0.7, seed=1)
    reps = report(rt2)
    assert reps[1]["datasets"] == reps[0]["datasets"] == {"repl-data": 10, "repl-data.train": 7, "repl-data.val": 3}
    rt2.delete_graph("repl")
    assert "repl" not in report(rt2)[1]["graphs"]


def test_a_client_sees_no_difference_from_a_one_rank_runtime_but_info(rt2, tmp_path):
    plain = ServerProcess(tmp_path).wait_listening()
    try:
        rt1 = plain.connect()
        outs = []
        for rt in (rt1, rt2):
            tr, _ = digits(rt, "same-digits")
            m = mlp(rt, "same")
            job = fit(m, tr, replicas="all", epochs=1)
            assert job.wait(timeout=120) == "completed", job.error
            outs.append((m.g.run([m.loss, m.acc], feed={m.x: np.ones((3, 64), "float32"), m.y: np.array([1, 2, 3])}),
                         job.metrics["loss"], job.refresh()["step"]))
            info = rt.info()
            outs.append(sorted(info))
            outs.append(info["methods"])
        (r1, l1, s1), keys1, meth1, (r2, l2, s2), keys2, meth2 = outs
        np.testing.assert_allclose(r1, r2, rtol=1e-4, atol=1e-5)
        assert abs(l1 - l2) < 1e-4 and s1 == s2
        assert keys1 == keys2 and meth1 == meth2
        assert rt1.info()["world"]["size"] == 1 and rt2.info()["world"]["size"] == 2
        rt1.close()
    finally:
        plain.stop()


# ----------------------------------------------------------------- data-parallel jobs
def test_two_rank_job_ends_with_the_variables_of_the_one_rank_job(rt2):
    tr, _ = digits(rt2)
    m = mlp(rt2, "dp2")
    job = fit(m, tr, replicas="all", epochs=2)
    assert job.wait(timeout=120) == "completed", job.error
    assert_same_as_reference(rt2, m, job, reference("ref2", epochs=2), 2)
    scalars = [r for r in rt2.call("job.records", [job.id, 0])["records"] if r["kind"] == "scalars"]
    world = [r["values"] for r in scalars if "world/rank1_step_ms" in r["values"]]
    assert world and all(v["world/rank0_step_ms"] > 0 and 0 <= v["world/rank1_comm_share"] <= 1 for v in world)
    # the first bucket's all-reduce started before the backward pass made w1's gradient, on both ranks
    assert all(v["world/rank0_overlap"] == v["world/rank1_overlap"] == 0.5 for v in world)


def _keras_mlp(rt: kf.Runtime, name: str):
    model = kf.Sequential([kf.Input((64,)), kf.nn.Dense(32, activation="relu"), kf.nn.Dense(10, activation="softmax")],
                          rt=rt, name=name)
    model.compile(kf.optim.Adam(lr=2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_model_fit_with_replicas_matches_the_one_rank_model_fit(rt2):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = (X / 16.0).astype("float32"), y.astype("int64")
    ref_rt = kf.connect("inproc")
    try:
        ref = _keras_mlp(ref_rt, "kmlp")
        init = ref.get_weights()
        ref_hist = ref.fit(X, y, epochs=2, batch_size=64, verbose=0, wait=True)
        want = ref.get_weights()
    finally:
        ref_rt.close()
    model = _keras_mlp(rt2, "kmlp")
    model.set_weights(init)  # replicated to rank 1 like any variable.assign
    hist = model.fit(X, y, epochs=2, batch_size=64, verbose=0, wait=True, replicas="all")
    got = model.get_weights()
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(hist.history["loss"], ref_hist.history["loss"], rtol=1e-4)
    reps = report(rt2)
    assert reps[0]["graphs"][model.graph.name] == reps[1]["graphs"][model.graph.name]


def test_three_rank_job_with_uneven_slices_matches_the_one_rank_job(tmp_path):
    require_mpi()
    srv = WorldServer(tmp_path, 3).wait_listening()
    try:
        rt = srv.connect()
        assert rt.info()["world"]["size"] == 3
        tr, _ = digits(rt)
        m = mlp(rt, "dp3")
        # 50 rows a step: slices of 16, 17, 17; the epoch's last batch has 17 rows (5, 6, 6)
        job = fit(m, tr, replicas="all", epochs=1, batch_size=50)
        assert job.wait(timeout=120) == "completed", job.error
        assert_same_as_reference(rt, m, job, reference("ref3", epochs=1, batch_size=50), 3)
        scalars = [r["values"] for r in rt.call("job.records", [job.id, 0])["records"] if r["kind"] == "scalars"]
        world = [v for v in scalars if "world/rank2_overlap" in v]
        # the default 16 MiB fusion makes one bucket: nothing to overlap (it starts after the last gradient)
        assert world and all(v[f"world/rank{r}_overlap"] == 0.0 for v in world for r in range(3))
        rt.close()
    finally:
        srv.stop()


def test_control_reaches_every_rank_and_changes_wait_for_the_job(rt2):
    tr, _ = digits(rt2)
    m = mlp(rt2, "ctl")
    job = fit(m, tr, replicas="all", steps=100_000, log_every=50)
    wait_for(lambda: job.refresh()["step"] > 20, "steps")
    with pytest.raises(FailedPreconditionError, match=r"variable.assign: graph 'ctl' is being trained by data-par"):
        m.lr.set(np.float32(0.5))
    assert m.g.run(m.lr) == np.float32(1e-2)  # reads are fine meanwhile
    assert job.pause() == "paused"
    step = job.refresh()["step"]
    reps = report(rt2)  # paused between two steps: every rank holds the same values
    assert reps[1]["graphs"]["ctl"]["variables"] == reps[0]["graphs"]["ctl"]["variables"]
    job.resume()
    wait_for(lambda: job.refresh()["step"] > step + 20, "steps after resume")
    assert job.stop() == "stopped"
    m.lr.set(np.float32(0.5))  # allowed again, and replicated
    reps = report(rt2)
    assert reps[0]["graphs"]["ctl"]["variables"] == reps[1]["graphs"]["ctl"]["variables"]
    again = fit(m, tr, replicas="all", steps=30)  # the follower left the stopped job at the same step
    assert again.wait(timeout=120) == "completed", again.error


def test_replicas_must_fit_the_world_and_the_train_op_must_update(rt2):
    tr, _ = digits(rt2)
    m = mlp(rt2, "bad-replicas")
    with pytest.raises(InvalidArgumentError, match=r"replicas=3 but the world has 2 rank\(s\)"):
        fit(m, tr, replicas=3, steps=5)
    with pytest.raises(InvalidArgumentError, match="train op 'scale' applies no optimizer update"):
        m.g.fit(m.scale, data=tr, feed={m.x: "x", m.y: "y"}, steps=5, replicas="all")


def _dropout_net(rt: kf.Runtime, name: str):
    g = rt.graph(name, seed=5)
    x = g.placeholder((None, 8), "float32", name="x")
    y = g.placeholder((None, 4), "float32", name="y")
    w = g.variable((np.random.default_rng(2).standard_normal((8, 4)) * 0.3).astype("float32"), name="w")
    h = kf.dropout(x @ w, 0.5, seed=3, name="drop")
    loss = kf.mean(kf.square(h - y))
    return g, x, y, w, loss


def _dropout_reference(X, Y, steps: int, job_seed: int, ranks: list[int]) -> np.ndarray:
    """SGD of the dropout net as the data-parallel loop defines it: rank r's masks at step s drawn
    under the key (job seed, r, s); the mean gradient of the global batch of 20 rows (10 per rank)."""
    rt = kf.connect("inproc")
    try:
        g, x, y, w, loss = _dropout_net(rt, "drop-ref")
        (gw,) = kf.gradients(loss, [w])
        g.run(gw, {x: X[:2], y: Y[:2]})
        s = rt._transport.service.graphs.session("drop-ref")
        cur = g.run(w).astype(np.float64)
        for step in range(1, steps + 1):
            lo = ((step - 1) % 2) * 20
            total = np.zeros_like(cur)
            for slot, r in enumerate(ranks):
                rows = slice(lo + 10 * slot, lo + 10 * slot + 10)
                with s.lock, s.keyed_random((job_seed, r, step)):
                    total += s.run([gw.name], ["x", "y"], [X[rows], Y[rows]])[0] * 10
            cur -= 0.1 * total / 20
            w.set(cur.astype("float32"))
        return cur
    finally:
        rt.close()


def test_dropout_masks_are_drawn_per_rank_from_job_seed_rank_and_step(rt2):
    rng = np.random.default_rng(8)
    X, Y = rng.standard_normal((40, 8)).astype("float32"), rng.standard_normal((40, 4)).astype("float32")
    ds = rt2.dataset("drop-data", {"x": X, "y": Y})
    g, x, y, w, loss = _dropout_net(rt2, "drop")
    train = kf.optim.SGD(lr=0.1).minimize(loss)
    w0 = g.run(w)
    job = g.fit(train, data=ds, feed={x: "x", y: "y"}, batch_size=20, steps=4, shuffle=False, seed=9,
                metrics={"loss": loss}, log_every=2, replicas="all")
    assert job.wait(timeout=120) == "completed", job.error
    got = g.run(w)
    assert not np.allclose(got, w0, atol=1e-3)
    np.testing.assert_allclose(got, _dropout_reference(X, Y, 4, 9, [0, 1]), rtol=1e-4, atol=1e-5)
    same_masks = _dropout_reference(X, Y, 4, 9, [0, 0])  # what drawing rank 0's masks on every rank would give
    assert np.abs(got - same_masks).max() > 1e-3
    reps = report(rt2)
    assert reps[0]["graphs"]["drop"]["variables"] == reps[1]["graphs"]["drop"]["variables"]


# ----------------------------------------------------------------- faults
def test_kill9_of_a_rank_interrupts_the_job_and_resume_after_restart_finishes_it(tmp_path):
    require_mpi()
    state = tmp_path / "state"
    srv = WorldServer(tmp_path / "a", 2, "--state-dir", str(state), timeout_s=20.0).wait_listening()
    try:
        rt = srv.connect()
        tr, _ = digits(rt)
        m = mlp(rt, "fault")
        job = fit(m, tr, replicas="all", steps=1200, log_every=50, checkpoint_every_s=1.0)
        wait_for(lambda: job.refresh()["step"] > 200, "steps before the kill")
        os.kill(rt.info()["world"]["ranks"][1]["pid"], signal.SIGKILL)
        assert wait_for(lambda: job.refresh()["status"] == "interrupted", "interrupted", timeout_s=30.0)
        info = rt.info()  # rank 0 still answers
        assert info["world"]["broken"] and "fault" in info["graphs"]
        assert wait_for(lambda: rt.info()["world"]["lost"] == [1], "rank 1 to be named lost", timeout_s=30.0)
        assert m.g.run(m.w1).shape == (64, 32)
        with pytest.raises(UnavailableError, match="the world is broken"):
            fit(m, tr, replicas="all", steps=3)
        rt.close()
    finally:
        srv.stop()
    srv = WorldServer(tmp_path / "b", 2, "--state-dir", str(state)).wait_listening()
    try:
        rt = srv.connect()
        job = attach_job(rt, job.id)
        assert job.status == "interrupted"
        job.resume()
        assert job.wait(timeout=180) == "completed", job.error
        assert job.refresh()["step"] == 1200
        g = rt.graph("fault")
        ref = reference("ref-fault", steps=1200, log_every=50)
        for n in ("w1", "b1", "w2", "b2"):
            np.testing.assert_allclose(g.run(g[n]), ref[n], rtol=1e-4, atol=5e-5, err_msg=n)
        reps = report(rt)
        assert reps[0]["graphs"]["fault"]["variables"] == reps[1]["graphs"]["fault"]["variables"]
        rt.close()
    finally:
        srv.stop()
