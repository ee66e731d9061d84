"""GraphInspector through its Python API: the model it sends, clicks, search, trace, summaries."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf

pytest.importorskip("anywidget")
pytest.importorskip("igraph")

from kernelflow.widgets import GraphInspector  # noqa: E402
from kernelflow.widgets.inspector import auxiliary_scopes  # noqa: E402
from kernelflow.widgets.summary import value_summary  # noqa: E402


def _cnn(rt, name="cnn"):
    g = rt.graph(name)
    x = g.placeholder((None, 8, 8, 1), name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = kf.layers.conv2d(x, 4, 3, activation=kf.relu, name="conv1")
    logits = kf.layers.dense(kf.flatten(h), 10, name="dense")
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    return g, loss


@pytest.fixture
def graph(rt):
    g, loss = _cnn(rt)
    return g


def test_inspector_model_arrays_match_layout(graph):
    w = GraphInspector(graph)
    lay = w.graph_layout
    n, m = len(lay.boxes), len(lay.edges)
    xywh = np.frombuffer(w.boxes, np.float32).reshape(n, 4)
    np.testing.assert_allclose(xywh, [(b.x, b.y, b.w, b.h) for b in lay.boxes], rtol=1e-6)
    assert w.meta["ids"] == [b.id for b in lay.boxes] and w.meta["nodes"] == len(graph)
    ends = np.frombuffer(w.edge_ends, np.int32).reshape(m, 2)
    assert ends.tolist() == [[e.src, e.dst] for e in lay.edges]
    offs = np.frombuffer(w.edge_offsets, np.int32)
    assert offs[0] == 0 and offs[-1] == len(np.frombuffer(w.edge_points, np.float32)) // 2
    assert w.meta["categories"][w.meta["ids"].index("conv1/conv2d")] == "conv"
    assert w.meta["categories"][w.meta["ids"].index("conv1/w")] == "variable"
    assert set(w.expanded) == {"conv1", "dense"}  # small graph: everything open


def test_inspector_sends_binary_buffers_not_json_lists(graph):
    sent = []
    w = GraphInspector(graph)
    w.comm.send = lambda data=None, metadata=None, buffers=None: sent.append((data, buffers))
    w.collapse("conv1")
    state = [d for d, _ in sent if d and d.get("method") == "update"]
    assert state, sent
    paths = {tuple(p) for d in state for p in d.get("buffer_paths", [])}
    assert {("boxes",), ("edge_points",), ("edge_ends",)} <= paths
    assert all(isinstance(b, (bytes, memoryview)) for _, bufs in sent for b in (bufs or []))


def test_inspector_click_scope_toggles_and_node_shows_details(graph):
    w = GraphInspector(graph)
    d = w.click("conv1/")
    assert d["kind"] == "scope" and d["members"] == 5 and d["params"] == 40
    assert "conv1" not in w.expanded and w.graph_layout.box("conv1/").kind == "scope"
    w.click("conv1/")
    assert "conv1" in w.expanded and w.graph_layout.box("conv1/").kind == "group"
    d = w.click("conv1/conv2d")
    assert (d["op"], d["shape"], d["dtype"], d["device"]) == ("conv2d", "(None, 8, 8, 4)", "float32", "default")
    assert [i["name"] for i in d["inputs"]] == ["x", "conv1/w"]
    assert [o["name"] for o in d["outputs"]] == ["conv1/add"]
    assert d["attrs"]["padding"] == "'SAME'"
    assert d["source"].endswith(".py:" + d["source"].rsplit(":", 1)[1]) and "test_inspector.py" in d["source"]
    assert d["needs_feeds"] == ["x"] and d["summary"] is None and not d["can_run"]
    assert w.selected == "conv1/conv2d" and w.details == d


def test_inspector_click_variable_summary_matches_value(graph):
    w = GraphInspector(graph)
    d = w.click("dense/w")
    s = d["summary"]
    v = graph.run(graph["dense/w"]).astype(np.float64)
    assert s["shape"] == [256, 10] and s["size"] == v.size and s["nan"] == 0 and s["inf"] == 0
    np.testing.assert_allclose([s["min"], s["max"], s["mean"], s["std"]], [v.min(), v.max(), v.mean(), v.std()],
                               rtol=1e-9)
    counts, edges = np.histogram(v, bins=30, range=(s["min"], s["max"]))
    assert s["hist"]["counts"] == counts.tolist()
    np.testing.assert_allclose(s["hist"]["edges"], edges)


def test_inspector_summaries_add_no_nodes_to_the_graph(graph):
    graph.sync()
    before, on_runtime = len(graph), len(graph.runtime.call("graph.get", [graph.name, 0])["nodes"])
    w = GraphInspector(graph)
    xb = np.ones((2, 8, 8, 1), np.float32)
    summaries = [w.click("conv1/w")["summary"], w.select("conv1/relu", summary=True, feed={"x": xb})["summary"],
                 w.click("dense/b")["summary"], w.compute_summary()["summary"]]
    assert [s["name"] for s in summaries] == ["conv1/w", "conv1/relu", "dense/b", "dense/b"]
    w.refresh()
    assert len(graph) == before and w.meta["nodes"] == before
    assert len(graph.runtime.call("graph.get", [graph.name, 0])["nodes"]) == on_runtime


def test_inspector_summary_with_feed_and_refusal_of_side_effects(graph):
    w = GraphInspector(graph)
    xb = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    d = w.select("conv1/relu", summary=True, feed={"x": xb})
    want = graph.run(graph["conv1/relu"], feed={"x": xb})
    assert d["summary"]["max"] == pytest.approx(float(want.max()))
    assert d["summary"]["min"] == 0.0
    step = graph["dense/w"].assign_add(np.ones((256, 10), np.float32), name="bump")
    w.refresh()
    d = w.select("bump", summary=True)
    assert d["summary"] is None and "state-changing ops ['bump']" in d["summary_error"]
    assert d["side_effects"] == ["bump"]
    assert step.name == "bump"


def test_inspector_search_and_trace_highlight_visible_boxes(graph):
    w = GraphInspector(graph)
    assert w.search("relu") == ["conv1/relu"]
    assert w.highlight == ["conv1/relu"]
    w.collapse("conv1")
    assert w.highlight == ["conv1/"]  # the closed scope stands for its member
    names = w.trace_inputs("dense/add")
    assert set(names) == {"x", "conv1/w", "conv1/conv2d", "conv1/b", "conv1/add", "conv1/relu", "reshape", "dense/w",
                          "dense/matmul", "dense/b", "dense/add"}
    assert set(w.highlight) == {"x", "conv1/", "reshape", "dense/w", "dense/matmul", "dense/b", "dense/add"}
    w.search("")
    assert w.highlight == []


def test_inspector_refresh_shows_nodes_added_by_another_client(server):
    rt1 = server.connect()
    rt2 = server.connect()
    try:
        g1, _ = _cnn(rt1, "shared")
        g1.sync()
        w = GraphInspector(rt2.graph("shared"))
        n = w.meta["nodes"]
        g1.variable(np.zeros(3, np.float32), name="extra/v")
        g1.sync()
        w.refresh()
        assert w.meta["nodes"] == n + 1 and "extra/v" in w.graph.nodes()[-1].name
        assert "extra/v" in w.graph_layout.index
    finally:
        rt1.delete_graph("shared")
        rt1.close()
        rt2.close()


def test_inspector_cnn_with_optimiser_opens_with_every_scope_closed(rt):
    # issue #14 item 12: the CNN opened fully expanded, gradients/ and Adam/ edges across everything
    g, loss = _cnn(rt, "cnn-train")
    kf.optim.Adam(1e-2).minimize(loss)
    w = GraphInspector(g)
    assert len(g) > 60 and w.expanded == []
    ids = w.meta["ids"]
    for scope in ("conv1/", "dense/", "gradients/", "Adam/"):
        assert w.graph_layout.box(scope).kind == "scope"
    assert len(ids) <= 12 and w.meta["width"] < 900  # a picture that is readable at 100%
    w.click("gradients/")  # one level at a time, as TensorBoard opens it
    assert "gradients" in w.expanded and w.graph_layout.box("gradients/conv1/").kind == "scope"


def test_inspector_small_graph_keeps_gradient_and_optimiser_scopes_closed(rt):
    g = rt.graph("small-train")
    x = g.placeholder((None, 3), name="x")
    loss = kf.mean(kf.square(kf.layers.dense(x, 2, name="dense")))
    kf.optim.SGD(0.1).minimize(loss)
    assert len(g) <= 60
    w = GraphInspector(g)
    assert auxiliary_scopes(list(g.nodes())) == {"gradients", "SGD"}
    assert set(w.expanded) == {"dense", "gradients/dense", "SGD/update_dense"}  # inner ones show once opened
    assert w.graph_layout.box("gradients/").kind == "scope" and w.graph_layout.box("SGD/").kind == "scope"
    assert w.graph_layout.box("dense/").kind == "group"


def test_inspector_big_graph_opens_collapsed():
    g = kf.Graph("big")
    h = g.placeholder((None, 4), name="x")
    for i in range(40):
        h = kf.layers.dense(h, 4, activation=kf.relu, name=f"d{i}")
    w = GraphInspector(g)
    assert len(g) > 150 and w.expanded == []
    assert len(w.meta["ids"]) == 41 and w.details == {}


def test_value_summary_nonfinite_counts(rt):
    g = rt.graph("nf")
    v = g.variable(np.array([1.0, np.nan, np.inf, -np.inf, 3.0]), name="v")
    s = value_summary(v)
    assert (s["finite"], s["nan"], s["inf"], s["min"], s["max"], s["mean"]) == (2, 1, 2, 1.0, 3.0, 2.0)
    assert s["hist"]["counts"][0] == 1 and s["hist"]["counts"][-1] == 1 and sum(s["hist"]["counts"]) == 2


def test_inspector_front_end_messages(graph):
    w = GraphInspector(graph)
    w._on_front_end_msg(w, {"type": "click", "id": "dense/"}, [])
    assert "dense" not in w.expanded
    w._on_front_end_msg(w, {"type": "click", "id": "nosuch"}, [])
    assert w.status.startswith("NotFoundError: graph 'cnn' has no node named 'nosuch'")
    w._on_front_end_msg(w, {"type": "trace", "id": "conv1/relu"}, [])
    assert "x" in w.highlight
    w._on_front_end_msg(w, {"type": "clear"}, [])
    assert w.highlight == []
    w._on_front_end_msg(w, {"type": "collapse_all"}, [])
    assert w.expanded == []
