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


# --------------------------------------------------------------------------- piecewise capture
from contextlib import nullcontext  # noqa: E402

from kernelflow.runtime_server.engine import cuda_graphs as CG  # noqa: E402


def test_cublas_ops_are_derived_from_the_gpu_kernels():
    assert CG.cublas_ops() == {"matmul", "einsum", "conv2d", "conv2d_backprop_input", "conv2d_backprop_filter",
                               "conv2d_transpose", "lstm_sequence", "lstm_sequence_grad", "gru_sequence",
                               "gru_sequence_grad"}

    def helper(xp, a):
        return xp.tensordot(a, a, 1)

    def direct(xp, a):
        return xp.sum(a)

    def nested(xp, a):
        return (lambda b: xp.linalg.inv(b))(a)

    def operator(xp, a, b):
        return a @ b

    def in_place(xp, a, b):
        a @= b
        return a

    assert not CG.calls_cublas(direct)
    assert CG.calls_cublas(nested)  # a function nested in the kernel
    assert CG.calls_cublas(operator) and CG.calls_cublas(in_place)  # `@` is an instruction, not a name
    assert not CG.calls_cublas(helper.__call__)  # not a Python function: nothing to read


def test_plan_segments_split_at_eager_steps_and_keep_short_runs_eager():
    e, k = [False, False, True, False, False, False, True, True, False, False], [1] * 10
    assert CG.plan_segments(e, k) == [("graph", 0, 2), ("eager", 2, 3), ("graph", 3, 6), ("eager", 6, 8),
                                      ("graph", 8, 10)]
    # a run of one kernel (or of views only) is not worth a graph: it joins its eager neighbours
    assert CG.plan_segments([True, False, True, False, False], [1, 1, 1, 1, 0]) == [("eager", 0, 5)]
    assert CG.plan_segments([False, False], [0, 2]) == [("graph", 0, 2)]
    assert CG.plan_segments([], []) == []
    assert CG.plan_segments([True, True], [1, 1]) == [("eager", 0, 2)]


def test_pinned_slots_are_eager_results_read_after_a_graph():
    # steps (fn, ins, out, free): 0 graph makes slot 10; 1 eager reads it, makes 11; 2 eager makes 12
    # (read only inside its piece); 3 graph reads 11; 4 eager makes 14 (fetched, no graph after)
    steps = [(None, (), 10, ()), (None, (10,), 11, ()), (None, (11,), 12, ()), (None, (11, 12), 13, ()),
             (None, (13,), 14, ())]
    segs = [("graph", 0, 1), ("eager", 1, 3), ("graph", 3, 4), ("eager", 4, 5)]
    assert CG.pinned_slots(steps, segs, fetch_slots=[14]) == {11, 12}
    assert CG.pinned_slots(steps, segs, fetch_slots=[12]) == {11, 12}
    fetch_before_graph = [("graph", 0, 1), ("eager", 1, 3), ("graph", 3, 5)]
    assert CG.pinned_slots(steps, fetch_before_graph, fetch_slots=[12]) == {11, 12}


class _FakeGraph:
    def __init__(self, calls):
        self.calls = calls
        self.fresh = True


class FakeDevice:
    """A numpy stand-in for the CUDA side with the semantics that matter: a graph replays the
    kernels it recorded on the arrays it recorded (fixed addresses), writing into the outputs it
    recorded. A capture runs the kernels (so the values exist) and the launch right after it does
    nothing, so each step computes once. Ops in ``refuse`` raise as CuPy does on cuBLAS."""

    def __init__(self, refuse=()):
        self.refuse = set(refuse)
        self.calls = None
        self.captures = 0

    def context(self):
        return nullcontext()

    def empty_like(self, v):
        return np.empty_like(v)

    def begin(self):
        assert self.calls is None
        self.calls = []

    def end(self):
        g, self.calls = _FakeGraph(self.calls), None
        self.captures += 1
        return g

    def abort(self):
        self.calls = None

    def call(self, fn, args, node):
        assert node.op.name not in CG.cublas_ops()  # the cuBLAS nodes are never captured
        if node.op.name in self.refuse:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        out = fn(*args)
        if isinstance(out, np.generic):  # a numpy scalar: CuPy gives a 0-d array, with an address
            out = np.asarray(out)
        self.calls.append((fn, args, out))
        return out

    def launch(self, g):
        if g.fresh:
            g.fresh = False
            return
        for fn, args, out in g.calls:
            res = fn(*args)
            if isinstance(out, np.ndarray) and res is not out:
                np.copyto(out, res)

    def synchronize(self):
        pass


def _mlp(rt):
    g = rt.graph("mlp")
    x = g.placeholder((None, 6), "float64", name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = kf.layers.dense(x, 8, activation=kf.tanh, name="d1", seed=0)
    logits = kf.layers.dense(h, 3, name="d2", seed=1)
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    train = kf.optim.Adam(lr=1e-2).minimize(loss)
    return g, x, y, loss, train


def _batches(sizes=(16, 16, 16)):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((n, 6)), rng.integers(0, 3, n)) for n in sizes]


def _train(device, steps, batches, assign_at=None, compile="off"):
    """(losses, weights, the plan's CudaGraphs): a CPU plan run through the piecewise machinery."""
    rt = kf.connect("inproc", compile=compile)
    g, x, y, loss, train = _mlp(rt)
    plan = _plan(rt, g, [train, loss], [x, y])
    cg = None
    if device is not None:
        cg = plan.cuda_graphs = CG.CudaGraphs(plan, device=device)
        assert cg.reason is None
    losses = []
    for k in range(steps):
        if k == assign_at:
            g["d1/w"].set(np.full(g["d1/w"].shape, 0.1))
        xb, yb = batches[k % len(batches)]
        losses.append(float(g.run([train, loss], {x: xb, y: yb})[1]))
    w = {v.name: g.read_variable(v) for v in g.variables()}
    rt.close()
    return losses, w, cg


@pytest.mark.parametrize("compile", ["off", "sync"])
def test_piecewise_replay_is_bitwise_kernel_by_kernel(compile):
    # compile "sync": fused kernels and one update-group node in the pieces
    batches = _batches()
    dev = FakeDevice()
    on, w_on, cg = _train(dev, 6, batches, compile=compile)
    off, w_off, _ = _train(None, 6, batches, compile=compile)
    assert on == off and len(set(on)) == len(on)  # every step's own loss, replays included
    for k, v in w_off.items():
        np.testing.assert_array_equal(w_on[k], v, err_msg=k)
    assert cg.declined == [] and cg.refused == []
    assert cg.launches == 5  # run 1 plain, run 2 captured, runs 3-6 replayed
    graphs = [s for s in cg.segments if s[0] == "graph"]
    eager = [s for s in cg.segments if s[0] == "eager"]
    assert len(graphs) >= 2 and dev.captures == len(graphs)
    assert cg.graph_launches == 5 * len(graphs)
    nodes = cg.plan.step_nodes
    assert any(n.op.name == "update_group" for n in nodes) == (compile == "sync")
    in_eager = {nodes[k].name for _, lo, hi in eager for k in range(lo, hi)}
    matmuls = {n.name for n in nodes if n.op.name == "matmul"}
    assert matmuls and matmuls <= in_eager and set(cg.eager_nodes()) == matmuls
    steps = [k for s in cg.segments for k in range(s[1], s[2])]
    assert steps == list(range(len(nodes)))  # the pieces cover every step once, in order


def test_a_refused_capture_makes_that_node_eager_and_the_next_run_captures_around_it():
    batches = _batches()
    dev = FakeDevice(refuse={"tanh"})
    on, w_on, cg = _train(dev, 6, batches)
    off, w_off, _ = _train(None, 6, batches)
    assert on == off
    for k, v in w_off.items():
        np.testing.assert_array_equal(w_on[k], v, err_msg=k)
    assert len(cg.refused) == 1 and "(tanh): NotImplementedError: calling cuBLAS API" in cg.refused[0]
    assert cg.declined == [] and cg.reason is None
    tanh = [n.name for n in cg.plan.step_nodes if n.op.name == "tanh"]
    assert set(tanh) <= set(cg.eager_nodes())
    assert cg.launches == 4  # run 2's capture was refused (it ran on kernel by kernel); run 3 captured


def test_assigning_a_variable_captures_the_pieces_afresh():
    batches = _batches()
    on, w_on, cg = _train(FakeDevice(), 8, batches, assign_at=4)
    off, w_off, _ = _train(None, 8, batches, assign_at=4)
    assert on == off
    for k, v in w_off.items():
        np.testing.assert_array_equal(w_on[k], v, err_msg=k)
    assert cg.launches == 6  # runs 2-4 by graphs, 5 plain after the assign, 6-8 by graphs again


def test_a_bad_label_is_refused_before_any_piece_runs():
    rt = kf.connect("inproc", compile="off")
    g, x, y, loss, train = _mlp(rt)
    cg = _plan(rt, g, [train, loss], [x, y]).cuda_graphs = CG.CudaGraphs(
        _plan(rt, g, [train, loss], [x, y]), device=FakeDevice())
    xb, yb = _batches()[0]
    for _ in range(3):
        g.run([train, loss], {x: xb, y: yb})
    before = {v.name: g.read_variable(v) for v in g.variables()}
    bad = yb.copy()
    bad[2] = 9
    with pytest.raises(kf.errors.InvalidArgumentError, match="labels must be in"):
        g.run([train, loss], {x: xb, y: bad})
    for v in g.variables():
        np.testing.assert_array_equal(g.read_variable(v), before[v.name], err_msg=v.name)
    assert cg.launches == 2
    rt.close()


def test_a_plan_of_matrix_products_only_is_declined():
    rt = kf.connect("inproc", compile="off")
    g = rt.graph("mm")
    x = g.placeholder((3, 3), "float64", name="x")
    y = x @ x
    plan = _plan(rt, g, [y], [x])
    cg = plan.cuda_graphs = CG.CudaGraphs(plan, device=FakeDevice())
    xv = np.eye(3) * 2
    for _ in range(3):
        np.testing.assert_array_equal(g.run(y, {x: xv}), xv @ xv)
    assert cg.reason.startswith("capture failed: no run of 2 or more kernels") and cg.launches == 0
    rt.close()
