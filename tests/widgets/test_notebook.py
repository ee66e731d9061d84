"""examples/inspect_cnn.ipynb executed by nbclient on a real ipykernel against a real server."""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("anywidget")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / "examples" / "inspect_cnn.ipynb"


@pytest.mark.slow
def test_inspect_cnn_notebook_runs_on_real_kernel(notebook_server, run_notebook):
    srv = notebook_server
    nb = run_notebook(NOTEBOOK, timeout=120)
    with srv.connect() as rt:
        assert "inspect_cnn" in rt.graphs()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    assert f"connected to {srv.url}" in code[0].outputs[0]["text"]
    assert "kf.Graph inspect_cnn" in code[2].outputs[0]["data"]["text/html"]
    view = code[3].outputs[0]["data"]["application/vnd.jupyter.widget-view+json"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    widget = state[view["model_id"]]["state"]
    assert widget["graph_name"] == "inspect_cnn"
    # the state saved with the notebook is the last one: conv2/relu selected, its summary computed with a feed
    assert widget["selected"] == "conv2/relu"
    assert widget["details"]["summary"]["min"] == 0.0
    assert widget["expanded"] == ["conv1"]  # the graph opened closed (issue #14); the notebook opened conv1
    summary_out = code[4].outputs[-1]["text"]
    assert "'shape': [3, 3, 1, 4]" in summary_out
    relus = "['conv1/relu', 'conv2/relu', 'gradients/conv2/relu_grad', 'gradients/conv1/relu_grad']"
    assert relus in code[5].outputs[0]["text"]
    # issue #16: the last cell outlines the compiler's fused groups of the train step
    assert "fused kernels: ['add relu'," in code[6].outputs[0]["text"]
    fused = widget["meta"]["fused"]
    assert fused[0]["name"] == "conv1/relu" and fused[0]["ops"] == "add relu"
