"""Learning-rate schedules: values at several steps against their closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

import kernelflow as kf

STEPS = [0, 1, 5, 99, 100, 101, 250, 1000, 5000]


def _values(g, schedule, steps=STEPS, dtype="int64"):
    step = g.placeholder((), dtype, name="step")
    lr = schedule(step)
    assert lr.shape == () and lr.dtype == "float64"
    return np.array([g.run(lr, feed={step: np.array(s, dtype)}) for s in steps])


def _cosine(s, lr, decay_steps, alpha):
    done = min(s, decay_steps) / decay_steps
    return lr * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * done)) + alpha)


def test_constant_is_the_same_at_every_step(g):
    step = g.placeholder((), "int64", name="step")
    lr = kf.optim.constant(0.125)(step)
    assert lr.dtype == "float64"
    assert g.run(lr) == 0.125  # it does not even need the step


def test_exponential_decay_matches_closed_form(g):
    got = _values(g, kf.optim.exponential_decay(0.1, 100, 0.5))
    np.testing.assert_allclose(got, [0.1 * 0.5 ** (s / 100) for s in STEPS], rtol=1e-13)


def test_exponential_decay_staircase_steps_down_every_decay_steps(g):
    got = _values(g, kf.optim.exponential_decay(0.1, 100, 0.5, staircase=True))
    np.testing.assert_allclose(got, [0.1 * 0.5 ** (s // 100) for s in STEPS], rtol=1e-13)
    assert got[STEPS.index(99)] == pytest.approx(0.1) and got[STEPS.index(100)] == pytest.approx(0.05)


def test_exponential_decay_accepts_float_step(g):
    got = _values(g, kf.optim.ExponentialDecay(2.0, 10, 0.9), steps=[0.0, 2.5, 15.0], dtype="float32")
    np.testing.assert_allclose(got, [2.0 * 0.9 ** (s / 10) for s in (0.0, 2.5, 15.0)], rtol=1e-13)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_cosine_decay_matches_closed_form_and_floors_at_alpha(g, alpha):
    got = _values(g, kf.optim.cosine_decay(0.2, 1000, alpha=alpha))
    np.testing.assert_allclose(got, [_cosine(s, 0.2, 1000, alpha) for s in STEPS], rtol=1e-12, atol=1e-16)
    assert got[-1] == pytest.approx(0.2 * alpha, abs=1e-15)  # past decay_steps the rate stays at the floor


def test_linear_warmup_ramps_then_follows_the_wrapped_schedule(g):
    inner = kf.optim.cosine_decay(0.1, 1000, alpha=0.01)
    got = _values(g, kf.optim.linear_warmup(inner, 100, initial_lr=0.001))
    want = [0.001 + (0.1 - 0.001) * s / 100 if s < 100 else _cosine(s - 100, 0.1, 1000, 0.01) for s in STEPS]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == pytest.approx(0.001) and got[STEPS.index(100)] == pytest.approx(0.1)


def test_linear_warmup_of_a_number_ramps_to_that_constant(g):
    got = _values(g, kf.optim.LinearWarmup(0.5, 10), steps=[0, 5, 10, 20])
    np.testing.assert_allclose(got, [0.0, 0.25, 0.5, 0.5], rtol=1e-13)


def test_schedule_nodes_live_in_the_graph_under_their_scope(g):
    step = g.placeholder((), "int64", name="step")
    lr = kf.optim.exponential_decay(0.1, 10, 0.5)(step)
    assert lr.name.startswith("ExponentialDecay/")
    assert repr(kf.optim.cosine_decay(0.1, 10)) == "CosineDecay(lr=0.1, decay_steps=10.0, alpha=0.0)"


@pytest.mark.parametrize("make, match", [
    (lambda: kf.optim.exponential_decay(0.1, 0, 0.5), r"exponential_decay: decay_steps must be > 0; got 0"),
    (lambda: kf.optim.cosine_decay(0.1, -5), r"cosine_decay: decay_steps must be > 0; got -5"),
    (lambda: kf.optim.linear_warmup(0.1, 0), r"linear_warmup: warmup_steps must be > 0; got 0"),
    (lambda: kf.optim.linear_warmup("fast", 10), r"linear_warmup: schedule: expected a Schedule or a number"),
    (lambda: kf.optim.constant("0.1"), r"constant: lr must be a Python number; got '0.1'"),
])
def test_schedule_bad_arguments_raise(make, match):
    with pytest.raises(kf.errors.InvalidArgumentError, match=match):
        make()


def test_schedule_non_scalar_step_raises(g):
    step = g.placeholder((2,), "int64", name="step")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"CosineDecay: step must be a 0-d tensor"):
        kf.optim.cosine_decay(0.1, 10)(step)
