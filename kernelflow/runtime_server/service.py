"""The runtime's RPC methods, independent of transport: the same table serves the TCP
server and the in-process transport. Params are always a list; results are msgpack-able
(maps, lists, scalars, ndarrays).

Contents: PROTOCOL_VERSION, RuntimeService.
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import FailedPreconditionError, InvalidArgumentError, KernelflowError, NotFoundError
from .datasets import DatasetStore
from .engine.compile_options import make_compiler, register_plan_method, run_options
from .engine.devices import DeviceManager
from .engine.session import GraphSession
from .engine.summaries import register as register_summaries
from .persist.state import StateDir
from .serving.models import register as register_models
from .training.jobs import JobManager

PROTOCOL_VERSION = 1

log = logging.getLogger("kernelflow.service")


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise InvalidArgumentError(f"{what} must be a non-empty string; got {v!r}")
    return v


def _list(v: Any, what: str) -> list:
    if not isinstance(v, (list, tuple)):
        raise InvalidArgumentError(f"{what} must be a list; got {type(v).__name__}")
    return list(v)


class RuntimeService:
    """Graphs, variables and runs, behind a table of named methods.

    Args:
        device: default device for nodes with none ("cpu", "gpu:N" or "auto").
        soft_placement: run nodes that ask for a missing GPU on the CPU instead of failing.
        state_dir: where graphs, checkpoints, datasets and job histories persist (None: memory
            only, and ``graph.save`` / ``graph.restore`` answer FailedPreconditionError). Given,
            the dir is locked to this runtime and everything in it is loaded now.
        compile: "on" (optimise plans, fused kernels compile in the background), "sync" (compile
            before the first run of a plan), "off"; None: ``$KERNELFLOW_COMPILE``, default "on".

    Raises:
        FailedPreconditionError: another live server holds ``state_dir``.
    """

    def __init__(self, device: str = "cpu", soft_placement: bool = False, state_dir: str | None = None,
                 compile: str | None = None):
        self.devices = DeviceManager(device, soft_placement)
        self.compiler = make_compiler(compile)
        self.state: StateDir | None = StateDir(state_dir) if state_dir else None
        self.graphs: dict[str, GraphSession] = {}
        self._lock = threading.Lock()
        self._peer_methods: set[str] = set()
        self._peer_listeners: list[Callable[[Any], None]] = []
        self.methods: dict[str, Callable[..., Any]] = {
            "info": self.info,
            "graph.list": self.graph_list,
            "graph.open": self.graph_open,
            "graph.delete": self.graph_delete,
            "graph.extend": self.graph_extend,
            "graph.get": self.graph_get,
            "graph.run": self.graph_run,
            "variable.read": self.variable_read,
            "variable.assign": self.variable_assign,
            "graph.save": self.graph_save,
            "graph.checkpoints": self.graph_checkpoints,
            "graph.restore": self.graph_restore,
        }
        self.datasets = DatasetStore(self)
        self.jobs = JobManager(self)
        self.models = register_models(self)  # model.* methods (issue #7)
        register_summaries(self)  # tensor.summary (issue #6)
        register_plan_method(self)  # graph.plan (issue #16)
        self._is_shut_down = False
        if self.state is not None:
            self.state.lock()
            self._load_state()

    def register(self, name: str, fn: Callable[..., Any], *, wants_peer: bool = False) -> None:
        """Add an RPC method; with ``wants_peer`` it is called with ``peer=`` the caller's peer.

        A peer is the caller's connection: ``peer.notify(method, params)`` (thread-safe,
        never blocks) pushes a notification to it, ``peer.closed`` tells whether it is gone.
        """
        self.methods[name] = fn
        if wants_peer:
            self._peer_methods.add(name)

    def on_peer_closed(self, listener: Callable[[Any], None]) -> None:
        """Call ``listener(peer)`` when a peer disconnects (e.g. to drop its subscriptions)."""
        self._peer_listeners.append(listener)

    def peer_closed(self, peer: Any) -> None:
        """Called by the transport when a peer is gone."""
        for listener in list(self._peer_listeners):
            try:
                listener(peer)
            except Exception:
                log.error("peer-closed listener failed", exc_info=True)

    def call(self, method: str, params: list, peer: Any = None) -> Any:
        """Dispatch one request from ``peer`` (a connection; None when no notifications can go back).

        Raises:
            NotFoundError: for an unknown method.
            InvalidArgumentError: for params that are not a list or do not fit the method.
        """
        fn = self.methods.get(method) if isinstance(method, str) else None
        if fn is None:
            raise NotFoundError(f"unknown method {method!r}; known: {sorted(self.methods)}")
        if not isinstance(params, (list, tuple)):
            raise InvalidArgumentError(f"{method}: params must be an array; got {type(params).__name__}")
        try:
            if method in self._peer_methods:
                return fn(*params, peer=peer)
            return fn(*params)
        except TypeError as e:
            if "positional argument" in str(e) or "takes" in str(e):
                raise InvalidArgumentError(f"{method}: wrong number of params ({len(params)}): {e}") from e
            raise

    def session(self, name: Any) -> GraphSession:
        """The session of graph ``name``, or NotFoundError."""
        try:
            return self.graphs[name]
        except (KeyError, TypeError):
            raise NotFoundError(f"no graph named {name!r}; graphs: {sorted(self.graphs)}") from None

    # ----------------------------------------------------------------- methods
    def info(self) -> dict:
        """Version, protocol, devices, memory in use, graphs and the method list."""
        with self._lock:  # graph.open may add a graph meanwhile
            sessions = list(self.graphs.values())
        nbytes = sum(int(getattr(a, "nbytes", 0)) for s in sessions for a in list(s.variables.values()))
        return {
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "backend": "numpy" + (" + cupy" if self.devices.gpu_count() else ""),
            "numpy": np.__version__,
            "python": platform.python_version(),
            "default_device": self.devices.default,
            "state_dir": str(self.state.root) if self.state is not None else None,
            "devices": self.devices.devices(),
            "memory": {"variables_bytes": nbytes, **self.devices.memory_in_use()},
            "graphs": sorted(s.name for s in sessions),
            "methods": sorted(self.methods),
        }

    def graph_list(self) -> list[dict]:
        """Every graph with its version and variable count."""
        with self._lock:
            sessions = list(self.graphs.values())
        return [{"name": s.name, "version": s.graph.version, "variables": len(s.variables)} for s in sessions]

    def graph_open(self, name: str, seed: int = 0) -> dict:
        """Create the graph if needed; returns ``{"name", "version", "created"}``."""
        name = _str(name, "graph.open: name")
        with self._lock:
            created = name not in self.graphs
            if created:
                s = self._new_session(name, int(seed))
                if self.state is not None:  # the graph exists on disk before the client hears of it
                    self.state.append_graph_nodes(name, s.graph.seed, 0, [])
                self.graphs[name] = s
            s = self.graphs[name]
        return {"name": name, "version": s.graph.version, "created": created, "seed": s.graph.seed}

    def graph_delete(self, name: str) -> bool:
        """Delete a graph and its variables."""
        with self._lock:
            s = self.session(name)
            with s.lock:  # waits for a run or extend in flight
                if self.state is not None:
                    self.state.delete_graph(name)
                s.persist = _deleted_graph
                del self.graphs[name]
        return True

    def graph_extend(self, name: str, since: int, nodes: list) -> int:
        """Add nodes built on version ``since``; returns the new version."""
        return self.session(name).extend(_list(nodes, "graph.extend: nodes"), since)

    def graph_get(self, name: str, since: int = 0) -> dict:
        """The definition from version ``since``: ``{"name", "version", "seed", "nodes"}``."""
        s = self.session(name)
        with s.lock:
            return {"name": s.name, "version": s.graph.version, "seed": s.graph.seed,
                    "nodes": s.graph.to_dicts(int(since))}

    def graph_run(self, name: str, since: int, nodes: list, fetches: list, feed_names: list,
                  feed_values: list, options: dict | None = None) -> list:
        """Extend with piggy-backed ``nodes`` (if any), then run; returns one value per fetch.

        ``options`` (optional): ``{"compile": bool}`` (False runs the plan as built, unoptimised).
        """
        compile_on = run_options(options)
        s = self.session(name)
        if nodes:
            s.extend(_list(nodes, "graph.run: nodes"), since)
        feed_names = _list(feed_names, "graph.run: feed names")
        feed_values = _list(feed_values, "graph.run: feed values")
        if len(feed_names) != len(feed_values):
            raise InvalidArgumentError(f"graph.run: {len(feed_names)} feed names but {len(feed_values)} values")
        return s.run(_list(fetches, "graph.run: fetches"), feed_names, feed_values, compile=compile_on)

    def variable_read(self, name: str, var: str) -> np.ndarray:
        """A variable's current value."""
        return self.session(name).read_variable(var)

    def variable_assign(self, name: str, var: str, value: Any) -> bool:
        """Set a variable's value (same shape and dtype)."""
        self.session(name).assign_variable(var, value)
        return True

    # ----------------------------------------------------------------- persistence
    def _new_session(self, name: str, seed: int) -> GraphSession:
        s = GraphSession(name, self.devices, seed=seed)
        s.compiler = self.compiler
        return self._adopt(s) if self.state is not None else s

    def _require_state(self, method: str) -> StateDir:
        if self.state is None:
            raise FailedPreconditionError(f"{method}: this runtime has no state dir to keep checkpoints in; start the "
                                          "server with `kernelflow serve --state-dir DIR` (kf.connect() with no URL "
                                          "starts one that has)")
        return self.state

    def graph_save(self, name: str, tag: str | None = None, keep_last: int | None = None) -> dict:
        """Checkpoint every variable of graph ``name``; returns the manifest."""
        return self.checkpoint_graph(name, tag, None, keep_last)

    def graph_checkpoints(self, name: str) -> list[dict]:
        """Manifests of the graph's checkpoints, oldest first ([] without a state dir)."""
        self.session(name)
        return self.state.list_checkpoints(name) if self.state is not None else []

    def graph_restore(self, name: str, tag: str = "latest") -> dict:
        """Set the graph's variables from checkpoint ``tag`` ("latest": the newest intact one)."""
        return self.restore_graph(name, tag)

    def checkpoint_graph(self, name: str, tag: str | None = None, manifest: dict | None = None,
                         keep_last: int | None = None, *, skip_if_unchanged: bool = False) -> dict:
        """Write a checkpoint of graph ``name``'s variables to the state dir; returns its manifest.

        The variables are copied together under the graph's lock (between two runs), then
        written outside it. ``step`` is ``manifest["step"]`` if given, else the value of the
        graph's ``global_step`` variable, else None.

        Args:
            name: the graph.
            tag: the checkpoint's name (default ``ckpt-<seq>``); an existing tag is replaced.
            manifest: extra fields (step, job, metrics, ...), JSON-able.
            keep_last: keep only this many newest checkpoints of the graph.
            skip_if_unchanged: write nothing when the newest checkpoint holds the same values.

        Raises:
            FailedPreconditionError: the runtime has no state dir.
            NotFoundError: no such graph.
            InvalidArgumentError: a bad tag or keep_last.
        """
        state = self._require_state("graph.save")
        if manifest is not None and not isinstance(manifest, dict):
            raise InvalidArgumentError(f"checkpoint manifest must be a map; got {type(manifest).__name__}")
        s = self.session(name)
        with s.lock:
            arrays = s.snapshot_variables()
            version = s.graph.version
        m = dict(manifest or {})
        if m.get("step") is None:
            m["step"] = _global_step(arrays)
        m["version"] = version
        return state.write_checkpoint(name, tag, arrays, m, keep_last, skip_if_unchanged=skip_if_unchanged)

    def restore_graph(self, name: str, tag: str = "latest") -> dict:
        """Set graph ``name``'s variables from a checkpoint; returns its manifest plus
        ``restored`` / ``missing`` / ``unknown`` variable names (and ``damaged`` tags skipped).

        Raises:
            FailedPreconditionError: no state dir, or the checkpoint is damaged.
            NotFoundError: no such graph or checkpoint.
            InvalidArgumentError: a checkpoint array's shape or dtype differs from its variable's.
        """
        state = self._require_state("graph.restore")
        if not isinstance(tag, str) or not tag:
            raise InvalidArgumentError(f"graph.restore: tag must be a non-empty string; got {tag!r}")
        s = self.session(name)
        arrays, manifest = state.read_checkpoint(name, tag)
        return {**manifest, **s.load_variables(arrays, strict=True)}

    def _load_state(self) -> None:
        """Rebuild every graph of the state dir with its newest checkpoint, then datasets and jobs."""
        assert self.state is not None
        for name, seed, dicts in self.state.load_graphs():
            s = GraphSession(name, self.devices, seed=seed)
            s.compiler = self.compiler
            try:
                s.extend(dicts, 0)
            except KernelflowError as e:
                where = self.state.quarantine_graph(name)
                log.error("state dir: graph '%s' cannot be rebuilt (%s); moved it to %s", name, e, where)
                continue
            s = self._adopt(s)
            info = "no checkpoint"
            try:
                arrays, m = self.state.read_checkpoint(name, "latest")
            except NotFoundError:
                pass
            except KernelflowError as e:
                log.error("state dir: graph '%s': %s; its variables start from their initial values", name, e)
            else:
                r = s.load_variables(arrays, strict=False)
                info = f"checkpoint {m['tag']} (step {m.get('step')}, {len(r['restored'])} variables)"
            self.graphs[name] = s
            log.info("state dir: graph '%s' back at version %d, %s", name, s.graph.version, info)
        for store in (self.datasets, self.jobs):
            if hasattr(store, "load_from_state"):  # DatasetStore / JobManager persistence (issue #4)
                store.load_from_state()

    def _adopt(self, s: GraphSession) -> GraphSession:
        """A loaded session starts persisting from here on."""
        state, name, seed = self.state, s.name, s.graph.seed
        assert state is not None
        s.persist = lambda since, dicts: state.append_graph_nodes(name, seed, since, dicts)
        return s

    def shutdown(self) -> None:
        """Clean shutdown: stop jobs at a checkpoint, then checkpoint every graph (if a state dir).

        Graphs whose variables equal their newest checkpoint get no new one. Idempotent.
        """
        if self._is_shut_down:
            return
        self._is_shut_down = True
        try:
            self.jobs.shutdown()
        except Exception:
            log.error("stopping jobs at shutdown failed", exc_info=True)
        try:
            self.models.close()  # the base-path watcher and the batchers' threads
        except Exception:
            log.error("closing the model manager at shutdown failed", exc_info=True)
        if self.state is None:
            return
        with self._lock:
            names = [n for n, s in self.graphs.items() if s.variables]
        for name in names:
            try:
                m = self.checkpoint_graph(name, manifest={"reason": "shutdown"}, skip_if_unchanged=True)
                log.info("shutdown: graph '%s' checkpointed as %s", name, m["tag"])
            except Exception:
                log.error("shutdown: checkpoint of graph '%s' failed", name, exc_info=True)
        self.state.close()


def _deleted_graph(since: int, dicts: list[dict]) -> None:
    raise NotFoundError("the graph was deleted meanwhile; open it again with rt.graph(name)")


def _global_step(arrays: dict[str, np.ndarray]) -> int | None:
    """The value of a 0-d integer ``global_step`` variable, else None."""
    a = arrays.get("global_step")
    if a is not None and a.ndim == 0 and a.dtype.kind in "iu":
        return int(a)
    return None
