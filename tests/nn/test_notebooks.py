"""examples/keras_style.ipynb and examples/sklearn.ipynb executed by nbclient on a real ipykernel,
against a real `kernelflow serve` with a state dir and the REST API."""

from __future__ import annotations

import pathlib

import pytest

from tests.runtime_server.serving.test_rest import rest_port
from tests.widgets.conftest import jupyter_env, run_notebook  # noqa: F401 - fixtures

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def rest_server(jupyter_env, monkeypatch):  # noqa: F811 - the fixture imported above
    """A real server with a state dir and REST; kernels started now reach both through the environment."""
    from tests.support.server import ServerProcess

    srv = ServerProcess(jupyter_env, "--state-dir", str(jupyter_env / "state"), "--http-port", "0",
                        "--file-system-poll-wait-seconds", "0.2").wait_listening()
    token_file = jupyter_env / "token"
    token_file.write_text(srv.token)
    monkeypatch.setenv("KERNELFLOW_URL", srv.url)
    monkeypatch.setenv("KERNELFLOW_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("KERNELFLOW_TOKEN", raising=False)
    monkeypatch.setenv("KF_REST_URL", f"http://127.0.0.1:{rest_port(srv)}")
    yield srv
    srv.stop()


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.mark.slow
def test_keras_style_notebook_trains_monitors_exports_and_serves(rest_server, run_notebook):  # noqa: F811
    nb = run_notebook(EXAMPLES / "keras_style.ipynb", timeout=300)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert "Total params: 2,794" in _text(code[1])
    view = code[2].outputs[0]["data"]["application/vnd.jupyter.widget-view+json"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert "kf-monitor" in state[view["model_id"]]["state"]["_dom_classes"]
    line = _text(code[3])
    assert line.startswith("job completed") and float(line.rsplit(" ", 1)[1]) >= 0.95
    assert "REST predictions equal model.predict: True" in _text(code[4])
    assert "val_loss" in _text(code[5])
    with rest_server.connect() as rt:
        assert [j["status"] for j in rt.jobs() if j["name"] == "digits-cnn"] == ["completed"]
        assert [m["name"] for m in rt.models()] == ["digits_cnn"]


@pytest.mark.slow
def test_sklearn_notebook_grid_search_cross_validation_and_labels(run_notebook):  # noqa: F811
    nb = run_notebook(EXAMPLES / "sklearn.ipynb", timeout=300)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    best = _text(code[1])
    assert "'learning_rate': 0.01}" in best and float(best.rsplit(" ", 1)[1]) > 0.9
    assert float(_text(code[2]).rsplit(" ", 1)[1]) > 0.9
    assert "['eight' 'five' 'four']" in _text(code[3])
