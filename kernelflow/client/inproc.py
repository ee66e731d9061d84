"""The in-process transport: the runtime service runs inside this process (``kf.connect("inproc")``).

Calls go straight to the service (no sockets, no encoding). This is the one client module
that reaches into ``runtime_server``, and only when an in-process runtime is made, so a thin
client (``kf.connect(url)``) never loads server code.

Contents: InprocTransport.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from .transport import Transport

log = logging.getLogger("kernelflow.client")


class InprocTransport(Transport):
    """Runs the runtime service inside this process (``kf.connect("inproc")``).

    Args:
        device: the runtime's default device ("cpu", "gpu:N", "auto").
        soft_placement: run nodes asking for a missing GPU on the CPU.
        state_dir: keep graphs, checkpoints, datasets, job histories and models in this dir,
            as `kernelflow serve --state-dir` does (None: memory only).
        compile: the graph compiler's mode (see `kernelflow.connect`).
        cuda_graphs: capture GPU plans as CUDA graphs (see `kernelflow.connect`).
    """

    url = "inproc"

    def __init__(self, device: str = "cpu", soft_placement: bool = False, state_dir: str | None = None,
                 compile: str | None = None, cuda_graphs: bool | None = None):
        from ..runtime_server.service import RuntimeService  # lazily: a client machine may lack kernels

        self.service = RuntimeService(device=device, soft_placement=soft_placement,
                                      state_dir=str(state_dir) if state_dir is not None else None, compile=compile,
                                      cuda_graphs=cuda_graphs)
        self._call = self.service.call
        self._handlers: dict[str, list[Callable[[list], Any]]] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self.closed = False

    def call(self, method: str, params: list) -> Any:
        __tracebackhide__ = True  # noqa: F841  (IPython: the error's traceback ends in the user's code)
        return self._call(method, params, self)

    # The transport is its own peer: notifications from the runtime's threads are queued and
    # handed to callbacks on one dispatcher thread, as the TCP client's reader thread does.
    def notify(self, method: str, params: list) -> None:
        self._queue.put((method, params))

    def on_notification(self, method: str, callback: Callable[[list], Any]) -> None:
        self._handlers.setdefault(method, []).append(callback)
        if self._dispatcher is None:
            self._dispatcher = threading.Thread(target=self._dispatch_loop, name="kf-inproc-notify", daemon=True)
            self._dispatcher.start()

    def _dispatch_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            method, params = item
            for cb in list(self._handlers.get(method, ())):
                try:
                    cb(params)
                except Exception:
                    log.error("notification handler for %s failed", method, exc_info=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.service.peer_closed(self)
            self._queue.put(None)
            # This process owns the runtime: like a server's clean exit, stop jobs (at a
            # checkpoint), checkpoint the graphs and release the state dir's lock, if it has one.
            self.service.shutdown()
