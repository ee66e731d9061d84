"""Helpers of the distributed tests: the venv's ``mpiexec`` and a `kernelflow serve --distributed`
world under it (rank 0's stdout parsed as `ServerProcess` does)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.server import ROOT, TOKEN, ServerProcess

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def require_mpi() -> None:
    pytest.importorskip("mpi4py")
    if not MPIEXEC.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (pip install mpich)")


def mpiexec(n: int, *args: str, kill_safe: bool = True) -> list[str]:
    """The command line of ``n`` ranks; ``kill_safe``: a rank's death does not end the others."""
    return [str(MPIEXEC), *(["-disable-auto-cleanup"] if kill_safe else []), "-n", str(n), sys.executable, *args]


def run_ranks(n: int, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``python args...`` on ``n`` ranks to the end."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(mpiexec(n, *args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


class WorldServer(ServerProcess):
    """``mpiexec -disable-auto-cleanup -n N python -m kernelflow serve --distributed`` on loopback."""

    def __init__(self, tmp: Path, n: int, *args: str, token: str = TOKEN, timeout_s: float = 5.0):
        self.runtime_dir = tmp / "runtime"
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.runtime_dir), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        cmd = mpiexec(n, "-m", "kernelflow", "serve", "--distributed", "--port", "0", "--http-port", "-1",
                      "--collective-timeout", str(timeout_s), "--token", token, *args)
        self.token = token
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        self.stdout: list[str] = []
        self.url = ""
        self.port = 0

    def stop(self) -> None:
        super().stop()  # SIGTERM to mpiexec, which forwards it to every rank
