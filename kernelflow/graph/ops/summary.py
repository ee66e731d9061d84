"""In-graph summaries (TensorFlow 1.x style): ``kf.summary.scalar/histogram/image/audio/text``.

A summary is a node of the op ``summary`` whose value is its input, unchanged, with a
``kind`` and a ``tag`` (its name under the current name scope, so TensorBoard groups the
tags of one scope). Nothing runs it unless asked: a training job finds every summary node
of its graph, fetches those it can feed on its logging steps and writes them to the job's
history and event files, without them being listed in ``g.fit``.

Contents: summary_op, SUMMARY_KINDS, scalar, histogram, image, audio, text, summaries_of.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError
from ..ir import Graph, Tensor
from ..registry import REQUIRED, define_op
from ..shapes import FLOATING, INTEGER, format_shape

__all__ = ["scalar", "histogram", "image", "audio", "text", "summaries_of"]

SUMMARY_KINDS = ("scalar", "histogram", "image", "audio", "text")


def _summary_shape(x: Any, kind: str, tag: str, sample_rate: float) -> tuple:
    if kind not in SUMMARY_KINDS:
        raise InvalidArgumentError(f"summary: kind must be one of {SUMMARY_KINDS}; got {kind!r}")
    if not isinstance(tag, str) or not tag:
        raise InvalidArgumentError(f"summary: tag must be a non-empty string; got {tag!r}")
    if kind == "scalar" and x.ndim != 0:
        raise InvalidArgumentError(f"summary.scalar '{tag}': the tensor must be a scalar; got shape "
                                   f"{format_shape(x.shape)}")
    if kind == "audio":
        if x.dtype not in FLOATING or x.ndim not in (2, 3):
            raise InvalidArgumentError(f"summary.audio '{tag}': the tensor must be float [batch, frames] or "
                                       f"[batch, frames, channels]; got {x.dtype}{format_shape(x.shape)}")
        if not (isinstance(sample_rate, (int, float)) and sample_rate > 0):
            raise InvalidArgumentError(f"summary.audio '{tag}': sample_rate must be > 0; got {sample_rate!r}")
    if kind == "text" and (x.dtype not in INTEGER or x.ndim not in (1, 2)):
        # kernelflow has no string dtype: text is Unicode code points (bytes for uint8), 0 = padding.
        raise InvalidArgumentError(f"summary.text '{tag}': the tensor must be integer character codes "
                                   f"[length] or [batch, length]; got {x.dtype}{format_shape(x.shape)}")
    return x.shape


# Identity on its input: the value is what gets logged; the attrs say how.
summary_op = define_op(
    "summary", ("x",), attrs={"kind": REQUIRED, "tag": REQUIRED, "sample_rate": 0.0},
    shape_rule=_summary_shape, vjp=lambda g, out, x, **attrs: (g,), alias=True,
    doc="x unchanged; a job logs it (scalar, histogram, image, audio or text) on its logging steps")


def _bind(kind: str, name: str, t: Any, sample_rate: float = 0.0) -> Tensor:
    if not isinstance(t, Tensor):
        raise InvalidArgumentError(f"summary.{kind}: expected a kf.Tensor; got {type(t).__name__}")
    if not isinstance(name, str) or not name.strip("/"):
        raise InvalidArgumentError(f"summary.{kind}: name must be a non-empty string; got {name!r}")
    g = t.graph
    tag = "/".join(g._scope + [name.strip("/")]) if g._scope else name.strip("/")
    return summary_op.bind(t, kind=kind, tag=tag, sample_rate=float(sample_rate), name=f"summary_{name}")


def scalar(name: str, t: Tensor) -> Tensor:
    """Log the scalar ``t`` under ``name`` (scoped) on a job's logging steps; returns ``t``'s summary node.

    Example:
        >>> with g.name_scope("train"):
        ...     kf.summary.scalar("loss", loss)   # logged as train/loss
    """
    return _bind("scalar", name, t)


def histogram(name: str, t: Tensor) -> Tensor:
    """Log a histogram of ``t``'s values (any shape) on a job's logging steps."""
    return _bind("histogram", name, t)


def image(name: str, t: Tensor) -> Tensor:
    """Log the image batch ``t`` (NHWC / NHW, float in [0, 1] or uint8) as a job logs ``images=``."""
    return _bind("image", name, t)


def audio(name: str, t: Tensor, sample_rate: float) -> Tensor:
    """Log the waveforms ``t`` ([batch, frames] or [batch, frames, channels], float in [-1, 1]) as audio."""
    return _bind("audio", name, t, sample_rate)


def text(name: str, t: Tensor) -> Tensor:
    """Log ``t`` as text records: integer character codes, ``[length]`` or ``[batch, length]`` (one string
    per row; Unicode code points, bytes for uint8; zeros are padding and dropped), e.g. decoded sequences."""
    return _bind("text", name, t)


def summaries_of(graph: Graph) -> list[Tensor]:
    """Every summary node of ``graph``, in graph order."""
    return [n for n in graph.nodes() if n.op is summary_op]
