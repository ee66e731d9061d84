"""The payload formats of media records that both sides encode: a WAV file of an audio record's clip.

The runtime writes it into TensorBoard's audio summaries; the training monitor hands it to the
browser's ``<audio>`` element. Python's `wave` module does the format.

Contents: wav_bytes.
"""

from __future__ import annotations

import io
import wave
from typing import Any

import numpy as np


def wav_bytes(pcm16: Any, sample_rate: float) -> bytes:
    """A WAV file of int16 samples ``(frames, channels)`` at ``sample_rate`` Hz (rounded to an integer)."""
    a = np.ascontiguousarray(pcm16, dtype="<i2")
    if a.ndim != 2:
        raise ValueError(f"wav_bytes: samples must be (frames, channels); got shape {a.shape}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as f:
        f.setnchannels(a.shape[1])
        f.setsampwidth(2)
        f.setframerate(int(round(sample_rate)))
        f.writeframes(a.tobytes())
    return buf.getvalue()
