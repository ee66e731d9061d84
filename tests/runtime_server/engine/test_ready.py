"""Per-run hooks of the executor: fetches reported as their kernels make them (`Ready`), and random
ops drawing from keyed streams (`GraphSession.keyed_random`), both on a real in-process runtime."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.errors import InternalError, InvalidArgumentError
from kernelflow.runtime_server.engine.executor import Ready


class Recorder:
    """A run control that notes the kernel about to run (the executor calls ``at`` before each)."""

    def __init__(self):
        self.step = -1

    def at(self, k: int) -> None:
        self.step = k


def _mlp_grads(rt):
    g = rt.graph("ready")
    x = g.placeholder((None, 5), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    rng = np.random.default_rng(3)
    w1 = g.variable(rng.standard_normal((5, 8)).astype("float32"), name="w1")
    w2 = g.variable(rng.standard_normal((8, 3)).astype("float32"), name="w2")
    loss = kf.mean(kf.softmax_cross_entropy(kf.relu(x @ w1) @ w2, y))
    gw1, gw2 = kf.gradients(loss, [w1, w2])
    feed = {x: rng.standard_normal((6, 5)).astype("float32"), y: np.array([0, 1, 2, 0, 1, 2])}
    g.run([gw1, gw2, loss], feed)  # sends the nodes; the plan is cached
    return g, x, y, loss, gw1, gw2, feed


@pytest.mark.parametrize("compile", [True, False])
def test_ready_reports_each_watched_fetch_right_after_its_kernel(inproc_rt, compile):
    g, x, y, loss, gw1, gw2, feed = _mlp_grads(inproc_rt)
    s = inproc_rt._transport.service.graphs.session("ready")
    fetch = [gw1.name, gw2.name, loss.name, gw2.name]  # a duplicate too
    plan = s.plan(fetch, [x.name, y.name], compile=compile)
    plain_steps = list(plan.steps)
    values = [feed[x], feed[y]]
    want = plan.run(values)
    at = plan.ready_steps([0, 1, 3])
    assert at[1] == at[2] and at[0] > at[1]  # the backward pass makes gw2 (layer 2) before gw1
    ctl, seen = Recorder(), []

    def hear(i, v):
        seen.append((i, ctl.step, np.array(v, copy=True)))

    got = plan.run(values, ctl, ready=Ready([0, 1, 3], hear))
    assert [(i, k) for i, k, _ in seen] == [(1, at[1]), (3, at[1]), (0, at[0])]  # before the next kernel
    for i, _, v in seen:
        np.testing.assert_array_equal(v, got[i])
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    # finite differences: the reported gw1 is the gradient of the loss
    w1 = g.run(g["w1"])
    eps, (r, c) = 1e-2, (2, 5)
    bumped = []
    for d in (eps, -eps):
        w = w1.astype("float64")
        w[r, c] += d
        g["w1"].set(w.astype("float32"))
        bumped.append(float(g.run(loss, feed)))
    g["w1"].set(w1)
    assert abs((bumped[0] - bumped[1]) / (2 * eps) - float(seen[2][2][r, c])) < 2e-3
    assert plan.steps == plain_steps  # the cached plan is left as it was


def test_ready_reports_fed_fetches_first_and_callback_errors_end_the_run(inproc_rt):
    g = inproc_rt.graph("ready-fed")
    x = g.placeholder((3,), "float32", name="x")
    y = x * 2.0
    g.run(y, {x: np.ones(3, "float32")})
    s = inproc_rt._transport.service.graphs.session("ready-fed")
    plan = s.plan([y.name, x.name], [x.name])
    seen = []
    plan.run([np.arange(3, dtype="float32")], ready=Ready([0, 1], lambda i, v: seen.append((i, v.tolist()))))
    assert seen == [(1, [0.0, 1.0, 2.0]), (0, [0.0, 2.0, 4.0])]

    def boom(i, v):
        raise RuntimeError("listener failed")

    with pytest.raises(InternalError, match="listener failed"):
        plan.run([np.arange(3, dtype="float32")], ready=Ready([0], boom))


def test_keyed_random_draws_per_key_and_leaves_the_graph_stream_alone(inproc_rt):
    rt = inproc_rt
    g = rt.graph("keyed", seed=7)
    u = kf.random_uniform((4, 3), seed=11, graph=g, name="u")
    d = kf.dropout(g.placeholder((4, 3), "float32", name="ones"), 0.5, name="drop")
    ones = np.ones((4, 3), "float32")
    plain = [g.run(u), g.run(u)]  # the graph's stream, as it advances run by run
    rt.delete_graph("keyed")
    g = rt.graph("keyed", seed=7)
    u = kf.random_uniform((4, 3), seed=11, graph=g, name="u")
    d = kf.dropout(g.placeholder((4, 3), "float32", name="ones"), 0.5, name="drop")
    first = g.run(u)
    s = rt._transport.service.graphs.session("keyed")

    def keyed(key, name):
        with s.lock, s.keyed_random(key):
            return s.run([name], ["ones"], [ones])[0]

    a, again, other_rank, other_step = (keyed((5, 0, 1), u.name), keyed((5, 0, 1), u.name),
                                        keyed((5, 1, 1), u.name), keyed((5, 0, 2), u.name))
    np.testing.assert_array_equal(a, again)  # the same key draws the same numbers
    assert not np.allclose(a, other_rank) and not np.allclose(a, other_step)
    assert 0.0 <= a.min() and a.max() < 1.0 and a.std() > 0.05
    np.testing.assert_array_equal(first, plain[0])
    np.testing.assert_array_equal(g.run(u), plain[1])  # the keyed runs did not advance the graph's stream
    m0, m1 = keyed((5, 0, 1), d.name), keyed((5, 1, 1), d.name)
    assert set(np.unique(m0)) <= {0.0, 2.0} and not np.array_equal(m0, m1)  # dropout masks differ per rank
    with pytest.raises(InvalidArgumentError, match=r"non-negative integers; got \[1, -2\]"):
        with s.keyed_random((1, -2)):
            pass
