"""The whole op test table (forward and gradients) with the graph compiler on ("sync": fused
kernels compiled before they run, for arrays of any size) and off, on an in-process runtime."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kernelflow as kf
from tests.ops import (
    opcheck,
    test_control_flow,
    test_core_smoke,
    test_elementwise,
    test_linalg,
    test_movement,
    test_nn,
    test_reduce,
)

MODULES = (test_core_smoke, test_elementwise, test_reduce, test_movement, test_linalg, test_nn, test_control_flow)
CASES = [c for m in MODULES for c in m.CASES]
FORWARD = [(c, d) for c in CASES for d in c.dtypes]


@pytest.fixture(scope="module", params=["sync", "off"])
def compile_mode(request):
    old = os.environ.get("KERNELFLOW_FUSE_MIN_ELEMENTS")
    os.environ["KERNELFLOW_FUSE_MIN_ELEMENTS"] = "0"  # the table's arrays are tiny: fuse them anyway
    runtime = kf.connect("inproc", compile=request.param)
    opcheck.RUNTIME = runtime
    yield request.param
    opcheck.RUNTIME = None
    runtime.close()
    if old is None:
        os.environ.pop("KERNELFLOW_FUSE_MIN_ELEMENTS", None)
    else:
        os.environ["KERNELFLOW_FUSE_MIN_ELEMENTS"] = old


@pytest.mark.parametrize("case,dtype", FORWARD, ids=[f"{c.name}-{d}" for c, d in FORWARD])
def test_op_forward_with_compiler_matches_reference(compile_mode, case, dtype):
    opcheck.check_forward(case, dtype, np.random.default_rng(1234))


@pytest.mark.parametrize("case", [c for c in CASES if c.grad], ids=lambda c: c.name)
def test_op_gradient_with_compiler_matches_finite_differences(compile_mode, case):
    opcheck.check_gradient(case, np.random.default_rng(1234))
