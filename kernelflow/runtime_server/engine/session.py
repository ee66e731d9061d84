"""One graph held by the runtime: its IR, variable storage, RNG states and plan cache.

Runs on one graph are serialised by the session's lock; runs on different graphs may
overlap. Feeds are checked against the fed node's static shape and dtype before anything
runs, so a bad feed changes no variable.

Contents: GraphSession.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from ...graph.ir import Graph, Tensor, Variable
from ...graph.shapes import format_shape
from .devices import DeviceManager, Placement, to_host
from .executor import Plan
from .runs import MAX_KERNEL_ELEMENTS, current_run

log = logging.getLogger("kernelflow.session")


class GraphSession:
    """The server-side state of one named graph.

    Args:
        name: the graph's name.
        devices: the runtime's device manager.
        seed: graph-level seed for random ops.
    """

    # The most elements one kernel may touch (static shapes); the runtime lowers it under a per-run
    # time limit. A kernel cannot be interrupted once it runs, so this is checked before the run.
    max_kernel_elements = MAX_KERNEL_ELEMENTS

    def __init__(self, name: str, devices: DeviceManager, seed: int = 0):
        self.graph = Graph(name, seed=seed)
        self.devices = devices
        self.variables: dict[str, Any] = {}
        self.lock = threading.RLock()
        self._plans: dict[tuple, Plan] = {}
        self._placements: dict[int, Placement] = {}
        self._rngs: dict[str, Any] = {}
        self._keyed: tuple[list[int], dict[str, Any]] | None = None  # see keyed_random
        self.log_lines: list[str] = []
        self.compiler: Any = None  # a kernelflow.compiler.Compiler when the runtime compiles plans
        # Called as persist(since, node_dicts) under the lock after new nodes validate and
        # before extend returns; if it raises, the nodes are taken back (the state dir hook).
        self.persist: Callable[[int, list[dict]], None] | None = None

    @property
    def name(self) -> str:
        return self.graph.name

    # ----------------------------------------------------------------- graph
    def extend(self, node_dicts: Sequence[dict], since: int | None = None) -> int:
        """Add client nodes (validated, all or none; persisted when `persist` is set); returns the new version.

        ``since`` is the version the client built on. Nodes the server has already (a resent
        batch) are checked by name and skipped.

        Raises:
            FailedPreconditionError: when the client is ahead of the server, or another
                client extended the graph meanwhile with different nodes.
        """
        from ...errors import FailedPreconditionError

        with self.lock:
            version = self.graph.version
            if since is None:
                since = version
            if since > version:
                raise FailedPreconditionError(
                    f"graph '{self.name}': client built on version {since} but the runtime has {version}; "
                    "re-attach with rt.graph(name)")
            overlap = min(version - since, len(node_dicts))
            for i in range(overlap):
                d = node_dicts[i]
                if not isinstance(d, dict) or d.get("name") != self.graph.nodes()[since + i].name:
                    raise FailedPreconditionError(
                        f"graph '{self.name}' changed since version {since} (another client added nodes); "
                        "re-attach with rt.graph(name) to see them")
            new = self.graph.extend_from_dicts(node_dicts[overlap:])
            try:
                for t in new:
                    self.placement(t)
                    if isinstance(t, Variable):
                        self.variables[t.name] = self._fresh_storage(t, t.attrs["initial"])
                if new and self.persist is not None:
                    self.persist(version, self.graph.to_dicts(version))
            except BaseException:
                for t in new:
                    self.variables.pop(t.name, None)
                    self._placements.pop(id(t), None)
                self.graph._truncate(version)
                raise
            return self.graph.version

    def placement(self, t: Tensor) -> Placement:
        """Where node ``t`` runs (resolved once)."""
        p = self._placements.get(id(t))
        if p is None:
            p = self._placements[id(t)] = self.devices.resolve(t.device, t.name)
        return p

    def _fresh_storage(self, v: Tensor, value: np.ndarray) -> Any:
        arr = np.array(value, dtype=v.dtype, copy=True, order="C")
        return self.devices.to_device(arr, self.placement(v)) if self.placement(v).backend != "numpy" else arr

    # ----------------------------------------------------------------- variables
    def variable(self, name: str) -> Variable:
        t = self.graph[name] if name in self.graph else None
        if not isinstance(t, Variable):
            raise NotFoundError(f"graph '{self.name}' has no variable named '{name}'")
        return t

    def read_variable(self, name: str) -> np.ndarray:
        """A host copy of a variable's current value."""
        with self.lock:
            self.variable(name)
            return np.array(to_host(self.variables[name]), copy=True)

    def assign_variable(self, name: str, value: Any) -> None:
        """Replace a variable's value; shape and dtype must match exactly."""
        with self.lock:
            v = self.variable(name)
            arr = np.asarray(value)
            if arr.dtype.name != v.dtype or arr.shape != v.shape:
                raise InvalidArgumentError(
                    f"variable.assign: '{name}' is {v.dtype}{format_shape(v.shape)}; got "
                    f"{arr.dtype.name}{format_shape(arr.shape)}", node=name)
            self.variables[name] = self._fresh_storage(v, arr)

    def snapshot_variables(self, locked: bool = True) -> dict[str, np.ndarray]:
        """Host copies of every variable, taken together under the lock (a consistent checkpoint).

        ``locked=False`` copies without the lock: only for a run known not to have updated any
        variable yet (shutdown with a run stuck in a kernel).
        """
        if not locked:
            return self._copy_variables()
        with self.lock:
            return self._copy_variables()

    def _copy_variables(self) -> dict[str, np.ndarray]:
        out = {}
        for name, value in list(self.variables.items()):
            host = to_host(value)
            out[name] = host.copy() if host is value else host  # runs update numpy storage in place
        return out

    def load_variables(self, arrays: dict[str, np.ndarray], strict: bool = True) -> dict[str, list[str]]:
        """Set variables from ``arrays`` (a checkpoint); returns ``{"restored", "missing", "unknown"}``.

        Variables the checkpoint lacks keep their values ("missing"); arrays naming no
        variable are ignored ("unknown"). With ``strict``, any shape or dtype mismatch raises
        before anything changes; without, mismatched variables are skipped with a warning.

        Raises:
            InvalidArgumentError: (strict) a checkpoint array does not fit its variable.
        """
        with self.lock:
            restored, unknown, bad = [], [], []
            for name, arr in arrays.items():
                t = self.graph[name] if name in self.graph else None
                if not isinstance(t, Variable):
                    unknown.append(name)
                elif arr.dtype.name != t.dtype or arr.shape != t.shape:
                    bad.append(f"'{name}' is {t.dtype}{format_shape(t.shape)}, the checkpoint has "
                               f"{arr.dtype.name}{format_shape(arr.shape)}")
                else:
                    restored.append(name)
            if bad and strict:
                raise InvalidArgumentError(f"graph '{self.name}': checkpoint does not fit: {'; '.join(bad)}")
            for msg in bad:
                log.warning("graph '%s': not restoring %s", self.name, msg)
            for name in restored:
                self.variables[name] = self._fresh_storage(self.graph[name], arrays[name])
            missing = [n for n in self.variables if n not in arrays]
            return {"restored": restored, "missing": missing, "unknown": unknown}

    # ----------------------------------------------------------------- running
    def plan(self, fetch_names: Sequence[str], feed_names: Sequence[str], compile: bool = True) -> Plan:
        """The cached plan for this signature, built on first use (optimised by `compiler` if set and ``compile``)."""
        compiler = self.compiler if compile else None
        key = (tuple(fetch_names), tuple(feed_names), compiler is not None)
        plan = self._plans.get(key)
        if plan is None:
            fetches = [self._node(n, "fetch") for n in fetch_names]
            for t in fetches:
                if t.aval.parts is not None:
                    raise InvalidArgumentError(f"graph.run: fetch '{t.name}' is a {t.op.name} node, which yields "
                                               f"{len(t.aval.parts)} values; fetch its tuple_get outputs",
                                               node=t.name)
            feeds = [self._node(n, "feed") for n in feed_names]
            if len(set(feed_names)) != len(feed_names):
                raise InvalidArgumentError(f"graph.run: a node is fed twice in {list(feed_names)}")
            plan = Plan(self, fetches, feeds, compiler)
            self._check_costs(plan)
            self._plans[key] = plan
        return plan

    def _check_costs(self, plan: Plan) -> None:
        """ResourceExhaustedError for a kernel whose statically known size is over the limit."""
        limit = self.max_kernel_elements
        for n in plan.step_nodes:
            cost = max([_static_size(n)] + [_static_size(i) for i in n.inputs])
            if cost > limit:
                raise ResourceExhaustedError(
                    f"graph.run: '{n.name}' ({n.op.name}) would touch {cost} elements, over the limit of {limit} "
                    "per kernel (a kernel cannot be cancelled once it runs; the limit follows kernelflow serve "
                    "--max-run-seconds); split the work into smaller pieces", node=n.name, source=n.source)

    def _node(self, name: Any, what: str) -> Tensor:
        if not isinstance(name, str) or name not in self.graph:
            raise NotFoundError(f"graph.run: {what} '{name}' is not a node of graph '{self.name}'")
        return self.graph[name]

    def run(self, fetch_names: Sequence[str], feed_names: Sequence[str], feed_values: Sequence[Any],
            compile: bool = True) -> list:
        """Run the plan for (fetches, feeds) with ``feed_values``; returns host arrays."""
        with self.lock:
            plan = self.plan(fetch_names, feed_names, compile)
            values = [self._check_feed(t, v) for t, v in zip(plan.feeds, feed_values)]
            ctl = current_run()
            if ctl is not None:
                ctl.attach(plan)
            return plan.run(values, ctl)

    def _check_feed(self, t: Tensor, value: Any) -> Any:
        arr = value if isinstance(value, np.ndarray) else np.asarray(value)
        if arr.dtype.name != t.dtype:
            raise InvalidArgumentError(
                f"feed for '{t.name}': expected dtype {t.dtype}; got {arr.dtype.name} (shape "
                f"{format_shape(arr.shape)}); convert it with .astype('{t.dtype}')", node=t.name, source=t.source)
        shape = t.shape
        if arr.ndim != len(shape) or any(d is not None and d != a for d, a in zip(shape, arr.shape)):
            raise InvalidArgumentError(
                f"feed for '{t.name}': expected shape {format_shape(shape)}; got {format_shape(arr.shape)}",
                node=t.name, source=t.source)
        place = self.placement(t)
        return arr if place.backend == "numpy" else self.devices.to_device(arr, place)

    def rng_for(self, node: Tensor, xp: Any) -> Any:
        """The random generator of ``node``: seeded by (graph seed, op seed or node index), or, inside
        `keyed_random`, by (key, graph seed, op seed or node index)."""
        if self._keyed is not None:
            key, rngs = self._keyed
            rng = rngs.get(node.name)
            if rng is None:
                rng = rngs[node.name] = _generator(xp, [*key, *self._node_seed(node)])
            return rng
        rng = self._rngs.get(node.name)
        if rng is None:
            rng = self._rngs[node.name] = _generator(xp, self._node_seed(node))
        return rng

    def _node_seed(self, node: Tensor) -> list[int]:
        op_seed = node.attrs.get("seed")
        return [int(self.graph.seed) & 0xFFFFFFFF, int(op_seed if op_seed is not None else node.index)]

    @contextmanager
    def keyed_random(self, key: Sequence[int]) -> Iterator[None]:
        """Inside the block, random ops draw from fresh streams seeded by ``key`` (non-negative ints)
        plus the usual (graph seed, op seed): the same key gives the same draws, and the graph's
        own streams (used by every other run) do not advance. Hold `lock` around the block.

        The data-parallel loop keys each step by (job seed, rank, step), so that ranks draw
        different dropout masks and a step draws the same ones whenever it is run again.

        Raises:
            InvalidArgumentError: a key entry that is not a non-negative integer.
        """
        if any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 0 for k in key):
            raise InvalidArgumentError(f"keyed_random: the key must be non-negative integers; got {list(key)}")
        prev = self._keyed
        self._keyed = ([int(k) for k in key], {})
        try:
            yield
        finally:
            self._keyed = prev

    def log_line(self, message: str) -> None:
        self.log_lines.append(message)
        del self.log_lines[:-1000]
        log.info("[%s] %s", self.name, message)


def _generator(xp: Any, seed: list[int]) -> Any:
    if xp is np:
        return np.random.Generator(np.random.PCG64(seed))
    if len(seed) == 2:  # the graph's own streams: as they always were seeded
        return xp.random.default_rng(seed[0] * 1_000_003 + seed[1])
    return xp.random.default_rng(int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]))


def _static_size(t: Tensor) -> int:
    """Elements of ``t``'s static shape (0 when a dim is unknown)."""
    shape = getattr(t, "shape", None)
    if not isinstance(shape, tuple):
        return 0
    n = 1
    for d in shape:
        if d is None:
            return 0
        n *= d
    return n
