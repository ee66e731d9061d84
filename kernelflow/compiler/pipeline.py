"""The compiler the executor calls: runs the passes on a plan and hands out kernels for its nodes.

Contents: Compiler, OptimizedPlan, compile_mode_from_env, format_plan, fused_groups.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.ir import Tensor
from ..graph.ops.control_flow import tuple_get_op
from ..kernels.registry import KernelEntry, array_module, get_kernel
from .fusion import FusedOp, fuse
from .passes import rebuild, run_passes
from .updates import UpdateGroupOp, group_updates

MODES = ("on", "sync", "off")


def compile_mode_from_env(default: str = "on") -> str:
    """``$KERNELFLOW_COMPILE`` ("on": compile in the background, "sync": compile before running, "off")."""
    mode = os.environ.get("KERNELFLOW_COMPILE", default).strip().lower() or default
    mode = {"1": "on", "true": "on", "0": "off", "false": "off", "background": "on"}.get(mode, mode)
    if mode not in MODES:
        raise InvalidArgumentError(f"KERNELFLOW_COMPILE must be one of {MODES}; got {mode!r}")
    return mode


def switch_from_env(name: str, default: bool) -> bool:
    """A compiler switch: ``$name`` set to 1/true/on or 0/false/off (any case), else ``default``."""
    value = os.environ.get(name, "").strip().lower()
    return default if value not in ("1", "true", "on", "0", "false", "off") else value in ("1", "true", "on")


@dataclass
class OptimizedPlan:
    """What `Compiler.optimize` returns."""

    order: list[Tensor]
    fetches: list[Tensor]
    fused: list[Tensor] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)


class Compiler:
    """Passes and kernel backends shared by a runtime's plans.

    Args:
        mode: "on" (kernels compile on a background thread; runs meanwhile are unfused) or
            "sync" (a plan's kernels compile when it first runs them).
        cache_dir: where generated sources and numba's cache live (default: `default_cache_dir`).
        threads: CPU threads a kernel may use (default: ``$KERNELFLOW_COMPILE_THREADS``, else 1).
    """

    def __init__(self, mode: str = "on", cache_dir: str | None = None, threads: int | None = None):
        from .numba_backend import KernelCache, default_cache_dir, numba_available

        if mode not in ("on", "sync"):
            raise InvalidArgumentError(f"Compiler: mode must be 'on' or 'sync'; got {mode!r}")
        self.mode = mode
        self.has_numba = numba_available()
        self.cache = KernelCache(cache_dir or default_cache_dir(), background=mode == "on")
        env = os.environ.get("KERNELFLOW_COMPILE_THREADS", "")
        # Serial kernels unless asked: a parallel kernel is a fork-join of OpenMP threads per call,
        # and on a loaded machine (or beside BLAS's own threads) each join waits for a descheduled
        # thread; docs/benchmarks.md has the measurements.
        self.threads = threads or (int(env) if env.isdigit() and int(env) > 0 else 1)
        self._lock = threading.Lock()
        self._cpu: dict | None = None
        # One kernel for the optimiser updates of all variables; $KERNELFLOW_GROUP_UPDATES=0 turns it off.
        self.group_updates = switch_from_env("KERNELFLOW_GROUP_UPDATES", True)
        # GPU plans only with $KERNELFLOW_GPU_UPDATE_GROUPS=1: the CuPy multi-update kernel is not
        # yet proven on a GPU (docs/gpu.md); without it GPU updates keep their own kernels.
        self.gpu_update_groups = switch_from_env("KERNELFLOW_GPU_UPDATE_GROUPS", False)
        # Fused groups with several outputs (CPU); $KERNELFLOW_FUSE_MULTI_OUTPUT=0 turns them off.
        self.multi_output = switch_from_env("KERNELFLOW_FUSE_MULTI_OUTPUT", True)

    def optimize(self, order: list[Tensor], fed: set[int], fetches: Sequence[Tensor],
                 placement: Callable[[Tensor], Any]) -> OptimizedPlan:
        """Fold, CSE, drop no-ops and dead nodes, then fuse; fetched nodes map to their new nodes."""
        rw = run_passes(order, fed, fetches)

        def device_ok(n: Tensor) -> bool:
            backend = placement(n).backend
            return backend == "cupy" or backend == "numpy" and self.has_numba

        def multi_ok(n: Tensor) -> bool:
            # CPU only: the CuPy backend has no kernel with several outputs (GPU plans fuse as before).
            return self.multi_output and placement(n).backend == "numpy"

        new_order, fused_for, made = fuse(rw.order, fed, [rw.resolve(f) for f in fetches], device_ok,
                                          multi_ok=multi_ok)
        subst: dict[int, Tensor] = dict(fused_for)
        new_order = _settle(new_order, subst)  # consumers of a group's root now read the fused node

        def res(t: Tensor) -> Tensor:
            while id(t) in subst:
                t = subst[id(t)]
            return t

        out_fetches = [res(rw.resolve(f)) for f in fetches]
        grouped: list[Tensor] = []
        if self.group_updates:
            gpu = self.gpu_update_groups
            new_order, members_of, grouped = group_updates(new_order, fed, out_fetches, lambda n: (
                placement(n).backend == "numpy" and self.has_numba or gpu and placement(n).backend == "cupy"))
            if grouped:  # consumers of a member now depend on its group node
                subst.update(members_of)
                new_order = _settle(new_order, subst)
                out_fetches = [res(t) for t in out_fetches]
        stats = dict(rw.stats, fused_groups=len(made), fused_ops=sum(len(m.op.program.members) for m in made))
        extra = sum(len(m.op.program.outputs) for m in made)
        if extra:
            stats.update(multi_output_groups=sum(bool(m.op.program.outputs) for m in made), extra_outputs=extra)
        if grouped:
            stats.update(update_groups=len(grouped), grouped_updates=sum(len(m.op.group.members) for m in grouped))
        made = made + grouped
        return OptimizedPlan(new_order, out_fetches, made, stats)

    def kernel_for(self, node: Tensor, backend: str) -> KernelEntry:
        """The kernel of a plan node: a fused kernel for a fused node, one multi-variable kernel for
        an update group, else the registered one (or its compiled CPU version)."""
        op = node.op
        if isinstance(op, UpdateGroupOp):
            def member_entry(m: Tensor) -> KernelEntry:
                return self.kernel_for(m, backend)

            if backend == "numpy":
                from .multi_update import CpuUpdateGroup

                return KernelEntry(CpuUpdateGroup(op.group, member_entry, self.cache, self.threads), needs_ctx=True)
            from .cupy_backend import CupyUpdateGroup

            return KernelEntry(CupyUpdateGroup(op.group, member_entry, array_module(backend)), needs_ctx=True)
        if not isinstance(op, FusedOp):
            if backend == "numpy" and self.has_numba:
                entry = self._overrides().get(op)
                if entry is not None:
                    return entry
            return get_kernel(op, backend)
        program = op.program
        if backend == "numpy":
            from .numba_backend import FusedKernel

            fk = FusedKernel(program, self.cache, self.threads)
            return KernelEntry(lambda xp, *ins: fk(*ins))
        from .cupy_backend import CupyFusedKernel

        ck = CupyFusedKernel(program)
        return KernelEntry(lambda xp, *ins: ck(xp, *ins))

    def _overrides(self) -> dict:
        with self._lock:
            if self._cpu is None:
                from . import cpu_recurrent
                from .cpu_kernels import overrides

                self._cpu = {**overrides(self.cache, self.threads), **cpu_recurrent.overrides(self.cache)}
            return self._cpu

    def prewarm(self) -> None:
        """Import and warm numba on a daemon thread now (a server at start): a first run's kernels then only
        load from disk or compile."""
        if self.has_numba:
            from .numba_backend import prewarm_numba

            threading.Thread(target=prewarm_numba, name="kf-compiler-prewarm", daemon=True).start()

    def wait_idle(self, timeout_s: float = 120.0) -> bool:
        """Block until no kernel is compiling (benchmarks, tests); True when idle."""
        return self.cache.wait_idle(timeout_s)


def _settle(order: list[Tensor], subst: dict[int, Tensor]) -> list[Tensor]:
    """``order`` with each node whose inputs or control inputs were substituted rebuilt (``subst``:
    old id -> new node, extended with the rebuilt ones)."""
    if not subst:
        return order

    def res(t: Tensor) -> Tensor:
        while id(t) in subst:
            t = subst[id(t)]
        return t

    settled = []
    for n in order:
        ins = [res(i) for i in n.inputs]
        ctl = []
        for c in n.control_inputs:  # a group node stands in for several members: once
            c = res(c)
            if all(c is not x for x in ctl):
                ctl.append(c)
        if any(a is not b for a, b in zip(ins, n.inputs)) or len(ctl) != len(n.control_inputs) or any(
                a is not b for a, b in zip(ctl, n.control_inputs)):
            new = rebuild(n, ins, ctl, op=n.op, attrs=n.attrs)
            subst[id(n)] = new
            n = new
        settled.append(n)
    return settled


def format_plan(order: Sequence[Tensor], fed: set[int], stats: dict | None = None) -> str:
    """The plan as text, one node a line, fused groups with their members (as XLA's HLO dumps)."""
    lines = []
    for n in order:
        ins = ", ".join(i.name for i in n.inputs)
        if n.op is tuple_get_op and isinstance(n.inputs[0].op, FusedOp):
            continue  # an output of the fused node above: its line lists them
        if id(n) in fed:
            lines.append(f"{n.name} = feed : {n.aval}")
            continue
        if isinstance(n.op, FusedOp):
            prog = n.op.program
            shown = ", ".join(str(p) for p in n.aval.parts) if n.aval.parts else str(n.aval)
            lines.append(f"{n.name} = fused[{' '.join(m.op.name for m in prog.members)}]({ins}) : {shown}")
            out_of = {j: k + 1 for k, j in enumerate(prog.outputs)}
            for j, m in enumerate(prog.members):
                mark = f"  [output {out_of[j]}]" if j in out_of else ""
                lines.append(f"    | {m.name} = {m.op.name}({', '.join(i.name for i in m.inputs)}){mark}")
            continue
        if isinstance(n.op, UpdateGroupOp):
            grp = n.op.group
            lines.append(f"{n.name} = update_group[{grp.op.name} x{len(grp.members)}] : {n.aval}")
            for m in grp.members:
                ctl = f" after {', '.join(c.name for c in m.control_inputs)}" if m.control_inputs else ""
                lines.append(f"    | {m.name} = {m.op.name}({', '.join(i.name for i in m.inputs)}){ctl}")
            continue
        if n.op.name == "constant":
            v = np.asarray(n.attrs["value"])
            shown = repr(v.item()) if v.size == 1 else f"<{v.size} values>"
            lines.append(f"{n.name} = constant {shown} : {n.aval}")
            continue
        ctl = f" after {', '.join(c.name for c in n.control_inputs)}" if n.control_inputs else ""
        lines.append(f"{n.name} = {n.op.name}({ins}){ctl} : {n.aval}")
    if stats:
        lines.append("# " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return "\n".join(lines)


def fused_groups(order: Sequence[Tensor]) -> list[dict]:
    """The fused nodes of a plan, in plan order: ``{"name": the fused node (its root's name, or for an
    update group its last member's), "members": [node names], "ops": [op names], "outputs": [node
    names]}``, members in the order they compute (an update group's members in plan order);
    ``outputs``: the members whose values the node hands on (a fused group's root, then any other
    member read outside the group or fetched; every member of an update group)."""
    out = []
    for n in order:
        if isinstance(n.op, FusedOp):
            members = n.op.program.members
            outputs = [members[-1], *[members[j] for j in n.op.program.outputs]]
        elif isinstance(n.op, UpdateGroupOp):
            members = outputs = n.op.group.members
        else:
            continue
        out.append({"name": n.name, "members": [m.name for m in members], "ops": [m.op.name for m in members],
                    "outputs": [m.name for m in outputs]})
    return out
