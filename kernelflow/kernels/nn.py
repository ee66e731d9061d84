"""Kernels of the neural-network ops (same order as graph/ops/nn.py)."""

from __future__ import annotations

from ..graph.ops import nn as N
from .registry import kernel


def _log_softmax(xp, logits):
    m = xp.max(logits, axis=-1, keepdims=True)
    shifted = logits - m
    lse = xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    shifted -= lse
    return shifted


def _check_labels(xp, labels, n_classes):
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"softmax_cross_entropy: labels must be in [0, {n_classes}); got values in "
                                   f"[{int(labels.min())}, {int(labels.max())}]")


@kernel(N.softmax_cross_entropy_op)
def softmax_cross_entropy_kernel(xp, logits, labels):
    _check_labels(xp, labels, logits.shape[-1])
    logp = _log_softmax(xp, logits)
    picked = xp.take_along_axis(logp, labels[..., None].astype(xp.intp, copy=False), axis=-1)[..., 0]
    return -picked


@kernel(N.softmax_cross_entropy_grad_op)
def softmax_cross_entropy_grad_kernel(xp, g, logits, labels):
    p = xp.exp(_log_softmax(xp, logits))
    idx = labels[..., None].astype(xp.intp, copy=False)
    xp.put_along_axis(p, idx, xp.take_along_axis(p, idx, axis=-1) - 1, axis=-1)
    p *= g
    return p
