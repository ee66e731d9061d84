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
from ..errors import InvalidArgumentError, NotFoundError
from .datasets import DatasetStore
from .devices import DeviceManager
from .jobs import JobManager
from .session import GraphSession
from .state import StateDir

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
        state_dir: where graphs, checkpoints, datasets and job histories persist (None: memory only).
    """

    def __init__(self, device: str = "cpu", soft_placement: bool = False, state_dir: str | None = None):
        self.devices = DeviceManager(device, soft_placement)
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
        }
        self.datasets = DatasetStore(self)
        self.jobs = JobManager(self)

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
                self.graphs[name] = GraphSession(name, self.devices, seed=int(seed))
            s = self.graphs[name]
        return {"name": name, "version": s.graph.version, "created": created, "seed": s.graph.seed}

    def graph_delete(self, name: str) -> bool:
        """Delete a graph and its variables."""
        with self._lock:
            self.session(name)
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
                  feed_values: list) -> list:
        """Extend with piggy-backed ``nodes`` (if any), then run; returns one value per fetch."""
        s = self.session(name)
        if nodes:
            s.extend(_list(nodes, "graph.run: nodes"), since)
        feed_names = _list(feed_names, "graph.run: feed names")
        feed_values = _list(feed_values, "graph.run: feed values")
        if len(feed_names) != len(feed_values):
            raise InvalidArgumentError(f"graph.run: {len(feed_names)} feed names but {len(feed_values)} values")
        return s.run(_list(fetches, "graph.run: fetches"), feed_names, feed_values)

    def variable_read(self, name: str, var: str) -> np.ndarray:
        """A variable's current value."""
        return self.session(name).read_variable(var)

    def variable_assign(self, name: str, var: str, value: Any) -> bool:
        """Set a variable's value (same shape and dtype)."""
        self.session(name).assign_variable(var, value)
        return True
