"""Layer builders: functions that create their variables in the graph and return the output.

    h = kf.layers.dense(x, 128, activation=kf.relu, name="dense1", seed=0)

Variables live under the layer's name scope (``dense1/w``, ``dense1/b``), initialised at once.

The layer classes (``kf.layers.Dense``...) are re-exported here from their modules.

Contents: dense, conv2d, and the classes of `kernelflow.nn`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.ir import Tensor
from . import init as kinit
from .attention import MultiHeadAttention
from .conv_layers import AvgPool2D, Conv1D, Conv2D, Conv2DTranspose, GlobalAvgPool2D, MaxPool2D
from .core import Activation, Add, Concatenate, Dense, Dropout, Embedding, Flatten, Reshape
from .layer_base import Input, Layer
from .norm import BatchNormalization, LayerNormalization
from .recurrent import GRU, LSTM, Bidirectional, SimpleRNN

__all__ = ["dense", "conv2d", "Layer", "Input", "Dense", "Conv1D", "Conv2D", "Conv2DTranspose", "MaxPool2D",
           "AvgPool2D", "GlobalAvgPool2D", "Flatten", "Reshape", "Dropout", "BatchNormalization", "LayerNormalization",
           "Embedding", "MultiHeadAttention", "Add", "Concatenate", "Activation", "SimpleRNN", "LSTM", "GRU",
           "Bidirectional"]


def dense(x: Tensor, units: int, activation: Callable[[Tensor], Tensor] | None = None, name: str = "dense",
          seed: int | None = None, use_bias: bool = True,
          kernel_init: Callable[..., Any] = kinit.glorot_uniform) -> Tensor:
    """A fully connected layer: ``activation(x @ w + b)``.

    Args:
        x: (batch, features) float input.
        units: output features.
        activation: applied to the output (e.g. ``kf.relu``), or None.
        name: name scope of the layer's nodes and variables.
        seed: seed of the kernel initialiser.
        use_bias: add a bias vector ``b`` (zeros at start).
        kernel_init: ``kernel_init(shape, seed=..., dtype=...)`` -> initialiser of ``w``.

    Returns:
        (batch, units) tensor of x's dtype.
    """
    if x.ndim != 2 or x.shape[-1] is None:
        raise InvalidArgumentError(
            f"dense: expected a (batch, features) input with known features; got shape {x.shape}")
    g = x.graph
    with g.name_scope(name):
        w = g.variable(kernel_init((x.shape[-1], units), seed=seed, dtype=x.dtype), name="w")
        y = x @ w
        if use_bias:
            y = y + g.variable(np.zeros(units, x.dtype), name="b")
        return activation(y) if activation is not None else y


def conv2d(x: Tensor, filters: int, kernel_size: int | tuple[int, int], strides: int = 1, padding: str = "SAME",
           activation: Callable[[Tensor], Tensor] | None = None, name: str = "conv", seed: int | None = None,
           kernel_init: Callable[..., Any] = kinit.he_normal) -> Tensor:
    """A 2-D convolution layer on NHWC input with an HWIO kernel and a bias.

    Args:
        x: (batch, height, width, channels) float input.
        filters: output channels.
        kernel_size: window size, an int or (height, width).
        strides: window step.
        padding: "SAME" or "VALID" (TensorFlow's meaning).
        activation: applied to the output, or None.
        name: name scope of the layer.
        seed: seed of the kernel initialiser.
        kernel_init: initialiser factory of the kernel.

    Returns:
        (batch, out_height, out_width, filters) tensor.
    """
    from ..graph.ops import nn as ops_nn

    if x.ndim != 4 or x.shape[-1] is None:
        raise InvalidArgumentError(f"conv2d layer: expected NHWC input with known channels; got shape {x.shape}")
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    g = x.graph
    with g.name_scope(name):
        k = g.variable(kernel_init((kh, kw, x.shape[-1], filters), seed=seed, dtype=x.dtype), name="w")
        b = g.variable(np.zeros(filters, x.dtype), name="b")
        y = ops_nn.conv2d(x, k, strides=strides, padding=padding) + b
        return activation(y) if activation is not None else y
