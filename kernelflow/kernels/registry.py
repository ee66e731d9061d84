"""Kernel registry: implementations keyed by `OpDef` object and backend.

A generic kernel is written once against the array module ``xp`` (numpy or cupy) and
registered with ``backend="any"``; a backend-specific fast path (``backend="cupy"``) sits
next to it and takes precedence on that backend.

Kernel signature: ``fn(xp, *inputs, **attrs)``; with ``needs_ctx=True``,
``fn(ctx, xp, *inputs, **attrs)`` where ctx is the executor's per-node `NodeContext`.

Contents: KernelEntry, kernel, xp_kernel, get_kernel, has_kernel, array_module, special.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, InternalError
from ..graph.registry import OpDef


@dataclass(frozen=True)
class KernelEntry:
    """A registered kernel: a function, or the name of an array-module function (``xp_attr``)."""

    fn: Callable[..., Any] | None
    needs_ctx: bool = False
    xp_attr: str | None = None

    def bind(self, xp: Any, attrs: dict[str, Any], ctx: Any = None) -> Callable[..., Any]:
        """A callable of the op's inputs alone, with backend, attrs and context bound."""
        if self.xp_attr is not None:
            fn = getattr(xp, self.xp_attr)
            return functools.partial(fn, **attrs) if attrs else fn
        assert self.fn is not None
        head = (ctx, xp) if self.needs_ctx else (xp,)
        return functools.partial(self.fn, *head, **attrs)


_KERNELS: dict[OpDef, dict[str, KernelEntry]] = {}


def kernel(op: OpDef, backend: str = "any", needs_ctx: bool = False) -> Callable[[Callable], Callable]:
    """Register the decorated function as ``op``'s kernel for ``backend``."""

    def register(fn: Callable) -> Callable:
        per_op = _KERNELS.setdefault(op, {})
        if backend in per_op:
            raise InternalError(f"kernel for op '{op.name}' on backend '{backend}' registered twice")
        per_op[backend] = KernelEntry(fn, needs_ctx, None)
        return fn

    return register


def xp_kernel(op: OpDef, attr: str, backend: str = "any") -> None:
    """Register ``xp.<attr>`` (e.g. ``numpy.add``) itself as ``op``'s kernel: no wrapper call."""
    per_op = _KERNELS.setdefault(op, {})
    if backend in per_op:
        raise InternalError(f"kernel for op '{op.name}' on backend '{backend}' registered twice")
    per_op[backend] = KernelEntry(None, False, attr)


def get_kernel(op: OpDef, backend: str = "numpy") -> KernelEntry:
    """The kernel of ``op`` for ``backend`` ("numpy" or "cupy"), falling back to the generic one.

    Raises:
        FailedPreconditionError: when the op has no kernel for that backend.
    """
    _load_all()
    per_op = _KERNELS.get(op, {})
    entry = per_op.get(backend) or per_op.get("any")
    if entry is None:
        raise FailedPreconditionError(f"op '{op.name}' has no kernel for backend '{backend}'")
    return entry


def has_kernel(op: OpDef, backend: str = "numpy") -> bool:
    """True when `get_kernel` would find a kernel."""
    _load_all()
    per_op = _KERNELS.get(op, {})
    return backend in per_op or "any" in per_op


def array_module(backend: str) -> Any:
    """numpy for "numpy", cupy for "cupy" (imported only here, on first use)."""
    if backend == "numpy":
        return np
    import cupy  # noqa: PLC0415  (optional dependency, imported lazily)

    return cupy


def special(xp: Any) -> Any:
    """scipy.special for numpy arrays, cupyx.scipy.special for cupy arrays (erf and friends)."""
    if xp is np:
        import scipy.special

        return scipy.special
    import cupyx.scipy.special

    return cupyx.scipy.special


_loaded = False


def _load_all() -> None:
    """Import the kernel module of every op family (each registers its kernels), once."""
    global _loaded
    if _loaded:
        return
    import importlib

    from ..graph.ops import FAMILIES

    for family in FAMILIES:
        importlib.import_module(f"{__package__}.{family}")
    _loaded = True


# --------------------------------------------------------------------------- checks deferred by a capture
_deferred = threading.local()


@contextlib.contextmanager
def deferred_checks():
    """While a CUDA graph is captured on this thread: kernels do not read device values back to
    check them (a capture cannot sync); `defer_check` collects ``(array, check)`` pairs instead,
    which the capture's owner runs on the inputs before each launch (engine/cuda_graphs.py)."""
    _deferred.checks = []
    try:
        yield _deferred.checks
    finally:
        _deferred.checks = None


def defer_check(array: Any, check: Callable[[Any], None]) -> bool:
    """True when a capture collects ``check(array)`` for later (the kernel skips it now)."""
    checks = getattr(_deferred, "checks", None)
    if checks is None:
        return False
    checks.append((array, check))
    return True
