"""Elementwise fusion: groups of elementwise nodes (with a trailing sum/mean/sum_to) become one node.

A group is a tree of elementwise ops ending at a root, which may be a reduction. An inner
member that is fetched, or read by a node outside the group, is one more output of the
group (where the caller allows several outputs: `fuse`'s ``multi_ok``) when every such
reader runs after the root and the member has the group's iteration shape; otherwise it
ends the group. The group runs where its root ran, as one `FusedOp` node whose inputs are
the group's external inputs, and whose `Program` a backend turns into one generated
kernel. A group with several outputs yields a tuple (the root's value, then the other
outputs), read by ``tuple_get`` nodes that keep the members' names. Until a kernel is ready
(compiling in the background) or where none can be made, the node runs the members' own
kernels in order: exactly the unfused computation.

Contents: FUSIBLE, REDUCTIONS, Instr, Program, FusedOp, fuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph.ir import Aval, Tensor
from ..graph.ops import control_flow as CF
from ..graph.ops import elementwise as E
from ..graph.ops import reduce as R
from ..graph.registry import OpDef
from .passes import is_storage, rebuild

FUSIBLE = {
    E.add_op, E.subtract_op, E.multiply_op, E.divide_op, E.pow_op, E.negative_op, E.abs_op, E.exp_op, E.log_op,
    E.log1p_op, E.sqrt_op, E.rsqrt_op, E.square_op, E.sin_op, E.cos_op, E.tanh_op, E.sigmoid_op, E.relu_op,
    E.relu_grad_op, E.maximum_op, E.minimum_op, E.equal_op, E.not_equal_op, E.less_op, E.less_equal_op,
    E.greater_op, E.greater_equal_op, E.logical_and_op, E.logical_or_op, E.logical_not_op, E.isfinite_op,
    E.where_op, E.cast_op,
}
"""Ops a generated kernel computes per element (float16 and integer values stay unfused)."""

REDUCTIONS = {R.sum_op, R.mean_op, R.sum_to_op}
"""Reductions that may end a group."""

FUSED_DTYPES = ("float32", "float64", "bool")
MAX_INPUTS = 24


@dataclass(frozen=True)
class Instr:
    """One op of a program: ``args`` are ``("in", k)`` (external input k), ``("t", j)`` (the
    result of instruction j) or ``("c", value)`` (an inlined 0-d constant)."""

    op: OpDef
    args: tuple
    attrs: tuple
    dtype: str
    arg_dtypes: tuple


@dataclass
class Program:
    """What one fused node computes.

    Attributes:
        instrs: elementwise instructions in order; the last one is the group's elementwise value.
        in_dtypes: dtypes of the external inputs.
        reduce: None, or the trailing reduction's op and attrs (``sum_to`` reads its target shape
            from external input ``like_input``).
        like_input: index of ``sum_to``'s ``like`` input, else None.
        out_dtype: the root's dtype.
        outputs: instructions whose values the node also yields (a group with several outputs:
            the node's value is ``(root value, *those values)``), in instruction order.
        out_deps: per entry of ``outputs``, the external inputs its value depends on (its shape is
            their broadcast shape, checked against the iteration shape when a kernel runs).
    """

    instrs: list[Instr]
    in_dtypes: tuple
    reduce: tuple | None
    like_input: int | None
    out_dtype: str
    outputs: tuple = ()
    out_deps: tuple = ()
    members: list[Tensor] = field(default_factory=list, repr=False)
    member_args: list[tuple] = field(default_factory=list, repr=False)
    _bound: dict = field(default_factory=dict, repr=False)

    def text(self) -> str:
        """A canonical text of the computation (names nothing from the graph): the cache key."""
        lines = [f"in {','.join(self.in_dtypes)} -> {self.out_dtype}"]
        for j, ins in enumerate(self.instrs):
            args = ",".join(f"{a[0]}{a[1]!r}" for a in ins.args)
            lines.append(f"t{j} = {ins.op.name}[{ins.attrs!r}]({args}) : {ins.dtype}")
        if self.reduce is not None:
            lines.append(f"reduce {self.reduce[0].name} {self.reduce[1]!r} like={self.like_input}")
        if self.outputs:
            lines.append(f"outputs {' '.join(f't{j}' for j in self.outputs)}")
        return "\n".join(lines)

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()[:20]

    def run_unfused(self, *inputs: Any, xp: Any = np) -> Any:
        """The members' own kernels in order: the reference semantics and the fallback."""
        bound = self._bound.get(xp.__name__)
        if bound is None:
            from ..kernels.registry import get_kernel

            backend = "numpy" if xp is np else "cupy"
            bound = self._bound[xp.__name__] = [get_kernel(m.op, backend).bind(xp, m.attrs) for m in self.members]
        temps: list[Any] = []
        for fn, spec in zip(bound, self.member_args):
            temps.append(fn(*[inputs[k] if kind == "in" else temps[k] for kind, k in spec]))
        if self.outputs:
            return (temps[-1], *[temps[j] for j in self.outputs])
        return temps[-1]


class FusedOp(OpDef):
    """The op of a fused node; `program` says what it computes. Never enters the op registry."""

    program: Program


def _fused_op(program: Program, aval: Aval) -> FusedOp:
    op = FusedOp(name="fused", inputs=("*inputs",), shape_rule=lambda *a, **k: aval.shape,
                 dtype_rule=lambda *a, **k: aval.dtype, differentiable=False,
                 parts_rule=(lambda *a, **k: aval.parts) if aval.parts else None,
                 doc=" ".join(m.op.name for m in program.members))
    object.__setattr__(op, "program", program)
    return op


def _eligible(n: Tensor, fed: set[int], fetched: set[int]) -> bool:
    if id(n) in fed or n.control_inputs or n.op not in FUSIBLE and n.op not in REDUCTIONS:
        return False
    if n.dtype not in FUSED_DTYPES or any(i.dtype not in FUSED_DTYPES for i in n.inputs):
        return False
    return True


def fuse(order: list[Tensor], fed: set[int], fetches: Sequence[Tensor], device_ok: Callable[[Tensor], bool],
         min_size: int = 2, multi_ok: Callable[[Tensor], bool] | None = None
         ) -> tuple[list[Tensor], dict[int, Tensor], list[Tensor]]:
    """Group fusible nodes of ``order``; returns (new order, {old node id: its new value node}, fused nodes).

    A group's root maps to the fused node, or for a group with several outputs to a
    ``tuple_get`` of it (as does each other output); the new order places the fused node
    and those ``tuple_get`` nodes where the root was.

    Args:
        order: the plan (after the other passes).
        fed: ids of fed nodes.
        fetches: fetched nodes (a fetched inner member is one of its group's outputs).
        device_ok: whether a node's device has a fusion backend.
        min_size: smallest group worth a kernel (ops, counting the reduction).
        multi_ok: whether a group with this root may have several outputs (None: every group);
            where it may not, an inner member read outside the group ends the group.
    """
    fetched = {id(t) for t in fetches}
    pos = {id(n): k for k, n in enumerate(order)}
    consumers: dict[int, list[Tensor]] = {id(n): [] for n in order}
    controlled: set[int] = set()
    for n in order:
        for i in n.inputs:
            if id(i) in consumers:
                consumers[id(i)].append(n)
        for c in n.control_inputs:
            controlled.add(id(c))
    mutators = [k for k, n in enumerate(order) if n.op.mutates]
    memo: dict[int, bool] = {}
    group_of: dict[int, int] = {}
    groups: list[tuple[list[Tensor], list[Tensor]]] = []
    for n in reversed(order):
        if id(n) in group_of or not _eligible(n, fed, fetched) or id(n) in controlled or not device_ok(n):
            continue
        members = [n]
        extras: list[Tensor] = []  # inner members whose values leave the group
        gid = len(groups)
        group_of[id(n)] = gid
        multi = multi_ok is None or multi_ok(n)
        span = n.inputs[0].shape if n.op in REDUCTIONS else n.shape  # the kernel's iteration shape
        stack = [i for i in (n.inputs[:1] if n.op is R.sum_to_op else n.inputs)]
        while stack:
            i = stack.pop()
            if (id(i) in group_of or id(i) in controlled or i.op not in FUSIBLE
                    or not _eligible(i, fed, fetched) or not device_ok(i) or i.device != n.device):
                continue
            outside = [c for c in consumers.get(id(i), ()) if group_of.get(id(c)) != gid]
            if outside or id(i) in fetched:
                # Another output: computed once, by the group's kernel where the root ran, so every
                # reader outside must run after the root (a reader before it that the group takes in
                # later pushes this node again). Outputs have the iteration shape (one store each).
                if not multi or i.shape != span or any(pos[id(c)] < pos[id(n)] for c in outside):
                    continue
                extras.append(i)
            members.append(i)
            group_of[id(i)] = gid
            stack.extend(i.inputs)
        groups.append((members, extras))
    fused_for: dict[int, Tensor] = {}
    emit: dict[int, list[Tensor]] = {}
    made: list[Tensor] = []
    drop: set[int] = set()
    for members, extras in groups:
        if len(members) < min_size:
            continue
        members.sort(key=lambda m: pos[id(m)])
        extras.sort(key=lambda m: pos[id(m)])
        node = _make_node(members, extras, memo)
        if node is None:
            continue
        lo, hi = pos[id(members[0])], pos[id(members[-1])]
        if any(lo < k < hi for k in mutators) and any(is_storage(i, memo) for i in node.inputs):
            continue  # a variable read by the group may be updated before the group's kernel runs
        root = members[-1]
        if extras:
            gets = [rebuild(m, (node,), (), op=CF.tuple_get_op, attrs={"index": k})
                    for k, m in enumerate([root, *extras])]
            fused_for.update((id(m), t) for m, t in zip([root, *extras], gets))
            emit[id(root)] = [node, *gets]
        else:
            fused_for[id(root)] = node
            emit[id(root)] = [node]
        made.append(node)
        drop.update(id(m) for m in members[:-1])
    new_order: list[Tensor] = []
    for n in order:
        if id(n) in emit:
            new_order += emit[id(n)]
        elif id(n) not in drop:
            new_order.append(n)
    return new_order, fused_for, made


def _make_node(members: list[Tensor], extras: list[Tensor], memo: dict) -> Tensor | None:
    root = members[-1]
    inner = {id(m): j for j, m in enumerate(members)}
    externals: list[Tensor] = []
    ext_index: dict[int, int] = {}

    def ext(t: Tensor) -> tuple:
        if id(t) not in ext_index:
            ext_index[id(t)] = len(externals)
            externals.append(t)
        return ("in", ext_index[id(t)])

    reduce = None
    like_input = None
    elementwise = members[:-1] if root.op in REDUCTIONS else members
    instrs: list[Instr] = []
    member_args: list[tuple] = []
    deps: list[frozenset] = []  # per instruction: the external inputs its value depends on
    for m in elementwise:
        args, spec, dep = [], [], set()
        for i in m.inputs:
            if id(i) in inner:
                args.append(("t", inner[id(i)]))
                spec.append(("t", inner[id(i)]))
                dep |= deps[inner[id(i)]]
                continue
            # Constants stay inputs (not inlined literals): kernels then differ by structure only,
            # and one compiled kernel serves every graph with the same structure.
            args.append(ext(i))
            spec.append(ext(i))
            dep.add(ext_index[id(i)])
        instrs.append(Instr(m.op, tuple(args), tuple(sorted(m.attrs.items())), m.dtype,
                            tuple(i.dtype for i in m.inputs)))
        member_args.append(tuple(spec))
        deps.append(frozenset(dep))
    if root.op in REDUCTIONS:
        if not instrs:
            return None
        src = ("t", inner[id(root.inputs[0])])
        spec = [src]
        if root.op is R.sum_to_op:
            like_input = len(externals)  # a slot of its own: only its shape is read
            externals.append(root.inputs[1])
            spec.append(("in", like_input))
        reduce = (root.op, tuple(sorted(root.attrs.items())))
        member_args.append(tuple(spec))
        if root.dtype not in ("float32", "float64"):
            return None
    if len(externals) > MAX_INPUTS:
        return None
    outputs = tuple(inner[id(m)] for m in extras)
    program = Program(instrs, tuple(t.dtype for t in externals), reduce, like_input, root.dtype,
                      outputs=outputs, out_deps=tuple(tuple(sorted(deps[j])) for j in outputs),
                      members=list(members), member_args=member_args)
    if not extras:
        return rebuild(root, externals, (), op=_fused_op(program, root.aval), attrs={})
    aval = Aval((), None, (root.aval, *[m.aval for m in extras]))
    return Tensor(root.graph, root.name, _fused_op(program, aval), tuple(externals), (), {}, aval, root.device,
                  root.source, root.index)
