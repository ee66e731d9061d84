"""Compiled CPU conv/pool/Adam kernels equal the registered numpy kernels and float64 references."""

from __future__ import annotations

import numpy as np
import pytest

from kernelflow.compiler.cpu_kernels import overrides
from kernelflow.graph.ops import conv as C
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
