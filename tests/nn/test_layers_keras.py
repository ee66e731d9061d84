"""Layer numerics against Keras (tensorflow-cpu) with the same weights, in float64, and the
gradients of every layer against central finite differences."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kernelflow as kf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def rt():
    runtime = kf.connect("inproc")
    yield runtime
    runtime.close()


_count = iter(range(10**6))


def _graph(rt):
    return rt.graph(f"keras_cmp_{next(_count)}")


# (our layer, keras layer, input shapes, input kind, call kwargs)
CASES = {
    "dense": (lambda: kf.nn.Dense(4, activation="tanh"), lambda: keras.layers.Dense(4, activation="tanh"), [(5, 3)]),
    "dense_3d": (lambda: kf.nn.Dense(4), lambda: keras.layers.Dense(4), [(2, 5, 3)]),
    "conv2d_same_strided": (lambda: kf.nn.Conv2D(3, 3, strides=2, padding="same", activation="relu"),
                            lambda: keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu"),
                            [(2, 7, 6, 2)]),
    "conv2d_valid": (lambda: kf.nn.Conv2D(4, (2, 3)), lambda: keras.layers.Conv2D(4, (2, 3)), [(2, 6, 6, 3)]),
    "conv1d": (lambda: kf.nn.Conv1D(4, 3, padding="same"), lambda: keras.layers.Conv1D(4, 3, padding="same"),
               [(2, 9, 3)]),
    "conv1d_strided_valid": (lambda: kf.nn.Conv1D(2, 2, strides=2), lambda: keras.layers.Conv1D(2, 2, strides=2),
                             [(2, 8, 3)]),
    "conv2d_transpose_same": (lambda: kf.nn.Conv2DTranspose(3, 3, strides=2, padding="same"),
                              lambda: keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same"), [(2, 4, 5, 2)]),
    "conv2d_transpose_valid": (lambda: kf.nn.Conv2DTranspose(2, (3, 2), strides=(2, 1)),
                               lambda: keras.layers.Conv2DTranspose(2, (3, 2), strides=(2, 1)), [(2, 3, 4, 3)]),
    "layer_norm": (lambda: kf.nn.LayerNormalization(), lambda: keras.layers.LayerNormalization(), [(4, 6)]),
    "mha_self": (lambda: kf.nn.MultiHeadAttention(2, 3), lambda: keras.layers.MultiHeadAttention(2, 3),
                 [(2, 4, 5), (2, 4, 5)]),
    "mha_cross_value_dim": (lambda: kf.nn.MultiHeadAttention(3, 2, value_dim=4, output_shape=6),
                            lambda: keras.layers.MultiHeadAttention(3, 2, value_dim=4, output_shape=6),
                            [(2, 3, 5), (2, 6, 4)]),
    "max_pool": (lambda: kf.nn.MaxPool2D(2), lambda: keras.layers.MaxPooling2D(2), [(2, 6, 5, 3)]),
    "avg_pool_same": (lambda: kf.nn.AvgPool2D(3, strides=2, padding="same"),
                      lambda: keras.layers.AveragePooling2D(3, strides=2, padding="same"), [(2, 5, 5, 2)]),
    "global_avg_pool": (lambda: kf.nn.GlobalAvgPool2D(), lambda: keras.layers.GlobalAveragePooling2D(),
                        [(2, 3, 4, 5)]),
}


def _keras_out(klayer, xs):
    return np.asarray(klayer(*xs) if len(xs) > 1 else klayer(xs[0]))


def _random_weights(klayer):
    """Non-trivial weights (biases, gammas and betas too), set into the Keras layer."""
    ws = [RNG.normal(0.0, 0.5, w.shape) + (1.0 if "gamma" in w.path or "variance" in w.path else 0.0)
          for w in klayer.weights]
    ws = [np.abs(w) + 0.1 if "variance" in k.path else w for w, k in zip(ws, klayer.weights)]
    klayer.set_weights(ws)
    return ws


@pytest.mark.parametrize("case", sorted(CASES))
def test_layer_forward_matches_keras_float64(rt, case):
    ours_f, keras_f, shapes = CASES[case]
    xs = [RNG.normal(size=s) for s in shapes]
    klayer = keras_f()
    klayer.dtype_policy = keras.DTypePolicy("float64")
    _keras_out(klayer, xs)  # build
    ws = _random_weights(klayer)
    expect = _keras_out(klayer, xs)
    g = _graph(rt)
    phs = [g.placeholder((None, *s[1:]), "float64", name=f"x{i}") for i, s in enumerate(shapes)]
    layer = ours_f()
    out = layer(*phs) if len(phs) > 1 else layer(phs[0])
    assert out.dtype == "float64"
    layer.set_weights(ws)
    got = g.run(out, dict(zip(phs, xs)))
    assert got.shape == expect.shape
    # Keras' MultiHeadAttention rounds through float32 somewhere even under a float64 policy (it
    # differs from a float64 numpy reference by ~1e-7); test_mha_matches_float64_reference is exact.
    tol = 1e-6 if case.startswith("mha") else 1e-9
    np.testing.assert_allclose(got, expect, rtol=tol, atol=tol / 10)


def test_mha_matches_float64_reference(rt):
    q, v = RNG.normal(size=(2, 3, 5)), RNG.normal(size=(2, 6, 4))
    g = _graph(rt)
    pq, pv = g.placeholder((None, 3, 5), "float64", name="q"), g.placeholder((None, 6, 4), "float64", name="v")
    layer = kf.nn.MultiHeadAttention(3, 2, value_dim=4, output_shape=6)
    out = layer(pq, pv)
    ws = [RNG.normal(size=w.shape) for w in layer.variables()]
    layer.set_weights(ws)
    wq, bq, wk, bk, wv, bv, wo, bo = ws
    qh = (np.einsum("abc,cde->abde", q, wq) + bq) / np.sqrt(2.0)
    kh = np.einsum("abc,cde->abde", v, wk) + bk
    vh = np.einsum("abc,cde->abde", v, wv) + bv
    s = np.einsum("aecd,abcd->acbe", kh, qh)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    expect = np.einsum("abcd,cde->abe", np.einsum("acbe,aecd->abcd", p, vh), wo) + bo
    np.testing.assert_allclose(g.run(out, {pq: q, pv: v}), expect, rtol=1e-10, atol=1e-12)


def test_embedding_matches_keras(rt):
    ids = RNG.integers(0, 7, size=(3, 5))
    klayer = keras.layers.Embedding(7, 4, dtype="float64")
    klayer(ids)
    ws = _random_weights(klayer)
    g = _graph(rt)
    ph = g.placeholder((None, 5), "int64", name="ids")
    layer = kf.nn.Embedding(7, 4, dtype="float64")
    out = layer(ph)
    layer.set_weights(ws)
    np.testing.assert_allclose(g.run(out, {ph: ids}), np.asarray(klayer(ids)), rtol=1e-12)


def test_batch_norm_training_inference_and_moving_stats_after_steps_match_keras(rt):
    xs = [RNG.normal(1.0, 2.0, size=(8, 3, 3, 4)) for _ in range(4)]
    klayer = keras.layers.BatchNormalization(momentum=0.9, dtype="float64")
    klayer(xs[0])
    ws = _random_weights(klayer)
    g = _graph(rt)
    ph = g.placeholder((None, 3, 3, 4), "float64", name="x")
    layer = kf.nn.BatchNormalization(momentum=0.9)
    train_out = layer(ph, training=True)
    infer_out = layer(ph, training=False)
    layer.set_weights(ws)
    updates = kf.group(*g.collections["update_ops"])
    for x in xs:  # N training steps: the output uses batch statistics and the moving ones move
        expect = np.asarray(klayer(x, training=True))
        got, _ = g.run([train_out, updates], {ph: x})
        np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-10)
    kw = klayer.get_weights()
    ow = layer.get_weights()
    for a, b, name in zip(ow, kw, ["gamma", "beta", "moving_mean", "moving_variance"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, err_msg=name)
    assert not np.allclose(ow[2], ws[2])  # they did move
    # inference: the moving statistics normalise, and nothing changes
    np.testing.assert_allclose(g.run(infer_out, {ph: xs[0]}), np.asarray(klayer(xs[0], training=False)),
                               rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(layer.get_weights()[2], ow[2])


def test_dropout_is_the_identity_in_inference_and_scales_in_training(rt):
    g = _graph(rt)
    ph = g.placeholder((None, 200), "float64", name="x")
    layer = kf.nn.Dropout(0.25, seed=1)
    x = RNG.normal(size=(50, 200))
    np.testing.assert_array_equal(g.run(layer(ph, training=False), {ph: x}), x)
    np.testing.assert_array_equal(np.asarray(keras.layers.Dropout(0.25, dtype="float64")(x, training=False)), x)
    y = g.run(layer(ph, training=True), {ph: x})
    kept = y != 0
    assert 0.65 < kept.mean() < 0.85
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-12)


# --------------------------------------------------------------------------- finite differences
GRAD_CASES = {
    "dense": (lambda: kf.nn.Dense(3, activation="tanh"), [(4, 5)], {}),
    "conv2d": (lambda: kf.nn.Conv2D(2, 3, strides=2, padding="same"), [(2, 5, 5, 2)], {}),
    "conv1d": (lambda: kf.nn.Conv1D(2, 3), [(2, 6, 3)], {}),
    "conv2d_transpose": (lambda: kf.nn.Conv2DTranspose(2, 3, strides=2), [(2, 3, 3, 2)], {}),
    "batch_norm_training": (lambda: kf.nn.BatchNormalization(), [(6, 3)], {"training": True}),
    "layer_norm": (lambda: kf.nn.LayerNormalization(), [(3, 5)], {}),
    "mha": (lambda: kf.nn.MultiHeadAttention(2, 2), [(2, 3, 4), (2, 3, 4)], {}),
}


def _directional_check(g, loss, phs, xs, wrt, grads, eps=1e-6):
    """<grad, d> against (f(v + eps d) - f(v - eps d)) / (2 eps) for a random direction d."""
    feed = dict(zip(phs, xs))
    got = g.run(grads, feed)
    for v, gv in zip(wrt, got):
        d = RNG.normal(size=gv.shape)
        if v in phs:
            i = phs.index(v)
            fp = g.run(loss, {**feed, v: xs[i] + eps * d})
            fm = g.run(loss, {**feed, v: xs[i] - eps * d})
        else:
            base = g.read_variable(v)
            g.write_variable(v, base + eps * d)
            fp = g.run(loss, feed)
            g.write_variable(v, base - eps * d)
            fm = g.run(loss, feed)
            g.write_variable(v, base)
        numeric = (fp - fm) / (2 * eps)
        np.testing.assert_allclose(np.sum(gv * d), numeric, rtol=1e-5, atol=1e-8, err_msg=v.name)


@pytest.mark.parametrize("case", sorted(GRAD_CASES))
def test_layer_gradients_match_finite_differences(rt, case):
    make, shapes, kw = GRAD_CASES[case]
    g = _graph(rt)
    phs = [g.placeholder(s, "float64", name=f"x{i}") for i, s in enumerate(shapes)]
    layer = make()
    out = layer(*phs, **kw) if len(phs) > 1 else layer(phs[0], **kw)
    r = g.constant(RNG.normal(size=out.shape))
    loss = kf.sum(out * r)
    vs = [v for v in layer.variables() if v.trainable]  # batch norm's moving statistics get no gradient
    assert vs, "the layer has variables"
    for v in vs:  # away from the initial zeros/ones, so every term matters
        g.write_variable(v, g.read_variable(v) + RNG.normal(0.0, 0.3, v.shape))
    wrt = list(phs[:1]) + vs
    grads = kf.gradients(loss, wrt)
    _directional_check(g, loss, phs, [RNG.normal(size=s) for s in shapes], wrt, grads)


def test_embedding_gradient_matches_finite_differences(rt):
    g = _graph(rt)
    ph = g.placeholder((2, 4), "int64", name="ids")
    layer = kf.nn.Embedding(6, 3, dtype="float64")
    out = layer(ph)
    loss = kf.sum(out * g.constant(RNG.normal(size=(2, 4, 3))))
    (grad,) = kf.gradients(loss, [layer.embeddings])
    _directional_check(g, loss, [ph], [np.array([[0, 1, 1, 5], [2, 2, 2, 0]])], [layer.embeddings], [grad])
