"""Multi-variable optimiser updates: the ``apply_*`` nodes of one optimiser step become one node.

PyTorch calls this foreach / ``multi_tensor_apply``. In a pruned plan, update nodes of the same
op with the same attrs, the same scalar inputs (learning rates) and the same device are
grouped into one `UpdateGroupOp` node, which runs where the group's last member ran; a
backend updates every member's variable and slots in one generated kernel call
(`compiler/multi_update.py` on the CPU, `compiler/cupy_backend.py` on a GPU). A member whose
arrays the kernel does not take (another dtype, non-contiguous storage, a gradient of another
shape) runs its own kernel inside the group node: same results.

A group never changes what a run computes: a member joins only when moving it to the group's
position reorders nothing that depends on it (no node between it and the group's end consumes
it, reads or updates its variables, or is read by a later member through a variable). Members
are consumed only by ``group`` ops or control edges and are not fetched, so the group node can
stand in for each of them.

Contents: ELEMENTWISE, UpdateGroup, UpdateGroupOp, group_updates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..graph.ir import Tensor
from ..graph.ops import state as S
from ..graph.ops import training as T
from ..graph.registry import OpDef
from .passes import rebuild

ELEMENTWISE: dict[OpDef, tuple[str, ...]] = {
    T.apply_gradient_descent_op: ("weight_decay",),
    T.apply_momentum_op: ("momentum", "nesterov", "weight_decay"),
    T.apply_adam_op: ("beta1", "beta2", "epsilon"),
    T.apply_adamw_op: ("beta1", "beta2", "weight_decay"),
    T.apply_rmsprop_op: ("rho", "momentum", "epsilon"),
    T.apply_centered_rmsprop_op: ("rho", "momentum", "epsilon"),
    T.apply_adagrad_op: ("epsilon",),
}
"""Update ops that have a multi-variable kernel, with the attrs a group's members share."""

MAX_MEMBERS = 64
"""Largest group (a kernel is specialised for its member count)."""


@dataclass
class UpdateGroup:
    """What one group node updates.

    Its node's inputs are, for each member, the member's variable, slots and gradient
    (``width`` inputs), then the shared scalar inputs once.

    Attributes:
        op: the members' op (e.g. ``apply_adam``).
        attrs: their shared attrs.
        members: the member nodes, in plan order.
        n_state: inputs per member updated in place (the variable and its slots).
        n_scalars: shared scalar inputs (learning rates).
    """

    op: OpDef
    attrs: dict
    members: list[Tensor] = field(default_factory=list)
    n_state: int = 0
    n_scalars: int = 0

    @property
    def width(self) -> int:
        """Inputs per member in the group node: the variable, its slots and the gradient."""
        return self.n_state + 1

    def member_inputs(self, ins: Sequence, k: int) -> list:
        """Member ``k``'s own inputs (its op's order) out of the group node's inputs ``ins``."""
        w = self.width
        return list(ins[k * w:(k + 1) * w]) + list(ins[len(ins) - self.n_scalars:])


class UpdateGroupOp(OpDef):
    """The op of a group node; `group` says what it updates. Never enters the op registry."""

    group: UpdateGroup


def _group_op(group: UpdateGroup, last: Tensor) -> UpdateGroupOp:
    w, n = group.width, len(group.members)
    mutates = tuple(k * w + j for k in range(n) for j in range(group.n_state))
    op = UpdateGroupOp(name="update_group", inputs=("*inputs",), shape_rule=lambda *a, **k: last.shape,
                       dtype_rule=lambda *a, **k: last.dtype, differentiable=False, stateful=True, alias=True,
                       mutates=mutates, doc=f"{n} x {group.op.name}")
    object.__setattr__(op, "group", group)
    return op


def _root_variable(t: Tensor) -> str | None:
    """The name of the variable whose storage ``t`` may be (a view of), else None."""
    while t.op.alias and t.inputs:
        t = t.inputs[0]
    return t.name if t.op is S.variable_op else None


@dataclass
class _Open:
    """A group being collected."""

    members: list[Tensor] = field(default_factory=list)
    ids: set[int] = field(default_factory=set)
    state: set[str] = field(default_factory=set)  # variables the members update
    reads: set[str] = field(default_factory=set)  # variables whose storage members read otherwise


def group_updates(order: list[Tensor], fed: set[int], fetches: Sequence[Tensor],
                  device_ok: Callable[[Tensor], bool]) -> tuple[list[Tensor], dict[int, Tensor], list[Tensor]]:
    """Group the update nodes of ``order``; returns (new order, {member id: group node}, group nodes).

    Args:
        order: the plan (after the other passes and fusion).
        fed: ids of fed nodes.
        fetches: fetched nodes (never grouped).
        device_ok: whether a node's device has a multi-update backend.
    """
    fetched = {id(t) for t in fetches}
    consumers: dict[int, list[Tensor]] = {}
    for n in order:
        for i in n.inputs:
            consumers.setdefault(id(i), []).append(n)

    def key_of(n: Tensor) -> tuple | None:
        shared = ELEMENTWISE.get(n.op)
        if shared is None or id(n) in fed or id(n) in fetched or not device_ok(n):
            return None
        if any(c.op is not S.group_op for c in consumers.get(id(n), ())):
            return None  # its value is used as data: it stays a node of its own
        n_state = len(n.op.mutates)
        scalars = tuple(id(s) for s in n.inputs[n_state + 1:])
        return (n.op, tuple(n.attrs[a] for a in shared), scalars, n.device, n.dtype)

    closed: list[list[Tensor]] = []
    open_: dict[tuple, _Open] = {}

    def close(key: tuple) -> None:
        g = open_.pop(key)
        if len(g.members) > 1:
            closed.append(g.members)

    for n in order:
        key = key_of(n)
        deps = {id(i) for i in n.inputs} | {id(c) for c in n.control_inputs}
        names = {i.name for i in n.inputs if i.op is S.variable_op}
        if n.op is S.variable_op:
            names.add(n.name)
        written = {n.inputs[p].name for p in n.op.mutates}
        state: set[str] = set()
        reads: set[str] = set()
        if key is not None:
            n_state = len(n.op.mutates)
            state = {n.inputs[j].name for j in range(n_state)}
            reads = {r for r in map(_root_variable, n.inputs[n_state:]) if r is not None}
        for k in list(open_):
            g = open_[k]
            if k == key:
                clash = deps & g.ids or state & (g.state | g.reads) or reads & g.state \
                    or len(g.members) >= MAX_MEMBERS
            else:  # n stays where it is: the group must not move past a node that depends on it
                clash = deps & g.ids or names & g.state or written & (g.state | g.reads)
            if clash:
                close(k)
        if key is None:
            continue
        g = open_.setdefault(key, _Open())
        g.members.append(n)
        g.ids.add(id(n))
        g.state |= state
        g.reads |= reads
    for k in list(open_):
        close(k)

    made_for: dict[int, Tensor] = {}  # last member id -> group node
    subst: dict[int, Tensor] = {}
    made: list[Tensor] = []
    for members in closed:
        node = _make_node(members)
        made_for[id(members[-1])] = node
        made.append(node)
        for m in members:
            subst[id(m)] = node
    new_order = [made_for.get(id(n), n) for n in order if id(n) not in subst or id(n) in made_for]
    return new_order, subst, made


def _make_node(members: list[Tensor]) -> Tensor:
    first, last = members[0], members[-1]
    n_state = len(first.op.mutates)
    group = UpdateGroup(first.op, dict(first.attrs), list(members), n_state, len(first.inputs) - n_state - 1)
    inputs: list[Tensor] = []
    for m in members:
        inputs.extend(m.inputs[:n_state + 1])
    inputs.extend(first.inputs[n_state + 1:])
    control: list[Tensor] = []
    for m in members:
        control.extend(c for c in m.control_inputs if all(c is not x for x in control))
    return rebuild(last, inputs, control, op=_group_op(group, last), attrs={})
