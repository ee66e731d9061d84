"""`make demo` (examples/demo.py, issue #14 item 11): a local runtime of this checkout, a resident
dataset, a job watched then left running, a second process re-attaching by name, export and a
REST answer, each step printed; isolated runtime and state dirs, so no user's server is touched."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_step(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("KERNELFLOW_URL", "KERNELFLOW_TOKEN",
                                                            "KERNELFLOW_TOKEN_FILE")}
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), KERNELFLOW_STATE_DIR=str(tmp_path / "state"),
               PYTHONPATH=str(ROOT))
    try:
        out = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py")], env=env, capture_output=True,
                             text=True, timeout=300)
    finally:
        for f in (tmp_path / "runtime").glob("kernelflow-*.json"):
            try:
                os.kill(json.loads(f.read_text())["pid"], signal.SIGTERM)
            except (OSError, ValueError, KeyError):
                pass
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for n in range(1, 6):
        assert f"[{n}/5]" in text
    assert "started a local runtime" in out.stderr and ", REST http://127.0.0.1:" in text
    m = re.search(r"this client disconnects at step (\d+)", text)
    attached = re.search(r"pid (\d+): re-attached to job 'demo-\d+' \(job-\w+\) at step (\d+)", text)
    assert m and attached and int(attached.group(1)) != os.getpid()
    assert "job completed" in text
    pred = re.search(r"POST (http://\S+):predict -> (\[[\d, ]+\]) \(labels (\[[\d, ]+\])\)", text)
    assert pred and pred.group(1).endswith("/v1/models/kernelflow-demo-digits")
    got, want = json.loads(pred.group(2)), json.loads(pred.group(3))
    assert sum(a == b for a, b in zip(got, want)) >= 4  # a trained model answers (test accuracy is printed too)
