"""Kernels of the random ops (same order as graph/ops/random.py)."""

from __future__ import annotations
