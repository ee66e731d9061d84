"""Polling with a deadline: the one way tests wait for something that happens on another thread or process.

Contents: WAIT_S, wait_for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

WAIT_S = 120.0  # generous: a loaded 2-core machine is slow, and a deadline is a failure, not a speed test


def wait_for(pred: Callable[[], Any], what: str, timeout_s: float = WAIT_S, every_s: float = 0.01) -> Any:
    """Poll ``pred`` until it returns something truthy (returned); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
