"""The training monitor's audio and text panels: ``g.fit(audio=..., text=...)`` and ``kf.summary.audio/text``
records, with the step slider of the images panel (`kernelflow.widgets.records.RecordPanel`).

An audio record is int16 PCM ``(clips, frames, channels)`` and its sample rate; each clip
becomes an ``ipywidgets.Audio`` (a WAV the browser plays in an ``<audio>`` element with its
controls), encoded once, when first shown. A text record is a list of strings, shown as rows.

Contents: AudioPanel, TextPanel (and wav_bytes, from kernelflow.protocol.media).
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import numpy as np

from ..protocol.media import wav_bytes
from .records import KEEP, RecordPanel

AUDIO_MIN_INTERVAL_S = 1.0  # as the images panel: new clips at most once a second from the render thread


class AudioPanel(RecordPanel):
    """Audio records by name: a name dropdown, a step slider, a label and one player per clip.

    Attributes:
        data: ``{name: [(step, (int16 (clips, frames, channels), sample_rate)), ...]}``.
        players: the `ipywidgets.VBox` of `ipywidgets.Audio` players on screen.
    """

    def __init__(self, keep: int = KEEP, min_interval_s: float = AUDIO_MIN_INTERVAL_S) -> None:
        self.players = widgets.VBox([])
        self.players.add_class("kf-monitor-audio-clips")
        self._wav: dict[tuple[str, int], list[bytes]] = {}
        super().__init__("audio", self.players, keep, min_interval_s)
        self.widget.add_class("kf-monitor-audio")

    def add(self, key: str, step: int, clips: Any, sample_rate: float = 16000.0) -> None:  # type: ignore[override]
        """Take one audio record."""
        super().add(key, step, (np.asarray(clips, np.int16), float(sample_rate)))

    def _forget(self, key: str, step: int) -> None:
        self._wav.pop((key, step), None)

    def _describe(self, step: int, payload: Any, index: int, n_recs: int) -> str:
        clips, rate = payload
        n, frames, ch = clips.shape
        return (f'<span class="kf-audio-step">step <b>{step}</b></span> · {n} clip{"s" if n != 1 else ""} '
                f"{frames / rate:.2f} s at {rate:g} Hz{' stereo' if ch == 2 else ''} · record {index + 1} / {n_recs}")

    def _draw(self, key: str, step: int, payload: Any) -> None:
        clips, rate = payload
        wavs = self._wav.get((key, step))
        if wavs is None:
            wavs = self._wav[(key, step)] = [wav_bytes(c, rate) for c in clips]
        kids = list(self.players.children)
        while len(kids) < len(wavs):
            kids.append(widgets.Audio(format="wav", autoplay=False, loop=False, controls=True))
        with self.players.hold_sync():
            for player, wav in zip(kids, wavs):
                player.value = wav
            self.players.children = kids[:len(wavs)]
            for player in kids[len(wavs):]:
                player.close()


class TextPanel(RecordPanel):
    """Text records by name: a name dropdown, a step slider, a label and the record's rows."""

    def __init__(self, keep: int = KEEP) -> None:
        self.body = widgets.HTML()
        self.body.add_class("kf-monitor-text-rows")
        super().__init__("text", self.body, keep)
        self.widget.add_class("kf-monitor-text")

    def add(self, key: str, step: int, rows: Any) -> None:  # type: ignore[override]
        """Take one text record."""
        super().add(key, step, [str(r) for r in rows])

    def _describe(self, step: int, rows: Any, index: int, n_recs: int) -> str:
        return f"step <b>{step}</b> · {len(rows)} row{'s' if len(rows) != 1 else ''} · record {index + 1} / {n_recs}"

    def _draw(self, key: str, step: int, rows: Any) -> None:
        items = "".join(f"<li><code>{html.escape(r) or '&nbsp;'}</code></li>" for r in rows)
        self.body.value = f'<ol start="0" style="margin:2px 0;max-height:240px;overflow:auto">{items}</ol>'
