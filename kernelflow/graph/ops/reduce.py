"""Reductions over axes with ``keepdims``: sum, mean, max, min, prod, var, std, argmax,
argmin, logsumexp, any, all; and ``sum_to``, the un-broadcasting reduction of autodiff.

The builders ``sum``, ``max``, ``min``, ``any`` and ``all`` shadow the Python builtins in this
module; use ``builtins.<name>`` for those.
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import OpDef, define_op
from ..shapes import ALL_DTYPES, FLOATING, NUMERIC, format_shape, normalize_axes

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
    kwargs.setdefault("dtype_rule", dtype_rule)
    return define_op(name, ("x",), attrs={"axis": None, "keepdims": False},
                     shape_rule=lambda x, axis, keepdims: _reduced_shape(name, x.shape, axis, keepdims),
                     vjp=vjp, **kwargs)


def _keep(g: Tensor, x: Tensor, axis: Any, keepdims: bool) -> Tensor:
    """``g`` with the reduced axes put back as size-1 dims, so it broadcasts against ``x``."""
    if keepdims:
        return g
    from .movement import expand_dims

    for a in normalize_axes("reduce", axis, x.ndim):
        g = expand_dims(g, a)
    return g


def _inv_count(x: Tensor, axis: Any) -> Tensor:
    """1 / (number of reduced elements), as a tensor of x's dtype (dims may be unknown statically).

    Computed in float32 (float64 for float64 x) and cast: in float16 the count itself overflows
    past 65504 elements, though its reciprocal is representable.
    """
    from .elementwise import cast
    from .movement import size

    wide = "float64" if x.dtype == "float64" else "float32"
    kept = size(sum(x, axis=axis, keepdims=True), dtype=wide)
    return cast(kept / size(x, dtype=wide), x.dtype)


def _extremum_vjp(g: Tensor, out: Tensor, x: Tensor, axis: Any, keepdims: bool) -> tuple:
    # Ties share the gradient equally, as in TF.
    from .elementwise import cast, equal

    mask = cast(equal(x, _keep(out, x, axis, keepdims)), x.dtype)
    return (_keep(g, x, axis, keepdims) * mask / sum(mask, axis=axis, keepdims=True),)


def _spread(g: Tensor, x: Tensor) -> Tensor:
    from .movement import broadcast_like

    return broadcast_like(g, x)


def _sum_dtype(x: Any, **attrs: Any) -> str:
    if x.dtype not in ALL_DTYPES:
        raise InvalidArgumentError(f"sum: expected a dtype in {ALL_DTYPES}; got {x.dtype}")
    return "int64" if x.dtype == "bool" else x.dtype  # numpy counts the Trues


sum_op = reduce_op("sum", dtype_rule=_sum_dtype, vjp=lambda g, out, x, axis, keepdims: (
    _spread(_keep(g, x, axis, keepdims), x),))
mean_op = reduce_op("mean", FLOATING, vjp=lambda g, out, x, axis, keepdims: (
    _spread(_keep(g, x, axis, keepdims) * _inv_count(x, axis), x),))
max_op = reduce_op("max", vjp=_extremum_vjp)
min_op = reduce_op("min", vjp=_extremum_vjp)
prod_op = reduce_op("prod", vjp=lambda g, out, x, axis, keepdims: (
    _keep(g * out, x, axis, keepdims) / x,))  # undefined where x == 0, as in TF's simple rule


def _arg_reduce(name: str) -> OpDef:
    def shape_rule(x: Any, axis: Any, keepdims: bool) -> tuple:
        if axis is not None and (not isinstance(axis, (int, np.integer)) or isinstance(axis, bool)):
            raise InvalidArgumentError(f"{name}: axis must be an int or None; got {axis!r}")
        return _reduced_shape(name, x.shape, axis, keepdims)

    return define_op(name, ("x",), attrs={"axis": None, "keepdims": False}, shape_rule=shape_rule,
                     dtype_rule=lambda x, **a: "int64", differentiable=False)


argmax_op = _arg_reduce("argmax")
argmin_op = _arg_reduce("argmin")
any_op = reduce_op("any", ("bool",))
all_op = reduce_op("all", ("bool",))
count_nonzero_op = reduce_op("count_nonzero", ALL_DTYPES, out_dtype="int64")


def _logsumexp_vjp(g: Tensor, out: Tensor, x: Tensor, axis: Any, keepdims: bool) -> tuple:
    from .elementwise import exp

    return (_keep(g, x, axis, keepdims) * exp(x - _keep(out, x, axis, keepdims)),)


# A primitive for numerical stability: the kernel subtracts the max before exp.
logsumexp_op = reduce_op("logsumexp", FLOATING, vjp=_logsumexp_vjp)


def _sum_to_shape(x: Any, like: Any) -> tuple:
    lead = len(x.shape) - len(like.shape)
    bad = lead < 0 or builtins.any(t is not None and t != 1 and d is not None and d != t
                          for d, t in zip(x.shape[lead:], like.shape))
    if bad:
        raise ShapeError(f"sum_to: target shape must broadcast to the input shape; got "
                         f"x.shape={format_shape(x.shape)}, like.shape={format_shape(like.shape)}")
    return like.shape


def _sum_to_vjp(g: Tensor, out: Tensor, x: Tensor, like: Tensor) -> tuple:
    from .movement import broadcast_like

    return (broadcast_like(g, x), None)


# Sums ``x`` down to the runtime shape of ``like``: the un-broadcasting step of autodiff.
# alias: the kernel returns x itself when the shapes already agree at run time.
sum_to_op = define_op("sum_to", ("x", "like"), shape_rule=_sum_to_shape, dtype_rule=lambda x, like: x.dtype,
                      vjp=_sum_to_vjp, alias=True)


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
    return argmax_op.bind(x, axis=axis, keepdims=bool(keepdims), name=name)


def argmin(x: Tensor, axis: int | None = None, keepdims: bool = False, name: str | None = None) -> Tensor:
    """Index of the smallest value along ``axis`` (flattened when None), int64."""
    return argmin_op.bind(x, axis=axis, keepdims=bool(keepdims), name=name)


def var(x: Tensor, axis: Any = None, keepdims: bool = False, ddof: int = 0, name: str | None = None) -> Tensor:
    """Variance along ``axis`` (population variance unless ``ddof``)."""
    centered = x - mean(x, axis=axis, keepdims=True)
    sq = mean(centered * centered, axis=axis, keepdims=keepdims)
    if ddof:
        from .elementwise import cast
        from .movement import size

        # n / (n - ddof) in a wide float: float16 counts overflow (see _inv_count).
        wide = "float64" if sq.dtype == "float64" else "float32"
        n = size(x, dtype=wide) / size(sum(x, axis=axis, keepdims=True), dtype=wide)
        sq = sq * cast(n / (n - ddof), sq.dtype)
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
