"""The inspector marks what the compiler fused (issue #16): one outline colour per fused kernel,
the group in the node's details, the same groups `g.plan` prints; in-process and server runtimes."""

from __future__ import annotations

import re

import numpy as np
import pytest

import kernelflow as kf

pytest.importorskip("anywidget")
pytest.importorskip("igraph")

from kernelflow.widgets import GraphInspector  # noqa: E402
from kernelflow.widgets.inspector import FUSED_COLORS  # noqa: E402
from kernelflow.widgets.layout import scope_sizes  # noqa: E402


def small_cnn(rt, name):
    """(graph, x, y, loss) of a small conv net (also the auto-plan tests' model)."""
    g = rt.graph(name, seed=1)
    x = g.placeholder((None, 8, 8, 1), name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = kf.layers.conv2d(x, 4, 3, activation=kf.relu, name="conv1")
    h = kf.layers.dense(kf.flatten(h), 16, activation=kf.relu, name="hidden")
    logits = kf.layers.dense(h, 10, name="dense")
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    return g, x, y, loss


def _cnn_train(rt, name):
    g, x, y, loss = small_cnn(rt, name)
    return g, x, y, loss, kf.optim.Adam(1e-2).minimize(loss)


def _printed_groups(text: str) -> dict[str, list[str]]:
    """{fused node: [members]} as `g.plan` prints them (an independent reading of the plan)."""
    groups: dict[str, list[str]] = {}
    root = None
    for line in text.splitlines():
        m = re.match(r"(\S+) = (?:fused|update_group)\[", line)  # update groups are outlined too
        if m:
            root = m.group(1)
            groups[root] = []
        elif line.startswith("    | "):
            groups[root].append(line[6:].split(" = ")[0])
    return groups


def test_inspector_plan_outlines_each_fused_group_as_the_plan_prints_it(rt):
    g, x, y, loss, train = _cnn_train(rt, "fused-cnn")
    printed = _printed_groups(g.plan(train, feeds=[x, y]))
    assert len(printed) >= 4 and printed["conv1/relu"] == ["conv1/add", "conv1/relu"], printed
    every = sorted(scope_sizes(n.name for n in g.nodes()))
    w = g.inspect(plan=train, expanded=every)  # every scope open: every member is a box of its own
    assert {f["name"]: f["members"] for f in w.fused} == printed
    assert [f["name"] for f in w.fused] == list(printed)  # plan order
    assert [f["color"] for f in w.fused] == [FUSED_COLORS[i % len(FUSED_COLORS)] for i in range(len(printed))]
    ids = w.meta["ids"]
    of_box = np.frombuffer(w.box_fused, np.int32)
    assert of_box.shape == (len(ids),)
    want = {m: i for i, f in enumerate(w.fused) for m in f["members"]}
    assert {ids[b]: int(of_box[b]) for b in range(len(ids)) if of_box[b] >= 0} == want
    assert all(of_box[b] == -1 for b in range(len(ids)) if ids[b] not in want)
    assert [(f["name"], f["ops"], f["members"]) for f in w.meta["fused"]] == [
        (f["name"], " ".join(f["ops"]), len(f["members"])) for f in w.fused]
    # the details panel of a member names its kernel and the other members; a node outside none
    d = w.click("conv1/add")
    assert d["fused"]["name"] == "conv1/relu" and d["fused"]["members"] == ["conv1/add", "conv1/relu"]
    assert d["fused"]["ops"] == ["add", "relu"] and d["fused"]["color"] == w.fused[d["fused"]["index"]]["color"]
    assert w.click("conv1/conv2d")["fused"] is None
    # a closed scope: its members' boxes go, the scope box is not a member, its details list the kernels
    d = w.click("conv1/")
    assert "conv1" not in w.expanded and d["kind"] == "scope"
    assert [f["name"] for f in d["fused"]] == ["conv1/relu"]
    ids = w.meta["ids"]
    of_box = np.frombuffer(w.box_fused, np.int32)
    assert of_box[ids.index("conv1/")] == -1 and "conv1/add" not in ids
    assert of_box[ids.index("hidden/relu")] == want["hidden/relu"]


def test_inspector_show_plan_changes_and_clears_the_marking(rt):
    g, x, y, loss, train = _cnn_train(rt, "fused-switch")
    w = GraphInspector(g)
    assert w.fused == [] and set(np.frombuffer(w.box_fused, np.int32)) <= {-1}
    forward = w.show_plan(loss)  # feeds default to the placeholders the fetches need (x, y)
    assert forward and all(not m.startswith(("gradients/", "Adam/")) for f in forward for m in f["members"])
    assert {f["name"]: f["members"] for f in forward} == _printed_groups(g.plan(loss, feeds=[x, y]))
    full = w.show_plan([train])
    assert len(full) > len(forward) and any(m.startswith("gradients/") for f in full for m in f["members"])
    with pytest.raises(kf.errors.NotFoundError, match="nosuch"):
        w.show_plan("nosuch")
    assert [f["name"] for f in w.fused] == [f["name"] for f in full]  # a failed switch keeps what was shown
    w.show_plan(None)
    assert w.fused == [] and w.meta["fused"] == [] and set(np.frombuffer(w.box_fused, np.int32)) == {-1}


def test_inspector_plan_refresh_follows_a_grown_graph(rt):
    g, x, y, loss, train = _cnn_train(rt, "fused-grow")
    w = g.inspect(plan=loss)
    before = {f["name"] for f in w.fused}
    extra = kf.tanh(kf.exp(g["dense/add"]) * 2.0, name="extra")
    w.show_plan([loss, extra])
    assert {f["name"] for f in w.fused} - before == {"extra"}
    assert w.fused[[f["name"] for f in w.fused].index("extra")]["ops"] == ["exp", "multiply", "tanh"]


def test_inspector_plan_with_the_compiler_off_marks_nothing():
    rt = kf.connect("inproc", compile="off")
    try:
        g, x, y, loss, train = _cnn_train(rt, "fused-off")
        w = g.inspect(plan=train)
        assert w.fused == [] and set(np.frombuffer(w.box_fused, np.int32)) == {-1}
        assert "fused" not in g.plan(train, feeds=[x, y])
    finally:
        rt.close()


def test_inspector_plan_of_a_local_graph_raises():
    g = kf.Graph("local")
    x = g.placeholder((None, 3), name="x")
    y = kf.relu(x + 1.0)
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"plan= needs a graph held by a runtime.*'local'"):
        GraphInspector(g, plan=y)
    w = GraphInspector(g)
    with pytest.raises(kf.errors.InvalidArgumentError, match="local kf.Graph"):
        w.show_plan(y)
