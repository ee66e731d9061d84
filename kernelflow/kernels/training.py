"""Kernels of the training ops (same order as graph/ops/training.py)."""

from __future__ import annotations
