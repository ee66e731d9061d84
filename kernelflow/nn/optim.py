"""Optimisers (placeholder; filled in by the optimiser work)."""

from __future__ import annotations
