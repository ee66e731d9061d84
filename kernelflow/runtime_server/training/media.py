"""Audio and text records of jobs (``g.fit(audio=..., text=...)`` and ``kf.summary.audio/text``) and the
in-graph summaries a job collects.

Audio is kept as 16-bit PCM ``(clips, frames, channels)`` (what WAV holds, half of float32's
bytes); text as a list of strings, one per row of character codes.

Contents: check_audio, check_text, to_pcm16, to_text_rows, Summaries, find_summaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ...graph.ir import Tensor, toposort
from ...graph.ops.state import placeholder_op
from ...graph.ops.summary import summary_op
from ...graph.shapes import FLOATING, INTEGER, format_shape
from ..engine.devices import to_host

_AUDIO_SHAPES = "float [batch, frames] or [batch, frames, channels]"
_TEXT_SHAPES = "integer character codes [length] or [batch, length]"


def check_audio(key: str, t: Tensor) -> None:
    """InvalidArgumentError naming ``key`` and the node unless ``t`` can be an audio batch."""
    if t.dtype not in FLOATING or t.ndim not in (2, 3):
        raise InvalidArgumentError(f"fit: audio '{key}' ({t.name}) must be {_AUDIO_SHAPES}; it is "
                                   f"{t.dtype}{format_shape(t.shape)}", node=t.name, source=t.source)


def check_text(key: str, t: Tensor) -> None:
    """InvalidArgumentError naming ``key`` and the node unless ``t`` can be text rows."""
    if t.dtype not in INTEGER or t.ndim not in (1, 2):
        raise InvalidArgumentError(f"fit: text '{key}' ({t.name}) must be {_TEXT_SHAPES}; it is "
                                   f"{t.dtype}{format_shape(t.shape)}", node=t.name, source=t.source)


def to_pcm16(key: str, a: Any, max_n: int) -> np.ndarray:
    """The first ``max_n`` clips of ``a`` as int16 ``(N, frames, channels)``: clipped to [-1, 1],
    NaN as silence.

    Raises:
        InvalidArgumentError: a value that is no audio batch (naming ``key``).
    """
    a = np.asarray(to_host(a[:max_n] if getattr(a, "ndim", 0) >= 1 else a))
    if a.dtype.kind != "f" or a.ndim not in (2, 3):
        raise InvalidArgumentError(f"audio '{key}' must be {_AUDIO_SHAPES}; its value is "
                                   f"{a.dtype.name}{format_shape(a.shape)}")
    if a.ndim == 2:
        a = a[..., None]
    x = np.clip(np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
    return np.rint(x * 32767.0).astype(np.int16)


def to_text_rows(key: str, a: Any, max_n: int) -> list[str]:
    """The first ``max_n`` rows of ``a`` as strings (zeros dropped; uint8 rows are UTF-8 bytes,
    other integers Unicode code points, invalid ones U+FFFD)."""
    a = np.asarray(to_host(a))
    if a.dtype.kind not in "iu" or a.ndim not in (1, 2):
        raise InvalidArgumentError(f"text '{key}' must be {_TEXT_SHAPES}; its value is "
                                   f"{a.dtype.name}{format_shape(a.shape)}")
    rows = a[None] if a.ndim == 1 else a[:max_n]
    out = []
    for row in rows:
        codes = row[row != 0]
        if a.dtype == np.uint8:
            out.append(codes.tobytes().decode("utf-8", errors="replace"))
        else:
            out.append("".join(chr(c) if 0 < c < 0x110000 and not 0xD800 <= c < 0xE000 else "\ufffd"
                               for c in codes.tolist()))
    return out


@dataclass
class Summaries:
    """The in-graph summaries a job collects on its logging steps, by kind, and those it skips."""

    nodes: list[Tensor] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # tag -> placeholders the feed lacks

    @property
    def fetch(self) -> list[str]:
        return [t.name for t in self.nodes]


def find_summaries(nodes: list[Tensor], feed_names: list[str]) -> Summaries:
    """The summary nodes among ``nodes`` that a run fed with ``feed_names`` can compute."""
    fed = set(feed_names)
    out = Summaries()
    for t in nodes:
        if t.op is not summary_op:
            continue
        need = sorted(n.name for n in toposort([t]) if n.op is placeholder_op and n.name not in fed)
        if need:
            out.skipped[t.attrs["tag"]] = need
        else:
            if t.attrs["kind"] == "image":
                from .fit_loop import _check_image

                _check_image(t.attrs["tag"], t)
            out.nodes.append(t)
    return out
