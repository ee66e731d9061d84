"""Blocking calls that keep a notebook's widgets live: `live_sleep` handles widget messages while it waits.

A cell that blocks (``job.wait()``) keeps the kernel from reading its shell channel, so a click
on a widget (the monitor's Pause) is queued until the cell ends. Inside a running IPython kernel,
on its main thread, `live_sleep` handles widget messages while it waits, and cells run meanwhile
are held and run after the current one, in order: on ipykernel 7 by reading the kernel's
main-thread message socket itself (`_Ipykernel7Pump`), on older kernels with jupyter-ui-poll's
``ui_events``. Elsewhere (a script, a thread, no jupyter-ui-poll) it is ``time.sleep``. Nothing here
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
    pump = _Ipykernel7Pump.make()
    _state.active = True
    try:
        if pump is not None:
            with pump:
                yield pump.sleep
            return
        try:
            from jupyter_ui_poll import ui_events
        except ImportError:
            yield time.sleep
            return
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


class _Ipykernel7Pump:
    """Widget messages for a blocked cell on ipykernel >= 7, which jupyter-ui-poll 1.1 cannot
    serve (it calls ``do_one_iteration``, gone in ipykernel 7: its calls fail silently).

    ipykernel 7 reads the shell socket on a thread of its own and hands each message to the main
    thread through an inproc socket that the main thread's event loop reads; a cell that blocks
    blocks that loop. While it sleeps, the pump reads that socket itself: comm messages (widget
    events) are handled at once, as ipykernel would; every other message (a cell run meanwhile)
    is handed to the kernel's own handler on the event loop, in order, after this cell.
    """

    def __init__(self, kernel: object, sock: object) -> None:
        self.kernel, self.sock = kernel, sock
        self.held: list = []

    @classmethod
    def make(cls) -> _Ipykernel7Pump | None:
        kb = sys.modules.get("ipykernel.kernelbase")
        try:
            kernel = kb.Kernel.instance()  # type: ignore[union-attr]
            thread = kernel.shell_channel_thread
            sock = thread.manager.get_shell_channel_to_subshell_pair(None).to_socket
        except Exception:  # not ipykernel 7's layout: jupyter-ui-poll's way, or none
            return None
        if hasattr(kernel, "do_one_iteration") or sock is None:
            return None
        return cls(kernel, sock)

    def __enter__(self) -> _Ipykernel7Pump:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.held:
            import asyncio

            loop = asyncio.get_event_loop()
            for frames in self.held:  # after this cell, in the order they came
                loop.call_soon(lambda f=frames: asyncio.ensure_future(self.kernel.shell_main(None, f)))
            self.held = []

    def pump(self) -> None:
        import zmq

        k = self.kernel
        for _ in range(POLL_EVENTS):
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # A first look without the content does not enter the signature in the session's
            # replay history: a held message deserialized with its content here would be refused
            # as a "Duplicate Signature" when the kernel handles it after this cell (the cell lost).
            try:
                idents, rest = k.session.feed_identities(frames, copy=False)
                kind = k.session.deserialize(rest, content=False, copy=False)["header"]["msg_type"]
            except Exception:
                self.held.append(frames)  # the kernel's handler will say what is wrong with it
                continue
            if kind not in ("comm_open", "comm_msg", "comm_close"):
                self.held.append(frames)
                continue
            try:
                msg = k.session.deserialize(rest, content=True, copy=False)
            except Exception:
                self.held.append(frames)
                continue
            saved = (k._get_shell_context_var(k._shell_parent_ident), k.get_parent("shell"))
            try:
                k.set_parent(idents, msg, channel="shell")
                k.shell_handlers[kind](None, idents, msg)
            except Exception:
                import logging

                logging.getLogger("kernelflow.client").error("widget message during a wait failed", exc_info=True)
            finally:
                k.set_parent(saved[0], saved[1], channel="shell")

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            self.pump()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, POLL_S))
