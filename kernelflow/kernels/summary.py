"""Kernel of the summary op (graph/ops/summary.py): the value passes through; the job logs it."""

from __future__ import annotations

from ..graph.ops import summary as S
from .registry import kernel


@kernel(S.summary_op)
def summary_kernel(xp, x, kind, tag, sample_rate):
    return x
