"""The transport interface: how a client's requests reach a runtime (tcp.py: msgpack-RPC over
TCP; inproc.py: the runtime service in this process).

Contents: Transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Transport:
    """A request/response channel to one runtime."""

    url: str = ""

    def call(self, method: str, params: list) -> Any:
        """Send one request and return its result, or raise the error it answered."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the channel."""

    def on_notification(self, method: str, callback: Callable[[list], Any]) -> None:
        """Call ``callback(params)`` for every notification ``method`` the runtime pushes."""
        raise NotImplementedError
