"""Convolution and pooling ops, NHWC input and HWIO filters (TensorFlow's layout).

Padding is ``"VALID"`` (none) or ``"SAME"`` as TensorFlow computes it: the output has
``ceil(in / stride)`` positions and the total padding
``max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0)`` is split with the smaller half
first. The gradient kernels are primitives of their own (``conv2d_backprop_input``, which
is ``conv2d_transpose``, and ``conv2d_backprop_filter``), each with a vjp, so second
derivatives work.

Contents: window_geometry, conv2d, conv2d_transpose, conv2d_backprop_input,
conv2d_backprop_filter, max_pool2d, avg_pool2d (and their gradient ops).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import define_op
from ..shapes import FLOATING, format_shape

__all__ = ["conv2d", "conv2d_transpose", "max_pool2d", "avg_pool2d"]

PADDINGS = ("VALID", "SAME")


# --------------------------------------------------------------------------- geometry
def window_geometry(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """Output length and (low, high) padding of one spatial axis.

    Args:
        size: input length.
        k: window (filter) length.
        stride: step between windows.
        dilation: step between taps of one window.
        padding: ``"VALID"`` or ``"SAME"``.

    Returns:
        ``(out, pad_lo, pad_hi)``; ``out`` is 0 or less when a VALID window does not fit.
    """
    eff = (k - 1) * dilation + 1
    if padding == "VALID":
        return (size - eff) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return out, total // 2, total - total // 2


def _pair(op: str, what: str, v: Any) -> tuple[int, int]:
    """``(a, b)`` from an int, a pair, or TF's 4-element ``[1, a, b, 1]``."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    try:
        t = tuple(v)
    except TypeError:
        t = ()
    if len(t) == 4 and t[0] == 1 and t[3] == 1:
        t = t[1:3]
    if len(t) != 2 or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in t):
        raise InvalidArgumentError(f"{op}: {what} must be a positive int or a pair of them; got {v!r}")
    return int(t[0]), int(t[1])


def _padding(op: str, padding: Any) -> str:
    p = padding.upper() if isinstance(padding, str) else padding
    if p not in PADDINGS:
        raise InvalidArgumentError(f"{op}: padding must be 'SAME' or 'VALID'; got {padding!r}")
    return p


def _rank4(op: str, what: str, aval: Any, layout: str) -> None:
    if aval.ndim != 4:
        raise ShapeError(f"{op}: {what} must have rank 4 ({layout}); got {what}.shape={format_shape(aval.shape)}")


def _spatial_out(op: str, in_hw: Sequence[int | None], k_hw: Sequence[int], strides: Any, dilations: Any,
                 padding: str) -> tuple[int | None, int | None]:
    out: list[int | None] = []
    for size, k, s, d in zip(in_hw, k_hw, strides, dilations):
        if size is None:
            out.append(None)
            continue
        n = window_geometry(size, k, s, d, padding)[0]
        if n <= 0:
            raise ShapeError(f"{op}: the window {tuple(k_hw)} (dilations {tuple(dilations)}) does not fit the "
                             f"input's spatial dims {tuple(in_hw)} with padding 'VALID'")
        out.append(n)
    return out[0], out[1]


def _check_attrs(op: str, strides: Any, padding: Any, dilations: Any = 1) -> tuple:
    return _pair(op, "strides", strides), _padding(op, padding), _pair(op, "dilations", dilations)


def _float_same(op: str, *avals: Any) -> str:
    for a in avals:
        if a.dtype not in FLOATING:
            raise InvalidArgumentError(f"{op}: expected floating inputs; got {a.dtype}")
    if len({a.dtype for a in avals}) > 1:
        raise InvalidArgumentError(f"{op}: inputs must share one dtype; got {', '.join(a.dtype for a in avals)}")
    return avals[0].dtype


def _filter_hw(op: str, f: Any) -> tuple[int, int]:
    _rank4(op, "filters", f, "HWIO")
    if f.shape[0] is None or f.shape[1] is None:
        raise ShapeError(f"{op}: the filter's spatial dims must be known; got filters.shape={format_shape(f.shape)}")
    return f.shape[0], f.shape[1]


def _same_dim(a: int | None, b: int | None) -> bool:
    return a is None or b is None or a == b


# --------------------------------------------------------------------------- conv2d
def _conv2d_shape(x: Any, f: Any, strides: Any, padding: Any, dilations: Any) -> tuple:
    strides, padding, dilations = _check_attrs("conv2d", strides, padding, dilations)
    _rank4("conv2d", "x", x, "NHWC")
    k_hw = _filter_hw("conv2d", f)
    if not _same_dim(x.shape[3], f.shape[2]):
        raise ShapeError(f"conv2d: input channels {x.shape[3]} must equal filter in-channels {f.shape[2]}; "
                         f"got x.shape={format_shape(x.shape)}, filters.shape={format_shape(f.shape)}")
    oh, ow = _spatial_out("conv2d", x.shape[1:3], k_hw, strides, dilations, padding)
    return (x.shape[0], oh, ow, f.shape[3])


def _conv2d_vjp(g: Tensor, out: Tensor, x: Tensor, f: Tensor, **attrs: Any) -> tuple:
    return (conv2d_backprop_input_op.bind(g, f, x, **attrs),
            conv2d_backprop_filter_op.bind(x, g, filter_hw=(f.shape[0], f.shape[1]), **attrs))


_conv_attrs = {"strides": (1, 1), "padding": "VALID", "dilations": (1, 1)}
# A primitive for speed: im2col through a strided view and one tensordot (BLAS).
conv2d_op = define_op("conv2d", ("x", "filters"), attrs=dict(_conv_attrs), shape_rule=_conv2d_shape,
                      dtype_rule=lambda x, f, **a: _float_same("conv2d", x, f), vjp=_conv2d_vjp)


def _backprop_input_shape(dy: Any, f: Any, like: Any, strides: Any, padding: Any, dilations: Any) -> tuple:
    op = "conv2d_backprop_input"
    strides, padding, dilations = _check_attrs(op, strides, padding, dilations)
    _rank4(op, "dy", dy, "NHWC")
    _rank4(op, "x", like, "NHWC")
    k_hw = _filter_hw(op, f)
    if not _same_dim(dy.shape[3], f.shape[3]) or not _same_dim(like.shape[3], f.shape[2]):
        raise ShapeError(f"{op}: channels must match the filter; got dy.shape={format_shape(dy.shape)}, "
                         f"filters.shape={format_shape(f.shape)}, x.shape={format_shape(like.shape)}")
    expect = _spatial_out(op, like.shape[1:3], k_hw, strides, dilations, padding)
    if not all(_same_dim(a, b) for a, b in zip(expect, dy.shape[1:3])):
        raise ShapeError(f"{op}: dy's spatial dims {dy.shape[1:3]} differ from the conv2d output {expect} of "
                         f"x.shape={format_shape(like.shape)}")
    return like.shape


def _backprop_input_vjp(gg: Tensor, out: Tensor, dy: Tensor, f: Tensor, like: Tensor, **attrs: Any) -> tuple:
    # backprop_input is linear in dy and in f: its adjoints are conv2d and backprop_filter.
    return (conv2d_op.bind(gg, f, **attrs),
            conv2d_backprop_filter_op.bind(gg, dy, filter_hw=(f.shape[0], f.shape[1]), **attrs), None)


conv2d_backprop_input_op = define_op(
    "conv2d_backprop_input", ("dy", "filters", "x_like"), attrs=dict(_conv_attrs), shape_rule=_backprop_input_shape,
    dtype_rule=lambda dy, f, like, **a: _float_same("conv2d_backprop_input", dy, f), vjp=_backprop_input_vjp,
    doc="gradient of conv2d w.r.t. its input, shaped like x_like at run time")


def _transpose_shape(x: Any, f: Any, output_hw: Any, strides: Any, padding: Any, dilations: Any) -> tuple:
    op = "conv2d_transpose"
    strides, padding, dilations = _check_attrs(op, strides, padding, dilations)
    output_hw = _pair(op, "output_shape (H, W)", output_hw)
    _rank4(op, "x", x, "NHWC")
    k_hw = _filter_hw(op, f)
    if not _same_dim(x.shape[3], f.shape[3]):
        raise ShapeError(f"{op}: input channels {x.shape[3]} must equal filter out-channels {f.shape[3]} (filters "
                         f"are HWOI here); got x.shape={format_shape(x.shape)}, filters.shape={format_shape(f.shape)}")
    expect = _spatial_out(op, output_hw, k_hw, strides, dilations, padding)
    if not all(_same_dim(a, b) for a, b in zip(expect, x.shape[1:3])):
        raise ShapeError(f"{op}: output_shape {output_hw} does not match the input: conv2d of it with these "
                         f"strides/padding gives spatial dims {expect}, but x.shape={format_shape(x.shape)}")
    return (x.shape[0], output_hw[0], output_hw[1], f.shape[2])


def _transpose_vjp(gg: Tensor, out: Tensor, x: Tensor, f: Tensor, output_hw: Any, **attrs: Any) -> tuple:
    return (conv2d_op.bind(gg, f, **attrs),
            conv2d_backprop_filter_op.bind(gg, x, filter_hw=(f.shape[0], f.shape[1]), **attrs))


conv2d_transpose_op = define_op(
    "conv2d_transpose", ("x", "filters"), attrs={"output_hw": (1, 1), **_conv_attrs}, shape_rule=_transpose_shape,
    dtype_rule=lambda x, f, **a: _float_same("conv2d_transpose", x, f), vjp=_transpose_vjp,
    doc="transposed convolution: conv2d_backprop_input with a static output size")


def _backprop_filter_shape(x: Any, dy: Any, filter_hw: Any, strides: Any, padding: Any, dilations: Any) -> tuple:
    op = "conv2d_backprop_filter"
    strides, padding, dilations = _check_attrs(op, strides, padding, dilations)
    k_hw = _pair(op, "filter_hw", filter_hw)
    _rank4(op, "x", x, "NHWC")
    _rank4(op, "dy", dy, "NHWC")
    expect = _spatial_out(op, x.shape[1:3], k_hw, strides, dilations, padding)
    if not all(_same_dim(a, b) for a, b in zip(expect, dy.shape[1:3])) or not _same_dim(x.shape[0], dy.shape[0]):
        raise ShapeError(f"{op}: dy.shape={format_shape(dy.shape)} is not the conv2d output of "
                         f"x.shape={format_shape(x.shape)} (spatial dims {expect})")
    return (k_hw[0], k_hw[1], x.shape[3], dy.shape[3])


def _backprop_filter_vjp(gg: Tensor, out: Tensor, x: Tensor, dy: Tensor, filter_hw: Any, **attrs: Any) -> tuple:
    return (conv2d_backprop_input_op.bind(dy, gg, x, **attrs), conv2d_op.bind(x, gg, **attrs))


conv2d_backprop_filter_op = define_op(
    "conv2d_backprop_filter", ("x", "dy"), attrs={"filter_hw": (1, 1), **_conv_attrs},
    shape_rule=_backprop_filter_shape, dtype_rule=lambda x, dy, **a: _float_same("conv2d_backprop_filter", x, dy),
    vjp=_backprop_filter_vjp, doc="gradient of conv2d w.r.t. its filters")


# --------------------------------------------------------------------------- pooling
_pool_attrs = {"ksize": (2, 2), "strides": (2, 2), "padding": "VALID"}


def _pool_shape(op: str, x: Any, ksize: Any, strides: Any, padding: Any) -> tuple:
    ksize, strides, padding = _pair(op, "size", ksize), _pair(op, "strides", strides), _padding(op, padding)
    _rank4(op, "x", x, "NHWC")
    oh, ow = _spatial_out(op, x.shape[1:3], ksize, strides, (1, 1), padding)
    return (x.shape[0], oh, ow, x.shape[3])


def _pool_dtype(op: str) -> Any:
    return lambda *avals, **attrs: _float_same(op, *avals)


def _max_pool_vjp(g: Tensor, out: Tensor, x: Tensor, **attrs: Any) -> tuple:
    return (max_pool2d_grad_op.bind(x, out, g, **attrs),)


# Primitives for speed: a loop over window offsets on strided slices, no window copies.
max_pool2d_op = define_op("max_pool2d", ("x",), attrs=dict(_pool_attrs), vjp=_max_pool_vjp,
                          shape_rule=lambda x, **a: _pool_shape("max_pool2d", x, **a),
                          dtype_rule=_pool_dtype("max_pool2d"))


def _max_pool_grad_shape(x: Any, out: Any, g: Any, **attrs: Any) -> tuple:
    expect = _pool_shape("max_pool2d_grad", x, **attrs)
    for what, a in (("out", out), ("g", g)):
        if a.ndim != 4 or not all(_same_dim(p, q) for p, q in zip(a.shape, expect)):
            raise ShapeError(f"max_pool2d_grad: {what}.shape={format_shape(a.shape)} is not the pooled shape "
                             f"{format_shape(expect)}")
    return x.shape


# Routes g to the first maximum of each window (row-major order), as TensorFlow does. It is
# linear in g: its adjoint picks gg at those same positions (max_pool2d_grad_grad).
max_pool2d_grad_op = define_op(
    "max_pool2d_grad", ("x", "out", "g"), attrs=dict(_pool_attrs), shape_rule=_max_pool_grad_shape,
    dtype_rule=_pool_dtype("max_pool2d_grad"),
    vjp=lambda gg, r, x, out, g, **a: (None, None, max_pool2d_grad_grad_op.bind(x, out, gg, **a)))
max_pool2d_grad_grad_op = define_op(
    "max_pool2d_grad_grad", ("x", "out", "gg"), attrs=dict(_pool_attrs),
    shape_rule=lambda x, out, gg, **a: _pool_shape("max_pool2d_grad_grad", x, **a),
    dtype_rule=_pool_dtype("max_pool2d_grad_grad"),
    vjp=lambda g, r, x, out, gg, **a: (None, None, max_pool2d_grad_op.bind(x, out, g, **a)),
    doc="gg (shaped like x) read at the first maximum of each pooling window")

# SAME windows at the border divide by the number of real (unpadded) elements, as TF does.
avg_pool2d_op = define_op("avg_pool2d", ("x",), attrs=dict(_pool_attrs),
                          shape_rule=lambda x, **a: _pool_shape("avg_pool2d", x, **a),
                          dtype_rule=_pool_dtype("avg_pool2d"),
                          vjp=lambda g, out, x, **a: (avg_pool2d_grad_op.bind(g, x, **a),))
avg_pool2d_grad_op = define_op(
    "avg_pool2d_grad", ("g", "x_like"), attrs=dict(_pool_attrs), shape_rule=lambda g, like, **a: like.shape,
    dtype_rule=lambda g, like, **a: _float_same("avg_pool2d_grad", g),
    vjp=lambda gg, out, g, like, **a: (avg_pool2d_op.bind(gg, **a), None),
    doc="gradient of avg_pool2d, shaped like x_like at run time")


# --------------------------------------------------------------------------- builders
def conv2d(x: Tensor, filters: Any, strides: Any = 1, padding: str = "VALID", dilations: Any = 1,
           name: str | None = None) -> Tensor:
    """2-D convolution (cross-correlation, as in TensorFlow).

    Args:
        x: (batch, height, width, in_channels) float.
        filters: (kh, kw, in_channels, out_channels), same dtype as ``x``; kh and kw must be
            known statically (the filter gradient op is built with them).
        strides: an int, ``(sh, sw)`` or TF's ``[1, sh, sw, 1]``.
        padding: ``"VALID"`` or ``"SAME"`` (case-insensitive), TF's rule.
        dilations: an int or ``(dh, dw)``: the step between filter taps.
        name: node name.

    Returns:
        (batch, out_height, out_width, out_channels), the dtype of ``x``.

    Raises:
        ShapeError: for ranks other than 4, channels that differ, unknown filter spatial dims,
            or a VALID window larger than the input.
        InvalidArgumentError: for a bad padding, strides or dilations, or differing dtypes.
    """
    return conv2d_op.bind(x, filters, strides=_pair("conv2d", "strides", strides),
                          padding=_padding("conv2d", padding), dilations=_pair("conv2d", "dilations", dilations),
                          name=name)


def conv2d_transpose(x: Tensor, filters: Any, output_shape: Sequence[int | None], strides: Any = 1,
                     padding: str = "VALID", dilations: Any = 1, name: str | None = None) -> Tensor:
    """Transposed convolution: the gradient of `conv2d` w.r.t. its input, as an op.

    Args:
        x: (batch, height, width, channels) float: plays the role of conv2d's output.
        filters: (kh, kw, out_channels, channels): the HWIO filters of the matching conv2d,
            so ``filters.shape[3]`` equals x's channels (TF's convention).
        output_shape: ``(out_height, out_width)`` or ``(batch, out_height, out_width,
            out_channels)``; batch may be None (it follows x), channels must equal
            ``filters.shape[2]``. Needed because with strides > 1 several sizes map to x's.
        strides: an int or ``(sh, sw)``.
        padding: ``"VALID"`` or ``"SAME"`` of the matching conv2d.
        dilations: an int or ``(dh, dw)``.
        name: node name.

    Returns:
        (batch, out_height, out_width, out_channels), x's dtype.
    """
    shape = tuple(output_shape)
    if len(shape) == 4:
        c = shape[3]
        if c is not None and isinstance(filters, Tensor) and filters.ndim == 4 and \
                filters.shape[2] is not None and c != filters.shape[2]:
            raise ShapeError(f"conv2d_transpose: output_shape channels {c} must equal filters.shape[2]; got "
                             f"filters.shape={format_shape(filters.shape)}")
        shape = shape[1:3]
    return conv2d_transpose_op.bind(
        x, filters, output_hw=_pair("conv2d_transpose", "output_shape (H, W)", shape),
        strides=_pair("conv2d_transpose", "strides", strides), padding=_padding("conv2d_transpose", padding),
        dilations=_pair("conv2d_transpose", "dilations", dilations), name=name)


def conv2d_backprop_input(dy: Tensor, filters: Any, x_like: Tensor, strides: Any = 1, padding: str = "VALID",
                          dilations: Any = 1, name: str | None = None) -> Tensor:
    """Gradient of ``conv2d(x, filters)`` w.r.t. x, given the output cotangent ``dy``; shaped like ``x_like``."""
    op = "conv2d_backprop_input"
    return conv2d_backprop_input_op.bind(dy, filters, x_like, strides=_pair(op, "strides", strides),
                                         padding=_padding(op, padding), dilations=_pair(op, "dilations", dilations),
                                         name=name)


def conv2d_backprop_filter(x: Tensor, dy: Tensor, filter_hw: Any, strides: Any = 1, padding: str = "VALID",
                           dilations: Any = 1, name: str | None = None) -> Tensor:
    """Gradient of ``conv2d(x, filters)`` w.r.t. filters of spatial size ``filter_hw``, given ``dy``."""
    op = "conv2d_backprop_filter"
    return conv2d_backprop_filter_op.bind(x, dy, filter_hw=_pair(op, "filter_hw", filter_hw),
                                          strides=_pair(op, "strides", strides), padding=_padding(op, padding),
                                          dilations=_pair(op, "dilations", dilations), name=name)


def _pool(op: Any, x: Tensor, size: Any, strides: Any, padding: str, name: str | None) -> Tensor:
    ksize = _pair(op.name, "size", size)
    strides = ksize if strides is None else _pair(op.name, "strides", strides)
    return op.bind(x, ksize=ksize, strides=strides, padding=_padding(op.name, padding), name=name)


def max_pool2d(x: Tensor, size: Any = 2, strides: Any = None, padding: str = "VALID",
               name: str | None = None) -> Tensor:
    """Max over ``size`` windows of an NHWC tensor.

    Args:
        x: (batch, height, width, channels) float.
        size: an int or ``(kh, kw)``.
        strides: an int or ``(sh, sw)``; None means ``size`` (non-overlapping windows).
        padding: ``"VALID"`` or ``"SAME"``; SAME pads with -inf, so padding never wins.
        name: node name.

    Returns:
        (batch, out_height, out_width, channels). The gradient goes to the first maximum of
        each window in row-major order (TF's tie rule).
    """
    return _pool(max_pool2d_op, x, size, strides, padding, name)


def avg_pool2d(x: Tensor, size: Any = 2, strides: Any = None, padding: str = "VALID",
               name: str | None = None) -> Tensor:
    """Mean over ``size`` windows of an NHWC tensor.

    Args:
        x: (batch, height, width, channels) float.
        size: an int or ``(kh, kw)``.
        strides: an int or ``(sh, sw)``; None means ``size``.
        padding: ``"VALID"`` or ``"SAME"``; SAME border windows divide by the number of real
            elements they cover, not by the window size (as TF).
        name: node name.

    Returns:
        (batch, out_height, out_width, channels).
    """
    return _pool(avg_pool2d_op, x, size, strides, padding, name)
