"""The layered layout: edges point down, boxes do not overlap, collapsed scopes hide their members."""

from __future__ import annotations

import itertools

import pytest

import kernelflow as kf

pytest.importorskip("igraph")

from kernelflow.widgets.layout import (  # noqa: E402
    COLLAPSE_ABOVE,
    Layout,
    LayoutNode,
    compute_layout,
    default_expanded,
    scope_chain,
    scope_sizes,
)


def _cnn_nodes() -> list[LayoutNode]:
    g = kf.Graph("cnn")
    x = g.placeholder((None, 8, 8, 1), name="x")
    y = g.placeholder((None,), "int64", name="y")
    h = kf.layers.conv2d(x, 4, 3, activation=kf.relu, name="conv1")
    h = kf.layers.conv2d(h, 8, 3, activation=kf.relu, name="conv2")
    logits = kf.layers.dense(kf.flatten(h), 10, name="dense")
    kf.optim.Adam(1e-3).minimize(kf.mean(kf.softmax_cross_entropy(logits, y)))
    return [LayoutNode(n.name, tuple(i.name for i in n.inputs), tuple(c.name for c in n.control_inputs),
                       n.op.name, str(n.shape)) for n in g.nodes()]


CNN = _cnn_nodes()
ALL_SCOPES = set(scope_sizes(n.name for n in CNN))


def _assert_downward(lay: Layout) -> None:
    """Every drawn line goes strictly down, from the bottom of its source to the top of its target."""
    for e in lay.edges:
        for line in e.polylines():
            ys = [p[1] for p in line]
            assert len(ys) >= 2 and all(b > a for a, b in zip(ys, ys[1:])), \
                (lay.boxes[e.src].id, lay.boxes[e.dst].id, e.points)
        src, dst = lay.boxes[e.src], lay.boxes[e.dst]
        assert e.points[0] == (src.cx, src.bottom) and e.points[-1] == (dst.cx, dst.y)


def _overlap(a, b) -> bool:
    return a.x < b.x + b.w and b.x < a.x + a.w and a.y < b.y + b.h and b.y < a.y + a.h


def _assert_no_overlap(lay: Layout) -> None:
    siblings: dict[int, list] = {}
    for b in lay.boxes:
        siblings.setdefault(b.parent, []).append(b)
        if b.parent >= 0:  # inside its group, below the group's header
            p = lay.boxes[b.parent]
            assert p.x < b.x and b.x + b.w < p.x + p.w and p.y + 20 < b.y and b.bottom < p.bottom, (b.id, p.id)
    for group in siblings.values():
        for a, b in itertools.combinations(group, 2):
            assert not _overlap(a, b), (a.id, b.id)


@pytest.mark.parametrize("expanded", [set(), ALL_SCOPES, {"conv1", "gradients"}, {"Adam", "Adam/conv1"}],
                         ids=["collapsed", "expanded", "some", "nested"])
def test_layout_cnn_edges_downward_and_no_overlap(expanded):
    lay = compute_layout(CNN, expanded)
    assert lay.edges
    assert not any(e.is_back for e in lay.edges)
    _assert_downward(lay)
    _assert_no_overlap(lay)
    assert all(0 <= b.x and b.x + b.w <= lay.width and 0 <= b.y and b.bottom <= lay.height for b in lay.boxes)


def test_layout_collapsed_scope_hides_members_and_keeps_outside_edges():
    lay = compute_layout(CNN, ALL_SCOPES - {"conv1"})
    ids = set(lay.index)
    assert "conv1/" in ids and lay.box("conv1/").kind == "scope" and lay.box("conv1/").members == 5
    assert not any(i.startswith("conv1/") and i != "conv1/" for i in ids)
    pairs = {(lay.boxes[e.src].id, lay.boxes[e.dst].id) for e in lay.edges}
    # x -> conv1/conv2d becomes x -> conv1/; conv1/relu -> conv2/conv2d leaves from the scope box
    assert ("x", "conv1/") in pairs
    assert ("conv1/", "conv2/conv2d") in pairs
    assert ("conv1/", "gradients/conv2/conv2d_backprop_filter") in pairs  # reads conv1/relu, conv2's input
    assert ("conv1/", "Adam/update_conv1/w") in pairs
    # every node edge is still drawn, between the boxes standing for its ends
    lay_open = compute_layout(CNN, ALL_SCOPES)
    assert len(lay.edges) < len(lay_open.edges)
    assert {e.count for e in lay.edges if lay.boxes[e.src].id == "conv1/" and lay.boxes[e.dst].id == "conv2/conv2d"} \
        == {1}


def test_layout_expanded_scope_is_a_group_around_its_members():
    lay = compute_layout(CNN, {"conv1"})
    group = lay.box("conv1/")
    assert group.kind == "group"
    for name in ("conv1/w", "conv1/b", "conv1/conv2d", "conv1/add", "conv1/relu"):
        assert lay.boxes[lay.box(name).parent] is group
    assert lay.box("conv2/").kind == "scope"
    assert lay.box("x").parent == -1


def test_layout_nested_scope_inside_collapsed_scope_stays_hidden():
    lay = compute_layout(CNN, {"Adam/conv1"})  # Adam itself is closed
    assert "Adam/" in lay.index and lay.box("Adam/").kind == "scope"
    assert not any(i.startswith("Adam/conv1") for i in lay.index)


def test_layout_parallel_edges_merged_with_count():
    nodes = [LayoutNode("a/x", out_label="(3,)"), LayoutNode("a/y", out_label="(3,)"),
             LayoutNode("b", ("a/x", "a/y"), out_label="(3,)")]
    lay = compute_layout(nodes, set())
    assert [(lay.boxes[e.src].id, lay.boxes[e.dst].id, e.count, e.label) for e in lay.edges] == [
        ("a/", "b", 2, "2 tensors")]
    lay = compute_layout(nodes, {"a"})
    assert sorted((lay.boxes[e.src].id, e.label) for e in lay.edges) == [("a/x", "(3,)"), ("a/y", "(3,)")]


def test_layout_cycle_between_scopes_marks_back_edge():
    # a/p -> q -> a/r: with scope a collapsed, a/ -> q -> a/ is a cycle of boxes.
    nodes = [LayoutNode("a/p"), LayoutNode("q", ("a/p",)), LayoutNode("a/r", ("q",))]
    lay = compute_layout(nodes, set())
    back = [e for e in lay.edges if e.is_back]
    assert len(back) == 1 and len(lay.edges) == 2
    _assert_downward(lay)
    _assert_no_overlap(lay)
    # Open, the group a/ still forms a cycle with q: groups are laid out as one box in their
    # parent (TensorBoard's way), so one edge stays a back edge, drawn as stubs.
    lay = compute_layout(nodes, {"a"})
    assert sum(e.is_back for e in lay.edges) == 1
    _assert_downward(lay)
    _assert_no_overlap(lay)


@pytest.mark.parametrize("expanded", [set(), {"A"}, {"A", "B"}], ids=["collapsed", "A-open", "both-open"])
def test_layout_scope_cycle_every_drawn_edge_goes_downward(expanded):
    # A/p -> B/q -> A/r -> B/s: collapsed, A/ -> B/ and B/ -> A/ (one pair, both ways).
    nodes = [LayoutNode("x"), LayoutNode("A/p", ("x",)), LayoutNode("B/q", ("A/p",)), LayoutNode("A/r", ("B/q",)),
             LayoutNode("B/s", ("A/r",)), LayoutNode("y", ("B/s",))]
    lay = compute_layout(nodes, expanded)
    pairs = {(lay.boxes[e.src].id, lay.boxes[e.dst].id): e for e in lay.edges}
    if not expanded:
        assert set(pairs) == {("x", "A/"), ("A/", "B/"), ("B/", "A/"), ("B/", "y")}
    back = [e for e in lay.edges if e.is_back]
    assert len(back) == 1  # the one edge closing the cycle is marked...
    stub_out, stub_in = back[0].polylines()  # ...and drawn as two stubs
    assert stub_out[0] == (lay.boxes[back[0].src].cx, lay.boxes[back[0].src].bottom)
    assert stub_in[-1] == (lay.boxes[back[0].dst].cx, lay.boxes[back[0].dst].y)
    _assert_downward(lay)  # every drawn line, forward edges and both stubs, goes downward
    _assert_no_overlap(lay)


def test_layout_control_edges_flagged():
    nodes = [LayoutNode("a"), LayoutNode("b", (), ("a",))]
    lay = compute_layout(nodes)
    assert [(e.is_control, lay.boxes[e.src].id, lay.boxes[e.dst].id) for e in lay.edges] == [(True, "a", "b")]
    _assert_downward(lay)


def test_layout_long_edges_get_dummy_points_between_layers():
    nodes = [LayoutNode("a"), LayoutNode("b", ("a",)), LayoutNode("c", ("b",)), LayoutNode("d", ("c", "a"))]
    lay = compute_layout(nodes)
    long_edge = next(e for e in lay.edges if lay.boxes[e.src].id == "a" and lay.boxes[e.dst].id == "d")
    assert len(long_edge.points) == 4  # through the layers of b and c
    _assert_downward(lay)
    _assert_no_overlap(lay)


def test_default_expanded_collapses_big_graphs_and_the_closed_scopes():
    names = [n.name for n in CNN]
    assert len(names) > COLLAPSE_ABOVE and default_expanded(names) == set()  # issue #14: the CNN opens closed
    assert default_expanded(names, collapse_above=len(names)) == ALL_SCOPES
    # gradients/ and Adam/ closed, the scopes inside them open once they are
    assert default_expanded(names, len(names), closed={"gradients", "Adam"}) == ALL_SCOPES - {"gradients", "Adam"}
    big = [f"s{i % 7}/n{i}" for i in range(COLLAPSE_ABOVE + 1)]
    assert default_expanded(big) == set()
    assert scope_chain("a/b/c") == ["a", "a/b"]


def test_layout_random_dag_2000_nodes_properties():
    import random

    rng = random.Random(3)
    nodes, names = [], []
    for i in range(2000):
        name = f"b{i // 100}/s{(i // 20) % 5}/n{i}"
        ins = tuple(rng.sample(names[max(0, i - 30):i], min(i, rng.choice([0, 1, 1, 2]))))
        nodes.append(LayoutNode(name, ins))
        names.append(name)
    scopes = set(scope_sizes(names))
    for expanded in (set(), {s for s in scopes if s.count("/") == 0}):
        lay = compute_layout(nodes, expanded)
        _assert_no_overlap(lay)
        _assert_downward(lay)
