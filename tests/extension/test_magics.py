"""The %kf magics and rich displays, in an in-process IPython shell and against a real server."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.client import runtime as runtime_mod

pytest.importorskip("IPython")


@pytest.fixture(scope="module")
def ip(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernelflow")
    yield shell
    shell.run_line_magic("unload_ext", "kernelflow")
    mp.undo()


@pytest.fixture(autouse=True)
def no_default_runtime():
    runtime_mod.set_default_runtime(None)
    yield
    runtime_mod.set_default_runtime(None)


def test_load_ext_registers_kf_magic(ip):
    assert "kernelflow" in ip.extension_manager.loaded
    assert "kf" in ip.magics_manager.magics["line"]
    doc = ip.magics_manager.magics["line"]["kf"].__doc__
    for cmd in ("connect", "status", "graphs", "jobs", "monitor", "inspect"):
        assert f"%kf {cmd}" in doc


def test_kf_connect_inproc_sets_default_runtime(ip, capsys):
    ip.run_line_magic("kf", "connect inproc")
    assert "connected to inproc" in capsys.readouterr().out
    rt = kf.connect()
    assert rt.url == "inproc"
    assert kf.connect() is rt


def test_kf_graphs_and_status_list_graph(ip):
    ip.run_line_magic("kf", "connect inproc")
    rt = kf.connect()
    g = rt.graph("mlp")
    v = g.variable(np.ones((2, 3), np.float32), name="w")
    g.run(v)
    report = ip.run_line_magic("kf", "graphs")
    assert report.text.splitlines()[1].split() == ["name", "nodes", "variables"]
    assert report.text.splitlines()[2].split() == ["mlp", "1", "1"]
    assert "<td" in report._repr_html_() and "mlp" in report._repr_html_()
    status = ip.run_line_magic("kf", "status")
    assert "graphs    mlp" in status.text
    assert "jobs      (not supported by this server)" in status.text or "jobs      " in status.text
    assert "kf.Runtime inproc" in status._repr_html_()


def test_kf_jobs_lists_jobs_or_says_there_are_none(ip, capsys):
    ip.run_line_magic("kf", "connect inproc")
    report = ip.run_line_magic("kf", "jobs")
    if "job.list" in kf.connect().info()["methods"]:
        assert report.text.splitlines()[0] == "jobs on inproc: 0"
    else:
        assert report is None
        assert "does not run training jobs" in capsys.readouterr().out


def test_kf_monitor_without_jobs_says_so_then_monitors_the_newest_job(ip, capsys):
    ip.run_line_magic("kf", "connect inproc")
    assert ip.run_line_magic("kf", "monitor") is None
    assert "%kf monitor: the runtime has no jobs" in capsys.readouterr().out
    rt = kf.connect()
    g = rt.graph("magic-monitor")
    x = g.placeholder((None, 2), "float32", name="x")
    w = g.variable(np.array([0.5, -1.5], "float32"), name="w")
    loss = kf.mean(kf.square(x * w))
    train = kf.optim.SGD(0.1).minimize(loss)
    ds = rt.dataset("magic-monitor-data", {"x": np.arange(8, dtype="float32").reshape(4, 2)})
    first = g.fit(train, data=ds, feed={x: "x"}, batch_size=2, steps=2)
    newest = g.fit(train, data=ds, feed={x: "x"}, batch_size=2, steps=4, metrics={"loss": loss}, log_every=1)
    assert first.wait(timeout=60) == "completed" and newest.wait(timeout=60) == "completed"
    mon = ip.run_line_magic("kf", "monitor")
    try:
        assert type(mon).__name__ == "TrainingMonitor"
        assert [j.id for j in mon.jobs] == [newest.id]
    finally:
        mon.close()


def test_kf_inspect_unknown_graph_reports_not_found(ip, capsys):
    ip.run_line_magic("kf", "connect inproc")
    assert ip.run_line_magic("kf", "inspect nosuch") is None
    assert "NotFoundError: no graph named 'nosuch'" in capsys.readouterr().err
    assert kf.connect().graphs() == []


def test_kf_unknown_command_raises_usage_error(ip):
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="unknown command 'frobnicate'"):
        ip.run_line_magic("kf", "frobnicate")


def test_kf_connect_server_url_with_token(ip, tmp_path, capsys):
    from tests.support.server import ServerProcess

    srv = ServerProcess(tmp_path).wait_listening()
    try:
        ip.run_line_magic("kf", f"connect {srv.url}/?token={srv.token}")
        assert f"connected to {srv.url}" in capsys.readouterr().out
        rt = kf.connect()
        assert rt.info()["version"] == kf.__version__
        status = ip.run_line_magic("kf", "status").text  # issue #14 item 1: where REST listens
        assert rt.rest_url and rt.rest_url.startswith("http://127.0.0.1:")
        assert f"REST      {rt.rest_url}" in status, status
        rt.close()
    finally:
        srv.stop()


def test_graph_repr_html_groups_nodes_by_scope():
    rt = kf.connect("inproc")
    g = rt.graph("g")
    x = g.placeholder((None, 4), name="x")
    h = kf.layers.dense(x, 3, name="dense1")
    kf.layers.dense(h, 2, name="dense2")
    html = g._repr_html_()
    assert "kf.Graph g: 9 nodes, 4 variables, 23 parameters (92 B)" in html
    assert "dense1/</td><td style=\"text-align:left;vertical-align:top;padding:0 6px\">4</td>" in html
    assert "<td style=\"text-align:left;vertical-align:top;padding:0 6px\">dense2/w</td>" in html
    assert repr(g).startswith("<kf.Graph 'g' nodes=9 variables=4")
    w = g["dense1/w"]
    assert "12 (48 B)" in w._repr_html_()
    assert "x <i>float32(None, 4)</i>" in g["dense1/matmul"]._repr_html_()


def test_runtime_repr_html_lists_graphs_and_devices():
    rt = kf.connect("inproc")
    rt.graph("a")
    html = rt._repr_html_()
    assert "kf.Runtime inproc" in html and "graphs (1)" in html and ">a<" in html and "cpu (default cpu)" in html
