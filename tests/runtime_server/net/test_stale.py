"""What killed servers leave behind is removed at start (issue #15 items 8, 9b): export temp dirs
in the state dir's models/ and runtime files of dead processes."""

from __future__ import annotations

import json

from kernelflow.client.local import pid_alive
from tests.support.server import ServerProcess


def test_serve_removes_stale_export_temp_dirs_and_dead_runtime_files(tmp_path):
    state = tmp_path / "state"
    stale_tmp = state / "models" / "m" / ".tmp-3-deadbeef"
    stale_tmp.mkdir(parents=True)
    (stale_tmp / "variables.safetensors").write_bytes(b"\0" * 4096)
    kept = state / "models" / "m" / "keep.txt"
    kept.write_text("not a temp file")
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    dead_pid = next(p for p in range(4_000_000, 4_100_000) if not pid_alive(p))
    dead = runtime / f"kernelflow-{dead_pid}.json"
    dead.write_text(json.dumps({"url": "kf://127.0.0.1:1", "pid": dead_pid, "token": "t"}))
    srv = ServerProcess(tmp_path, "--state-dir", str(state)).wait_listening()
    try:
        assert not stale_tmp.exists()
        assert kept.read_text() == "not a temp file"
        assert not dead.exists()
        assert [p.name for p in runtime.iterdir()] == [f"kernelflow-{srv.proc.pid}.json"]
    finally:
        srv.stop()
