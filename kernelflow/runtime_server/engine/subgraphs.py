"""Sub-graphs of control-flow nodes run as plans of their own, inside the run of their node.

A `SubSession` gives a sub-graph's plan what a `GraphSession` gives a top-level one: node
placement (a sub-graph node without a device runs where its control-flow node runs), the
device manager, random generators (keyed by the control-flow node, so a loop body's dropout
draws new numbers each iteration) and the log. Sub-graphs hold no variables: those are
captured as inputs of the control-flow node.

Contents: SubSession, subgraph_runner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...graph.ir import Graph, Tensor
from ...graph.ops.state import constant_op
from .devices import Placement
from .executor import NodeContext, Plan


class SubSession:
    """The session-like view a sub-graph's `Plan` runs against.

    Args:
        parent: the session (or SubSession) of the control-flow node.
        owner: the control-flow node.
        place: where the control-flow node runs.
        graph: the sub-graph.
    """

    def __init__(self, parent: Any, owner: Tensor, place: Placement, graph: Graph):
        self.parent = parent
        self.graph = graph
        self.devices = parent.devices
        self.variables: dict[str, Any] = {}
        self.place = place
        self.prefix = f"{getattr(parent, 'prefix', '')}{owner.name}/"
        self._placements: dict[int, Placement] = {}

    @property
    def name(self) -> str:
        return self.parent.name

    def placement(self, t: Tensor) -> Placement:
        p = self._placements.get(id(t))
        if p is None:
            p = self._placements[id(t)] = self.place if t.device is None else self.devices.resolve(t.device, t.name)
        return p

    def rng_for(self, node: Tensor, xp: Any) -> Any:
        root = self.parent
        while isinstance(root, SubSession):
            root = root.parent
        return root.rng_for(_Named(self.prefix + node.name, node), xp)

    def log_line(self, message: str) -> None:
        self.parent.log_line(message)


class _Named:
    """A node seen under another name (the RNG of a sub-graph node is keyed by its full path)."""

    __slots__ = ("name", "attrs", "index")

    def __init__(self, name: str, node: Tensor):
        self.name = name
        self.attrs = node.attrs
        self.index = node.index


def subgraph_runner(ctx: NodeContext, sub: Any) -> Callable[[list], list]:
    """``run(input values) -> output values`` for sub-graph ``sub`` of the node of ``ctx``."""
    session = SubSession(ctx.session, ctx.node, ctx.place, sub.graph)
    plan = Plan(session, sub.outputs, sub.inputs)  # type: ignore[arg-type]
    _hoist_constants(plan)
    return plan.execute


def _hoist_constants(plan: Plan) -> None:
    """Evaluate the plan's constants once, into its start values: a loop body runs them every iteration."""
    steps, nodes = [], []
    for step, node in zip(plan.steps, plan.step_nodes):
        fn, ins, out, free = step
        if node.op is constant_op and not free:
            value = fn()
            if isinstance(value, np.ndarray):
                value = value.view()
                value.flags.writeable = False  # shared by every iteration; results copy it (kernels/control_flow.py)
            plan.template[out] = value
        else:
            steps.append(step)
            nodes.append(node)
    plan.steps, plan.step_nodes = steps, nodes
