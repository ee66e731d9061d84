"""Kernels of the indexing ops (same order as graph/ops/indexing.py)."""

from __future__ import annotations

import functools

from ..graph.ops import indexing as I
from .registry import kernel


@functools.lru_cache(maxsize=512)
def _py_index(index: tuple) -> tuple:
    # The trailing Ellipsis makes an all-int index return a 0-d view, not a numpy scalar.
    return tuple(slice(*e) if isinstance(e, tuple) else e for e in index) + (Ellipsis,)


@kernel(I.strided_slice_op)
def strided_slice_kernel(xp, x, index):
    return x[_py_index(index)]


@kernel(I.strided_slice_grad_op)
def strided_slice_grad_kernel(xp, g, like, index):
    out = xp.zeros(like.shape, dtype=g.dtype)
    out[_py_index(index)] = g
    return out


@kernel(I.take_op)
def take_kernel(xp, x, indices, axis):
    return xp.take(x, indices, axis=axis)


@kernel(I.scatter_add_op)
def scatter_add_kernel(xp, updates, indices, like, axis):
    out = xp.zeros(like.shape, dtype=updates.dtype)
    axis %= like.ndim
    # add.at indexes the first axis: move ``axis`` of out, and the index dims of updates, to the front.
    k = indices.ndim
    xp.add.at(xp.moveaxis(out, axis, 0), indices,
              xp.moveaxis(updates, tuple(range(axis, axis + k)), tuple(range(k))))
    return out


@kernel(I.one_hot_op)
def one_hot_kernel(xp, indices, depth, dtype, on_value, off_value):
    hot = xp.expand_dims(indices, -1) == xp.arange(depth, dtype=indices.dtype)
    # (fills, not host copies: a CUDA graph may hold the kernels)
    return xp.where(hot, xp.full((), on_value, dtype=dtype), xp.full((), off_value, dtype=dtype))
