"""The executor: compiles (fetches, feeds) into a cached `Plan` and runs it.

A plan is the subgraph the fetches need (pruned at fed nodes), in an order that respects
data edges, control edges, and the variable rule of DESIGN.md: a plain read of a variable
sees its value from before the run's updates. Updates work in place, so every consumer of
a pre-update read (or of a view of it) is ordered before the update. Each intermediate
buffer is dropped right after its last use. Later runs of the same signature reuse the plan.

A run may watch fetches (`Ready`): a callback hears each watched fetch's value right after the
kernel that makes it, while the rest of the plan still runs (the data-parallel loop starts a
gradient bucket's all-reduce that way during the backward pass). Unwatched runs use the plain steps.

Contents: NodeContext, Ready, Plan.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import InternalError, InvalidArgumentError, KernelflowError, kernel_error
from ...graph.ir import Tensor
from ...graph.ops.state import placeholder_op, read_variable_op, variable_op
from ...graph.shapes import format_shape
from ...kernels.registry import array_module, get_kernel
from .devices import Placement, to_host
from .runs import current_run

if TYPE_CHECKING:
    from .session import GraphSession

log = logging.getLogger("kernelflow.executor")


class NodeContext:
    """What a stateful kernel may touch: its node, the variable storage, its RNG, the log."""

    __slots__ = ("session", "node", "place", "xp", "_const", "plan_nodes", "_subs")

    def __init__(self, session: GraphSession, node: Tensor, place: Placement, xp: Any):
        self.session = session
        self.node = node
        self.place = place
        self.xp = xp
        self._const: Any = None
        self.plan_nodes: list[Tensor] = []
        self._subs: dict[int, Any] = {}

    def storage(self, var: Tensor) -> Any:
        """The live storage array of variable node ``var`` (kernels update it in place)."""
        return self.session.variables[var.name]

    def device_constant(self, value: np.ndarray) -> Any:
        """``value`` on this node's device, converted once."""
        if self._const is None:
            self._const = self.session.devices.to_device(value, self.place)
        return self._const

    def rng(self) -> Any:
        """This node's random generator (seeded by graph seed and op seed; advances per run)."""
        return self.session.rng_for(self.node, self.xp)

    def log(self, message: str) -> None:
        """Write to the runtime's log (the ``print`` op)."""
        self.session.log_line(message)

    # Control flow (kernels/control_flow.py): sub-graphs run as plans of their own.
    def consumers(self) -> list[Tensor]:
        """The nodes of this run's plan that take this node's value as an input."""
        return [c for c in self.plan_nodes if any(i is self.node for i in c.inputs)]

    def subgraph(self, sub: Any) -> Any:
        """``run(values) -> values`` for sub-graph ``sub`` of this node, planned once (engine/subgraphs.py)."""
        run = self._subs.get(id(sub))
        if run is None:
            from .subgraphs import subgraph_runner

            run = self._subs[id(sub)] = subgraph_runner(self, sub)
        return run


@dataclass
class Ready:
    """A per-run hook: ``callback(i, value)`` right after the kernel that makes fetch ``i`` runs.

    Args:
        fetches: positions in the plan's fetch list to watch (a position whose value is fed, or
            that no kernel makes, is reported before the first kernel).
        callback: called once per watched position, in the order the plan makes them, with the
            value as its kernel made it (a device array on a GPU; no copy). The value stays
            unchanged until the run returns; the callback must not modify it. What it raises
            ends the run like a failing kernel.
    """

    fetches: Sequence[int]
    callback: Callable[[int, Any], None]


def _storage_alias(n: Tensor, memo: dict[int, bool]) -> bool:
    """True when ``n``'s value may be (a view of) a variable's storage or a constant."""
    key = id(n)
    if key not in memo:
        memo[key] = n.op.alias and (not n.inputs or _storage_alias(n.inputs[0], memo))
    return memo[key]


class Plan:
    """An executable schedule for one (fetches, feeds) signature of one graph.

    Args:
        session: the graph's session (variables, devices, RNGs).
        fetches: tensors to return, in order (duplicates allowed).
        feeds: tensors whose values the caller supplies, in the order `run` receives them.
        compiler: a `kernelflow.compiler.Compiler` to optimise the plan with (None: run it as built).

    Raises:
        InvalidArgumentError: naming a placeholder the fetches need that is not fed.
        FailedPreconditionError: naming a node placed on a missing device.
    """

    def __init__(self, session: GraphSession, fetches: Sequence[Tensor], feeds: Sequence[Tensor],
                 compiler: Any = None):
        self.session = session
        self.fetches = list(fetches)
        self.feeds = list(feeds)
        fed = {id(t) for t in feeds}
        nodes = self._needed(fed)
        for n in nodes:
            if n.op is placeholder_op and id(n) not in fed:
                raise InvalidArgumentError(
                    f"placeholder '{n.name}' ({n.dtype}{format_shape(n.shape)}) must be fed: the fetches "
                    f"depend on it", node=n.name, source=n.source)
        order = self._schedule(nodes, fed)
        self.compiler = compiler if not self._copy_reads else None
        self.optimized: Any = None
        if self.compiler is not None:
            self.optimized = self.compiler.optimize(order, fed, self.fetches, session.placement)
            order, self.fetches = self.optimized.order, self.optimized.fetches
        self.order = order
        self._compile(order, fed)

    # ----------------------------------------------------------------- planning
    def _needed(self, fed: set[int]) -> list[Tensor]:
        seen: dict[int, Tensor] = {id(t): t for t in self.feeds}  # unused feeds are allowed, as in TF
        stack = list(self.fetches)
        while stack:
            t = stack.pop()
            if id(t) in seen:
                continue
            seen[id(t)] = t
            if id(t) not in fed:
                stack.extend(t.inputs)
            stack.extend(t.control_inputs)
        return sorted(seen.values(), key=lambda t: t.index)

    def _schedule(self, nodes: list[Tensor], fed: set[int]) -> list[Tensor]:
        in_plan = {id(n) for n in nodes}
        consumers: dict[int, list[Tensor]] = {id(n): [] for n in nodes}
        for n in nodes:
            if id(n) in fed:
                continue
            for i in n.inputs + n.control_inputs:
                if id(i) in in_plan:
                    consumers[id(i)].append(n)
        extra = self._update_edges(nodes, consumers, fed)
        order = _kahn(nodes, consumers, extra, fed)
        if order is None:
            # Conflicting update orders: fall back to copying variable reads (see NodeContext).
            log.warning("variable updates in one run conflict in order; reads are copied instead")
            self._copy_reads = True
            order = _kahn(nodes, consumers, {}, fed)
            if order is None:
                raise InternalError("graph has a cycle")
        else:
            self._copy_reads = False
        return order

    def _update_edges(self, nodes: list[Tensor], consumers: dict[int, list[Tensor]],
                      fed: set[int]) -> dict[int, list[Tensor]]:
        """Extra edges reader -> update, so pre-update reads happen before in-place updates."""
        updates: dict[int, list[Tensor]] = {}
        for n in nodes:
            if id(n) in fed:
                continue
            for pos in n.op.mutates:
                updates.setdefault(id(n.inputs[pos]), []).append(n)
        extra: dict[int, list[Tensor]] = {}
        self._copy_vars: set[int] = set()
        if not updates:
            return extra
        fetched = {id(t) for t in self.fetches}
        by_id = {id(n): n for n in nodes}
        for var_id, ups in updates.items():
            var = by_id[var_id]
            # Values that are the pre-update read or views of it.
            aliases = [var]
            k = 0
            while k < len(aliases):
                for c in consumers[id(aliases[k])]:
                    if c.op.alias and not c.op.mutates and c.op is not read_variable_op and c.inputs \
                            and c.inputs[0] is aliases[k]:
                        aliases.append(c)
                k += 1
            if any(id(a) in fetched for a in aliases):
                self._copy_vars.add(var_id)  # the fetched pre-update value must survive the update
            up_ids = {id(u) for u in ups}
            for u in ups:
                after_u = _descendants(u, consumers)
                for a in aliases:
                    for c in consumers[id(a)]:
                        if id(c) in up_ids or c in aliases:
                            continue
                        if id(c) in after_u:
                            # c reads the pre-update value but must run after the update: copy the read.
                            self._copy_vars.add(var_id)
                            continue
                        extra.setdefault(id(c), []).append(u)
        return extra

    def _compile(self, order: list[Tensor], fed: set[int]) -> None:
        session = self.session
        slot = {id(n): i for i, n in enumerate(order)}
        self.nslots = len(order)
        self.feed_slots = [slot[id(t)] for t in self.feeds]
        self.fetch_slots = [slot[id(t)] for t in self.fetches]
        self.places: list[Placement] = []
        last_use: dict[int, int] = {}
        steps_nodes = [n for n in order if id(n) not in fed]
        for k, n in enumerate(steps_nodes):
            for i in n.inputs:
                last_use[slot[id(i)]] = k
        keep = set(self.fetch_slots)
        frees: dict[int, list[int]] = {}
        for s, k in last_use.items():
            if s not in keep:
                frees.setdefault(k, []).append(s)
        place_of: dict[int, Placement] = {}
        for t in self.feeds:
            place_of[id(t)] = session.placement(t)
        self.steps: list[tuple] = []
        self.step_nodes = steps_nodes
        for k, n in enumerate(steps_nodes):
            place = session.placement(n)
            place_of[id(n)] = place
            xp = array_module(place.backend)
            entry = self.compiler.kernel_for(n, place.backend) if self.compiler else get_kernel(n.op, place.backend)
            ctx = NodeContext(session, n, place, xp) if entry.needs_ctx else None
            if ctx is not None:
                ctx.plan_nodes = steps_nodes
            attrs = n.attrs
            if n.op is variable_op:
                attrs = {"initial": None, "trainable": attrs.get("trainable", True)}
            fn = entry.bind(xp, attrs, ctx)
            if n.op is variable_op and (self._copy_reads or id(n) in self._copy_vars):
                fn = _copying(fn)
            moves = [place_of[id(i)] != place for i in n.inputs]
            if any(moves):
                fn = _moving(fn, session.devices, place, moves)
            ins = tuple(slot[id(i)] for i in n.inputs)
            self.steps.append((fn, ins, slot[id(n)], tuple(frees.get(k, ()))))
        self.template: list[Any] = [None] * self.nslots  # slot values at the start of a run
        self.gpu = any(p.backend != "numpy" for p in place_of.values())
        self.cuda_graphs: Any = None
        if self.gpu and getattr(session.devices, "cuda_graphs", False):
            from .cuda_graphs import CudaGraphs

            self.cuda_graphs = CudaGraphs(self)
        memo: dict[int, bool] = {}
        self.copy_fetch = [_storage_alias(t, memo) for t in self.fetches]

    # ----------------------------------------------------------------- running
    def run(self, feed_values: Sequence[Any], control: Any = None, steps: list[tuple] | None = None,
            ready: Ready | None = None) -> list[Any]:
        """Execute the plan; returns host numpy arrays (None for ops with no value).

        ``control`` (an engine.runs.RunControl) is told each kernel before it runs and raises
        to stop a cancelled run between kernels. ``steps`` replaces the plan's steps for this run
        (`run_profiled` wraps them). ``ready`` watches fetches as they are made (see `Ready`).
        """
        with np.errstate(all="ignore"):  # NaN and Inf are values, not crashes
            vals = None
            if self.cuda_graphs is not None and steps is None and ready is None:
                vals = self.cuda_graphs.run(feed_values, control)
            if vals is None:
                vals = self.execute(feed_values, control, steps, ready)
        out_vals = []
        for v, copy in zip(vals, self.copy_fetch):
            if v is not None:
                v = to_host(v) if self.gpu else v
                if not isinstance(v, np.ndarray):
                    v = np.asarray(v)
                elif copy:
                    v = v.copy()
            out_vals.append(v)
        return out_vals

    def execute(self, feed_values: Sequence[Any], control: Any = None, steps: list[tuple] | None = None,
                ready: Ready | None = None) -> list[Any]:
        """Run the steps (``steps``: in place of the plan's); returns the fetches' values as the kernels
        made them (device arrays).

        ``control``: see `run`. Without one, a run this thread serves (a sub-graph of a
        control-flow op) is still checked between kernels, its progress left alone. ``ready``:
        see `Ready`.
        """
        vals = self.template.copy()
        for s, v in zip(self.feed_slots, feed_values):
            vals[s] = v
        if ready is not None:
            steps = self._watching(steps or self.steps, ready, vals)
        nested = current_run() if control is None else None
        k = 0
        try:
            for k, (fn, ins, out, free) in enumerate(steps or self.steps):  # noqa: B007
                if control is not None:
                    control.at(k)  # cancellation point (issue #15)
                elif nested is not None:
                    nested.check()
                if len(ins) == 1:
                    vals[out] = fn(vals[ins[0]])
                elif len(ins) == 2:
                    vals[out] = fn(vals[ins[0]], vals[ins[1]])
                else:
                    vals[out] = fn(*[vals[i] for i in ins])
                for f in free:
                    vals[f] = None
        except KernelflowError as e:
            self.step_error(e, k, vals)  # names the node on the error itself
            raise
        except Exception as e:  # a kernel failed: name the node and the input shapes
            raise self.step_error(e, k, vals) from e
        return [vals[s] for s in self.fetch_slots]

    def step_error(self, e: Exception, k: int, vals: list[Any]) -> Exception:
        """What a run raises when step ``k`` raised ``e`` (slot values ``vals``): ``e`` itself if it is a
        KernelflowError (now naming the node), else a typed error naming the node and its input shapes.

        `execute` and the lean sub-plan path (engine/subgraphs.py) raise it.
        """
        node = self.step_nodes[k]
        ins = self.steps[k][1]
        return kernel_error(node.name, node.op.name, node.source, e,
                            lambda: ", ".join(f"{i.name}: {_describe(vals[s])}" for i, s in zip(node.inputs, ins)))

    def ready_steps(self, fetches: Sequence[int]) -> list[int]:
        """For each fetch position: the index of the step that makes its value (-1: fed or made by none)."""
        made = getattr(self, "_made_by", None)
        if made is None:
            made = self._made_by = {out: k for k, (_, _, out, _) in enumerate(self.steps)}
        return [made.get(self.fetch_slots[i], -1) for i in fetches]

    def _watching(self, steps: list[tuple], ready: Ready, vals: list[Any]) -> list[tuple]:
        """``steps`` with the callback after each step that makes a watched fetch; reports the others now."""
        at: dict[int, list[int]] = {}
        for i, k in zip(ready.fetches, self.ready_steps(ready.fetches)):
            at.setdefault(k, []).append(i)
        for i in at.pop(-1, ()):
            ready.callback(i, vals[self.fetch_slots[i]])
        if not at:
            return steps
        steps = list(steps)
        for k, positions in at.items():
            fn, ins, out, free = steps[k]
            steps[k] = (_reporting(fn, ready.callback, positions), ins, out, free)
        return steps

    def run_profiled(self, feed_values: Sequence[Any]) -> tuple[list[Any], list[tuple[Tensor, str, float, float]]]:
        """`run`, timing each step: (outputs, [(node, device, start, end)]) with ``time.time()``
        seconds, host side (a GPU kernel's time is its launch unless it synchronises)."""
        times: list[tuple[Tensor, str, float, float]] = []

        def timed(fn: Any, node: Tensor, device: str) -> Any:
            def call(*args: Any) -> Any:
                t0 = time.time()
                out = fn(*args)
                times.append((node, device, t0, time.time()))
                return out
            return call

        steps = [(timed(fn, n, self.session.placement(n).name), ins, out, free)
                 for (fn, ins, out, free), n in zip(self.steps, self.step_nodes)]
        return self.run(feed_values, steps=steps), times


def _describe(v: Any) -> str:
    if v is None:
        return "None"
    return f"{getattr(v, 'dtype', type(v).__name__)}{tuple(getattr(v, 'shape', ()))}"


def _reporting(fn: Any, callback: Callable[[int, Any], None], positions: list[int]) -> Any:
    def call(*args: Any) -> Any:
        out = fn(*args)
        for i in positions:
            callback(i, out)
        return out

    return call


def _copying(fn: Any) -> Any:
    return lambda: fn().copy()


def _moving(fn: Any, devices: Any, place: Placement, moves: list[bool]) -> Any:
    def call(*args: Any) -> Any:
        return fn(*[devices.to_device(a, place) if m else a for a, m in zip(args, moves)])

    return call


def _descendants(u: Tensor, consumers: dict[int, list[Tensor]]) -> set[int]:
    out: set[int] = set()
    stack = [u]
    while stack:
        t = stack.pop()
        for c in consumers.get(id(t), ()):
            if id(c) not in out:
                out.add(id(c))
                stack.append(c)
    return out


def _kahn(nodes: list[Tensor], consumers: dict[int, list[Tensor]], extra: dict[int, list[Tensor]],
          fed: set[int]) -> list[Tensor] | None:
    """Topological order by creation index among ready nodes; None on a cycle."""
    indeg = {id(n): 0 for n in nodes}
    succ: dict[int, list[Tensor]] = {id(n): list(consumers[id(n)]) for n in nodes}
    for src, targets in extra.items():
        succ[src].extend(targets)
    for targets in succ.values():
        for t in targets:
            indeg[id(t)] += 1
    heap = [(n.index, id(n), n) for n in nodes if indeg[id(n)] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, _, n = heapq.heappop(heap)
        order.append(n)
        for c in succ[id(n)]:
            indeg[id(c)] -= 1
            if indeg[id(c)] == 0:
                heapq.heappush(heap, (c.index, id(c), c))
    return order if len(order) == len(nodes) else None
