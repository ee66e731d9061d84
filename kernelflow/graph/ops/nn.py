"""Neural-network ops: softmax family, losses, conv/pool, normalisation, dropout, embedding."""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import define_op
from ..shapes import FLOATING, INTEGER, format_shape, normalize_axis
from .elementwise import exp
from .reduce import logsumexp, sum

__all__ = ["softmax", "log_softmax", "softmax_cross_entropy"]


def softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably."""
    return exp(log_softmax(x, axis), name=name)


def log_softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``."""
    from .elementwise import subtract

    return subtract(x, logsumexp(x, axis=axis, keepdims=True), name=name)


def _sce_shape(logits: Any, labels: Any) -> tuple:
    if logits.ndim < 1:
        raise ShapeError("softmax_cross_entropy: logits must have a class axis; got a scalar")
    if labels.dtype not in INTEGER:
        raise InvalidArgumentError(f"softmax_cross_entropy: labels must be integer class ids; got {labels.dtype}")
    if logits.dtype not in FLOATING:
        raise InvalidArgumentError(f"softmax_cross_entropy: logits must be floating; got {logits.dtype}")
    batch = logits.shape[:-1]
    if len(labels.shape) != len(batch) or any(
        a is not None and b is not None and a != b for a, b in zip(labels.shape, batch)
    ):
        raise ShapeError(f"softmax_cross_entropy: labels shape {format_shape(labels.shape)} must equal logits "
                         f"shape without the class axis {format_shape(batch)}")
    return tuple(b if b is not None else a for a, b in zip(labels.shape, batch))


def _sce_vjp(g: Tensor, out: Tensor, logits: Tensor, labels: Tensor) -> tuple:
    from .movement import expand_dims

    return (softmax_cross_entropy_grad_op.bind(expand_dims(g, -1), logits, labels), None)


# A primitive for stability and speed: log-softmax and the label pick in one pass, and a
# gradient (softmax - one_hot) that never forms log(0).
softmax_cross_entropy_op = define_op("softmax_cross_entropy", ("logits", "labels"), shape_rule=_sce_shape,
                                     dtype_rule=lambda logits, labels: logits.dtype, vjp=_sce_vjp)
softmax_cross_entropy_grad_op = define_op(
    "softmax_cross_entropy_grad", ("g", "logits", "labels"), shape_rule=lambda g, logits, labels: logits.shape,
    dtype_rule=lambda g, logits, labels: logits.dtype, differentiable=False,
    doc="g * (softmax(logits) - one_hot(labels)); the gradient of softmax_cross_entropy")


def softmax_cross_entropy(logits: Tensor, labels: Any, name: str | None = None) -> Tensor:
    """Per-example cross-entropy of ``logits`` (..., classes) against integer ``labels`` (...)."""
    return softmax_cross_entropy_op.bind(logits, labels, name=name)


_ = (sum, normalize_axis)
