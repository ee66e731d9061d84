"""msgpack-RPC messages: Request ``[0, msgid, method, params]``, Response
``[1, msgid, error, result]``, Notification ``[2, method, params]``, and the error maps
``{"type", "message", "node", "source", "error_id"?, "traceback"?}`` that carry kernelflow's
exceptions.

Contents: REQUEST, RESPONSE, NOTIFICATION, Request, Response, Notification, parse_message,
request, response, notification, error_to_map, error_from_map.
"""

from __future__ import annotations

import traceback as _traceback
from typing import Any, NamedTuple

from ..errors import (
    InternalError,
    InvalidArgumentError,
    KernelflowError,
    ProtocolError,
    ResourceExhaustedError,
    error_class,
)
from .codec import encode

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
MAX_MSGID = 0xFFFFFFFF  # msgpack-RPC msgids are 32-bit unsigned
MAX_NAME_CHARS = 256  # graph, variable, dataset, job and model names, checkpoint tags


class Request(NamedTuple):
    msgid: int
    method: str
    params: list


class Response(NamedTuple):
    msgid: int | None
    error: Any
    result: Any


class Notification(NamedTuple):
    method: str
    params: list


def _is_msgid(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_MSGID


def parse_message(msg: Any) -> Request | Response | Notification:
    """Check the shape of a decoded message and return it as a named tuple.

    Raises:
        ProtocolError: when it is not one of the three msgpack-RPC shapes; ``.msgid`` is set
            when the message was a request whose msgid could be read, so it can be answered.
    """
    if type(msg) is list and len(msg) == 4 and type(msg[0]) is int:  # the usual ones, checked fast
        kind, msgid, a, b = msg
        if type(msgid) is int and 0 <= msgid <= MAX_MSGID:
            if kind == REQUEST and type(a) is str and type(b) is list:
                return Request(msgid, a, b)
            if kind == RESPONSE:
                return Response(msgid, a, b)
    if not isinstance(msg, list) or not msg:
        raise ProtocolError(f"a msgpack-RPC message must be an array [type, ...]; got {type(msg).__name__}")
    kind = msg[0]
    if kind == REQUEST and len(msg) == 4 and not isinstance(kind, bool):
        _, msgid, method, params = msg
        if not _is_msgid(msgid):
            raise ProtocolError(f"request msgid must be an unsigned 32-bit int; got {msgid!r:.40}")
        if isinstance(method, bytes):
            method = _bin_name(method, msgid)
        if not isinstance(method, str):
            raise _with_msgid(ProtocolError(f"request method must be a string; got {type(method).__name__}"), msgid)
        if not isinstance(params, list):
            raise _with_msgid(InvalidArgumentError(f"{method}: params must be an array; got {type(params).__name__}"),
                              msgid)
        return Request(msgid, method, params)
    if kind == RESPONSE and len(msg) == 4 and not isinstance(kind, bool):
        _, msgid, error, result = msg
        if msgid is not None and not _is_msgid(msgid):
            raise ProtocolError(f"response msgid must be an unsigned 32-bit int; got {msgid!r:.40}")
        return Response(msgid, error, result)
    if kind == NOTIFICATION and len(msg) == 3 and not isinstance(kind, bool):
        _, method, params = msg
        if isinstance(method, bytes):
            method = _bin_name(method, None)
        if not isinstance(method, str) or not isinstance(params, list):
            raise ProtocolError("a notification must be [2, method: str, params: array]")
        return Notification(method, params)
    raise ProtocolError(f"not a msgpack-RPC message: type code {kind!r:.20} with {len(msg)} elements; expected "
                        "[0, msgid, method, params], [1, msgid, error, result] or [2, method, params]")


def _bin_name(name: bytes, msgid: int | None) -> str:
    """A method name sent as msgpack bin (older msgpack-RPC implementations, pynvim), as UTF-8."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        e = ProtocolError(f"method name must be UTF-8; got bin {name!r:.40}")
        raise (_with_msgid(e, msgid) if msgid is not None else e) from None


def _with_msgid(e: KernelflowError, msgid: int) -> KernelflowError:
    e.msgid = msgid  # type: ignore[attr-defined]
    return e


def request(msgid: int, method: str, params: list) -> list:
    """Frames of a Request."""
    return encode([REQUEST, msgid, method, params])


def response(msgid: int | None, error: dict | None, result: Any = None) -> list:
    """Frames of a Response (an error map, or None and the result)."""
    return encode([RESPONSE, msgid, error, result])


def notification(method: str, params: list) -> list:
    """Frames of a Notification."""
    return encode([NOTIFICATION, method, params])


def error_to_map(e: BaseException, *, with_traceback: bool | None = None) -> dict:
    """The wire form of an exception.

    A KernelflowError keeps its type name, node and source. Other exceptions are mapped:
    MemoryError to ResourceExhaustedError, RecursionError to InvalidArgumentError (a too
    deeply nested value), anything else to InternalError. An ``error_id`` attribute (set for
    unexpected exceptions, whose traceback the server logs under it) travels as ``error_id``; the
    traceback travels only when ``with_traceback`` asks for it (never by default: a client must
    not learn the server's code paths).
    """
    if isinstance(e, KernelflowError):
        name, message = type(e).__name__, e.message
    elif isinstance(e, MemoryError):
        name, message = ResourceExhaustedError.__name__, f"out of memory: {e}"
    elif isinstance(e, RecursionError):
        name, message = InvalidArgumentError.__name__, f"value nested too deeply: {e}"
    else:
        name, message = InternalError.__name__, f"{type(e).__name__}: {e}"
    out: dict[str, Any] = {"type": name, "message": message, "node": getattr(e, "node", None),
                           "source": getattr(e, "source", None)}
    error_id = getattr(e, "error_id", None)
    if isinstance(error_id, str):
        out["error_id"] = error_id
    if with_traceback:
        out["traceback"] = "".join(_traceback.format_exception(type(e), e, e.__traceback__))
    return out


def error_from_map(err: Any) -> KernelflowError:
    """The exception an error map describes (unknown types become InternalError)."""
    if not isinstance(err, dict):
        return InternalError(f"server answered a malformed error: {err!r:.200}")
    name = err.get("type")
    cls = error_class(name if isinstance(name, str) else "")
    message = err.get("message")
    message = message if isinstance(message, str) else repr(message)
    if cls is InternalError and name != InternalError.__name__:
        message = f"{name}: {message}"
    node, source = err.get("node"), err.get("source")
    exc = cls(message, node=node if isinstance(node, str) else None, source=source if isinstance(source, str) else None)
    error_id = err.get("error_id")
    if isinstance(error_id, str):
        exc.error_id = error_id  # type: ignore[attr-defined]
    tb = err.get("traceback")
    if isinstance(tb, str):
        exc.remote_traceback = tb  # type: ignore[attr-defined]
    return exc
