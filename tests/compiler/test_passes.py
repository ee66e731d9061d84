"""Plan passes: constant folding, CSE, no-op and dead-node removal, algebraic simplification."""

from __future__ import annotations

import numpy as np

import kernelflow as kf
from kernelflow.compiler.passes import run_passes
from kernelflow.graph.ops import reduce as R
from tests.compiler.conftest import plan_of


def test_constant_subgraph_folds_into_one_constant(graph):
    x = graph.placeholder((3,), "float32", name="x")
    c = graph.constant(np.float32(2.0)) * graph.constant(np.float32(3.0)) + 1.0
    out = x * c
    order, fed = plan_of([out], [x])
    rw = run_passes(order, fed, [out])
    folded = [n for n in rw.order if n.op.name == "constant" and n.attrs["value"].ndim == 0
              and float(n.attrs["value"]) == 7.0]
    assert rw.stats["folded"] == 2
    assert len(folded) == 1 and folded[0].dtype == "float32"
    assert [n.op.name for n in rw.order if n.op.name not in ("constant", "placeholder")] == ["multiply"]


def test_cse_merges_identical_nodes_and_drops_the_copy(graph):
    x = graph.placeholder((4,), "float32", name="x")
    a = kf.exp(x)
    b = kf.exp(x)
    out = a + b
    order, fed = plan_of([out], [x])
    rw = run_passes(order, fed, [out])
    exps = [n for n in rw.order if n.op.name == "exp"]
    add = rw.resolve(out)
    assert rw.stats["cse"] == 1 and len(exps) == 1
    assert add.inputs[0] is exps[0] and add.inputs[1] is exps[0]


def test_cse_keeps_random_ops_apart(graph):
    a = kf.random_normal((3,), graph=graph)
    b = kf.random_normal((3,), graph=graph)
    out = a + b
    order, fed = plan_of([out])
    rw = run_passes(order, fed, [out])
    assert rw.stats["cse"] == 0


def test_identity_sum_to_and_same_dtype_cast_are_removed(graph):
    x = graph.placeholder((2, 3), "float32", name="x")
    y = kf.exp(x)
    s = R.sum_to_op.bind(y, x)  # same static shape: the identity at run time
    c = kf.cast(s, "float32")  # the builder already drops it
    out = kf.identity(c) * 2.0
    order, fed = plan_of([out], [x])
    rw = run_passes(order, fed, [out])
    names = [n.op.name for n in rw.order]
    assert "sum_to" not in names and "identity" not in names
    assert rw.resolve(out).inputs[0].op.name == "exp"


def test_multiply_by_one_and_add_zero_are_simplified(graph):
    x = graph.placeholder((5,), "float64", name="x")
    y = kf.tanh(x)
    out = (y * 1.0 + 0.0) - 0.0
    z = kf.negative(kf.negative(y))
    order, fed = plan_of([out, z], [x])
    rw = run_passes(order, fed, [out, z])
    assert rw.stats["simplified"] == 2  # y * 1 and the double negation (the fetched nodes stay)


def test_fetched_node_is_never_removed(graph):
    x = graph.placeholder((2,), "float32", name="x")
    y = kf.identity(x, name="y")
    order, fed = plan_of([y], [x])
    rw = run_passes(order, fed, [y])
    assert rw.resolve(y).name == "y" and rw.resolve(y).op.name == "identity"


def test_simplify_keeps_a_copy_of_a_variable_read(graph):
    v = graph.variable(np.ones(3, np.float32), name="v")
    w = v * 1.0  # must stay a fresh value: v is updated in place below
    out = kf.exp(w)
    order, fed = plan_of([out])
    rw = run_passes(order, fed, [out])
    assert any(n.op.name == "multiply" for n in rw.order)


def test_passes_keep_results_and_variable_semantics(rng):
    """A run that reads a variable before and after its update gives the same values both ways."""
    results = []
    for mode in ("sync", "off"):
        rt = kf.connect("inproc", compile=mode)
        g = rt.graph("p")
        v = g.variable(np.arange(4, dtype=np.float32), name="v")
        x = g.placeholder((4,), "float32", name="x")
        before = kf.relu(v * 1.0 + x) * 2.0
        upd = kf.assign_add(v, x * 3.0)
        results.append(g.run([before, upd], {x: np.array([1, -2, 3, -4], np.float32)}))
        results.append(g.run([before], {x: np.array([1, -2, 3, -4], np.float32)}))
        rt.close()
    for a, b in zip(results[:2], results[2:]):
        for u, w in zip(a, b):
            np.testing.assert_array_equal(u, w)


def test_sum_to_of_a_same_shaped_value_is_removed_with_unknown_dims(graph):
    """autodiff's sum_to(f(relu(x + b)), x + b) is the identity although the batch dim is None."""
    x = graph.placeholder((None, 4, 4, 3), "float32", name="x")
    b = graph.placeholder((3,), "float32", name="b")
    g = graph.placeholder((None, 4, 4, 3), "float32", name="g")
    a = x + b
    r = kf.relu(a)
    t = R.sum_to_op.bind(kf.exp(r), a)  # exp(relu(a)) has a's run-time shape: removed
    u = R.sum_to_op.bind(g * r, r)  # g's None dim may differ from r's (broadcast): kept
    out = t * 2.0 + u
    order, fed = plan_of([out], [x, b, g])
    rw = run_passes(order, fed, [out])
    kept = [n for n in rw.order if n.op.name == "sum_to"]
    assert len(kept) == 1 and kept[0].inputs[0].op.name == "multiply"
    assert rw.stats["noop"] == 1


def test_sum_to_removal_keeps_a_broadcasting_sum(graph):
    x = graph.placeholder((None, 3), "float32", name="x")
    y = graph.placeholder((None, 1), "float32", name="y")
    s = R.sum_to_op.bind(kf.exp(x + y), y)  # a real reduction over the last axis
    out = s * 2.0
    order, fed = plan_of([out], [x, y])
    rw = run_passes(order, fed, [out])
    assert any(n.op.name == "sum_to" for n in rw.order)


def test_size_of_a_static_shape_folds_and_its_input_dies(graph):
    x = graph.placeholder((None, 4), "float32", name="x")
    s = kf.sum(x, axis=0)  # static shape (4,)
    out = x * kf.cast(kf.size(s), "float32")
    order, fed = plan_of([out], [x])
    rw = run_passes(order, fed, [out])
    ops = [n.op.name for n in rw.order]
    assert "size" not in ops and "sum" not in ops
    assert rw.stats["folded"] >= 1
    dyn = kf.size(x)  # unknown batch: stays a run-time size
    order, fed = plan_of([dyn], [x])
    assert [n.op.name for n in run_passes(order, fed, [dyn]).order] == ["placeholder", "size"]
