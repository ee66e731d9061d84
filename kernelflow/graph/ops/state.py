"""State and structure ops: placeholder, constant, variable, assign family, group, identity.

Contents: placeholder, constant, variable, read_variable, assign, assign_add, assign_sub,
group, no_op, identity, stop_gradient, print_tensor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Graph, Tensor, Variable, current_graph, weak_dtype
from ..registry import REQUIRED, define_op
from ..shapes import canonical_dtype, format_shape, normalize_shape

__all__ = ["assign", "assign_add", "assign_sub", "group", "no_op", "identity", "stop_gradient", "print_tensor",
           "read_variable"]

_no_value = dict(shape_rule=lambda *a, **k: (), dtype_rule=lambda *a, **k: None, differentiable=False)


def _attr_shape(*avals: Any, shape: tuple, **attrs: Any) -> tuple:
    return tuple(shape)


def _attr_dtype(*avals: Any, dtype: str, **attrs: Any) -> str:
    return canonical_dtype(dtype)


def _value_shape(*avals: Any, value: Any, **attrs: Any) -> tuple:
    if not isinstance(value, np.ndarray):
        raise InvalidArgumentError(f"value must be an ndarray; got {type(value).__name__}")
    return value.shape


def _value_dtype(*avals: Any, value: Any, **attrs: Any) -> str:
    return canonical_dtype(value.dtype)


placeholder_op = define_op("placeholder", (), attrs={"shape": REQUIRED, "dtype": REQUIRED},
                           shape_rule=_attr_shape, dtype_rule=_attr_dtype, differentiable=False,
                           doc="a value fed at run time")
constant_op = define_op("constant", (), attrs={"value": REQUIRED}, shape_rule=_value_shape,
                        dtype_rule=_value_dtype, differentiable=False, alias=True, doc="a constant array")
variable_op = define_op("variable", (), attrs={"initial": REQUIRED, "trainable": True},
                        shape_rule=lambda initial, **k: _value_shape(value=initial),
                        dtype_rule=lambda initial, **k: _value_dtype(value=initial),
                        differentiable=False, stateful=True, alias=True,
                        doc="a persistent value; reads see the value from before the run's updates")


def _var_input(op: str, ref: Any) -> Variable:
    if not isinstance(ref, Variable):
        raise InvalidArgumentError(f"{op}: the first input must be a kf.Variable; got {ref!r}")
    return ref


def _assign_shape(ref: Any, value: Any, **attrs: Any) -> tuple:
    if len(value.shape) > len(ref.shape) or any(
        v is not None and r is not None and v not in (1, r) for v, r in zip(value.shape[::-1], ref.shape[::-1])
    ):
        raise ShapeError(f"assign: value shape {format_shape(value.shape)} does not fit variable shape "
                         f"{format_shape(ref.shape)}")
    if value.dtype != ref.dtype:
        raise InvalidArgumentError(f"assign: value dtype {value.dtype} differs from variable dtype {ref.dtype}; "
                                   "cast it with kf.cast")
    return ref.shape


_assign = dict(shape_rule=_assign_shape, differentiable=False, stateful=True, alias=True, mutates=(0,))
assign_op = define_op("assign", ("ref", "value"), **_assign, doc="ref[...] = value")
assign_add_op = define_op("assign_add", ("ref", "value"), **_assign, doc="ref += value")
assign_sub_op = define_op("assign_sub", ("ref", "value"), **_assign, doc="ref -= value")
read_variable_op = define_op("read_variable", ("ref",), shape_rule=lambda r: r.shape, differentiable=False,
                             stateful=True, alias=True, doc="a read ordered by control dependencies")
group_op = define_op("group", ("*inputs",), **_no_value, doc="runs its inputs; yields nothing")
no_op_op = define_op("no_op", (), **_no_value, doc="does nothing; a target for control dependencies")
identity_op = define_op("identity", ("x",), shape_rule=lambda x: x.shape, vjp=lambda g, out, x: (g,), alias=True)
stop_gradient_op = define_op("stop_gradient", ("x",), shape_rule=lambda x: x.shape,
                             vjp=lambda g, out, x: (None,), alias=True, doc="identity with no gradient")
print_op = define_op("print", ("x",), attrs={"message": "", "summarize": 6}, shape_rule=lambda x, **k: x.shape,
                     vjp=lambda g, out, x, **k: (g,), stateful=True, alias=True,
                     doc="logs a value on the runtime's log and passes it on")


# --------------------------------------------------------------------------- builders
def placeholder(graph: Graph, shape: Any, dtype: Any = "float32", name: str | None = None) -> Tensor:
    """A value fed at run time. ``shape`` may hold None for dims of any size."""
    shape = normalize_shape(shape, what="placeholder shape")
    attrs = {"shape": shape, "dtype": canonical_dtype(dtype, "placeholder")}
    return graph.add_node(placeholder_op, (), attrs, name or "placeholder")


def _to_array(value: Any, dtype: Any, what: str) -> np.ndarray:
    if isinstance(value, Tensor):
        raise InvalidArgumentError(f"{what}: expected a concrete value; got tensor '{value.name}'")
    arr = np.asarray(value) if dtype is None else np.asarray(value, dtype=canonical_dtype(dtype, what))
    if arr.dtype == np.float64 and dtype is None and not isinstance(value, np.ndarray) \
            and np.ndim(value) == 0:
        arr = arr.astype(np.float32)  # a bare Python float defaults to float32, as in TF
    canonical_dtype(arr.dtype, what)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def constant(graph: Graph, value: Any, name: str | None = None, dtype: Any = None) -> Tensor:
    """A constant node holding ``value``."""
    return graph.add_node(constant_op, (), {"value": _to_array(value, dtype, "constant")}, name or "const")


def variable(graph: Graph, initial: Any, name: str | None = None, trainable: bool = True,
             dtype: Any = None) -> Variable:
    """A variable initialised at once from an array, a scalar or a `kf.init` initialiser."""
    if callable(initial) and not isinstance(initial, np.ndarray):
        initial = initial(dtype=dtype) if dtype is not None else initial()
    arr = _to_array(initial, dtype, "variable").copy()
    t = graph.add_node(variable_op, (), {"initial": arr, "trainable": bool(trainable)}, name or "Variable")
    assert isinstance(t, Variable)
    return t


def _value_for(ref: Variable, value: Any) -> Any:
    if isinstance(value, Tensor):
        return value
    return ref.graph.constant(value, dtype=ref.dtype if np.ndim(value) == 0 or weak_dtype(value, ref.dtype)
                              else ref.dtype)


def assign(ref: Variable, value: Any, name: str | None = None) -> Tensor:
    """An op setting ``ref`` to ``value`` when run; yields the new value."""
    ref = _var_input("assign", ref)
    return assign_op.bind(ref, _value_for(ref, value), name=name)


def assign_add(ref: Variable, value: Any, name: str | None = None) -> Tensor:
    """An op adding ``value`` to ``ref`` when run; yields the new value."""
    ref = _var_input("assign_add", ref)
    return assign_add_op.bind(ref, _value_for(ref, value), name=name)


def assign_sub(ref: Variable, value: Any, name: str | None = None) -> Tensor:
    """An op subtracting ``value`` from ``ref`` when run; yields the new value."""
    ref = _var_input("assign_sub", ref)
    return assign_sub_op.bind(ref, _value_for(ref, value), name=name)


def read_variable(ref: Variable, name: str | None = None) -> Tensor:
    """A read of ``ref`` ordered after the current control dependencies."""
    return read_variable_op.bind(_var_input("read_variable", ref), name=name)


def group(*ops: Any, name: str | None = None) -> Tensor:
    """One op that runs all of ``ops`` (tensors or nested lists of them)."""
    flat: list[Tensor] = []

    def walk(x: Any) -> None:
        if isinstance(x, Tensor):
            flat.append(x)
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)
        elif x is not None:
            raise InvalidArgumentError(f"group: expected tensors; got {type(x).__name__}")

    walk(ops)
    graph = current_graph(flat)
    return graph.add_node(group_op, tuple(flat), {}, name or "group")


def no_op(graph: Graph, name: str | None = None) -> Tensor:
    """An op that does nothing (useful with control dependencies)."""
    return graph.add_node(no_op_op, (), {}, name or "no_op")


def identity(x: Tensor, name: str | None = None) -> Tensor:
    """``x`` unchanged (a new node; useful under control dependencies)."""
    return identity_op.bind(x, name=name)


def stop_gradient(x: Tensor, name: str | None = None) -> Tensor:
    """``x`` unchanged, but no gradient flows through it."""
    return stop_gradient_op.bind(x, name=name)


def print_tensor(x: Tensor, message: str = "", summarize: int = 6, name: str | None = None) -> Tensor:
    """``x`` unchanged; logs ``message`` and the value on the runtime's log when run."""
    return print_op.bind(x, message=str(message), summarize=int(summarize), name=name)
