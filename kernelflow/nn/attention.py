"""Multi-head attention (Keras' MultiHeadAttention, its weight shapes and its einsum layout).

Contents: MultiHeadAttention.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import InvalidArgumentError, ShapeError
from ..graph.ir import Tensor
from ..graph.ops import linalg as L
from ..graph.ops import nn as N
from ..graph.shapes import format_shape
from .core import _positive
from .layer_base import Layer

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(Layer):
    """Scaled dot-product attention with ``num_heads`` heads (Vaswani et al. 2017).

    Called as ``mha(query, value)`` (``key`` defaults to ``value``; self-attention:
    ``mha(x, x)``) on (batch, steps, features) tensors; the output has the query's shape
    unless ``output_shape`` is given.

    Args:
        num_heads: heads.
        key_dim: size of each head for query and key.
        value_dim: size of each head for value (default key_dim).
        dropout: dropout rate on the attention weights (training only).
        use_bias: biases in the projections.
        output_shape: last dim of the output (default: the query's).
        kernel_initializer, bias_initializer: as `kernelflow.nn.Dense`.
    """

    def __init__(self, num_heads: int, key_dim: int, value_dim: int | None = None, dropout: float = 0.0,
                 use_bias: bool = True, output_shape: int | None = None, kernel_initializer: Any = "glorot_uniform",
                 bias_initializer: Any = "zeros", **kwargs: Any):
        super().__init__(**kwargs)
        self.num_heads = _positive("MultiHeadAttention", "num_heads", num_heads)
        self.key_dim = _positive("MultiHeadAttention", "key_dim", key_dim)
        self.value_dim = _positive("MultiHeadAttention", "value_dim", value_dim or key_dim)
        self.dropout = float(dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise InvalidArgumentError(f"MultiHeadAttention: dropout must be in [0, 1); got {dropout}")
        self.use_bias = bool(use_bias)
        self.output_shape_ = output_shape
        self.kernel_initializer, self.bias_initializer = kernel_initializer, bias_initializer

    @property
    def uses_training(self) -> bool:
        return self.dropout > 0

    def __call__(self, query: Any, value: Any = None, key: Any = None, training: Any = None) -> Any:
        """``mha(query, value, key=None, training=None)``; a list ``[query, value(, key)]`` works too."""
        if isinstance(query, (list, tuple)):
            return super().__call__(list(query), training=training)
        value = query if value is None else value
        parts = [query, value] if key is None else [query, value, key]
        return super().__call__(parts, training=training)

    def build(self, input_shape: Any, dtype: str) -> None:
        for i, s in enumerate(input_shape):
            if len(s) != 3 or s[-1] is None:
                what = ("query", "value", "key")[i]
                raise ShapeError(f"layer '{self.name}' (MultiHeadAttention): {what} must be (batch, steps, features) "
                                 f"with known features; got shape {format_shape(s)}")
        dq, dv = input_shape[0][-1], input_shape[1][-1]
        dk = input_shape[2][-1] if len(input_shape) > 2 else dv
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        dout = self.output_shape_ or dq
        ki, bi = self.kernel_initializer, self.bias_initializer
        for part, d_in, width in (("query", dq, kd), ("key", dk, kd), ("value", dv, vd)):
            self.add_weight(f"{part}/kernel", (d_in, h, width), ki, dtype)
            if self.use_bias:
                self.add_weight(f"{part}/bias", (h, width), bi, dtype)
        self.add_weight("attention_output/kernel", (h, vd, dout), ki, dtype)
        if self.use_bias:
            self.add_weight("attention_output/bias", (dout,), bi, dtype)

    def _project(self, x: Tensor, part: str) -> Tensor:
        y = L.einsum("abc,cde->abde", x, getattr(self, f"{part}_kernel"))      # (batch, steps, heads, dim)
        return y + getattr(self, f"{part}_bias") if self.use_bias else y

    def call(self, xs: Any, training: Any) -> Tensor:
        query, value = xs[0], xs[1]
        key = xs[2] if len(xs) > 2 else value
        q = self._project(query, "query") * (1.0 / math.sqrt(self.key_dim))
        k = self._project(key, "key")
        v = self._project(value, "value")
        scores = L.einsum("aecd,abcd->acbe", k, q)                                # (batch, heads, T, S)
        weights = N.softmax(scores, axis=-1)
        if self.dropout:
            weights = N.dropout(weights, self.dropout, training=training, seed=self.seed)
        ctx = L.einsum("acbe,aecd->abcd", weights, v)                              # (batch, T, heads, vdim)
        out = L.einsum("abcd,cde->abe", ctx, self.attention_output_kernel)
        return out + self.attention_output_bias if self.use_bias else out

    def get_config(self) -> dict:
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "dropout": self.dropout, "use_bias": self.use_bias,
                "output_shape": self.output_shape_, "kernel_initializer": self.kernel_initializer,
                "bias_initializer": self.bias_initializer, "seed": self.seed}
