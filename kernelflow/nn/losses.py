"""Losses and metrics with Keras' names and meanings: ``model.compile(loss=..., metrics=[...])``.

A string cross-entropy (``"sparse_categorical_crossentropy"``) expects probabilities, as in
Keras; a loss object takes ``from_logits=True`` for raw scores. Each loss and metric is
``f(y_true, y_pred) -> scalar`` (the mean over the batch) and knows the label placeholder it
needs (`Loss.label_spec`).

Contents: Loss, SparseCategoricalCrossentropy, CategoricalCrossentropy, BinaryCrossentropy,
MeanSquaredError, MeanAbsoluteError, get_loss, Metric, get_metric, LOSSES, METRICS.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError, ShapeError
from ..graph.ir import Tensor
from ..graph.ops import elementwise as E
from ..graph.ops import indexing as I
from ..graph.ops import movement as M
from ..graph.ops import nn as N
from ..graph.ops import reduce as R
from ..graph.shapes import format_shape

__all__ = ["Loss", "SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy",
           "MeanSquaredError", "MeanAbsoluteError", "get_loss", "Metric", "get_metric", "LOSSES", "METRICS"]

EPSILON = 1e-7  # Keras' clip of probabilities before the log


class Loss:
    """Base: ``loss(y_true, y_pred)`` is the batch mean of a per-example loss.

    Args:
        from_logits: y_pred holds raw scores (cross-entropies only).
    """

    name = "loss"

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return R.mean(self.per_example(y_true, y_pred))

    def per_example(self, y_true: Tensor, y_pred: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def weighted(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor) -> Tensor:
        """Keras' weighted loss: ``sum(per_example * sample_weight) / count`` (the mean of the products).

        Args:
            sample_weight: (batch,) weights, broadcast over any further dims of the per-example loss.
        """
        per = self.per_example(y_true, y_pred)
        return R.mean(per * expand_to(E.cast(sample_weight, per.dtype), per.ndim))

    def label_spec(self, y_pred_shape: tuple, y_pred_dtype: str) -> tuple[tuple, str]:
        """(shape, dtype) of the label placeholder for an output of this shape and dtype."""
        return tuple(y_pred_shape), y_pred_dtype

    def get_config(self) -> dict:
        return {"from_logits": self.from_logits}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __repr__(self) -> str:
        return f"kf.nn.losses.{type(self).__name__}(from_logits={self.from_logits})"


def expand_to(w: Tensor, ndim: int) -> Tensor:
    """(batch,) weights with trailing size-1 dims up to rank ``ndim``, to broadcast over per-example values."""
    for _ in range(ndim - w.ndim):
        w = M.expand_dims(w, -1)
    return w


def _clip(p: Tensor) -> Tensor:
    return E.clip(p, EPSILON, 1.0 - EPSILON)


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy of (batch, classes) predictions against integer labels (batch,)."""

    name = "sparse_categorical_crossentropy"

    def per_example(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        if self.from_logits:
            return N.softmax_cross_entropy(y_pred, y_true)
        p = y_pred / R.sum(y_pred, axis=-1, keepdims=True)
        picked = R.sum(_clip(p) * I.one_hot(y_true, y_pred.shape[-1], dtype=y_pred.dtype), axis=-1)
        return -E.log(picked)

    def label_spec(self, y_pred_shape: tuple, y_pred_dtype: str) -> tuple[tuple, str]:
        if len(y_pred_shape) < 2 or y_pred_shape[-1] is None:
            raise ShapeError(f"{self.name}: the model output must be (batch, ..., classes) with known classes; got "
                             f"{format_shape(y_pred_shape)}")
        return tuple(y_pred_shape[:-1]), "int64"


class CategoricalCrossentropy(Loss):
    """Cross-entropy of (batch, classes) predictions against one-hot (or soft) labels."""

    name = "categorical_crossentropy"

    def per_example(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        if self.from_logits:
            return -R.sum(y_true * N.log_softmax(y_pred, axis=-1), axis=-1)
        p = y_pred / R.sum(y_pred, axis=-1, keepdims=True)
        return -R.sum(y_true * E.log(_clip(p)), axis=-1)


class BinaryCrossentropy(Loss):
    """Binary cross-entropy of probabilities (or logits) against 0/1 labels, mean over the last axis."""

    name = "binary_crossentropy"

    def per_example(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        if self.from_logits:
            return R.mean(N.sigmoid_cross_entropy(y_pred, y_true), axis=-1)
        p = _clip(y_pred)
        return -R.mean(y_true * E.log(p) + (1.0 - y_true) * E.log(1.0 - p), axis=-1)


class MeanSquaredError(Loss):
    """Mean over the last axis of ``(y_true - y_pred)**2``."""

    name = "mean_squared_error"

    def per_example(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return R.mean(E.square(y_pred - y_true), axis=-1)


class MeanAbsoluteError(Loss):
    """Mean over the last axis of ``|y_true - y_pred|``."""

    name = "mean_absolute_error"

    def per_example(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return R.mean(E.abs(y_pred - y_true), axis=-1)


LOSSES: dict[str, type[Loss]] = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy, "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
}


def get_loss(loss: Any) -> Loss:
    """A `Loss` from a Keras name or a loss object.

    Raises:
        InvalidArgumentError: an unknown name, listing the known ones.
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise InvalidArgumentError(f"compile: unknown loss '{loss}'; known: {sorted(LOSSES)}")
        return LOSSES[loss]()
    raise InvalidArgumentError(f"compile: loss must be a name or a kf.nn.losses.Loss; got {loss!r}")


# --------------------------------------------------------------------------- metrics
class Metric:
    """A metric with its History name: ``fn(y_true, y_pred)`` gives per-example values; the metric is their mean.

    Weighted (``compile(weighted_metrics=...)``), it is Keras' weighted mean
    ``sum(values * w) / sum(w)``.
    """

    def __init__(self, name: str, fn: Any):
        self.name, self.fn = name, fn

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return R.mean(self.fn(y_true, y_pred))

    def weighted(self, y_true: Tensor, y_pred: Tensor, sample_weight: Tensor) -> Tensor:
        """``sum(values * w) / sum(w)`` with (batch,) weights broadcast over the values.

        Raises:
            InvalidArgumentError: the metric function returns a scalar (nothing to weight).
        """
        v = self.fn(y_true, y_pred)
        if v.ndim == 0:
            raise InvalidArgumentError(f"compile: weighted metric '{self.name}' must return per-example values; "
                                       "it returns a scalar")
        w = M.broadcast_like(expand_to(E.cast(sample_weight, v.dtype), v.ndim), v)
        return R.sum(v * w) / R.sum(w)

    def __repr__(self) -> str:
        return f"kf.nn.losses.Metric('{self.name}')"


def _sparse_accuracy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return E.cast(E.equal(R.argmax(y_pred, axis=-1), E.cast(y_true, "int64")), y_pred.dtype)


def _categorical_accuracy(y_true: Tensor, y_pred: Tensor) -> Tensor:
    return E.cast(E.equal(R.argmax(y_pred, axis=-1), R.argmax(y_true, axis=-1)), y_pred.dtype)


def _binary_accuracy(y_true: Tensor, y_pred: Tensor, threshold: float = 0.5) -> Tensor:
    # Keras: the mean over the last axis per example
    return R.mean(E.cast(E.equal(E.cast(E.greater(y_pred, threshold), y_pred.dtype), y_true), y_pred.dtype), axis=-1)


METRICS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy", "mse",
           "mae", "mean_squared_error", "mean_absolute_error")


def get_metric(m: Any, loss: Loss) -> Metric:
    """A `Metric` from a Keras name (``"accuracy"`` follows the loss, as in Keras), a `Loss` or a callable.

    Raises:
        InvalidArgumentError: an unknown name, listing the known ones.
    """
    if isinstance(m, Metric):
        return m
    if isinstance(m, Loss):
        return Metric(m.name, m.per_example)
    if isinstance(m, str):
        if m in ("accuracy", "acc"):
            if isinstance(loss, SparseCategoricalCrossentropy):
                return Metric("accuracy", _sparse_accuracy)
            if isinstance(loss, BinaryCrossentropy):
                return Metric("accuracy", _binary_accuracy)
            return Metric("accuracy", _categorical_accuracy)
        table = {"sparse_categorical_accuracy": _sparse_accuracy, "categorical_accuracy": _categorical_accuracy,
                 "binary_accuracy": _binary_accuracy, "mse": MeanSquaredError().per_example,
                 "mae": MeanAbsoluteError().per_example, "mean_squared_error": MeanSquaredError().per_example,
                 "mean_absolute_error": MeanAbsoluteError().per_example}
        if m not in table:
            raise InvalidArgumentError(f"compile: unknown metric '{m}'; known: {list(METRICS)}")
        return Metric(m, table[m])
    if callable(m):
        return Metric(getattr(m, "__name__", "metric"), m)
    raise InvalidArgumentError(f"compile: a metric must be a name, a Loss or a callable; got {m!r}")
