"""NN op family: conv/pool, losses, normalisation, embedding, dropout, vs loop-based float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.graph.ops import conv as C
from kernelflow.graph.ops import nn as N
from tests.ops.opcheck import OpCase, check_forward, check_gradient


# --------------------------------------------------------------------------- references (float64, loops)
def _same_pads(size, k, s, d, padding):
    eff = (k - 1) * d + 1
    if padding == "VALID":
        return (size - eff) // s + 1, 0, 0
    out = math.ceil(size / s)
    total = max((out - 1) * s + eff - size, 0)
    return out, total // 2, total - total // 2


def _geo(x_hw, k_hw, s, d, padding):
    return [_same_pads(x_hw[a], k_hw[a], s[a], d[a], padding) for a in (0, 1)]


def conv_ref(x, f, s=(1, 1), padding="VALID", d=(1, 1)):
    (oh, th, bh), (ow, lw, rw) = _geo(x.shape[1:3], f.shape[:2], s, d, padding)
    xp = np.pad(x, ((0, 0), (th, bh), (lw, rw), (0, 0)))
    y = np.zeros((x.shape[0], oh, ow, f.shape[3]))
    for i in range(oh):
        for j in range(ow):
            for a in range(f.shape[0]):
                for b in range(f.shape[1]):
                    y[:, i, j, :] += xp[:, i * s[0] + a * d[0], j * s[1] + b * d[1], :] @ f[a, b]
    return y


def conv_transpose_ref(x, f, out_hw, s=(1, 1), padding="VALID", d=(1, 1)):
    (oh, th, bh), (ow, lw, rw) = _geo(out_hw, f.shape[:2], s, d, padding)
    assert (oh, ow) == x.shape[1:3]
    yp = np.zeros((x.shape[0], out_hw[0] + th + bh, out_hw[1] + lw + rw, f.shape[2]))
    for i in range(oh):
        for j in range(ow):
            for a in range(f.shape[0]):
                for b in range(f.shape[1]):
                    yp[:, i * s[0] + a * d[0], j * s[1] + b * d[1], :] += x[:, i, j, :] @ f[a, b].T
    return yp[:, th:th + out_hw[0], lw:lw + out_hw[1], :]


def conv_filter_grad_ref(x, dy, k_hw, s=(1, 1), padding="VALID", d=(1, 1)):
    (oh, th, bh), (ow, lw, rw) = _geo(x.shape[1:3], k_hw, s, d, padding)
    xp = np.pad(x, ((0, 0), (th, bh), (lw, rw), (0, 0)))
    dw = np.zeros(k_hw + (x.shape[3], dy.shape[3]))
    for i in range(oh):
        for j in range(ow):
            for a in range(k_hw[0]):
                for b in range(k_hw[1]):
                    dw[a, b] += xp[:, i * s[0] + a * d[0], j * s[1] + b * d[1], :].T @ dy[:, i, j, :]
    return dw


def _windows_ref(x, k, s, padding):
    """Yield (i, j, rows, cols) of each window, with its rows/cols clipped to the real input."""
    (oh, th, _), (ow, lw, _) = _geo(x.shape[1:3], k, s, (1, 1), padding)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s[0] - th, j * s[1] - lw
            rows = [r for r in range(r0, r0 + k[0]) if 0 <= r < x.shape[1]]
            cols = [c for c in range(c0, c0 + k[1]) if 0 <= c < x.shape[2]]
            yield i, j, rows, cols, oh, ow


def pool_ref(x, k, s, padding, kind):
    out = None
    for i, j, rows, cols, oh, ow in _windows_ref(x, k, s, padding):
        if out is None:
            out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
        win = x[:, rows][:, :, cols]
        out[:, i, j] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return out


def max_pool_grad_ref(x, g, k, s, padding):
    dx = np.zeros_like(x)
    for i, j, rows, cols, _, _ in _windows_ref(x, k, s, padding):
        for n in range(x.shape[0]):
            for c in range(x.shape[3]):
                win = x[n, rows][:, cols, c]
                a, b = np.unravel_index(np.argmax(win), win.shape)  # first max in row-major order
                dx[n, rows[a], cols[b], c] += g[n, i, j, c]
    return dx


def max_pool_grad_grad_ref(x, gg, k, s, padding):
    out = None
    for i, j, rows, cols, oh, ow in _windows_ref(x, k, s, padding):
        if out is None:
            out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
        for n in range(x.shape[0]):
            for c in range(x.shape[3]):
                win = x[n, rows][:, cols, c]
                a, b = np.unravel_index(np.argmax(win), win.shape)
                out[n, i, j, c] = gg[n, rows[a], cols[b], c]
    return out


def avg_pool_grad_ref(g, x, k, s, padding):
    dx = np.zeros_like(x)
    for i, j, rows, cols, _, _ in _windows_ref(x, k, s, padding):
        share = g[:, i, j] / (len(rows) * len(cols))
        for r in rows:
            for c in cols:
                dx[:, r, c] += share
    return dx


def _norm(rng, dtype, *shapes):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _log_softmax_ref(z):
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _bn_ref(x, gamma, beta, mean, var, eps=1e-3):
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _batch_stats(x):
    axes = tuple(range(x.ndim - 1))
    return x.mean(axes), x.var(axes)


def _bn_train_build(x, gamma, beta):
    g, c = x.graph, x.shape[-1]
    mm, mv = g.variable(np.zeros(c, x.dtype)), g.variable(np.ones(c, x.dtype), trainable=False)
    return kf.batch_norm(x, gamma, beta, mm, mv, training=True)


def _conv_case(name, x_shape, f_shape, s=(1, 1), padding="VALID", d=(1, 1), **kw):
    # The reshape gives the filter a static shape even when the case's placeholders have a None batch dim.
    return OpCase(name, lambda x, f: kf.conv2d(x, kf.reshape(f, f_shape), strides=s, padding=padding, dilations=d),
                  lambda x, f: conv_ref(x, f, s, padding, d), lambda r, dt: _norm(r, dt, x_shape, f_shape), **kw)


def _pool_case(name, kind, x_shape, k, s, padding):
    build = kf.max_pool2d if kind == "max" else kf.avg_pool2d
    return OpCase(name, lambda x: build(x, k, s, padding), lambda x: pool_ref(x, k, s, padding, kind),
                  lambda r, dt: _norm(r, dt, x_shape))


def _max_pool_grad_build(k, s, padding):
    return lambda x, g: C.max_pool2d_grad_op.bind(x, kf.max_pool2d(x, k, s, padding), g, ksize=k, strides=s,
                                                  padding=padding)


_pool_cfgs = [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), "SAME"), ((3, 2), (1, 1), "SAME")]

CASES = [
    _conv_case("conv2d_valid_s1", (2, 5, 6, 3), (3, 2, 3, 4)),
    _conv_case("conv2d_same_s2", (3, 7, 6, 2), (3, 3, 2, 5), s=(2, 2), padding="SAME"),
    _conv_case("conv2d_same_dilation2", (2, 7, 7, 3), (3, 3, 3, 2), padding="SAME", d=(2, 2)),
    _conv_case("conv2d_valid_s2_dilation2", (2, 9, 8, 2), (2, 3, 2, 3), s=(2, 1), d=(2, 2)),
    _conv_case("conv2d_same_asym_pad_dynamic_batch", (2, 6, 5, 2), (2, 4, 2, 3), s=(2, 3), padding="SAME",
               static_shapes=False),
    OpCase("conv2d_transpose_same_s2", lambda x, f: kf.conv2d_transpose(x, f, (None, 7, 8, 3), 2, "SAME"),
           lambda x, f: conv_transpose_ref(x, f, (7, 8), (2, 2), "SAME"),
           lambda r, d: _norm(r, d, (2, 4, 4, 2), (3, 3, 3, 2))),
    OpCase("conv2d_transpose_valid_dilation2", lambda x, f: kf.conv2d_transpose(x, f, (6, 7), 1, "VALID", 2),
           lambda x, f: conv_transpose_ref(x, f, (6, 7), padding="VALID", d=(2, 2)),
           lambda r, d: _norm(r, d, (2, 2, 5, 3), (3, 2, 2, 3))),
    OpCase("conv2d_backprop_input_same_s2",
           lambda dy, f, x: C.conv2d_backprop_input(dy, f, x, strides=2, padding="SAME"),
           lambda dy, f, x: conv_transpose_ref(dy, f, x.shape[1:3], (2, 2), "SAME"),
           lambda r, d: _norm(r, d, (2, 3, 4, 4), (3, 2, 3, 4), (2, 6, 7, 3)), grad_args=(0, 1)),
    OpCase("conv2d_backprop_filter_same_s2",
           lambda x, dy: C.conv2d_backprop_filter(x, dy, (3, 2), strides=2, padding="SAME"),
           lambda x, dy: conv_filter_grad_ref(x, dy, (3, 2), (2, 2), "SAME"),
           lambda r, d: _norm(r, d, (2, 6, 7, 3), (2, 3, 4, 4))),
    *[_pool_case(f"{kind}_pool_{k[0]}x{k[1]}_s{s[0]}_{p.lower()}", kind, (2, 7, 6, 3), k, s, p)
      for kind in ("max", "avg") for k, s, p in _pool_cfgs],
    *[OpCase(f"max_pool2d_grad_{p.lower()}_s{s[0]}", _max_pool_grad_build(k, s, p),
             lambda x, g, k=k, s=s, p=p: max_pool_grad_ref(x, g, k, s, p),
             lambda r, d, k=k, s=s, p=p: _norm(r, d, (2, 7, 6, 3), (2,) + tuple(pool_ref(
                 np.zeros((1, 7, 6, 1)), k, s, p, "max").shape[1:3]) + (3,)), grad_args=(1,))
      for k, s, p in _pool_cfgs],
    # Second order through max pool: max_pool2d_grad's adjoint in g reads gg at each window's first max.
    OpCase("max_pool2d_grad_grad_same_s2", lambda x, gg: C.max_pool2d_grad_grad_op.bind(
        x, kf.max_pool2d(x, 3, 2, "SAME"), gg, ksize=(3, 3), strides=(2, 2), padding="SAME"),
        lambda x, gg: max_pool_grad_grad_ref(x, gg, (3, 3), (2, 2), "SAME"),
        lambda r, d: _norm(r, d, (2, 5, 6, 2), (2, 5, 6, 2)), grad_args=(1,)),
    OpCase("avg_pool2d_grad_same_s2",
           lambda g, x: C.avg_pool2d_grad_op.bind(g, x, ksize=(3, 3), strides=(2, 2), padding="SAME"),
           lambda g, x: avg_pool_grad_ref(g, x, (3, 3), (2, 2), "SAME"),
           lambda r, d: _norm(r, d, (2, 4, 3, 3), (2, 7, 6, 3)), grad_args=(0,)),
    OpCase("softmax", kf.softmax, lambda z: np.exp(_log_softmax_ref(z)), lambda r, d: _norm(r, d, (4, 6))),
    OpCase("log_softmax_axis0", lambda z: kf.log_softmax(z, axis=0),
           lambda z: _log_softmax_ref(z.T).T, lambda r, d: _norm(r, d, (5, 3))),
    OpCase("softmax_ce_3d", kf.softmax_cross_entropy,
           lambda z, y: -np.take_along_axis(_log_softmax_ref(z), y[..., None], -1)[..., 0],
           lambda r, d: [r.standard_normal((2, 3, 5)).astype(d), r.integers(0, 5, (2, 3)).astype("int32")],
           grad_args=(0,)),
    OpCase("softmax_ce_grad", lambda g, z, y: N.softmax_cross_entropy_grad_op.bind(g, z, y),
           lambda g, z, y: g * (np.exp(_log_softmax_ref(z)) - np.eye(z.shape[-1])[y]),
           lambda r, d: [r.standard_normal((4, 1)).astype(d), r.standard_normal((4, 5)).astype(d),
                         r.integers(0, 5, 4)], grad_args=(0, 1)),
    OpCase("sigmoid_ce", kf.sigmoid_cross_entropy,
           lambda x, z: np.logaddexp(0, x) - x * z,
           lambda r, d: [(r.standard_normal((4, 5)) * 5).astype(d), r.random((4, 5)).astype(d)]),
    OpCase("sigmoid_ce_broadcast_labels", kf.sigmoid_cross_entropy, lambda x, z: np.logaddexp(0, x) - x * z,
           lambda r, d: [r.standard_normal((3, 4)).astype(d), r.random((4,)).astype(d)]),
    OpCase("mse_4d", kf.mse, lambda p, t: ((p - t) ** 2).mean(axis=(1, 2, 3)),
           lambda r, d: _norm(r, d, (3, 2, 2, 4), (3, 2, 2, 4))),
    OpCase("mse_2d_broadcast_target", kf.mse, lambda p, t: ((p - t) ** 2).mean(axis=1),
           lambda r, d: _norm(r, d, (5, 3), (3,))),
    OpCase("mse_1d", kf.mse, lambda p, t: (p - t) ** 2, lambda r, d: _norm(r, d, (6,), (6,))),
    OpCase("layer_norm_last_axis", lambda x, ga, be: kf.layer_norm(x, ga, be),
           lambda x, ga, be: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * ga + be,
           lambda r, d: _norm(r, d, (4, 6), (6,), (6,))),
    OpCase("layer_norm_two_axes", lambda x: kf.layer_norm(x, axis=(1, 2), epsilon=1e-3),
           lambda x: (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + 1e-3),
           lambda r, d: _norm(r, d, (3, 4, 5))),
    OpCase("batch_norm_training_nhwc", _bn_train_build,
           lambda x, ga, be: _bn_ref(x, ga, be, *_batch_stats(x)),
           lambda r, d: _norm(r, d, (4, 3, 3, 2), (2,), (2,)), tol={"float32": 5e-5}),
    OpCase("batch_norm_inference", lambda x, ga, be, m, v: kf.batch_norm(x, ga, be, m, v, training=False),
           _bn_ref, lambda r, d: _norm(r, d, (5, 3), (3,), (3,), (3,)) + [r.random(3).astype(d) + 0.5]),
    OpCase("embedding_2d_ids_repeated", kf.embedding, lambda p, ids: p[ids],
           lambda r, d: [r.standard_normal((5, 3)).astype(d), np.array([[0, 4, 4], [2, 0, 4]])]),
    OpCase("embedding_grad", lambda g, ids, p: N.embedding_grad_op.bind(g, ids, p),
           lambda g, ids, p: np.stack([g[ids == k].sum(0) for k in range(p.shape[0])]),
           lambda r, d: [r.standard_normal((2, 3, 2)).astype(d), np.array([[1, 1, 3], [0, 1, 3]]),
                         r.standard_normal((4, 2)).astype(d)], grad_args=(0,)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nn_op_forward_matches_float64_reference(case, dtype, rng):
    check_forward(case, dtype, rng)


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=lambda c: c.name)
def test_nn_op_gradient_matches_finite_differences(case, rng):
    check_gradient(case, rng)


# --------------------------------------------------------------------------- ties and special values
def test_max_pool2d_ties_route_gradient_to_first_max(g):
    x = g.placeholder((1, 2, 2, 1), "float64")
    y = kf.max_pool2d(x, 2)
    gx = kf.gradients(kf.sum(y * 3.0), x)
    got = g.run(gx, {x: np.array([[[[1.0], [5.0]], [[5.0], [5.0]]]])})
    np.testing.assert_array_equal(got[0, :, :, 0], [[0.0, 3.0], [0.0, 0.0]])


def test_avg_pool2d_same_divides_by_valid_count(g):
    x = g.placeholder((1, 3, 3, 1), "float32")
    y = kf.avg_pool2d(x, 2, 2, "SAME")  # pads one row/col at the end: border windows hold 2 or 1 elements
    got = g.run(y, {x: np.arange(9, dtype="float32").reshape(1, 3, 3, 1)})
    np.testing.assert_allclose(got[0, :, :, 0], [[2.0, 3.5], [6.5, 8.0]])
    assert got.dtype == np.float32


def test_sigmoid_cross_entropy_extreme_logits_finite(g):
    x = g.placeholder((4,), "float32")
    z = g.placeholder((4,), "float32")
    loss = kf.sigmoid_cross_entropy(x, z)
    gx = kf.gradients(kf.sum(loss), x)
    lv, gv = g.run([loss, gx], {x: np.array([-200, 200, -200, 200], "float32"), z: np.array([0, 1, 1, 0], "f4")})
    np.testing.assert_allclose(lv, [0, 0, 200, 200], atol=1e-5)
    np.testing.assert_allclose(gv, [0, 0, -1, 1], atol=1e-6)  # sigmoid(x) - z


def test_softmax_cross_entropy_label_out_of_range_raises(g):
    z = g.placeholder((2, 3), "float32")
    y = g.placeholder((2,), "int64")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"labels must be in \[0, 3\); got values in \[0, 3\]"):
        g.run(kf.softmax_cross_entropy(z, y), {z: np.zeros((2, 3), "f4"), y: np.array([0, 3])})


def test_embedding_negative_id_raises(g):
    p = g.variable(np.ones((4, 2), "float32"))
    ids = g.placeholder((2,), "int32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"embedding: ids must be in \[0, 4\)"):
        g.run(kf.embedding(p, ids), {ids: np.array([1, -1], "int32")})


# --------------------------------------------------------------------------- shape and attr errors
def test_conv2d_channel_mismatch_raises(g):
    x = g.placeholder((None, 8, 8, 3), "float32")
    f = g.variable(np.zeros((3, 3, 4, 16), "float32"))
    with pytest.raises(kf.errors.ShapeError, match=r"conv2d: input channels 3 must equal filter in-channels 4; "
                                                   r"got x.shape=\(None, 8, 8, 3\), filters.shape=\(3, 3, 4, 16\)"):
        kf.conv2d(x, f)


@pytest.mark.parametrize("x_shape,f_shape,what", [((8, 8, 3), (3, 3, 3, 4), "x"), ((1, 8, 8, 3), (3, 3, 3), "filters")])
def test_conv2d_wrong_rank_raises(g, x_shape, f_shape, what):
    x = g.placeholder(x_shape, "float32")
    f = g.placeholder(f_shape, "float32")
    with pytest.raises(kf.errors.ShapeError, match=rf"conv2d: {what} must have rank 4"):
        kf.conv2d(x, f)


def test_conv2d_bad_padding_raises(g):
    x = g.placeholder((1, 8, 8, 3), "float32")
    f = g.placeholder((3, 3, 3, 4), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"conv2d: padding must be 'SAME' or 'VALID'; got 'FULL'"):
        kf.conv2d(x, f, padding="FULL")


def test_conv2d_window_larger_than_valid_input_raises(g):
    x = g.placeholder((1, 2, 8, 3), "float32")
    f = g.placeholder((3, 3, 3, 4), "float32")
    with pytest.raises(kf.errors.ShapeError, match=r"conv2d: the window \(3, 3\).*does not fit"):
        kf.conv2d(x, f)


def test_conv2d_dtype_mismatch_raises(g):
    x = g.placeholder((1, 4, 4, 1), "float32")
    f = g.placeholder((1, 1, 1, 1), "float64")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"conv2d: inputs must share one dtype"):
        kf.conv2d(x, f)


def test_conv2d_transpose_output_shape_mismatch_raises(g):
    x = g.placeholder((1, 4, 4, 2), "float32")
    f = g.placeholder((3, 3, 5, 2), "float32")
    with pytest.raises(kf.errors.ShapeError, match=r"conv2d_transpose: output_shape \(10, 8\) does not match"):
        kf.conv2d_transpose(x, f, (10, 8), strides=2, padding="SAME")


def test_conv2d_transpose_channel_mismatch_raises(g):
    x = g.placeholder((1, 4, 4, 3), "float32")
    f = g.placeholder((3, 3, 5, 2), "float32")
    with pytest.raises(kf.errors.ShapeError, match=r"conv2d_transpose: input channels 3 must equal filter "
                                                   r"out-channels 2"):
        kf.conv2d_transpose(x, f, (8, 8), strides=2, padding="SAME")


def test_max_pool2d_wrong_rank_raises(g):
    x = g.placeholder((4, 4, 3), "float32")
    with pytest.raises(kf.errors.ShapeError, match=r"max_pool2d: x must have rank 4 \(NHWC\)"):
        kf.max_pool2d(x, 2)


def test_avg_pool2d_bad_padding_raises(g):
    x = g.placeholder((1, 4, 4, 3), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"avg_pool2d: padding must be 'SAME' or 'VALID'"):
        kf.avg_pool2d(x, 2, padding="REFLECT")


def test_softmax_cross_entropy_label_shape_mismatch_raises(g):
    z = g.placeholder((4, 3), "float32")
    y = g.placeholder((5,), "int64")
    with pytest.raises(kf.errors.ShapeError, match=r"softmax_cross_entropy: labels shape \(5,\) must equal"):
        kf.softmax_cross_entropy(z, y)


def test_embedding_float_ids_raises(g):
    p = g.placeholder((4, 2), "float32")
    ids = g.placeholder((3,), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"embedding: ids must be integers; got float32"):
        kf.embedding(p, ids)


def test_batch_norm_rank1_raises(g):
    x = g.placeholder((4,), "float32")
    with pytest.raises(kf.errors.ShapeError, match=r"batch_norm: x must have a batch axis and a channel axis"):
        kf.batch_norm(x, None, None, g.variable(np.zeros(4, "f4")), g.variable(np.ones(4, "f4")), True)


# --------------------------------------------------------------------------- batch norm state
def test_batch_norm_training_update_ops_move_statistics(g):
    x = g.placeholder((None, 2), "float64")
    mm = g.variable(np.array([1.0, -1.0]), trainable=False)
    mv = g.variable(np.array([2.0, 0.5]), trainable=False)
    y = kf.batch_norm(x, None, None, mm, mv, training=True, momentum=0.9)
    updates = g.collections["update_ops"]
    assert len(updates) == 2
    xv = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 0.0]])
    got, _ = g.run([y, updates], {x: xv})
    np.testing.assert_allclose(got, (xv - xv.mean(0)) / np.sqrt(xv.var(0) + 1e-3))
    np.testing.assert_allclose(mm.value(), 0.9 * np.array([1.0, -1.0]) + 0.1 * xv.mean(0))
    np.testing.assert_allclose(mv.value(), 0.9 * np.array([2.0, 0.5]) + 0.1 * xv.var(0))


def test_batch_norm_training_tensor_selects_mode_and_gates_updates(g):
    x = g.placeholder((None, 2), "float64")
    training = g.placeholder((), "bool")
    mm0, mv0 = np.array([1.0, -1.0]), np.array([2.0, 0.5])
    mm, mv = g.variable(mm0.copy(), trainable=False), g.variable(mv0.copy(), trainable=False)
    y = kf.batch_norm(x, np.array([2.0, 3.0]), np.array([0.5, 0.0]), mm, mv, training=training, momentum=0.8)
    updates = g.collections["update_ops"]
    xv = np.array([[0.0, 1.0], [2.0, 5.0]])
    got, _ = g.run([y, updates], {x: xv, training: False})
    np.testing.assert_allclose(got, _bn_ref(xv, [2.0, 3.0], [0.5, 0.0], mm0, mv0))
    np.testing.assert_allclose(mm.value(), mm0)
    np.testing.assert_allclose(mv.value(), mv0)
    got, _ = g.run([y, updates], {x: xv, training: True})
    np.testing.assert_allclose(got, _bn_ref(xv, [2.0, 3.0], [0.5, 0.0], xv.mean(0), xv.var(0)))
    np.testing.assert_allclose(mm.value(), 0.8 * mm0 + 0.2 * xv.mean(0))


def test_batch_norm_inference_creates_no_update_ops(g):
    x = g.placeholder((None, 2), "float32")
    mm, mv = g.variable(np.zeros(2, "f4")), g.variable(np.ones(2, "f4"))
    kf.batch_norm(x, None, None, mm, mv, training=False)
    assert g.collections.get("update_ops", []) == []


# --------------------------------------------------------------------------- dropout
def test_dropout_mask_rate_and_scaling(g):
    x = g.placeholder((None, 1000), "float32")
    y = kf.dropout(x, 0.3, seed=5)
    got = g.run(y, {x: np.ones((100, 1000), "float32")})
    kept = got != 0
    assert abs(kept.mean() - 0.7) < 0.01
    np.testing.assert_allclose(got[kept], 1 / 0.7, rtol=1e-6)
    assert got.dtype == np.float32


def test_dropout_training_false_returns_input_itself(g):
    x = g.placeholder((3,), "float32")
    assert kf.dropout(x, 0.5, training=False) is x
    assert kf.dropout(x, 0.0) is x


def test_dropout_training_tensor_false_is_identity_true_drops(g):
    x = g.placeholder((None, 200), "float64")
    training = g.placeholder((), "bool")
    y = kf.dropout(x, 0.5, training=training, seed=1)
    xv = np.random.default_rng(0).standard_normal((50, 200))
    np.testing.assert_array_equal(g.run(y, {x: xv, training: False}), xv)
    got = g.run(y, {x: xv, training: True})
    assert 0.45 < (got == 0).mean() < 0.55
    np.testing.assert_allclose(got[got != 0], 2 * xv[got != 0])


def test_dropout_gradient_equals_mask_times_scale(g):
    x = g.placeholder((40, 50), "float64")
    y = kf.dropout(x, 0.25, seed=3)
    gx = kf.gradients(kf.sum(y * 2.0), x)
    xv = np.random.default_rng(1).standard_normal((40, 50))
    yv, gv = g.run([y, gx], {x: xv})
    mask = yv != 0
    np.testing.assert_allclose(gv, 2.0 * mask / 0.75)
    np.testing.assert_allclose(yv, xv * mask / 0.75)


def test_dropout_new_mask_each_run(g):
    x = g.placeholder((1000,), "float32")
    y = kf.dropout(x, 0.5)
    ones = np.ones(1000, "float32")
    assert not np.array_equal(g.run(y, {x: ones}), g.run(y, {x: ones}))


def test_dropout_bad_rate_raises(g):
    x = g.placeholder((3,), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"dropout: rate must be in \[0, 1\); got 1.0"):
        kf.dropout(x, 1.0)


# --------------------------------------------------------------------------- speed
def test_conv2d_small_cnn_trains_on_digits_in_seconds(g):
    from sklearn.datasets import load_digits

    digits = load_digits()
    xs = (digits.images / 16.0).astype("float32")[..., None]
    ys = digits.target.astype("int64")
    rng = np.random.default_rng(0)
    x = g.placeholder((None, 8, 8, 1), "float32")
    y = g.placeholder((None,), "int64")
    w1 = g.variable((rng.standard_normal((3, 3, 1, 16)) * 0.3).astype("float32"))
    w2 = g.variable((rng.standard_normal((3, 3, 16, 16)) * 0.1).astype("float32"))
    w3 = g.variable((rng.standard_normal((4 * 4 * 16, 10)) * 0.05).astype("float32"))
    h = kf.relu(kf.conv2d(x, w1, padding="SAME"))
    h = kf.max_pool2d(kf.relu(kf.conv2d(h, w2, padding="SAME")), 2)
    logits = kf.flatten(h) @ w3
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    params = [w1, w2, w3]
    step = kf.group([p.assign_sub(gp * 0.5) for p, gp in zip(params, kf.gradients(loss, params))])
    acc = kf.mean(kf.cast(kf.equal(kf.argmax(logits, axis=1), y), "float32"))
    for _ in range(3):
        for i in range(0, len(xs), 64):
            g.run(step, {x: xs[i:i + 64], y: ys[i:i + 64]})
    assert g.run(acc, {x: xs, y: ys}) > 0.9
