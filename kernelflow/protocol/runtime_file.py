"""The runtime file: how a local server tells clients on the same machine where it is.

A server writes ``<runtime dir>/kernelflow-<pid>.json`` (mode 0600: it holds the token) when
it listens and removes it when it stops; ``kf.connect()``, ``kernelflow status`` and
``kernelflow stop`` read them. JSON only, never unpickled. Fields: ``url``, ``host``, ``port``,
``pid``, ``token``, ``tls``, ``version``, ``protocol`` (and any a newer server adds).

Contents: RUNTIME_FILE_PREFIX, runtime_dir, runtime_files, read_runtime_file, write_runtime_file,
is_loopback, pid_alive.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

RUNTIME_FILE_PREFIX = "kernelflow-"


def runtime_dir() -> Path:
    """Where servers write their runtime files: Jupyter's runtime dir, else ~/.kernelflow/runtime."""
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        return Path(jupyter_runtime_dir())
    except ImportError:
        return Path.home() / ".kernelflow" / "runtime"


def runtime_files() -> list[Path]:
    """Runtime files of local servers, newest first."""
    d = runtime_dir()
    if not d.is_dir():
        return []
    files = [p for p in d.glob(f"{RUNTIME_FILE_PREFIX}*.json")]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def read_runtime_file(path: Path) -> dict | None:
    """A runtime file's contents, or None if unreadable."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def write_runtime_file(info: dict) -> Path:
    """Write the runtime file of this process (``info["pid"]``); returns its path."""
    d = runtime_dir()
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / f"{RUNTIME_FILE_PREFIX}{info['pid']}.json"
    tmp = path.with_suffix(".tmp")
    # The file holds the token: create it 0600 from the start, never chmod after writing.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, path)
    return path


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pid_alive(pid: Any) -> bool:
    """True when a process with that pid exists."""
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True
