"""Server-side training jobs: the fit loop on a worker thread, metrics streamed to subscribers.

Contents: JobManager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .service import RuntimeService


class JobManager:
    """The runtime's jobs; registers the ``job.*`` RPC methods on the service."""

    def __init__(self, service: RuntimeService):
        self.service = service

    def shutdown(self) -> None:
        """Stop running jobs at a checkpoint (clean server shutdown)."""
