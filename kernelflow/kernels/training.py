"""Kernels of the fused optimiser updates (same order as graph/ops/training.py).

Each kernel updates the variable and its slots in their live storage (``ctx.storage``),
with ``out=`` ufunc calls and scratch arrays that are reused from step to step instead of
fresh temporaries. Scratch buffers are per thread (updates within one run happen one after
another on one thread; two graphs running at once run on two threads) and per dtype and
device, grown to the largest variable seen, so their memory is bounded by a few copies of
the largest variable per thread.

Scalar inputs (learning rates) arrive as 0-d arrays on the node's device and are used as
arrays, never converted to Python floats, so a GPU kernel never synchronises on them.
"""

from __future__ import annotations

import threading
from typing import Any

from ..graph.ops import training as T
from .registry import kernel

_local = threading.local()


def _scratch(xp: Any, like: Any, k: int = 0) -> Any:
    """Scratch array number ``k`` with ``like``'s shape and dtype, private to this thread."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    key = (xp.__name__, like.dtype.str, str(getattr(like, "device", "")), k)
    buf = bufs.get(key)
    n = like.size
    if buf is None or buf.size < n:
        buf = bufs[key] = xp.empty(n, dtype=like.dtype)
    return buf[:n].reshape(like.shape)


def scratch_arrays() -> list:
    """This thread's scratch arrays (a CUDA graph captured here holds them, so none is freed under it)."""
    return list(getattr(_local, "bufs", {}).values())


def _live(ctx: Any, count: int) -> list:
    """Live storage of the first ``count`` inputs (the variable and its slots)."""
    inputs = ctx.node.inputs
    return [ctx.storage(inputs[i]) for i in range(count)]


def _decayed_grad(xp: Any, var: Any, grad: Any, weight_decay: float, k: int) -> Any:
    """``grad + weight_decay * var`` in scratch ``k`` (or ``grad`` itself with no decay)."""
    if not weight_decay:
        return grad
    tmp = xp.multiply(var, weight_decay, out=_scratch(xp, var, k))
    tmp += grad
    return tmp


@kernel(T.apply_gradient_descent_op, needs_ctx=True)
def apply_gradient_descent_kernel(ctx, xp, var, grad, lr, weight_decay):
    (var,) = _live(ctx, 1)
    g = _decayed_grad(xp, var, grad, weight_decay, 0)
    tmp = _scratch(xp, var, 1 if weight_decay else 0)
    xp.multiply(g, lr, out=tmp)
    var -= tmp
    return var


@kernel(T.apply_momentum_op, needs_ctx=True)
def apply_momentum_kernel(ctx, xp, var, accum, grad, lr, momentum, nesterov, weight_decay):
    var, accum = _live(ctx, 2)
    g = _decayed_grad(xp, var, grad, weight_decay, 0)
    accum *= momentum
    accum += g
    tmp = _scratch(xp, var, 1)
    if nesterov:
        xp.multiply(accum, momentum, out=tmp)
        tmp += g
        tmp *= lr
    else:
        xp.multiply(accum, lr, out=tmp)
    var -= tmp
    return var


def _adam_moments(xp: Any, m: Any, v: Any, grad: Any, beta1: float, beta2: float, tmp: Any) -> None:
    """``m = beta1 m + (1 - beta1) g``, ``v = beta2 v + (1 - beta2) g^2`` in place."""
    m *= beta1
    xp.multiply(grad, 1.0 - beta1, out=tmp)
    m += tmp
    v *= beta2
    xp.multiply(grad, grad, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp


def _adam_step(xp: Any, var: Any, m: Any, v: Any, lr_t: Any, eps: Any, tmp: Any) -> None:
    """``var -= lr_t * m / (sqrt(v) + eps)`` through one scratch array."""
    xp.sqrt(v, out=tmp)
    tmp += eps
    xp.divide(m, tmp, out=tmp)
    tmp *= lr_t
    var -= tmp


@kernel(T.apply_adam_op, needs_ctx=True)
def apply_adam_kernel(ctx, xp, var, m, v, grad, lr_t, beta1, beta2, epsilon):
    var, m, v = _live(ctx, 3)
    tmp = _scratch(xp, var)
    _adam_moments(xp, m, v, grad, beta1, beta2, tmp)
    _adam_step(xp, var, m, v, lr_t, epsilon, tmp)
    return var


@kernel(T.apply_adamw_op, needs_ctx=True)
def apply_adamw_kernel(ctx, xp, var, m, v, grad, lr, lr_t, eps_t, beta1, beta2, weight_decay):
    var, m, v = _live(ctx, 3)
    if weight_decay:
        var *= 1 - lr * weight_decay
    tmp = _scratch(xp, var)
    _adam_moments(xp, m, v, grad, beta1, beta2, tmp)
    _adam_step(xp, var, m, v, lr_t, eps_t, tmp)
    return var


def _rmsprop_finish(xp: Any, var: Any, mom: Any, grad: Any, lr: Any, momentum: float, tmp: Any) -> None:
    """Given ``tmp = denominator + epsilon``: the step ``lr * g / sqrt(tmp)``, through momentum."""
    xp.sqrt(tmp, out=tmp)
    xp.divide(grad, tmp, out=tmp)
    tmp *= lr
    if momentum:
        mom *= momentum
        mom += tmp
        var -= mom
    else:
        var -= tmp


@kernel(T.apply_rmsprop_op, needs_ctx=True)
def apply_rmsprop_kernel(ctx, xp, var, ms, mom, grad, lr, rho, momentum, epsilon):
    var, ms, mom = _live(ctx, 3)
    tmp = _scratch(xp, var)
    ms *= rho
    xp.multiply(grad, grad, out=tmp)
    tmp *= 1.0 - rho
    ms += tmp
    xp.add(ms, epsilon, out=tmp)
    _rmsprop_finish(xp, var, mom, grad, lr, momentum, tmp)
    return var


@kernel(T.apply_centered_rmsprop_op, needs_ctx=True)
def apply_centered_rmsprop_kernel(ctx, xp, var, mg, ms, mom, grad, lr, rho, momentum, epsilon):
    var, mg, ms, mom = _live(ctx, 4)
    tmp = _scratch(xp, var)
    ms *= rho
    xp.multiply(grad, grad, out=tmp)
    tmp *= 1.0 - rho
    ms += tmp
    mg *= rho
    xp.multiply(grad, 1.0 - rho, out=tmp)
    mg += tmp
    xp.multiply(mg, mg, out=tmp)
    xp.subtract(ms, tmp, out=tmp)
    tmp += epsilon
    _rmsprop_finish(xp, var, mom, grad, lr, momentum, tmp)
    return var


@kernel(T.apply_adagrad_op, needs_ctx=True)
def apply_adagrad_kernel(ctx, xp, var, accum, grad, lr, epsilon):
    var, accum = _live(ctx, 2)
    tmp = _scratch(xp, var)
    xp.multiply(grad, grad, out=tmp)
    accum += tmp
    xp.sqrt(accum, out=tmp)
    tmp += epsilon
    xp.divide(grad, tmp, out=tmp)
    tmp *= lr
    var -= tmp
    return var
