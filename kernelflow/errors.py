"""The exception types of kernelflow: TensorFlow's / gRPC's canonical codes.

Every error a user sees is a `KernelflowError`. Each canonical type also subclasses the
matching builtin where one fits, so `except ValueError` keeps working. The wire carries the
type name (``type(e).__name__``) and the client rebuilds the same class with `error_class`.

Contents: KernelflowError and the canonical types, ShapeError, ProtocolError, error_class.
"""

from __future__ import annotations

from typing import Any


class KernelflowError(Exception):
    """Base of every kernelflow error.

    Args:
        message: what went wrong, with the values involved.
        node: the graph node the error is about (``dense1/MatMul``), if any.
        source: the ``file:line`` of the user code that created that node, if known.
    """

    def __init__(self, message: str = "", *, node: str | None = None, source: str | None = None):
        super().__init__(message)
        self.message = message
        self.node = node
        self.source = source

    def __str__(self) -> str:
        text = self.message
        if self.node and self.node not in text:
            text = f"{text} [node {self.node}]"
        if self.source and self.source not in text:
            text = f"{text} (created at {self.source})"
        return text

    def __reduce__(self):  # keeps multiprocessing/copy working with keyword fields
        return (_rebuild, (type(self).__name__, self.message, self.node, self.source))


class InvalidArgumentError(KernelflowError, ValueError):
    """The caller passed something malformed: a wrong shape, dtype, name or value."""


class ShapeError(InvalidArgumentError):
    """Static or runtime shapes do not fit an op's rule."""


class NotFoundError(KernelflowError, LookupError):
    """A named thing (graph, node, variable, job, model) does not exist."""


class AlreadyExistsError(KernelflowError):
    """A thing with that name exists already."""


class FailedPreconditionError(KernelflowError, RuntimeError):
    """The system is not in a state where the request can run (e.g. no GPU for a gpu node)."""


class ResourceExhaustedError(KernelflowError, MemoryError):
    """Out of memory, a full queue, or a message over the size limit."""


class CancelledError(KernelflowError):
    """The operation was cancelled (a stopped job, a closed connection)."""


class UnauthenticatedError(KernelflowError, PermissionError):
    """No valid token was presented."""


class PermissionDeniedError(KernelflowError, PermissionError):
    """The caller is known but may not do this."""


class UnavailableError(KernelflowError, ConnectionError):
    """The server cannot be reached (yet); retrying later may work."""


class DeadlineExceededError(KernelflowError, TimeoutError):
    """The operation did not finish before its deadline."""


class InternalError(KernelflowError, RuntimeError):
    """A bug or an unexpected failure inside kernelflow or a kernel."""


class ProtocolError(InvalidArgumentError):
    """Bytes on the wire that are not a valid kernelflow msgpack-RPC message."""


_CANONICAL = {
    cls.__name__: cls
    for cls in (
        KernelflowError,
        InvalidArgumentError,
        ShapeError,
        NotFoundError,
        AlreadyExistsError,
        FailedPreconditionError,
        ResourceExhaustedError,
        CancelledError,
        UnauthenticatedError,
        PermissionDeniedError,
        UnavailableError,
        DeadlineExceededError,
        InternalError,
        ProtocolError,
    )
}


def error_class(type_name: str) -> type[KernelflowError]:
    """The error class for a wire type name; unknown names map to InternalError."""
    return _CANONICAL.get(type_name, InternalError)


def kernel_error(node: str, op: str, source: str | None, e: Exception,
                 inputs: Any = None) -> KernelflowError:
    """What a run raises when a node's kernel raised ``e``: ``e`` itself if it is a KernelflowError
    (now naming the node), else a typed error naming the node (and, given ``inputs()``, the
    description of its inputs): out of memory -> ResourceExhaustedError, a bad value, index or type
    -> InvalidArgumentError, anything else -> InternalError."""
    if isinstance(e, KernelflowError):
        e.node = e.node or node
        e.source = e.source or source
        return e
    if isinstance(e, MemoryError):
        return ResourceExhaustedError(f"{node} ({op}): out of memory: {e}", node=node, source=source)
    cls: type[KernelflowError] = InvalidArgumentError if isinstance(e, (ValueError, IndexError, TypeError)) \
        else InternalError
    if type(e).__name__ == "OutOfMemoryError":  # CuPy's
        cls = ResourceExhaustedError
    tail = "" if inputs is None else f"; inputs: {inputs() or 'none'}"
    return cls(f"{node} ({op}) failed at run time: {type(e).__name__}: {e}{tail}", node=node, source=source)


def _rebuild(type_name: str, message: str, node: str | None, source: str | None) -> KernelflowError:
    return error_class(type_name)(message, node=node, source=source)


__all__ = [name for name in _CANONICAL] + ["error_class", "kernel_error"]
