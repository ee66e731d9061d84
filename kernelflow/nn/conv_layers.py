"""Convolution and pooling layers on channels-last data (NWC, NHWC), Keras' argument names.

Conv1D is Conv2D over a height-1 image (no new op); Conv2DTranspose uses the
``conv2d_transpose`` op.

Contents: Conv1D, Conv2D, Conv2DTranspose, MaxPool2D, AvgPool2D, GlobalAvgPool2D.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidArgumentError, ShapeError
from ..graph.ir import Tensor
from ..graph.ops import conv as C
from ..graph.ops import movement as M
from ..graph.ops import reduce as R
from ..graph.shapes import format_shape
from .core import _positive, _Weighted
from .layer_base import UNSET, Layer, resolve

__all__ = ["Conv1D", "Conv2D", "Conv2DTranspose", "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D"]


def _pair(layer: str, what: str, v: Any) -> tuple[int, int]:
    t = (v, v) if isinstance(v, int) else tuple(v)
    if len(t) != 2 or not all(isinstance(a, int) and a >= 1 for a in t):
        raise InvalidArgumentError(f"{layer}: {what} must be a positive int or a pair of them; got {v!r}")
    return t  # type: ignore[return-value]


def _padding(layer: str, p: Any) -> str:
    if not isinstance(p, str) or p.lower() not in ("valid", "same"):
        raise InvalidArgumentError(f"{layer}: padding must be 'valid' or 'same'; got {p!r}")
    return p.lower()


def _channels(layer: Layer, input_shape: Any, rank: int, kind: str) -> int:
    if len(input_shape) != rank or input_shape[-1] is None:
        raise ShapeError(f"layer '{layer.name}' ({type(layer).__name__}): expected {kind} input with known "
                         f"channels; got shape {format_shape(input_shape)}")
    return int(input_shape[-1])


class Conv2D(_Weighted):
    """2-D convolution of NHWC input with an HWIO kernel, plus bias, then the activation.

    Args:
        filters: output channels.
        kernel_size: an int or (height, width).
        strides: an int or a pair.
        padding: ``"valid"`` (default, as Keras) or ``"same"``.
        dilation_rate: an int or a pair.
        activation, use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
            bias_regularizer: as `kernelflow.nn.Dense`.
    """

    input_ndim = 4

    def __init__(self, filters: int, kernel_size: Any, strides: Any = 1, padding: Any = UNSET,
                 dilation_rate: Any = 1, activation: Any = UNSET, **kwargs: Any):
        super().__init__(activation=activation, **kwargs)
        name = type(self).__name__
        self.filters = _positive(name, "filters", filters)
        self.kernel_size = self._size(name, "kernel_size", kernel_size)
        self.strides = self._size(name, "strides", strides)
        self.padding = _padding(name, resolve("padding", padding, "valid"))
        self.dilation_rate = self._size(name, "dilation_rate", dilation_rate)

    @staticmethod
    def _size(layer: str, what: str, v: Any) -> Any:
        return _pair(layer, what, v)

    def build(self, input_shape: Any, dtype: str) -> None:
        c = _channels(self, input_shape, 4, "an NHWC")
        self._kernel_and_bias((*self.kernel_size, c, self.filters), self.filters, dtype)

    def call(self, x: Tensor, training: Any) -> Tensor:
        y = C.conv2d(x, self.kernel, strides=self.strides, padding=self.padding, dilations=self.dilation_rate)
        if self.bias is not None:
            y = y + self.bias
        return self._activate(y)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "dilation_rate": list(self.dilation_rate)}


class Conv1D(Conv2D):
    """1-D convolution of (batch, steps, channels) input with a (width, in, out) kernel.

    Args: as `Conv2D`, with ints for kernel_size, strides and dilation_rate.
    """

    input_ndim = 3

    @staticmethod
    def _size(layer: str, what: str, v: Any) -> Any:
        w = v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v
        if not isinstance(w, int) or w < 1:
            raise InvalidArgumentError(f"{layer}: {what} must be a positive int; got {v!r}")
        return w

    def build(self, input_shape: Any, dtype: str) -> None:
        c = _channels(self, input_shape, 3, "a (batch, steps, channels)")
        self._kernel_and_bias((self.kernel_size, c, self.filters), self.filters, dtype)

    def call(self, x: Tensor, training: Any) -> Tensor:
        k = M.expand_dims(self.kernel, 0)                            # (1, width, in, out)
        y = C.conv2d(M.expand_dims(x, 1), k, strides=(1, self.strides), padding=self.padding,
                     dilations=(1, self.dilation_rate))
        y = M.squeeze(y, axis=1)
        if self.bias is not None:
            y = y + self.bias
        return self._activate(y)

    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg.update(kernel_size=self.kernel_size, strides=self.strides, dilation_rate=self.dilation_rate)
        return cfg


class Conv2DTranspose(Conv2D):
    """Transposed 2-D convolution (Keras' Conv2DTranspose): kernel (kh, kw, filters, in_channels).

    Output size per spatial dim: ``in * stride`` with ``"same"``, ``(in - 1) * stride + k`` with
    ``"valid"`` (dilation 1); the input's height and width must be known.
    """

    def build(self, input_shape: Any, dtype: str) -> None:
        c = _channels(self, input_shape, 4, "an NHWC")
        if input_shape[1] is None or input_shape[2] is None:
            raise ShapeError(f"layer '{self.name}' (Conv2DTranspose): height and width must be known; got shape "
                             f"{format_shape(input_shape)}")
        self._kernel_and_bias((*self.kernel_size, self.filters, c), self.filters, dtype)

    def _out(self, n: int, k: int, s: int, d: int) -> int:
        k_eff = (k - 1) * d + 1
        return n * s if self.padding == "same" else (n - 1) * s + k_eff

    def call(self, x: Tensor, training: Any) -> Tensor:
        h, w = x.shape[1], x.shape[2]
        out_hw = (self._out(h, self.kernel_size[0], self.strides[0], self.dilation_rate[0]),
                  self._out(w, self.kernel_size[1], self.strides[1], self.dilation_rate[1]))
        y = C.conv2d_transpose(x, self.kernel, out_hw, strides=self.strides, padding=self.padding,
                               dilations=self.dilation_rate)
        if self.bias is not None:
            y = y + self.bias
        return self._activate(y)


class _Pool2D(Layer):
    input_ndim = 4
    _op: Any = None

    def __init__(self, pool_size: Any = 2, strides: Any = None, padding: Any = "valid", **kwargs: Any):
        super().__init__(**kwargs)
        name = type(self).__name__
        self.pool_size = _pair(name, "pool_size", pool_size)
        self.strides = _pair(name, "strides", strides) if strides is not None else self.pool_size
        self.padding = _padding(name, padding)

    def call(self, x: Tensor, training: Any) -> Tensor:
        return type(self)._op(x, self.pool_size, self.strides, self.padding)

    def get_config(self) -> dict:
        return {**super().get_config(), "pool_size": list(self.pool_size), "strides": list(self.strides),
                "padding": self.padding}


class MaxPool2D(_Pool2D):
    """Max over windows of NHWC input (pool_size default 2, strides default pool_size, ``"valid"``)."""

    _op = staticmethod(C.max_pool2d)


class AvgPool2D(_Pool2D):
    """Mean over windows of NHWC input; ``"same"`` border windows average their real elements."""

    _op = staticmethod(C.avg_pool2d)


class GlobalAvgPool2D(Layer):
    """``(batch, h, w, c) -> (batch, c)``: the mean over height and width."""

    input_ndim = 4

    def call(self, x: Tensor, training: Any) -> Tensor:
        return R.mean(x, axis=(1, 2))
