"""Durable file writes: a new file or dir entry survives a crash once these return.

Used by the state dir (runtime_server/persist) and the exported-model format (model_dir.py).

Contents: fsync_dir, mkdirs, tmp_path, write_atomic.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdirs(path: Path) -> None:
    """Create ``path`` and missing parents, fsyncing each parent so the new entries survive a crash."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


def tmp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def write_atomic(path: Path, frames: Sequence[bytes | memoryview]) -> None:
    """Write ``frames`` to ``path``: temp file, fsync, rename, fsync the dir."""
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            for fr in frames:
                f.write(fr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
