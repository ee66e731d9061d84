"""The CuPy path: every op case run on a GPU agrees with the numpy kernels, and training on
the GPU matches the CPU. Skipped without CuPy and a CUDA GPU (CI has neither)."""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler.cupy_backend import CupyFusedKernel

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
if not cupy.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)

CASE_MODULES = ["test_core_smoke", "test_elementwise", "test_reduce", "test_linalg", "test_movement", "test_nn",
                "test_registry", "test_control_flow"]
CASES = [c for m in CASE_MODULES for c in importlib.import_module(f"tests.ops.{m}").CASES]
if os.environ.get("KF_GPU_SHARD"):  # "i/n": every n-th case from the i-th, so n processes share the table
    _i, _n = (int(v) for v in os.environ["KF_GPU_SHARD"].split("/"))
    CASES = CASES[_i::_n]


def _run(case, args, device):
    rt = kf.connect("inproc", device=device)
    g = rt.graph("gpu_check")
    phs = [g.placeholder(a.shape, a.dtype, name=f"arg{i}") for i, a in enumerate(args)]
    out = case.build(*phs)
    fetches = [out]
    if case.grad:
        floats = [p for p, a in zip(phs, args) if a.dtype.kind == "f"]
        if floats and out.dtype in ("float32", "float64"):
            fetches += [gr for gr in kf.gradients(kf.sum(out * out), floats) if gr is not None]
    return g.run(fetches, dict(zip(phs, args)))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cupy_matches_numpy(case):
    dtype = "float64" if "float64" in case.dtypes else case.dtypes[0]
    args = [np.asarray(a) for a in case.make_args(np.random.default_rng(7), dtype)]
    try:
        cpu = _run(case, args, "cpu")
    except kf.errors.KernelflowError as e:  # a GPU box may lack scipy, which some CPU kernels use (erf, expit)
        if "No module named" not in str(e):
            raise
        pytest.skip(f"the CPU side needs a module not installed here: {e}")
    before = len(CupyFusedKernel.fallbacks)
    gpu = _run(case, args, "gpu")
    assert CupyFusedKernel.fallbacks[before:] == []  # every fused kernel built and ran on the GPU
    for c, d in zip(cpu, gpu):
        assert isinstance(d, np.ndarray) and d.dtype == c.dtype and d.shape == c.shape
        if c.dtype.kind == "f":
            np.testing.assert_allclose(d, c, rtol=1e-6 if c.dtype == np.float64 else 1e-4, atol=1e-6)
        else:
            np.testing.assert_array_equal(d, c)


def test_mlp_step_on_gpu_matches_cpu():
    results = []
    for device in ("cpu", "gpu"):
        rt = kf.connect("inproc", device=device)
        g = rt.graph("mlp")
        x = g.placeholder((None, 20), "float64", name="x")
        y = g.placeholder((None,), "int64", name="y")
        h = kf.layers.dense(x, 32, activation=kf.relu, name="d1", seed=0)
        logits = kf.layers.dense(h, 4, name="d2", seed=1)
        loss = kf.mean(kf.softmax_cross_entropy(logits, y))
        train = kf.optim.Adam(lr=1e-2).minimize(loss)
        rng = np.random.default_rng(0)
        xb, yb = rng.standard_normal((64, 20)), rng.integers(0, 4, 64)
        losses = [float(g.run([train, loss], {x: xb, y: yb})[1]) for _ in range(5)]
        results.append((losses, g["d1/w"].value()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-9)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-7, atol=1e-9)
