"""Kernels of the elementwise ops (same order as graph/ops/elementwise.py), written on ``xp``."""

from __future__ import annotations

from ..graph.ops import elementwise as E
from .registry import kernel, special, xp_kernel

for _op, _attr in [
    (E.add_op, "add"), (E.subtract_op, "subtract"), (E.multiply_op, "multiply"), (E.divide_op, "true_divide"),
    (E.floor_divide_op, "floor_divide"), (E.mod_op, "mod"), (E.pow_op, "power"), (E.negative_op, "negative"),
    (E.abs_op, "abs"), (E.sign_op, "sign"), (E.exp_op, "exp"), (E.log_op, "log"), (E.log1p_op, "log1p"),
    (E.sqrt_op, "sqrt"), (E.square_op, "square"), (E.sin_op, "sin"), (E.cos_op, "cos"), (E.tanh_op, "tanh"),
    (E.maximum_op, "maximum"), (E.minimum_op, "minimum"), (E.equal_op, "equal"), (E.not_equal_op, "not_equal"),
    (E.less_op, "less"), (E.less_equal_op, "less_equal"), (E.greater_op, "greater"),
    (E.greater_equal_op, "greater_equal"), (E.logical_and_op, "logical_and"), (E.logical_or_op, "logical_or"),
    (E.logical_not_op, "logical_not"), (E.isfinite_op, "isfinite"), (E.where_op, "where"),
]:
    xp_kernel(_op, _attr)


@kernel(E.rsqrt_op)
def rsqrt_kernel(xp, x):
    # One buffer for both steps; empty_like also makes it a real array for 0-d inputs, where
    # xp.sqrt would return a numpy scalar that cannot be an ``out=`` target.
    out = xp.empty_like(x)
    xp.sqrt(x, out=out)
    return xp.reciprocal(out, out=out)


@kernel(E.sigmoid_op)
def sigmoid_kernel(xp, x):
    # 1/(1+exp(-x)) for x >= 0 and exp(x)/(1+exp(x)) for x < 0: neither branch overflows.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


@kernel(E.relu_op)
def relu_kernel(xp, x):
    return xp.maximum(x, 0)


@kernel(E.relu_grad_op)
def relu_grad_kernel(xp, g, out):
    return xp.multiply(g, out > 0)


@kernel(E.cast_op)
def cast_kernel(xp, x, dtype):
    return x.astype(dtype)


@kernel(E.gelu_op)
def gelu_kernel(xp, x):
    cdf = special(xp).erf(x * (1 / 2**0.5))
    cdf += 1
    cdf *= 0.5
    return (x * cdf).astype(x.dtype, copy=False)


@kernel(E.erf_op)
def erf_kernel(xp, x):
    return special(xp).erf(x).astype(x.dtype, copy=False)
