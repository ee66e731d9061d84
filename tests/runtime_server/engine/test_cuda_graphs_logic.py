"""The parts of CUDA graph capture that run without a GPU: which plans qualify, the label checks
a capture defers to its launches, and the switch (engine/cuda_graphs.py; the GPU side is
tests/gpu/test_cuda_graphs.py)."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.graph.ops import nn as N
from kernelflow.kernels.registry import deferred_checks, get_kernel
from kernelflow.runtime_server.engine.cuda_graphs import CudaGraphs
from kernelflow.runtime_server.engine.devices import DeviceManager


def _plan(rt, g, fetches, feeds):
    g.sync()
    return rt._transport.service.graphs.session(g.name).plan([t.name for t in fetches], [t.name for t in feeds])


def test_label_check_is_deferred_while_capturing_and_raises_when_run():
    xent = get_kernel(N.softmax_cross_entropy_op, "numpy").fn
    logits = np.random.default_rng(0).standard_normal((3, 4))
    bad = np.array([0, 4, 1])
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"labels must be in \[0, 4\); got values in \[0, 4\]"):
        xent(np, logits, bad)
    good = np.array([0, 3, 1])
    with deferred_checks() as checks:
        xent(np, logits, good)  # no read-back of the labels during a capture: the check is handed over
    assert len(checks) == 1 and checks[0][0] is good
    checks[0][1](good)
    with pytest.raises(kf.errors.InvalidArgumentError, match="labels must be in"):
        checks[0][1](bad)


def test_switch_from_argument_and_environment(monkeypatch):
    monkeypatch.delenv("KERNELFLOW_CUDA_GRAPHS", raising=False)
    assert DeviceManager().cuda_graphs is False
    assert DeviceManager(cuda_graphs=True).cuda_graphs is True
    monkeypatch.setenv("KERNELFLOW_CUDA_GRAPHS", "1")
    assert DeviceManager().cuda_graphs is True
    assert DeviceManager(cuda_graphs=False).cuda_graphs is False


def test_cpu_plans_are_not_captured_and_random_ops_are_named():
    rt = kf.connect("inproc", cuda_graphs=True)
    g = rt.graph("g")
    x = g.placeholder((None, 3), "float32", name="x")
    y = kf.sum(kf.tanh(x) * 2.0)
    plan = _plan(rt, g, [y], [x])
    assert plan.cuda_graphs is None  # a CPU plan: nothing to capture
    assert CudaGraphs(plan).reason == "not every node and feed is on one GPU"
    z = kf.sum(kf.dropout(x, 0.5, seed=1))
    reason = CudaGraphs(_plan(rt, g, [z], [x])).reason
    assert "random_uniform" in reason and "needs the host" in reason
    np.testing.assert_allclose(g.run(y, {x: np.ones((2, 3), np.float32)}), 12 * np.tanh(1.0), rtol=1e-6)
    rt.close()
