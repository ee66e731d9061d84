"""`live_sleep` in a real ipykernel (client/notebook.py): a cell run while another cell blocks in
the pump is held and runs after it. Regression: the pump entered the held message's signature in
the kernel session's replay history, so the kernel refused that message afterwards ("Duplicate
Signature") and the cell never ran (seen as a "Run All" whose last cell never produced output)."""

from __future__ import annotations

import pathlib
import queue
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

BLOCK = (
    "import sys, time\n"
    f"sys.path.insert(0, {str(ROOT)!r})\n"
    "from kernelflow.client.notebook import live_sleep\n"
    "with live_sleep() as sleep:\n"
    "    pump = getattr(sleep, '__self__', None)\n"
    "    assert pump is not None and hasattr(pump, 'held'), sleep  # the ipykernel 7 pump\n"
    "    deadline = time.monotonic() + 120\n"
    "    while not pump.held:\n"
    "        assert time.monotonic() < deadline, 'the second cell never reached the pump'\n"
    "        sleep(0.02)\n"
    "    held = len(pump.held)\n"
    "print('first cell held', held)\n")


def _outputs(kc, msg_ids: set, until: float) -> dict:
    """stdout per request of ``msg_ids`` until each has gone idle (or the deadline)."""
    out = {m: "" for m in msg_ids}
    idle: set = set()
    while idle != msg_ids and time.monotonic() < until:
        try:
            msg = kc.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        parent = msg["parent_header"].get("msg_id")
        if parent not in msg_ids:
            continue
        if msg["msg_type"] == "stream":
            out[parent] += msg["content"]["text"]
        elif msg["msg_type"] == "error":
            out[parent] += "ERROR " + msg["content"]["ename"] + ": " + msg["content"]["evalue"]
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle.add(parent)
    return out


def test_a_cell_sent_while_another_waits_in_live_sleep_runs_after_it(jupyter_env):
    pytest.importorskip("ipykernel")
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(ROOT))
    try:
        first = kc.execute(BLOCK)
        second = kc.execute("print('second cell ran')")  # queued while the first blocks
        third = kc.execute("print('third cell ran')")
        replies = {}
        deadline = time.monotonic() + 180
        while len(replies) < 3 and time.monotonic() < deadline:
            try:
                msg = kc.get_shell_msg(timeout=1)
            except queue.Empty:
                continue
            replies[msg["parent_header"]["msg_id"]] = msg["content"]
        assert {m: r["status"] for m, r in replies.items()} == {first: "ok", second: "ok", third: "ok"}, replies
        # in order: the held cells ran after the one that held them, in the order they were sent
        counts = [replies[m]["execution_count"] for m in (first, second, third)]
        assert counts == sorted(counts) and len(set(counts)) == 3, counts
        out = _outputs(kc, {first, second, third}, time.monotonic() + 60)
        assert out[first].startswith("first cell held "), out
        assert out[second] == "second cell ran\n" and out[third] == "third cell ran\n", out
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
