"""Sub-graphs of control-flow ops: Python functions traced into graphs, captures, nests.

A control-flow node (cond, while_loop, scan) holds its branches and bodies as `Subgraph`
attrs: a plain graph whose inputs are placeholders and whose outputs are nodes. Outer
tensors a function uses (closures, variables) are *captured*: the traced graph gets a
placeholder for each, and the outer tensor becomes an explicit input of the control-flow
node, so sub-graphs are closed functions that serialise with the node and get gradients
like any other input.

Contents: Subgraph, TraceGraph, flatten, unflatten, same_structure, trace, inline, parent_graph.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from .ir import Aval, Graph, Tensor, _is_ancestor
from .registry import OpDef
from .shapes import format_shape


# --------------------------------------------------------------------------- nests
def flatten(x: Any) -> tuple[list[Any], Any]:
    """Leaves of a nest of tuples, lists, dicts and namedtuples (None is an empty nest), and its tree."""
    leaves: list[Any] = []

    def walk(v: Any) -> Any:
        if v is None:
            return ("none",)
        if isinstance(v, tuple) and hasattr(v, "_fields"):
            return ("namedtuple", type(v), tuple(walk(c) for c in v))
        if isinstance(v, (tuple, list)):
            return (type(v).__name__, None, tuple(walk(c) for c in v))
        if isinstance(v, dict):
            keys = sorted(v)
            return ("dict", tuple(keys), tuple(walk(v[k]) for k in keys))
        leaves.append(v)
        return ("leaf",)

    return leaves, walk(x)


def unflatten(tree: Any, leaves: Sequence[Any]) -> Any:
    """The nest of ``tree`` (from `flatten`) with ``leaves`` in place of its leaves."""
    it = iter(leaves)

    def build(t: Any) -> Any:
        kind = t[0]
        if kind == "leaf":
            return next(it)
        if kind == "none":
            return None
        children = [build(c) for c in t[2]]
        if kind == "namedtuple":
            return t[1](*children)
        if kind == "dict":
            return dict(zip(t[1], children))
        return tuple(children) if kind == "tuple" else children

    return build(tree)


def _shape_of(t: Any) -> Any:
    """``tree`` with list/tuple unified (TF compares loop structures without their sequence types)."""
    kind = t[0]
    if kind in ("leaf", "none"):
        return kind
    if kind in ("tuple", "list", "namedtuple"):
        return ("seq", tuple(_shape_of(c) for c in t[2]))
    return ("dict", t[1], tuple(_shape_of(c) for c in t[2]))


def same_structure(a: Any, b: Any) -> bool:
    """True when two trees have the same nesting (lists and tuples count as the same)."""
    return _shape_of(a) == _shape_of(b)


def tree_str(tree: Any) -> str:
    """A short picture of a tree for error messages: ``(x, [x, x], {'h': x})``."""
    kind = tree[0]
    if kind == "leaf":
        return "x"
    if kind == "none":
        return "None"
    inner = [tree_str(c) for c in tree[2]]
    if kind == "dict":
        return "{" + ", ".join(f"{k!r}: {v}" for k, v in zip(tree[1], inner)) + "}"
    if kind == "list":
        return "[" + ", ".join(inner) + "]"
    return "(" + ", ".join(inner) + ("," if len(inner) == 1 else "") + ")"


# --------------------------------------------------------------------------- sub-graphs
class Subgraph:
    """A traced function: a graph, its input placeholders and its output nodes.

    Its wire form (inside a node's attrs) is ``{"nodes": [node dicts], "inputs": [names],
    "outputs": [names]}``; the server validates it like any graph extension.
    """

    __slots__ = ("graph", "inputs", "outputs")

    def __init__(self, graph: Graph, inputs: Sequence[Tensor], outputs: Sequence[Tensor]):
        self.graph = graph
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)

    def __repr__(self) -> str:
        return (f"<kf.Subgraph '{self.graph.name}' nodes={len(self.graph)} in={len(self.inputs)} "
                f"out={len(self.outputs)}>")

    @property
    def in_avals(self) -> tuple[Aval, ...]:
        return tuple(t.aval for t in self.inputs)

    @property
    def out_avals(self) -> tuple[Aval, ...]:
        return tuple(t.aval for t in self.outputs)

    def to_dict(self) -> dict:
        """The wire/disk form."""
        return {"nodes": self.graph.to_dicts(), "inputs": [t.name for t in self.inputs],
                "outputs": [t.name for t in self.outputs]}

    @classmethod
    def from_dict(cls, d: dict, node: str = "") -> Subgraph:
        """Rebuild and validate a sub-graph from its wire form.

        Raises:
            InvalidArgumentError: naming ``node`` for a malformed map, a bad node, an input that
                is not a placeholder, a placeholder that is not an input, or a variable or
                variable-updating op inside the sub-graph.
        """
        from .ops.state import placeholder_op, read_variable_op, variable_op

        if set(d) != {"nodes", "inputs", "outputs"}:
            raise InvalidArgumentError(f"graph.extend: node '{node}': a map-valued attr must be a sub-graph "
                                       f"{{nodes, inputs, outputs}}; got keys {sorted(map(str, d))}", node=node)
        nodes, ins, outs = d["nodes"], d["inputs"], d["outputs"]
        if not all(isinstance(x, (list, tuple)) for x in (nodes, ins, outs)):
            raise InvalidArgumentError(f"graph.extend: node '{node}': sub-graph nodes/inputs/outputs must be lists",
                                       node=node)
        g = Graph(f"{node}/sub")
        g.extend_from_dicts(nodes)
        for n in g.nodes():
            if n.op is variable_op or n.op is read_variable_op or n.op.mutates:
                raise InvalidArgumentError(f"graph.extend: node '{node}': op {n.op.name} ('{n.name}') is not allowed "
                                           "inside a control-flow sub-graph (variables are captured as inputs)",
                                           node=node)

        def ref(name: Any) -> Tensor:
            if not isinstance(name, str) or name not in g:
                raise InvalidArgumentError(f"graph.extend: node '{node}': sub-graph refers to unknown node {name!r}",
                                           node=node)
            return g[name]

        inputs = [ref(n) for n in ins]
        outputs = [ref(n) for n in outs]
        placeholders = {id(n) for n in g.nodes() if n.op is placeholder_op}
        if {id(t) for t in inputs} != placeholders or len(set(map(id, inputs))) != len(inputs):
            raise InvalidArgumentError(f"graph.extend: node '{node}': sub-graph inputs must be exactly its "
                                       f"placeholders, each once; got {list(ins)}", node=node)
        return cls(g, inputs, outputs)


_TRACING = threading.local()


def _stack() -> list[TraceGraph]:
    s = getattr(_TRACING, "stack", None)
    if s is None:
        s = _TRACING.stack = []
    return s


class TraceGraph(Graph):
    """The graph a control-flow function is traced into; captures tensors of enclosing graphs.

    Args:
        parent: the graph the control-flow node goes into (maybe itself a TraceGraph).
        what: what is traced, for messages (``"while_loop body"``).
    """

    def __init__(self, parent: Graph, what: str):
        super().__init__(what.replace(" ", "_"), seed=parent.seed)
        self.parent = parent
        self.what = what
        self.captures: dict[int, tuple[Tensor, Tensor]] = {}  # id(tensor of parent) -> (it, placeholder)
        self.closed = False

    def root(self) -> Graph:
        g: Graph = self
        while isinstance(g, TraceGraph):
            g = g.parent
        return g

    def captured(self) -> list[Tensor]:
        """The parent-graph tensors captured so far, in capture order."""
        return [outer for outer, _ in self.captures.values()]

    def capture(self, t: Tensor) -> Tensor:
        """The placeholder standing for enclosing-graph tensor ``t`` (made on first use)."""
        if t.graph is self:
            return t
        if not _is_ancestor(t.graph, self):
            raise InvalidArgumentError(
                f"{self.what}: tensor '{t.name}' belongs to graph '{t.graph.name}', which does not enclose this "
                "function (a tensor made inside another control-flow function cannot be used here)")
        outer = t if t.graph is self.parent else self.parent.capture(t)  # type: ignore[attr-defined]
        hit = self.captures.get(id(outer))
        if hit is not None:
            return hit[1]
        from .ops.state import placeholder_op

        if outer.aval.parts is not None or outer.dtype is None:
            raise InvalidArgumentError(f"{self.what}: cannot capture '{outer.name}' ({outer.op.name}): it has no "
                                       "single value")
        ph = Graph.add_node(self, placeholder_op, (), {"shape": outer.shape, "dtype": outer.dtype},
                            "captured/" + outer.name.replace("/", "_"), source=outer.source)
        self.captures[id(outer)] = (outer, ph)
        return ph

    def variable(self, initial: Any, name: str | None = None, trainable: bool = True, dtype: Any = None) -> Any:
        """A variable of the root graph (a layer built on its first call inside a loop body)."""
        full = "/".join(self._scope + [name or "Variable"])
        return self.root().variable(initial, name=full, trainable=trainable, dtype=dtype)

    def add_node(self, op: OpDef, inputs: Sequence[Tensor], attrs: dict[str, Any], name: str | None = None,
                 *, control_inputs: Sequence[Tensor] = (), device: str | None = None,
                 source: str | None = None, exact_name: bool = False) -> Tensor:
        from .ops.state import read_variable_op, variable_op

        if self.closed:
            raise InvalidArgumentError(
                f"{op.name}: a tensor made inside a {self.what} cannot be used outside it; return it from the "
                "function instead")
        if op is variable_op:
            # Variables live in the root graph (a layer built on its first call inside a loop body).
            root = self.root()
            full = "/".join(self._scope + [name or "Variable"])
            return self.capture(root.add_node(op, inputs, attrs, full, device=device, source=source))
        if op.mutates or op is read_variable_op:
            raise InvalidArgumentError(
                f"{self.what}: op {op.name} cannot run inside a control-flow function (it updates or reads "
                "variable storage); read variables by using them, and update them outside the loop")
        inputs = [self.capture(t) if t.graph is not self else t for t in inputs]
        control_inputs = [c for c in control_inputs if c.graph is self]
        return super().add_node(op, inputs, attrs, name, control_inputs=control_inputs, device=device,
                                source=source, exact_name=exact_name)


def parent_graph(values: Sequence[Any], what: str) -> Graph:
    """The graph a control-flow node over ``values`` goes into: the innermost function being traced
    (when it encloses the values' graph), else the values' graph.

    Raises:
        InvalidArgumentError: when there is neither a tensor nor a function being traced.
    """
    from .ir import current_graph

    tensors = [v for v in values if isinstance(v, Tensor)]
    stack = _stack()
    top = stack[-1] if stack else None
    if not tensors:
        if top is None:
            raise InvalidArgumentError(f"{what}: needs at least one kf.Tensor among its inputs to know its graph")
        return top
    graph = current_graph(tensors)
    if top is not None and (graph is top or _is_ancestor(graph, top)):
        return top
    return graph


def as_tensor(graph: Graph, v: Any, what: str) -> Tensor:
    """``v`` as a tensor of ``graph``: tensors of enclosing graphs are captured, values become constants."""
    if isinstance(v, Tensor):
        if v.graph is graph:
            return v
        if isinstance(graph, TraceGraph):
            return graph.capture(v)
        raise InvalidArgumentError(f"{what}: tensor '{v.name}' belongs to graph '{v.graph.name}', not "
                                   f"'{graph.name}'")
    if v is None or callable(v):
        raise InvalidArgumentError(f"{what}: expected tensors, numbers or arrays; got {type(v).__name__}")
    return graph.constant(v if isinstance(v, np.ndarray) or not isinstance(v, float) else np.float32(v))


def trace(parent: Graph, fn: Callable[..., Any], avals: Sequence[Aval], what: str,
          call: Callable[[list[Tensor]], Any] | None = None) -> tuple[TraceGraph, list[Tensor], list[Tensor], Any]:
    """Trace ``fn`` over placeholders of ``avals`` into a new `TraceGraph` under ``parent``.

    Args:
        parent: the graph the control-flow node goes into.
        fn: the Python function.
        avals: one per flat argument.
        what: e.g. ``"while_loop body"``, for messages.
        call: how to call ``fn`` with the flat placeholders (default ``fn(*placeholders)``).

    Returns:
        (the traced graph, its argument placeholders, its flat outputs, the outputs' tree).
    """
    from .ops.state import placeholder_op

    tg = TraceGraph(parent, what)
    phs = [Graph.add_node(tg, placeholder_op, (), {"shape": a.shape, "dtype": a.dtype}, f"arg{i}")
           for i, a in enumerate(avals)]
    stack = _stack()
    stack.append(tg)
    try:
        out = call(phs) if call is not None else fn(*phs)
    finally:
        stack.pop()
    leaves, tree = flatten(out)
    outs = [as_tensor(tg, v, what) for v in leaves]
    for t in outs:
        if t.aval.parts is not None or t.dtype is None:
            raise InvalidArgumentError(f"{what}: returned '{t.name}' ({t.op.name}), which has no single value")
    return tg, phs, outs, tree


def close(tg: TraceGraph, inputs: Sequence[Tensor], outputs: Sequence[Tensor]) -> Subgraph:
    """Finish a traced graph: no more nodes may be added; returns its `Subgraph`."""
    tg.closed = True
    return Subgraph(tg, inputs, outputs)


def with_captures(traces: Sequence[tuple[TraceGraph, list[Tensor], list[Tensor]]]
                  ) -> tuple[list[Tensor], list[Subgraph]]:
    """Subgraphs of several traced functions that share one capture list (a node's extra inputs).

    Returns:
        (the captured parent-graph tensors, one Subgraph per trace with inputs args + captures).
    """
    caps: dict[int, Tensor] = {}
    for tg, _, _ in traces:
        for outer in tg.captured():
            caps.setdefault(id(outer), outer)
    outer_list = list(caps.values())
    subs = []
    for tg, args, outs in traces:
        ins = list(args) + [tg.capture(c) for c in outer_list]
        subs.append(close(tg, ins, outs))
    return outer_list, subs


def inline(sub: Subgraph, args: Sequence[Tensor], graph: Graph) -> list[Tensor]:
    """Copy ``sub``'s nodes into ``graph`` with ``args`` for its inputs; returns its outputs there."""
    m: dict[int, Tensor] = {id(p): a for p, a in zip(sub.inputs, args)}
    for n in sub.graph.nodes():
        if id(n) in m:
            continue
        ins = [m[id(i)] for i in n.inputs]
        ctl = [m[id(c)] for c in n.control_inputs if id(c) in m]
        m[id(n)] = graph.add_node(n.op, ins, dict(n.attrs), n.name, control_inputs=ctl,
                                  device=n.device, source=n.source)
    return [m[id(o)] for o in sub.outputs]


def describe(avals: Sequence[Aval]) -> str:
    return "(" + ", ".join(f"{a.dtype}{format_shape(a.shape)}" for a in avals) + ")"
