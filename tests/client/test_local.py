"""`kf.connect()` with no URL: starts a detached local server once, then re-uses it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = """
import json, sys, numpy as np, kernelflow as kf
rt = kf.connect()
g = rt.graph("counter")
if "n" not in g:
    g.variable(np.array(0, "int64"), name="n")
g.run(g["n"].assign_add(np.array(1, "int64")))
print(json.dumps({"url": rt.url, "n": int(g["n"].value()), "pid": rt.info().get("pid")}))
"""


@pytest.fixture
def isolated_env(tmp_path):
    env = dict(os.environ)
    for key in ("KERNELFLOW_URL", "KERNELFLOW_TOKEN", "KERNELFLOW_TOKEN_FILE"):
        env.pop(key, None)
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")
    env["KERNELFLOW_STATE_DIR"] = str(tmp_path / "state")
    yield env
    # Stop whatever server the test started (its runtime file names the pid).
    for f in (tmp_path / "runtime").glob("kernelflow-*.json"):
        try:
            os.kill(json.loads(f.read_text())["pid"], signal.SIGTERM)
        except (OSError, ValueError, KeyError):
            pass


def _client(env):
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_connect_without_url_starts_then_reuses_local_server(isolated_env, tmp_path):
    first, err1 = _client(isolated_env)
    assert first["url"].startswith("kf://127.0.0.1:")
    assert "started a local runtime" in err1
    files = list((tmp_path / "runtime").glob("kernelflow-*.json"))
    assert len(files) == 1 and (files[0].stat().st_mode & 0o777) == 0o600
    # A second process (a restarted kernel) finds the same server and its state.
    second, err2 = _client(isolated_env)
    assert second["url"] == first["url"]
    assert "started a local runtime" not in err2
    assert (first["n"], second["n"]) == (1, 2)
    assert not list((tmp_path / "runtime").glob("kernelflow-token-*"))  # the token hand-over file is gone


def test_connect_without_url_replaces_a_dead_server(isolated_env, tmp_path):
    first, _ = _client(isolated_env)
    info = json.loads(next((tmp_path / "runtime").glob("kernelflow-*.json")).read_text())
    os.kill(info["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(info["pid"], 0)
        except OSError:
            break
        time.sleep(0.05)
    second, err = _client(isolated_env)
    assert "started a local runtime" in err
    assert second["n"] == 1  # a new server on the same state dir: no checkpoint was written before kill -9
