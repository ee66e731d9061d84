"""Kernels of the reductions (same order as graph/ops/reduce.py)."""

from __future__ import annotations

from ..graph.ops import reduce as R
from .registry import kernel


def _axis(axis):
    return tuple(axis) if isinstance(axis, (list, tuple)) else axis


@kernel(R.sum_op)
def sum_kernel(xp, x, axis, keepdims):
    if x.dtype == xp.float16:  # accumulate in float32: float16 partial sums lose digits fast
        return xp.sum(x, axis=_axis(axis), keepdims=keepdims, dtype=xp.float32).astype(xp.float16)
    # Integers keep their dtype (numpy would widen int8 to int64); bool counts the Trues.
    dtype = xp.int64 if x.dtype == xp.bool_ else x.dtype
    return xp.sum(x, axis=_axis(axis), keepdims=keepdims, dtype=dtype)


@kernel(R.mean_op)
def mean_kernel(xp, x, axis, keepdims):
    if x.dtype == xp.float16:  # as in sum_kernel
        return xp.mean(x, axis=_axis(axis), keepdims=keepdims, dtype=xp.float32).astype(xp.float16)
    return xp.mean(x, axis=_axis(axis), keepdims=keepdims, dtype=x.dtype)


@kernel(R.max_op)
def max_kernel(xp, x, axis, keepdims):
    return xp.max(x, axis=_axis(axis), keepdims=keepdims)


@kernel(R.min_op)
def min_kernel(xp, x, axis, keepdims):
    return xp.min(x, axis=_axis(axis), keepdims=keepdims)


@kernel(R.prod_op)
def prod_kernel(xp, x, axis, keepdims):
    return xp.prod(x, axis=_axis(axis), keepdims=keepdims, dtype=x.dtype)


@kernel(R.argmax_op)
def argmax_kernel(xp, x, axis, keepdims):
    return xp.argmax(x, axis=axis, keepdims=keepdims).astype(xp.int64, copy=False)


@kernel(R.argmin_op)
def argmin_kernel(xp, x, axis, keepdims):
    return xp.argmin(x, axis=axis, keepdims=keepdims).astype(xp.int64, copy=False)


@kernel(R.any_op)
def any_kernel(xp, x, axis, keepdims):
    return xp.any(x, axis=_axis(axis), keepdims=keepdims)


@kernel(R.all_op)
def all_kernel(xp, x, axis, keepdims):
    return xp.all(x, axis=_axis(axis), keepdims=keepdims)


@kernel(R.count_nonzero_op)
def count_nonzero_kernel(xp, x, axis, keepdims):
    # A sum rather than xp.count_nonzero: cupy's count_nonzero has no keepdims.
    return xp.sum(x != 0, axis=_axis(axis), keepdims=keepdims, dtype=xp.int64)


@kernel(R.logsumexp_op)
def logsumexp_kernel(xp, x, axis, keepdims):
    axis = _axis(axis)
    m = xp.max(x, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)  # all -inf rows give -inf, not NaN
    s = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
    return s if keepdims else xp.squeeze(s, axis=axis if axis is not None else tuple(range(x.ndim)))


@kernel(R.sum_to_op)
def sum_to_kernel(xp, x, like):
    shape = like.shape
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, d in enumerate(shape) if d == 1 and x.shape[i + lead] != 1)
    out = xp.sum(x, axis=axes, keepdims=True, dtype=x.dtype)
    return out.reshape(shape)
