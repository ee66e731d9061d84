"""Neural-network ops: softmax family, losses, dropout, normalisation, embedding.

Convolutions and pools live in `conv` and are re-exported here, so this module holds the
whole NN family's builders.

Contents: softmax, log_softmax, softmax_cross_entropy, sigmoid_cross_entropy, mse, dropout,
moments, layer_norm, batch_norm, embedding (+ conv2d, conv2d_transpose, max_pool2d,
avg_pool2d from `conv`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor, Variable
from ..registry import define_op
from ..shapes import FLOATING, INTEGER, format_shape, normalize_axes
from . import conv
from .conv import avg_pool2d, conv2d, conv2d_transpose, max_pool2d
from .elementwise import abs, cast, exp, greater_equal, identity_named, log1p, maximum, rsqrt, square, subtract, where
from .movement import squeeze
from .reduce import logsumexp, mean, sum

__all__ = ["softmax", "log_softmax", "softmax_cross_entropy", "sigmoid_cross_entropy", "mse", "dropout", "moments",
           "layer_norm", "batch_norm", "embedding", *conv.__all__]
_ = (avg_pool2d, conv2d, conv2d_transpose, max_pool2d)


# --------------------------------------------------------------------------- softmax family
def softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    """``exp(x) / sum(exp(x))`` along ``axis``, computed stably (as ``exp(log_softmax(x))``)."""
    return exp(log_softmax(x, axis), name=name)


def log_softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    """``x - logsumexp(x)`` along ``axis``."""
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


def _sce_grad_vjp(gg: Tensor, out: Tensor, g: Tensor, logits: Tensor, labels: Tensor) -> tuple:
    # out = g * (p - onehot): linear in g; in logits it is g times the softmax Jacobian.
    p = softmax(logits)
    p_minus_onehot = softmax_cross_entropy_grad_op.bind(1.0, logits, labels)
    dg = sum(gg * p_minus_onehot, axis=-1, keepdims=True)
    pgg = p * gg
    return (dg, g * (pgg - p * sum(pgg, axis=-1, keepdims=True)), None)


# A primitive for stability and speed: log-softmax and the label pick in one pass, and a
# gradient (softmax - one_hot) that never forms log(0).
softmax_cross_entropy_op = define_op("softmax_cross_entropy", ("logits", "labels"), shape_rule=_sce_shape,
                                     dtype_rule=lambda logits, labels: logits.dtype, vjp=_sce_vjp)
softmax_cross_entropy_grad_op = define_op(
    "softmax_cross_entropy_grad", ("g", "logits", "labels"), shape_rule=lambda g, logits, labels: logits.shape,
    dtype_rule=lambda g, logits, labels: logits.dtype, vjp=_sce_grad_vjp,
    doc="g * (softmax(logits) - one_hot(labels)); the gradient of softmax_cross_entropy")


def softmax_cross_entropy(logits: Tensor, labels: Any, name: str | None = None) -> Tensor:
    """Per-example cross-entropy of class logits against integer labels.

    Args:
        logits: (..., classes) float.
        labels: (...) integer class ids in ``[0, classes)``; others fail at run time.
        name: node name.

    Returns:
        (...) float, logits' dtype: ``-log_softmax(logits)[label]``.
    """
    return softmax_cross_entropy_op.bind(logits, labels, name=name)


# --------------------------------------------------------------------------- losses
def sigmoid_cross_entropy(logits: Tensor, labels: Any, name: str | None = None) -> Tensor:
    """Per-element binary cross-entropy of ``logits`` against probabilities ``labels`` (TF's
    ``sigmoid_cross_entropy_with_logits``).

    Computed as ``max(x, 0) - x * z + log1p(exp(-|x|))``, which never overflows.

    Args:
        logits: float tensor x.
        labels: targets z in [0, 1], broadcastable to logits (integers and bools are cast).
        name: node name.

    Returns:
        Elementwise loss, logits' dtype and the broadcast shape. Reduce it yourself.
    """
    if isinstance(labels, Tensor) and labels.dtype != logits.dtype:
        labels = cast(labels, logits.dtype)
    return identity_named(maximum(logits, 0) - logits * labels + log1p(exp(-abs(logits))), name)


def mse(predictions: Tensor, targets: Any, name: str | None = None) -> Tensor:
    """Per-example mean squared error.

    The squared error is averaged over every axis but the first (the batch axis), so a
    (batch, ...) input gives a (batch,) loss; a rank-1 input gives the elementwise squared
    error and a scalar input its square. Take ``kf.mean`` of the result for the batch loss.

    Args:
        predictions: (batch, ...) float.
        targets: broadcastable to predictions.
        name: node name.

    Returns:
        (batch,) float (the broadcast shape's first dim).
    """
    sq = square(predictions - targets)
    if sq.ndim <= 1:
        return identity_named(sq, name)
    return mean(sq, axis=tuple(range(1, sq.ndim)), name=name)


# --------------------------------------------------------------------------- dropout
def dropout(x: Tensor, rate: float, training: Any = True, seed: int | None = None,
            name: str | None = None) -> Tensor:
    """Inverted dropout: zero each element with probability ``rate``, scale the rest by
    ``1 / (1 - rate)``, so the expected value is unchanged and inference needs no rescaling.

    The mask is a fresh sample at every run; within one run the forward pass and the
    gradient share it (the gradient is ``g * mask / (1 - rate)``).

    Args:
        x: float tensor (any shape, unknown dims allowed).
        rate: drop probability in [0, 1).
        training: True, False (then the result is ``x`` itself), or a bool scalar tensor
            chosen at run time.
        seed: op seed of the mask.
        name: node name.

    Returns:
        A tensor like ``x``.
    """
    from .random import random_uniform

    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise InvalidArgumentError(f"dropout: rate must be in [0, 1); got {rate}")
    if x.dtype not in FLOATING:
        raise InvalidArgumentError(f"dropout: x must be floating; got {x.dtype}")
    if isinstance(training, Tensor):
        _check_training("dropout", training)
    elif not isinstance(training, (bool, np.bool_)):
        raise InvalidArgumentError(f"dropout: training must be a bool or a bool scalar tensor; got {training!r}")
    if rate == 0.0 or (not isinstance(training, Tensor) and not training):
        return x
    with x.graph.name_scope(name or "dropout"):
        u = random_uniform(like=x, dtype=x.dtype, seed=seed, name="uniform")
        keep = cast(greater_equal(u, rate), x.dtype) * (1.0 / (1.0 - rate))
        y = x * keep
        return where(training, y, x) if isinstance(training, Tensor) else y


def _check_training(op: str, training: Tensor) -> None:
    if training.dtype != "bool" or training.ndim != 0:
        raise InvalidArgumentError(f"{op}: a training tensor must be a bool scalar; got "
                                   f"{training.dtype}{format_shape(training.shape)}")


# --------------------------------------------------------------------------- normalisation
def moments(x: Tensor, axes: Any, keepdims: bool = False) -> tuple[Tensor, Tensor]:
    """Mean and (population) variance of ``x`` over ``axes``.

    Args:
        x: float tensor.
        axes: an int or a tuple of ints.
        keepdims: keep the reduced axes as size-1 dims.

    Returns:
        ``(mean, variance)``.
    """
    axes = normalize_axes("moments", axes, x.ndim)
    m = mean(x, axis=axes, keepdims=True)
    v = mean(square(x - m), axis=axes, keepdims=keepdims)
    if not keepdims:
        m = squeeze(m, axis=axes)
    return m, v


def _affine(y: Tensor, gamma: Any, beta: Any) -> Tensor:
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def layer_norm(x: Tensor, gamma: Any = None, beta: Any = None, axis: Any = -1, epsilon: float = 1e-5,
               name: str | None = None) -> Tensor:
    """Layer normalisation: ``(x - mean) / sqrt(var + epsilon) * gamma + beta`` with the
    moments taken over ``axis`` of each example.

    Args:
        x: float tensor, e.g. (batch, features).
        gamma: scale broadcastable to x (e.g. (features,)), or None.
        beta: offset broadcastable to x, or None.
        axis: an int or tuple of ints: the normalised axes.
        epsilon: added to the variance.
        name: name scope of the nodes.

    Returns:
        A tensor like ``x``.
    """
    with x.graph.name_scope(name or "layer_norm"):
        m, v = moments(x, axis, keepdims=True)
        return _affine((x - m) * rsqrt(v + epsilon), gamma, beta)


def batch_norm(x: Tensor, gamma: Any, beta: Any, moving_mean: Tensor, moving_var: Tensor, training: Any,
               momentum: float = 0.99, epsilon: float = 1e-3, name: str | None = None) -> Tensor:
    """Batch normalisation over every axis but the last (the channels of NHWC or (batch, features)).

    In training, the batch statistics normalise ``x`` and two assign ops move the running
    statistics: ``moving = momentum * moving + (1 - momentum) * batch``. They are added to
    the graph collection ``"update_ops"``: run them with the train step (the optimisers do),
    or fetch them yourself. In inference the moving statistics are used and nothing changes.

    Args:
        x: (..., channels) float.
        gamma: (channels,) scale, or None.
        beta: (channels,) offset, or None.
        moving_mean: (channels,) non-trainable `Variable`.
        moving_var: (channels,) non-trainable `Variable`.
        training: True, False, or a bool scalar tensor; with a tensor the choice is made at
            run time, and the update ops leave the statistics unchanged when it is False.
        momentum: weight of the old moving statistics.
        epsilon: added to the variance.
        name: name scope of the nodes.

    Returns:
        A tensor like ``x``.

    Raises:
        InvalidArgumentError: when training may be true and the moving statistics are not
            variables, or ``training`` is neither a bool nor a bool scalar tensor.
    """
    if x.ndim < 2:
        raise ShapeError(f"batch_norm: x must have a batch axis and a channel axis; got "
                         f"x.shape={format_shape(x.shape)}")
    is_tensor = isinstance(training, Tensor)
    if is_tensor:
        _check_training("batch_norm", training)
    elif not isinstance(training, (bool, np.bool_)):
        raise InvalidArgumentError(f"batch_norm: training must be a bool or a bool scalar tensor; got {training!r}")
    graph = x.graph
    with graph.name_scope(name or "batch_norm"):
        if not is_tensor and not training:
            m, v = moving_mean, moving_var
        else:
            for what, var in (("moving_mean", moving_mean), ("moving_var", moving_var)):
                if not isinstance(var, Variable):
                    raise InvalidArgumentError(f"batch_norm: {what} must be a kf.Variable in training; got {var!r}")
            m, v = moments(x, tuple(range(x.ndim - 1)))
            on = cast(training, x.dtype) if is_tensor else None
            for var, batch in ((moving_mean, m), (moving_var, v)):
                delta = (var - cast(batch, var.dtype)) * (1.0 - float(momentum))
                if on is not None:
                    delta = delta * cast(on, var.dtype)
                graph.add_to_collection("update_ops", var.assign_sub(delta))
            if is_tensor:
                m, v = where(training, m, moving_mean), where(training, v, moving_var)
        return _affine((x - m) * rsqrt(v + epsilon), gamma, beta)


# --------------------------------------------------------------------------- embedding
def _embedding_shape(params: Any, ids: Any) -> tuple:
    if params.ndim < 1:
        raise ShapeError("embedding: params must have rank >= 1 (rows are looked up); got a scalar")
    if ids.dtype not in INTEGER:
        raise InvalidArgumentError(f"embedding: ids must be integers; got {ids.dtype}")
    return ids.shape + params.shape[1:]


def _embedding_grad_shape(g: Any, ids: Any, params: Any) -> tuple:
    expect = ids.shape + params.shape[1:]
    if g.ndim != len(expect) or any(a is not None and b is not None and a != b for a, b in zip(g.shape, expect)):
        raise ShapeError(f"embedding_grad: g.shape={format_shape(g.shape)} must be ids.shape + params.shape[1:] = "
                         f"{format_shape(expect)}")
    return params.shape


# A primitive (a row gather) with a scatter-add gradient; no dense one-hot product.
embedding_op = define_op("embedding", ("params", "ids"), shape_rule=_embedding_shape,
                         dtype_rule=lambda params, ids: params.dtype,
                         vjp=lambda g, out, params, ids: (embedding_grad_op.bind(g, ids, params), None))
embedding_grad_op = define_op(
    "embedding_grad", ("g", "ids", "params_like"), shape_rule=_embedding_grad_shape,
    dtype_rule=lambda g, ids, params: g.dtype,
    vjp=lambda gg, out, g, ids, params: (embedding_op.bind(gg, ids), None, None),
    doc="rows of g added into zeros shaped like params at ids (the gradient of embedding)")


def embedding(params: Any, ids: Any, name: str | None = None) -> Tensor:
    """Rows of ``params`` at ``ids`` (a gather on axis 0).

    Args:
        params: (vocab, ...) table, usually a variable.
        ids: integer tensor of any shape, values in ``[0, vocab)``; others fail at run time.
        name: node name.

    Returns:
        ``ids.shape + params.shape[1:]``, params' dtype. The gradient w.r.t. params adds the
        incoming rows at their ids (repeated ids accumulate).
    """
    return embedding_op.bind(params, ids, name=name)
