"""Resident datasets: named arrays uploaded once and kept on the runtime's device.

Contents: DatasetStore.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import RuntimeService


class DatasetStore:
    """The runtime's datasets; registers the ``dataset.*`` RPC methods on the service."""

    def __init__(self, service: RuntimeService):
        self.service = service
