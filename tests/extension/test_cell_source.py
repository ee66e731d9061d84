"""Node sources and error messages name a notebook cell as IPython does (issue #14 item 8)."""

from __future__ import annotations

import sys

import pytest

import kernelflow as kf

pytest.importorskip("IPython")


@pytest.fixture(scope="module")
def ip(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
    from IPython.core.interactiveshell import InteractiveShell

    yield InteractiveShell.instance()
    mp.undo()


def test_node_source_in_a_cell_is_cell_in_n_line_k(ip):
    r = ip.run_cell("import kernelflow as kf\n"
                    "g = kf.Graph('cells')\n"
                    "x = g.placeholder((2, 3), name='x')\n"
                    "\n"
                    "y = kf.exp(x)\n", store_history=True)
    assert r.success, r.error_in_exec
    n = r.execution_count
    assert ip.user_ns["x"].source == f"Cell In[{n}], line 3"
    assert ip.user_ns["y"].source == f"Cell In[{n}], line 5"
    assert "ipykernel" not in ip.user_ns["y"].source and ".py" not in ip.user_ns["y"].source
    pytest.importorskip("anywidget")
    from kernelflow.widgets import GraphInspector

    assert GraphInspector(ip.user_ns["g"]).click("exp")["source"] == f"Cell In[{n}], line 5"  # the inspector's field


def test_shape_error_raised_in_a_cell_names_the_cell_line(ip):
    ip.run_cell("import kernelflow as kf\ng2 = kf.Graph('cells2')\na = g2.placeholder((2, 3), name='a')",
                store_history=True)
    r = ip.run_cell("b = g2.placeholder((4, 5), name='b')\nc = a @ b", store_history=True)
    err = r.error_in_exec
    assert isinstance(err, kf.errors.ShapeError), err
    assert f"Cell In[{r.execution_count}], line 2" in str(err)


def test_node_source_outside_ipython_cells_is_file_and_line():
    g = kf.Graph("plain")
    line = sys._getframe().f_lineno + 1
    x = g.placeholder((2,), name="x")
    assert x.source == f"{__file__}:{line}"


def test_rerunning_a_cell_warns_once_that_names_were_made_unique(ip):
    # issue #14 item 6: TensorFlow 1.x's trap: a re-run cell silently adds x_1, dense1_1/...
    ip.run_cell("import kernelflow as kf\ng3 = kf.Graph('rerun')", store_history=True)
    cell = "x = g3.placeholder((None, 4), name='x')\nh = kf.layers.dense(x, 3, name='dense1')"
    import warnings

    with warnings.catch_warnings(record=True) as first:
        warnings.simplefilter("always")
        assert ip.run_cell(cell, store_history=True).success
    assert not [w for w in first if "is taken" in str(w.message)]
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        r = ip.run_cell(cell, store_history=True)
    assert r.success
    taken = [w for w in again if "is taken" in str(w.message)]
    assert len(taken) == 1, [str(w.message) for w in again]  # once per cell run, not once per node
    msg = str(taken[0].message)
    assert "the name 'x' is taken, so this node is 'x_1'" in msg and f"Cell In[{r.execution_count}], line 1" in msg
    assert "rt.graph('rerun', reset=True)" in msg
    assert ip.user_ns["x"].name == "x_1"


def test_automatic_names_made_unique_do_not_warn(ip):
    import warnings

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = ip.run_cell("import kernelflow as kf\ng4 = kf.Graph('auto')\na = g4.placeholder((2,), name='a')\n"
                        "b = kf.exp(a)\nc = kf.exp(b)", store_history=True)
    assert r.success and ip.user_ns["c"].name == "exp_1"
    assert not [w for w in rec if "is taken" in str(w.message)]


def test_remote_error_traceback_ends_in_the_users_cell(ip, tmp_path):
    # issue #14 item 8: ~5 frames of kernelflow internals under every remote error
    import re

    from tests.support.server import ServerProcess

    srv = ServerProcess(tmp_path).wait_listening()
    try:
        ip.user_ns.update(URL=srv.url, TOKEN=srv.token)
        r = ip.run_cell("import kernelflow as kf\nrt = kf.connect(URL, token=TOKEN)\ng = rt.graph('tb')\n"
                        "x = g.placeholder((2,), name='x')\ny = kf.exp(x)\ng.run(y)", store_history=True)
        err = r.error_in_exec
        assert isinstance(err, kf.errors.InvalidArgumentError), err  # x is not fed: the server says so
        text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(ip.InteractiveTB.structured_traceback(
            type(err), err, err.__traceback__)))
        assert f"Cell In[{r.execution_count}], line 6" in text
        # g.run's and the transport's frames are hidden; IPython always shows the frame that raised
        shown = re.findall(r"kernelflow/client/\w+\.py", text)
        assert shown == ["kernelflow/client/tcp.py"] and "skipping hidden 2 frame" in text, text
        ip.run_cell("rt.close()")
    finally:
        srv.stop()
