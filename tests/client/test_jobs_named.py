"""Jobs by name, job handles from rt.jobs() / g.jobs(), job.status(), rt.graph(name, reset=True)
and tidying up (issue #14 items 5, 6, 13), on a real server subprocess."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.client.job import Job
from kernelflow.client.joblist import JobList
from tests.support.models import digits, mlp


@pytest.fixture
def trained(remote):
    train, _ = digits(remote, "digits-named")
    m = mlp(remote, "named")
    a = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, batch_size=64, steps=5,
                metrics={"loss": m.loss}, name="my-cnn")
    a.wait()
    b = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, batch_size=64, steps=7,
                metrics={"loss": m.loss}, name="my-cnn")
    b.wait()
    yield remote, m, a, b
    for j in remote.jobs():
        if j["status"] not in ("queued", "running", "paused"):
            j.delete()


def test_rt_job_by_name_is_the_newest_of_that_name_and_ids_still_work(trained):
    rt, m, a, b = trained
    by_name = rt.job("my-cnn")
    assert by_name.id == b.id and by_name.name == "my-cnn"
    assert len(by_name.history["loss"]["step"]) > 0
    assert rt.job(a.id).id == a.id
    with pytest.raises(kf.errors.NotFoundError, match=r"no job 'nope' \(by id or name\).*my-cnn"):
        rt.job("nope")


def test_rt_jobs_are_handles_with_a_table_and_a_frame(trained):
    rt, m, a, b = trained
    jobs = rt.jobs()
    assert isinstance(jobs, JobList) and all(isinstance(j, Job) for j in jobs)
    mine = [j for j in jobs if j["name"] == "my-cnn"]  # still reads like the status maps it was
    assert {j.id for j in mine} == {a.id, b.id} and all(j["status"] == "completed" for j in mine)
    assert mine[0].wait() == "completed"                # a handle: methods work
    html = jobs._repr_html_()
    assert "<table" in html and a.id in html and "completed" in html and "loss" in html
    assert a.id in repr(jobs) and repr(jobs).splitlines()[0].split()[:3] == ["name", "id", "graph"]
    df = jobs.frame()
    assert set(df.index) >= {a.id, b.id} and (df.loc[b.id, "step"], df.loc[b.id, "name"]) == (7, "my-cnn")
    assert {j.id for j in m.g.jobs()} == {a.id, b.id}


def test_job_status_is_a_word_and_callable(trained):
    rt, m, a, b = trained
    assert a.status == "completed" and a.status() == "completed"  # job.status() no longer a TypeError
    assert isinstance(a.status(), str)


def test_graph_reset_starts_afresh_and_refuses_while_a_job_trains_it(remote):
    g = remote.graph("resettable", reset=True)
    g.variable(np.ones(3, np.float32), name="w")
    g.sync()
    assert "w" in remote.graph("resettable")
    g2 = remote.graph("resettable", reset=True)
    assert len(g2) == 0 and "w" not in g2
    w = g2.variable(np.full(3, 2.0, np.float32), name="w")  # the same name again: no w_1
    assert w.name == "w" and np.array_equal(g2.run(w), [2.0, 2.0, 2.0])
    train, _ = digits(remote, "digits-reset")
    m = mlp(remote, "busy")
    job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=10_000_000, name="busy")
    try:
        with pytest.raises(kf.errors.FailedPreconditionError, match=r"cannot reset 'busy' while job busy"):
            remote.graph("busy", reset=True)
    finally:
        job.stop()
    remote.graph("busy", reset=True)
    assert "busy" in remote.graphs() and len(remote.graph("busy")) == 0


def test_job_delete_refuses_a_running_job_and_forgets_an_ended_one(remote):
    train, _ = digits(remote, "digits-delete")
    m = mlp(remote, "deleted")
    live = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, steps=10_000_000, name="live")
    try:
        with pytest.raises(kf.errors.FailedPreconditionError, match=live.id):
            live.delete()
    finally:
        live.stop()
    assert live.wait() == "stopped"
    live.delete()
    with pytest.raises(kf.errors.NotFoundError):
        remote.job(live.id)
    assert live.id not in {j.id for j in remote.jobs()}
    remote.delete_graph("deleted")
    assert "deleted" not in remote.graphs()
    with pytest.raises(kf.errors.NotFoundError, match="deleted"):
        remote.delete_graph("deleted")


def test_public_methods_have_real_signatures_and_docstrings():
    # issue #14 item 7: help(g.fit) / Shift-Tab showed fit(train_op, **kwargs)
    from kernelflow.client.graph import RemoteGraph
    from kernelflow.client.runtime import Runtime

    fit = inspect.signature(RemoteGraph.fit)
    for p in ("data", "feed", "batch_size", "epochs", "metrics", "validation", "name"):
        assert p in fit.parameters, p
    for cls in (Runtime, RemoteGraph, Job, JobList):
        for name, fn in vars(cls).items():
            if name.startswith("_") or not callable(fn):
                continue
            assert (fn.__doc__ or "").strip(), f"{cls.__name__}.{name} has no docstring"
            kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
            assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{cls.__name__}.{name}{inspect.signature(fn)}"
