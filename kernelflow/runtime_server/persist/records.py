"""Record logs and atomic writes: the durable building blocks of the state dir.

A record log is the magic ``KFLOG\\0\\1\\n`` then records ``[u32 length][u32 crc32][msgpack
payload]`` (big-endian; payloads encoded with kernelflow's codec, arrays as ext 1). A record
whose length or crc does not check out, and everything after it, is a torn tail from a crash
mid-append: ignored and cut off on load. A whole file is written to a temp name in the same
dir, fsynced, renamed into place, and the dir fsynced.

Contents: LOG_MAGIC, RecordLogs, read_records, read_span, iter_frames, frame, fs_name, write_atomic,
mkdirs, fsync_dir, tmp_path, sha256_file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from ...errors import InternalError, KernelflowError
from ...protocol.codec import decode, encode
from ...protocol.durable import fsync_dir, mkdirs, tmp_path, write_atomic  # noqa: F401  (re-exported)

log = logging.getLogger("kernelflow.state")

LOG_MAGIC = b"KFLOG\x00\x01\n"
RECORD_HEAD = struct.Struct(">II")  # payload length, crc32 of the payload
_SAFE_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def fs_name(name: str) -> str:
    """A file name for ``name``: reversible ``%XX`` escaping, a hash suffix when very long."""
    out = "".join(chr(b) if b in _SAFE_BYTES else f"%{b:02X}" for b in name.encode())
    if len(out) > 120:
        out = out[:100] + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_records(path: Path) -> tuple[list[bytes], int, int, str | None]:
    """(payloads, end of the last good record, file size, why reading stopped early or None)."""
    data = path.read_bytes()
    if not data.startswith(LOG_MAGIC):
        return [], 0, len(data), "bad magic (not a kernelflow record log)"
    pos, out = len(LOG_MAGIC), []
    while pos < len(data):
        if len(data) - pos < RECORD_HEAD.size:
            return out, pos, len(data), f"torn record header at byte {pos}"
        n, crc = RECORD_HEAD.unpack_from(data, pos)
        start = pos + RECORD_HEAD.size
        if start + n > len(data):
            return out, pos, len(data), f"record at byte {pos} claims {n} bytes; {len(data) - start} left"
        payload = data[start:start + n]
        if zlib.crc32(payload) != crc:
            return out, pos, len(data), f"crc mismatch in the record at byte {pos}"
        out.append(payload)
        pos = start + n
    return out, pos, len(data), None


def iter_frames(f: IO[bytes], pos: int, size: int) -> Iterator[tuple[int, bytes]]:
    """(offset, payload) of each good record of an open log from byte ``pos`` (a record's start) on;
    stops at the end of ``size`` bytes or at the first torn or corrupt record."""
    f.seek(pos)
    while size - pos >= RECORD_HEAD.size:
        n, crc = RECORD_HEAD.unpack(f.read(RECORD_HEAD.size))
        if n > size - pos - RECORD_HEAD.size:
            return
        payload = f.read(n)
        if len(payload) != n or zlib.crc32(payload) != crc:
            return
        yield pos, payload
        pos += RECORD_HEAD.size + n


def read_span(path: Path, offset: int, count: int) -> list[Any]:
    """The ``count`` decoded records of a log that start at byte ``offset`` (a record's start).

    Raises:
        InternalError: the log has fewer good records there (it was cut or damaged).
    """
    out: list[Any] = []
    if count <= 0:
        return out
    with open(path, "rb") as f:
        for _, payload in iter_frames(f, offset, os.fstat(f.fileno()).st_size):
            out.append(decode(payload))
            if len(out) == count:
                return out
    raise InternalError(f"state dir: {path}: {count} records expected from byte {offset}; found {len(out)}")


def frame(obj: Any) -> bytes:
    """One record: ``[u32 length][u32 crc32][payload]`` (big-endian), the payload in kernelflow's codec."""
    payload = b"".join(bytes(f) for f in encode(obj))
    return RECORD_HEAD.pack(len(payload), zlib.crc32(payload)) + payload



class RecordLogs:
    """Appends to and loads record logs, remembering where each log's last good record ends."""

    def __init__(self) -> None:
        self._ends: dict[Path, int] = {}  # end of the last good record of each log we append to

    def forget(self, path: Path) -> None:
        """Drop what is known of ``path`` (it was removed or replaced)."""
        self._ends.pop(path, None)

    def create(self, path: Path, first: list[Any], sync: bool = True) -> list[int]:
        """Write a new log holding ``first`` (atomically: a log that existed is replaced whole);
        returns the byte offset of each record."""
        mkdirs(path.parent)
        frames = [frame(r) for r in first]
        if sync:
            write_atomic(path, [LOG_MAGIC, *frames])
        else:
            path.write_bytes(b"".join([LOG_MAGIC, *frames]))
        self._ends[path] = path.stat().st_size
        return _offsets(len(LOG_MAGIC), frames)

    def append(self, path: Path, records: Sequence[Any], sync: bool = True) -> list[int]:
        """Append records to a log and fsync (unless not ``sync``); a failed append is cut off
        again. Returns the byte offset of each record."""
        frames = [frame(r) for r in records]
        end = self._ends.get(path)
        if end is None:
            _, end, _, _ = read_records(path)
            self._ends[path] = end
        try:
            with open(path, "r+b") as f:
                f.truncate(end)  # drops a torn tail left by a crash or a failed append
                f.seek(end)
                for fr in frames:
                    f.write(fr)
                f.flush()
                if sync:
                    os.fsync(f.fileno())
                self._ends[path] = f.tell()
            return _offsets(end, frames)
        except OSError as e:
            with contextlib.suppress(OSError), open(path, "r+b") as f:
                f.truncate(end)
            raise InternalError(f"state dir: cannot append to {path}: {e}") from e

    def scan(self, path: Path, visit: Callable[[int, Any], None]) -> int:
        """Stream a log's decoded records to ``visit(offset, record)`` without holding them;
        a torn or garbage tail is logged and cut off, as by `load`. Returns the record count."""
        count = 0
        with open(path, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(len(LOG_MAGIC)) != LOG_MAGIC:
                log.error("state dir: %s: bad magic (not a kernelflow record log); ignoring the file", path)
                return 0
            end = len(LOG_MAGIC)
            for pos, payload in iter_frames(f, end, size):
                try:
                    rec = decode(payload)
                except KernelflowError as e:  # crc passed but the payload is not ours: stop here
                    log.warning("state dir: %s: undecodable record %d: %s", path, count, e)
                    break
                visit(pos, rec)
                count += 1
                end = pos + RECORD_HEAD.size + len(payload)
            if end < size:
                log.warning("state dir: %s: ignoring the last %d bytes (a crash mid-write)", path, size - end)
                f.truncate(end)
                os.fsync(f.fileno())
        self._ends[path] = end
        return count

    def load(self, path: Path) -> list[Any]:
        """Decoded records of a log; a torn or garbage tail is logged and cut off."""
        payloads, end, size, why = read_records(path)
        out = []
        for i, p in enumerate(payloads):
            try:
                out.append(decode(p))
            except KernelflowError as e:  # crc passed but the payload is not ours: stop here
                end = len(LOG_MAGIC) + sum(RECORD_HEAD.size + len(q) for q in payloads[:i])
                why = f"undecodable record {i}: {e}"
                break
        if why is not None:
            if end == 0:  # not a log at all: leave it for a human, load nothing
                log.error("state dir: %s: %s; ignoring the file", path, why)
                return []
            log.warning("state dir: %s: %s; ignoring the last %d bytes (a crash mid-write)", path, why, size - end)
            with open(path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        self._ends[path] = end
        return out


def _offsets(start: int, frames: list[bytes]) -> list[int]:
    out = []
    for fr in frames:
        out.append(start)
        start += len(fr)
    return out
