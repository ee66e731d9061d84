"""The inspector picks its plan by itself (issue #16 item 4): with no ``plan=`` it outlines the fused
groups of the graph's training job's step (the running or paused job, else the newest), else of this
client's last compiled run, else none, and says which; ``plan=None`` shows none. A closed scope
holding members of fused groups lists them in ``meta["scope_fused"]`` (the badge the front end draws).
In-process and real-server runtimes, real fit jobs."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.widgets.layout import scope_chain
from tests.support.waiting import wait_for

pytest.importorskip("anywidget")
pytest.importorskip("igraph")

from kernelflow.widgets import GraphInspector  # noqa: E402
from tests.widgets.test_inspector_fused import small_cnn  # noqa: E402


def _data(rt, name, rows=64):
    rng = np.random.default_rng(0)
    return rt.dataset(name, {"x": rng.normal(size=(rows, 8, 8, 1)).astype(np.float32),
                             "y": rng.integers(0, 10, rows)})


def _groups(groups: list[dict]) -> list[tuple[str, list[str], list[str]]]:
    return [(grp["name"], list(grp["members"]), list(grp["ops"])) for grp in groups]


def _batch():
    rng = np.random.default_rng(1)
    return rng.normal(size=(4, 8, 8, 1)).astype(np.float32), rng.integers(0, 10, 4)


def test_inspector_default_plan_is_the_fit_jobs_step_not_a_later_run(rt):
    g, x, y, loss = small_cnn(rt, "auto-fit")
    train = kf.optim.Adam(1e-2).minimize(loss)
    job = g.fit(train, data=_data(rt, "auto-fit-data"), feed={x: "x", y: "y"}, steps=3, name="auto-fit-job",
                metrics={"loss": loss}, log_every=2)
    assert job.wait() == "completed"
    assert job.refresh()["train_op"] == train.name and job.refresh()["feed"] == {"x": "x", "y": "y"}
    xb, yb = _batch()
    g.run(loss, feed={x: xb, y: yb})  # a later run of the graph: the job's step still wins
    want = _groups(g.fused_groups(train, feeds=[x, y]))
    assert len(want) > len(g.fused_groups(loss, feeds=[x, y]))  # the two plans differ: the test can tell
    w = GraphInspector(g)
    assert _groups(w.fused) == want
    assert w.plan_source == (f"fused kernels of job 'auto-fit-job' (completed), one step: {train.name} fed x, y "
                             f"({len(want)} fused kernels)")
    assert _groups(g.inspect().fused) == want  # g.inspect() is the same default
    # plan=None still means none, job or not
    for none in (GraphInspector(g, plan=None), g.inspect(plan=None)):
        assert none.fused == [] and none.plan_source == "" and none.meta["scope_fused"] == {}
        assert set(np.frombuffer(none.box_fused, np.int32)) == {-1}


def test_inspector_default_plan_prefers_the_training_job_and_follows_refresh(rt):
    g, x, y, loss = small_cnn(rt, "auto-two-jobs")
    adam = kf.optim.Adam(1e-2).minimize(loss)
    sgd = kf.optim.SGD(1e-2).minimize(loss)
    data = _data(rt, "auto-two-jobs-data")
    long = g.fit(adam, data=data, feed={x: "x", y: "y"}, steps=10**7, name="long", log_every=0)
    try:
        wait_for(lambda: long.refresh()["step"] >= 1, "the long job's first step")
        assert long.pause() == "paused"
        short = g.fit(sgd, data=data, feed={x: "x", y: "y"}, steps=2, name="short")  # queued: one job a graph
        assert short.refresh()["status"] == "queued"
        w = g.inspect()  # the paused job holds the graph: its step, though "short" is newer
        assert _groups(w.fused) == _groups(g.fused_groups(adam, feeds=[x, y]))
        assert w.plan_source.startswith(f"fused kernels of job 'long' (paused), one step: {adam.name} fed x, y")
    finally:
        long.stop()
    assert short.wait() == "completed"
    w.refresh()  # picked again: now the newest job
    sgd_groups = _groups(g.fused_groups(sgd, feeds=[x, y]))
    assert sgd_groups != _groups(g.fused_groups(adam, feeds=[x, y]))
    assert _groups(w.fused) == sgd_groups
    assert w.plan_source.startswith(f"fused kernels of job 'short' (completed), one step: {sgd.name} fed x, y")


def test_inspector_default_plan_without_a_job_is_the_last_compiled_run(rt):
    g, x, y, loss = small_cnn(rt, "auto-run")
    train = kf.optim.SGD(1e-2).minimize(loss)
    w = GraphInspector(g)
    assert w.fused == [] and g.last_run is None
    assert w.plan_source.startswith("no plan: graph 'auto-run' has no training job and no run")
    xb, yb = _batch()
    g.run([loss], feed={x: xb, y: yb})
    assert g.last_run == {"fetches": [loss.name], "feeds": ["x", "y"]}
    w.refresh()
    assert _groups(w.fused) == _groups(g.fused_groups(loss, feeds=[x, y])) and w.fused
    assert w.plan_source.startswith(f"fused kernels of the last g.run: {loss.name} fed x, y")
    step = g.make_callable([train, loss], feed_list=[y, x])
    step(yb, xb)
    assert g.last_run == {"fetches": [train.name, loss.name], "feeds": ["y", "x"]}
    g.run(loss, feed={x: xb, y: yb}, compile=False)  # an uncompiled run is not counted
    assert g.last_run == {"fetches": [train.name, loss.name], "feeds": ["y", "x"]}
    w2 = GraphInspector(g)
    assert _groups(w2.fused) == _groups(g.fused_groups([train, loss], feeds=[y, x]))
    assert any(m.startswith("gradients/") for f in w2.fused for m in f["members"])
    # an explicit plan says what it is; show_plan("auto") goes back to picking
    w2.show_plan(loss)
    assert w2.plan_source == f"fused kernels of a run of {loss.name} ({len(w2.fused)} fused kernels)"
    w2.show_plan("auto")
    assert w2.plan_source.startswith(f"fused kernels of the last g.run: {train.name}, {loss.name} fed y, x")
    w2.show_plan(None)
    assert w2.fused == [] and w2.plan_source == ""


def test_inspector_default_plan_of_a_local_graph_is_none():
    g = kf.Graph("local-auto")
    x = g.placeholder((None, 3), name="x")
    kf.relu(x + 1.0)
    w = GraphInspector(g)
    assert w.fused == [] and w.plan_source == "" and w.status == ""


def _want_scope_fused(w) -> dict[str, list[int]]:
    """Closed scope -> its fused groups, read from the groups' members and `expanded` alone."""
    want: dict[str, set[int]] = {}
    for i, f in enumerate(w.fused):
        for m in f["members"]:
            closed = [s for s in scope_chain(m) if s not in w.expanded]
            if closed:
                want.setdefault(closed[0] + "/", set()).add(i)
    return {k: sorted(v) for k, v in want.items()}


def test_inspector_closed_scope_lists_the_fused_groups_inside(rt):
    g, x, y, loss = small_cnn(rt, "auto-closed")
    train = kf.optim.Adam(1e-2).minimize(loss)
    w = g.inspect(plan=train, expanded=[])  # every scope closed
    assert w.expanded == [] and len(w.fused) >= 4
    sf = w.meta["scope_fused"]
    assert sf == _want_scope_fused(w)
    assert sf["conv1/"] == [[f["name"] for f in w.fused].index("conv1/relu")]
    assert set(sf) >= {"conv1/", "hidden/", "gradients/", "Adam/"}
    assert all(k in w.meta["ids"] and w.meta["kinds"][w.meta["ids"].index(k)] == "scope" for k in sf)
    assert set(np.frombuffer(w.box_fused, np.int32)) == {-1}  # no member is a box of its own
    # the scope's details list the same groups
    assert [f["index"] for f in w.click("gradients/")["fused"]] == sf["gradients/"]
    # opened (the click above), gradients/ loses its badge and its members are outlined boxes
    assert "gradients" in w.expanded and "gradients/" not in w.meta["scope_fused"]
    assert w.meta["scope_fused"] == _want_scope_fused(w)
    of_box = dict(zip(w.meta["ids"], np.frombuffer(w.box_fused, np.int32).tolist()))
    assert {i for m in w.fused[sf["gradients/"][0]]["members"] for i in [of_box[m]]} == {sf["gradients/"][0]}
    # opening Adam/ hands its update group to the closed sub-scopes its members sit in (Adam/update_conv1/ ...)
    w.expand("Adam")
    assert w.meta["scope_fused"] == _want_scope_fused(w)
    update = next(i for i, f in enumerate(w.fused) if f["ops"][0] == "apply_adam")
    assert {k for k, v in w.meta["scope_fused"].items() if update in v} == {
        "Adam/update_conv1/", "Adam/update_hidden/", "Adam/update_dense/"}
    w.expand_all()
    assert w.meta["scope_fused"] == {}
    w.collapse_all()
    w.show_plan(None)
    assert w.meta["scope_fused"] == {}
