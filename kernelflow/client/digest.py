"""What ``job.history``, ``job.histograms``, ``job.image_history``, ``job.audio`` and ``job.text`` read,
built from each record once: `Digest`.

A connection's mirror of a job (`kernelflow.client.mirror.Mirror`) holds one digest. It takes the
records in history order, the ones older than the mirror read back from the runtime once (on the
first access) and the newer ones from the mirror as they come, so a second access pages nothing
again. It keeps the columns of the scalars, the histograms and the text (the answers themselves,
so whole) and, per image or audio name, the newest ``image_keep`` records: those whose payload the
runtime and the mirror still keep (`kernelflow.protocol.jobspec.KeptImages`' rule).

Contents: Digest.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..protocol.jobspec import MEDIA, media_key


class Digest:
    """The per-record parts of a job's history views for records ``[0, n)``; ``take`` extends it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while one reader brings it up to date (paging included)
        self.n = 0
        self._cols: dict[str, _Column] = {}
        self._hists: dict[str, list] = {}
        self._text: dict[str, list] = {}
        self._media: dict[str, deque] = {}  # media_key -> deque of [index, kind, name, entry or None]
        self._view: tuple | None = None  # (n, the views) as last built

    def take(self, start: int, records: list[dict], keep: int) -> None:
        """Add ``records`` that begin at history index ``start`` (those before ``n`` are ignored)."""
        for i, r in enumerate(records, start):
            if i != self.n:
                continue
            self.n += 1
            kind = r.get("kind")
            if kind == "scalars":
                for k, v in r["values"].items():
                    c = self._cols.get(k)
                    if c is None:
                        c = self._cols[k] = _Column()
                    c.add(r["step"], r["wall_time"], v)
            elif kind == "histogram":
                self._hists.setdefault(r["name"], []).append((r["step"], np.asarray(r["edges"]),
                                                              np.asarray(r["counts"])))
            elif kind == "text":
                self._text.setdefault(r["name"], []).append((int(r["step"]), list(r["text"])))
            elif kind in MEDIA:
                q = self._media.get(media_key(r))
                if q is None:
                    q = self._media[media_key(r)] = deque(maxlen=keep)
                q.append([i, kind, r["name"], _entry(r)])
        self._view = None

    def refill(self, record_at: Callable[[int], dict | None]) -> None:
        """Take the payloads that came since for image and audio records taken without them
        (``record_at(i)``: the mirror's record ``i``, or None when it no longer holds it)."""
        for q in self._media.values():
            for item in q:
                if item[3] is None:
                    r = record_at(item[0])
                    if r is not None and (entry := _entry(r)) is not None:
                        item[3] = entry
                        self._view = None

    def views(self) -> tuple[dict, dict, dict, dict, dict]:
        """(history, histograms, image_history, audio_history, text) as the `Job` properties give
        them, built again only when records came since the last call."""
        if self._view is not None and self._view[0] == self.n:
            return self._view[1]
        history = {k: c.arrays() for k, c in self._cols.items()}
        media: dict[str, dict[str, list]] = {k: {} for k in MEDIA}
        for q in self._media.values():
            for _, kind, name, entry in q:
                if entry is not None:
                    media[kind].setdefault(name, []).append(entry)
        out = (history, {k: list(v) for k, v in self._hists.items()}, media["images"], media["audio"],
               {k: list(v) for k, v in self._text.items()})
        self._view = (self.n, out)
        return out


class _Column:
    """One metric's (step, wall_time, value) columns: numpy arrays (8 bytes a number, not a Python
    float's 32), with the points added since they were last read in lists until then."""

    def __init__(self) -> None:
        self._arrays = {"step": np.zeros(0, np.int64), "wall_time": np.zeros(0), "value": np.zeros(0)}
        self._new: tuple[list, list, list] = ([], [], [])

    def add(self, step: int, wall_time: float, value: float) -> None:
        self._new[0].append(step)
        self._new[1].append(wall_time)
        self._new[2].append(value)

    def arrays(self) -> dict[str, np.ndarray]:
        """``{"step", "wall_time", "value"}``: new arrays whenever points came since the last call."""
        if self._new[0]:
            self._arrays = {k: np.concatenate([a, np.asarray(new, a.dtype)])
                            for (k, a), new in zip(self._arrays.items(), self._new)}
            self._new = ([], [], [])
        return dict(self._arrays)


def _entry(r: dict) -> Any:
    """What the views give for an image or audio record: (step, images) or (step, PCM, sample rate);
    None without its payload."""
    if r.get(MEDIA[r["kind"]]) is None:
        return None
    if r["kind"] == "images":
        return (r["step"], np.asarray(r["images"]))
    return (int(r["step"]), np.asarray(r["audio"]), float(r["sample_rate"]))
