"""Layered top-to-bottom layout of a graph with collapsible name scopes (igraph's Sugiyama).

Name scopes come from node names (``dense1/MatMul`` is in scope ``dense1``). A scope is
either *expanded*, drawn as a group box around its members, or *collapsed*, drawn as one
box standing for all of them. Each group is laid out on its own, innermost first (as
TensorBoard lays out its metanodes), by igraph's Sugiyama layout: layers, then crossing
reduction, then the layer order is placed left to right with the boxes' real widths.
An edge between two nodes is routed in the innermost group holding both, through the
dummy points igraph gives it, from the bottom of its source box to the top of its target
box, so it goes downward.

The graph itself has no cycle, but its boxes can: with scopes ``a`` and ``b`` collapsed,
``a/p -> b/q -> a/r`` draws ``a/ -> b/`` and ``b/ -> a/`` (the same for open groups, which are
laid out as one box in their parent). Such a cycle is broken by igraph's feedback arc set, and
each edge in it (a *back edge*) is drawn as two short downward stubs instead of a line going
up: one leaving the bottom of its source, one entering the top of its target (the front end
labels them with the other end). So every drawn line goes downward.

Ids: a node's id is its name, a scope's id is its path plus ``/`` (``dense1/``), so the two
never clash (node names never end with ``/``).

Contents: LayoutNode, Box, Edge, Layout, scope_of, scope_chain, scope_sizes,
default_expanded, compute_layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

NODE_H = 36.0
SCOPE_H = 42.0
GROUP_HEADER = 22.0
GROUP_PAD = 10.0
HGAP = 18.0
DUMMY_GAP = 8.0
VGAP = 34.0
STUB = 10.0  # the drop of each of the two stubs standing for a back edge (less than GROUP_PAD and MARGIN)
STUB_DX = 8.0
MARGIN = 12.0
CHAR_W = 6.6  # 11px sans-serif, average advance
DUMMY_BUDGET_PER_BOX = 6  # dummy points per box of a group, at most (plus DUMMY_BUDGET_MIN)
DUMMY_BUDGET_MIN = 2000
COLLAPSE_ABOVE = 60  # a graph with more nodes opens with its top-level scopes collapsed (readable at 100%)


@dataclass(frozen=True)
class LayoutNode:
    """What the layout needs to know of one graph node.

    Attributes:
        name: the node's name; ``/`` separates its scopes.
        inputs: names of the nodes it reads.
        control_inputs: names of the nodes it runs after.
        label: the second line of its box (the op name).
        out_label: the label of its outgoing edges (shape, dtype).
    """

    name: str
    inputs: tuple[str, ...] = ()
    control_inputs: tuple[str, ...] = ()
    label: str = ""
    out_label: str = ""


@dataclass
class Box:
    """One drawn box. ``kind``: ``"node"``, ``"scope"`` (collapsed) or ``"group"`` (expanded).

    ``x, y`` is the top-left corner; ``parent`` the index of the enclosing group box (-1: none).
    """

    id: str
    kind: str
    title: str
    subtitle: str
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    parent: int = -1
    members: int = 1

    @property
    def bottom(self) -> float:
        return self.y + self.h

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclass
class Edge:
    """One drawn edge between two boxes (parallel node edges merged, ``count`` of them).

    ``points`` is a polyline from the bottom of ``src`` to the top of ``dst``; for a back edge
    (``is_back``, one that closes a cycle of boxes) it is four points, two stubs: see `polylines`.
    """

    src: int
    dst: int
    points: list[tuple[float, float]]
    label: str
    count: int = 1
    is_control: bool = False
    is_back: bool = False

    def polylines(self) -> list[list[tuple[float, float]]]:
        """The lines drawn: ``[points]``, or for a back edge its out-stub and its in-stub."""
        return [self.points[:2], self.points[2:]] if self.is_back else [self.points]


@dataclass
class Layout:
    """Boxes (groups before their members) and edges, in pixels; ``index`` maps id -> box index."""

    boxes: list[Box]
    edges: list[Edge]
    width: float
    height: float
    index: dict[str, int] = field(default_factory=dict)

    def box(self, box_id: str) -> Box:
        return self.boxes[self.index[box_id]]


def scope_of(name: str) -> str:
    """``"a/b/c"`` -> ``"a/b"``; a top-level name -> ``""``."""
    return name.rpartition("/")[0]


def scope_chain(name: str) -> list[str]:
    """The scopes around ``name``, outermost first: ``"a/b/c"`` -> ``["a", "a/b"]``."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]


def scope_sizes(names: Iterable[str]) -> dict[str, int]:
    """Every scope and the number of nodes inside it (at any depth)."""
    sizes: dict[str, int] = {}
    for n in names:
        for s in scope_chain(n):
            sizes[s] = sizes.get(s, 0) + 1
    return sizes


def default_expanded(names: Sequence[str], collapse_above: int = COLLAPSE_ABOVE,
                     closed: Iterable[str] = ()) -> set[str]:
    """Scopes expanded when an inspector opens: none for a graph over ``collapse_above`` nodes
    (TensorBoard opens with its top-level scopes closed), else all but the ``closed`` ones
    (gradients, optimiser updates: one box each, their inner scopes open once they are)."""
    if len(names) > collapse_above:
        return set()
    return set(scope_sizes(names)) - set(closed)


def _text_w(*lines: str) -> float:
    return max(len(s) for s in lines) * CHAR_W + 16


def _node_box(n: LayoutNode) -> Box:
    title = n.name.rpartition("/")[2]
    w = min(max(_text_w(title, n.label), 64.0), 240.0)
    return Box(n.name, "node", title, n.label, w=w, h=NODE_H)


def _scope_box(scope: str, kind: str, members: int) -> Box:
    title = scope.rpartition("/")[2] + "/"
    subtitle = f"{members} node" + ("s" if members != 1 else "")
    w = min(max(_text_w(title, subtitle) + 10, 90.0), 260.0)
    return Box(scope + "/", kind, title, subtitle, w=w, h=SCOPE_H, members=members)


def _containers(item: str) -> list[str]:
    """Group ids enclosing a visible item, outermost first; ``""`` is the root."""
    base = item[:-1] if item.endswith("/") else item
    return [""] + [s + "/" for s in scope_chain(base)]


def _layers(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Longest-path layers, then sources (variables, constants) moved down next to their first reader."""
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for a, b in pairs:
        preds[b].append(a)
        succs[a].append(b)
    order, indeg = [], [len(p) for p in preds]
    ready = [i for i in range(n) if indeg[i] == 0]
    while ready:
        i = ready.pop()
        order.append(i)
        for j in succs[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    layer = [0] * n
    for i in order:
        for j in succs[i]:
            layer[j] = max(layer[j], layer[i] + 1)
    for i in range(n):
        if not preds[i] and succs[i]:
            layer[i] = min(layer[j] for j in succs[i]) - 1
    # igraph puts dummy points on the k-th non-empty layer: keep the layers contiguous.
    rank = {v: k for k, v in enumerate(sorted(set(layer)))}
    return [rank[v] for v in layer]


def _is_dag(n: int, pairs: list[tuple[int, int]]) -> bool:
    indeg = [0] * n
    succs: list[list[int]] = [[] for _ in range(n)]
    for a, b in pairs:
        succs[a].append(b)
        indeg[b] += 1
    ready = [i for i in range(n) if indeg[i] == 0]
    seen = 0
    while ready:
        i = ready.pop()
        seen += 1
        for j in succs[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                ready.append(j)
    return seen == n


class _Group:
    """One container being laid out: its children (box ids), its edges, then relative positions."""

    def __init__(self, gid: str):
        self.id = gid
        self.children: list[str] = []
        self.child_set: set[str] = set()
        self.pairs: dict[tuple[str, str], int] = {}  # (child, child) -> igraph edge id
        self.rel: dict[str, tuple[float, float]] = {}
        self.routes: list[list[tuple[float, float]]] = []
        self.pair_list: list[tuple[str, str]] = []
        self.reversed: set[int] = set()
        self.layer: dict[str, int] = {}
        self.w = 0.0
        self.h = 0.0

    def place(self, sizes: dict[str, tuple[float, float]]) -> None:
        """Lay the children out (igraph Sugiyama), filling ``rel``, ``routes``, ``layer``, ``w``, ``h``."""
        import igraph

        idx = {c: i for i, c in enumerate(self.children)}
        n = len(self.children)
        pairs = [(idx[a], idx[b]) for (a, b) in self.pairs]
        reversed_ids: set[int] = set()
        if not _is_dag(n, pairs):
            fas = igraph.Graph(n=n, edges=pairs, directed=True).feedback_arc_set(method="eades")
            reversed_ids = set(fas)
        oriented = [(b, a) if e in reversed_ids else (a, b) for e, (a, b) in enumerate(pairs)]
        layer_of = _layers(n, oriented)
        # Dummy vertices on every layer an edge crosses, added here rather than taken from
        # igraph's edge_routing, which igraph 1.0 hands back attached to the wrong edges.
        # The shortest edges get them first, within a budget: a deep chain of scopes all read
        # by one big scope (gradients/) would otherwise need layers x edges dummies. Edges past
        # the budget are drawn straight (still downward) and play no part in crossing reduction.
        ext_layers = list(layer_of)
        ext_edges: list[tuple[int, int]] = []
        chains: list[list[int]] = [[] for _ in oriented]
        budget = DUMMY_BUDGET_PER_BOX * n + DUMMY_BUDGET_MIN
        for e in sorted(range(len(oriented)), key=lambda e: layer_of[oriented[e][1]] - layer_of[oriented[e][0]]):
            if e in reversed_ids:  # drawn as two stubs: no route, no part in crossing reduction
                continue
            a, b = oriented[e]
            span = layer_of[b] - layer_of[a] - 1
            if span > budget:
                continue
            budget -= span
            chain = [a]
            for L in range(layer_of[a] + 1, layer_of[b]):
                ext_layers.append(L)
                chain.append(len(ext_layers) - 1)
            chain.append(b)
            ext_edges.extend(zip(chain, chain[1:]))
            chains[e] = chain[1:-1]
        lay = igraph.Graph(n=len(ext_layers), edges=ext_edges, directed=True).layout_sugiyama(
            layers=ext_layers, maxiter=30)
        order_x = [x for x, _ in lay.coords]  # igraph's crossing-reduced order within each layer
        self.reversed = reversed_ids
        widths = [sizes[c][0] for c in self.children] + [0.0] * (len(ext_layers) - n)
        heights_v = [sizes[c][1] for c in self.children] + [0.0] * (len(ext_layers) - n)
        rows: dict[int, list[int]] = {}
        for v, L in enumerate(ext_layers):
            rows.setdefault(L, []).append(v)
        for row in rows.values():
            row.sort(key=lambda v: order_x[v])
        centers = _place_x(rows, widths, ext_edges, n)
        top, heights, y = {}, {}, 0.0
        for L in sorted(rows):
            heights[L] = max(heights_v[v] for v in rows[L])
            top[L] = y
            y += heights[L] + VGAP
        self.h = max(y - VGAP, 0.0)
        left = min((centers[v] - widths[v] / 2 for v in range(len(centers))), default=0.0)
        for i, c in enumerate(self.children):
            L = ext_layers[i]
            x = centers[i] - widths[i] / 2 - left
            self.rel[c] = (x, top[L] + (heights[L] - heights_v[i]) / 2)
            self.layer[c] = L
            self.w = max(self.w, x + widths[i])
        self.routes = [[(centers[d] - left, top[ext_layers[d]] + heights[ext_layers[d]] / 2) for d in chain]
                       for chain in chains]
        self.pair_list = list(self.pairs)


def _place_x(rows: dict[int, list[int]], widths: list[float], edges: list[tuple[int, int]], n_real: int) -> list[float]:
    """x centers: each layer keeps igraph's order; a vertex goes near the mean of its neighbours.

    One pass down (towards predecessors) then one up (towards successors), each packing the
    layer left to right with the boxes' real widths, so boxes never overlap.
    """
    preds: list[list[int]] = [[] for _ in widths]
    succs: list[list[int]] = [[] for _ in widths]
    for a, b in edges:
        preds[b].append(a)
        succs[a].append(b)
    x = [0.0] * len(widths)

    def gap(u: int, v: int) -> float:
        return HGAP if u < n_real and v < n_real else DUMMY_GAP

    def sweep(row: list[int], want: list[float | None]) -> list[float]:
        """Left to right: each vertex at its wish or pushed right of the previous one."""
        out: list[float] = []
        for i, (v, c) in enumerate(zip(row, want)):
            if i == 0:
                out.append(widths[v] / 2 if c is None else c)
            else:
                u = row[i - 1]
                lo = out[-1] + widths[u] / 2 + gap(u, v) + widths[v] / 2
                out.append(lo if c is None else max(c, lo))
        return out

    def pack(row: list[int], want: list[float | None]) -> None:
        # The mean of a push-right and a push-left sweep keeps every gap (both do) and does
        # not drift to one side.
        right = sweep(row, want)
        left = [-c for c in sweep(row[::-1], [None if c is None else -c for c in want[::-1]])][::-1]
        if all(c is None for c in want):
            left = right
        for v, a, b in zip(row, right, left):
            x[v] = (a + b) / 2

    layers = sorted(rows)
    for L in layers:
        row = rows[L]
        pack(row, [sum(x[u] for u in preds[v]) / len(preds[v]) if preds[v] else None for v in row])
    for L in reversed(layers):
        row = rows[L]
        want = []
        for v in row:
            if succs[v]:
                s = sum(x[w] for w in succs[v]) / len(succs[v])
                want.append(s if not preds[v] else (s + x[v]) / 2)
            else:
                want.append(x[v])
        pack(row, want)
    return x


def compute_layout(nodes: Sequence[LayoutNode], expanded: Iterable[str] = ()) -> Layout:
    """Lay out ``nodes`` with the scopes in ``expanded`` drawn open and every other scope collapsed.

    Args:
        nodes: the graph's nodes, in creation order.
        expanded: scope paths (``"dense1"``, ``"gradients/dense1"``) to draw as open groups;
            a scope inside a collapsed one stays hidden whatever this says.

    Returns:
        A `Layout`: groups come before their members in ``boxes``.
    """
    rep = _representatives(nodes, set(expanded))
    groups, boxes = _groups_and_boxes(nodes, rep)
    drawn, routed = _route_edges(nodes, rep, groups)
    _size_groups(groups, boxes)
    order, index = _place(groups, boxes)
    edges = _edge_points(groups, boxes, drawn, routed, index)
    width = max((b.x + b.w for b in order), default=0.0) + MARGIN
    height = max((b.bottom for b in order), default=0.0) + MARGIN
    return Layout(order, edges, width, height, index)


def _representatives(nodes: Sequence[LayoutNode], expanded: set[str]) -> dict[str, str]:
    """Each node's visible item: itself, or ``"scope/"`` of its outermost collapsed scope."""
    rep: dict[str, str] = {}
    for n in nodes:
        r = n.name
        for s in scope_chain(n.name):
            if s not in expanded:
                r = s + "/"
                break
        rep[n.name] = r
    return rep


def _groups_and_boxes(nodes: Sequence[LayoutNode], rep: dict[str, str]) -> tuple[dict[str, _Group], dict[str, Box]]:
    """The open groups (``""``: the top level) with their children in order, and a box per visible item."""
    sizes_by_scope = scope_sizes(n.name for n in nodes)
    groups: dict[str, _Group] = {"": _Group("")}
    boxes: dict[str, Box] = {}
    for n in nodes:
        item = rep[n.name]
        if item in boxes:
            continue
        boxes[item] = _node_box(n) if item == n.name else _scope_box(item[:-1], "scope", sizes_by_scope[item[:-1]])
        chain = _containers(item)
        for parent, child in zip(chain, chain[1:] + [item]):
            if parent not in groups:
                groups[parent] = _Group(parent)
            grp = groups[parent]
            if child not in grp.child_set:
                if child != item:  # an expanded scope: a group box
                    boxes.setdefault(child, _scope_box(child[:-1], "group", sizes_by_scope[child[:-1]]))
                grp.children.append(child)
                grp.child_set.add(child)
    return groups, boxes


def _route_edges(nodes: Sequence[LayoutNode], rep: dict[str, str], groups: dict[str, _Group]
                 ) -> tuple[dict[tuple[str, str], Edge], list[tuple[str, int, tuple[str, str]]]]:
    """Node edges -> drawn edges between visible items (parallel ones merged), each routed in the
    innermost group that holds both ends: (drawn edges by item pair, [(group, group edge, drawn key)])."""
    by_name = {n.name: n for n in nodes}
    drawn: dict[tuple[str, str], Edge] = {}
    routed: list[tuple[str, int, tuple[str, str]]] = []
    for n in nodes:
        rv = rep[n.name]
        for names, is_control in ((n.inputs, False), (n.control_inputs, True)):
            for u in names:
                ru = rep.get(u)
                if ru is None or ru == rv:
                    continue
                key = (ru, rv)
                e = drawn.get(key)
                if e is not None:
                    e.count += 1
                    e.is_control = e.is_control and is_control
                    e.label = f"{e.count} tensors"
                    continue
                drawn[key] = Edge(-1, -1, [], by_name[u].out_label, is_control=is_control)
                cu, cv = _containers(ru), _containers(rv)
                depth = 0
                while depth + 1 < min(len(cu), len(cv)) and cu[depth + 1] == cv[depth + 1]:
                    depth += 1
                grp = groups[cu[depth]]
                a = cu[depth + 1] if len(cu) > depth + 1 else ru
                b = cv[depth + 1] if len(cv) > depth + 1 else rv
                pair_id = grp.pairs.setdefault((a, b), len(grp.pairs))
                routed.append((grp.id, pair_id, key))
    return drawn, routed


def _size_groups(groups: dict[str, _Group], boxes: dict[str, Box]) -> None:
    """Place each group's children inside it, innermost groups first (a group knows its size
    before its parent places it), and size the group boxes."""
    sizes: dict[str, tuple[float, float]] = {k: (b.w, b.h) for k, b in boxes.items() if b.kind != "group"}
    for gid in sorted(groups, key=lambda g: -g.count("/")):
        grp = groups[gid]
        grp.place(sizes)
        if gid:
            box = boxes[gid]
            box.w = max(grp.w + 2 * GROUP_PAD, _text_w(box.title + " " + box.subtitle))
            box.h = grp.h + GROUP_HEADER + 2 * GROUP_PAD
            sizes[gid] = (box.w, box.h)


def _place(groups: dict[str, _Group], boxes: dict[str, Box]) -> tuple[list[Box], dict[str, int]]:
    """Absolute positions, top-down: the boxes with each group before its members, and their indices."""
    order: list[Box] = []
    index: dict[str, int] = {}

    def emit(gid: str, ox: float, oy: float, parent: int) -> None:
        for c in groups[gid].children:
            box = boxes[c]
            rx, ry = groups[gid].rel[c]
            box.x, box.y, box.parent = ox + rx, oy + ry, parent
            index[c] = len(order)
            order.append(box)
            if box.kind == "group":
                emit(c, box.x + GROUP_PAD, box.y + GROUP_HEADER + GROUP_PAD, index[c])

    emit("", MARGIN, MARGIN, -1)
    return order, index


def _edge_points(groups: dict[str, _Group], boxes: dict[str, Box], drawn: dict[tuple[str, str], Edge],
                 routed: list[tuple[str, int, tuple[str, str]]], index: dict[str, int]) -> list[Edge]:
    """The drawn edges with their ends and polyline points in absolute coordinates."""
    offsets = {"": (MARGIN, MARGIN)}
    for gid in groups:
        if gid:
            b = boxes[gid]
            offsets[gid] = (b.x + GROUP_PAD, b.y + GROUP_HEADER + GROUP_PAD)
    edges = []
    for gid, pair_id, key in routed:
        grp = groups[gid]
        ox, oy = offsets[gid]
        e = drawn[key]
        su, sv = boxes[key[0]], boxes[key[1]]
        e.src, e.dst = index[key[0]], index[key[1]]
        e.is_back = pair_id in grp.reversed
        if e.is_back:  # two stubs, both downward: out of the source, into the target
            e.points = [(su.cx, su.bottom), (su.cx + STUB_DX, su.bottom + STUB),
                        (sv.cx - STUB_DX, sv.y - STUB), (sv.cx, sv.y)]
        else:
            e.points = [(su.cx, su.bottom), *[(ox + x, oy + y) for x, y in grp.routes[pair_id]], (sv.cx, sv.y)]
        edges.append(e)
    return edges
