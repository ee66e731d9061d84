"""The local runtime (issue #14 items 3 and 11): only a server of this kernelflow version and Python
environment is re-used, and handles follow a restarted local server to its new port."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.client.local import connect_local, package_dir
from kernelflow.client.runtime import Runtime
from tests.support.server import ServerProcess


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    for key in ("KERNELFLOW_URL", "KERNELFLOW_TOKEN", "KERNELFLOW_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return tmp_path / "runtime"


def test_a_server_of_another_environment_is_not_reused(tmp_path, runtime_dir):
    srv = ServerProcess(tmp_path).wait_listening()
    try:
        (f,) = runtime_dir.glob("kernelflow-*.json")
        good = json.loads(f.read_text())
        f.write_text(json.dumps({**good, "prefix": "/another/checkout/.venv"}))
        with pytest.raises(kf.errors.UnavailableError, match="of this environment"):
            connect_local(start=False)
        f.write_text(json.dumps({**good, "version": "0.0.1"}))
        with pytest.raises(kf.errors.UnavailableError):
            connect_local(start=False)
        f.write_text(json.dumps({**good, "package": "/another/checkout/kernelflow"}))  # same venv, other tree
        with pytest.raises(kf.errors.UnavailableError):
            connect_local(start=False)
        assert good["package"] == package_dir()
        f.write_text(json.dumps(good))
        t = connect_local(start=False)
        assert t.port == srv.port
        t.close()
    finally:
        srv.stop()


def test_handles_follow_a_restarted_local_runtime_to_its_new_port(tmp_path, runtime_dir):
    state = tmp_path / "state"
    a = ServerProcess(tmp_path, "--state-dir", str(state)).wait_listening()
    b = None
    try:
        rt = Runtime(connect_local(start=False))
        g = rt.graph("kept")
        w = g.variable(np.arange(3, dtype=np.float32), name="w")
        g.run(w.assign(np.array([5.0, 6.0, 7.0], np.float32)))
        a.stop()
        b = ServerProcess(tmp_path, "--state-dir", str(state)).wait_listening()
        assert b.port != a.port
        # the old handles reach the new server: the transport asked the runtime files where it went
        np.testing.assert_array_equal(g.run(w), [5.0, 6.0, 7.0])
        assert rt.url == f"kf://127.0.0.1:{b.port}"
        rt.close()
    finally:
        a.stop()
        if b is not None:
            b.stop()
