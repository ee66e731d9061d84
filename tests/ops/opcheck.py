"""Shared op checks: kernel vs a float64 numpy reference, static shape/dtype rules vs the
real output, and the vjp vs central finite differences in float64.

Each op family's test module keeps a table of `OpCase` entries and runs them through
`check_forward` and `check_gradient`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import kernelflow as kf

TOL = {"float16": 2e-2, "float32": 2e-5, "float64": 1e-10}

RUNTIME: kf.Runtime | None = None
"""The runtime checks run on; tests/conftest.py points it at inproc or a real server."""

_count = itertools.count()


def new_graph(prefix: str = "check") -> kf.Graph:
    """A fresh graph on the current test runtime (in-process when none is set)."""
    runtime = RUNTIME if RUNTIME is not None else kf.connect("inproc")
    return runtime.graph(f"{prefix}_{next(_count)}")


@dataclass
class OpCase:
    """One op under test.

    Attributes:
        name: test id.
        build: ``build(*tensors) -> tensor`` using kf ops.
        reference: ``reference(*float64 arrays) -> array``, the numpy float64 truth.
        make_args: ``make_args(rng, dtype) -> list of arrays`` (several shapes: one case each).
        dtypes: dtypes to check the forward pass in.
        grad: whether to check gradients (w.r.t. the floating args in ``grad_args``).
        grad_args: indices of args to differentiate (default: all floating).
        tol: override of the relative tolerance per dtype.
        static_shapes: placeholders get the args' full shapes (else the first dim is None).
    """

    name: str
    build: Callable[..., Any]
    reference: Callable[..., Any]
    make_args: Callable[[np.random.Generator, str], Sequence[np.ndarray]]
    dtypes: tuple[str, ...] = ("float32", "float64")
    grad: bool = True
    grad_args: tuple[int, ...] | None = None
    tol: dict = field(default_factory=dict)
    static_shapes: bool = True


def _placeholders(g, args, static: bool):
    phs = []
    for i, a in enumerate(args):
        shape = a.shape if static or a.ndim == 0 else (None,) + a.shape[1:]
        phs.append(g.placeholder(shape, a.dtype, name=f"arg{i}"))
    return phs


def check_forward(case: OpCase, dtype: str, rng: np.random.Generator) -> None:
    """Kernel output equals the float64 reference, and matches the static shape/dtype."""
    args = [np.asarray(a) for a in case.make_args(rng, dtype)]
    g = new_graph("check")
    phs = _placeholders(g, args, case.static_shapes)
    out = case.build(*phs)
    got = g.run(out, dict(zip(phs, args)))
    ref = np.asarray(case.reference(*[a.astype(np.float64) if a.dtype.kind == "f" else a for a in args]))
    assert got.shape == ref.shape, f"{case.name}: shape {got.shape} != reference {ref.shape}"
    assert got.dtype.name == out.dtype, f"{case.name}: runtime dtype {got.dtype} != static dtype {out.dtype}"
    assert len(out.shape) == got.ndim and all(s is None or s == d for s, d in zip(out.shape, got.shape)), \
        f"{case.name}: static shape {out.shape} does not describe runtime shape {got.shape}"
    tol = case.tol.get(dtype, TOL.get(dtype, 0))
    if got.dtype.kind in "fc":
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, err_msg=case.name)
    else:
        np.testing.assert_array_equal(got, ref, err_msg=case.name)


def numeric_grad(f: Callable[[list[np.ndarray]], float], args: list[np.ndarray], i: int,
                 eps: float = 1e-6) -> np.ndarray:
    """Central finite differences of scalar ``f`` w.r.t. ``args[i]`` (float64)."""
    x = args[i]
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        idx = it.multi_index
        old = x[idx]
        x[idx] = old + eps
        fp = f(args)
        x[idx] = old - eps
        fm = f(args)
        x[idx] = old
        grad[idx] = (fp - fm) / (2 * eps)
    return grad


def check_gradient(case: OpCase, rng: np.random.Generator, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    """kf.gradients of ``sum(out * cotangent)`` equals central differences, in float64."""
    args = [np.array(a, copy=True) for a in case.make_args(rng, "float64")]
    g = new_graph("grad")
    phs = _placeholders(g, args, case.static_shapes)
    out = case.build(*phs)
    wrt = case.grad_args if case.grad_args is not None else tuple(i for i, a in enumerate(args) if a.dtype.kind == "f")
    ct_val = rng.standard_normal(g.run(out, dict(zip(phs, args))).shape)
    ct = g.placeholder(ct_val.shape, "float64", name="cotangent")
    objective = kf.sum(out * ct)
    grads = kf.gradients(objective, [phs[i] for i in wrt], unconnected="zero")
    got = g.run(grads, {**dict(zip(phs, args)), ct: ct_val})
    f = g.make_callable(objective, phs + [ct])
    for k, i in enumerate(wrt):
        num = numeric_grad(lambda a: float(f(*a, ct_val)), args, i)
        np.testing.assert_allclose(got[k], num, rtol=rtol, atol=atol, err_msg=f"{case.name}: d/darg{i}")
