"""Thin client: Runtime and RemoteGraph handles over a transport (in-process or TCP)."""

from .graph import RemoteGraph
from .runtime import Runtime, connect

__all__ = ["Runtime", "RemoteGraph", "connect"]
