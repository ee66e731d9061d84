"""Random ops: seeded determinism across runtimes, fresh samples per run, moments, permutations."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf


def _sample_twice(build, seed=7):
    """Two successive runs of ``build(graph)`` in a fresh runtime whose graph has ``seed``."""
    rt = kf.connect("inproc")
    try:
        g = rt.graph("r", seed=seed)
        t = build(g)
        return g.run(t), g.run(t)
    finally:
        rt.close()


BUILDERS = {
    "normal": lambda g: kf.random_normal((50, 3), graph=g, seed=1),
    "uniform": lambda g: kf.random_uniform((50, 3), -2.0, 5.0, graph=g, seed=1),
    "normal_like": lambda g: kf.random_normal(like=g.constant(np.zeros((4, 5), "f4")), seed=2),
    "uniform_unseeded": lambda g: kf.random_uniform((20,), graph=g),
    "shuffle": lambda g: kf.random_shuffle(g.constant(np.arange(30)), seed=3),
    "permutation": lambda g: kf.random_permutation(30, g, seed=4),
}


@pytest.mark.parametrize("name", BUILDERS)
def test_random_same_seeds_fresh_runtime_same_numbers(name):
    first = _sample_twice(BUILDERS[name])
    again = _sample_twice(BUILDERS[name])
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])


@pytest.mark.parametrize("name", BUILDERS)
def test_random_successive_runs_differ(name):
    a, b = _sample_twice(BUILDERS[name])
    assert a.shape == b.shape
    assert not np.array_equal(a, b)


def test_random_graph_seed_changes_numbers():
    a, _ = _sample_twice(BUILDERS["normal"], seed=7)
    b, _ = _sample_twice(BUILDERS["normal"], seed=8)
    assert not np.array_equal(a, b)


def test_random_normal_moments(g):
    t = kf.random_normal((100_000,), mean=2.0, stddev=3.0, graph=g, seed=0)
    v = g.run(t)
    assert v.dtype == np.float32 and v.shape == (100_000,)
    assert abs(v.mean() - 2.0) < 0.03
    assert abs(v.std() - 3.0) < 0.03


def test_random_uniform_moments_and_bounds(g):
    t = kf.random_uniform((100_000,), minval=-1.0, maxval=3.0, dtype="float64", graph=g, seed=0)
    v = g.run(t)
    assert v.dtype == np.float64
    assert v.min() >= -1.0 and v.max() < 3.0
    assert abs(v.mean() - 1.0) < 0.02
    assert abs(v.var() - 16 / 12) < 0.02


def test_random_uniform_float16_stays_below_maxval(g):
    v = g.run(kf.random_uniform((100_000,), dtype="float16", graph=g, seed=0))
    assert v.dtype == np.float16
    assert v.min() >= 0 and v.max() < 1
    assert abs(v.astype(np.float64).mean() - 0.5) < 0.01


def test_random_normal_like_takes_runtime_shape(g):
    x = g.placeholder((None, 3), "float32")
    t = kf.random_normal(like=x, dtype="float64", seed=0)
    assert t.shape == (None, 3) and t.dtype == "float64"
    v = g.run(t, {x: np.zeros((7, 3), "float32")})
    assert v.shape == (7, 3) and v.dtype == np.float64
    assert np.all(v != 0)


def test_random_shuffle_is_a_permutation_of_rows(g):
    x = g.placeholder((None, 2), "int64")
    xv = np.stack([np.arange(100), np.arange(100) * 10], axis=1)
    v = g.run(kf.random_shuffle(x, seed=0), {x: xv})
    np.testing.assert_array_equal(np.sort(v[:, 0]), np.arange(100))
    np.testing.assert_array_equal(v[:, 1], v[:, 0] * 10)  # rows move whole
    assert not np.array_equal(v, xv)


def test_random_permutation_is_a_permutation(g):
    v = g.run(kf.random_permutation(50, g, dtype="int32", seed=0))
    assert v.dtype == np.int32
    np.testing.assert_array_equal(np.sort(v), np.arange(50))
    assert not np.array_equal(v, np.arange(50))


def test_random_sample_shared_within_one_run(g):
    t = kf.random_normal((5,), graph=g, seed=0)
    a, b = g.run([t + 0.0, t * 1.0])
    np.testing.assert_array_equal(a, b)


def test_random_normal_without_graph_or_like_raises():
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"random_normal: pass graph= \(a kf.Graph\) or like="):
        kf.random_normal((2, 2))


def test_random_normal_unknown_dim_raises(g):
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"random_normal: shape \(None, 2\) has unknown dims"):
        kf.random_normal((None, 2), graph=g)


def test_random_uniform_integer_dtype_raises(g):
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"random_uniform: dtype must be floating; got int32"):
        kf.random_uniform((2,), dtype="int32", graph=g)


def test_random_uniform_empty_interval_raises(g):
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"random_uniform: minval must be < maxval"):
        kf.random_uniform((2,), 1.0, 1.0, graph=g)


def test_random_shuffle_scalar_raises(g):
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"random_shuffle: x must have at least one dim"):
        kf.random_shuffle(g.constant(3.0))


def test_random_ops_have_no_gradient(g):
    x = g.placeholder((4,), "float64")
    assert kf.gradients(kf.sum(kf.random_normal(like=x) * 2.0), x) is None
