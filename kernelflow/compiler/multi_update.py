"""The kernels of a multi-variable update node: per-element formulas, numba source, the CPU kernel.

Each grouped op (`updates.ELEMENTWISE`) has one per-element formula, written in the syntax
that Python and CUDA C++ share (``+ - * /``, ``sqrt``, ``a[k]``), and in the operation order
and dtype of its registered numpy kernel (kernels/training.py): a group's kernel gives bitwise
what the members' own kernels give, so a job resumed with the compiler on or off follows the
same trajectory. The CPU kernel is one numba call over all members: a loop over work items
``(member, start, stop)`` (one per member, or with ``$KERNELFLOW_COMPILE_THREADS`` > 1 chunks of
about equal size that ``prange`` spreads over the threads) reading each member's raveled arrays
out of tuples. The CUDA version is in cupy_backend.py.

Contents: Formula, formula, kernel_source, UpdateGroupKernel, CpuUpdateGroup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InternalError, InvalidArgumentError, KernelflowError
from ..graph.ir import Tensor
from ..graph.ops import training as T
from .numba_backend import digest
from .updates import UpdateGroup

PARALLEL_MIN = 1 << 15
"""Total elements from which the parallel variant runs (with more than one compile thread)."""

CHUNK_MIN = 1 << 14
"""Smallest work item of the parallel variant."""

_FLOATS = (np.float32, np.float64)


@dataclass(frozen=True)
class Formula:
    """One element's update.

    Attributes:
        arrays: the arrays of a member, in its op's input order: variable, slots, gradient.
        scalars: the kernel's scalar parameters, in order (see `scalar_values`).
        body: ``(declare, target, expression)`` statements; ``k`` is the element index.
    """

    arrays: tuple[str, ...]
    scalars: tuple[str, ...]
    body: tuple[tuple[bool, str, str], ...]

    def text(self) -> str:
        """The body as Python statements (one a line)."""
        return "\n".join(f"{t} = {e}" for _, t, e in self.body)


_ADAM_MOMENTS = (
    (True, "gk", "grad[k]"),
    (True, "mk", "m[k] * b1 + gk * c1"),
    (True, "vk", "v[k] * b2 + (gk * gk) * c2"),
    (False, "m[k]", "mk"),
    (False, "v[k]", "vk"),
)


def formula(op: Any, attrs: dict) -> Formula:
    """The per-element formula of update op ``op`` with ``attrs`` (its flags pick the statements)."""
    if op is T.apply_gradient_descent_op:
        if attrs["weight_decay"]:  # numpy: tmp = var * wd; tmp += grad; var -= tmp * lr
            return Formula(("var", "grad"), ("lr", "wd"), (
                (True, "gk", "var[k] * wd + grad[k]"), (False, "var[k]", "var[k] - gk * lr")))
        return Formula(("var", "grad"), ("lr",), ((False, "var[k]", "var[k] - grad[k] * lr"),))
    if op is T.apply_momentum_op:
        wd = bool(attrs["weight_decay"])
        step = "(ak * mom + gk) * lr" if attrs["nesterov"] else "ak * lr"
        return Formula(("var", "accum", "grad"), ("lr", "mom") + (("wd",) if wd else ()), (
            (True, "gk", "var[k] * wd + grad[k]" if wd else "grad[k]"),
            (True, "ak", "accum[k] * mom + gk"), (False, "accum[k]", "ak"), (False, "var[k]", f"var[k] - {step}")))
    if op is T.apply_adam_op:
        return Formula(("var", "m", "v", "grad"), ("lr_t", "b1", "c1", "b2", "c2", "eps"), _ADAM_MOMENTS + (
            (False, "var[k]", "var[k] - (mk / (sqrt(vk) + eps)) * lr_t"),))
    if op is T.apply_adamw_op:
        wd = bool(attrs["weight_decay"])  # numpy: var *= 1 - lr * wd first
        return Formula(("var", "m", "v", "grad"), ("lr_t", "eps_t", "b1", "c1", "b2", "c2") + (
            ("decay",) if wd else ()), ((True, "xk", "var[k] * decay" if wd else "var[k]"),) + _ADAM_MOMENTS + (
            (False, "var[k]", "xk - (mk / (sqrt(vk) + eps_t)) * lr_t"),))
    raise InternalError(f"multi-variable update: no formula for op '{op.name}'")


def scalar_values(op: Any, attrs: dict, t: Any, scalars: Sequence[Any]) -> tuple:
    """The kernel's scalar arguments in dtype ``t``, from the group's scalar inputs (0-d arrays of
    dtype ``t``) and attrs, each computed as the numpy kernel computes it."""
    if op is T.apply_gradient_descent_op:
        lr = t(scalars[0])
        return (lr, t(attrs["weight_decay"])) if attrs["weight_decay"] else (lr,)
    if op is T.apply_momentum_op:
        out = (t(scalars[0]), t(attrs["momentum"]))
        return out + (t(attrs["weight_decay"]),) if attrs["weight_decay"] else out
    b1, b2 = attrs["beta1"], attrs["beta2"]
    moments = (t(b1), t(1.0 - b1), t(b2), t(1.0 - b2))
    if op is T.apply_adam_op:
        return (t(scalars[0]),) + moments + (t(attrs["epsilon"]),)
    lr, lr_t, eps_t = scalars
    out = (t(lr_t), t(eps_t)) + moments
    return out + (t(1 - lr * attrs["weight_decay"]),) if attrs["weight_decay"] else out


def kernel_source(f: Formula, parallel: bool) -> str:
    """The numba module of formula ``f``: ``kernel(work, <array tuples>, <scalars>)``."""
    tuples = [f"{a}_all" for a in f.arrays]
    lines = [
        "# generated by kernelflow.compiler.multi_update; do not edit (rewritten when it differs)",
        "import numba",
        "from numba import prange",
        "from numpy import sqrt",
        "",
        "",
        f"@numba.njit(parallel={parallel}, cache=True, error_model='numpy', nogil=True)",
        f"def kernel(work, {', '.join(tuples + list(f.scalars))}):",
        "    for w in prange(work.shape[0]):",
        "        i = work[w, 0]",
    ]
    lines += [f"        {a} = {a}_all[i]" for a in f.arrays]
    lines.append("        for k in range(work[w, 1], work[w, 2]):")
    lines += [f"            {t} = {e}" for _, t, e in f.body]
    return "\n".join(lines) + "\n"


class _MemberContext:
    """A member's view of the group node's context: its own node, the same storage."""

    __slots__ = ("_ctx", "node")

    def __init__(self, ctx: Any, node: Tensor):
        self._ctx = ctx
        self.node = node

    def storage(self, var: Tensor) -> Any:
        return self._ctx.storage(var)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


def _member_error(member: Tensor, e: Exception) -> KernelflowError:
    """What a failing member raises: the error naming the member (as the executor names a node)."""
    if isinstance(e, KernelflowError):
        e.node = e.node or member.name
        e.source = e.source or member.source
        return e
    cls = InvalidArgumentError if isinstance(e, (ValueError, IndexError, TypeError)) else InternalError
    return cls(f"{member.name} ({member.op.name}) failed at run time: {type(e).__name__}: {e}",
               node=member.name, source=member.source)


class UpdateGroupKernel:
    """A group node's kernel: members the backend's kernel takes go in one call, others run their own.

    Args:
        group: what the node updates.
        member_entry: the kernel (a `KernelEntry`) a member runs on its own.
        xp: the array module (numpy or cupy).
    """

    def __init__(self, group: UpdateGroup, member_entry: Callable[[Tensor], Any], xp: Any):
        self.group = group
        self.formula = formula(group.op, group.attrs)
        self.member_entry = member_entry
        self.xp = xp
        self._own: tuple[Any, list] | None = None  # (ctx, the members' own bound kernels)
        self._views: list[Any] = [None] * len(group.members)  # per member: (storage, flat views or None)

    # -- backend hooks
    def flat_state(self, storage: tuple) -> tuple | None:
        """The state arrays as 1-D views when the kernel takes them, else None."""
        raise NotImplementedError

    def flat_grad(self, grad: Any, like: Any) -> Any:
        """The gradient as a 1-D array matching ``like`` (the variable), else None."""
        raise NotImplementedError

    def launch(self, t: Any, cols: list[list], scalars: tuple) -> bool:
        """Run the kernel over the members' arrays ``cols`` (one list per formula array); False: not run."""
        raise NotImplementedError

    # -- the call
    def __call__(self, ctx: Any, xp: Any, *ins: Any) -> Any:
        g = self.group
        n_state, w = g.n_state, g.width
        members = g.members
        scalars_in = ins[len(ins) - g.n_scalars:]
        cols: list[list] = [[] for _ in range(w)]
        fast: list[int] = []
        own: list[int] = []
        t = None
        for k, m in enumerate(members):
            inputs = m.inputs
            storage = tuple(ctx.storage(inputs[j]) for j in range(n_state))
            cached = self._views[k]
            if cached is None or any(a is not b for a, b in zip(cached[0], storage)):
                cached = self._views[k] = (storage, self.flat_state(storage))
            flat = cached[1]
            grad = self.flat_grad(ins[k * w + n_state], storage[0]) if flat is not None else None
            if grad is None or t is not None and storage[0].dtype != t:
                own.append(k)
                continue
            t = storage[0].dtype
            fast.append(k)
            for j in range(n_state):
                cols[j].append(flat[j])
            cols[n_state].append(grad)
        if fast and not all(getattr(s, "dtype", None) == t and getattr(s, "ndim", 1) == 0 for s in scalars_in):
            own, fast = sorted(own + fast), []
        if fast:
            scalars = scalar_values(g.op, g.attrs, t.type, scalars_in)
            if not self.launch(t, cols, scalars):
                own, fast = sorted(own + fast), []
        if own:
            fns = self._own_kernels(ctx)
            for k in own:
                try:
                    fns[k](*g.member_inputs(ins, k))
                except Exception as e:
                    raise _member_error(members[k], e) from e
        return ctx.storage(members[-1].inputs[0])

    def _own_kernels(self, ctx: Any) -> list:
        if self._own is None or self._own[0] is not ctx:
            fns = []
            for m in self.group.members:
                entry = self.member_entry(m)
                fns.append(entry.bind(self.xp, m.attrs, _MemberContext(ctx, m) if entry.needs_ctx else None))
            self._own = (ctx, fns)
        return self._own[1]


class CpuUpdateGroup(UpdateGroupKernel):
    """The CPU kernel of a group node: one numba call (a `KernelCache` kernel; until it is compiled,
    or for members it does not take, the members' own kernels run).

    Args:
        group: what the node updates.
        member_entry: a member's own kernel.
        cache: the compiler's `KernelCache`.
        threads: CPU threads the kernel may use.
    """

    def __init__(self, group: UpdateGroup, member_entry: Callable[[Tensor], Any], cache: Any, threads: int):
        super().__init__(group, member_entry, np)
        self.cache = cache
        self.threads = threads
        self._sources: dict[bool, tuple[str, str]] = {}
        self._work: dict[tuple, np.ndarray] = {}

    def flat_state(self, storage: tuple) -> tuple | None:
        s0 = storage[0]
        if not isinstance(s0, np.ndarray) or s0.dtype.type not in _FLOATS:
            return None
        for a in storage:
            if not (isinstance(a, np.ndarray) and a.dtype == s0.dtype and a.shape == s0.shape
                    and a.flags.c_contiguous and a.flags.aligned and a.flags.writeable):
                return None
        return tuple(a.reshape(-1) for a in storage)

    def flat_grad(self, grad: Any, like: Any) -> Any:
        if not isinstance(grad, np.ndarray) or grad.dtype != like.dtype or grad.shape != like.shape:
            return None
        grad = np.ascontiguousarray(grad).reshape(-1)  # as the per-variable kernel: a copy when strided
        return grad if grad.flags.aligned else None

    def source(self, parallel: bool) -> tuple[str, str]:
        """(module text, cache key) of the serial or parallel variant."""
        v = self._sources.get(parallel)
        if v is None:
            src = kernel_source(self.formula, parallel)
            v = self._sources[parallel] = (src, digest(src))
        return v

    def work(self, sizes: tuple, parallel: bool) -> np.ndarray:
        """Work items ``(member, start, stop)``: whole members, or chunks of about equal size."""
        key = (sizes, parallel)
        items = self._work.get(key)
        if items is None:
            rows = []
            chunk = max(CHUNK_MIN, math.ceil(sum(sizes) / (4 * self.threads))) if parallel else 0
            for i, n in enumerate(sizes):
                step = chunk or max(n, 1)
                rows += [(i, lo, min(lo + step, n)) for lo in range(0, n, step)]
            items = np.array(rows, np.int64).reshape(-1, 3)
            if len(self._work) >= 16:
                self._work.clear()
            self._work[key] = items
        return items

    def launch(self, t: Any, cols: list[list], scalars: tuple) -> bool:
        grads = cols[-1]
        if not all(a.flags.writeable for a in grads):  # one array type for the whole tuple
            cols[-1] = grads = [_readonly(a) for a in grads]
        sizes = tuple(a.size for a in grads)
        parallel = self.threads > 1 and sum(sizes) >= PARALLEL_MIN
        args = (self.work(sizes, parallel), *[tuple(c) for c in cols], *scalars)
        for p in ((True, False) if parallel else (False,)):
            src, key = self.source(p)
            fn = self.cache.get(src, args, key)
            if fn is None:
                continue
            if p != parallel:
                args = (self.work(sizes, p),) + args[1:]
            try:
                fn(*args)
            except TypeError:  # types it was not compiled for (another member count or dtype): compile those
                self.cache.recompile(src, args)
                fn = self.cache.get(src, args, key)  # compiled now in mode "sync"; None while in the background
                if fn is None:
                    return False
                fn(*args)
            return True
        return False


def _readonly(a: np.ndarray) -> np.ndarray:
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v
