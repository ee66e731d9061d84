"""Blocking calls that keep a notebook's widgets live: `live_sleep` handles widget messages while it waits.

A cell that blocks (``job.wait()``) keeps the kernel from reading its shell channel, so a click
on a widget (the monitor's Pause) is queued until the cell ends. Inside a running IPython kernel,
on its main thread, `live_sleep` waits with jupyter-ui-poll's ``ui_events``: widget messages are
handled while it waits, and cells run meanwhile are held and replayed after the current one, in
order. Elsewhere (a script, a thread, no jupyter-ui-poll) it is ``time.sleep``. Nothing here
imports IPython or jupyter-ui-poll until a kernel is found running.

Contents: live_sleep, in_kernel_cell.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator

POLL_EVENTS = 10   # widget messages handled per poll at most
POLL_S = 0.02      # sleep between polls
_state = threading.local()


def in_kernel_cell() -> bool:
    """True on the main thread of a running IPython kernel (ipykernel already imported)."""
    kb = sys.modules.get("ipykernel.kernelbase")
    if kb is None or threading.current_thread() is not threading.main_thread():
        return False
    try:
        return bool(kb.Kernel.initialized())
    except Exception:  # an ipykernel of another shape: behave as outside a kernel
        return False


@contextlib.contextmanager
def live_sleep() -> Iterator[Callable[[float], None]]:
    """A ``sleep(seconds)`` that, in a notebook cell, handles widget messages while it sleeps.

    Nested uses (a widget callback that itself waits) get the plain ``time.sleep``: the outer
    one is already polling.

    Example:
        >>> with live_sleep() as sleep:
        ...     while job.refresh()["status"] == "running":
        ...         sleep(0.25)
    """
    if getattr(_state, "active", False) or not in_kernel_cell():
        yield time.sleep
        return
    try:
        from jupyter_ui_poll import ui_events
    except ImportError:
        yield time.sleep
        return
    _state.active = True
    try:
        with ui_events() as poll:
            def sleep(seconds: float) -> None:
                end = time.monotonic() + seconds
                while True:
                    poll(POLL_EVENTS)
                    left = end - time.monotonic()
                    if left <= 0:
                        return
                    time.sleep(min(left, POLL_S))

            yield sleep
    finally:
        _state.active = False
