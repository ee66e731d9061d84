"""Sub-graphs of control-flow nodes run as plans of their own, inside the run of their node.

A `SubSession` gives a sub-graph's plan what a `GraphSession` gives a top-level one: node
placement (a sub-graph node without a device runs where its control-flow node runs), the
device manager, random generators (keyed by the control-flow node, so a loop body's dropout
draws new numbers each iteration) and the log. Sub-graphs hold no variables: those are
captured as inputs of the control-flow node.

A sub-graph runs many times inside one kernel (a loop body: every iteration), so its plan runs
the lean way (`SubRunner`): the loop binds its captured values and the run control once, and each
call copies the start values, runs the kernels and checks cancellation before each kernel (and
once in a call with no kernels, so every loop iteration is a cancellation point, issue #15). A plan
of one kernel (``i < n``, ``i + 1``) calls that kernel directly.

Contents: SubSession, SubRunner, subgraph_runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...graph.ir import Graph, Tensor
from ...graph.ops.state import constant_op
from .devices import Placement
from .executor import NodeContext, Plan
from .runs import current_run


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


def subgraph_runner(ctx: NodeContext, sub: Any) -> SubRunner:
    """The runner of sub-graph ``sub`` of the node of ``ctx`` (planned once per plan node)."""
    session = SubSession(ctx.session, ctx.node, ctx.place, sub.graph)
    plan = Plan(session, sub.outputs, sub.inputs)  # type: ignore[arg-type]
    _hoist_constants(plan)
    return SubRunner(plan)


Run = Callable[[Sequence[Any]], list]


class SubRunner:
    """A sub-graph's plan, run lean from inside its control-flow node's kernel.

    Call it with all input values, or `bind` the values that stay fixed (a loop's captures) once
    and call the result with the others, each iteration.

    Args:
        plan: the sub-graph's plan (constants hoisted).
    """

    __slots__ = ("plan", "steps")

    def __init__(self, plan: Plan):
        self.plan = plan
        self.steps = [(fn, ins, out, free or None) for fn, ins, out, free in plan.steps]  # None: nothing to free

    def __call__(self, values: Sequence[Any]) -> list:
        """The output values for input values ``values`` (device arrays, as the kernels made them)."""
        plan = self.plan
        return _kernels(plan, self.steps, plan.template, plan.feed_slots, current_run() or _UNTRACKED)(values)

    def bind(self, fixed: Sequence[Any] = (), start: int | None = None) -> Run:
        """``run(other input values) -> output values``, with inputs ``start, start + 1, ...`` fixed to
        ``fixed`` (default: the last ``len(fixed)`` inputs) and the run this thread serves (looked up
        now) checked for cancellation before each kernel of each call."""
        plan = self.plan
        feeds = plan.feed_slots
        if start is None:
            start = len(feeds) - len(fixed)
        end = start + len(fixed)
        base = plan.template.copy()
        for s, v in zip(feeds[start:end], fixed):
            base[s] = v
        heads = feeds[:start] + feeds[end:]
        ctl = current_run() or _UNTRACKED
        if len(plan.steps) == 1:
            run = _one_kernel(plan, base, heads, ctl)
            if run is not None:
                return run
        return _kernels(plan, self.steps, base, heads, ctl)


class _Untracked:
    """The run control of a thread that serves no tracked run: never cancelled."""

    __slots__ = ()
    reason = None
    deadline = None


_UNTRACKED = _Untracked()


def _kernels(plan: Plan, steps: list[tuple], base: list, heads: list[int], ctl: Any) -> Run:
    """The general lean run: `Plan.execute` without its per-call set-up."""
    fetches = plan.fetch_slots
    one = fetches[0] if len(fetches) == 1 else None

    def run(values: Sequence[Any]) -> list:
        vals = base.copy()
        for s, v in zip(heads, values):
            vals[s] = v
        if not steps and (ctl.reason is not None or ctl.deadline is not None):
            ctl.check()
        k = 0
        try:
            for k, (fn, ins, out, free) in enumerate(steps):  # noqa: B007
                if ctl.reason is not None or ctl.deadline is not None:
                    ctl.check()  # cancellation point (issue #15)
                if len(ins) == 1:
                    vals[out] = fn(vals[ins[0]])
                elif len(ins) == 2:
                    vals[out] = fn(vals[ins[0]], vals[ins[1]])
                else:
                    vals[out] = fn(*[vals[i] for i in ins])
                if free:
                    for f in free:
                        vals[f] = None
        except Exception as e:
            _raise(plan, e, k, vals)
        if one is not None:
            return [vals[one]]
        return [vals[s] for s in fetches]

    return run


def _one_kernel(plan: Plan, base: list, heads: list[int], ctl: Any) -> Run | None:
    """The run of a plan of one kernel of at most two inputs fetching its result, calling it directly
    with each input taken from the call's values or fixed; None for other plans."""
    ((fn, ins, out, _),) = plan.steps
    if plan.fetch_slots != [out] or len(ins) > 2:
        return None
    pos = {s: p for p, s in enumerate(heads)}
    src = [pos.get(i) for i in ins]
    fix = [base[i] for i in ins]
    if len(ins) == 0:
        def call(v: Sequence[Any]) -> Any:
            return fn()
    elif len(ins) == 1:
        a, ca = src[0], fix[0]
        if a is None:
            def call(v: Sequence[Any]) -> Any:
                return fn(ca)
        else:
            def call(v: Sequence[Any]) -> Any:
                return fn(v[a])
    else:
        (a, b), (ca, cb) = src, fix
        if a is not None and b is not None:
            def call(v: Sequence[Any]) -> Any:
                return fn(v[a], v[b])
        elif a is not None:
            def call(v: Sequence[Any]) -> Any:
                return fn(v[a], cb)
        elif b is not None:
            def call(v: Sequence[Any]) -> Any:
                return fn(ca, v[b])
        else:
            def call(v: Sequence[Any]) -> Any:
                return fn(ca, cb)

    def run(values: Sequence[Any]) -> list:
        try:
            if ctl.reason is not None or ctl.deadline is not None:
                ctl.check()  # cancellation point (issue #15)
            return [call(values)]
        except Exception as e:
            vals = base.copy()
            for s, v in zip(heads, values):
                vals[s] = v
            _raise(plan, e, 0, vals)
            raise  # unreachable: _raise raises

    return run


def _raise(plan: Plan, e: Exception, k: int, vals: list) -> None:
    """Raise what `Plan.execute` raises when its step ``k`` raised ``e``."""
    err = plan.step_error(e, k, vals)
    if err is e:
        raise e
    raise err from e


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
