"""The op registry is complete: every op has both rules, a kernel, and a gradient rule that
a float64 finite-difference check covers (or an explicit "not differentiable" mark)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.graph.registry import all_ops
from kernelflow.kernels.registry import has_kernel
from tests.ops.opcheck import OpCase, check_forward, check_gradient

CASE_MODULES = ["test_core_smoke", "test_elementwise", "test_reduce", "test_linalg", "test_movement", "test_nn",
                "test_control_flow"]

# Ops whose gradient rule is checked by a dedicated test instead of an OpCase table.
GRADIENT_CHECKED_ELSEWHERE = {
    "sign": "tests/ops/test_elementwise.py (zero gradient)",
    "cast": "test_cast_gradient_is_cast_back below (finite differences through float32 rounding are noise)",
    "print": "test_print_op_passes_gradient_through below",
    "identity": "test_identity_and_stop_gradient_gradients below",
    "stop_gradient": "test_identity_and_stop_gradient_gradients below",
    "summary": "tests/ops/test_summary.py (the value and its gradient pass through)",
}


def _norm(rng, dtype, *shapes):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# Autodiff's own helper ops, used inside other gradients, checked here directly.
CASES = [
    OpCase("reshape_like", lambda a, b: kf.graph.ops.movement.reshape_like(a, b) * b,
           lambda a, b: a.reshape(b.shape) * b,
           lambda r, d: _norm(r, d, (2, 6), (3, 4))),
    OpCase("sum_to_broadcast_axes", lambda a, b: kf.sum_to(a, b) * b, lambda a, b: a.sum(0).sum(0, keepdims=True) * b,
           lambda r, d: _norm(r, d, (2, 3, 4), (1, 4))),
    OpCase("relu_grad", lambda g_, x: kf.graph.ops.elementwise.relu_grad(g_, kf.relu(x)),
           lambda g_, x: g_ * (x > 0), lambda r, d: _norm(r, d, (4, 5), (4, 5))),
    OpCase("sum_to_unknown_batch", lambda a, b: kf.sum_to(a, b), lambda a, b: a.sum(0),
           lambda r, d: _norm(r, d, (5, 3), (3,)), static_shapes=False),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_autodiff_helper_op_forward_and_gradient(case, rng):
    for dtype in case.dtypes:
        check_forward(case, dtype, rng)
    check_gradient(case, rng)


def _all_cases():
    cases = list(CASES)
    for name in CASE_MODULES:
        mod = importlib.import_module(f"tests.ops.{name}")
        cases.extend(mod.CASES)
    return cases


def _forward_ops(case) -> set[str]:
    """Op names in the forward graph of a case (what its gradient check exercises)."""
    rng = np.random.default_rng(0)
    args = [np.asarray(a) for a in case.make_args(rng, "float64")]
    g = kf.connect("inproc").graph("registry")
    phs = [g.placeholder(a.shape, a.dtype, name=f"arg{i}") for i, a in enumerate(args)]
    case.build(*phs)
    return {n.op.name for n in g.nodes()}


def test_every_op_has_rules_and_a_numpy_kernel():
    missing = []
    for name, op in all_ops().items():
        if op.shape_rule is None or op.dtype_rule is None:
            missing.append(f"{name}: rule missing")
        if op.vjp is None and op.differentiable:
            missing.append(f"{name}: neither vjp nor differentiable=False")
        if name != "placeholder" and not has_kernel(op, "numpy"):
            missing.append(f"{name}: no numpy kernel")
    assert not missing, "\n".join(missing)


def test_every_differentiable_op_is_gradient_checked():
    covered: set[str] = set()
    for case in _all_cases():
        if case.grad:
            covered |= _forward_ops(case)
    differentiable = {name for name, op in all_ops().items() if op.differentiable}
    uncovered = sorted(differentiable - covered - set(GRADIENT_CHECKED_ELSEWHERE))
    assert not uncovered, f"differentiable ops without a finite-difference check: {uncovered}"


@pytest.mark.parametrize("name", sorted(GRADIENT_CHECKED_ELSEWHERE))
def test_exempt_ops_exist(name):
    assert name in all_ops()


def test_cast_gradient_is_cast_back(g):
    x = g.placeholder((3,), "float32", name="x")
    c = np.array([0.5, -2.0, 3.25])
    y = kf.sum(kf.cast(x, "float64") * c)
    gx = kf.gradients(y, x)
    assert gx.dtype == "float32"
    np.testing.assert_array_equal(g.run(gx, {x: np.ones(3, "float32")}), c.astype("float32"))
    assert kf.gradients(kf.sum(kf.cast(kf.cast(x, "int32"), "float32")), x, unconnected="zero") is not None


def test_identity_and_stop_gradient_gradients(g):
    x = g.placeholder((3,), "float64", name="x")
    y = kf.sum(kf.identity(x) * 3.0 + kf.stop_gradient(x) * 5.0)
    gx = kf.gradients(y, x)
    np.testing.assert_array_equal(g.run(gx, {x: np.array([1.0, -2.0, 0.5])}), [3.0, 3.0, 3.0])


def test_print_op_passes_gradient_through(inproc_rt):
    rt = inproc_rt
    g = rt.graph("test")
    x = g.placeholder((2,), "float64", name="x")
    y = kf.sum(kf.print_tensor(x, message="x=") * x)
    gx = kf.gradients(y, x)
    np.testing.assert_allclose(g.run(gx, {x: np.array([1.5, -2.0])}), [3.0, -4.0])
    lines = rt._transport.service.graphs.session("test").log_lines
    assert any(line.startswith("x=") and "[1.5, -2.0]" in line for line in lines)


def test_unknown_op_name_suggests_the_closest():
    with pytest.raises(kf.errors.NotFoundError, match=r"unknown op 'expp'; did you mean 'exp'\?"):
        kf.graph.lookup("expp")


def test_op_families_listed_once_and_each_has_ops_and_kernels():
    import pathlib

    from kernelflow.graph.ops import FAMILIES

    root = pathlib.Path(kf.__file__).parent
    graph_modules = {p.stem for p in (root / "graph" / "ops").glob("*.py") if p.stem != "__init__"}
    kernel_modules = {p.stem for p in (root / "kernels").glob("*.py") if p.stem not in ("__init__", "registry")}
    assert len(FAMILIES) == len(set(FAMILIES))
    assert set(FAMILIES) == graph_modules
    assert set(FAMILIES) <= kernel_modules
