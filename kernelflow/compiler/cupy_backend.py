"""The GPU backend: a fused `Program` becomes a CuPy ``ElementwiseKernel`` (or ``ReductionKernel``).

The source text is generated here without CuPy (unit-tested on machines with no GPU); CuPy
is imported only when a kernel is first built, on a GPU node. CuPy caches the compiled
binaries on disk itself (``~/.cupy/kernel_cache``).

A group of optimiser updates (compiler/updates.py) becomes one ``RawKernel`` over all its
variables (`update_source`).

Contents: elementwise_source, reduction_source, CupyFusedKernel, update_source, update_launch, update_constants,
CupyUpdateGroup.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .exprs import cu_const, cu_instr
from .fusion import Program
from .multi_update import Formula, UpdateGroupKernel, formula, input_scalars, scalar_values
from .updates import UpdateGroup

log = logging.getLogger("kernelflow.compiler")

_TYPES = {"float32": "float32", "float64": "float64", "bool": "bool"}
_CTYPES = {"float32": "float", "float64": "double"}


def _lines(program: Program) -> tuple[list[str], str]:
    lines = []
    for j, ins in enumerate(program.instrs):
        args = []
        for kind, v in ins.args:
            if kind == "in":
                args.append(f"x{v}")
            elif kind == "t":
                args.append(f"t{v}")
            else:
                args.append(cu_const(v, ins.arg_dtypes[len(args)]))
        lines += cu_instr(ins, args, f"t{j}")
    return lines, f"t{len(program.instrs) - 1}"


def _used(program: Program) -> list[int]:
    """The inputs the program's instructions read, in order."""
    return sorted({a[1] for ins in program.instrs for a in ins.args if a[0] == "in"})


def _in_params(program: Program, unused: bool = True) -> str:
    """The kernel's input parameters; inputs no instruction reads are ``raw`` (elementwise) or left
    out (``unused=False``: a ReductionKernel with a raw parameter cannot reduce a non-leading axis,
    CuPy's "Illegal conditions")."""
    used = set(_used(program))
    return ", ".join(f"{_TYPES.get(d, 'float64')} x{k}" if k in used else f"raw {_TYPES.get(d, 'float64')} x{k}"
                     for k, d in enumerate(program.in_dtypes) if unused or k in used)


def _single(program: Program) -> None:
    if program.outputs:
        raise NotImplementedError("a fused group with several outputs has no CuPy kernel (CPU plans only)")


def elementwise_source(program: Program) -> dict[str, str]:
    """``ElementwiseKernel`` arguments: in_params, out_params, operation, name."""
    _single(program)
    lines, res = _lines(program)
    return {"in_params": _in_params(program), "out_params": f"{_TYPES[program.out_dtype]} y",
            "operation": "\n".join(lines + [f"y = {res};"]), "name": f"kf_fused_{program.digest()}"}


def reduction_source(program: Program) -> dict[str, str]:
    """``ReductionKernel`` arguments (sum in double, divided by the count for a mean)."""
    _single(program)
    lines, res = _lines(program)
    # The map expression of a ReductionKernel is one expression: wrap the statements in a lambda.
    body = " ".join(lines)
    post = "a / _in_ind.size() * _out_ind.size()" if program.reduce[0].name == "mean" else "a"
    return {"in_params": _in_params(program, unused=False), "out_params": f"{_TYPES[program.out_dtype]} y",
            "map_expr": f"[&]() -> double {{ {body} return (double){res}; }}()", "reduce_expr": "a + b",
            "post_map_expr": f"y = ({_CTYPES[program.out_dtype]})({post})", "identity": "0",
            "name": f"kf_fused_red_{program.digest()}", "reduce_type": "double"}


class CupyFusedKernel:
    """The callable of one fused node on a GPU (built on first call).

    A kernel CuPy cannot build or launch (an NVRTC error in the generated source, say) logs a
    warning, is listed in ``CupyFusedKernel.fallbacks`` (name, error) and runs its group's ops
    unfused from then on: slower, never wrong. The GPU tests assert the list stays empty.

    A group with several outputs (``program.outputs``) has no CuPy kernel: the compiler forms
    such groups for CPU plans only, and one that reaches a GPU runs its ops unfused.
    """

    fallbacks: list[tuple[str, str]] = []

    def __init__(self, program: Program):
        self.program = program
        self._kernel: Any = None
        self._unfused = bool(program.outputs)
        self._checked = False

    def __call__(self, xp: Any, *ins: Any) -> Any:
        if self._unfused:
            return self.program.run_unfused(*ins, xp=xp)
        if self._checked:
            return self._launch(xp, *ins)
        try:
            out = self._launch(xp, *ins)
        except Exception as e:  # the first build and launch only; the unfused ops raise the user's errors
            name = f"kf_fused_{self.program.digest()}"
            log.warning("compiler: CuPy kernel %s failed (%s: %s); its group runs unfused", name,
                        type(e).__name__, e)
            CupyFusedKernel.fallbacks.append((name, f"{type(e).__name__}: {e}"))
            self._unfused = True
            return self.program.run_unfused(*ins, xp=xp)
        self._checked = True
        return out

    def _launch(self, xp: Any, *ins: Any) -> Any:
        prog = self.program
        if self._kernel is None:
            if prog.reduce is None:
                self._kernel = xp.ElementwiseKernel(**elementwise_source(prog))
            else:
                self._kernel = xp.ReductionKernel(**reduction_source(prog))
        if prog.reduce is None:
            return self._kernel(*ins)
        from .numba_backend import _reduced_axes

        shape = xp.broadcast(*[a for k, a in enumerate(ins) if k != prog.like_input]).shape
        axes, out_shape = _reduced_axes(prog, shape, ins[prog.like_input] if prog.like_input is not None else None)
        used = _used(prog)
        if not axes or not used:
            return prog.run_unfused(*ins, xp=xp)
        out = self._kernel(*[xp.broadcast_to(ins[k], shape) for k in used], axis=axes)
        return out.reshape(out_shape)


# --------------------------------------------------------------------------- multi-variable updates
UPDATE_THREADS = 256
UPDATE_OPTIONS = ("--fmad=false",)
"""No fused multiply-add: each operation rounds on its own, as the per-variable CuPy ufuncs do."""


def update_source(f: Formula, dtype: str, name: str, inputs: dict[str, str], n_inputs: int) -> str:
    """CUDA C++ of a multi-variable update: one grid-stride loop over all members' elements.

    ``sptrs`` holds each member's state array addresses (the formula's arrays but the gradient, in
    order), ``gptrs`` each member's gradient address, ``offsets`` the running element counts
    (``offsets[i]`` is member i's first element, ``offsets[n]`` the total); an element finds its
    member by binary search over ``offsets``. The group's ``n_inputs`` scalar inputs come as
    device pointers (``s0_p``, ...: read once per thread, never copied to the host); the
    formula's scalars in ``inputs`` (`multi_update.input_scalars`) are computed from them, the
    others are constants passed by value, then ``wd`` when an input expression uses it.
    """
    ctype = _CTYPES[dtype]
    states = f.arrays[:-1]
    consts = [s for s in f.scalars if s not in inputs]
    params = [f"const T* __restrict__ s{j}_p" for j in range(n_inputs)] + [f"T {s}" for s in consts]
    if any("wd" in e for e in inputs.values()):
        params.append("T wd")
    lines = [
        f"typedef {ctype} T;",
        f'extern "C" __global__ void {name}(const unsigned long long* sptrs, const unsigned long long* gptrs, '
        f"const long long* offsets, int n, {', '.join(params)}) {{",
    ]
    lines += [f"  const T s{j} = *s{j}_p;" for j in range(n_inputs)]
    lines += [f"  const T {s} = {inputs[s]};" for s in f.scalars if s in inputs]
    lines += [
        "  const long long total = offsets[n];",
        "  const long long stride = (long long)gridDim.x * blockDim.x;",
        "  for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {",
        "    int lo = 0, hi = n - 1;",
        "    while (lo < hi) {",
        "      int mid = (lo + hi + 1) >> 1;",
        "      if (offsets[mid] <= idx) lo = mid; else hi = mid - 1;",
        "    }",
        "    const long long k = idx - offsets[lo];",
    ]
    lines += [f"    T* {arr} = (T*)sptrs[(long long)lo * {len(states)} + {j}];" for j, arr in enumerate(states)]
    lines.append(f"    const T* {f.arrays[-1]} = (const T*)gptrs[lo];")
    lines += [f"    {'T ' if decl else ''}{t} = {e};" for decl, t, e in f.body]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def update_launch(sizes: list[int]) -> tuple[np.ndarray, int]:
    """(offsets, blocks) of a launch over members of ``sizes`` elements."""
    offsets = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    return offsets, max(1, min(-(-total // UPDATE_THREADS), 8192))


def update_constants(op: Any, attrs: dict, t: Any, n_inputs: int) -> tuple:
    """The values (numpy scalars of dtype ``t``) of `update_source`'s by-value parameters, in order."""
    f = formula(op, attrs)
    inputs = input_scalars(op, attrs)
    values = scalar_values(op, attrs, t.type, [np.zeros((), t)] * n_inputs)
    out = tuple(v for s, v in zip(f.scalars, values) if s not in inputs)
    if any("wd" in e for e in inputs.values()):
        out += (t.type(attrs["weight_decay"]),)
    return out


_TABLES_MAX = 8  # gradient pointer tables kept per launch for eager runs (those a capture used stay)


def _capturing(stream: Any) -> bool:
    """Whether ``stream`` is being captured into a CUDA graph (False where CuPy cannot tell)."""
    return bool(getattr(stream, "is_capturing", lambda: False)())


class _DeviceTable:
    """A small host array (pointers, offsets) and its copy on the device, made on first use.

    Outside a stream capture it is copied once, from pageable memory. During a capture (which
    cannot copy from pageable memory) the copy is captured from a pinned buffer kept here, so
    each launch of the graph repeats it; a table first made in a capture that was then abandoned
    is copied again by the next eager use.
    """

    __slots__ = ("host", "dev", "pinned", "filled")

    def __init__(self, host: np.ndarray):
        self.host = host
        self.dev: Any = None
        self.pinned: Any = None
        self.filled = False  # copied outside a capture

    def get(self, xp: Any) -> Any:
        stream = xp.cuda.get_current_stream()
        capturing = _capturing(stream)
        if self.dev is None:
            self.dev = xp.empty(self.host.shape, self.host.dtype)
        elif self.filled:
            return self.dev
        if capturing:
            if self.pinned is None:
                import cupyx

                self.pinned = cupyx.empty_pinned(self.host.shape, self.host.dtype)
                self.pinned[...] = self.host
            self.dev.set(self.pinned, stream=stream)
        else:
            self.dev.set(self.host, stream=stream)
            self.filled = True
        return self.dev


class _GpuLaunch:
    """What a GPU launch works out once for its members' storage: the state pointer table and the
    offsets, and the gradient pointer tables by gradient addresses."""

    def __init__(self, cols: list):
        n = len(cols[0])
        offsets, self.blocks = update_launch([a.size for a in cols[0]])
        self.n = np.int32(n)
        self.sptrs = _DeviceTable(np.array([c[i].data.ptr for i in range(n) for c in cols[:-1]], np.uint64))
        self.offsets = _DeviceTable(offsets)
        self.tables: dict[tuple, _DeviceTable] = {}  # gradient addresses -> table, for eager runs
        self.captured: dict[tuple, _DeviceTable] = {}  # those a capture used: a graph reads them, they stay

    def grad_table(self, xp: Any, grads: tuple) -> Any:
        key = tuple(g.data.ptr for g in grads)
        table = self.tables.get(key) or self.captured.get(key)
        if table is None:
            table = _DeviceTable(np.array(key, np.uint64))
            if len(self.tables) >= _TABLES_MAX:
                self.tables.clear()
            self.tables[key] = table
        if key not in self.captured and _capturing(xp.cuda.get_current_stream()):
            self.captured[key] = table
        return table.get(xp)


class CupyUpdateGroup(UpdateGroupKernel):
    """The GPU kernel of a group node: one ``RawKernel`` launch over every member it takes.

    Nothing in a step waits for the device or copies to the host: the learning rates are read by
    the kernel from device memory; the pointer tables are uploaded once per storage (and per
    gradient addresses), so a step captured in a CUDA graph replays it as is.
    """

    def __init__(self, group: UpdateGroup, member_entry: Any, xp: Any):
        super().__init__(group, member_entry, xp)
        self._kernels: dict[str, Any] = {}
        self._broken = False
        self.launches = 0

    def flat_state(self, storage: tuple) -> tuple | None:
        s0 = storage[0]
        if getattr(s0, "dtype", None) is None or s0.dtype.name not in _CTYPES:
            return None
        for arr in storage:
            if not (isinstance(arr, type(s0)) and arr.dtype == s0.dtype and arr.shape == s0.shape
                    and arr.flags.c_contiguous):
                return None
        return tuple(arr.reshape(-1) for arr in storage)

    def flat_grad(self, grad: Any, shape: tuple, dtype: Any) -> Any:
        if not isinstance(grad, self.xp.ndarray) or grad.shape != shape or grad.dtype != dtype:
            return None
        return self.xp.ascontiguousarray(grad).reshape(-1)

    def source(self, t: Any) -> str:
        """The kernel's CUDA source for dtype ``t``."""
        g = self.group
        return update_source(self.formula, t.name, self._name(t), input_scalars(g.op, g.attrs), g.n_scalars)

    def _name(self, t: Any) -> str:
        return f"kf_update_{self.group.op.name}_{t.name}"

    def launch(self, t: Any, cols: list, scalars_in: Sequence, memo: dict) -> bool:
        if self._broken:
            return False
        xp = self.xp
        kernel = self._kernels.get(t.name)
        if kernel is None:
            try:
                kernel = xp.RawKernel(self.source(t), self._name(t), options=UPDATE_OPTIONS)
                kernel.compile()
            except Exception as e:  # a compiler that refuses the source: the members run their own kernels
                log.warning("compiler: CuPy update kernel %s failed (%s: %s); its members run their own kernels",
                            self._name(t), type(e).__name__, e)
                self._broken = True
                return False
            self._kernels[t.name] = kernel
        g = self.group
        consts = self._consts.get(("gpu", t))
        if consts is None:
            consts = self._consts[("gpu", t)] = update_constants(g.op, g.attrs, t, g.n_scalars)
        plan = memo.get("gpu")
        if plan is None:
            plan = memo["gpu"] = _GpuLaunch(cols)
        gtable = plan.grad_table(xp, cols[-1])
        scalars = [s if isinstance(s, xp.ndarray) else xp.asarray(s) for s in scalars_in]
        kernel((plan.blocks,), (UPDATE_THREADS,),
               (plan.sptrs.get(xp), gtable, plan.offsets.get(xp), plan.n, *scalars, *consts))
        self.launches += 1
        return True
