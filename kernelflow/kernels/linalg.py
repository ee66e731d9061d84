"""Kernels of the linear-algebra ops (same order as graph/ops/linalg.py)."""

from __future__ import annotations

from ..graph.ops import linalg as L
from .registry import xp_kernel

xp_kernel(L.matmul_op, "matmul")
