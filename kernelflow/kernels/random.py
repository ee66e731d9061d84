"""Kernels of the random ops (same order as graph/ops/random.py).

They draw from ``ctx.rng()``: a numpy Generator, or cupy's on a GPU, through the API both
share (``standard_normal``, ``random``); neither draws float16 directly, so float16 samples
are drawn in float32 and cast.
"""

from __future__ import annotations

from ..graph.ops import random as R
from .registry import kernel


def _draw_dtype(xp, dtype):
    return xp.float32 if dtype == "float16" else dtype


def _normal(ctx, xp, shape, mean, stddev, dtype):
    out = ctx.rng().standard_normal(tuple(shape), dtype=_draw_dtype(xp, dtype))
    if stddev != 1.0:
        out *= stddev
    if mean != 0.0:
        out += mean
    return out.astype(dtype, copy=False)


def _uniform(ctx, xp, shape, minval, maxval, dtype):
    out = ctx.rng().random(tuple(shape), dtype=_draw_dtype(xp, dtype))
    if (minval, maxval) != (0.0, 1.0):
        out *= maxval - minval
        out += minval
    out = out.astype(dtype, copy=False)
    if minval != 0.0 or maxval != 1.0 or dtype == "float16":
        # Rounding can land a sample on maxval; keep the interval half-open.
        out = xp.where(out >= maxval, xp.asarray(minval, dtype=dtype), out)
    return out


@kernel(R.random_normal_op, needs_ctx=True)
def random_normal_kernel(ctx, xp, shape, mean, stddev, dtype, seed):
    return _normal(ctx, xp, shape, mean, stddev, dtype)


@kernel(R.random_normal_like_op, needs_ctx=True)
def random_normal_like_kernel(ctx, xp, like, mean, stddev, dtype, seed):
    return _normal(ctx, xp, like.shape, mean, stddev, dtype)


@kernel(R.random_uniform_op, needs_ctx=True)
def random_uniform_kernel(ctx, xp, shape, minval, maxval, dtype, seed):
    return _uniform(ctx, xp, shape, minval, maxval, dtype)


@kernel(R.random_uniform_like_op, needs_ctx=True)
def random_uniform_like_kernel(ctx, xp, like, minval, maxval, dtype, seed):
    return _uniform(ctx, xp, like.shape, minval, maxval, dtype)


def _permutation(ctx, xp, n):
    rng = ctx.rng()
    if hasattr(rng, "permutation"):
        return xp.asarray(rng.permutation(n))
    # Generators without permutation (some cupy versions): sorting uniform keys is uniform too.
    return xp.argsort(rng.random(n))


@kernel(R.random_shuffle_op, needs_ctx=True)
def random_shuffle_kernel(ctx, xp, x, seed):
    return x[_permutation(ctx, xp, x.shape[0])]


@kernel(R.random_permutation_op, needs_ctx=True)
def random_permutation_kernel(ctx, xp, n, dtype, seed):
    return _permutation(ctx, xp, n).astype(dtype, copy=False)
