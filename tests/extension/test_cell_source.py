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
