"""Elementwise op checks: forward vs numpy in every dtype an op takes, gradients, broadcasting, dtype rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kernelflow as kf
from tests.ops import opcheck
from tests.ops.opcheck import OpCase, check_forward, check_gradient

FLOATS = ("float16", "float32", "float64")
SIGNED = ("int8", "int16", "int32", "int64")
INTS = SIGNED + ("uint8",)
NUMERIC = FLOATS + INTS


def _draw(rng, dtype, shape, kind):
    """Values of ``kind`` for ``dtype``: small integers for integer dtypes, random bits for bool."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if np.dtype(dtype).kind in "iu":
        lo = {"normal": -5, "pos": 1, "nonzero": 1, "small": -3}[kind]
        if dtype == "uint8":
            lo = max(lo, 0)
        v = rng.integers(lo, 6, shape)
        if kind == "nonzero" and dtype != "uint8":
            v = v * rng.choice([-1, 1], shape)
        return v.astype(dtype)
    if kind == "pos":
        return rng.uniform(0.5, 2.0, shape).astype(dtype)
    if kind == "nonzero":  # away from kinks and poles at 0
        return (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.3, 2.0, shape)).astype(dtype)
    if kind == "small":  # small integers as floats: ties for comparisons, exact float16
        return rng.integers(-3, 4, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _args(kind, *shapes):
    """make_args drawing one array of ``kind`` per shape; kind may be a tuple, one per arg."""
    kinds = kind if isinstance(kind, tuple) else (kind,) * len(shapes)
    return lambda r, d: [_draw(r, d, s, k) for s, k in zip(shapes, kinds)]


def _un(name, build, ref, kind="normal", dtypes=FLOATS, shape=(3, 4), **kw):
    return OpCase(name, build, ref, _args(kind, shape), dtypes=dtypes, **kw)


def _bin(name, build, ref, kind="normal", dtypes=NUMERIC, shapes=((3, 4), (4,)), **kw):
    return OpCase(name, build, ref, _args(kind, *shapes), dtypes=dtypes, **kw)


def _sigmoid(a):
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-a))


def _gelu_tanh(a):
    return 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a**3)))


def _where_args(r, d):
    return [r.random((3, 1)) < 0.5, _draw(r, d, (3, 4), "normal"), _draw(r, d, (4,), "normal")]


def _pow_int_args(r, d):
    return [_draw(r, d, (3, 4), "small"), r.integers(0, 4, (4,)).astype(d)]


def _erf(a):
    import scipy.special  # here, not at import: the GPU tests collect this table on a box without scipy

    return scipy.special.erf(a)


CASES = [
    # arithmetic, with broadcasting in both directions
    _bin("add", kf.add, np.add),
    _bin("add_both_broadcast", kf.add, np.add, shapes=((3, 1), (1, 4))),
    _bin("add_scalar_operand", lambda a, b: kf.add(a, b), np.add, shapes=((), (2, 3))),
    _bin("subtract", kf.subtract, np.subtract),
    _bin("multiply", kf.multiply, np.multiply, shapes=((2, 1, 4), (3, 1))),
    _bin("divide", kf.divide, np.divide, kind=("normal", "nonzero"), dtypes=FLOATS),
    _bin("floor_divide", kf.floor_divide, np.floor_divide, kind=("normal", "nonzero"), grad=False),
    _bin("mod", kf.mod, np.mod, kind=("normal", "nonzero")),
    _bin("pow", kf.pow, np.power, kind=("pos", "normal"), dtypes=FLOATS),
    OpCase("pow_int", kf.pow, np.power, _pow_int_args, dtypes=INTS, grad=False),
    _bin("maximum", kf.maximum, np.maximum, kind="nonzero"),
    _bin("minimum", kf.minimum, np.minimum, kind="nonzero"),
    _bin("radd_python_int", lambda a: 3 + a, lambda a: 3 + a, shapes=((3, 4),)),
    _bin("rsub_python_float", lambda a: 1.5 - a, lambda a: (1.5 - a).astype(a.dtype), dtypes=FLOATS,
         shapes=((3, 4),)),
    _bin("rdiv_python_float", lambda a: 2.0 / a, lambda a: (2.0 / a).astype(a.dtype), kind="nonzero",
         dtypes=FLOATS, shapes=((3, 4),)),
    _bin("rpow_python_float", lambda a: 2.0 ** a, lambda a: (2.0 ** a).astype(a.dtype), dtypes=FLOATS,
         shapes=((3, 4),)),
    _bin("mul_python_int_keeps_int", lambda a: a * 2, lambda a: a * 2, shapes=((3, 4),)),
    # unary
    _un("negative", kf.negative, np.negative, dtypes=FLOATS + SIGNED),
    _un("abs", kf.abs, np.abs, kind="nonzero", dtypes=NUMERIC),
    # grad=False: its zero gradient is checked below (the harness feeds an unused cotangent).
    _un("sign", kf.sign, np.sign, kind="nonzero", dtypes=NUMERIC, grad=False),
    _un("square", kf.square, np.square, dtypes=NUMERIC),
    _un("exp", kf.exp, np.exp),
    _un("log", kf.log, np.log, kind="pos"),
    _un("log1p", kf.log1p, np.log1p, kind="pos"),
    _un("sqrt", kf.sqrt, np.sqrt, kind="pos"),
    _un("rsqrt", kf.rsqrt, lambda a: 1 / np.sqrt(a), kind="pos"),
    _un("rsqrt_0d", kf.rsqrt, lambda a: 1 / np.sqrt(a), kind="pos", shape=()),
    _un("sin", kf.sin, np.sin),
    _un("cos", kf.cos, np.cos),
    _un("tanh", kf.tanh, np.tanh),
    _un("sigmoid", kf.sigmoid, _sigmoid),
    OpCase("sigmoid_large", kf.sigmoid, _sigmoid, lambda r, d: [np.array([-800.0, -30.0, 0.0, 30.0, 800.0], d)],
           dtypes=("float32", "float64"), grad=False),
    _un("relu", kf.relu, lambda a: np.maximum(a, 0), kind="nonzero", dtypes=NUMERIC),
    _un("leaky_relu", kf.leaky_relu, lambda a: np.where(a > 0, a, 0.2 * a), kind="nonzero"),
    _un("leaky_relu_alpha", lambda a: kf.leaky_relu(a, 0.01), lambda a: np.where(a > 0, a, 0.01 * a),
        kind="nonzero"),
    _un("elu", kf.elu, lambda a: np.where(a > 0, a, np.expm1(a)), kind="nonzero"),
    _un("gelu", kf.gelu, lambda a: a * 0.5 * (1 + _erf(a / math.sqrt(2)))),
    _un("gelu_tanh", lambda a: kf.gelu(a, approximate=True), _gelu_tanh),
    _un("softplus", kf.softplus, lambda a: np.logaddexp(0, a)),
    _un("erf", kf.erf, lambda a: _erf(a)),
    _un("clip", lambda a: kf.clip(a, -0.5, 0.5), lambda a: np.clip(a, -0.5, 0.5), dtypes=NUMERIC),
    _un("clip_min_only", lambda a: kf.clip(a, min=0.25), lambda a: np.maximum(a, 0.25)),
    _un("dynamic_batch_tanh", kf.tanh, np.tanh, shape=(5, 3), static_shapes=False),
    _bin("dynamic_batch_mul", kf.multiply, np.multiply, shapes=((5, 3), (5, 3)), static_shapes=False),
    # Both first dims unknown statically; the size-1 one is un-broadcast at run time.
    _bin("dynamic_batch_sub_broadcast", kf.subtract, np.subtract, shapes=((5, 3), (1, 3)), static_shapes=False),
    OpCase("dynamic_batch_where", kf.where, np.where, _where_args, static_shapes=False),
    OpCase("where", kf.where, np.where, _where_args, dtypes=NUMERIC),
    OpCase("cast_to_int32", lambda a: kf.cast(a, "int32"), lambda a: a.astype("int32"),
           _args("normal", (3, 4)), dtypes=NUMERIC + ("bool",), grad=False),
    OpCase("cast_to_float64", lambda a: kf.cast(a, "float64"), lambda a: a.astype("float64"),
           _args("normal", (3, 4)), dtypes=("float16", "float32") + INTS + ("bool",), grad=False),
    OpCase("cast_to_bool", lambda a: kf.cast(a, "bool"), lambda a: a.astype(bool),
           _args("small", (3, 4)), dtypes=NUMERIC, grad=False),
    # comparisons and logic: bool out, no gradient
    *[_bin(f"{n}", getattr(kf, n), getattr(np, n), kind="small", dtypes=NUMERIC + ("bool",), grad=False)
      for n in ("equal", "not_equal", "less", "less_equal", "greater", "greater_equal")],
    _bin("logical_and", kf.logical_and, np.logical_and, dtypes=("bool",), grad=False),
    _bin("logical_or", kf.logical_or, np.logical_or, dtypes=("bool",), grad=False),
    _un("logical_not", kf.logical_not, np.logical_not, dtypes=("bool",), grad=False),
    OpCase("isfinite", kf.isfinite, np.isfinite,
           lambda r, d: [np.array([0.0, -np.inf, np.inf, np.nan, 2.5], d)], dtypes=FLOATS, grad=False),
    _un("isfinite_int", kf.isfinite, np.isfinite, dtypes=INTS, grad=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_elementwise_forward_matches_reference(case, rng):
    for dtype in case.dtypes:
        check_forward(case, dtype, rng)


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=lambda c: c.name)
def test_elementwise_gradient_matches_finite_differences(case, rng):
    check_gradient(case, rng)


# --------------------------------------------------------------------------- gradients with a twist
def test_sign_gradient_is_zero(g):
    x = g.placeholder((4,), "float64")
    gx = kf.gradients(kf.sum(kf.sign(x) * x), x)
    got = g.run(gx, {x: np.array([-2.0, -0.5, 0.5, 3.0])})
    np.testing.assert_array_equal(got, [-1.0, -1.0, 1.0, 1.0])  # only the d(x)/dx factor


def test_cast_gradient_casts_back_to_input_dtype(g):
    x = g.placeholder((3,), "float32")
    y = kf.cast(x, "float64") * np.array([1.0, 2.0, 3.0])
    gx = kf.gradients(kf.sum(y), x)
    assert gx.dtype == "float32"
    got = g.run(gx, {x: np.zeros(3, "float32")})
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [1.0, 2.0, 3.0])


def test_cast_from_int_has_no_gradient(g):
    x = g.placeholder((3,), "int32")
    assert kf.gradients(kf.sum(kf.cast(x, "float32")), x) is None


def test_float16_gradient_stays_float16(g):
    x = g.placeholder((3,), "float16")
    gx = kf.gradients(kf.sum(kf.tanh(x) * 2.0), x)
    got = g.run(gx, {x: np.array([0.0, 0.5, -1.0], "float16")})
    assert gx.dtype == "float16" and got.dtype == np.float16
    np.testing.assert_allclose(got, 2 * (1 - np.tanh([0.0, 0.5, -1.0]) ** 2), rtol=2e-3)


def test_pow_gradient_at_zero_base_is_finite(g):
    x = g.placeholder((2,), "float64")
    y = g.placeholder((2,), "float64")
    gx, gy = kf.gradients(kf.sum(kf.pow(x, y)), [x, y])
    got_x, got_y = g.run([gx, gy], {x: np.array([0.0, 2.0]), y: np.array([2.0, 3.0])})
    np.testing.assert_allclose(got_x, [0.0, 12.0])
    np.testing.assert_allclose(got_y, [0.0, 8.0 * math.log(2.0)])


def test_maximum_gradient_tie_goes_to_first_operand(g):
    x = g.placeholder((2,), "float64")
    y = g.placeholder((2,), "float64")
    gx, gy = kf.gradients(kf.sum(kf.maximum(x, y)), [x, y])
    got = g.run([gx, gy], {x: np.array([1.0, 2.0]), y: np.array([1.0, 3.0])})
    np.testing.assert_array_equal(got[0], [1.0, 0.0])
    np.testing.assert_array_equal(got[1], [0.0, 1.0])


# --------------------------------------------------------------------------- broadcasting and dtype rules
_BINARY = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "maximum": np.maximum,
           "less": np.less, "where_mask": None}


@settings(max_examples=60, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3),
       unknown=st.lists(st.booleans(), min_size=8, max_size=8),
       op=st.sampled_from(sorted(_BINARY)))
def test_binary_broadcasting_matches_numpy(shapes, unknown, op):
    a_shape, b_shape = shapes.input_shapes
    rng = np.random.default_rng(len(a_shape) * 10 + len(b_shape))
    a = rng.standard_normal(a_shape).astype("float32")
    b = rng.standard_normal(b_shape).astype("float32")
    g = opcheck.new_graph("bcast")
    # Some dims unknown statically: the rule must still describe the run-time shape.
    x = g.placeholder(tuple(None if u else d for d, u in zip(a_shape, unknown)), "float32")
    y = g.placeholder(tuple(None if u else d for d, u in zip(b_shape, unknown[4:])), "float32")
    if op == "where_mask":
        out, ref = kf.where(x > 0, x, y), np.where(a > 0, a, b)
    else:
        out, ref = getattr(kf, op)(x, y), _BINARY[op](a, b)
    got = g.run(out, {x: a, y: b})
    assert got.shape == shapes.result_shape == ref.shape
    assert len(out.shape) == got.ndim and all(s in (None, d) for s, d in zip(out.shape, got.shape))
    assert got.dtype == ref.dtype and got.dtype.name == out.dtype
    np.testing.assert_array_equal(got, ref)


@settings(max_examples=60, deadline=None)
@given(dx=st.sampled_from(NUMERIC), dy=st.sampled_from(NUMERIC), op=st.sampled_from(["add", "multiply", "maximum"]))
def test_binary_dtype_promotion_matches_numpy(dx, dy, op):
    g = opcheck.new_graph("promote")
    x = g.placeholder((2,), dx)
    y = g.placeholder((), dy)
    out = getattr(kf, op)(x, y)
    a, b = np.array([1, 2], dx), np.array(3, dy)
    ref = getattr(np, op)(a, b)
    got = g.run(out, {x: a, y: b})
    assert out.dtype == ref.dtype.name == got.dtype.name
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("dtype, scalar, expected", [
    ("float16", 2.5, "float16"), ("float32", 2, "float32"), ("int8", 3, "int8"), ("uint8", 1, "uint8"),
    ("int32", 2.5, "float64"),
])
def test_python_scalar_is_weakly_typed(g, dtype, scalar, expected):
    x = g.placeholder((2,), dtype)
    out = kf.maximum(x, scalar)
    a = np.array([0, 1], dtype)
    got = g.run(out, {x: a})
    assert out.dtype == expected and got.dtype.name == expected
    np.testing.assert_array_equal(got, np.maximum(a.astype("float64"), scalar).astype(expected))


def test_python_bool_next_to_bool_tensor_stays_bool(g):
    x = g.placeholder((2,), "bool")
    out = kf.logical_and(x, True)
    got = g.run(out, {x: np.array([True, False])})
    assert out.dtype == "bool" and got.dtype == np.bool_
    np.testing.assert_array_equal(got, [True, False])


def test_float16_stays_float16_through_unary_chain(g):
    x = g.placeholder((3,), "float16")
    out = kf.gelu(kf.sigmoid(kf.exp(x) * 0.5) + 1.0)
    got = g.run(out, {x: np.array([0.0, 1.0, -1.0], "float16")})
    assert out.dtype == "float16" and got.dtype == np.float16


def test_comparisons_give_bool(g):
    x = g.placeholder((3,), "int32")
    outs = [x < 1, x <= 1, x > 1, x >= 1, kf.equal(x, 1), kf.not_equal(x, 1)]
    got = g.run(outs, {x: np.array([0, 1, 2], "int32")})
    assert all(o.dtype == "bool" for o in outs) and all(v.dtype == np.bool_ for v in got)
    np.testing.assert_array_equal(np.stack(got), [[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 0, 1]])


# --------------------------------------------------------------------------- rule errors
def test_add_broadcast_mismatch_raises(g):
    x = g.placeholder((3, 4), "float32", name="x")
    y = g.placeholder((5,), "float32", name="y")
    with pytest.raises(kf.errors.ShapeError, match=r"add: shapes cannot be broadcast together; got \(3, 4\), \(5,\)"):
        x + y


def test_where_broadcast_mismatch_raises(g):
    c = g.placeholder((2,), "bool")
    with pytest.raises(kf.errors.ShapeError, match=r"where: shapes cannot be broadcast together; got \(2,\), \(3,\)"):
        kf.where(c, g.placeholder((3,), "float32"), 0.0)


def test_where_non_bool_condition_raises(g):
    c = g.placeholder((2,), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"where: condition must be bool; got float32"):
        kf.where(c, c, c)


@pytest.mark.parametrize("build, dtype, message", [
    (lambda x: x / x, "int32", r"divide: expected a dtype in \('float16', 'float32', 'float64'\); got int32"),
    (kf.log, "int64", r"log: expected a dtype in .*; got int64"),
    (kf.sigmoid, "uint8", r"sigmoid: expected a dtype in .*; got uint8"),
    (kf.negative, "bool", r"negative: expected a dtype in .*; got bool"),
    (kf.relu, "bool", r"relu: expected a dtype in .*; got bool"),
    (lambda x: kf.logical_and(x, x), "float32", r"logical_and: expected a dtype in \('bool',\); got float32"),
    (kf.leaky_relu, "int32", r"leaky_relu: expected a dtype in .*; got int32"),
    (kf.elu, "int8", r"elu: expected a dtype in .*; got int8"),
    (kf.gelu, "int64", r"gelu: expected a dtype in .*; got int64"),
    (kf.softplus, "int16", r"softplus: expected a dtype in .*; got int16"),
])
def test_op_rejects_dtype(g, build, dtype, message):
    x = g.placeholder((2,), dtype)
    with pytest.raises(kf.errors.InvalidArgumentError, match=message):
        build(x)


def test_cast_to_unsupported_dtype_raises(g):
    x = g.placeholder((2,), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"cast: dtype complex128 is not supported"):
        kf.cast(x, "complex128")


# --------------------------------------------------------------------------- NaN and Inf are values
def test_nan_and_inf_propagate_without_error(g):
    x = g.placeholder((5,), "float32")
    a = np.array([0.0, -1.0, np.inf, -np.inf, np.nan], "float32")
    outs = {"log": kf.log(x), "sqrt": kf.sqrt(x), "rsqrt": kf.rsqrt(x), "inv": 1.0 / x, "exp": kf.exp(x),
            "sigmoid": kf.sigmoid(x), "tanh": kf.tanh(x), "relu": kf.relu(x), "log1p": kf.log1p(x),
            "isfinite": kf.isfinite(x)}
    got = g.run(outs, {x: a})
    nan = np.nan
    np.testing.assert_array_equal(got["log"], [-np.inf, nan, np.inf, nan, nan])
    np.testing.assert_array_equal(got["sqrt"], [0.0, nan, np.inf, nan, nan])
    np.testing.assert_array_equal(got["rsqrt"], [np.inf, nan, 0.0, nan, nan])
    np.testing.assert_array_equal(got["inv"], [np.inf, -1.0, 0.0, -0.0, nan])
    np.testing.assert_array_equal(got["exp"], [1.0, np.exp(np.float32(-1)), np.inf, 0.0, nan])
    np.testing.assert_array_equal(got["sigmoid"], [0.5, _sigmoid(np.float32(-1.0)), 1.0, 0.0, nan])
    np.testing.assert_array_equal(got["tanh"], [0.0, np.tanh(np.float32(-1.0)), 1.0, -1.0, nan])
    np.testing.assert_array_equal(got["relu"], [0.0, 0.0, np.inf, 0.0, nan])
    np.testing.assert_array_equal(got["log1p"], [0.0, -np.inf, np.inf, nan, nan])
    np.testing.assert_array_equal(got["isfinite"], [True, True, False, False, False])
    assert all(v.dtype == (np.bool_ if k == "isfinite" else np.float32) for k, v in got.items())


def test_float16_overflow_gives_inf(g):
    x = g.placeholder((2,), "float16")
    got = g.run(kf.exp(x) * 2.0, {x: np.array([12.0, 1.0], "float16")})
    assert got.dtype == np.float16
    assert np.isinf(got[0]) and np.isfinite(got[1])


def test_gradient_of_sqrt_at_zero_is_inf(g):
    x = g.placeholder((2,), "float64")
    got = g.run(kf.gradients(kf.sum(kf.sqrt(x)), x), {x: np.array([0.0, 4.0])})
    np.testing.assert_array_equal(got, [np.inf, 0.25])
