"""Optimisers: steps against float64 numpy references of the documented formulas, slots,
global step, learning-rate forms, gradient clipping, convergence, and the fused update ops."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import kernelflow as kf

N, D, K = 8, 3, 2


# --------------------------------------------------------------------------- a tiny linear model
def _data(seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((N, D)), r.standard_normal((N, K)), r.standard_normal((D, K)), r.standard_normal(K)


def _model(g, dtype="float64", seed=0):
    """Linear least squares on fixed data: loss = mean((x @ w + b - y)^2)."""
    xv, yv, w0, b0 = _data(seed)
    with g.name_scope("dense1"):
        w = g.variable(w0.astype(dtype), name="w")
        b = g.variable(b0.astype(dtype), name="b")
    x = g.constant(xv.astype(dtype), name="x")
    y = g.constant(yv.astype(dtype), name="y")
    loss = kf.mean(kf.square(x @ w + b - y))
    return loss, w, b


def _np_grads(params, seed=0):
    xv, yv, _, _ = _data(seed)
    w, b = params
    r = xv @ w + b - yv
    return [2.0 / r.size * xv.T @ r, 2.0 / r.size * r.sum(0)]


def _np_loss(params, seed=0):
    xv, yv, _, _ = _data(seed)
    return np.mean((xv @ params[0] + params[1] - yv) ** 2)


# --------------------------------------------------------------------------- float64 references
def ref_sgd(lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    def step(p, g, s, t):
        g = g + weight_decay * p
        if not momentum:
            return p - lr * g
        s["a"] = momentum * s.get("a", 0.0) + g
        return p - lr * (g + momentum * s["a"] if nesterov else s["a"])
    return step


def ref_adam(lr, beta1=0.9, beta2=0.999, epsilon=1e-7):  # TF ApplyAdam
    def step(p, g, s, t):
        s["m"] = beta1 * s.get("m", 0.0) + (1 - beta1) * g
        s["v"] = beta2 * s.get("v", 0.0) + (1 - beta2) * g * g
        lr_t = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
        return p - lr_t * s["m"] / (np.sqrt(s["v"]) + epsilon)
    return step


def ref_adamw(lr, beta1=0.9, beta2=0.999, epsilon=1e-7, weight_decay=0.01):  # torch.optim.AdamW, written as there
    def step(p, g, s, t):
        p = p * (1 - lr * weight_decay)
        s["m"] = beta1 * s.get("m", 0.0) + (1 - beta1) * g
        s["v"] = beta2 * s.get("v", 0.0) + (1 - beta2) * g * g
        m_hat = s["m"] / (1 - beta1 ** t)
        v_hat = s["v"] / (1 - beta2 ** t)
        return p - lr * m_hat / (np.sqrt(v_hat) + epsilon)
    return step


def ref_rmsprop(lr, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False):  # TF ApplyRMSProp / Centered
    def step(p, g, s, t):
        s["ms"] = rho * s.get("ms", 0.0) + (1 - rho) * g * g
        denom = s["ms"]
        if centered:
            s["mg"] = rho * s.get("mg", 0.0) + (1 - rho) * g
            denom = denom - s["mg"] ** 2
        s["mom"] = momentum * s.get("mom", 0.0) + lr * g / np.sqrt(denom + epsilon)
        return p - s["mom"]
    return step


def ref_adagrad(lr, initial_accumulator_value=0.1, epsilon=1e-7):  # TF ApplyAdagradV2
    def step(p, g, s, t):
        s["acc"] = s.get("acc", initial_accumulator_value) + g * g
        return p - lr * g / (np.sqrt(s["acc"]) + epsilon)
    return step


def _reference(step_fn, steps, seed=0):
    _, _, w0, b0 = _data(seed)
    params, states = [w0.copy(), b0.copy()], [{}, {}]
    for t in range(1, steps + 1):
        grads = _np_grads(params, seed)
        params = [step_fn(p, gr, s, t) for p, gr, s in zip(params, grads, states)]
    return params


CONFIGS = [
    ("sgd", lambda: kf.optim.SGD(0.1), ref_sgd(0.1)),
    ("sgd_weight_decay", lambda: kf.optim.SGD(0.1, weight_decay=0.05), ref_sgd(0.1, weight_decay=0.05)),
    ("momentum", lambda: kf.optim.SGD(0.05, momentum=0.9), ref_sgd(0.05, 0.9)),
    ("nesterov", lambda: kf.optim.SGD(0.05, momentum=0.8, nesterov=True), ref_sgd(0.05, 0.8, True)),
    ("momentum_weight_decay", lambda: kf.optim.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
     ref_sgd(0.05, 0.9, True, 0.1)),
    ("adam", lambda: kf.optim.Adam(0.01), ref_adam(0.01)),
    ("adam_custom", lambda: kf.optim.Adam(0.05, beta1=0.5, beta2=0.9, epsilon=1e-3), ref_adam(0.05, 0.5, 0.9, 1e-3)),
    ("adamw", lambda: kf.optim.AdamW(0.01), ref_adamw(0.01)),
    ("adamw_custom", lambda: kf.optim.AdamW(0.05, 0.8, 0.95, 1e-2, weight_decay=0.3),
     ref_adamw(0.05, 0.8, 0.95, 1e-2, 0.3)),
    ("rmsprop", lambda: kf.optim.RMSProp(0.01), ref_rmsprop(0.01)),
    ("rmsprop_momentum", lambda: kf.optim.RMSProp(0.01, rho=0.8, momentum=0.9, epsilon=1e-4),
     ref_rmsprop(0.01, 0.8, 0.9, 1e-4)),
    ("rmsprop_centered", lambda: kf.optim.RMSProp(0.01, centered=True), ref_rmsprop(0.01, centered=True)),
    ("rmsprop_centered_momentum", lambda: kf.optim.RMSProp(0.02, momentum=0.5, centered=True, epsilon=1e-3),
     ref_rmsprop(0.02, momentum=0.5, epsilon=1e-3, centered=True)),
    ("adagrad", lambda: kf.optim.Adagrad(0.1), ref_adagrad(0.1)),
    ("adagrad_custom", lambda: kf.optim.Adagrad(0.5, initial_accumulator_value=0.0, epsilon=1e-3),
     ref_adagrad(0.5, 0.0, 1e-3)),
]


@pytest.mark.parametrize("name, make, ref", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_optimizer_steps_match_float64_reference(g, name, make, ref):
    loss, w, b = _model(g)
    train = make().minimize(loss)
    for steps in range(1, 5):
        g.run(train)
        want = _reference(ref, steps)
        np.testing.assert_allclose(w.value(), want[0], rtol=1e-12, atol=1e-14, err_msg=f"w after {steps} steps")
        np.testing.assert_allclose(b.value(), want[1], rtol=1e-12, atol=1e-14, err_msg=f"b after {steps} steps")


@pytest.mark.parametrize("name, make, ref", CONFIGS[::3], ids=[c[0] for c in CONFIGS[::3]])
def test_optimizer_float32_variables_match_reference_loosely(g, name, make, ref):
    loss, w, b = _model(g, "float32")
    train = make().minimize(loss)
    for _ in range(3):
        g.run(train)
    want = _reference(ref, 3)
    assert w.value().dtype == np.float32
    np.testing.assert_allclose(w.value(), want[0], rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(b.value(), want[1], rtol=2e-5, atol=2e-6)


def test_run_train_and_loss_reports_loss_before_the_step(g):
    loss, w, b = _model(g)
    train = kf.optim.Adam(0.1).minimize(loss)
    for steps in range(3):
        before = _reference(ref_adam(0.1), steps) if steps else list(_data()[2:])
        _, got = g.run([train, loss])
        assert got == pytest.approx(_np_loss(before), rel=1e-12)
    assert g.run(loss) == pytest.approx(_np_loss(_reference(ref_adam(0.1), 3)), rel=1e-12)


# --------------------------------------------------------------------------- global step and slots
def test_minimize_creates_and_increments_int64_global_step(g):
    loss, _, _ = _model(g)
    train = kf.optim.SGD(0.1).minimize(loss)
    step = g["global_step"]
    assert isinstance(step, kf.Variable) and step.dtype == "int64" and step.shape == () and not step.trainable
    for _ in range(3):
        g.run(train)
    assert step.value() == 3


def test_second_optimizer_reuses_the_graph_global_step(g):
    loss, w, b = _model(g)
    t1 = kf.optim.SGD(0.1).minimize(loss, var_list=[w])
    t2 = kf.optim.Adam(0.1).minimize(loss, var_list=[b])
    g.run(t1)
    g.run(t2)
    g.run([t1, t2])
    assert g["global_step"].value() == 4
    assert [v.name for v in g.variables()].count("global_step") == 1


def test_explicit_global_step_is_incremented_instead(g):
    loss, _, _ = _model(g)
    my_step = g.variable(np.array(10, np.int32), name="my_step", trainable=False)
    train = kf.optim.Adam(0.01).minimize(loss, global_step=my_step)
    g.run(train)
    assert my_step.value() == 11 and "global_step" not in g


def test_adam_bias_correction_uses_the_global_step_value(g):
    # Starting at step 5 is the same as the 6th update of a fresh optimiser for the bias terms.
    loss, w, b = _model(g)
    step = g.variable(np.array(5, np.int64), name="global_step", trainable=False)
    opt = kf.optim.Adam(0.01, beta1=0.5, beta2=0.6)
    train = opt.minimize(loss)
    g.run(train)
    _, _, w0, _ = _data()
    grad = _np_grads(list(_data()[2:]))[0]
    m, v = 0.5 * grad, 0.4 * grad * grad
    want = w0 - 0.01 * np.sqrt(1 - 0.6 ** 6) / (1 - 0.5 ** 6) * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(w.value(), want, rtol=1e-12)
    assert step.value() == 6


def test_slot_variables_are_named_under_the_optimizer_and_not_trainable(g):
    loss, w, b = _model(g)
    trainable_before = g.trainable_variables()
    opt = kf.optim.Adam(0.01)
    opt.minimize(loss)
    assert opt.get_slot(w, "m").name == "Adam/dense1/w/m"
    assert opt.get_slot(b, "v").name == "Adam/dense1/b/v"
    assert opt.get_slot_names() == ["m", "v"]
    for slot in opt.variables():
        assert not slot.trainable and slot.shape in (w.shape, b.shape) and slot.dtype == "float64"
        np.testing.assert_array_equal(slot.value(), 0.0)
    assert g.trainable_variables() == trainable_before


def test_second_optimizer_of_a_class_gets_its_own_scope(g):
    loss, w, b = _model(g)
    kf.optim.Adam(0.01).minimize(loss)
    opt2 = kf.optim.Adam(0.01)
    opt2.minimize(loss)
    assert opt2.get_slot(w, "m").name == "Adam_1/dense1/w/m"


@pytest.mark.parametrize("make, slots", [
    (lambda: kf.optim.SGD(0.1), []),
    (lambda: kf.optim.SGD(0.1, momentum=0.9), ["momentum"]),
    (lambda: kf.optim.RMSProp(centered=True), ["rms", "momentum", "mg"]),
    (lambda: kf.optim.Adagrad(initial_accumulator_value=0.25), ["accumulator"]),
    (lambda: kf.optim.AdamW(), ["m", "v"]),
])
def test_slot_names_per_optimizer(g, make, slots):
    loss, w, _ = _model(g)
    opt = make()
    opt.minimize(loss)
    assert opt.get_slot_names() == slots
    assert [opt.get_slot(w, s).name for s in slots] == [f"{opt.name}/dense1/w/{s}" for s in slots]
    if slots == ["accumulator"]:
        np.testing.assert_array_equal(opt.get_slot(w, "accumulator").value(), np.full(w.shape, 0.25))


def test_get_slot_unknown_raises(g):
    loss, w, _ = _model(g)
    opt = kf.optim.Adam()
    opt.minimize(loss)
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"Adam: no slot 'accum' for variable 'dense1/w'"):
        opt.get_slot(w, "accum")


def test_minimize_twice_shares_slots(g):
    loss, w, _ = _model(g)
    opt = kf.optim.Adam(0.01)
    opt.minimize(loss)
    opt.minimize(loss * 2.0)
    assert sum(1 for v in g.variables() if v.name.startswith("Adam")) == 4


# --------------------------------------------------------------------------- var_list, pairs, update_ops
def test_minimize_var_list_subset_updates_only_those(g):
    loss, w, b = _model(g)
    opt = kf.optim.Adam(0.1)
    train = opt.minimize(loss, var_list=[b])
    g.run(train)
    np.testing.assert_array_equal(w.value(), _data()[2])
    assert not np.allclose(b.value(), _data()[3])
    assert [v.name for v in opt.variables()] == ["Adam/dense1/b/m", "Adam/dense1/b/v"]


def test_apply_gradients_skips_none_grads(g):
    loss, w, b = _model(g)
    opt = kf.optim.SGD(0.5)
    (gw, _), (gb, _) = opt.compute_gradients(loss, [w, b])
    train = opt.apply_gradients([(gw, w), (None, b)])
    g.run(train)
    want_w = _data()[2] - 0.5 * _np_grads(list(_data()[2:]))[0]
    np.testing.assert_allclose(w.value(), want_w, rtol=1e-12)
    np.testing.assert_array_equal(b.value(), _data()[3])


def test_apply_gradients_all_none_raises(g):
    _, w, b = _model(g)
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"SGD.apply_gradients: every gradient is None"):
        kf.optim.SGD().apply_gradients([(None, w), (None, b)])


def test_minimize_loss_independent_of_vars_raises(g):
    loss, w, b = _model(g)
    other = g.variable(np.ones(3), name="other")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"Adam.minimize: loss '.*' depends on none of the "
                                                              r"variables \['other'\]"):
        kf.optim.Adam().minimize(loss, var_list=[other])


def test_minimize_runs_update_ops_of_the_collection(g):
    loss, _, _ = _model(g)
    counter = g.variable(np.array(0.0), name="counter", trainable=False)
    g.add_to_collection("update_ops", counter.assign_add(1.0))
    train = kf.optim.SGD(0.1).minimize(loss)
    g.run(train)
    g.run(train)
    assert counter.value() == 2.0


def test_compute_gradients_bad_inputs_raise(g):
    loss, w, _ = _model(g)
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"SGD: var_list must hold kf.Variables"):
        kf.optim.SGD().compute_gradients(loss, [w * 2.0])
    ints = g.variable(np.arange(3), name="ints")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"SGD: variable 'ints' has dtype int64"):
        kf.optim.SGD().compute_gradients(loss, [ints])


@pytest.mark.parametrize("make, match", [
    (lambda: kf.optim.SGD(-0.1), r"SGD: lr must be in \[0.0, inf\]; got -0.1"),
    (lambda: kf.optim.SGD(0.1, nesterov=True), r"SGD: nesterov=True needs momentum > 0"),
    (lambda: kf.optim.Adam(beta1=1.0), r"Adam: beta1 must be in \[0.0, 1.0\); got 1.0"),
    (lambda: kf.optim.AdamW(weight_decay=-1), r"AdamW: weight_decay must be in \[0.0, inf\]; got -1"),
    (lambda: kf.optim.RMSProp(rho="x"), r"RMSProp: rho must be a number; got 'x'"),
    (lambda: kf.optim.Adagrad(lr="fast"), r"Adagrad: lr must be a number, a 0-d tensor or a schedule"),
])
def test_optimizer_bad_hyperparameters_raise(make, match):
    with pytest.raises(kf.errors.InvalidArgumentError, match=match):
        make()


# --------------------------------------------------------------------------- learning-rate forms
def test_lr_variable_changed_between_steps_is_used(g):
    loss, w, b = _model(g)
    lr = g.variable(np.array(0.1), name="lr", trainable=False)
    train = kf.optim.SGD(lr).minimize(loss, var_list=[w, b])
    g.run(train)
    lr.set(0.5)
    g.run(train)
    params = list(_data()[2:])
    for rate in (0.1, 0.5):
        params = [p - rate * gr for p, gr in zip(params, _np_grads(params))]
    np.testing.assert_allclose(w.value(), params[0], rtol=1e-12)
    np.testing.assert_allclose(b.value(), params[1], rtol=1e-12)


def test_lr_schedule_is_evaluated_at_the_step_before_the_update(g):
    loss, w, b = _model(g)
    sched = kf.optim.exponential_decay(0.2, 1, 0.5)
    train = kf.optim.SGD(sched).minimize(loss)
    for _ in range(3):
        g.run(train)
    params = list(_data()[2:])
    for step in range(3):
        params = [p - 0.2 * 0.5 ** step * gr for p, gr in zip(params, _np_grads(params))]
    np.testing.assert_allclose(w.value(), params[0], rtol=1e-12)


def test_lr_schedule_with_adam_matches_reference(g):
    loss, w, b = _model(g)
    train = kf.optim.Adam(kf.optim.linear_warmup(0.1, 2)).minimize(loss)
    for _ in range(3):
        g.run(train)
    _, _, w0, b0 = _data()
    params, states = [w0.copy(), b0.copy()], [{}, {}]
    for t, rate in enumerate([0.0, 0.05, 0.1], start=1):
        grads = _np_grads(params)
        params = [ref_adam(rate)(p, gr, s, t) for p, gr, s in zip(params, grads, states)]
    np.testing.assert_allclose(w.value(), params[0], rtol=1e-12)


def test_lr_non_scalar_tensor_raises(g):
    lr = g.variable(np.ones(2), name="lr")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"SGD: lr must be a 0-d floating tensor"):
        kf.optim.SGD(lr)


# --------------------------------------------------------------------------- clip_by_global_norm
def _np_clip(arrays, clip_norm):
    norm = np.sqrt(sum((a ** 2).sum() for a in arrays))
    return [a * clip_norm * min(1 / norm, 1 / clip_norm) for a in arrays], norm


@pytest.mark.parametrize("clip_norm", [0.5, 100.0])
def test_clip_by_global_norm_matches_numpy(g, rng, clip_norm):
    arrays = [rng.standard_normal((3, 4)), rng.standard_normal(5), np.array(2.0)]
    ts = [g.constant(a) for a in arrays]
    clipped, norm = kf.optim.clip_by_global_norm(ts[:1] + [None] + ts[1:], clip_norm)
    assert clipped[1] is None and len(clipped) == 4
    got = g.run([c for c in clipped if c is not None] + [norm])
    want, want_norm = _np_clip(arrays, clip_norm)
    assert got[-1] == pytest.approx(want_norm, rel=1e-13)
    for a, b in zip(got[:-1], want):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    if clip_norm == 100.0:
        for a, b in zip(got[:-1], arrays):
            np.testing.assert_array_equal(a, b)
    else:
        assert np.sqrt(sum((a ** 2).sum() for a in got[:-1])) == pytest.approx(clip_norm, rel=1e-12)


def test_clip_by_global_norm_mixed_dtypes_and_tensor_clip(g, rng):
    a32 = rng.standard_normal(4).astype(np.float32)
    a64 = rng.standard_normal(3)
    clip = g.variable(np.array(1.0, np.float32), name="clip", trainable=False)
    clipped, norm = kf.optim.clip_by_global_norm([g.constant(a32), g.constant(a64)], clip)
    assert norm.dtype == "float64" and clipped[0].dtype == "float32"
    got = g.run(clipped + [norm])
    want, want_norm = _np_clip([a32.astype(np.float64), a64], 1.0)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
    assert got[2] == pytest.approx(want_norm, rel=1e-6)  # the float32 part is summed in float32


def test_clip_by_global_norm_zero_grads_stay_zero(g):
    clipped, norm = kf.optim.clip_by_global_norm([g.constant(np.zeros(3))], 1.0)
    got, n = g.run([clipped[0], norm])
    np.testing.assert_array_equal(got, np.zeros(3))
    assert n == 0.0


def test_clip_by_global_norm_inf_norm_gives_nan(g):
    clipped, norm = kf.optim.clip_by_global_norm([g.constant(np.array([np.inf, 1.0]))], 1.0)
    got, n = g.run([clipped[0], norm])
    assert np.isinf(n) and np.isnan(got).all()


def test_clip_by_global_norm_bad_arguments_raise(g):
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"clip_by_global_norm: every gradient is None"):
        kf.optim.clip_by_global_norm([None], 1.0)
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"clip_by_global_norm: clip_norm must be > 0"):
        kf.optim.clip_by_global_norm([g.constant(np.ones(2))], 0.0)


def test_clipped_gradients_train_through_apply_gradients(g):
    loss, w, b = _model(g)
    opt = kf.optim.SGD(0.1)
    pairs = opt.compute_gradients(loss)
    clipped, _ = kf.optim.clip_by_global_norm([gr for gr, _ in pairs], 0.1)
    g.run(opt.apply_gradients(list(zip(clipped, [v for _, v in pairs]))))
    params = list(_data()[2:])
    grads, _ = _np_clip(_np_grads(params), 0.1)
    np.testing.assert_allclose(w.value(), params[0] - 0.1 * grads[0], rtol=1e-12)


# --------------------------------------------------------------------------- convergence
def _logistic_data(seed=3, n=200):
    r = np.random.default_rng(seed)
    labels = r.integers(0, 2, n)
    centers = np.array([[-1.5, 1.0], [1.5, -1.0]])
    feats = centers[labels] + r.standard_normal((n, 2)) * 0.7
    return feats.astype(np.float32), labels.astype(np.float32)


@pytest.mark.parametrize("make", [
    lambda: kf.optim.SGD(0.5), lambda: kf.optim.SGD(0.1, momentum=0.9, nesterov=True),
    lambda: kf.optim.Adam(0.05), lambda: kf.optim.AdamW(0.05), lambda: kf.optim.RMSProp(0.02),
    lambda: kf.optim.RMSProp(0.01, momentum=0.5, centered=True), lambda: kf.optim.Adagrad(0.5),
], ids=["sgd", "nesterov", "adam", "adamw", "rmsprop", "rmsprop_centered", "adagrad"])
def test_logistic_regression_converges(g, make):
    feats, labels = _logistic_data()
    x = g.placeholder((None, 2), "float32", name="x")
    y = g.placeholder((None,), "float32", name="y")
    w = g.variable(np.zeros(2, np.float32), name="w")
    b = g.variable(np.float32(0.0), name="b")
    logits = kf.sum(x * w, axis=1) + b
    p = kf.sigmoid(logits)
    loss = -kf.mean(y * kf.log(p + 1e-7) + (1 - y) * kf.log(1 - p + 1e-7))
    train = make().minimize(loss)
    losses = [g.run([train, loss], feed={x: feats, y: labels})[1] for _ in range(150)]
    acc = np.mean((g.run(p, feed={x: feats}) > 0.5) == labels)
    assert acc >= 0.97 and losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------- threads and the fused ops
def test_two_graphs_training_in_two_threads_match_sequential_results(rt):
    def train(name, out):
        g = rt.graph(name)
        loss, w, b = _model(g)
        op = kf.optim.Adam(0.01).minimize(loss)
        for _ in range(200):
            g.run(op)
        out[name] = (w.value(), b.value())

    results: dict = {}
    threads = [threading.Thread(target=train, args=(f"g{i}", results)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    want = _reference(ref_adam(0.01), 200)
    for name in ("g0", "g1"):
        np.testing.assert_allclose(results[name][0], want[0], rtol=1e-11)
        np.testing.assert_allclose(results[name][1], want[1], rtol=1e-11)


def test_apply_adam_op_output_is_the_updated_variable(g):
    var = g.variable(np.array([1.0, 2.0]), name="var")
    m = g.variable(np.zeros(2), name="m", trainable=False)
    v = g.variable(np.zeros(2), name="v", trainable=False)
    out = kf.apply_adam(var, m, v, g.constant(np.array([0.5, -1.0])), 0.1, beta1=0.5, beta2=0.5, epsilon=0.0)
    got = g.run(out)
    # m = 0.5 g, v = 0.5 g^2 -> step = lr * sign(g) * 0.5 / sqrt(0.5)
    want = np.array([1.0, 2.0]) - 0.1 * np.array([1.0, -1.0]) * 0.5 / np.sqrt(0.5)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    np.testing.assert_allclose(var.value(), want, rtol=1e-14)
    got[0] = 99.0  # the fetched value is a copy, not the storage
    np.testing.assert_allclose(var.value(), want, rtol=1e-14)


def test_fused_update_grad_shape_mismatch_raises(g):
    var = g.variable(np.zeros((3, 4)), name="var")
    m = g.variable(np.zeros((3, 4)), name="m")
    v = g.variable(np.zeros((3, 4)), name="v")
    with pytest.raises(kf.errors.ShapeError, match=r"apply_adam: grad must have the variable's shape; got "
                                                   r"var.shape=\(3, 4\), grad.shape=\(4, 3\)"):
        kf.apply_adam(var, m, v, g.constant(np.zeros((4, 3))), 0.1)


def test_fused_update_slot_shape_mismatch_raises(g):
    var = g.variable(np.zeros(3), name="var")
    accum = g.variable(np.zeros(2), name="accum")
    with pytest.raises(kf.errors.ShapeError, match=r"apply_momentum: accum must have the variable's shape; got "
                                                   r"var.shape=\(3,\), accum.shape=\(2,\)"):
        kf.apply_momentum(var, accum, g.constant(np.zeros(3)), 0.1, momentum=0.9)


def test_fused_update_non_scalar_lr_raises(g):
    var = g.variable(np.zeros(3), name="var")
    with pytest.raises(kf.errors.ShapeError, match=r"apply_gradient_descent: lr must be a scalar \(0-d\); got "
                                                   r"lr.shape=\(3,\)"):
        kf.apply_gradient_descent(var, g.constant(np.zeros(3)), g.constant(np.ones(3)))


def test_fused_update_dtype_mismatch_raises(g):
    var = g.variable(np.zeros(3), name="var")
    accum = g.variable(np.zeros(3), name="accum")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"apply_adagrad: grad must have the variable's "
                                                             r"dtype; got var.dtype=float64, grad.dtype=float32"):
        kf.apply_adagrad(var, accum, g.constant(np.zeros(3, np.float32)), 0.1)


def test_fused_update_on_a_non_variable_raises(g):
    var = g.variable(np.zeros(3), name="var")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"apply_rmsprop: 'ms' must be a kf.Variable"):
        kf.apply_rmsprop(var, var * 1.0, var, g.constant(np.zeros(3)), 0.1)


def test_fused_update_ops_are_stateful_in_place_and_not_differentiable():
    from kernelflow.graph.ops import training as T

    for op in (T.apply_gradient_descent_op, T.apply_momentum_op, T.apply_adam_op, T.apply_adamw_op,
               T.apply_rmsprop_op, T.apply_centered_rmsprop_op, T.apply_adagrad_op):
        n_slots = op.inputs.index("grad")
        assert op.stateful and op.alias and not op.differentiable
        assert op.mutates == tuple(range(n_slots)), op.name


def test_minimize_non_scalar_loss_raises_with_the_fix(g):
    # issue #14 item 9: a per-example loss was summed silently (PyTorch refuses it too)
    _, w, _ = _model(g)
    per_example = kf.square(w * 2.0)  # shape (D, K)
    with pytest.raises(kf.errors.InvalidArgumentError,
                       match=r"Adam.minimize: the loss must be a scalar; got '.*' of shape \(3, 2\)"
                             r".*kf.mean\(loss\)"):
        kf.optim.Adam(0.1).minimize(per_example)
    w0 = g.run(w)
    train = kf.optim.SGD(0.1).minimize(kf.mean(per_example))  # the fix the message names works
    g.run(train)
    # d/dw mean(4 w^2) = 8 w / w.size
    np.testing.assert_allclose(g.run(w), w0 - 0.1 * 8 * w0 / w0.size, rtol=1e-10)
