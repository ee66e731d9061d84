"""The wire protocol: msgpack-RPC messages and the ndarray codec (docs/protocol.md).

Imports msgpack and numpy only, so both the client and the server use it.
"""

from .codec import EXT_NDARRAY, EXT_NPSCALAR, EXT_TYPES, MessageReader, decode, encode
from .rpc import (
                  NOTIFICATION,
                  REQUEST,
                  RESPONSE,
                  Notification,
                  Request,
                  Response,
                  error_from_map,
                  error_to_map,
                  parse_message,
)

__all__ = ["EXT_NDARRAY", "EXT_NPSCALAR", "EXT_TYPES", "MessageReader", "decode", "encode", "REQUEST", "RESPONSE",
           "NOTIFICATION", "Request", "Response", "Notification", "parse_message", "error_to_map", "error_from_map"]
