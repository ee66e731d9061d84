"""``%kf gc`` (issue #14 item 13): ended jobs and scratch graphs go, with a dry-run listing first;
running jobs, interrupted ones and the graphs they train stay."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.client import runtime as runtime_mod
from kernelflow.extension.tidy import parse_duration

pytest.importorskip("IPython")


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernelflow")
    shell.run_line_magic("kf", "connect inproc")
    yield shell
    kf.connect().close()
    runtime_mod.set_default_runtime(None)
    shell.run_line_magic("unload_ext", "kernelflow")


def _train(rt, name: str, steps: int):
    g = rt.graph(name)
    x = g.placeholder((None, 2), name="x")
    w = g.variable(np.ones((2, 1), np.float32), name="w")
    loss = kf.mean(kf.square(x @ w))
    train = kf.optim.SGD(0.01).minimize(loss)
    ds = rt.dataset(f"{name}-data", {"x": np.random.default_rng(0).normal(size=(64, 2)).astype("float32")})
    return g.fit(train, data=ds, feed={x: "x"}, batch_size=8, steps=steps, metrics={"loss": loss}, name=name)


def test_parse_duration():
    assert [parse_duration(t) for t in ("90", "90s", "30m", "2h", "1d", "1.5h")] == [90, 90, 1800, 7200, 86400, 5400]
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"--older-than takes a duration.*got '2 weeks'"):
        parse_duration("2 weeks")


def test_kf_gc_dry_run_lists_then_deletes_ended_jobs_and_unused_scratch_graphs(ip):
    rt = kf.connect()
    done = _train(rt, "scratch-done", 5)
    assert done.wait() == "completed"
    live = _train(rt, "scratch-live", 10_000_000)
    rt.graph("scratch-empty").variable(np.zeros(1, np.float32), name="v")
    rt.graph("keep-me").variable(np.zeros(1, np.float32), name="v")
    rt.graph("scratch-empty").sync()
    rt.graph("keep-me").sync()
    try:
        report = ip.run_line_magic("kf", "gc --older-than 1h --graphs scratch* --dry-run")
        # the job finished seconds ago, not an hour: it stays, and so does its graph; keep-me does not match
        assert "would delete 0 jobs and 1 graphs" in report.text
        lines = report.text.splitlines()[2:]
        assert [ln.split()[1] for ln in lines if ln.split()[0] == "graph" and ln.split()[1] != "(kept)"] == \
            ["scratch-empty"]
        assert sorted(ln.split()[2] for ln in lines if ln.startswith("graph (kept)")) == ["scratch-done",
                                                                                         "scratch-live"]
        report = ip.run_line_magic("kf", "gc --graphs scratch* --dry-run")
        assert "would delete 1 jobs and 2 graphs" in report.text
        assert len(rt.jobs()) == 2 and "scratch-done" in rt.graphs()  # a dry run deletes nothing
        report = ip.run_line_magic("kf", "gc --graphs scratch*")
        assert "deleted 1 jobs and 2 graphs" in report.text and "error" not in report.text
        assert [j["id"] for j in rt.jobs()] == [live.id]
        assert sorted(rt.graphs()) == ["keep-me", "scratch-live"]
        assert "<table" in report._repr_html_()
    finally:
        live.stop()


def test_kf_gc_bad_arguments(ip, capsys):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="unknown argument '--everything'"):
        ip.run_line_magic("kf", "gc --everything")
    with pytest.raises(UsageError, match="--graphs needs a value"):
        ip.run_line_magic("kf", "gc --graphs")
    ip.run_line_magic("kf", "gc --older-than soon")
    assert "InvalidArgumentError" in capsys.readouterr().err
