"""The kernels of a multi-variable update node: per-element formulas, numba source, the CPU kernel.

Each grouped op (`updates.ELEMENTWISE`) has one per-element formula, written in the syntax
that Python and CUDA C++ share (``+ - * /``, ``sqrt``, ``a[k]``), and in the operation order
and dtype of its registered numpy kernel (kernels/training.py): a group's kernel gives bitwise
what the members' own kernels give, so a job resumed with the compiler on or off follows the
same trajectory. The CPU kernel is one numba call over all members: a loop over work items
``(member, start, stop)`` (one per member, or with ``$KERNELFLOW_COMPILE_THREADS`` > 1 chunks of
about equal size that ``prange`` spreads over the threads) reading each member's raveled arrays
out of tuples. The CUDA version is in cupy_backend.py.

Contents: Formula, formula, scalar_values, input_scalars, kernel_source, UpdateGroupKernel, CpuUpdateGroup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InternalError, kernel_error
from ..graph.ir import Tensor
from ..graph.ops import training as T
from .cpu_kernels import _FLOATS, PARALLEL_MIN, _Module
from .updates import UpdateGroup

CHUNK_MIN = 1 << 14
"""Smallest work item of the parallel variant."""

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
    if op is T.apply_rmsprop_op or op is T.apply_centered_rmsprop_op:
        centered = op is T.apply_centered_rmsprop_op
        mom = bool(attrs["momentum"])
        body = [(True, "gk", "grad[k]"), (True, "sk", "ms[k] * rho + (gk * gk) * c"), (False, "ms[k]", "sk")]
        if centered:  # numpy: tmp = mg * mg; tmp = ms - tmp; tmp += eps
            body += [(True, "gm", "mg[k] * rho + gk * c"), (False, "mg[k]", "gm"),
                     (True, "dk", "(sk - gm * gm) + eps")]
        else:
            body.append((True, "dk", "sk + eps"))
        body.append((True, "uk", "(gk / sqrt(dk)) * lr"))
        if mom:  # numpy: mom *= momentum; mom += step; var -= mom (the slot is left alone without momentum)
            body += [(True, "pk", "mom[k] * mo + uk"), (False, "mom[k]", "pk"), (False, "var[k]", "var[k] - pk")]
        else:
            body.append((False, "var[k]", "var[k] - uk"))
        arrays = ("var", "mg", "ms", "mom", "grad") if centered else ("var", "ms", "mom", "grad")
        return Formula(arrays, ("lr", "rho", "c", "eps") + (("mo",) if mom else ()), tuple(body))
    if op is T.apply_adagrad_op:  # numpy: accum += g*g; tmp = sqrt(accum) + eps; var -= (g / tmp) * lr
        return Formula(("var", "accum", "grad"), ("lr", "eps"), (
            (True, "gk", "grad[k]"), (True, "ak", "accum[k] + gk * gk"), (False, "accum[k]", "ak"),
            (False, "var[k]", "var[k] - (gk / (sqrt(ak) + eps)) * lr")))
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
    if op is T.apply_rmsprop_op or op is T.apply_centered_rmsprop_op:
        rho = attrs["rho"]
        out = (t(scalars[0]), t(rho), t(1.0 - rho), t(attrs["epsilon"]))
        return out + (t(attrs["momentum"]),) if attrs["momentum"] else out
    if op is T.apply_adagrad_op:
        return (t(scalars[0]), t(attrs["epsilon"]))
    b1, b2 = attrs["beta1"], attrs["beta2"]
    moments = (t(b1), t(1.0 - b1), t(b2), t(1.0 - b2))
    if op is T.apply_adam_op:
        return (t(scalars[0]),) + moments + (t(attrs["epsilon"]),)
    lr, lr_t, eps_t = scalars
    out = (t(lr_t), t(eps_t)) + moments
    return out + (t(1 - lr * attrs["weight_decay"]),) if attrs["weight_decay"] else out


def input_scalars(op: Any, attrs: dict) -> dict[str, str]:
    """The formula's scalars that depend on the group's scalar inputs, each as an expression over
    those inputs' values (``s0``, ``s1``, ...) and the constant ``wd`` (the weight decay in the
    variables' dtype): the GPU kernel reads them from device memory, so a step never copies a
    learning rate to the host. The others are constants of the attrs (`scalar_values`)."""
    if op is T.apply_adamw_op:  # numpy: var *= 1 - lr * weight_decay (lr a 0-d array of the dtype)
        out = {"lr_t": "s1", "eps_t": "s2"}
        if attrs["weight_decay"]:
            out["decay"] = "1 - s0 * wd"
        return out
    return {"lr_t" if op is T.apply_adam_op else "lr": "s0"}


def kernel_source(f: Formula, parallel: bool | str) -> str:
    """The numba module of formula ``f``: ``kernel(work, <array tuples>, <scalars>)`` (``parallel``:
    the flag, or a placeholder word for `cpu_kernels._Module` to replace)."""
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
        "        lo = work[w, 1]",
        "        hi = work[w, 2]",
    ]
    # Sliced views indexed from 0: with k from range(lo, hi) numba cannot prove k >= 0, checks for
    # negative indices on every access and the loop does not vectorise (7x slower).
    lines += [f"        {a} = {a}_all[i][lo:hi]" for a in f.arrays]
    lines.append("        for k in range(hi - lo):")
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


@dataclass
class _Prepared:
    """What a call works out from the variables' storage, kept while the storage stays the same."""

    storage: list  # every member's state arrays, in member order
    fast: list[int]  # members the kernel takes (given gradients of their shape and dtype)
    own: list[int]  # members that run their own kernels
    state_cols: list[tuple]  # per state array: the fast members' 1-D views
    shapes: list[tuple]  # the fast members' variable shapes
    t: Any  # their dtype
    memos: dict = field(default_factory=dict)  # members launched together (() = all fast) -> the backend's memo


class UpdateGroupKernel:
    """A group node's kernel: members the backend's kernel takes go in one call, others run their own.

    A call compares the members' storage with the last call's (the same arrays, step after step)
    and reuses what it worked out from them (and what the backend's launch worked out, in the
    memo it is given); only the gradients are checked each time. ``prepares`` counts the calls
    that found new storage.

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
        self._state_nodes = [m.inputs[j] for m in group.members for j in range(group.n_state)]
        self._prep: _Prepared | None = None
        self._consts: dict = {}
        self.prepares = 0

    # -- backend hooks
    def flat_state(self, storage: tuple) -> tuple | None:
        """The state arrays as 1-D views when the kernel takes them, else None."""
        raise NotImplementedError

    def flat_grad(self, grad: Any, shape: tuple, dtype: Any) -> Any:
        """The gradient as a 1-D array when it has ``shape`` and ``dtype`` (the variable's), else None."""
        raise NotImplementedError

    def launch(self, t: Any, cols: list, scalars_in: Sequence, memo: dict) -> bool:
        """Run the kernel over the fast members' 1-D arrays ``cols`` (one tuple per formula array)
        with the group's scalar inputs ``scalars_in`` (0-d arrays of dtype ``t`` on the node's
        device); ``memo`` holds what the backend worked out for these members' storage (kept
        while it stays the same). False: it did not run (not compiled yet)."""
        raise NotImplementedError

    # -- the call
    def __call__(self, ctx: Any, xp: Any, *ins: Any) -> Any:
        g = self.group
        n_state, w = g.n_state, g.width
        st = ctx.storage
        storage = [st(v) for v in self._state_nodes]
        p = self._prep
        if p is None or any(a is not b for a, b in zip(storage, p.storage)):
            p = self._prep = self._prepare(storage)
        own = p.own
        grads = []
        if p.fast:
            fg, t = self.flat_grad, p.t
            for k, shape in zip(p.fast, p.shapes):
                gr = fg(ins[k * w + n_state], shape, t)
                if gr is None:  # a gradient the kernel does not take: `_split` sorts the members out
                    break
                grads.append(gr)
        if len(grads) == len(p.fast) and grads:
            memo = p.memos.get(())
            if memo is None:
                memo = p.memos[()] = {}
            if not self._launch(p.t, p.state_cols + [tuple(grads)], ins, memo):
                own = list(range(len(g.members)))
        elif p.fast:
            own = self._split(p, ins)
        if own:
            self._run_own(ctx, ins, own)
        return storage[len(storage) - n_state]

    def _launch(self, t: Any, cols: list, ins: Sequence, memo: dict) -> bool:
        scalars_in = ins[len(ins) - self.group.n_scalars:]
        if not all(getattr(s, "dtype", None) == t and getattr(s, "ndim", 1) == 0 for s in scalars_in):
            return False  # numpy would compute in the scalars' wider dtype: the members' own kernels do
        return self.launch(t, cols, scalars_in, memo)

    def _prepare(self, storage: list) -> _Prepared:
        self.prepares += 1
        n_state = self.group.n_state
        fast, own, t = [], [], None
        flats = []
        for k in range(len(self.group.members)):
            flat = self.flat_state(tuple(storage[k * n_state:(k + 1) * n_state]))
            if flat is None or t is not None and flat[0].dtype != t:
                own.append(k)
                continue
            t = flat[0].dtype
            fast.append(k)
            flats.append(flat)
        cols = [tuple(f[j] for f in flats) for j in range(n_state)]
        shapes = [storage[k * n_state].shape for k in fast]
        return _Prepared(storage, fast, own, cols, shapes, t)

    def _split(self, p: _Prepared, ins: Sequence) -> list[int]:
        """A call whose gradients some fast members' do not match: those run their own kernels."""
        g = self.group
        fast, own, grads = [], list(p.own), []
        for k, shape in zip(p.fast, p.shapes):
            gr = self.flat_grad(ins[k * g.width + g.n_state], shape, p.t)
            if gr is None:
                own.append(k)
            else:
                fast.append(k)
                grads.append(gr)
        if fast:
            pos = [p.fast.index(k) for k in fast]
            cols = [tuple(c[i] for i in pos) for c in p.state_cols] + [tuple(grads)]
            key = tuple(fast)
            memo = p.memos.get(key)
            if memo is None:  # (kept: a CUDA graph may read what a GPU launch put there)
                memo = p.memos[key] = {}
            if not self._launch(p.t, cols, ins, memo):
                own += fast
        return sorted(own)

    def host_scalars(self, t: Any, scalars_in: Sequence) -> tuple:
        """`scalar_values` (bitwise) from host scalar inputs; the constants of the attrs are worked out
        once per dtype."""
        g = self.group
        c = self._consts.get(t)
        if c is None:
            c = self._consts[t] = scalar_values(g.op, g.attrs, t.type, [np.zeros((), t)] * g.n_scalars)
        tt = t.type
        if g.op is T.apply_adamw_op:
            lr, lr_t, eps_t = scalars_in
            out = (tt(lr_t), tt(eps_t)) + c[2:6]
            wd = g.attrs["weight_decay"]
            return out + (tt(1 - lr * wd),) if wd else out
        return (tt(scalars_in[0]),) + c[1:]

    def _run_own(self, ctx: Any, ins: Sequence, own: list[int]) -> None:
        g = self.group
        if self._own is None or self._own[0] is not ctx:
            fns = []
            for m in g.members:
                entry = self.member_entry(m)
                fns.append(entry.bind(self.xp, m.attrs, _MemberContext(ctx, m) if entry.needs_ctx else None))
            self._own = (ctx, fns)
        fns = self._own[1]
        for k in own:
            try:
                fns[k](*g.member_inputs(ins, k))
            except Exception as e:
                m = g.members[k]
                raise kernel_error(m.name, m.op.name, m.source, e) from e


@dataclass
class _CpuLaunch:
    """What a CPU launch works out once for its members' storage."""

    total: int  # elements of all members
    serial: np.ndarray  # work items of the serial variant
    parallel: np.ndarray | None  # and of the parallel one (None: never used)


class CpuUpdateGroup(UpdateGroupKernel):
    """The CPU kernel of a group node: one numba call (a `cpu_kernels._Module` kernel; until it is
    compiled, or for members it does not take, the members' own kernels run).

    ``launch_plans`` counts the launches that worked out sizes and work items (once per storage);
    ``parallel_calls`` the calls that ran the parallel variant.

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
        self._mod = _Module(cache, threads, kernel_source(self.formula, _FLAG))
        self.launch_plans = 0
        self.parallel_calls = 0

    def flat_state(self, storage: tuple) -> tuple | None:
        s0 = storage[0]
        if not isinstance(s0, np.ndarray) or s0.dtype.type not in _FLOATS:
            return None
        for a in storage:
            if not (isinstance(a, np.ndarray) and a.dtype == s0.dtype and a.shape == s0.shape
                    and a.flags.c_contiguous and a.flags.aligned and a.flags.writeable):
                return None
        return tuple(a.reshape(-1) for a in storage)

    def flat_grad(self, grad: Any, shape: tuple, dtype: Any) -> Any:
        if grad.__class__ is not np.ndarray or grad.shape != shape or grad.dtype != dtype:
            return None
        flags = grad.flags
        if not flags.c_contiguous:
            grad = np.ascontiguousarray(grad)  # as the per-variable kernel: a copy when strided
        elif not flags.aligned:
            return None
        return grad.reshape(-1)

    def source(self, parallel: bool) -> tuple[str, str]:
        """(module text, cache key) of the serial or parallel variant."""
        return self._mod.source(_NAME, parallel)

    def work(self, sizes: tuple, parallel: bool) -> np.ndarray:
        """Work items ``(member, start, stop)``: whole members, or chunks of about equal size."""
        rows = []
        chunk = max(CHUNK_MIN, math.ceil(sum(sizes) / (4 * self.threads))) if parallel else 0
        for i, n in enumerate(sizes):
            step = chunk or max(n, 1)
            rows += [(i, lo, min(lo + step, n)) for lo in range(0, n, step)]
        return np.array(rows, np.int64).reshape(-1, 3)

    def launch(self, t: Any, cols: list, scalars_in: Sequence, memo: dict) -> bool:
        plan = memo.get("cpu")
        if plan is None:
            self.launch_plans += 1
            sizes = tuple(a.size for a in cols[0])
            total = sum(sizes)
            par = self.threads > 1 and total >= PARALLEL_MIN
            plan = memo["cpu"] = _CpuLaunch(total, self.work(sizes, False), self.work(sizes, True) if par else None)
        grads = cols[-1]
        if not all(a.flags.writeable for a in grads):  # one array type for the whole tuple
            cols[-1] = tuple(_readonly(a) for a in grads)
        mod = self._mod
        args = (plan.serial, *cols, *self.host_scalars(t, scalars_in))
        fn, src = mod.get(_NAME, args, plan.total)
        if fn is None:
            return False
        par = src is self.source(True)[0]
        if par:
            args = (plan.parallel,) + args[1:]
        try:
            fn(*args)
        except TypeError:  # types it was not compiled for (another member count or dtype): compile those
            mod.cache.recompile(src, args)
            fn = mod.cache.get(src, args)  # compiled now in mode "sync"; None while in the background
            if fn is None:
                return False
            fn(*args)
        self.parallel_calls += par
        return True


_NAME = "kernel"
_FLAG = "PARALLEL"  # `_Module` puts the variant's flag in its place


def _readonly(a: np.ndarray) -> np.ndarray:
    if not a.flags.writeable:
        return a
    v = a.view()
    v.flags.writeable = False
    return v
