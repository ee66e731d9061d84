"""Core layers: Dense, Activation, Flatten, Reshape, Dropout, Add, Concatenate, Embedding.

Contents: Dense, Activation, Flatten, Reshape, Dropout, Add, Concatenate, Embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidArgumentError, ShapeError
from ..graph.ir import Tensor
from ..graph.ops import movement as M
from ..graph.ops import nn as N
from ..graph.shapes import format_shape
from .layer_base import UNSET, Layer, activation_name, get_activation, get_regularizer, resolve

__all__ = ["Dense", "Activation", "Flatten", "Reshape", "Dropout", "Add", "Concatenate", "Embedding"]


def _positive(layer: str, what: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise InvalidArgumentError(f"{layer}: {what} must be a positive integer; got {v!r}")
    return v


class _Weighted(Layer):
    """A layer with a kernel and an optional bias, their initialisers and regularizers."""

    def __init__(self, activation: Any = UNSET, use_bias: Any = UNSET, kernel_initializer: Any = UNSET,
                 bias_initializer: Any = UNSET, kernel_regularizer: Any = UNSET, bias_regularizer: Any = UNSET,
                 kernel_init: Any = UNSET, bias_init: Any = UNSET, default_kernel: str = "glorot_uniform",
                 **kwargs: Any):
        super().__init__(**kwargs)
        if kernel_init is not UNSET:
            kernel_initializer = kernel_init
        if bias_init is not UNSET:
            bias_initializer = bias_init
        self.activation = resolve("activation", activation, None)
        get_activation(self.activation)  # check it now, not at first use
        self.use_bias = bool(resolve("use_bias", use_bias, True))
        self.kernel_initializer = resolve("kernel_initializer", kernel_initializer, default_kernel)
        self.bias_initializer = resolve("bias_initializer", bias_initializer, "zeros")
        self.kernel_regularizer = get_regularizer(resolve("kernel_regularizer", kernel_regularizer, None))
        self.bias_regularizer = get_regularizer(resolve("bias_regularizer", bias_regularizer, None))

    def _activate(self, y: Tensor) -> Tensor:
        f = get_activation(self.activation)
        return f(y) if f is not None else y

    def get_config(self) -> dict:
        return {**super().get_config(), "activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer, "bias_initializer": self.bias_initializer,
                "kernel_regularizer": self.kernel_regularizer, "bias_regularizer": self.bias_regularizer,
                "seed": self.seed}

    def _kernel_and_bias(self, kshape: tuple, channels: int, dtype: str) -> None:
        self.kernel = self.add_weight("kernel", kshape, self.kernel_initializer, dtype,
                                      regularizer=self.kernel_regularizer)
        self.bias = (self.add_weight("bias", (channels,), self.bias_initializer, dtype,
                                     regularizer=self.bias_regularizer) if self.use_bias else None)


class Dense(_Weighted):
    """``activation(x @ kernel + bias)`` over the last axis (Keras' Dense).

    Args:
        units: output features.
        activation: a name (``"relu"``), a callable (``kf.relu``) or None.
        use_bias: add a bias.
        kernel_initializer: a name (``"glorot_uniform"``) or ``f(shape, seed=, dtype=)``.
        bias_initializer: as kernel_initializer (default ``"zeros"``).
        kernel_regularizer: a `kernelflow.nn.Regularizer`, ``"l1"``, ``"l2"`` or None.
        bias_regularizer: as kernel_regularizer.
        **kwargs: `Layer`'s (name, trainable, input_shape, seed, dtype).
    """

    def __init__(self, units: int, activation: Any = UNSET, **kwargs: Any):
        super().__init__(activation=activation, **kwargs)
        self.units = _positive("Dense", "units", units)

    def build(self, input_shape: Any, dtype: str) -> None:
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ShapeError(f"layer '{self.name}' (Dense): expected an input (batch, ..., features) with known "
                             f"features; got shape {format_shape(input_shape)}")
        self._kernel_and_bias((input_shape[-1], self.units), self.units, dtype)

    def call(self, x: Tensor, training: Any) -> Tensor:
        y = x @ self.kernel
        if self.bias is not None:
            y = y + self.bias
        return self._activate(y)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


class Activation(Layer):
    """Applies an activation: ``Activation("relu")``."""

    def __init__(self, activation: Any, **kwargs: Any):
        super().__init__(**kwargs)
        get_activation(activation)
        self.activation = activation

    def call(self, x: Tensor, training: Any) -> Tensor:
        f = get_activation(self.activation)
        return f(x) if f is not None else x

    def get_config(self) -> dict:
        return {**super().get_config(), "activation": self.activation}


class Flatten(Layer):
    """``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)``; the dims after the batch must be known."""

    def call(self, x: Tensor, training: Any) -> Tensor:
        if x.ndim < 2 or any(d is None for d in x.shape[1:]):
            raise ShapeError(f"layer '{self.name}' (Flatten): dims after the batch must be known; got shape "
                             f"{format_shape(x.shape)}")
        return M.flatten(x)


class Reshape(Layer):
    """``(batch, ...) -> (batch, *target_shape)``; one entry may be -1."""

    def __init__(self, target_shape: Sequence[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(d) for d in target_shape)

    def call(self, x: Tensor, training: Any) -> Tensor:
        return M.reshape(x, (-1, *self.target_shape))

    def get_config(self) -> dict:
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class Dropout(Layer):
    """Inverted dropout in training, the identity in inference.

    Args:
        rate: drop probability in [0, 1).
        seed: op seed of the mask.
    """

    uses_training = True

    def __init__(self, rate: float, **kwargs: Any):
        super().__init__(**kwargs)
        self.rate = float(rate)
        if not 0.0 <= self.rate < 1.0:
            raise InvalidArgumentError(f"Dropout: rate must be in [0, 1); got {rate}")

    def call(self, x: Tensor, training: Any) -> Tensor:
        return N.dropout(x, self.rate, training=training, seed=self.seed)

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


class _Merge(Layer):
    def _check_list(self, xs: Any) -> list[Tensor]:
        if not isinstance(xs, (list, tuple)) or len(xs) < 2:
            raise InvalidArgumentError(f"layer '{self.name}' ({type(self).__name__}): expects a list of at least "
                                       f"two tensors; got {xs!r}")
        return list(xs)


class Add(_Merge):
    """Elementwise sum of a list of tensors of one shape."""

    def call(self, xs: Any, training: Any) -> Tensor:
        xs = self._check_list(xs)
        first = xs[0]
        for t in xs[1:]:
            if len(t.shape) != len(first.shape) or any(a is not None and b is not None and a != b
                                                        for a, b in zip(t.shape, first.shape)):
                raise ShapeError(f"layer '{self.name}' (Add): inputs must have one shape; got "
                                 f"{[format_shape(u.shape) for u in xs]}")
        out = first
        for t in xs[1:]:
            out = out + t
        return out


class Concatenate(_Merge):
    """Concatenation of a list of tensors along ``axis`` (default the last)."""

    def __init__(self, axis: int = -1, **kwargs: Any):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def call(self, xs: Any, training: Any) -> Tensor:
        return M.concat(self._check_list(xs), axis=self.axis)

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis}


class Embedding(Layer):
    """Rows of a trainable ``(input_dim, output_dim)`` table at integer ids.

    Args:
        input_dim: vocabulary size.
        output_dim: embedding width.
        embeddings_initializer: default Keras' ``uniform(-0.05, 0.05)``.
        embeddings_regularizer: a regularizer of the table, or None.
    """

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer: Any = "random_uniform",
                 embeddings_regularizer: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.input_dim = _positive("Embedding", "input_dim", input_dim)
        self.output_dim = _positive("Embedding", "output_dim", output_dim)
        self.embeddings_initializer = embeddings_initializer
        self.embeddings_regularizer = get_regularizer(embeddings_regularizer)

    def build(self, input_shape: Any, dtype: str) -> None:
        self.embeddings = self.add_weight("embeddings", (self.input_dim, self.output_dim),
                                          self.embeddings_initializer, dtype, regularizer=self.embeddings_regularizer)

    def call(self, ids: Tensor, training: Any) -> Tensor:
        if ids.dtype not in ("int32", "int64", "uint8", "int16", "int8"):
            raise InvalidArgumentError(f"layer '{self.name}' (Embedding): ids must be integers; got {ids.dtype}")
        return N.embedding(self.embeddings, ids)

    def get_config(self) -> dict:
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": self.embeddings_initializer,
                "embeddings_regularizer": self.embeddings_regularizer, "seed": self.seed}


_ = activation_name
