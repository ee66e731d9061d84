"""Kernels of the convolution and pooling ops (same order as graph/ops/conv.py).

Convolutions build im2col from a strided view of the padded input, ``(n, oh, ow, kh, kw, c)``,
copied once into a matrix and multiplied with the filters in one matmul (BLAS/cuBLAS). The
input gradient is the adjoint: one matmul to columns, then a col2im that adds each filter
tap's slice back (kh * kw vectorised adds). Pools loop over window offsets on
strided slices and never copy windows.
"""

from __future__ import annotations

from ..errors import InvalidArgumentError
from ..graph.ops import conv as C
from .registry import kernel


def _geometry(op, in_hw, k_hw, strides, dilations, padding):
    """Per spatial axis ``(out, lo, hi)`` for runtime sizes; raises when a VALID window does not fit."""
    geo = [C.window_geometry(n, k, s, d, padding) for n, k, s, d in zip(in_hw, k_hw, strides, dilations)]
    if any(g[0] <= 0 for g in geo):
        raise InvalidArgumentError(f"{op}: the window {tuple(k_hw)} (dilations {tuple(dilations)}) does not fit "
                                   f"the input's spatial dims {tuple(in_hw)} with padding 'VALID'")
    return geo


def _pad(xp, x, geo, value=0):
    (_, th, bh), (_, lw, rw) = geo
    if not (th or bh or lw or rw):
        return x
    return xp.pad(x, ((0, 0), (th, bh), (lw, rw), (0, 0)), mode="constant", constant_values=value)


def _windows(xp, xpad, k_hw, out_hw, strides, dilations):
    """The view ``(n, oh, ow, kh, kw, c)`` of the padded input: no copy."""
    sn, sh, sw, sc = xpad.strides
    shape = (xpad.shape[0], out_hw[0], out_hw[1], k_hw[0], k_hw[1], xpad.shape[3])
    steps = (sn, sh * strides[0], sw * strides[1], sh * dilations[0], sw * dilations[1], sc)
    return xp.lib.stride_tricks.as_strided(xpad, shape=shape, strides=steps)


def _tap(geo_out, i, j, strides, dilations):
    """Index of the padded input that filter tap (i, j) reads at every output position."""
    oh, ow = geo_out
    h0, w0 = i * dilations[0], j * dilations[1]
    return (slice(None), slice(h0, h0 + strides[0] * (oh - 1) + 1, strides[0]),
            slice(w0, w0 + strides[1] * (ow - 1) + 1, strides[1]), slice(None))


def _crop(xp, xpad, geo, hw):
    (_, th, _), (_, lw, _) = geo
    out = xpad[:, th:th + hw[0], lw:lw + hw[1], :]
    return xp.ascontiguousarray(out)


def _col2im(xp, cols, x_shape, k_hw, strides, padding, dilations):
    """Adjoint of `_windows`: sums ``cols`` (n, oh, ow, kh, kw, c) back onto an input of ``x_shape``."""
    geo = _geometry("conv2d_backprop_input", x_shape[1:3], k_hw, strides, dilations, padding)
    hp = x_shape[1] + geo[0][1] + geo[0][2]
    wp = x_shape[2] + geo[1][1] + geo[1][2]
    dxp = xp.zeros((x_shape[0], hp, wp, x_shape[3]), dtype=cols.dtype)
    out_hw = (geo[0][0], geo[1][0])
    for i in range(k_hw[0]):
        for j in range(k_hw[1]):
            dxp[_tap(out_hw, i, j, strides, dilations)] += cols[:, :, :, i, j, :]
    return _crop(xp, dxp, geo, x_shape[1:3])


def _im2col(xp, op, x, k_hw, strides, padding, dilations):
    """The patches of ``x`` as one C-ordered (n * oh * ow, kh * kw * c) matrix, and (n, oh, ow)."""
    geo = _geometry(op, x.shape[1:3], k_hw, strides, dilations, padding)
    win = _windows(xp, _pad(xp, x, geo), k_hw, (geo[0][0], geo[1][0]), strides, dilations)
    # One explicit copy: tensordot's own reshape of the strided view copies several times slower.
    cols = xp.ascontiguousarray(win)
    return cols.reshape(-1, k_hw[0] * k_hw[1] * x.shape[3]), win.shape[:3]


def _backprop_input(xp, dy, filters, x_shape, strides, padding, dilations):
    kh, kw, c, o = filters.shape
    cols = xp.matmul(dy.reshape(-1, o), filters.reshape(-1, o).T)
    return _col2im(xp, cols.reshape(dy.shape[:3] + (kh, kw, c)), x_shape, (kh, kw), strides, padding, dilations)


@kernel(C.conv2d_op)
def conv2d_kernel(xp, x, filters, strides, padding, dilations):
    cols, nhw = _im2col(xp, "conv2d", x, filters.shape[:2], strides, padding, dilations)
    o = filters.shape[3]
    return xp.matmul(cols, filters.reshape(-1, o)).reshape(nhw + (o,))


@kernel(C.conv2d_backprop_input_op)
def conv2d_backprop_input_kernel(xp, dy, filters, x_like, strides, padding, dilations):
    return _backprop_input(xp, dy, filters, x_like.shape, strides, padding, dilations)


@kernel(C.conv2d_transpose_op)
def conv2d_transpose_kernel(xp, x, filters, output_hw, strides, padding, dilations):
    geo = _geometry("conv2d_transpose", output_hw, filters.shape[:2], strides, dilations, padding)
    if (geo[0][0], geo[1][0]) != tuple(x.shape[1:3]):
        raise InvalidArgumentError(f"conv2d_transpose: output_shape {tuple(output_hw)} gives conv2d spatial dims "
                                   f"{(geo[0][0], geo[1][0])}, but the input has {tuple(x.shape[1:3])}")
    shape = (x.shape[0], output_hw[0], output_hw[1], filters.shape[2])
    return _backprop_input(xp, x, filters, shape, strides, padding, dilations)


@kernel(C.conv2d_backprop_filter_op)
def conv2d_backprop_filter_kernel(xp, x, dy, filter_hw, strides, padding, dilations):
    cols, _ = _im2col(xp, "conv2d_backprop_filter", x, filter_hw, strides, padding, dilations)
    o = dy.shape[3]
    return xp.matmul(cols.T, dy.reshape(-1, o)).reshape(tuple(filter_hw) + (x.shape[3], o))


# --------------------------------------------------------------------------- pooling
def _pool_geo(op, x, ksize, strides, padding):
    geo = _geometry(op, x.shape[1:3], ksize, strides, (1, 1), padding)
    return geo, (geo[0][0], geo[1][0])


def _first_max_masks(xp, x, out, ksize, strides, padding):
    """Yield (tap index, mask) per window offset: True where that tap is its window's first max."""
    geo, out_hw = _pool_geo("max_pool2d_grad", x, ksize, strides, padding)
    xpad = _pad(xp, x, geo, value=-xp.inf)
    taken = xp.zeros(out.shape, dtype=bool)
    for i in range(ksize[0]):
        for j in range(ksize[1]):
            idx = _tap(out_hw, i, j, strides, (1, 1))
            mask = xpad[idx] == out
            mask &= ~taken
            taken |= mask
            yield geo, idx, mask


@kernel(C.max_pool2d_op)
def max_pool2d_kernel(xp, x, ksize, strides, padding):
    geo, out_hw = _pool_geo("max_pool2d", x, ksize, strides, padding)
    xpad = _pad(xp, x, geo, value=-xp.inf)
    out = None
    for i in range(ksize[0]):
        for j in range(ksize[1]):
            tap = xpad[_tap(out_hw, i, j, strides, (1, 1))]
            out = tap.copy() if out is None else xp.maximum(out, tap, out=out)
    return out


@kernel(C.max_pool2d_grad_op)
def max_pool2d_grad_kernel(xp, x, out, g, ksize, strides, padding):
    dxp = None
    for geo, idx, mask in _first_max_masks(xp, x, out, ksize, strides, padding):
        if dxp is None:
            dxp = xp.zeros((x.shape[0], x.shape[1] + geo[0][1] + geo[0][2], x.shape[2] + geo[1][1] + geo[1][2],
                            x.shape[3]), dtype=g.dtype)
        dxp[idx] += xp.where(mask, g, 0)
    return _crop(xp, dxp, geo, x.shape[1:3])


@kernel(C.max_pool2d_grad_grad_op)
def max_pool2d_grad_grad_kernel(xp, x, out, gg, ksize, strides, padding):
    res = xp.zeros(out.shape, dtype=gg.dtype)
    ggp = None
    for geo, idx, mask in _first_max_masks(xp, x, out, ksize, strides, padding):
        if ggp is None:
            ggp = _pad(xp, gg, geo)
        res += xp.where(mask, ggp[idx], 0)
    return res


def _avg_counts(xp, x, ksize, strides, padding, geo, out_hw, dtype):
    """Real (unpadded) elements per window: (1, oh, ow, 1), or a scalar when nothing is padded."""
    if padding == "VALID" or not any(g[1] or g[2] for g in geo):
        return ksize[0] * ksize[1]
    ones = _pad(xp, xp.ones((1, x.shape[1], x.shape[2], 1), dtype=dtype), geo)
    counts = xp.zeros((1, out_hw[0], out_hw[1], 1), dtype=dtype)
    for i in range(ksize[0]):
        for j in range(ksize[1]):
            counts += ones[_tap(out_hw, i, j, strides, (1, 1))]
    return counts


@kernel(C.avg_pool2d_op)
def avg_pool2d_kernel(xp, x, ksize, strides, padding):
    geo, out_hw = _pool_geo("avg_pool2d", x, ksize, strides, padding)
    xpad = _pad(xp, x, geo)
    out = xp.zeros((x.shape[0], out_hw[0], out_hw[1], x.shape[3]), dtype=x.dtype)
    for i in range(ksize[0]):
        for j in range(ksize[1]):
            out += xpad[_tap(out_hw, i, j, strides, (1, 1))]
    out /= _avg_counts(xp, x, ksize, strides, padding, geo, out_hw, x.dtype)
    return out


@kernel(C.avg_pool2d_grad_op)
def avg_pool2d_grad_kernel(xp, g, x_like, ksize, strides, padding):
    geo, out_hw = _pool_geo("avg_pool2d_grad", x_like, ksize, strides, padding)
    share = g / _avg_counts(xp, x_like, ksize, strides, padding, geo, out_hw, g.dtype)
    n, h, w, c = x_like.shape
    dxp = xp.zeros((n, h + geo[0][1] + geo[0][2], w + geo[1][1] + geo[1][2], c), dtype=g.dtype)
    for i in range(ksize[0]):
        for j in range(ksize[1]):
            dxp[_tap(out_hw, i, j, strides, (1, 1))] += share
    return _crop(xp, dxp, geo, (h, w))
