"""Linear-algebra op checks: matmul (batched, broadcasting, vectors) and einsum, forward and gradients."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from tests.ops.opcheck import OpCase, check_forward, check_gradient


def _norm(*shapes):
    return lambda r, d: [r.standard_normal(s).astype(d) for s in shapes]


def _ints(*shapes):
    return lambda r, d: [r.integers(-5, 6, s).astype(d) for s in shapes]


def _mm(name, *shapes, **kw):
    return OpCase(f"matmul_{name}", lambda a, b: a @ b, np.matmul, _norm(*shapes), **kw)


def _es(name, spec, *shapes, **kw):
    return OpCase(f"einsum_{name}", lambda *ts: kf.einsum(spec, *ts), lambda *a: np.einsum(spec, *a),
                  _norm(*shapes), **kw)


CASES = [
    _mm("2d", (3, 4), (4, 5)),
    _mm("batched", (2, 3, 4), (2, 4, 5)),
    _mm("batch_broadcast_left", (2, 3, 4), (4, 2)),
    _mm("batch_broadcast_right", (3, 4), (2, 4, 5)),
    _mm("batch_broadcast_both", (2, 1, 3, 4), (1, 3, 4, 2)),
    _mm("vec_mat", (4,), (4, 3)),
    _mm("mat_vec", (3, 4), (4,)),
    _mm("vec_vec", (4,), (4,)),
    _mm("vec_batched", (4,), (2, 4, 3)),
    _mm("batched_vec", (2, 3, 4), (4,)),
    _mm("dynamic_batch", (5, 3, 4), (4, 2), static_shapes=False),
    OpCase("matmul_int32", lambda a, b: a @ b, np.matmul, _ints((3, 4), (4, 2)), dtypes=("int32", "int64"),
           grad=False),
    _es("matmul", "ij,jk->ik", (3, 4), (4, 5)),
    _es("implicit_matmul", "ij,jk", (3, 4), (4, 5)),
    _es("implicit_sorted", "ba,ac", (3, 4), (4, 2)),
    _es("attention_scores", "bhqd,bhkd->bhqk", (2, 3, 4, 5), (2, 3, 6, 5)),
    _es("attention_values", "bhqk,bhkd->bhqd", (2, 3, 4, 6), (2, 3, 6, 5)),
    _es("rowwise_dot", "bi,bi->b", (4, 3), (4, 3)),
    _es("transpose", "ij->ji", (3, 4)),
    _es("total_sum", "ij->", (3, 4)),
    _es("outer", "i,j->ij", (3,), (4,)),
    _es("lone_summed_index", "ij,k->ik", (3, 4), (5,)),
    _es("three_operands", "ij,jk,kl->il", (2, 3), (3, 4), (4, 2)),
    _es("ellipsis", "...ij,...jk->...ik", (2, 3, 4), (2, 4, 5)),
    _es("ellipsis_broadcast", "...i,...i->...", (3, 1, 4), (5, 4)),
    _es("ellipsis_middle", "i...j,j->i...", (3, 2, 4), (4,)),
    _es("size1_broadcast", "ij,ij->ij", (1, 3), (2, 3)),
    _es("big_optimized", "bhqd,bhkd->bhqk", (2, 2, 32, 40), (2, 2, 32, 40)),
    _es("dynamic_batch", "bhqd,bhkd->bhqk", (3, 2, 4, 5), (3, 2, 6, 5), static_shapes=False),
    OpCase("einsum_int64", lambda a, b: kf.einsum("ij,jk->ik", a, b), lambda a, b: np.einsum("ij,jk->ik", a, b),
           _ints((3, 4), (4, 2)), dtypes=("int32", "int64"), grad=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_linalg_forward_matches_reference(case, rng):
    for dtype in case.dtypes:
        check_forward(case, dtype, rng)


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=lambda c: c.name)
def test_linalg_gradient_matches_finite_differences(case, rng):
    check_gradient(case, rng)


# --------------------------------------------------------------------------- static rules
def test_matmul_inner_dim_mismatch_raises(g):
    x = g.placeholder((3, 4), "float32", name="x")
    y = g.placeholder((5, 2), "float32", name="y")
    with pytest.raises(kf.errors.ShapeError, match=r"matmul: inner dimensions must match; got x.shape=\(3, 4\), "
                                                   r"y.shape=\(5, 2\)"):
        kf.matmul(x, y)


def test_matmul_batch_mismatch_raises(g):
    x = g.placeholder((2, 3, 4), "float32")
    y = g.placeholder((3, 4, 5), "float32")
    with pytest.raises(kf.errors.ShapeError, match=r"matmul: shapes cannot be broadcast together; got \(2,\), \(3,\)"):
        x @ y


def test_matmul_scalar_operand_raises(g):
    x = g.placeholder((), "float32")
    y = g.placeholder((3,), "float32")
    with pytest.raises(kf.errors.ShapeError, match=r"matmul: operands must have at least 1 dim"):
        kf.matmul(x, y)


def test_matmul_bool_operand_raises(g):
    x = g.placeholder((2, 2), "bool")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"matmul: expected numeric dtypes; got bool"):
        kf.matmul(x, x)


def test_matmul_unknown_inner_dim_infers_outer_dims(g):
    x = g.placeholder((None, 4), "float32")
    y = g.placeholder((None, 7), "float64")
    out = x @ y
    assert out.shape == (None, 7)
    assert out.dtype == "float64"


def test_einsum_stores_explicit_subscripts(g):
    x = g.placeholder((2, 3, 4), "float32")
    y = g.placeholder((4, 5), "float32")
    assert kf.einsum("bij,jk", x, y).attrs["subscripts"] == "bij,jk->bik"
    assert kf.einsum("...j,jk->...k", x, y).attrs["subscripts"] == "abj,jk->abk"


def test_einsum_unknown_dims_stay_unknown(g):
    q = g.placeholder((None, 2, None, 8), "float32")
    k = g.placeholder((None, 2, 5, 8), "float32")
    assert kf.einsum("bhqd,bhkd->bhqk", q, k).shape == (None, 2, None, 5)


def test_einsum_mixed_dtypes_promote(g):
    x = g.placeholder((2, 3), "float32")
    y = g.placeholder((3,), "float64")
    out = kf.einsum("ij,j->i", x, y)
    assert out.dtype == "float64"
    got = g.run(out, {x: np.ones((2, 3), "float32"), y: np.arange(3.0)})
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [3.0, 3.0])


@pytest.mark.parametrize("spec, shapes, message", [
    ("ij,jk->ik", [(3, 4), (5, 2)], r"einsum: index 'j' has size 4 in operand 0 but 5 in operand 1"),
    ("ij,jk->ik", [(3, 4)], r"einsum: subscripts name 2 operand\(s\) but 1 were given"),
    ("ijk,jk->ik", [(3, 4), (4, 2)], r"einsum: operand 0 has rank 2 but its subscripts 'ijk' name 3 dims"),
    ("ij,jk->iz", [(3, 4), (4, 2)], r"einsum: output index 'z' appears in no operand"),
    ("ii->i", [(3, 3)], r"einsum: index 'i' repeats in operand 0 .*diagonals are not supported"),
    ("ij,jk->ii", [(3, 4), (4, 2)], r"einsum: index 'i' repeats in the output"),
    ("i1,jk->ik", [(3, 4), (4, 2)], r"einsum: invalid character '1' in operand 0"),
    ("ij->i->j", [(3, 4)], r"einsum: at most one '->' is allowed"),
    ("......i->i", [(3, 4)], r"einsum: operand 0 \('......i'\) has more than one '...'"),
    ("...i->i", [(3, 4)], r"einsum: the output needs '...'"),
])
def test_einsum_bad_subscripts_raise(g, spec, shapes, message):
    ops = [g.placeholder(s, "float32") for s in shapes]
    with pytest.raises(kf.errors.ShapeError, match=message) as info:
        kf.einsum(spec, *ops)
    assert info.value.node and info.value.node.startswith("einsum")


def test_einsum_non_string_subscripts_raise(g):
    x = g.placeholder((3,), "float32")
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"einsum: subscripts must be a string; got 3"):
        kf.einsum(3, x)


def test_einsum_rejects_bad_wire_subscripts(g):
    """The server re-validates attrs from the wire: a node dict with bad subscripts is refused."""
    x = g.placeholder((3, 4), "float32", name="x")
    node = {"name": "e", "op": "einsum", "inputs": ["x"], "attrs": {"subscripts": "ij,jk->ik"}}
    from kernelflow.graph import Graph

    server_side = Graph("server")
    server_side.extend_from_dicts(g.to_dicts())
    with pytest.raises(kf.errors.ShapeError, match=r"einsum: subscripts name 2 operand"):
        server_side.extend_from_dicts([node])
    assert "e" not in server_side
    assert x.name in server_side


# --------------------------------------------------------------------------- run-time behaviour
def test_einsum_transpose_fetch_is_not_a_view_of_the_variable(g):
    v = g.variable(np.arange(6.0).reshape(2, 3), name="v")
    out = kf.einsum("ij->ji", v)
    got = g.run(out)
    got[0, 0] = 100.0
    np.testing.assert_array_equal(v.value(), np.arange(6.0).reshape(2, 3))


def test_einsum_python_scalar_operand_is_weakly_typed(g):
    x = g.placeholder((3,), "float32")
    out = kf.einsum(",i->i", 2.0, x)
    assert out.dtype == "float32"
    got = g.run(out, {x: np.array([1.0, 2.0, 3.0], "float32")})
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, [2.0, 4.0, 6.0])


def test_einsum_gradient_of_int_operand_is_none(g):
    x = g.placeholder((3, 4), "float64")
    m = g.placeholder((4,), "int64")
    gx, gm = kf.gradients(kf.sum(kf.einsum("ij,j->i", x, m)), [x, m])
    assert gm is None
    got = g.run(gx, {x: np.ones((3, 4)), m: np.arange(4)})
    np.testing.assert_array_equal(got, np.tile(np.arange(4.0), (3, 1)))


@pytest.mark.parametrize("rows", [1, 32, 128, 129])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_with_a_transposed_weight_matches_float64(rows, dtype, rng):
    # a @ W.T with few rows runs in the swapped form (W @ a.T).T on numpy: same values, any layout
    from kernelflow.graph.ops import linalg as L
    from kernelflow.kernels.registry import get_kernel

    a = rng.standard_normal((rows, 256)).astype(dtype)
    w = rng.standard_normal((384, 256)).astype(dtype)
    got = get_kernel(L.matmul_op, "numpy").fn(np, a, w.T)
    exact = a.astype(np.float64) @ w.T.astype(np.float64)
    assert got.shape == (rows, 384) and got.dtype == a.dtype
    swapped = 1 < rows <= 128  # the swapped form's result is column-major
    assert got.flags.f_contiguous == swapped or rows == 1 and got.flags.c_contiguous
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, exact, rtol=tol, atol=tol * 16)
    np.testing.assert_allclose(get_kernel(L.matmul_op, "numpy").fn(np, a, np.ascontiguousarray(w.T)), exact,
                               rtol=tol, atol=tol * 16)
