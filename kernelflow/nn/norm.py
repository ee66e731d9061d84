"""Normalisation layers: BatchNormalization and LayerNormalization (over the last axis).

Contents: BatchNormalization, LayerNormalization.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError, ShapeError
from ..graph.ir import Tensor
from ..graph.ops import nn as N
from ..graph.shapes import format_shape
from .layer_base import Layer

__all__ = ["BatchNormalization", "LayerNormalization"]


def _last_axis(layer: Layer, axis: int) -> int:
    if axis != -1:
        raise InvalidArgumentError(f"{type(layer).__name__}: only axis=-1 (channels last) is supported; got {axis}")
    return axis


class BatchNormalization(Layer):
    """Batch normalisation over every axis but the last (Keras' defaults).

    In training the batch's mean and (population) variance normalise the input, and the train
    step moves the moving statistics: ``moving = momentum * moving + (1 - momentum) * batch``
    (update ops in the graph collection ``"update_ops"``, which the optimiser runs). In inference
    (``training=False``: evaluate, predict, export) the moving statistics normalise and nothing
    changes.

    Args:
        axis: -1 (the channels).
        momentum: weight of the old moving statistics.
        epsilon: added to the variance.
        center: learn an offset ``beta``.
        scale: learn a scale ``gamma``.
    """

    uses_training = True
    inference_when_frozen = True

    def __init__(self, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3, center: bool = True,
                 scale: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.axis = _last_axis(self, axis)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)

    def build(self, input_shape: Any, dtype: str) -> None:
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ShapeError(f"layer '{self.name}' (BatchNormalization): expected (batch, ..., channels) with known "
                             f"channels; got shape {format_shape(input_shape)}")
        c = (int(input_shape[-1]),)
        self.gamma = self.add_weight("gamma", c, "ones", dtype) if self.scale else None
        self.beta = self.add_weight("beta", c, "zeros", dtype) if self.center else None
        self.add_weight("moving_mean", c, "zeros", dtype, trainable=False)
        self.add_weight("moving_variance", c, "ones", dtype, trainable=False)

    def call(self, x: Tensor, training: Any) -> Tensor:
        return N.batch_norm(x, self.gamma, self.beta, self.moving_mean, self.moving_variance, training,
                            momentum=self.momentum, epsilon=self.epsilon, name="bn")

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum, "epsilon": self.epsilon,
                "center": self.center, "scale": self.scale}


class LayerNormalization(Layer):
    """Normalise each example over its last axis, then scale and offset (Keras' defaults, epsilon 1e-3).

    Args:
        axis: -1.
        epsilon: added to the variance.
        center: learn an offset ``beta``.
        scale: learn a scale ``gamma``.
    """

    def __init__(self, axis: int = -1, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 **kwargs: Any):
        super().__init__(**kwargs)
        self.axis = _last_axis(self, axis)
        self.epsilon, self.center, self.scale = float(epsilon), bool(center), bool(scale)

    def build(self, input_shape: Any, dtype: str) -> None:
        if input_shape[-1] is None:
            raise ShapeError(f"layer '{self.name}' (LayerNormalization): the last dim must be known; got shape "
                             f"{format_shape(input_shape)}")
        c = (int(input_shape[-1]),)
        self.gamma = self.add_weight("gamma", c, "ones", dtype) if self.scale else None
        self.beta = self.add_weight("beta", c, "zeros", dtype) if self.center else None

    def call(self, x: Tensor, training: Any) -> Tensor:
        return N.layer_norm(x, self.gamma, self.beta, axis=-1, epsilon=self.epsilon, name="ln")

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale}
