"""Transports: how a client's requests reach a runtime. The in-process transport calls the
runtime service directly (no sockets, no encoding); the TCP transport speaks msgpack-RPC.

Contents: Transport, InprocTransport.
"""

from __future__ import annotations

from typing import Any


class Transport:
    """A request/response channel to one runtime."""

    url: str = ""

    def call(self, method: str, params: list) -> Any:
        """Send one request and return its result, or raise the error it answered."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the channel."""


class InprocTransport(Transport):
    """Runs the runtime service inside this process (``kf.connect("inproc")``).

    Args:
        device: the runtime's default device ("cpu", "gpu:N", "auto").
        soft_placement: run nodes asking for a missing GPU on the CPU.
    """

    url = "inproc"

    def __init__(self, device: str = "cpu", soft_placement: bool = False):
        from ..runtime_server.service import RuntimeService  # lazily: a client machine may lack kernels

        self.service = RuntimeService(device=device, soft_placement=soft_placement)
        self._call = self.service.call

    def call(self, method: str, params: list) -> Any:
        return self._call(method, params)
