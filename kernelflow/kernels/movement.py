"""Kernels of the shape and movement ops (same order as graph/ops/movement.py)."""

from __future__ import annotations

from ..graph.ops import movement as M
from .registry import kernel


@kernel(M.reshape_op)
def reshape_kernel(xp, x, shape):
    return xp.reshape(x, shape)


@kernel(M.reshape_like_op)
def reshape_like_kernel(xp, x, like):
    return xp.reshape(x, like.shape)


@kernel(M.expand_dims_op)
def expand_dims_kernel(xp, x, axis):
    return xp.expand_dims(x, axis)


@kernel(M.squeeze_op)
def squeeze_kernel(xp, x, axis):
    return xp.squeeze(x, axis=axis)


@kernel(M.transpose_op)
def transpose_kernel(xp, x, axes):
    return xp.transpose(x, axes)


@kernel(M.broadcast_to_op)
def broadcast_to_kernel(xp, x, shape):
    return xp.broadcast_to(x, shape)


@kernel(M.broadcast_like_op)
def broadcast_like_kernel(xp, x, like):
    return xp.broadcast_to(x, xp.broadcast_shapes(x.shape, like.shape))


@kernel(M.size_op)
def size_kernel(xp, x, dtype):
    return xp.asarray(x.size, dtype=dtype)
