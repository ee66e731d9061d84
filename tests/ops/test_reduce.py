"""Reduction op checks: every axis form and keepdims, dtypes, gradients (static and unknown dims), sum_to."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from tests.ops.opcheck import OpCase, check_forward, check_gradient

FLOATS = ("float16", "float32", "float64")
INTS = ("int8", "int16", "int32", "int64", "uint8")
NUMERIC = FLOATS + INTS
SHAPE = (3, 4, 5)
# (axis, keepdims) forms every reduction is checked with.
AXES = [(None, False), (None, True), (1, False), (-1, True), ((0, 2), False), ((-3, -2), True), ((), False)]


def _draw(r, d, shape):
    if d == "bool":
        return r.random(shape) < 0.3
    if np.dtype(d).kind in "iu":
        return r.integers(0 if d == "uint8" else -3, 4, shape).astype(d)
    # Distinct values: max/min/arg* have no ties, so their gradients are unambiguous.
    return r.permutation(np.prod(shape)).reshape(shape).astype("float64") / np.prod(shape) * 4 - 2


def _args(shape=SHAPE):
    return lambda r, d: [_draw(r, d, shape).astype(d)]


def _pos_args(shape=SHAPE):
    return lambda r, d: [r.uniform(0.5, 1.5, shape).astype(d)]


def _axis_id(axis, keepdims):
    return f"axis{axis}".replace(" ", "") + ("_keep" if keepdims else "")


def _cases(name, build, ref, dtypes=FLOATS, make_args=None, axes=AXES, **kw):
    return [OpCase(f"{name}_{_axis_id(a, k)}", lambda x, a=a, k=k: build(x, axis=a, keepdims=k),
                   lambda x, a=a, k=k: ref(x, axis=a, keepdims=k), make_args or _args(), dtypes=dtypes, **kw)
            for a, k in axes]


def _np_sum(x, axis, keepdims):
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=np.int64 if x.dtype == bool else x.dtype)


def _lse(x, axis=None, keepdims=False):
    import scipy.special  # here, not at import (see test_elementwise._erf)

    return scipy.special.logsumexp(x, axis=axis, keepdims=keepdims)


def _np_arg(fn):
    def ref(x, axis, keepdims):
        return fn(x, axis=axis, keepdims=keepdims).astype(np.int64)

    return ref


_INT_AXES = [(None, False), (None, True), (0, False), (-1, True)]

CASES = [
    *_cases("sum", kf.sum, _np_sum, NUMERIC + ("bool",)),
    *_cases("mean", kf.mean, np.mean),
    *_cases("max", kf.max, np.max, NUMERIC),
    *_cases("min", kf.min, np.min, NUMERIC),
    *_cases("prod", kf.prod, np.prod, make_args=_pos_args()),
    *_cases("prod_int", kf.prod, lambda x, **k: np.prod(x, dtype=x.dtype, **k), INTS, grad=False,
            axes=_INT_AXES),
    *_cases("logsumexp", kf.logsumexp, _lse),
    *_cases("var", kf.var, np.var),
    # axis=() gives std 0, where sqrt's gradient is infinite: skipped.
    *_cases("std", kf.std, np.std, axes=[ak for ak in AXES if ak[0] != ()]),
    *_cases("var_ddof1", lambda x, **k: kf.var(x, ddof=1, **k), lambda x, **k: np.var(x, ddof=1, **k),
            axes=[(None, False), (1, True), ((0, 2), False)]),
    *_cases("std_ddof1", lambda x, **k: kf.std(x, ddof=1, **k), lambda x, **k: np.std(x, ddof=1, **k),
            axes=[(None, True), (-1, False)]),
    *_cases("argmax", kf.argmax, _np_arg(np.argmax), NUMERIC + ("bool",), grad=False, axes=_INT_AXES),
    *_cases("argmin", kf.argmin, _np_arg(np.argmin), NUMERIC + ("bool",), grad=False, axes=_INT_AXES),
    *_cases("any", kf.any, np.any, ("bool",), grad=False),
    *_cases("all", kf.all, np.all, ("bool",), grad=False),
    *_cases("count_nonzero", kf.count_nonzero, lambda x, **k: np.count_nonzero(x, **k).astype(np.int64),
            NUMERIC + ("bool",), grad=False),
    # Unknown leading dims: counts and broadcasts must come from run-time shapes.
    *[OpCase(f"{n}_dynamic_batch{i}", (lambda x, f=f, a=a: f(x, axis=a)), (lambda x, r=r, a=a: r(x, axis=a)),
             _pos_args((6, 3)), static_shapes=False)
      for n, f, r in [("sum", kf.sum, np.sum), ("mean", kf.mean, np.mean), ("max", kf.max, np.max),
                      ("min", kf.min, np.min), ("prod", kf.prod, np.prod), ("logsumexp", kf.logsumexp, _lse),
                      ("var", kf.var, np.var), ("std", kf.std, np.std)]
      for i, a in enumerate([None, 0, 1])],
    OpCase("var_ddof2_dynamic_batch", lambda x: kf.var(x, axis=0, ddof=2), lambda x: np.var(x, axis=0, ddof=2),
           _pos_args((6, 3)), static_shapes=False),
    OpCase("sum_0d", kf.sum, np.sum, _pos_args(())),
    OpCase("mean_list_axis", lambda x: kf.mean(x, axis=[0, 1]), lambda x: x.mean((0, 1)), _args()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reduce_forward_matches_reference(case, rng):
    for dtype in case.dtypes:
        check_forward(case, dtype, rng)


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=lambda c: c.name)
def test_reduce_gradient_matches_finite_differences(case, rng):
    check_gradient(case, rng)


# --------------------------------------------------------------------------- semantics
def test_max_gradient_ties_share_equally(g):
    x = g.placeholder((2, 3), "float64")
    gx = kf.gradients(kf.sum(kf.max(x, axis=1)), x)
    got = g.run(gx, {x: np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])})
    np.testing.assert_allclose(got, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def test_sum_int8_keeps_dtype_and_wraps(g):
    x = g.placeholder((3,), "int8")
    out = kf.sum(x)
    got = g.run(out, {x: np.array([100, 100, 100], "int8")})
    assert out.dtype == "int8" and got.dtype == np.int8
    assert got == np.int8(44)  # 300 mod 256, as TF: integer sums keep their dtype


def test_sum_of_bool_counts_trues(g):
    x = g.placeholder((2, 3), "bool")
    out = kf.sum(x, axis=1)
    got = g.run(out, {x: np.array([[True, False, True], [False, False, False]])})
    assert out.dtype == "int64" and got.dtype == np.int64
    np.testing.assert_array_equal(got, [2, 0])


def test_float16_mean_of_many_elements_is_accurate(g):
    x = g.placeholder((None,), "float16")
    out = kf.mean(x)
    got = g.run(out, {x: np.full(100_000, 0.1, "float16")})
    assert got.dtype == np.float16
    np.testing.assert_allclose(got, np.float16(0.1), rtol=1e-3)


def test_float16_mean_gradient_over_many_elements_is_not_zero(g):
    x = g.placeholder((None,), "float16")
    gx = kf.gradients(kf.mean(x), x)
    got = g.run(gx, {x: np.ones(70_000, "float16")})
    assert got.dtype == np.float16
    np.testing.assert_allclose(got[:3], 1 / 70_000, rtol=1e-2)


def test_logsumexp_is_stable_for_large_and_infinite_inputs(g):
    x = g.placeholder((3, 2), "float32")
    got = g.run(kf.logsumexp(x, axis=1), {x: np.array([[1000.0, 1000.0], [-np.inf, -np.inf], [np.inf, 0.0]],
                                                       "float32")})
    np.testing.assert_allclose(got, [1000.0 + np.log(2.0), -np.inf, np.inf], rtol=1e-6)


def test_reductions_of_nan_propagate(g):
    x = g.placeholder((3,), "float32")
    a = np.array([1.0, np.nan, 2.0], "float32")
    got = g.run([kf.sum(x), kf.mean(x), kf.max(x), kf.min(x), kf.var(x), kf.logsumexp(x)], {x: a})
    assert all(np.isnan(v) for v in got)


def test_argmax_ties_take_first_index(g):
    x = g.placeholder((2, 3), "float32")
    got = g.run(kf.argmax(x, axis=1), {x: np.array([[1.0, 5.0, 5.0], [0.0, 0.0, 0.0]], "float32")})
    np.testing.assert_array_equal(got, [1, 0])


def test_sum_to_reduces_broadcast_dims(g):
    x = g.placeholder((2, 3, 4), "float64")
    like = g.placeholder((3, 1), "float64")
    out = kf.sum_to(x, like)
    a = np.arange(24.0).reshape(2, 3, 4)
    got = g.run(out, {x: a, like: np.zeros((3, 1))})
    assert out.shape == (3, 1)
    np.testing.assert_array_equal(got, a.sum(axis=(0, 2)).reshape(3, 1))


def test_sum_to_same_shape_fetch_is_a_copy(g):
    v = g.variable(np.ones((2, 2)), name="v")
    like = g.placeholder((None, 2), "float64")
    got = g.run(kf.sum_to(v, like), {like: np.zeros((2, 2))})
    got[0, 0] = 7.0
    np.testing.assert_array_equal(v.value(), np.ones((2, 2)))


def test_sum_to_gradient_broadcasts_back(g):
    x = g.placeholder((2, 3), "float64")
    like = g.placeholder((3,), "float64")
    gx = kf.gradients(kf.sum(kf.sum_to(x, like) * np.array([1.0, 2.0, 3.0])), x)
    got = g.run(gx, {x: np.zeros((2, 3)), like: np.zeros(3)})
    np.testing.assert_array_equal(got, [[1.0, 2.0, 3.0]] * 2)


# --------------------------------------------------------------------------- rule errors
@pytest.mark.parametrize("build, message", [
    (lambda x: kf.sum(x, axis=3), r"sum: axis 3 is out of range for a tensor of rank 3"),
    (lambda x: kf.mean(x, axis=-4), r"mean: axis -4 is out of range for a tensor of rank 3"),
    (lambda x: kf.max(x, axis=(0, 5)), r"max: axis 5 is out of range"),
    (lambda x: kf.argmax(x, axis=3), r"argmax: axis 3 is out of range"),
    (lambda x: kf.logsumexp(x, axis=7, keepdims=True), r"logsumexp: axis 7 is out of range"),
])
def test_reduce_bad_axis_raises(g, build, message):
    x = g.placeholder((2, 3, 4), "float32")
    with pytest.raises(kf.errors.ShapeError, match=message):
        build(x)


def test_reduce_repeated_axis_raises(g):
    x = g.placeholder((2, 3), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"sum: repeated axis in \(1, -1\)"):
        kf.sum(x, axis=(1, -1))


def test_argmax_tuple_axis_raises(g):
    x = g.placeholder((2, 3), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"argmin: axis must be an int or None; got \(0, 1\)") \
            as info:
        kf.argmin(x, axis=(0, 1))
    assert info.value.node == "argmin"


@pytest.mark.parametrize("build, dtype, message", [
    (kf.mean, "int32", r"mean: expected a dtype in .*; got int32"),
    (kf.logsumexp, "int64", r"logsumexp: expected a dtype in .*; got int64"),
    (kf.any, "float32", r"any: expected a dtype in \('bool',\); got float32"),
    (kf.max, "bool", r"max: expected a dtype in .*; got bool"),
])
def test_reduce_rejects_dtype(g, build, dtype, message):
    x = g.placeholder((2,), dtype)
    with pytest.raises(kf.errors.InvalidArgumentError, match=message):
        build(x)


def test_sum_to_incompatible_target_raises(g):
    x = g.placeholder((3, 4), "float32")
    with pytest.raises(kf.errors.ShapeError, match=r"sum_to: target shape must broadcast to the input shape; got "
                                                   r"x.shape=\(3, 4\), like.shape=\(5,\)"):
        kf.sum_to(x, g.placeholder((5,), "float32"))
    with pytest.raises(kf.errors.ShapeError, match=r"sum_to: .*like.shape=\(2, 3, 4\)"):
        kf.sum_to(x, g.placeholder((2, 3, 4), "float32"))
