"""The user's local runtime server: found through its runtime file, or started detached.

``kf.connect()`` with no URL (and no ``$KERNELFLOW_URL``) re-uses the local server recorded
in a runtime file if it answers, otherwise starts ``kernelflow serve`` on 127.0.0.1 with a
fresh token and the user's state dir (`default_state_dir`), detached from this process (so
it outlives a notebook kernel restart), and connects to it.

Contents: default_state_dir, token_for, connect_local (the runtime file itself: kernelflow.protocol.runtime_file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import KernelflowError, UnavailableError
from ..protocol.runtime_file import (
    RUNTIME_FILE_PREFIX,
    is_loopback,
    pid_alive,
    read_runtime_file,
    runtime_dir,
    runtime_files,
)

log = logging.getLogger("kernelflow.client")

def default_state_dir() -> Path:
    """The local server's state dir: ``$KERNELFLOW_STATE_DIR``, else ``<jupyter data dir>/kernelflow/state``
    (``~/.kernelflow/state`` without jupyter_core)."""
    env = os.environ.get("KERNELFLOW_STATE_DIR")
    if env:
        return Path(env).expanduser()
    try:
        from jupyter_core.paths import jupyter_data_dir

        return Path(jupyter_data_dir()) / "kernelflow" / "state"
    except ImportError:
        return Path.home() / ".kernelflow" / "state"


def token_for(host: str, port: int) -> str | None:
    """The token a server on this machine listening on ``port`` wrote to its runtime file."""
    if not is_loopback(host):
        return None
    for path in runtime_files():
        info = read_runtime_file(path)
        if info and info.get("port") == port and isinstance(info.get("token"), str):
            return info["token"]
    return None


def connect_local(timeout: float | None = None, start: bool = True, start_timeout_s: float = 60.0) -> Any:
    """A `TcpTransport` to the local runtime server, starting one if none answers.

    Args:
        timeout: per-call deadline of the transport.
        start: start a server when none answers (else raise UnavailableError).
        start_timeout_s: how long to wait for a started server to come up.

    Raises:
        UnavailableError: when no server answers and one could not be started.
    """
    from .tcp import TcpTransport

    for info in _local_servers():
        try:
            t = TcpTransport("127.0.0.1", int(info["port"]), info.get("token"), timeout=timeout)
        except (KernelflowError, KeyError, ValueError) as e:
            log.info("local runtime %s does not answer: %s", info.get("url"), e)
            continue
        t.resolver = _resolve_local
        return t
    if not start:
        raise UnavailableError("no local kernelflow runtime of this environment answers; start one with "
                               "`kernelflow serve`")
    t = TcpTransport("127.0.0.1", *_start_server(start_timeout_s), timeout=timeout)
    t.resolver = _resolve_local
    return t


def is_same_environment(info: dict) -> bool:
    """True when the server of runtime file ``info`` runs this kernelflow version, from this
    checkout (`package_dir`), in this Python environment (``sys.prefix``): only such a local
    server is re-used (another checkout's or venv's server runs other code, and holds other graphs)."""
    return (info.get("version") == __version__ and info.get("prefix") == sys.prefix
            and info.get("package") == package_dir())


def package_dir() -> str:
    """The directory kernelflow is imported from: two checkouts sharing one venv differ here."""
    return str(Path(__file__).resolve().parents[1])


def _local_servers() -> list[dict]:
    """Runtime files of live loopback servers of this environment, newest first."""
    out = []
    for path in runtime_files():
        info = read_runtime_file(path)
        if not info or info.get("tls") or not is_loopback(str(info.get("host", ""))):
            continue
        if pid_alive(info.get("pid")) and is_same_environment(info) and "port" in info:
            out.append(info)
    return out


def _resolve_local() -> tuple[str, int, str | None] | None:
    """Where the local runtime of this environment listens now (it may have been restarted on
    another port): ``(host, port, token)``, or None. The transport asks when it cannot reconnect."""
    servers = _local_servers()
    if not servers:
        return None
    return "127.0.0.1", int(servers[0]["port"]), servers[0].get("token")


def _state_dir_for_new_server() -> Path:
    """`default_state_dir`, unless a live server of another environment holds it (its lock): then a
    state dir of this environment beside it, ``state-<version>-<hash of sys.prefix>``."""
    base = default_state_dir()
    for path in runtime_files():
        info = read_runtime_file(path)
        if info and pid_alive(info.get("pid")) and info.get("state_dir") == str(base) and not is_same_environment(info):
            tag = hashlib.sha1(f"{sys.prefix}:{package_dir()}".encode()).hexdigest()[:8]
            return base.with_name(f"{base.name}-{__version__}-{tag}")
    return base


def _start_server(start_timeout_s: float) -> tuple[int, str]:
    """Start ``kernelflow serve`` detached on 127.0.0.1; returns (port, token)."""
    d = runtime_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    # The token goes through a 0600 file, not argv, which other local users can read in `ps`.
    token_path = d / f"{RUNTIME_FILE_PREFIX}token-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    log_path = d / f"{RUNTIME_FILE_PREFIX}server.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kernelflow", "serve", "--host", "127.0.0.1", "--port", "0",
             "--token-file", str(token_path), "--state-dir", str(_state_dir_for_new_server())],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: survives the kernel that started it
        )
    expected = d / f"{RUNTIME_FILE_PREFIX}{proc.pid}.json"
    deadline = time.monotonic() + start_timeout_s
    try:
        while time.monotonic() < deadline:
            info = read_runtime_file(expected) if expected.exists() else None
            if info and "port" in info:
                print(f"kernelflow: started a local runtime at {info.get('url')} (pid {proc.pid}; "
                      f"log {log_path})", file=sys.stderr)
                return int(info["port"]), token
            if proc.poll() is not None:
                raise UnavailableError(f"the local runtime server exited at start with code {proc.returncode}; "
                                       f"see {log_path}")
            time.sleep(0.05)  # polling for a file another process writes, with a deadline
    finally:
        token_path.unlink(missing_ok=True)
    proc.terminate()
    raise UnavailableError(f"the local runtime server did not start within {start_timeout_s:.0f} s; see {log_path}")
