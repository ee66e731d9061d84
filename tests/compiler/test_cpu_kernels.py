"""Compiled CPU kernels (conv, pool, Adam, softmax cross-entropy, ReLU gradient, bias sums) equal the
registered numpy kernels and float64 references."""

from __future__ import annotations

import numpy as np
import pytest

from kernelflow.compiler.cpu_kernels import overrides
from kernelflow.graph.ops import conv as C
from kernelflow.graph.ops import elementwise as E
from kernelflow.graph.ops import nn as N
from kernelflow.graph.ops import reduce as R
from kernelflow.kernels.registry import get_kernel

pytest.importorskip("numba")

GEOMETRIES = [  # (x shape, k, strides, padding, dilations)
    ((2, 9, 9, 3), (3, 3), (1, 1), "SAME", (1, 1)),
    ((2, 8, 7, 4), (3, 2), (2, 2), "VALID", (1, 1)),
    ((1, 10, 10, 2), (3, 3), (2, 1), "SAME", (2, 2)),
]


@pytest.fixture(scope="module")
def ov(kcache):
    return overrides(kcache, threads=2)


def _ref(op):
    return get_kernel(op, "numpy").fn


def _call(entry, *args):
    return entry.fn(np, *args)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("geo", GEOMETRIES, ids=lambda g: f"{g[3]}-s{g[2][0]}{g[2][1]}-d{g[4][0]}")
def test_conv2d_and_gradients_match_numpy_kernels(ov, rng, geo, dtype):
    shape, k, strides, padding, dil = geo
    x = rng.standard_normal(shape).astype(dtype)
    f = rng.standard_normal(k + (shape[3], 5)).astype(dtype)
    y = _call(ov[C.conv2d_op], x, f, strides, padding, dil)
    y_ref = _ref(C.conv2d_op)(np, x, f, strides, padding, dil)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(y, _conv_f64(x, f, strides, padding, dil), rtol=1e-4 if dtype == "float32" else 1e-12,
                               atol=1e-4 if dtype == "float32" else 1e-12)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = _call(ov[C.conv2d_backprop_input_op], dy, f, x, strides, padding, dil)
    dx_ref = _ref(C.conv2d_backprop_input_op)(np, dy, f, x, strides, padding, dil)
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)
    df = _call(ov[C.conv2d_backprop_filter_op], x, dy, k, strides, padding, dil)
    df_ref = _ref(C.conv2d_backprop_filter_op)(np, x, dy, k, strides, padding, dil)
    np.testing.assert_allclose(df, df_ref, rtol=tol * 10, atol=tol * 10)
    # adjoint identity in float64: <conv(x), dy> == <x, dx> == <f, df>
    lhs = np.vdot(y.astype(np.float64), dy)
    np.testing.assert_allclose(np.vdot(x.astype(np.float64), dx), lhs, rtol=1e-4)
    np.testing.assert_allclose(np.vdot(f.astype(np.float64), df), lhs, rtol=1e-4)


def _conv_f64(x, f, strides, padding, dil):
    x, f = x.astype(np.float64), f.astype(np.float64)
    n, h, w, _ = x.shape
    kh, kw, _, o = f.shape
    geo = [C.window_geometry(a, kk, s, d, padding) for a, kk, s, d in zip((h, w), (kh, kw), strides, dil)]
    xp = np.pad(x, ((0, 0), (geo[0][1], geo[0][2]), (geo[1][1], geo[1][2]), (0, 0)))
    out = np.zeros((n, geo[0][0], geo[1][0], o))
    for i in range(geo[0][0]):
        for j in range(geo[1][0]):
            for a in range(kh):
                for b in range(kw):
                    out[:, i, j] += xp[:, i * strides[0] + a * dil[0], j * strides[1] + b * dil[1]] @ f[a, b]
    return out


@pytest.mark.parametrize("ksize,strides,padding", [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), "SAME"),
                                                   ((3, 2), (1, 1), "SAME")])
def test_pools_match_numpy_kernels(ov, rng, ksize, strides, padding):
    x = rng.standard_normal((2, 7, 8, 3)).astype(np.float32)
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = 5.0  # a tie: the first max takes the gradient
    x[1, 2, 2, 1] = np.nan
    with np.errstate(all="ignore"):
        out = _call(ov[C.max_pool2d_op], x, ksize, strides, padding)
        out_ref = _ref(C.max_pool2d_op)(np, x, ksize, strides, padding)
        np.testing.assert_array_equal(out, out_ref)
        g = rng.standard_normal(out.shape).astype(np.float32)
        dx = _call(ov[C.max_pool2d_grad_op], x, out, g, ksize, strides, padding)
        # overlapping windows add in another order: equal to rounding
        np.testing.assert_allclose(dx, _ref(C.max_pool2d_grad_op)(np, x, out, g, ksize, strides, padding),
                                   rtol=1e-6, atol=1e-6)
        avg = _call(ov[C.avg_pool2d_op], x, ksize, strides, padding)
        np.testing.assert_allclose(avg, _ref(C.avg_pool2d_op)(np, x, ksize, strides, padding), rtol=1e-6, atol=1e-6)
        da = _call(ov[C.avg_pool2d_grad_op], g, x, ksize, strides, padding)
        np.testing.assert_allclose(da, _ref(C.avg_pool2d_grad_op)(np, g, x, ksize, strides, padding), rtol=1e-6,
                                   atol=1e-6)
    assert np.isnan(out).any() and not np.isnan(dx).any()


def test_pool_of_non_contiguous_input_falls_back_to_numpy(ov, rng):
    x = rng.standard_normal((2, 8, 8, 6)).astype(np.float32)[..., ::2]
    out = _call(ov[C.max_pool2d_op], x, (2, 2), (2, 2), "VALID")
    np.testing.assert_array_equal(out, x.reshape(2, 4, 2, 4, 2, 3).max(axis=(2, 4)))


def test_adam_update_equals_numpy_kernel_over_steps(rng):
    import kernelflow as kf

    w0 = rng.standard_normal((40, 30)).astype(np.float32)
    xv = rng.standard_normal((16, 40)).astype(np.float32)
    results = {}
    for mode in ("sync", "off"):
        rt = kf.connect("inproc", compile=mode)
        g = rt.graph("adam")
        x = g.placeholder((None, 40), "float32", name="x")
        w = g.variable(w0, name="w")
        loss = kf.mean(kf.square(kf.tanh(x @ w)))
        train = kf.optim.Adam(lr=0.01).minimize(loss)
        for _ in range(4):
            g.run(train, {x: xv})
        results[mode] = w.value()
        rt.close()
    assert not np.array_equal(results["off"], w0)
    np.testing.assert_allclose(results["sync"], results["off"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_cross_entropy_and_gradient_match_numpy_and_float64(ov, rng, dtype):
    z = (rng.standard_normal((4, 3, 7)) * 4).astype(dtype)
    y = rng.integers(0, 7, (4, 3))
    z[0, 0, 2] = np.nan  # a NaN logit makes its row's loss NaN, as numpy's max does
    got = _call(ov[N.softmax_cross_entropy_op], z, y)
    ref = _ref(N.softmax_cross_entropy_op)(np, z, y)
    assert got.dtype == z.dtype and got.shape == y.shape
    assert np.isnan(got[0, 0]) and np.isnan(ref[0, 0])
    z64 = z.astype(np.float64)
    lse = np.log(np.exp(z64 - z64.max(-1, keepdims=True)).sum(-1)) + z64.max(-1)
    exact = lse - np.take_along_axis(z64, y[..., None], -1)[..., 0]
    tol = 2e-6 if dtype == "float32" else 1e-13
    np.testing.assert_allclose(got[1:], exact[1:], rtol=tol, atol=tol)
    np.testing.assert_array_equal(got, ref)  # bitwise: a run may switch kernels midway (mode "on")
    g = rng.standard_normal((4, 3, 1)).astype(dtype)
    dz = _call(ov[N.softmax_cross_entropy_grad_op], g, z, y)
    p = np.exp(z64 - lse[..., None]) - (y[..., None] == np.arange(7))
    np.testing.assert_allclose(dz[1:], (p * g)[1:], rtol=tol, atol=tol)
    np.testing.assert_array_equal(dz, _ref(N.softmax_cross_entropy_grad_op)(np, g, z, y))
    # a broadcast gradient (a mean's: one value per row, as a stride-0 view) takes the same path
    gb = np.broadcast_to(np.float32(0.25).astype(dtype), (4, 3))[..., None]
    np.testing.assert_allclose(_call(ov[N.softmax_cross_entropy_grad_op], gb, z, y)[1:], (p * 0.25)[1:],
                               rtol=tol, atol=tol)
    np.testing.assert_array_equal(_call(ov[N.softmax_cross_entropy_grad_op], gb, z, y),
                                  _ref(N.softmax_cross_entropy_grad_op)(np, gb, z, y))


def test_softmax_cross_entropy_bad_label_raises_the_numpy_kernels_error(ov, rng):
    from kernelflow.errors import InvalidArgumentError

    z = rng.standard_normal((3, 5)).astype(np.float32)
    for op, args in ((N.softmax_cross_entropy_op, (z, np.array([0, 5, 1]))),
                     (N.softmax_cross_entropy_grad_op, (np.ones((3, 1), np.float32), z, np.array([0, -1, 1])))):
        with pytest.raises(InvalidArgumentError, match=r"labels must be in \[0, 5\)"):
            _call(ov[op], *args)


@pytest.mark.parametrize("layout", ["C", "F"])
def test_relu_grad_matches_numpy_with_signed_zeros_and_nan(ov, rng, layout):
    g = rng.standard_normal((6, 300)).astype(np.float32)
    out = np.maximum(rng.standard_normal((6, 300)).astype(np.float32), 0)
    g[0, :3] = (np.inf, np.nan, -2.0)
    out[0, :3] = 0.0
    if layout == "F":  # what matmul's swapped form hands on
        g = np.asfortranarray(g)
    got = _call(ov[E.relu_grad_op], g, out)
    with np.errstate(invalid="ignore"):
        ref = _ref(E.relu_grad_op)(np, g, out)
    np.testing.assert_array_equal(got, ref)
    assert np.signbit(got[0, 2]) and np.isnan(got[0, 0]) and np.isnan(got[0, 1])
    np.testing.assert_array_equal(got[1:], np.where(out[1:] > 0, g[1:], 0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sum_to_of_leading_axes_is_bitwise_the_numpy_kernel(ov, rng, dtype):
    x = rng.standard_normal((5, 64, 33)).astype(dtype)
    got = _call(ov[R.sum_to_op], x, np.zeros((33,)))
    exact = x.astype(np.float64).sum(axis=(0, 1))
    assert got.dtype == x.dtype and got.shape == (33,)
    np.testing.assert_allclose(got, exact, rtol=1e-4 if dtype == "float32" else 1e-12, atol=1e-4)
    np.testing.assert_array_equal(got, _ref(R.sum_to_op)(np, x, np.zeros((33,))))
    b = rng.standard_normal((32, 512)).astype(dtype)  # a bias gradient
    np.testing.assert_array_equal(_call(ov[R.sum_to_op], b, np.zeros(512)), _ref(R.sum_to_op)(np, b, np.zeros(512)))
    # a target with a kept dim of 1 is the numpy kernel's case
    kept = _call(ov[R.sum_to_op], x, np.zeros((64, 1)))
    np.testing.assert_array_equal(kept, _ref(R.sum_to_op)(np, x, np.zeros((64, 1))))
