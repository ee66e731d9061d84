"""Per-element code of each fusible op, in Python for numba and in CUDA C++ for CuPy.

Every instruction computes in its node's dtype, as the unfused numpy kernel does: operands
of an arithmetic op are converted to the result dtype first (numpy's type promotion picks
the loop of that dtype), comparisons compare the operands as they are, and every result is
converted to the node's dtype. NaN propagates through maximum/minimum/relu as in numpy.

Contents: py_instr, cu_instr, py_const, cu_const.
"""

from __future__ import annotations

import math
from typing import Any

from ..graph.ops import elementwise as E
from .fusion import Instr

_PY_UNARY = {E.exp_op: "np.exp({0})", E.log_op: "np.log({0})", E.log1p_op: "np.log1p({0})",
             E.sqrt_op: "np.sqrt({0})", E.sin_op: "np.sin({0})", E.cos_op: "np.cos({0})",
             E.tanh_op: "np.tanh({0})", E.abs_op: "np.abs({0})", E.negative_op: "-{0}",
             E.square_op: "{0} * {0}", E.isfinite_op: "np.isfinite({0})", E.logical_not_op: "not {0}"}
_PY_BINARY = {E.add_op: "{0} + {1}", E.subtract_op: "{0} - {1}", E.multiply_op: "{0} * {1}",
              E.divide_op: "{0} / {1}", E.pow_op: "{0} ** {1}"}
_CMP = {E.equal_op: "==", E.not_equal_op: "!=", E.less_op: "<", E.less_equal_op: "<=", E.greater_op: ">",
        E.greater_equal_op: ">="}
_CU_UNARY = {E.exp_op: "exp({0})", E.log_op: "log({0})", E.log1p_op: "log1p({0})", E.sqrt_op: "sqrt({0})",
             E.sin_op: "sin({0})", E.cos_op: "cos({0})", E.tanh_op: "tanh({0})", E.abs_op: "fabs({0})",
             E.negative_op: "-{0}", E.square_op: "{0} * {0}", E.isfinite_op: "isfinite({0})",
             E.logical_not_op: "!{0}"}
_CU_TYPES = {"float32": "float", "float64": "double", "bool": "bool"}


def py_const(value: Any, dtype: str) -> str:
    """A typed numba literal of ``value``."""
    if dtype == "bool":
        return "True" if value else "False"
    v = float(value)
    if math.isnan(v):
        text = "np.nan"
    elif math.isinf(v):
        text = "np.inf" if v > 0 else "-np.inf"
    else:
        text = repr(v)
    return f"np.{dtype}({text})"


def _py_cast(expr: str, src: str, dst: str) -> str:
    if src == dst:
        return expr
    if dst == "bool":
        return f"({expr} != 0)"
    return f"np.{dst}({expr})"


def py_instr(ins: Instr, args: list[str], out: str) -> list[str]:
    """Statements computing ``ins`` from operand expressions ``args`` into variable ``out``."""
    op, dt = ins.op, ins.dtype
    one, zero = py_const(1, dt), py_const(0, dt)
    a = [_py_cast(x, s, dt) if op not in _CMP and op is not E.where_op and op is not E.cast_op
         and op is not E.relu_grad_op else x for x, s in zip(args, ins.arg_dtypes)]
    if op in _PY_UNARY:
        body = _PY_UNARY[op].format(*a)
    elif op in _PY_BINARY:
        body = _PY_BINARY[op].format(*a)
    elif op in _CMP:
        body = f"{args[0]} {_CMP[op]} {args[1]}"
    elif op is E.logical_and_op:
        body = f"{args[0]} and {args[1]}"
    elif op is E.logical_or_op:
        body = f"{args[0]} or {args[1]}"
    elif op is E.rsqrt_op:
        body = f"{one} / np.sqrt({a[0]})"
    elif op is E.sigmoid_op:
        return [f"{out}_e = np.exp(-np.abs({a[0]}))",
                f"{out} = {one} / ({one} + {out}_e) if {a[0]} >= {zero} else {out}_e / ({one} + {out}_e)"]
    elif op is E.relu_op:
        body = f"{a[0]} if ({a[0]} > {zero} or {a[0]} != {a[0]}) else {zero}"
    elif op is E.relu_grad_op:
        body = f"{_py_cast(args[0], ins.arg_dtypes[0], dt)} * ({one} if {args[1]} > 0 else {zero})"
    elif op in (E.maximum_op, E.minimum_op):
        cmp = ">=" if op is E.maximum_op else "<="
        x, y = a
        body = f"{x} if {x} != {x} else ({y} if {y} != {y} else ({x} if {x} {cmp} {y} else {y}))"
    elif op is E.where_op:
        yes, no = _py_cast(args[1], ins.arg_dtypes[1], dt), _py_cast(args[2], ins.arg_dtypes[2], dt)
        body = f"{yes} if {args[0]} else {no}"
    elif op is E.cast_op:
        body = _py_cast(args[0], ins.arg_dtypes[0], dt)
    else:
        raise NotImplementedError(op.name)
    if dt != "bool" and op not in _CMP:
        body = f"np.{dt}({body})"
    return [f"{out} = {body}"]


def cu_const(value: Any, dtype: str) -> str:
    """A typed CUDA literal of ``value``."""
    if dtype == "bool":
        return "true" if value else "false"
    v = float(value)
    if math.isnan(v):
        return f"(({_CU_TYPES[dtype]})NAN)"
    if math.isinf(v):
        return f"(({_CU_TYPES[dtype]}){'' if v > 0 else '-'}INFINITY)"
    return f"(({_CU_TYPES[dtype]}){v!r})"


def cu_instr(ins: Instr, args: list[str], out: str) -> list[str]:
    """CUDA statements computing ``ins`` into a new local ``out``."""
    op, dt = ins.op, ins.dtype
    ct = _CU_TYPES[dt]
    one, zero = cu_const(1, dt), cu_const(0, dt)
    a = [f"(({ct}){x})" if s != dt and op not in _CMP and op is not E.where_op else x
         for x, s in zip(args, ins.arg_dtypes)]
    if op in _CU_UNARY:
        body = _CU_UNARY[op].format(*a)
    elif op in _PY_BINARY and op is not E.pow_op:
        body = _PY_BINARY[op].format(*a)
    elif op is E.pow_op:
        body = f"pow({a[0]}, {a[1]})"
    elif op in _CMP:
        body = f"{args[0]} {_CMP[op]} {args[1]}"
    elif op is E.logical_and_op:
        body = f"{args[0]} && {args[1]}"
    elif op is E.logical_or_op:
        body = f"{args[0]} || {args[1]}"
    elif op is E.rsqrt_op:
        body = f"{one} / sqrt({a[0]})"
    elif op is E.sigmoid_op:
        return [f"{ct} {out}_e = exp(-fabs({a[0]}));",
                f"{ct} {out} = {a[0]} >= {zero} ? {one} / ({one} + {out}_e) : {out}_e / ({one} + {out}_e);"]
    elif op is E.relu_op:
        body = f"({a[0]} > {zero} || isnan({a[0]})) ? {a[0]} : {zero}"
    elif op is E.relu_grad_op:
        body = f"{a[0]} * ({args[1]} > 0 ? {one} : {zero})"
    elif op in (E.maximum_op, E.minimum_op):
        cmp = ">=" if op is E.maximum_op else "<="
        x, y = a
        body = f"isnan({x}) ? {x} : (isnan({y}) ? {y} : ({x} {cmp} {y} ? {x} : {y}))"
    elif op is E.where_op:
        body = f"{args[0]} ? (({ct}){args[1]}) : (({ct}){args[2]})"
    elif op is E.cast_op:
        body = f"({args[0]} != 0)" if dt == "bool" else f"(({ct}){args[0]})"
    else:
        raise NotImplementedError(op.name)
    return [f"{ct} {out} = {body};"]
