"""A job's records as one connection knows them: the newest `MIRROR_RECORDS`, with their callbacks.

Contents: MIRROR_RECORDS, Window, Mirror.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, overload

from ..protocol.jobspec import IMAGE_KEEP_DEFAULT, MEDIA, KeptImages, has_media, media_key, media_stub
from .digest import Digest

MIRROR_RECORDS = 100_000
"""Records a job's mirror keeps in memory by default (the newest; older ones are read back from
the runtime when asked for). ``job.mirror_records`` changes it for one job."""


class Window(Sequence):
    """A list that drops its oldest items in amortised O(1) each: ``drop(k)`` clears their slots
    (the records are freed at once) and moves the live items down only once the dead prefix is as
    long as they are, so each item is moved at most once per item dropped after it came.

    Reads like the list of its live items: ``len``, ``w[k]`` / ``w[a:b]`` (a list) / ``w[k] = r``
    (``k`` counted from the oldest live item), iteration. ``moved`` counts the items moved down.
    """

    __slots__ = ("_items", "_dead", "moved")

    def __init__(self, items: Iterable = ()) -> None:
        self._items: list = list(items)
        self._dead = 0  # slots at the front of _items that hold dropped items (None)
        self.moved = 0

    def __len__(self) -> int:
        return len(self._items) - self._dead

    def _at(self, k: int) -> int:
        n = len(self)
        if not -n <= k < n:
            raise IndexError(f"Window index {k} out of range for {n} items")
        return self._dead + (k if k >= 0 else n + k)

    @overload
    def __getitem__(self, k: int) -> Any: ...
    @overload
    def __getitem__(self, k: slice) -> list: ...
    def __getitem__(self, k: int | slice) -> Any:
        if isinstance(k, slice):
            a, b, step = k.indices(len(self))
            if step == 1:
                return self._items[self._dead + a:self._dead + max(a, b)]
            return [self._items[self._dead + i] for i in range(a, b, step)]
        return self._items[self._at(k)]

    def __setitem__(self, k: int, value: Any) -> None:
        self._items[self._at(k)] = value

    def __iter__(self) -> Iterator:
        return islice(self._items, self._dead, None)

    def __repr__(self) -> str:
        return f"Window({self[:]!r})"

    def extend(self, items: Iterable) -> None:
        self._items.extend(items)

    def drop(self, k: int) -> None:
        """Forget the ``k`` oldest items (all of them when ``k`` >= len)."""
        k = min(k, len(self))
        if k <= 0:
            return
        items, dead = self._items, self._dead
        items[dead:dead + k] = [None] * k
        self._dead = dead = dead + k
        live = len(items) - dead
        if dead >= live:  # compact: moves `live` items, paid for by the `dead` >= live dropped since
            del items[:dead]
            self._dead = 0
            self.moved += live


class Mirror:
    """The newest records of a job as this connection knows them (``records[k]`` is history index
    ``base + k``), the callbacks subscribed to them, and the `Digest` of the whole history."""

    def __init__(self, max_records: int | None = None) -> None:
        self.lock = threading.RLock()
        self.records = Window()                        # amortised O(1) per record dropped at the bound
        self.base = 0                                   # history index of records[0]
        self.max_records = MIRROR_RECORDS if max_records is None else max_records
        self.status: dict = {}
        self.callbacks: list[Callable[[list[dict]], Any]] = []
        self.subscribed = False
        self._pending: dict[int, list[dict]] = {}
        self._kept: KeptImages | None = None             # which image records keep pixels (made on first image)
        self._names_idx: dict[str, list[int]] = {}     # per name: the newest image records (at least image_keep)
        self._stubs: set[int] = set()                  # image records that came without pixels, not asked for
        self.digest = Digest()                         # the history views, built from each record once

    @property
    def n(self) -> int:
        """History index after the newest record mirrored (the records this connection has seen)."""
        return self.base + len(self.records)

    def keep(self) -> int:
        """How many image (and audio) records per name keep their payload (the job's ``image_keep``)."""
        return self.status.get("image_keep") or IMAGE_KEEP_DEFAULT

    def skip_to(self, index: int) -> None:
        """Start the mirror at ``index`` (no callbacks yet: nobody needs the records before it)."""
        with self.lock:
            if index > self.n and not self.callbacks:
                self.records, self.base = Window(), index
                self._stubs = set()
                self._pending = {s: r for s, r in self._pending.items() if s + len(r) > index}

    def apply(self, start: int, records: list[dict]) -> None:
        """Take ``records`` that begin at history index ``start``; callbacks get the new ones, in order."""
        with self.lock:
            if len(records) >= len(self._pending.get(start, ())):
                self._pending[start] = records
            new: list[dict] = []
            while True:
                ready = [s for s in self._pending if s <= self.n]
                if not ready:
                    break
                for s in sorted(ready):
                    recs = self._pending.pop(s)
                    fresh = recs[self.n - s:]
                    first = self.n
                    self.records.extend(fresh)
                    new.extend(fresh)
                    for i, r in enumerate(fresh, first):
                        if r.get("kind") in MEDIA:
                            idx = self._names_idx.setdefault(media_key(r), [])
                            idx.append(i)
                            if len(idx) > 2 * self.keep():
                                del idx[:-self.keep()]
                            if has_media(r):
                                self._keep_image(i)
                            else:
                                self._stubs.add(i)
            self.trim()
            if new:
                for cb in list(self.callbacks):
                    cb(new)

    def trim(self) -> None:
        """Drop the oldest records beyond ``max_records`` (amortised O(1) a record: `Window`)."""
        with self.lock:
            drop = len(self.records) - self.max_records
            if drop > 0:
                self.records.drop(drop)
                self.base += drop
                if len(self._stubs) > 2 * len(self.records):  # forget the stubs below the mirror, in
                    self._stubs = {i for i in self._stubs if i >= self.base}  # amortised O(1) too

    def _keep_image(self, i: int) -> None:
        if self._kept is None:
            self._kept = KeptImages(self.keep())
        for j in self._kept.add(media_key(self.records[i - self.base]), i):
            if j >= self.base:
                self.records[j - self.base] = media_stub(self.records[j - self.base])

    def record(self, i: int) -> dict | None:
        """Record ``i`` of the history when the mirror holds it, else None."""
        with self.lock:
            return self.records[i - self.base] if self.base <= i < self.n else None

    def missing_images(self) -> int | None:
        """Index of the oldest image record among the newest ``image_keep`` per name that came
        without pixels (a notification sends only the newest of a name) and was not asked for yet."""
        keep = self.keep()
        with self.lock:
            if not self._stubs:  # the usual case, checked on every history access: no scan
                return None
            wanted = []
            for i in self._stubs:
                if i < self.base:  # dropped from the mirror since
                    continue
                idx = self._names_idx[media_key(self.records[i - self.base])]
                newer = len(idx) - bisect.bisect_right(idx, i)
                if newer < keep:  # the runtime still keeps its pixels
                    wanted.append(i)
            self._stubs = set(wanted)  # the others' pixels are gone on the runtime too
            return min(wanted) if wanted else None

    def fill_images(self, start: int, records: list[dict]) -> list[dict]:
        """Put the payloads of ``records`` (history from ``start``) into image and audio records that
        lack them; returns the records that got theirs."""
        filled = []
        with self.lock:
            for i, r in enumerate(records, start):
                if i >= self.n:
                    break
                if i < self.base or r.get("kind") not in MEDIA:
                    continue
                self._stubs.discard(i)  # asked for once: the runtime had the payload or dropped it
                if has_media(r) and not has_media(self.records[i - self.base]):
                    self.records[i - self.base] = r
                    self._keep_image(i)
                    filled.append(r)
        return filled
