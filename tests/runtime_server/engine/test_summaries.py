"""The tensor.summary RPC (runtime_server/summaries.py) through RemoteGraph.summary, in-process and over TCP."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.errors import InvalidArgumentError, NotFoundError


def _check_against_numpy(s: dict, value: np.ndarray, bins: int) -> None:
    v = value.astype(np.float64).ravel()
    fin = v[np.isfinite(v)]
    assert s["shape"] == list(value.shape) and s["dtype"] == value.dtype.name and s["size"] == v.size
    assert (s["finite"], s["nan"], s["inf"]) == (fin.size, int(np.isnan(v).sum()), int(np.isinf(v).sum()))
    np.testing.assert_allclose([s["min"], s["max"], s["mean"], s["std"]],
                               [fin.min(), fin.max(), fin.mean(), fin.std()], rtol=1e-9, atol=1e-12)
    counts, edges = np.histogram(fin, bins=bins, range=(fin.min(), fin.max()))
    assert s["hist"]["counts"] == counts.tolist()
    np.testing.assert_allclose(s["hist"]["edges"], edges, rtol=1e-12)


def test_summary_variable_matches_numpy_of_run(rt, rng):
    g = rt.graph("sv")
    w = g.variable(rng.normal(size=(64, 33)).astype(np.float32), name="w")
    s = g.summary(w)
    _check_against_numpy(s, g.run(w), 30)
    assert s["name"] == "w" and len(s["hist"]["counts"]) == 30


def test_summary_computed_tensor_with_feed_and_custom_bins(rt, rng):
    g = rt.graph("sc")
    x = g.placeholder((None, 5), name="x")
    w = g.variable(rng.normal(size=(5, 7)).astype(np.float32), name="w")
    h = kf.relu(kf.matmul(x, w))
    xb = rng.normal(size=(11, 5)).astype(np.float32)
    s = g.summary(h, feed={x: xb}, bins=7)  # h's nodes ride along with the call (never synced before)
    _check_against_numpy(s, g.run(h, feed={x: xb}), 7)
    assert s["shape"] == [11, 7]  # the value's shape, not the static (None, 7)
    assert g.summary(h.name, feed={"x": xb}, bins=7) == s


def test_summary_needing_feeds_names_the_placeholders(rt):
    g = rt.graph("sf")
    a = g.placeholder((3,), name="a")
    b = g.placeholder((3,), name="b")
    c = a * b + 1.0
    with pytest.raises(InvalidArgumentError, match=r"needs feeds for the placeholders \['a', 'b'\]"):
        g.summary(c)
    with pytest.raises(InvalidArgumentError, match=r"placeholders \['b'\]"):
        g.summary(c, feed={a: np.ones(3, np.float32)})
    prod = g["multiply"]  # feeding the intermediate cuts both placeholders off
    s = g.summary(c, feed={prod: np.array([1.0, 2.0, 3.0], np.float32)})
    assert (s["min"], s["max"], s["mean"]) == (2.0, 4.0, 3.0)


def test_summary_counts_nan_and_inf(rt):
    g = rt.graph("sn")
    v = g.variable(np.array([1.0, np.nan, np.inf, -np.inf, 3.0, np.nan]), name="v")
    s = g.summary(v, bins=4)
    assert (s["size"], s["finite"], s["nan"], s["inf"]) == (6, 2, 2, 2)
    assert (s["min"], s["max"], s["mean"], s["std"]) == (1.0, 3.0, 2.0, 1.0)
    assert s["hist"] == {"counts": [1, 0, 0, 1], "edges": [1.0, 1.5, 2.0, 2.5, 3.0]}
    x = g.placeholder((2,), name="x")
    s = g.summary(kf.log(x), feed={x: np.array([-1.0, 0.0], np.float32)})  # NaN and -Inf made by the run
    assert (s["finite"], s["nan"], s["inf"], s["min"], s["hist"]["counts"]) == (0, 1, 1, None, [])


def test_summary_integer_and_constant_values(rt):
    g = rt.graph("si")
    k = g.constant(np.full((4, 2), 7, np.int64), name="k")
    s = g.summary(k, bins=3)
    assert (s["dtype"], s["min"], s["max"], s["std"], s["hist"]["counts"]) == ("int64", 7.0, 7.0, 0.0, [8, 0, 0])


def test_summary_refuses_side_effects_unless_allowed(rt):
    g = rt.graph("se")
    v = g.variable(np.zeros(3, np.float32), name="v")
    bump = v.assign_add(np.ones(3, np.float32), name="bump")
    with pytest.raises(InvalidArgumentError, match=r"state-changing ops \['bump'\]"):
        g.summary(bump)
    np.testing.assert_array_equal(g.run(v), np.zeros(3, np.float32))
    assert g.summary(bump, allow_side_effects=True)["mean"] == 1.0
    np.testing.assert_array_equal(g.run(v), np.ones(3, np.float32))


def test_summary_adds_no_nodes_and_bad_input_is_typed(rt):
    g = rt.graph("sb")
    v = g.variable(np.arange(6, dtype=np.float32), name="v")
    g.sync()
    n = len(rt.call("graph.get", ["sb", 0])["nodes"])
    for _ in range(3):
        g.summary(v)
    assert len(rt.call("graph.get", ["sb", 0])["nodes"]) == n and len(g) == n
    with pytest.raises(InvalidArgumentError, match=r"bins must be an integer in 1..10000; got 0"):
        g.summary(v, bins=0)
    with pytest.raises(NotFoundError, match="no node named 'nosuch'"):
        rt.call("tensor.summary", ["sb", g.version, [], "nosuch", [], []])
    with pytest.raises(NotFoundError, match="feed 'nosuch' is not a node"):
        rt.call("tensor.summary", ["sb", g.version, [], "v", ["nosuch"], [1.0]])
    with pytest.raises(InvalidArgumentError, match="1 feed names but 0 values"):
        rt.call("tensor.summary", ["sb", g.version, [], "v", ["v"], []])
    with pytest.raises(InvalidArgumentError, match="yields no value"):
        g.summary(kf.no_op(g, name="noop"))
    with pytest.raises(InvalidArgumentError, match="expected a tensor or a node name; got int"):
        g.summary(3)
