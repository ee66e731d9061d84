"""The ONNX graph builder the converters write through: nodes, initializers, node dispatch, sub-graphs.

One `OnnxBuilder` per ONNX graph being built: the model's main graph, and a child for each
control-flow body (an If branch, a Loop or Scan body). Children share the root's
initializers (a body reads them from the outer scope, as ONNX allows), its counter of fresh
names and its set of used value names, so every value name is unique in the whole model
(ONNX forbids a body to shadow an outer name). `OnnxBuilder.emit` turns one kernelflow node
into ONNX nodes through the table of `kernelflow.interop.onnx_ops`; `OnnxBuilder.inline`
does it for every node a kernelflow `Subgraph` needs, with its inputs bound to given values.

Contents: OnnxExportError, OnnxBuilder, part, prune, move_initializers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.ir import Aval, Tensor
from ..graph.subgraph import Subgraph
from .onnx_ops import CONVERTERS, NO_ONNX


class OnnxExportError(InvalidArgumentError):
    """A graph that cannot become ONNX: an op with no ONNX form, or a node it cannot express."""


def part(name: str, index: int) -> str:
    """The ONNX value name of output ``index`` of a multi-output node whose value name is ``name``."""
    return f"{name}#{index}"


class _Shared:
    """What a root builder and its children share."""

    def __init__(self) -> None:
        self.initializers: list = []  # TensorProtos: each value's one copy the builder holds
        self.used: set[str] = set()
        self.count = 0
        self.tensors: dict[str, Any] = {}  # initializer name -> its TensorProto
        self.alias: dict[str, str] = {}  # Identity output -> its input
        self.derived: dict[str, str] = {}  # initializer -> the initializer it was computed from


class OnnxBuilder:
    """Collects the ONNX nodes of one graph; converters add to it through `op`, `const`, `ints`, `cast`.

    Args:
        onnx: the imported ``onnx`` module.
        shared: the root's shared state (None: this is the root).
    """

    def __init__(self, onnx: Any, shared: _Shared | None = None):
        self.onnx = onnx
        self.shared = shared or _Shared()
        self.nodes: list = []
        self.scope = ""
        self.names: dict[int, str] = {}  # id(kernelflow node) -> ONNX value name, in the graph being emitted

    @property
    def initializers(self) -> list:
        return self.shared.initializers

    def child(self) -> OnnxBuilder:
        """A builder for a body graph nested in this one (same initializers and names)."""
        return OnnxBuilder(self.onnx, self.shared)

    def reserve(self, names: Sequence[str]) -> None:
        """Mark value names as taken (the main graph's, before any body picks names)."""
        self.shared.used.update(names)

    def unique(self, name: str) -> str:
        """``name``, or ``name_2``, ``name_3``... if taken; marked as taken."""
        used, out, k = self.shared.used, name, 1
        while out in used:
            k += 1
            out = f"{name}_{k}"
        used.add(out)
        return out

    def _fresh(self, hint: str) -> str:
        self.shared.count += 1
        c = self.shared.count
        return self.unique(f"{self.scope}/_onnx{c}_{hint}" if self.scope else f"_onnx{c}_{hint}")

    def op(self, op_type: str, inputs: list, out: str | None = None, **attrs: Any) -> str:
        """Append one ONNX node; returns its output value name (``out``, or a fresh one)."""
        out = out or self._fresh(op_type)
        if op_type == "Identity":
            self.shared.alias[out] = inputs[0]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def ops(self, op_type: str, inputs: list, outputs: list, **attrs: Any) -> list:
        """Append one ONNX node with several outputs (None entries get fresh names); returns them."""
        outs = [o or self._fresh(f"{op_type}{i}") for i, o in enumerate(outputs)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs, name=self._fresh(op_type),
                                                     **attrs))
        return outs

    def initializer(self, name: str, value: np.ndarray) -> str:
        """Add an initializer of the given name (a 0-d value stays 0-d). It is converted to a
        TensorProto at once and the builder keeps no numpy copy: a big variable is held once."""
        t = self.onnx.numpy_helper.from_array(np.asarray(value), name)
        self.initializers.append(t)
        self.shared.tensors[name] = t
        return name

    def derived_initializer(self, base: str, value: np.ndarray) -> str:
        """A fresh initializer computed from initializer ``base`` (a kernel in ONNX's layout): it takes
        ``base``'s name in the model when nothing reads ``base`` itself any more (see `prune`)."""
        name = self.initializer(self.unique(f"{base}:onnx"), value)
        self.shared.derived[name] = base
        return name

    def value_of(self, name: str) -> tuple[str, np.ndarray] | None:
        """(initializer name, value) of ``name`` when it is an initializer or Identities of one, else None
        (the value read back from its TensorProto: a copy the caller drops when done)."""
        while name in self.shared.alias:
            name = self.shared.alias[name]
        t = self.shared.tensors.get(name)
        return None if t is None else (name, self.onnx.numpy_helper.to_array(t))

    def const(self, value: Any) -> str:
        """A fresh initializer holding ``value`` (an array or scalar with its dtype)."""
        return self.initializer(self._fresh("const"), np.asarray(value))

    def ints(self, values: list) -> str:
        """An int64 vector initializer (shapes, axes, pads)."""
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1))

    def onnx_dtype(self, dtype: str) -> int:
        """The TensorProto element type of a numpy dtype name."""
        return int(self.onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    def cast(self, x: str, have: str | None, want: str | None) -> str:
        """``x`` cast from ``have`` to ``want`` (``x`` itself when they agree)."""
        if have == want or want is None:
            return x
        return self.op("Cast", [x], to=self.onnx_dtype(want))

    def value_info(self, name: str, aval: Aval) -> Any:
        """A ValueInfoProto of ``aval``'s dtype and shape (a None dim stays unnamed)."""
        return self.onnx.helper.make_tensor_value_info(name, self.onnx_dtype(aval.dtype), list(aval.shape))

    # ------------------------------------------------------------------ kernelflow nodes
    def emit(self, n: Tensor, xs: list, name: str) -> None:
        """The ONNX nodes of kernelflow node ``n`` (inputs' value names ``xs``), writing value ``name``.

        Raises:
            OnnxExportError: naming ``n``: its op has no ONNX form, or a form ONNX cannot express.
        """
        outer, self.scope = self.scope, n.name
        try:
            if n.op.name == "constant":
                self.initializer(name, np.asarray(n.attrs["value"], dtype=n.dtype))
            elif n.op.name in CONVERTERS:
                CONVERTERS[n.op.name](self, n, xs, name)
            else:
                why = NO_ONNX.get(n.op.name, "it has no ONNX mapping")
                raise OnnxExportError(f"export_onnx: node '{n.name}' (op {n.op.name}) has no ONNX form: {why}",
                                      node=n.name, source=n.source)
        except OnnxExportError:
            raise
        except InvalidArgumentError as e:
            raise OnnxExportError(e.message, node=n.name, source=n.source) from e
        finally:
            self.scope = outer

    def inline(self, sub: Subgraph, args: Sequence[str], label: str) -> list[str]:
        """Emit the nodes ``sub``'s outputs need, its inputs bound to the value names ``args``.

        Value names are ``{label}::{node name}`` (made unique). Returns the outputs' value names.
        """
        names: dict[int, str] = {id(p): a for p, a in zip(sub.inputs, args)}
        needed: set[int] = set()
        stack = list(sub.outputs)
        while stack:
            t = stack.pop()
            if id(t) not in needed and id(t) not in names:
                needed.add(id(t))
                stack.extend(t.inputs)
        outer, self.names = self.names, names
        try:
            for n in sub.graph.nodes():
                if id(n) in needed:
                    names[id(n)] = self.unique(f"{label}::{n.name}")
                    self.emit(n, [names[id(i)] for i in n.inputs], names[id(n)])
        finally:
            self.names = outer
        return [names[id(o)] for o in sub.outputs]

    def graph(self, name: str, inputs: list, outputs: list[tuple[str, Aval]]) -> Any:
        """This builder's nodes as a GraphProto (a body): ``inputs`` ValueInfos; each output value is
        copied by an Identity to a fresh name (a body output may not be an input or outer value)."""
        outs = []
        for value, aval in outputs:
            out = self.op("Identity", [value], self.unique(f"{value}:out"))
            outs.append(self.value_info(out, aval))
        return self.onnx.helper.make_graph(self.nodes, name, inputs, outs)


def _reads(nodes: Sequence) -> set[str]:
    """The value names ``nodes`` read, their bodies' reads (outer values, by name) included."""
    out: set[str] = set()
    for nd in nodes:
        out.update(nd.input)
        for a in nd.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out |= _reads(g.node) | {o.name for o in g.output}
    return out


def _rename(nodes: Sequence, names: dict[str, str]) -> None:
    """Rename the values ``nodes`` (and their bodies) read, in place."""
    for nd in nodes:
        for k, v in enumerate(nd.input):
            if v in names:
                nd.input[k] = names[v]
        for a in nd.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _rename(g.node, names)


def prune(b: OnnxBuilder, outputs: Sequence[str]) -> tuple[list, list]:
    """Root builder ``b``'s nodes and initializers that ``outputs`` need (a converter that folds
    nodes into one ONNX op, as a recurrent layer's input projection, leaves them unread); a
    derived initializer whose base is no longer read takes the base's name. ``b`` lets go of its
    initializers: the returned list holds the only references to them (see `move_initializers`)."""
    need, kept = set(outputs), []
    for nd in reversed(b.nodes):  # topological order: a reader comes after what it reads
        if any(o in need for o in nd.output):
            kept.append(nd)
            need |= _reads([nd])
    inits = [i for i in b.initializers if i.name in need]
    derived = b.shared.derived
    names = {i.name: derived[i.name] for i in inits if i.name in derived and derived[i.name] not in need}
    if len(set(names.values())) != len(names):  # two derived from one base: keep their own names
        names = {}
    _rename(kept, names)
    for i in inits:
        i.name = names.get(i.name, i.name)
    b.shared.initializers, b.shared.tensors = [], {}
    return kept[::-1], inits


def move_initializers(graph: Any, inits: list) -> None:
    """Append the TensorProtos ``inits`` to GraphProto ``graph``, emptying ``inits`` as it goes:
    protobuf copies each one in, and the copy it came from is freed at once, so a model's
    weights are held once plus the largest of them (not twice, as ``make_graph(initializer=)``)."""
    inits.reverse()
    while inits:
        graph.initializer.append(inits.pop())
