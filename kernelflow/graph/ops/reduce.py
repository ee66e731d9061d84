"""Reductions over axes with ``keepdims``: sum, mean, max, min, prod, var, std, argmax,
argmin, logsumexp, any, all; and ``sum_to``, the un-broadcasting reduction of autodiff.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError
from ..ir import Tensor
from ..registry import OpDef, define_op
from ..shapes import ALL_DTYPES, FLOATING, NUMERIC, normalize_axes, normalize_axis

__all__ = ["sum", "mean", "max", "min", "prod", "var", "std", "argmax", "argmin", "logsumexp", "any", "all",
           "sum_to", "count_nonzero"]


def _reduced_shape(op: str, shape: tuple, axis: Any, keepdims: bool) -> tuple:
    axes = normalize_axes(op, axis, len(shape))
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def reduce_op(name: str, dtypes: tuple[str, ...] = NUMERIC, vjp: Any = None, out_dtype: str | None = None,
              **kwargs: Any) -> OpDef:
    """Define a reduction with attrs ``axis`` (int, tuple or None = all) and ``keepdims``."""

    def dtype_rule(x: Any, **attrs: Any) -> str:
        if x.dtype not in dtypes:
            raise InvalidArgumentError(f"{name}: expected a dtype in {dtypes}; got {x.dtype}")
        return out_dtype or x.dtype

    if vjp is None:
        kwargs.setdefault("differentiable", False)
    return define_op(name, ("x",), attrs={"axis": None, "keepdims": False},
                     shape_rule=lambda x, axis, keepdims: _reduced_shape(name, x.shape, axis, keepdims),
                     dtype_rule=dtype_rule, vjp=vjp, **kwargs)


def _keep(g: Tensor, x: Tensor, axis: Any, keepdims: bool) -> Tensor:
    """``g`` with the reduced axes put back as size-1 dims, so it broadcasts against ``x``."""
    if keepdims:
        return g
    from .movement import expand_dims

    for a in normalize_axes("reduce", axis, x.ndim):
        g = expand_dims(g, a)
    return g


def _count(x: Tensor, axis: Any) -> Tensor:
    """Number of reduced elements, as a tensor of x's dtype (dims may be unknown statically)."""
    from .movement import size

    total = size(x, dtype=x.dtype)
    kept = size(sum(x, axis=axis, keepdims=True), dtype=x.dtype)
    return total / kept


def _extremum_vjp(g: Tensor, out: Tensor, x: Tensor, axis: Any, keepdims: bool) -> tuple:
    # Ties share the gradient equally, as in TF.
    from .elementwise import cast, equal

    mask = cast(equal(x, _keep(out, x, axis, keepdims)), x.dtype)
    return (_keep(g, x, axis, keepdims) * mask / sum(mask, axis=axis, keepdims=True),)


def _spread(g: Tensor, x: Tensor) -> Tensor:
    from .movement import broadcast_like

    return broadcast_like(g, x)


sum_op = reduce_op("sum", vjp=lambda g, out, x, axis, keepdims: (_spread(_keep(g, x, axis, keepdims), x),))
mean_op = reduce_op("mean", FLOATING, vjp=lambda g, out, x, axis, keepdims: (
    _spread(_keep(g, x, axis, keepdims) / _count(x, axis), x),))
max_op = reduce_op("max", vjp=_extremum_vjp)
min_op = reduce_op("min", vjp=_extremum_vjp)
prod_op = reduce_op("prod", vjp=lambda g, out, x, axis, keepdims: (
    _keep(g * out, x, axis, keepdims) / x,))  # undefined where x == 0, as in TF's simple rule
argmax_op = define_op("argmax", ("x",), attrs={"axis": None, "keepdims": False},
                      shape_rule=lambda x, axis, keepdims: _reduced_shape("argmax", x.shape, axis, keepdims),
                      dtype_rule=lambda x, **a: "int64", differentiable=False)
argmin_op = define_op("argmin", ("x",), attrs={"axis": None, "keepdims": False},
                      shape_rule=lambda x, axis, keepdims: _reduced_shape("argmin", x.shape, axis, keepdims),
                      dtype_rule=lambda x, **a: "int64", differentiable=False)
any_op = reduce_op("any", ("bool",))
all_op = reduce_op("all", ("bool",))
count_nonzero_op = reduce_op("count_nonzero", ALL_DTYPES, out_dtype="int64")


def _logsumexp_vjp(g: Tensor, out: Tensor, x: Tensor, axis: Any, keepdims: bool) -> tuple:
    from .elementwise import exp

    return (_keep(g, x, axis, keepdims) * exp(x - _keep(out, x, axis, keepdims)),)


# A primitive for numerical stability: the kernel subtracts the max before exp.
logsumexp_op = reduce_op("logsumexp", FLOATING, vjp=_logsumexp_vjp)


def _sum_to_shape(x: Any, like: Any) -> tuple:
    if len(like.shape) > len(x.shape):
        raise InvalidArgumentError(f"sum_to: target rank {len(like.shape)} exceeds input rank {len(x.shape)}")
    return like.shape


def _sum_to_vjp(g: Tensor, out: Tensor, x: Tensor, like: Tensor) -> tuple:
    from .movement import broadcast_like

    return (broadcast_like(g, x), None)


# Sums ``x`` down to the runtime shape of ``like``: the un-broadcasting step of autodiff.
sum_to_op = define_op("sum_to", ("x", "like"), shape_rule=_sum_to_shape, dtype_rule=lambda x, like: x.dtype,
                      vjp=_sum_to_vjp)


# --------------------------------------------------------------------------- builders
def _reducer(op: OpDef):
    def build(x: Any, axis: Any = None, keepdims: bool = False, name: str | None = None) -> Tensor:
        if isinstance(axis, list):
            axis = tuple(axis)
        return op.bind(x, axis=axis, keepdims=bool(keepdims), name=name)

    build.__name__ = op.name
    build.__doc__ = f"``{op.name}`` over ``axis`` (None: all axes), numpy's semantics."
    return build


sum, mean, max, min, prod, logsumexp, any, all, count_nonzero = map(
    _reducer, (sum_op, mean_op, max_op, min_op, prod_op, logsumexp_op, any_op, all_op, count_nonzero_op))


def argmax(x: Tensor, axis: int | None = None, keepdims: bool = False, name: str | None = None) -> Tensor:
    """Index of the largest value along ``axis`` (flattened when None), int64."""
    if axis is not None:
        normalize_axis("argmax", axis, x.ndim)
    return argmax_op.bind(x, axis=axis, keepdims=bool(keepdims), name=name)


def argmin(x: Tensor, axis: int | None = None, keepdims: bool = False, name: str | None = None) -> Tensor:
    """Index of the smallest value along ``axis`` (flattened when None), int64."""
    if axis is not None:
        normalize_axis("argmin", axis, x.ndim)
    return argmin_op.bind(x, axis=axis, keepdims=bool(keepdims), name=name)


def var(x: Tensor, axis: Any = None, keepdims: bool = False, ddof: int = 0, name: str | None = None) -> Tensor:
    """Variance along ``axis`` (population variance unless ``ddof``)."""
    centered = x - mean(x, axis=axis, keepdims=True)
    sq = mean(centered * centered, axis=axis, keepdims=keepdims)
    if ddof:
        n = _count(x, axis)
        sq = sq * (n / (n - ddof))
    if name:
        from .state import identity

        sq = identity(sq, name=name)
    return sq


def std(x: Tensor, axis: Any = None, keepdims: bool = False, ddof: int = 0, name: str | None = None) -> Tensor:
    """Standard deviation along ``axis``."""
    from .elementwise import sqrt

    return sqrt(var(x, axis=axis, keepdims=keepdims, ddof=ddof), name=name)


def sum_to(x: Tensor, like: Tensor, name: str | None = None) -> Tensor:
    """``x`` summed over the axes that broadcasting added relative to ``like``."""
    return sum_to_op.bind(x, like, name=name)
