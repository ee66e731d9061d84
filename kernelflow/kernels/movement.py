"""Kernels of the shape and movement ops (same order as graph/ops/movement.py)."""

from __future__ import annotations

from ..errors import ShapeError
from ..graph.ops import movement as M
from .registry import kernel


def _broadcast_shape(a: tuple, b: tuple) -> tuple:
    """numpy's broadcast of two concrete shapes (valid shapes: the graph checked them)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return tuple(y if x == 1 else x for x, y in zip(a, b))


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
    return xp.broadcast_to(x, _broadcast_shape(x.shape, like.shape))


@kernel(M.size_op)
def size_kernel(xp, x, dtype):
    return xp.full((), x.size, dtype=dtype)  # a fill kernel on a GPU: no host copy, a CUDA graph may hold it


@kernel(M.concat_op)
def concat_kernel(xp, *values, axis):
    return xp.concatenate(values, axis=axis)


@kernel(M.split_part_op)
def split_part_kernel(xp, x, *likes, axis, index, num):
    axis %= x.ndim
    if likes:
        start = sum(v.shape[axis] for v in likes[:index])
        stop = start + likes[index].shape[axis]
    else:
        n = x.shape[axis]
        if n % num:
            raise ShapeError(f"split: axis {axis} of size {n} does not divide into {num} equal parts; "
                             f"x.shape={x.shape}")
        start, stop = index * (n // num), (index + 1) * (n // num)
    return x[(slice(None),) * axis + (slice(start, stop),)]


@kernel(M.tile_op)
def tile_kernel(xp, x, reps):
    return xp.tile(x, reps)


@kernel(M.tile_grad_op)
def tile_grad_kernel(xp, g, like, reps):
    n = g.ndim
    shape = (1,) * (n - like.ndim) + like.shape
    reps = (1,) * (n - len(reps)) + tuple(reps)
    # Each dim of g is (rep, original) in C order: split it in two and sum over the reps.
    split = [v for r, d in zip(reps, shape) for v in (r, d)]
    return xp.sum(xp.reshape(g, split), axis=tuple(range(0, 2 * n, 2)), dtype=g.dtype).reshape(like.shape)


@kernel(M.pad_op)
def pad_kernel(xp, x, pad_width, mode, constant_values):
    if mode == "constant":
        return xp.pad(x, pad_width, mode="constant", constant_values=constant_values)
    return xp.pad(x, pad_width, mode=mode)


@kernel(M.pad_grad_op)
def pad_grad_kernel(xp, g, like, pad_width, mode):
    # Pad a map of flat source positions the same way, then add each g element to its source.
    n = 1
    for d in like.shape:
        n *= d
    source = xp.pad(xp.arange(n).reshape(like.shape), pad_width, mode=mode)
    out = xp.zeros(n, dtype=g.dtype)
    xp.add.at(out, source.reshape(-1), g.reshape(-1))
    return out.reshape(like.shape)


