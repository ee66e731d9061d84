"""`GraphInspector`: a notebook widget drawing a graph held by a runtime, TensorBoard style.

The picture is a layered top-to-bottom drawing (`kernelflow.widgets.layout`) with name
scopes as collapsible groups; a graph over 60 nodes opens with its top-level scopes collapsed,
a smaller one with only the gradient and optimiser scopes collapsed (one box each), and the
front end shows it at a zoom where every label is at least 10 px (TensorBoard's first view).
Edge labels go where they overlap nothing, the others show while the pointer is on their edge.
Search and "trace inputs" highlight boxes; a click on a node fills a details panel (op, attrs,
inputs/outputs, device, source line, the fused kernel it belongs to) and, for variables, a value summary
computed on the runtime by its ``tensor.summary`` method (`kernelflow.widgets.summary`): no
node is added to the graph, and the tensor itself is not transferred. The front end is a
small anywidget ES module shipped with the package (``static/inspector.js``): nothing is
fetched at run time.

It asks the runtime which nodes its compiler fuses into one kernel in a run of some fetches
(``g.fused_groups``) and outlines each fused group's boxes, and the edges inside it, in a colour of
its own; a closed scope holding members of fused groups carries a badge with their count and a strip
of their colours. Which fetches: ``plan=fetches`` (or `show_plan`), or by default (``plan="auto"``)
the step of the graph's training job (the running or paused one, else the newest), else this
client's last compiled run of the graph (``g.last_run``), else none. `plan_source` says which plan is shown.

Everything the front end can do has a Python twin (`click`, `expand`, `collapse`, `search`,
`trace_inputs`, `compute_summary`, `refresh`), which is how tests drive it.

Contents: GraphInspector, node_category, auxiliary_scopes.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import anywidget
import numpy as np
import traitlets

from ..errors import InvalidArgumentError, KernelflowError
from ..graph.ir import Graph, Tensor, Variable, toposort
from ..graph.shapes import format_shape
from ..graph.subgraph import flatten
from .layout import COLLAPSE_ABOVE, Layout, LayoutNode, compute_layout, default_expanded, scope_chain, scope_sizes
from .summary import summary_status, value_summary

_STATIC = pathlib.Path(__file__).parent / "static"
_KIND_CODES = {"node": 0, "scope": 1, "group": 2}
_OWN_CATEGORY = {"variable": "variable", "placeholder": "placeholder", "constant": "constant"}
_FAMILIES = ("elementwise", "reduce", "movement", "indexing", "linalg", "nn", "conv", "state", "random", "training")
_family_of: dict[str, str] = {}
_GRADIENT_SCOPE = re.compile(r"gradients(_\d+)?")
AUTO = "auto"  # plan=AUTO: the plan of the graph's training job, else of its last run (see GraphInspector)
_TRAINING = ("running", "paused")  # the job holding its graph's turn (one at a time; the others queue)
# outline colours of fused groups, group i gets FUSED_COLORS[i % 8]: Tableau 10 without its blue and
# red, which the front end uses for the selection and the search highlight
FUSED_COLORS = ("#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#9c755f", "#ff9da7", "#b6992d", "#79706e")


def node_category(op_name: str) -> str:
    """The colour class of an op: variable/placeholder/constant, else its op family (``"conv"``, ...)."""
    if op_name in _OWN_CATEGORY:
        return _OWN_CATEGORY[op_name]
    if not _family_of:
        import importlib

        from ..graph.registry import OpDef

        for fam in _FAMILIES:
            mod = importlib.import_module(f"..graph.ops.{fam}", __package__)
            for value in vars(mod).values():
                if isinstance(value, OpDef):
                    _family_of.setdefault(value.name, fam)
    return _family_of.get(op_name, "other")


def auxiliary_scopes(nodes: list[Tensor]) -> set[str]:
    """Top-level scopes that hold the training machinery rather than the model: ``gradients``
    (``gradients_1``, ...) and every scope with an optimiser update op (``Adam``, ``SGD``, ...).
    The inspector opens with each of them as one closed box."""
    out = set()
    for n in nodes:
        top, sep, _ = n.name.partition("/")
        if not sep:
            continue
        if _GRADIENT_SCOPE.fullmatch(top) or node_category(n.op.name) == "training":
            out.add(top)
    return out


def _edge_label(t: Tensor) -> str:
    if t.dtype is None:
        return ""
    return format_shape(t.shape) + ("" if t.dtype == "float32" else f" {t.dtype}")


def _is_auto(plan: Any) -> bool:
    return isinstance(plan, str) and plan == AUTO  # not `plan == AUTO`: a Tensor's == may build a node


def _fetch_names(fetches: Any) -> list[str]:
    """The node names in ``fetches`` (a tensor, a name, or a nest of them)."""
    return [f.name if isinstance(f, Tensor) else f if isinstance(f, str) else repr(f) for f in flatten(fetches)[0]]


def _run_text(fetches: list[str], feeds: list[str] | None) -> str:
    fed = "" if feeds is None else (" fed " + ", ".join(feeds) if feeds else ", nothing fed")
    return ", ".join(fetches) + fed


def _attr_text(v: Any) -> str:
    if isinstance(v, np.ndarray):
        if v.size <= 8:
            return f"{v.dtype.name}{format_shape(v.shape)} {np.array2string(v, threshold=8, precision=4)}"
        return f"{v.dtype.name} array {format_shape(v.shape)}"
    text = repr(v)
    return text if len(text) <= 120 else text[:117] + "..."


class GraphInspector(anywidget.AnyWidget):
    """A widget drawing graph ``g`` as its runtime holds it.

    Args:
        graph: a graph (``rt.graph(name)``; a plain `kernelflow.Graph` works without value summaries).
        expanded: scopes to open (default: none for a graph over ``collapse_above`` nodes, else all but
            the gradient and optimiser scopes).
        collapse_above: node count above which the graph opens with its top-level scopes collapsed.
        plan: fetches (a tensor, a name, or a list of them) whose compiled plan to show: the nodes
            the runtime's compiler fuses into one kernel in a run of them are outlined, one colour per
            kernel (needs a graph held by a runtime; see `show_plan`). ``"auto"`` (the default): the
            step of the graph's training job (``g.jobs()``: the running or paused one, else the newest;
            its train op fed what the job feeds), else this client's last compiled run of the graph
            (``g.last_run``), else none; picked again by `refresh`. None: no plan. (For a node
            named ``auto``, pass the tensor.)
        feeds: the tensors that run feeds (default: every placeholder ``plan`` needs; not used
            with ``"auto"``).

    Example:
        >>> w = kf.widgets.GraphInspector(g)   # or %kf inspect NAME
        >>> w.click("conv1/")                  # expand the conv1 scope
        >>> w.click("conv1/w")["summary"]["mean"]
        >>> kf.widgets.GraphInspector(g, plan=train_op).fused[0]["ops"]   # ['add', 'relu']
        >>> g.fit(train_op, ...); GraphInspector(g).plan_source   # "fused kernels of job 'j1' (running), ..."

    .. versionchanged:: issue #16
        ``plan`` defaults to ``"auto"`` (it was None, which still means no plan).
    """

    _esm = _STATIC / "inspector.js"
    _css = _STATIC / "inspector.css"

    graph_name = traitlets.Unicode("", help="name of the inspected graph").tag(sync=True)
    meta = traitlets.Dict(help="per box and per edge strings (ids, labels, kinds, categories, devices) "
                               "and the drawing's size").tag(sync=True)
    boxes = traitlets.Bytes(b"", help="float32 (x, y, w, h) per box, in layout order").tag(sync=True)
    box_parents = traitlets.Bytes(b"", help="int32 index of each box's enclosing group (-1: none)").tag(sync=True)
    edge_ends = traitlets.Bytes(b"", help="int32 (source box, target box) per edge").tag(sync=True)
    edge_offsets = traitlets.Bytes(b"", help="int32 start of each edge's points in edge_points, plus the end")\
        .tag(sync=True)
    edge_points = traitlets.Bytes(b"", help="float32 (x, y) polyline points of all edges").tag(sync=True)
    box_fused = traitlets.Bytes(b"", help="int32 per box: index of the fused group (in meta['fused']) the node "
                                          "belongs to, -1 for none and for scopes").tag(sync=True)
    edge_flags = traitlets.Bytes(b"", help="uint8 per edge: 1 back edge (two stubs: points 0-1 and 2-3), "
                                       "2 control dependency")\
        .tag(sync=True)
    expanded = traitlets.List(traitlets.Unicode(), help="scopes drawn open").tag(sync=True)
    selected = traitlets.Unicode("", help="id of the selected box ('' for none)").tag(sync=True)
    details = traitlets.Dict(help="the details panel of the selected box").tag(sync=True)
    highlight = traitlets.List(traitlets.Unicode(), help="ids of highlighted boxes (search, trace)").tag(sync=True)
    query = traitlets.Unicode("", help="search text; matching nodes and scopes are highlighted").tag(sync=True)
    color_by = traitlets.Unicode("op", help="box colours: 'op' (op family) or 'device'").tag(sync=True)
    status = traitlets.Unicode("", help="a one-line message (errors, what a click did)").tag(sync=True)
    plan_source = traitlets.Unicode("", help="which plan's fused groups are outlined, e.g. \"fused kernels of "
                                             "job 'digits' (running), one step: Adam/train fed x, y\"; '' for "
                                             "no plan").tag(sync=True)

    def __init__(self, graph: Graph, expanded: Any = None, collapse_above: int = COLLAPSE_ABOVE,
                 plan: Any = AUTO, feeds: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(graph, Graph):
            raise TypeError(f"GraphInspector: expected a kernelflow graph; got {type(graph).__name__}")
        self.graph = graph
        self.graph_name = graph.name
        self._collapse_above = collapse_above
        self._initial_expanded = None if expanded is None else {s.rstrip("/") for s in expanded}
        self.graph_layout: Layout | None = None
        self._nodes: list[Tensor] = []
        self._consumers: dict[str, list[str]] = {}
        self._scope_sizes: dict[str, int] = {}
        self._feed: dict | None = None
        self._trace: list[str] | None = None  # names highlighted by trace_inputs (None: the search's)
        self._plan: tuple[Any, Any] | None = None
        self._plan_text = ""                    # what the plan is, for plan_source
        self._auto = _is_auto(plan)             # pick the plan again at each refresh
        self.fused: list[dict] = []             # the compiler's fused groups of the plan shown
        self._fused_of: dict[str, int] = {}     # node name -> index in `fused`
        if plan is not None and not self._auto:
            if not hasattr(graph, "fused_groups"):
                raise InvalidArgumentError(f"GraphInspector: plan= needs a graph held by a runtime "
                                           f"(rt.graph('{graph.name}')); '{graph.name}' is a local kf.Graph")
            self._set_plan(plan, feeds)
        self.on_msg(self._on_front_end_msg)
        self.observe(self._on_query, names=["query"])
        self.refresh()

    # ----------------------------------------------------------------- data
    def refresh(self) -> None:
        """Re-read the graph from its runtime (nodes added by other clients included) and redraw."""
        try:
            if hasattr(self.graph, "pull"):  # a RemoteGraph: take in what other clients added
                self.graph.pull()
            self.status = ""
        except KernelflowError as e:
            self.status = f"showing the local graph; the runtime could not be read: {e}"
        self._nodes = list(self.graph.nodes())
        self._load_plan(raise_errors=self.graph_layout is None)  # a bad plan= fails the constructor
        self._consumers = {}
        for n in self._nodes:
            for i in (*n.inputs, *n.control_inputs):
                self._consumers.setdefault(i.name, []).append(n.name)
        known = set(self._scope_sizes)
        self._scope_sizes = scope_sizes(n.name for n in self._nodes)
        if self._initial_expanded is not None:
            exp = self._initial_expanded & set(self._scope_sizes)
            self._initial_expanded = None
        elif self.graph_layout is None:
            exp = default_expanded([n.name for n in self._nodes], self._collapse_above, auxiliary_scopes(self._nodes))
        else:  # scopes new since the last refresh open as they would in a fresh inspector
            new = default_expanded([n.name for n in self._nodes], self._collapse_above,
                                   auxiliary_scopes(self._nodes)) - known
            exp = (set(self.expanded) | new) & set(self._scope_sizes)
        self._relayout(exp)
        if self.selected and self.selected not in self.graph_layout.index:  # type: ignore[union-attr]
            self.selected, self.details = "", {}

    def show_plan(self, fetches: Any, feeds: Any = None) -> list[dict]:
        """Outline what the runtime's compiler fuses into one kernel in a run of ``fetches``.

        Args:
            fetches: a tensor, a node name or a list of them; None clears the marking; ``"auto"``
                picks the plan as the constructor's default does (a training job's step, else the
                last run, else none).
            feeds: the tensors the run feeds (default: every placeholder ``fetches`` need).

        Returns:
            The fused groups (`fused`): ``[{"name", "members", "ops", "color"}]``, in plan order.

        Raises:
            InvalidArgumentError: a local graph (no runtime, no compiler), or fetches the runtime
                cannot plan (a placeholder left unfed, named).
        """
        auto = _is_auto(fetches)
        if fetches is not None and not auto and not hasattr(self.graph, "fused_groups"):
            raise InvalidArgumentError(f"GraphInspector.show_plan: graph '{self.graph.name}' is a local "
                                       "kf.Graph; fused groups come from a runtime's compiler")
        old = self._plan, self._plan_text, self._auto
        self._auto = auto
        if auto or fetches is None:
            self._plan, self._plan_text = None, ""
        else:
            self._set_plan(fetches, feeds)
        try:
            self._load_plan(raise_errors=True)
        except KernelflowError:
            self._plan, self._plan_text, self._auto = old  # the marking on show stays what it was
            self._load_plan()
            raise
        self._relayout(set(self.expanded))
        return self.fused

    def _set_plan(self, fetches: Any, feeds: Any) -> None:
        self._plan = (fetches, feeds)
        fed = None if feeds is None else _fetch_names(list(feeds))
        self._plan_text = f"a run of {_run_text(_fetch_names(fetches), fed)}"

    def _pick_plan(self) -> None:
        """``plan="auto"``: the step of the graph's training job (the running or paused one, else the
        newest, queued or ended) whose train op and fed placeholders the graph holds, else this client's
        last compiled run."""
        self._plan, self._plan_text = None, ""
        g = self.graph
        if not hasattr(g, "fused_groups"):
            return  # a local kf.Graph: no compiler, nothing to pick
        names = {n.name for n in self._nodes}
        try:
            jobs = [j.last_status for j in g.jobs()] if hasattr(g, "jobs") else []
        except KernelflowError as e:
            self.status = f"the graph's jobs could not be listed: {e}"
            jobs = []
        usable = [st for st in jobs if st.get("train_op") in names and set(st.get("feed") or {}) <= names]
        training = [st for st in usable if st.get("status") in _TRAINING]
        if usable:
            st = (training or usable)[-1]  # job.list is oldest first
            feeds = list(st.get("feed") or {})
            self._plan = (st["train_op"], feeds)
            self._plan_text = (f"job '{st.get('name') or st.get('id')}' ({st.get('status')}), one step: "
                               f"{_run_text([st['train_op']], feeds)}")
            return
        last = getattr(g, "last_run", None)
        if last and set(last["fetches"]) | set(last["feeds"]) <= names:
            self._plan = (last["fetches"], last["feeds"])
            self._plan_text = f"the last g.run: {_run_text(last['fetches'], last['feeds'])}"

    def _load_plan(self, raise_errors: bool = False) -> None:
        """Read the fused groups of the plan (picking it first with ``plan="auto"``); a bad explicit
        plan raises with ``raise_errors``, anything else that fails goes to `status`."""
        self.fused, self._fused_of = [], {}
        if self._auto:
            self._pick_plan()
        if self._plan is None:
            self.plan_source = (f"no plan: graph '{self.graph.name}' has no training job and no run from this "
                                "client yet (show_plan(fetches) shows one)"
                                if self._auto and hasattr(self.graph, "fused_groups") else "")
            return
        try:
            groups = self.graph.fused_groups(*self._plan)  # type: ignore[attr-defined]
        except KernelflowError as e:
            if raise_errors and not self._auto:
                raise
            self.status = f"the compiled plan could not be read: {e}"
            self.plan_source = f"fused kernels of {self._plan_text}: unknown (see the status line)"
            return
        known = {n.name for n in self._nodes}
        for i, grp in enumerate(groups):
            self.fused.append({**grp, "color": FUSED_COLORS[i % len(FUSED_COLORS)]})
            for m in grp["members"]:
                if m in known:
                    self._fused_of[m] = i
        count = f"{len(groups)} fused kernel{'' if len(groups) == 1 else 's'}" if groups else "nothing fused"
        self.plan_source = f"fused kernels of {self._plan_text} ({count})"

    def _scope_fused(self, expanded: set[str]) -> dict[str, list[int]]:
        """Closed scope box -> indices (in `fused`) of the groups with a member inside it, in plan order."""
        out: dict[str, set[int]] = {}
        for m, i in self._fused_of.items():
            box = self._box_of(m, expanded)
            if box.endswith("/"):
                out.setdefault(box, set()).add(i)
        return {k: sorted(v) for k, v in out.items()}

    def _layout_nodes(self) -> list[LayoutNode]:
        return [LayoutNode(n.name, tuple(i.name for i in n.inputs), tuple(c.name for c in n.control_inputs),
                           n.op.name, _edge_label(n)) for n in self._nodes]

    def _relayout(self, expanded: set[str]) -> None:
        lay = compute_layout(self._layout_nodes(), expanded)
        self.graph_layout = lay
        by_name = {n.name: n for n in self._nodes}
        cats, devices = [], []
        for b in lay.boxes:
            n = by_name.get(b.id)
            cats.append(node_category(n.op.name) if n is not None else "scope")
            devices.append((n.device or "default") if n is not None else "")
        xywh = np.array([(b.x, b.y, b.w, b.h) for b in lay.boxes], np.float32).reshape(-1, 4)
        offsets = np.zeros(len(lay.edges) + 1, np.int32)
        np.cumsum([len(e.points) for e in lay.edges], out=offsets[1:])
        points = np.array([p for e in lay.edges for p in e.points], np.float32).reshape(-1, 2)
        scope_fused = self._scope_fused(expanded)
        with self.hold_sync():
            self.expanded = sorted(expanded)
            self.meta = {
                "ids": [b.id for b in lay.boxes], "kinds": [b.kind for b in lay.boxes],
                "titles": [b.title for b in lay.boxes], "subtitles": [b.subtitle for b in lay.boxes],
                "categories": cats, "devices": devices, "edge_labels": [e.label for e in lay.edges],
                "width": lay.width, "height": lay.height, "nodes": len(self._nodes),
                "scopes": len(self._scope_sizes),
                "fused": [{"name": f["name"], "ops": " ".join(f["ops"]), "members": len(f["members"]),
                           "color": f["color"]} for f in self.fused],
                "scope_fused": scope_fused,
            }
            self.box_fused = np.array([self._fused_of.get(b.id, -1) if b.kind == "node" else -1
                                       for b in lay.boxes], np.int32).tobytes()
            self.boxes = xywh.tobytes()
            self.box_parents = np.array([b.parent for b in lay.boxes], np.int32).tobytes()
            self.edge_ends = np.array([(e.src, e.dst) for e in lay.edges], np.int32).reshape(-1, 2).tobytes()
            self.edge_offsets = offsets.tobytes()
            self.edge_points = points.tobytes()
            self.edge_flags = np.array([int(e.is_back) | (2 * int(e.is_control)) for e in lay.edges],
                                       np.uint8).tobytes()
            self._update_highlight()

    # ----------------------------------------------------------------- scopes
    def expand(self, scope: str) -> None:
        """Open ``scope`` (``"conv1"`` or ``"conv1/"``), and the scopes around it."""
        scope = self._check_scope(scope)
        self._relayout(set(self.expanded) | {scope} | set(scope_chain(scope + "/x")))

    def collapse(self, scope: str) -> None:
        """Close ``scope``: one box stands for all its members."""
        scope = self._check_scope(scope)
        self._relayout(set(self.expanded) - {scope})

    def expand_all(self) -> None:
        """Open every scope (slow to draw for graphs of many thousand nodes)."""
        self._relayout(set(self._scope_sizes))

    def collapse_all(self) -> None:
        """Close every scope."""
        self._relayout(set())

    def _check_scope(self, scope: str) -> str:
        s = scope.rstrip("/")
        if s not in self._scope_sizes:
            raise KeyError(f"GraphInspector: graph '{self.graph.name}' has no scope '{s}'")
        return s

    # ----------------------------------------------------------------- clicks
    def click(self, box_id: str) -> dict:
        """What a click on a box does: a scope toggles open/closed, a node is selected.

        Args:
            box_id: a node name (``"conv1/w"``) or a scope with a trailing slash (``"conv1/"``).

        Returns:
            The details panel's content (`details`).
        """
        if box_id.endswith("/"):
            s = self._check_scope(box_id)
            if s in self.expanded:
                self.collapse(s)
            else:
                self.expand(s)
            return self._select(box_id)
        return self.select(box_id)

    def select(self, name: str, summary: bool | None = None, feed: dict | None = None) -> dict:
        """Select node ``name`` and fill the details panel.

        Args:
            name: the node.
            summary: compute the value summary on the runtime (default: for variables only).
            feed: feeds for a summary of a tensor that depends on placeholders.
        """
        t = self.graph[name]
        self._feed = feed
        details = self._select(name)
        if summary or (summary is None and isinstance(t, Variable)):
            details = self.compute_summary(feed)
        return details

    def _select(self, box_id: str) -> dict:
        self.selected = box_id
        self.details = self._scope_details(box_id[:-1]) if box_id.endswith("/") else self._node_details(box_id)
        return self.details

    def compute_summary(self, feed: dict | None = None) -> dict:
        """Compute the selected node's value summary on the runtime; returns the updated details."""
        name = self.selected
        if not name or name.endswith("/"):
            raise KeyError("GraphInspector: select a node first")
        details = dict(self.details)
        try:
            details["summary"] = value_summary(self.graph[name], feed=feed if feed is not None else self._feed)
            details["summary_error"] = ""
        except KernelflowError as e:
            details["summary"], details["summary_error"] = None, str(e)
        self.details = details
        return details

    def _node_details(self, name: str) -> dict:
        t = self.graph[name]
        status = summary_status(t)
        d: dict[str, Any] = {
            "id": name, "kind": "node", "name": name, "op": t.op.name, "doc": t.op.doc,
            "category": node_category(t.op.name), "shape": format_shape(t.shape), "dtype": t.dtype or "",
            "device": t.device or "default", "source": t.source or "",
            "attrs": {k: _attr_text(v) for k, v in t.attrs.items()},
            "inputs": [{"name": i.name, "shape": format_shape(i.shape), "dtype": i.dtype or ""} for i in t.inputs],
            "control_inputs": [c.name for c in t.control_inputs],
            "outputs": [{"name": c, "op": self.graph[c].op.name} for c in self._consumers.get(name, [])],
            "is_variable": isinstance(t, Variable), "summary": None, "summary_error": "", **status,
            "fused": self._fused_entry(self._fused_of[name]) if name in self._fused_of else None,
        }
        if isinstance(t, Variable):
            d["params"] = int(np.prod(t.shape, dtype=np.int64))
            d["trainable"] = t.trainable
        return d

    def _scope_details(self, scope: str) -> dict:
        members = [n for n in self._nodes if n.name.startswith(scope + "/")]
        ops: dict[str, int] = {}
        for n in members:
            ops[n.op.name] = ops.get(n.op.name, 0) + 1
        variables = [{"name": v.name, "shape": format_shape(v.shape), "dtype": v.dtype or "",
                      "params": int(np.prod(v.shape, dtype=np.int64))} for v in members if isinstance(v, Variable)]
        return {"id": scope + "/", "kind": "scope", "name": scope, "members": len(members),
                "expanded": scope in self.expanded,
                "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])), "variables": variables,
                "params": sum(v["params"] for v in variables),
                "fused": [self._fused_entry(i) for i in sorted({self._fused_of[n.name] for n in members
                                                                if n.name in self._fused_of})]}

    def _fused_entry(self, i: int) -> dict:
        f = self.fused[i]
        return {"index": i, "name": f["name"], "members": list(f["members"]), "ops": list(f["ops"]),
                "color": f["color"]}

    # ----------------------------------------------------------------- highlighting
    def _box_of(self, name: str, expanded: set[str] | None = None) -> str:
        """The visible box standing for node ``name`` (itself, or its outermost collapsed scope)."""
        expanded = set(self.expanded) if expanded is None else expanded
        for s in scope_chain(name):
            if s not in expanded:
                return s + "/"
        return name

    def search(self, text: str) -> list[str]:
        """Highlight nodes whose name or op contains ``text`` (case-insensitive); returns their names."""
        self._trace = None
        self.query = text
        self._update_highlight()
        return self._matches(text)

    def _matches(self, text: str) -> list[str]:
        q = text.strip().lower()
        if not q:
            return []
        return [n.name for n in self._nodes if q in n.name.lower() or q in n.op.name.lower()]

    def _on_query(self, change: dict) -> None:
        self._trace = None
        self._update_highlight()

    def trace_inputs(self, name: str) -> list[str]:
        """Highlight everything node ``name`` depends on (data and control inputs); returns those names."""
        t = self.graph[name]
        names = [n.name for n in toposort([t])]
        self._trace = names
        self._update_highlight()
        return names

    def _update_highlight(self) -> None:
        names = self._trace
        if names is None:
            names = self._matches(self.query)
            q = self.query.strip().lower()
            scopes = [s + "/" for s in self._scope_sizes if q and q in s.lower()]
        else:
            scopes = []
        ids = dict.fromkeys([self._box_of(n) for n in names] + [s for s in scopes if self._is_visible(s)])
        self.highlight = list(ids)

    def _is_visible(self, box_id: str) -> bool:
        return self.graph_layout is not None and box_id in self.graph_layout.index

    # ----------------------------------------------------------------- front end
    def _on_front_end_msg(self, widget: Any, content: Any, buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        kind, box_id = content.get("type"), content.get("id", "")
        try:
            if kind == "click" and isinstance(box_id, str):
                self.click(box_id)
            elif kind == "summary":
                self.compute_summary()
            elif kind == "trace" and isinstance(box_id, str):
                self.trace_inputs(box_id)
            elif kind == "clear":
                self._trace = None
                self.query = ""
                self._update_highlight()
            elif kind == "refresh":
                self.refresh()
            elif kind == "collapse_all":
                self.collapse_all()
            elif kind == "expand_all":
                self.expand_all()
        except (KernelflowError, KeyError) as e:
            self.status = f"{type(e).__name__}: {e}"
