"""First op cases: arithmetic with broadcasting, matmul, reductions, softmax cross-entropy."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from tests.ops.opcheck import OpCase, check_forward, check_gradient


def _norm(rng, dtype, *shapes):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _sce_ref(logits, labels):
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], -1)[..., 0]


CASES = [
    OpCase("add_broadcast", lambda a, b: a + b, np.add, lambda r, d: _norm(r, d, (3, 4), (4,))),
    OpCase("mul_broadcast_both", lambda a, b: a * b, np.multiply, lambda r, d: _norm(r, d, (3, 1), (1, 4))),
    OpCase("matmul", lambda a, b: a @ b, np.matmul, lambda r, d: _norm(r, d, (3, 4), (4, 5))),
    OpCase("matmul_batched_broadcast", lambda a, b: a @ b, np.matmul, lambda r, d: _norm(r, d, (2, 3, 4), (4, 2))),
    OpCase("matmul_vec", lambda a, b: a @ b, np.matmul, lambda r, d: _norm(r, d, (4,), (4, 3))),
    OpCase("sum_axis", lambda a: kf.sum(a, axis=1), lambda a: a.sum(1), lambda r, d: _norm(r, d, (3, 4, 2))),
    OpCase("mean_keepdims", lambda a: kf.mean(a, axis=(0, 2), keepdims=True),
           lambda a: a.mean((0, 2), keepdims=True), lambda r, d: _norm(r, d, (3, 4, 2))),
    OpCase("mean_dynamic_batch", lambda a: kf.mean(a), lambda a: a.mean(), lambda r, d: _norm(r, d, (5, 3)),
           static_shapes=False),
    OpCase("relu", kf.relu, lambda a: np.maximum(a, 0), lambda r, d: _norm(r, d, (4, 5))),
    OpCase("softmax_ce", kf.softmax_cross_entropy, _sce_ref,
           lambda r, d: [r.standard_normal((6, 5)).astype(d), r.integers(0, 5, 6)], grad_args=(0,)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_op_forward_matches_float64_reference(case, dtype, rng):
    check_forward(case, dtype, rng)


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=lambda c: c.name)
def test_op_gradient_matches_finite_differences(case, rng):
    check_gradient(case, rng)


def test_matmul_inner_dim_mismatch_raises(g):
    x = g.placeholder((None, 64), "float32", name="x")
    w = g.variable(np.zeros((32, 10), "float32"), name="w")
    with pytest.raises(kf.errors.ShapeError, match=r"matmul: inner dimensions must match; got x.shape=\(None, 64\), "
                                                   r"w?.*\(32, 10\)") as info:
        x @ w
    assert info.value.node == "matmul"
    line = test_matmul_inner_dim_mismatch_raises.__code__.co_firstlineno + 5
    assert info.value.source and info.value.source.endswith(f"test_core_smoke.py:{line}")
