"""The symbolic IR: `Aval`, `Tensor` (a node and its single output), `Variable`, `Graph`.

A graph is an append-only list of nodes; its ``version`` is the number of nodes, so "the
nodes since version v" is a slice. Every node has one output (ops that would have several,
like split, are built from single-output primitives), a static `Aval` inferred by its op's
rules when it is created, a device, control inputs, and the file:line of the user code that
created it.

Contents: Aval, Tensor, Variable, Graph, bind_op, current_graph, toposort, node_to_dict
(and the HTML tables of their Jupyter displays).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError, KernelflowError, NotFoundError
from .registry import OpDef, lookup
from .shapes import canonical_dtype, format_shape

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Aval:
    """Abstract value: static shape (ints or None per dim) and dtype name (None: no value).

    A control-flow node yields several values at once: its aval has ``parts`` (one `Aval`
    per output, read with ``tuple_get``), shape ``()`` and dtype None.
    """

    shape: tuple
    dtype: str | None
    parts: tuple | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{format_shape(self.shape)}"


def _user_source() -> str | None:
    """``file:line`` of the innermost stack frame outside the kernelflow package; in an IPython
    cell ``Cell In[n], line k``, as IPython's own tracebacks say, not the cell's temp file."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PKG_DIR + os.sep):
            return _cell_label(filename, frame.f_lineno) or f"{filename}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def _user_stacklevel() -> int:
    """``stacklevel`` for `warnings.warn` that points at the innermost frame outside kernelflow."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PKG_DIR + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def _cell_label(filename: str, lineno: int) -> str | None:
    """``Cell In[n], line k`` when ``filename`` is a cell of the running IPython shell, else None.

    IPython is looked up in ``sys.modules``, never imported: outside a shell this costs a dict
    lookup. The shell's compiler maps the cells' file names to their execution counts.
    """
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    if get is None:
        return None
    try:
        shell = get()
        label = shell.compile.format_code_name(filename) if shell is not None else None
    except (AttributeError, TypeError):  # a shell of another make (no CachingCompiler)
        return None
    if not label:
        return None
    return f"{label[0]} {label[1]}, line {lineno}"


class Tensor:
    """A node of a graph and its output value.

    Attributes:
        graph: the `Graph` it belongs to.
        name: unique node name within the graph (``dense1/MatMul``).
        op: the `OpDef`.
        inputs: input tensors, in the op's order.
        control_inputs: tensors that must run before this one.
        attrs: the op's attrs, defaults filled in.
        aval: static shape and dtype.
        device: ``"cpu"``, ``"gpu"``, ``"gpu:1"`` or None (the runtime's default).
        source: ``file:line`` of the user code that created it (``Cell In[n], line k`` in a notebook).
    """

    __array_priority__ = 100  # so ndarray <op> Tensor defers to Tensor's reflected operators
    __slots__ = ("graph", "name", "op", "inputs", "control_inputs", "attrs", "aval", "device", "source",
                 "index", "__weakref__")

    def __init__(self, graph: Graph, name: str, op: OpDef, inputs: tuple, control_inputs: tuple,
                 attrs: dict, aval: Aval, device: str | None, source: str | None, index: int):
        self.graph = graph
        self.name = name
        self.op = op
        self.inputs = inputs
        self.control_inputs = control_inputs
        self.attrs = attrs
        self.aval = aval
        self.device = device
        self.source = source
        self.index = index

    # ----------------------------------------------------------------- metadata
    @property
    def shape(self) -> tuple:
        """Static shape: a tuple of ints, with None for dims unknown until run time."""
        return self.aval.shape

    @property
    def dtype(self) -> str | None:
        """dtype name (``"float32"``), or None for ops that yield no value (group, no_op)."""
        return self.aval.dtype

    @property
    def ndim(self) -> int:
        return len(self.aval.shape)

    def __repr__(self) -> str:
        return f"<kf.Tensor '{self.name}' op={self.op.name} shape={format_shape(self.shape)} dtype={self.dtype}>"

    def _repr_html_(self) -> str:
        """Jupyter's rich display: one compact table of the node."""
        return _html_table(f"kf.{type(self).__name__} {_esc(self.name)}", _tensor_rows(self))

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth value of symbolic tensor '{self.name}' is unknown while the graph is built; "
            "use kf.where / kf.logical_and instead of Python if/and/or"
        )

    def __iter__(self) -> Iterator[Tensor]:
        raise TypeError(f"symbolic tensor '{self.name}' is not iterable; use kf.split or indexing")

    def __len__(self) -> int:
        if self.shape and self.shape[0] is not None:
            return self.shape[0]
        raise TypeError(f"len() of tensor '{self.name}' with unknown first dim {format_shape(self.shape)}")

    # ----------------------------------------------------------------- operators
    def __add__(self, o: Any) -> Tensor: return _ops().add(self, o)
    def __radd__(self, o: Any) -> Tensor: return _ops().add(o, self)
    def __sub__(self, o: Any) -> Tensor: return _ops().subtract(self, o)
    def __rsub__(self, o: Any) -> Tensor: return _ops().subtract(o, self)
    def __mul__(self, o: Any) -> Tensor: return _ops().multiply(self, o)
    def __rmul__(self, o: Any) -> Tensor: return _ops().multiply(o, self)
    def __truediv__(self, o: Any) -> Tensor: return _ops().divide(self, o)
    def __rtruediv__(self, o: Any) -> Tensor: return _ops().divide(o, self)
    def __floordiv__(self, o: Any) -> Tensor: return _ops().floor_divide(self, o)
    def __rfloordiv__(self, o: Any) -> Tensor: return _ops().floor_divide(o, self)
    def __mod__(self, o: Any) -> Tensor: return _ops().mod(self, o)
    def __rmod__(self, o: Any) -> Tensor: return _ops().mod(o, self)
    def __pow__(self, o: Any) -> Tensor: return _ops().pow(self, o)
    def __rpow__(self, o: Any) -> Tensor: return _ops().pow(o, self)
    def __matmul__(self, o: Any) -> Tensor: return _ops().matmul(self, o)
    def __rmatmul__(self, o: Any) -> Tensor: return _ops().matmul(o, self)
    def __neg__(self) -> Tensor: return _ops().negative(self)
    def __pos__(self) -> Tensor: return self
    def __abs__(self) -> Tensor: return _ops().abs(self)
    def __invert__(self) -> Tensor: return _ops().logical_not(self)
    def __and__(self, o: Any) -> Tensor: return _ops().logical_and(self, o)
    def __or__(self, o: Any) -> Tensor: return _ops().logical_or(self, o)
    def __lt__(self, o: Any) -> Tensor: return _ops().less(self, o)
    def __le__(self, o: Any) -> Tensor: return _ops().less_equal(self, o)
    def __gt__(self, o: Any) -> Tensor: return _ops().greater(self, o)
    def __ge__(self, o: Any) -> Tensor: return _ops().greater_equal(self, o)
    # == and != stay identity comparisons (tensors are dict keys, as in TF1); use kf.equal.

    def __getitem__(self, index: Any) -> Tensor:
        return _ops().getitem(self, index)

    @property
    def T(self) -> Tensor:  # noqa: N802 (numpy's name)
        """Reverse the axes (numpy's ``.T``)."""
        return _ops().transpose(self)

    def astype(self, dtype: Any) -> Tensor:
        """Cast to ``dtype``."""
        return _ops().cast(self, dtype)

    def reshape(self, *shape: Any) -> Tensor:
        """Reshape; ``t.reshape(2, -1)`` and ``t.reshape((2, -1))`` both work."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def eval(self, feed: dict | None = None) -> Any:
        """Run this tensor alone: ``self.graph.run(self, feed)``."""
        return self.graph.run(self, feed)


class Variable(Tensor):
    """A tensor whose value persists in the runtime between runs.

    Reading a variable in a run sees its value from before that run's updates, unless a
    control dependency orders the read (`read_value`) after them.
    """

    __slots__ = ()

    @property
    def trainable(self) -> bool:
        return bool(self.attrs.get("trainable", True))

    def __repr__(self) -> str:
        return f"<kf.Variable '{self.name}' shape={format_shape(self.shape)} dtype={self.dtype}>"

    def value(self) -> np.ndarray:
        """The variable's current value, fetched from the runtime."""
        return self.graph.read_variable(self)

    def set(self, value: Any) -> None:
        """Assign ``value`` now (eager); the shape and dtype must match the variable's."""
        self.graph.write_variable(self, value)

    def assign(self, value: Any, name: str | None = None) -> Tensor:
        """An op that assigns ``value`` when run; its output is the new value."""
        return _state_ops().assign(self, value, name=name)

    def assign_add(self, delta: Any, name: str | None = None) -> Tensor:
        """An op that adds ``delta`` to the variable when run."""
        return _state_ops().assign_add(self, delta, name=name)

    def assign_sub(self, delta: Any, name: str | None = None) -> Tensor:
        """An op that subtracts ``delta`` from the variable when run."""
        return _state_ops().assign_sub(self, delta, name=name)

    def read_value(self) -> Tensor:
        """A fresh read of the variable, ordered by the current control dependencies."""
        return _state_ops().read_variable(self)


def _ops() -> Any:
    from . import ops

    return ops


def _state_ops() -> Any:
    from .ops import state

    return state


# --------------------------------------------------------------------------- graph
class Graph:
    """An append-only dataflow graph.

    The client subclass (``kernelflow.client``) adds running and syncing; the server keeps
    plain `Graph` objects rebuilt from node dicts. ``version`` is the node count.

    Args:
        name: the graph's name in its runtime.
        seed: graph-level seed; random ops combine it with their own seed.
    """

    def __init__(self, name: str = "graph", seed: int = 0):
        self.name = name
        self.seed = seed
        self._nodes: list[Tensor] = []
        self._by_name: dict[str, Tensor] = {}
        self._name_counts: dict[str, int] = {}
        self._warned_cells: set[str] = set()  # cells already warned of a taken name (_warn_renamed)
        self._scope: list[str] = []
        self._devices: list[str | None] = []
        self._controls: list[tuple[Tensor, ...]] = []
        self.collections: dict[str, list[Tensor]] = {}
        self._lock = threading.RLock()

    # ----------------------------------------------------------------- lookups
    @property
    def version(self) -> int:
        """Number of nodes: grows by one with each node added."""
        return len(self._nodes)

    def nodes(self) -> list[Tensor]:
        """All nodes in creation order (a topological order)."""
        return list(self._nodes)

    def variables(self) -> list[Variable]:
        """All variables, in creation order."""
        return [n for n in self._nodes if isinstance(n, Variable)]

    def trainable_variables(self) -> list[Variable]:
        """Variables created with ``trainable=True`` (the default)."""
        return [v for v in self.variables() if v.trainable]

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._by_name[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, list(self._by_name), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise NotFoundError(f"graph '{self.name}' has no node named '{name}'{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"<kf.Graph '{self.name}' nodes={len(self._nodes)} variables={len(self.variables())}>"

    def _repr_html_(self) -> str:
        """Jupyter's rich display: nodes by top-level scope, then the variables and their sizes."""
        return _graph_html(self)

    # ----------------------------------------------------------------- scopes
    @contextlib.contextmanager
    def name_scope(self, name: str) -> Iterator[str]:
        """Prefix the names of nodes created inside with ``name/``."""
        if not name or "/" in name.strip("/"):
            if not name:
                raise InvalidArgumentError("name_scope: the scope name must not be empty")
        self._scope.append(name.strip("/"))
        try:
            yield "/".join(self._scope)
        finally:
            self._scope.pop()

    @contextlib.contextmanager
    def device(self, spec: str | None) -> Iterator[None]:
        """Place nodes created inside on ``spec``: ``"cpu"``, ``"gpu"``, ``"gpu:1"`` or None."""
        self._devices.append(normalize_device(spec))
        try:
            yield
        finally:
            self._devices.pop()

    @contextlib.contextmanager
    def control_dependencies(self, ops: Iterable[Tensor] | None) -> Iterator[None]:
        """Nodes created inside run after every op in ``ops`` (None clears the outer ones)."""
        if ops is None:
            self._controls.append(None)  # type: ignore[arg-type]
        else:
            ops = tuple(ops)
            for t in ops:
                if not isinstance(t, Tensor) or t.graph is not self:
                    raise InvalidArgumentError(
                        f"control_dependencies: expected tensors of graph '{self.name}'; got {t!r}"
                    )
            self._controls.append(ops)
        try:
            yield
        finally:
            self._controls.pop()

    def _current_controls(self) -> tuple[Tensor, ...]:
        out: list[Tensor] = []
        for entry in self._controls:
            if entry is None:
                out = []
            else:
                out.extend(entry)
        return tuple(dict.fromkeys(out))

    def _scoped(self, name: str) -> str:
        name = name.strip("/")
        return "/".join([*self._scope, name]) if self._scope else name

    def _warn_renamed(self, wanted: str, got: str, source: str) -> None:
        """Once per cell run: a name given in a notebook cell was taken (the cell ran before, TF1's trap)."""
        cell = source.partition(",")[0]
        if cell in self._warned_cells:
            return
        self._warned_cells.add(cell)
        warnings.warn(
            f"graph '{self.name}': the name '{wanted}' is taken, so this node is '{got}' ({source}). Running a "
            f"cell again adds its nodes again; to start the graph afresh use rt.graph('{self.name}', reset=True) "
            f"(kf.Graph: make a new one)", UserWarning, stacklevel=_user_stacklevel())

    def unique_name(self, base: str, scoped: bool = True) -> str:
        """``base`` under the current scope, with ``_1``, ``_2``... appended if taken."""
        base = base.strip("/")
        if scoped and self._scope:
            base = "/".join(self._scope) + "/" + base
        if base not in self._by_name and base not in self._name_counts:
            self._name_counts[base] = 0
            return base
        i = self._name_counts.get(base, 0)
        while True:
            i += 1
            candidate = f"{base}_{i}"
            if candidate not in self._by_name:
                self._name_counts[base] = i
                return candidate

    # ----------------------------------------------------------------- building
    def add_node(self, op: OpDef, inputs: Sequence[Tensor], attrs: dict[str, Any], name: str | None = None,
                 *, control_inputs: Sequence[Tensor] = (), device: str | None = None,
                 source: str | None = None, exact_name: bool = False) -> Tensor:
        """Validate and append one node; returns its Tensor.

        Raises:
            InvalidArgumentError: (or ShapeError) naming the node and its source line when the
                op's rules reject the inputs or attrs.
        """
        with self._lock:
            if exact_name:
                node_name = name or ""
                if not node_name or node_name in self._by_name:
                    raise InvalidArgumentError(f"{op.name}: node name '{node_name}' is empty or taken")
            else:
                node_name = self.unique_name(name or op.name)
            if source is None:
                source = _user_source()
            if name and not exact_name and node_name != self._scoped(name) and source and source.startswith("Cell In["):
                self._warn_renamed(self._scoped(name), node_name, source)
            if device is None and self._devices:
                device = self._devices[-1]
            controls = tuple(dict.fromkeys(tuple(control_inputs) + self._current_controls()))
            try:
                attrs = op.check_attrs(attrs)
                _check_arity(op, inputs)
                avals = [t.aval for t in inputs]
                for t in inputs:
                    if t.dtype is None and t.aval.parts is None:
                        raise InvalidArgumentError(f"{op.name}: input '{t.name}' ({t.op.name}) has no value")
                if op.parts_rule is not None:
                    aval = Aval((), None, tuple(op.parts_rule(*avals, **attrs)))
                else:
                    aval = Aval(tuple(op.shape_rule(*avals, **attrs)), op.dtype_rule(*avals, **attrs))
            except KernelflowError as e:
                e.node = e.node or node_name
                e.source = e.source or source
                if node_name not in e.message:
                    e.message = f"{node_name}: {e.message}"
                    e.args = (e.message,)
                raise
            cls = Variable if op.name == "variable" else Tensor
            t = cls(self, node_name, op, tuple(inputs), controls, attrs, aval, device, source, len(self._nodes))
            self._nodes.append(t)
            self._by_name[node_name] = t
            self._on_node_added(t)
            return t

    def _on_node_added(self, t: Tensor) -> None:
        """Hook for subclasses (the client records pending nodes here)."""

    def placeholder(self, shape: Sequence[int | None] | None, dtype: Any = "float32",
                    name: str | None = None) -> Tensor:
        """A value fed at run time; None dims accept any size."""
        return _state_ops().placeholder(self, shape, dtype, name=name)

    def variable(self, initial: Any, name: str | None = None, trainable: bool = True,
                 dtype: Any = None) -> Variable:
        """A variable, initialised now from an array, a scalar or a `kf.init` initialiser."""
        return _state_ops().variable(self, initial, name=name, trainable=trainable, dtype=dtype)

    def constant(self, value: Any, name: str | None = None, dtype: Any = None) -> Tensor:
        """A constant holding ``value`` (converted with numpy)."""
        return _state_ops().constant(self, value, name=name, dtype=dtype)

    def add_to_collection(self, key: str, t: Tensor) -> None:
        """Remember ``t`` under ``key`` (e.g. ``"update_ops"`` of batch norm)."""
        self.collections.setdefault(key, []).append(t)

    # ----------------------------------------------------------------- running
    def run(self, fetches: Any, feed: dict | None = None) -> Any:
        """Run ``fetches``; defined by runtime-attached subclasses."""
        raise FailedPreconditionError(f"graph '{self.name}' is not attached to a runtime; use kf.connect()")

    def read_variable(self, v: Variable) -> np.ndarray:
        raise FailedPreconditionError(f"graph '{self.name}' is not attached to a runtime; use kf.connect()")

    def write_variable(self, v: Variable, value: Any) -> None:
        raise FailedPreconditionError(f"graph '{self.name}' is not attached to a runtime; use kf.connect()")

    # ----------------------------------------------------------------- (de)serialisation
    def to_dicts(self, since: int = 0) -> list[dict]:
        """Node dicts for the nodes from version ``since`` on (the wire and disk form)."""
        return [node_to_dict(n) for n in self._nodes[since:]]

    def extend_from_dicts(self, dicts: Sequence[dict]) -> list[Tensor]:
        """Validate and add nodes from their dicts (as `to_dicts` makes them), all or none.

        Raises:
            InvalidArgumentError / NotFoundError: naming the bad node; the graph is unchanged.
        """
        with self._lock:
            start = len(self._nodes)
            added: list[Tensor] = []
            try:
                for d in dicts:
                    added.append(self._add_from_dict(d))
            except BaseException:
                self._truncate(start)
                raise
            return added

    def _truncate(self, version: int) -> None:
        for t in self._nodes[version:]:
            self._by_name.pop(t.name, None)
        del self._nodes[version:]

    def _add_from_dict(self, d: Any) -> Tensor:
        if not isinstance(d, dict):
            raise InvalidArgumentError(f"graph.extend: a node must be a map; got {type(d).__name__}")
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"graph.extend: node name must be a non-empty string; got {name!r}")
        op = lookup(_str_field(d, "op", name))

        def resolve(ref: Any, kind: str) -> Tensor:
            if not isinstance(ref, str) or ref not in self._by_name:
                raise InvalidArgumentError(
                    f"graph.extend: node '{name}' has {kind} '{ref}' that is not an earlier node of graph "
                    f"'{self.name}' (dangling input or cycle)", node=name)
            return self._by_name[ref]

        inputs = [resolve(r, "input") for r in _list_field(d, "inputs", name)]
        controls = [resolve(r, "control input") for r in _list_field(d, "control_inputs", name)]
        attrs = d.get("attrs") or {}
        if not isinstance(attrs, dict):
            raise InvalidArgumentError(f"graph.extend: attrs of node '{name}' must be a map", node=name)
        attrs = {str(k): _detuple(v, name) for k, v in attrs.items()}
        device = d.get("device")
        if device is not None:
            device = normalize_device(device)
        source = d.get("source")
        t = self.add_node(op, inputs, attrs, name, control_inputs=controls, device=device,
                          source=source if isinstance(source, str) else None, exact_name=True)
        return t


def _str_field(d: dict, key: str, name: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise InvalidArgumentError(f"graph.extend: node '{name}' field '{key}' must be a string; got {v!r}")
    return v


def _list_field(d: dict, key: str, name: str) -> list:
    v = d.get(key) or []
    if not isinstance(v, (list, tuple)):
        raise InvalidArgumentError(f"graph.extend: node '{name}' field '{key}' must be a list")
    return list(v)


def _detuple(v: Any, node: str = "") -> Any:
    """Lists from the wire back to tuples, so attrs compare and hash as built; maps are sub-graphs."""
    if isinstance(v, list):
        return tuple(_detuple(x, node) for x in v)
    if isinstance(v, dict):
        from .subgraph import Subgraph  # subgraph imports this module

        return Subgraph.from_dict(v, node)
    return v


def _attr_to_wire(v: Any) -> Any:
    from .subgraph import Subgraph

    if isinstance(v, tuple):
        return [_attr_to_wire(x) for x in v]
    if isinstance(v, Subgraph):
        return v.to_dict()
    return v


def node_to_dict(n: Tensor) -> dict:
    """The wire/disk form of one node (arrays stay ndarrays; the codec handles them)."""
    d: dict[str, Any] = {
        "name": n.name,
        "op": n.op.name,
        "inputs": [t.name for t in n.inputs],
        "attrs": {k: _attr_to_wire(v) for k, v in n.attrs.items()},
    }
    if n.control_inputs:
        d["control_inputs"] = [t.name for t in n.control_inputs]
    if n.device:
        d["device"] = n.device
    if n.source:
        d["source"] = n.source
    return d


def _check_arity(op: OpDef, inputs: Sequence[Any]) -> None:
    if op.variadic:
        if len(inputs) < len(op.inputs) - 1:
            raise InvalidArgumentError(f"{op.name}: expected at least {len(op.inputs) - 1} inputs; got {len(inputs)}")
    elif len(inputs) != len(op.inputs):
        raise InvalidArgumentError(f"{op.name}: expected {len(op.inputs)} inputs {op.inputs}; got {len(inputs)}")


def normalize_device(spec: Any) -> str | None:
    """``"cpu"``, ``"gpu:N"`` (``"gpu"`` means ``"gpu:0"``), or None.

    Raises:
        InvalidArgumentError: for any other spelling.
    """
    if spec is None:
        return None
    s = str(spec).strip().lower()
    if s.startswith("/"):
        s = s.lstrip("/").replace("device:", "")
    s = s.replace("cuda", "gpu")
    if s in ("cpu", "cpu:0"):
        return "cpu"
    if s == "gpu":
        return "gpu:0"
    if s.startswith("gpu:") and s[4:].isdigit():
        return f"gpu:{int(s[4:])}"
    raise InvalidArgumentError(f"device: expected 'cpu', 'gpu' or 'gpu:N'; got {spec!r}")


# --------------------------------------------------------------------------- binding
def current_graph(values: Iterable[Any]) -> Graph:
    """The one graph the tensors among ``values`` belong to.

    Raises:
        InvalidArgumentError: when there is no tensor, or tensors of different graphs.
    """
    graph = None
    for v in values:
        if isinstance(v, Tensor):
            if graph is None:
                graph = v.graph
            elif v.graph is not graph:
                # Inside a control-flow function, outer tensors are captured by the inner graph.
                if _is_ancestor(graph, v.graph):
                    graph = v.graph
                elif not _is_ancestor(v.graph, graph):
                    raise InvalidArgumentError(
                        f"tensors from different graphs cannot be combined: '{graph.name}' and '{v.graph.name}'")
    if graph is None:
        raise InvalidArgumentError("this op needs at least one kf.Tensor input to know its graph")
    return graph


def _is_ancestor(outer: Graph, inner: Graph) -> bool:
    """True when ``inner`` is a sub-graph being traced (at any depth) inside ``outer``."""
    g = getattr(inner, "parent", None)
    while g is not None:
        if g is outer:
            return True
        g = getattr(g, "parent", None)
    return False


def weak_dtype(value: Any, like: str | None) -> str | None:
    """The dtype a Python scalar takes next to a tensor of dtype ``like`` (weak typing)."""
    if like is None:
        return None
    if isinstance(value, bool):
        return like if like == "bool" else None
    if isinstance(value, int):
        return like if like != "bool" else None
    if isinstance(value, float):
        return like if like in ("float16", "float32", "float64") else "float64"  # numpy (NEP 50): int * 1.5 -> float64
    return None


def _fits_dtype(value: Any, dtype: str) -> bool:
    """True when Python scalar ``value`` is representable in ``dtype`` (ints in range, floats finite)."""
    kind = np.dtype(dtype).kind
    if kind in "iu" and isinstance(value, int) and not isinstance(value, bool):
        info = np.iinfo(dtype)
        return info.min <= value <= info.max
    if kind == "f" and isinstance(value, (int, float)) and np.isfinite(value):
        return abs(value) <= np.finfo(dtype).max
    return True


def bind_op(op: OpDef, inputs: Sequence[Any], attrs: dict[str, Any], name: str | None) -> Tensor:
    """Add a node of ``op`` with ``inputs`` (tensors, scalars, arrays) to their graph."""
    graph = current_graph(inputs)
    dtypes = [t.dtype for t in inputs if isinstance(t, Tensor)]
    like = next((d for d in dtypes if d != "bool"), dtypes[0] if dtypes else None)
    tensors = []
    for v in inputs:
        if isinstance(v, Tensor):
            tensors.append(v)
        else:
            dtype = weak_dtype(v, like) if np.ndim(v) == 0 and not isinstance(v, np.ndarray) else None
            if dtype is not None and not _fits_dtype(v, dtype):
                raise InvalidArgumentError(f"{op.name}: Python scalar {v!r} does not fit the dtype {dtype} of the "
                                           "tensor it is combined with; cast the tensor first")
            tensors.append(graph.constant(v, dtype=dtype))
    return graph.add_node(op, tensors, attrs, name)


def toposort(targets: Iterable[Tensor]) -> list[Tensor]:
    """Nodes needed by ``targets`` (data and control inputs), each after its inputs.

    Nodes are appended in creation order, which is already topological, so this is a
    reachability walk followed by a sort on the creation index.
    """
    seen: dict[int, Tensor] = {}
    stack = list(targets)
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen[id(t)] = t
        stack.extend(t.inputs)
        stack.extend(t.control_inputs)
    return sorted(seen.values(), key=lambda t: t.index)


# --------------------------------------------------------------------------- HTML displays
_TABLE_STYLE = "border-collapse:collapse;font-size:12px;text-align:left"
_CELL_STYLE = "text-align:left;vertical-align:top;padding:0 6px"
_MAX_HTML_ROWS = 40


def _esc(text: Any) -> str:
    from html import escape

    return escape(str(text))


def _human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _html_table(title: str, rows: Sequence[tuple], header: Sequence[str] | None = None) -> str:
    """A compact HTML table; ``title`` and cells must already be escaped HTML."""
    parts = [f'<table style="{_TABLE_STYLE}"><caption style="text-align:left;font-weight:bold">{title}</caption>']
    if header:
        parts.append("<tr>" + "".join(f'<th style="{_CELL_STYLE}">{h}</th>' for h in header) + "</tr>")
    for row in rows:
        parts.append("<tr>" + "".join(f'<td style="{_CELL_STYLE}">{c}</td>' for c in row) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def _tensor_rows(t: Tensor) -> list[tuple[str, str]]:
    rows = [("op", _esc(t.op.name)), ("shape", _esc(format_shape(t.shape))), ("dtype", _esc(t.dtype)),
            ("device", _esc(t.device or "default"))]
    if isinstance(t, Variable):
        size = int(np.prod(t.shape, dtype=np.int64))
        rows.append(("size", f"{size:,} ({_human_bytes(size * np.dtype(t.dtype).itemsize)})"))
        rows.append(("trainable", str(t.trainable)))
    if t.inputs:
        rows.append(("inputs", "<br>".join(f"{_esc(i.name)} <i>{_esc(i.aval)}</i>" for i in t.inputs)))
    if t.control_inputs:
        rows.append(("after", _esc(", ".join(c.name for c in t.control_inputs))))
    if t.source:
        rows.append(("source", _esc(t.source)))
    return rows


def _graph_html(g: Graph) -> str:
    nodes = g.nodes()
    scopes: dict[str, list[Tensor]] = {}
    for n in nodes:
        scopes.setdefault(n.name.split("/", 1)[0] if "/" in n.name else "", []).append(n)
    variables = g.variables()
    sizes = {v.name: int(np.prod(v.shape, dtype=np.int64)) for v in variables}
    total = sum(sizes[v.name] * np.dtype(v.dtype).itemsize for v in variables)
    rows = []
    for scope, members in sorted(scopes.items(), key=lambda kv: (kv[0] == "", kv[0])):
        ops: dict[str, int] = {}
        for n in members:
            ops[n.op.name] = ops.get(n.op.name, 0) + 1
        top = ", ".join(f"{op}&times;{c}" if c > 1 else op for op, c in sorted(ops.items(), key=lambda kv: -kv[1])[:4])
        more = " ..." if len(ops) > 4 else ""
        params = sum(sizes.get(n.name, 0) for n in members)
        rows.append((_esc(scope + "/") if scope else "<i>(top level)</i>", str(len(members)), top + more,
                     f"{params:,}" if params else ""))
    title = (f"kf.Graph {_esc(g.name)}: {len(nodes)} nodes, {len(variables)} variables, "
             f"{sum(sizes.values()):,} parameters ({_human_bytes(total)})")
    html = _html_table(title, rows[:_MAX_HTML_ROWS], ("scope", "nodes", "ops", "parameters"))
    if variables:
        vrows = [(_esc(v.name), _esc(format_shape(v.shape)), _esc(v.dtype), f"{sizes[v.name]:,}",
                  "" if v.trainable else "frozen") for v in variables[:_MAX_HTML_ROWS]]
        if len(variables) > _MAX_HTML_ROWS:
            vrows.append((f"... {len(variables) - _MAX_HTML_ROWS} more", "", "", "", ""))
        html += _html_table("variables", vrows, ("name", "shape", "dtype", "size", ""))
    return html


def as_dtype(dtype: Any) -> str:
    """Public alias of `canonical_dtype`."""
    return canonical_dtype(dtype)
