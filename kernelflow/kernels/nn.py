"""Kernels of the neural-network ops (same order as graph/ops/nn.py; conv and pool are in conv.py)."""

from __future__ import annotations

from ..errors import InvalidArgumentError
from ..graph.ops import nn as N
from .registry import defer_check, kernel


def _log_softmax(xp, logits):
    m = xp.max(logits, axis=-1, keepdims=True)
    shifted = logits - m
    lse = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    shifted -= lse
    return shifted


def _check_ids(op, ids, n, what):
    # Explicit, because numpy would wrap negative ids and cupy clips or wraps silently.
    if defer_check(ids, lambda a: _check_ids(op, a, n, what)):
        return
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise InvalidArgumentError(f"{op}: {what} must be in [0, {n}); got values in "
                                   f"[{int(ids.min())}, {int(ids.max())}]")


def _one_hot_like(xp, labels, n_classes, dtype):
    return (labels[..., None] == xp.arange(n_classes)).astype(dtype)


@kernel(N.softmax_cross_entropy_op)
def softmax_cross_entropy_kernel(xp, logits, labels):
    _check_ids("softmax_cross_entropy", labels, logits.shape[-1], "labels")
    logp = _log_softmax(xp, logits)
    picked = xp.take_along_axis(logp, labels[..., None].astype(xp.intp, copy=False), axis=-1)[..., 0]
    return -picked


@kernel(N.softmax_cross_entropy_grad_op)
def softmax_cross_entropy_grad_kernel(xp, g, logits, labels):
    _check_ids("softmax_cross_entropy", labels, logits.shape[-1], "labels")
    p = xp.exp(_log_softmax(xp, logits))
    p -= _one_hot_like(xp, labels, logits.shape[-1], p.dtype)
    p *= g
    return p


@kernel(N.embedding_op)
def embedding_kernel(xp, params, ids):
    _check_ids("embedding", ids, params.shape[0], "ids")
    return xp.take(params, ids.astype(xp.intp, copy=False), axis=0)


@kernel(N.embedding_grad_op)
def embedding_grad_kernel(xp, g, ids, params_like):
    out = xp.zeros(params_like.shape, dtype=g.dtype)
    rows = g.reshape((ids.size,) + params_like.shape[1:])
    xp.add.at(out, ids.reshape(-1).astype(xp.intp, copy=False), rows)
    return out


@kernel(N.embedding_grad_op, backend="cupy")
def embedding_grad_cupy(xp, g, ids, params_like):
    import cupyx  # noqa: PLC0415  (GPU only)

    out = xp.zeros(params_like.shape, dtype=g.dtype)
    rows = g.reshape((ids.size,) + params_like.shape[1:])
    cupyx.scatter_add(out, ids.reshape(-1).astype(xp.intp, copy=False), rows)
    return out
