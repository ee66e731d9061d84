"""A job's history: a bounded tail of records in memory, the older ones read back from its record log.

A job logs records for as long as it runs (scalars every few steps, histograms, images, audio,
text); keeping them all in server memory grew without bound (issue #15 item 9). `History`
holds the newest `TAIL_RECORDS` records, those not yet written to the log (the job manager's
flusher writes every 100 ms; past `4 * TAIL_RECORDS` the job's thread writes them itself), and
the image and audio records that keep their payload (the newest ``image_keep`` per name, as
before). Every other record is read back from the log when asked for, so `History.read` answers
every index, as the whole list did. To find an old record it keeps the byte offset of every
`MARK_STRIDE`-th one (8 bytes per 256 records).

The log is the job's ``history.log`` in the state dir (`StateLog`), or, for a runtime without
one, a private temp file (`TempLog`, not fsynced, removed with the job or at shutdown), made
only once the tail overflows.

Contents: TAIL_RECORDS, MARK_STRIDE, History, StateLog, TempLog.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ...errors import NotFoundError
from ...protocol.jobspec import MEDIA, KeptImages, has_media, media_key, media_stub
from ..persist.records import RecordLogs, read_span

if TYPE_CHECKING:
    from ..persist.state import StateDir

log = logging.getLogger("kernelflow.jobs")

TAIL_RECORDS = 1024
MARK_STRIDE = 256


class SpillLog(Protocol):
    """Where a history's records go: append returns each record's byte offset; read gives them back."""

    def append(self, records: list[dict]) -> list[int]: ...

    def read(self, offset: int, count: int) -> list[dict]: ...

    def close(self) -> None: ...


class StateLog:
    """A job's ``history.log`` (and ``images.log``) in the state dir."""

    def __init__(self, state: StateDir, job_id: str, keep_images: int):
        self.state, self.job_id, self.keep_images = state, job_id, keep_images

    def append(self, records: list[dict]) -> list[int]:
        return self.state.append_job_records(self.job_id, records, keep_images=self.keep_images)

    def read(self, offset: int, count: int) -> list[dict]:
        return self.state.read_job_records(self.job_id, offset, count)

    def close(self) -> None:
        pass  # the state dir's files stay (job.delete removes them)


class TempLog:
    """A record log in the job's private temp dir, for a runtime without a state dir (nothing to
    keep; the job removes the dir)."""

    def __init__(self, scratch_dir: str):
        self.path = Path(scratch_dir) / "history.log"
        self.logs = RecordLogs()
        self._lock = threading.Lock()

    def append(self, records: list[dict]) -> list[int]:
        heads = [media_stub(r) if has_media(r) else r for r in records]  # kept payloads stay in memory
        with self._lock:
            if not self.path.exists():
                return self.logs.create(self.path, heads, sync=False)
            return self.logs.append(self.path, heads, sync=False)

    def read(self, offset: int, count: int) -> list[dict]:
        return read_span(self.path, offset, count)

    def close(self) -> None:
        with self._lock:
            self.path.unlink(missing_ok=True)


class History:
    """The records of one job, in order; the caller's lock (the job's ``cond``) guards every method
    but `read`, which takes it itself and reads the log outside it.

    Args:
        lock: the job's lock (reentrant).
        keep: image and audio records per name that keep their payload (``image_keep``).
        log: where older records live; None: made by ``make_log`` when the tail first overflows.
        make_log: makes a `TempLog` (a runtime without a state dir).

    Attributes:
        n: how many records there are.
        persisted: records ``[0, persisted)`` are in the log.
        max_step: the highest step of any record (0 for none).
    """

    def __init__(self, lock: Any, keep: int, log: SpillLog | None = None, make_log: Any = None):
        self.lock = lock
        self.log = log
        self._make_log = make_log
        self.n = 0
        self.base = 0                           # index of tail[0]
        self.tail: list[dict] = []
        self.persisted = 0
        self.media: dict[int, dict] = {}        # the kept image / audio records with payload, by index
        self.marks: list[int] = []              # byte offset of record k * MARK_STRIDE in the log
        self.kept = KeptImages(keep)
        self.max_step = 0
        self.closed = False

    def __len__(self) -> int:
        return self.n

    def held(self) -> int:
        """Records held in memory (the tail and the kept media records below it)."""
        return len(self.tail) + sum(1 for i in self.media if i < self.base)

    # ----------------------------------------------------------------- writing (under the lock)
    def append(self, rec: dict) -> int:
        """Add a record; returns its index. The oldest media record of its name beyond ``keep``
        loses its payload."""
        i = self.n
        self.tail.append(rec)
        self.n += 1
        step = rec.get("step")
        if isinstance(step, int) and step > self.max_step:
            self.max_step = step
        if rec.get("kind") in MEDIA:
            if has_media(rec):
                self.media[i] = rec
            for j in self.kept.add(media_key(rec), i):
                self._stub(j)
        return i

    def _stub(self, j: int) -> None:
        self.media.pop(j, None)
        if j >= self.base:
            r = self.tail[j - self.base]
            if r.get("kind") in MEDIA:
                self.tail[j - self.base] = media_stub(r)  # a new dict: readers of the old one keep theirs

    def unpersisted(self) -> tuple[int, list[dict]]:
        """(index of the first record not in the log, those records)."""
        return self.persisted, self.tail[self.persisted - self.base:]

    def wants_spill(self) -> bool:
        """More than the tail's bound is held (writing the excess to the log would free it)."""
        return self.n - self.base > TAIL_RECORDS

    def mark_persisted(self, start: int, offsets: list[int]) -> None:
        """Records ``[start, start + len(offsets))`` are in the log at ``offsets``; the tail keeps
        the newest `TAIL_RECORDS` of the persisted ones."""
        if start != self.persisted:  # a concurrent writer got there first (cannot happen: one lock)
            raise RuntimeError(f"history: records from {start} persisted, but the log ends at {self.persisted}")
        for k, off in enumerate(offsets, start):
            if k % MARK_STRIDE == 0:
                self.marks.append(off)
        self.persisted = start + len(offsets)
        drop = min(self.persisted, self.n - TAIL_RECORDS) - self.base
        if drop > 0:
            del self.tail[:drop]
            self.base += drop

    # ----------------------------------------------------------------- reading (takes the lock)
    def read(self, start: int, stop: int | None = None) -> list[dict]:
        """Records ``[start, stop)`` (stop: the current count), as the whole list would give them."""
        with self.lock:
            stop = self.n if stop is None else min(stop, self.n)
            start = max(0, start)
            if start >= stop:
                return []
            mem = self.tail[max(start, self.base) - self.base:stop - self.base] if stop > self.base else []
            disk_stop = min(stop, self.base)
            if start >= disk_stop:
                return list(mem)
            k = start // MARK_STRIDE
            first, offset = k * MARK_STRIDE, self.marks[k]
            media = {i: r for i, r in self.media.items() if start <= i < disk_stop}
            log_ = self.log
        if log_ is None:
            raise NotFoundError("job history: its log is closed (the job was deleted or the runtime shut down)")
        older = log_.read(offset, disk_stop - first)[start - first:]
        for i, r in media.items():
            older[i - start] = r
        return older + mem

    # ----------------------------------------------------------------- spilling
    def spill(self) -> None:
        """Write the records not yet in the log and drop the oldest from memory (a runtime without a
        state dir: only once the tail overflows). Call with the job's persist lock, not its cond."""
        with self.lock:
            if self.closed:
                return
            if self.log is None:
                if not self.wants_spill() or self._make_log is None:
                    return
                self.log = self._make_log()
            start, recs = self.unpersisted()
            log_ = self.log
        if not recs:
            return
        offsets = log_.append(recs)
        with self.lock:
            self.mark_persisted(start, offsets)

    def close(self) -> None:
        """Forget the log (a temp log is removed)."""
        with self.lock:
            self.closed = True
            log_, self.log = self.log, None
        if log_ is not None:
            log_.close()

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, lock: Any, keep: int, state: StateDir, job_id: str) -> tuple[History, dict[str, float]]:
        """A job's history from the state dir, streamed (never all in memory); also the latest value
        of each scalar (what the job's ``metrics`` show)."""
        h = cls(lock, keep, StateLog(state, job_id, keep))
        latest: dict[str, float] = {}
        media_keys: dict[str, list[int]] = {}

        def visit(offset: int, r: Any) -> None:
            if not isinstance(r, dict):
                r = {"kind": "unknown", "step": 0, "value": None}
            i = h.n
            if i % MARK_STRIDE == 0:
                h.marks.append(offset)
            h.n += 1
            step = r.get("step")
            if isinstance(step, int) and step > h.max_step:
                h.max_step = step
            if r.get("kind") == "scalars" and isinstance(r.get("values"), dict):
                latest.update(r["values"])
            if r.get("kind") in MEDIA:
                media_keys.setdefault(media_key(r), []).append(i)
                idx = media_keys[media_key(r)]
                if len(idx) > keep:
                    del idx[0]
            h.tail.append(r)
            if len(h.tail) > 2 * TAIL_RECORDS:
                del h.tail[:TAIL_RECORDS]
                h.base += TAIL_RECORDS

        state.scan_job_history(job_id, visit)
        h.persisted = h.n
        drop = max(0, h.n - TAIL_RECORDS) - h.base
        if drop > 0:
            del h.tail[:drop]
            h.base += drop
        wanted = sorted(i for idx in media_keys.values() for i in idx)
        if wanted:
            found = state.job_media(job_id)
            low = [i for i in wanted if i < h.base]
            below = dict(zip(low, _read_each(h, low))) if low else {}
            for i in wanted:
                r = below[i] if i < h.base else h.tail[i - h.base]
                payload = found.get((media_key(r), r.get("step")))
                if payload is not None:
                    full = {**r, MEDIA[r["kind"]]: payload}
                    h.media[i] = full
                    if i >= h.base:
                        h.tail[i - h.base] = full
                    h.kept.add(media_key(full), i)
        return h, latest


def _read_each(h: History, idx: list[int]) -> list[dict]:
    """The records at the indices ``idx`` (below the tail), read from the log one by one."""
    assert h.log is not None
    out = []
    for i in idx:
        k = i // MARK_STRIDE
        out.append(h.log.read(h.marks[k], i - k * MARK_STRIDE + 1)[-1])
    return out
