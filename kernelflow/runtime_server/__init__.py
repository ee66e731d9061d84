"""The runtime server: executor and plan cache, graph/variable store, RPC service.

The in-process pieces (service, sessions, executor) import neither tornado nor anything
from client/widgets/extension, so they also run on a bare GPU box.
"""

from .service import PROTOCOL_VERSION, RuntimeService

__all__ = ["RuntimeService", "PROTOCOL_VERSION"]
