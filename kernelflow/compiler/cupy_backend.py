"""The GPU backend: a fused `Program` becomes a CuPy ``ElementwiseKernel`` (or ``ReductionKernel``).

The source text is generated here without CuPy (unit-tested on machines with no GPU); CuPy
is imported only when a kernel is first built, on a GPU node. CuPy caches the compiled
binaries on disk itself (``~/.cupy/kernel_cache``).

Contents: elementwise_source, reduction_source, CupyFusedKernel.
"""

from __future__ import annotations

import logging
from typing import Any

from .exprs import cu_const, cu_instr
from .fusion import Program

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


def elementwise_source(program: Program) -> dict[str, str]:
    """``ElementwiseKernel`` arguments: in_params, out_params, operation, name."""
    lines, res = _lines(program)
    return {"in_params": _in_params(program), "out_params": f"{_TYPES[program.out_dtype]} y",
            "operation": "\n".join(lines + [f"y = {res};"]), "name": f"kf_fused_{program.digest()}"}


def reduction_source(program: Program) -> dict[str, str]:
    """``ReductionKernel`` arguments (sum in double, divided by the count for a mean)."""
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
    """

    fallbacks: list[tuple[str, str]] = []

    def __init__(self, program: Program):
        self.program = program
        self._kernel: Any = None
        self._unfused = False
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
