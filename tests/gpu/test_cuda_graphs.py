"""CUDA graph capture of GPU plans (engine/cuda_graphs.py): a training step replayed as graphs
gives the kernel-by-kernel numbers, checks its label feed before each launch, captures afresh
when a variable's storage is replaced, keeps one graph per feed shape, and leaves plans with
random ops alone. CuPy refuses cuBLAS calls during a capture, so a model with matrix products is
captured piecewise: the matmuls run between the graphs (an MLP here, float32 against the
uncaptured run and float64 against the CPU). Skipped without CuPy and a CUDA GPU (CI has neither).

Written, not yet run on a GPU in this form (docs/gpu.md)."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
if not cupy.cuda.is_available():
    pytest.skip("no CUDA GPU", allow_module_level=True)


def _mlp(rt, dropout=False, dtype="float32"):
    g = rt.graph("mlp")
    x = g.placeholder((None, 20), dtype, name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = kf.layers.dense(x, 32, activation=kf.relu, name="d1", seed=0)
    if dropout:
        h = kf.dropout(h, 0.3, seed=5)
    logits = kf.layers.dense(h, 4, name="d2", seed=1)
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    train = kf.optim.Adam(lr=1e-2).minimize(loss)
    return g, x, y, loss, train


def _scaled(rt):
    """Softmax regression without a matrix product: logits = tanh(x * w + b) * 3, per class."""
    g = rt.graph("scaled")
    x = g.placeholder((None, 4), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    w = g.variable(np.linspace(0.5, 1.5, 4).astype(np.float32), name="w")
    b = g.variable(np.zeros(4, np.float32), name="b")
    logits = kf.tanh(x * w + b) * 3.0
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    train = kf.optim.Adam(lr=5e-2).minimize(loss)
    return g, x, y, loss, train


def _graphs(rt, g, fetches, feeds):
    session = rt._transport.service.graphs.session(g.name)  # the plan's CudaGraphs (test only)
    return session.plan([t.name for t in fetches], [t.name for t in feeds]).cuda_graphs


def _batches(sizes=(64, 64, 64), features=4):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, 4, n)) for n in sizes]


def _train(graphs, batches, steps, assign_at=None, model=_scaled, var="w", device="gpu", compile=None):
    rt = kf.connect("inproc", device=device, cuda_graphs=graphs, compile=compile)
    g, x, y, loss, train = model(rt)
    losses = []
    for k in range(steps):
        if k == assign_at:
            g[var].set(np.full(g[var].shape, 0.25, g[var].dtype))
        xb, yb = batches[k % len(batches)]
        losses.append(float(g.run([train, loss], {x: xb.astype(x.dtype), y: yb})[1]))
    cg = _graphs(rt, g, [train, loss], [x, y])
    w = g[var].value()
    rt.close()
    return losses, w, cg


def test_replayed_training_step_equals_kernel_by_kernel():
    batches = _batches()
    on, w_on, cg = _train(True, batches, 8)
    off, w_off, none = _train(False, batches, 8)
    assert none is None
    assert cg.reason is None and cg.declined == []
    assert cg.launches == 7  # run 1 plain, run 2 captured and launched, runs 3-8 replayed
    assert off[-1] < off[0]
    np.testing.assert_allclose(on, off, rtol=1e-5)
    np.testing.assert_allclose(w_on, w_off, rtol=1e-5, atol=1e-6)


def test_a_bad_label_is_refused_before_the_launch_and_changes_nothing():
    rt = kf.connect("inproc", device="gpu", cuda_graphs=True)
    g, x, y, loss, train = _scaled(rt)
    xb, yb = _batches()[0]
    for _ in range(3):
        g.run([train, loss], {x: xb, y: yb})
    before = g["w"].value()
    bad = yb.copy()
    bad[5] = 7
    with pytest.raises(kf.errors.InvalidArgumentError, match="labels must be in"):
        g.run([train, loss], {x: xb, y: bad})
    np.testing.assert_array_equal(g["w"].value(), before)
    assert _graphs(rt, g, [train, loss], [x, y]).launches == 2
    rt.close()


def _check_pieces(cg, launches, graphs):
    """The MLP's plan ran as ``graphs`` graphs between its matrix products, every run after the first."""
    assert cg.reason is None and cg.declined == [] and cg.refused == []
    nodes = cg.plan.step_nodes
    pieces = [s for s in cg.segments if s[0] == "graph"]
    eager = {nodes[k].name for kind, lo, hi in cg.segments if kind == "eager" for k in range(lo, hi)}
    matmuls = {n.name for n in nodes if n.op.name == "matmul"}
    assert len(matmuls) == 5  # 2 forward, 3 backward (the first layer's input gradient is pruned)
    assert matmuls <= eager and set(cg.eager_nodes()) == matmuls
    assert [k for s in cg.segments for k in range(s[1], s[2])] == list(range(len(nodes)))
    # compiler off: bias+relu | loss and backward to the output layer's matmuls | the rest and the updates;
    # compiler on: bias+relu is one fused kernel, not worth a graph, so two pieces
    assert len(pieces) == graphs, cg.segments
    assert cg.launches == launches and cg.graph_launches == launches * graphs


def test_an_mlp_with_matrix_products_is_captured_piecewise_and_trains_as_without_graphs():
    batches = _batches(features=20)
    on, w_on, cg = _train(True, batches, 6, model=_mlp, var="d1/w", compile="sync")
    off, w_off, none = _train(False, batches, 6, model=_mlp, var="d1/w", compile="sync")
    assert none is None
    _check_pieces(cg, launches=5, graphs=2)  # run 1 plain, run 2 captured piece by piece, runs 3-6 replayed
    assert len(set(on)) == 6
    np.testing.assert_allclose(on, off, rtol=1e-5)
    np.testing.assert_allclose(w_on, w_off, rtol=1e-5, atol=1e-6)


def test_a_float64_mlp_captured_piecewise_follows_the_cpu():
    batches = [(x.astype(np.float64), y) for x, y in _batches(features=20)]

    def mlp64(rt):
        return _mlp(rt, dtype="float64")

    on, w_on, cg = _train(True, batches, 6, model=mlp64, var="d1/w", compile="off")
    cpu, w_cpu, _ = _train(False, batches, 6, model=mlp64, var="d1/w", device="cpu", compile="off")
    _check_pieces(cg, launches=5, graphs=3)
    np.testing.assert_allclose(on, cpu, rtol=1e-10)
    np.testing.assert_allclose(w_on, w_cpu, rtol=1e-9, atol=1e-12)


def test_update_groups_inside_the_pieces(monkeypatch):
    # The CuPy group kernel captured in a graph: its gradient pointer table goes through pinned memory.
    monkeypatch.setenv("KERNELFLOW_GPU_UPDATE_GROUPS", "1")
    batches = _batches(features=20)
    on, w_on, cg = _train(True, batches, 6, model=_mlp, var="d1/w", compile="sync")
    monkeypatch.setenv("KERNELFLOW_GPU_UPDATE_GROUPS", "0")
    off, w_off, _ = _train(False, batches, 6, model=_mlp, var="d1/w", compile="sync")
    assert any(n.op.name == "update_group" for n in cg.plan.step_nodes)
    _check_pieces(cg, launches=5, graphs=2)
    np.testing.assert_allclose(on, off, rtol=1e-5)
    np.testing.assert_allclose(w_on, w_off, rtol=1e-5, atol=1e-6)


def test_assigning_a_variable_captures_afresh():
    batches = _batches()
    on, w_on, cg = _train(True, batches, 8, assign_at=4)
    off, w_off, _ = _train(False, batches, 8, assign_at=4)
    np.testing.assert_allclose(on, off, rtol=1e-5)
    np.testing.assert_allclose(w_on, w_off, rtol=1e-5, atol=1e-6)
    assert cg.launches == 6  # steps 2-4 launched, step 5 plain after the assign, 6-8 launched again


def test_one_graph_per_batch_shape():
    batches = _batches((64, 17))
    on, _, cg = _train(True, batches, 8)
    off, _, _ = _train(False, batches, 8)
    np.testing.assert_allclose(on, off, rtol=1e-5)
    assert cg.launches == 6  # each shape: one plain run, then captured and replayed


def test_plans_with_random_ops_are_not_captured():
    rt = kf.connect("inproc", device="gpu", cuda_graphs=True)
    g, x, y, loss, train = _mlp(rt, dropout=True)
    xb, yb = _batches(features=20)[0]
    losses = [float(g.run([train, loss], {x: xb, y: yb})[1]) for _ in range(4)]
    cg = _graphs(rt, g, [train, loss], [x, y])
    assert "random" in cg.reason and cg.launches == 0
    assert len(set(losses)) == 4
    rt.close()
