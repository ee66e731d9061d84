"""The training monitor on a real ipykernel (issue #5): examples/monitor.ipynb executed by
nbclient against a real runtime server, and the parent header of the comm messages the
monitor's render thread sends while no cell runs."""

from __future__ import annotations

import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("bqplot")

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / "examples" / "monitor.ipynb"
ROOT = NOTEBOOK.parents[1]


@pytest.mark.slow
def test_monitor_notebook_runs_on_real_kernel_and_updates_while_cells_are_free(notebook_server, run_notebook):
    nb = run_notebook(NOTEBOOK, timeout=180)
    with notebook_server.connect() as rt:
        jobs = [j for j in rt.jobs() if j["name"] == "digits-mlp"]
        assert [j["status"] for j in jobs] == ["completed"]
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    view = code[3].outputs[0]["data"]["application/vnd.jupyter.widget-view+json"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert state[view["model_id"]]["model_name"] == "VBoxModel"
    assert "kf-monitor" in state[view["model_id"]]["state"]["_dom_classes"]
    assert "records so far, delivered on" in code[4].outputs[0]["text"]
    text = code[5].outputs[0]["text"]
    assert "completed at step" in text
    assert "hidden-unit images at step" in text and "(16, 8, 8, 1) uint8" in text
    # the saved state holds the charts as the last cell left them: bqplot lines with many points
    lines = [m["state"] for m in state.values() if m["model_name"] == "LinesModel"]
    sizes = [m["x"]["shape"][0] for m in lines if isinstance(m.get("x"), dict) and "shape" in m["x"]]
    assert max(sizes) > 100, sizes
    # and the images panel: a grid of 16 PNG image widgets (image_max) for the record on screen
    grids = [m["state"] for m in state.values() if "kf-monitor-image-grid" in m["state"].get("_dom_classes", [])]
    assert len(grids) == 1 and len(grids[0]["children"]) == 16
    assert all(state[c.removeprefix("IPY_MODEL_")]["model_name"] == "ImageModel" for c in grids[0]["children"])


def test_monitor_thread_messages_carry_a_cell_parent_header_while_idle(jupyter_env):
    """ipykernel 7: what the render thread sends after the cell ended is tagged with a cell request."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    try:
        code = (
            "import sys, threading, time\n"
            f"sys.path.insert(0, {str(ROOT)!r})\n"
            "from tests.widgets.test_monitor import FakeJob, scalars\n"
            "from kernelflow.widgets import TrainingMonitor\n"
            "job = FakeJob()\n"
            "mon = TrainingMonitor(job)\n"
            "def feed():\n"
            "    for i in range(20):\n"
            "        time.sleep(0.05)\n"
            "        job.push(scalars([i], loss=[float(i)]))\n"
            "threading.Timer(1.0, feed).start()\n")
        msg_id = kc.execute(code)
        reply = kc.get_shell_msg(timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
        updates, idle_seen, deadline = [], False, time.monotonic() + 30
        while time.monotonic() < deadline and len(updates) < 3:
            try:
                msg = kc.get_iopub_msg(timeout=1)
            except Exception:  # queue.Empty
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle_seen = idle_seen or msg["parent_header"].get("msg_id") == msg_id
            elif msg["msg_type"] == "comm_msg" and idle_seen and msg["content"]["data"].get("method") == "update":
                updates.append(msg)
        assert idle_seen and len(updates) >= 3, len(updates)
        for m in updates:
            assert m["parent_header"].get("msg_id") == msg_id
            assert m["parent_header"].get("msg_type") == "execute_request"
        status = kc.execute("print(sorted(mon.delivery_threads), mon.redraws)")
        kc.get_shell_msg(timeout=30)
        out = ""
        while "Thread" not in out:
            msg = kc.get_iopub_msg(timeout=10)
            if msg["parent_header"].get("msg_id") == status and msg["msg_type"] == "stream":
                out += msg["content"]["text"]
        assert "MainThread" not in out  # fed from the timer thread, not the cell
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
