"""The runtime's graphs: one `GraphSession` each, their definitions and checkpoints in the state dir.

Contents: GraphStore.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError, KernelflowError, NotFoundError
from .engine.compile_options import run_options
from .engine.devices import DeviceManager
from .engine.session import GraphSession
from .persist.state import StateDir

if TYPE_CHECKING:
    from .engine.runs import RunRegistry

log = logging.getLogger("kernelflow.service")


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise InvalidArgumentError(f"{what} must be a non-empty string; got {v!r}")
    return v


def _list(v: Any, what: str) -> list:
    if not isinstance(v, (list, tuple)):
        raise InvalidArgumentError(f"{what} must be a list; got {type(v).__name__}")
    return list(v)


class GraphStore:
    """The graphs held by the runtime, and the ``graph.*`` / ``variable.*`` RPC methods.

    Args:
        devices: where sessions place their nodes.
        state: the state dir graphs and checkpoints persist in (None: memory only, and
            ``graph.save`` / ``graph.restore`` answer FailedPreconditionError).
    """

    def __init__(self, devices: DeviceManager, state: StateDir | None, compiler: Any = None):
        self.devices = devices
        self.state = state
        self.compiler = compiler  # a kernelflow.compiler.Compiler every session's plans use (None: off)
        self.graphs: dict[str, GraphSession] = {}
        self.lock = threading.Lock()  # guards ``graphs``
        self.max_kernel_elements = GraphSession.max_kernel_elements  # the runtime lowers it (--max-run-seconds)

    def __len__(self) -> int:
        return len(self.graphs)

    def sessions(self) -> list[GraphSession]:
        """Every session, as a list taken under the store's lock."""
        with self.lock:
            return list(self.graphs.values())

    def session(self, name: Any) -> GraphSession:
        """The session of graph ``name``, or NotFoundError."""
        try:
            return self.graphs[name]
        except (KeyError, TypeError):
            raise NotFoundError(f"no graph named {name!r}; graphs: {sorted(self.graphs)}") from None

    # ----------------------------------------------------------------- RPC methods
    def graph_list(self) -> list[dict]:
        """Every graph with its version and variable count."""
        with self.lock:
            sessions = list(self.graphs.values())
        return [{"name": s.name, "version": s.graph.version, "variables": len(s.variables)} for s in sessions]

    def graph_open(self, name: str, seed: int = 0) -> dict:
        """Create the graph if needed; returns ``{"name", "version", "created"}``."""
        name = _str(name, "graph.open: name")
        with self.lock:
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
        with self.lock:
            s = self.session(name)
        # Wait for a run or extend in flight without the table's lock: `info` and `graph.list`
        # (on the IO loop) and every other graph need it meanwhile (issue #15).
        with s.lock:
            with self.lock:
                if self.graphs.get(name) is not s:  # deleted (and maybe reopened) meanwhile
                    raise NotFoundError(f"graph.delete: graph '{name}' was deleted meanwhile")
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
    def _session_for(self, name: str, seed: int) -> GraphSession:
        s = GraphSession(name, self.devices, seed=seed)
        s.max_kernel_elements = self.max_kernel_elements
        s.compiler = self.compiler
        return s

    def _new_session(self, name: str, seed: int) -> GraphSession:
        s = self._session_for(name, seed)
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
        self._require_state("graph.save")
        if manifest is not None and not isinstance(manifest, dict):
            raise InvalidArgumentError(f"checkpoint manifest must be a map; got {type(manifest).__name__}")
        s = self.session(name)
        with s.lock:
            arrays = s.snapshot_variables()
            version = s.graph.version
        return self._write_snapshot(name, arrays, version, manifest, tag, keep_last,
                                    skip_if_unchanged=skip_if_unchanged)

    def _write_snapshot(self, name: str, arrays: dict[str, np.ndarray], version: int, manifest: dict | None,
                        tag: str | None = None, keep_last: int | None = None, *, skip_if_unchanged: bool) -> dict:
        state = self._require_state("graph.save")
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

    def checkpoint_all(self, reason: str, runs: RunRegistry | None = None, lock_wait_s: float | None = None) -> None:
        """Checkpoint every graph that has variables and changed since its newest checkpoint.

        With ``lock_wait_s``, a graph whose lock stays taken that long (a run stuck in a kernel)
        is checkpointed without the lock when its run (found in ``runs``) has not updated a
        variable yet: its variables are then the state before that run. Otherwise it keeps its
        newest checkpoint.
        """
        with self.lock:
            names = [n for n, s in self.graphs.items() if s.variables]
        deadline = None if lock_wait_s is None else time.monotonic() + lock_wait_s
        for name in names:
            try:
                s = self.graphs.get(name)
                if s is None:
                    continue
                got = s.lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic()))
                if got:
                    try:
                        m = self.checkpoint_graph(name, manifest={"reason": reason}, skip_if_unchanged=True)
                    finally:
                        s.lock.release()
                else:
                    ctl = runs.busy(name) if runs is not None else None
                    if ctl is None or ctl.has_mutated:
                        log.error("%s: graph %r is busy in a run that may have updated variables; it keeps its "
                                  "newest checkpoint", reason, name)
                        continue
                    # The run only read variables so far: they hold the state from before it.
                    m = self._write_snapshot(name, s.snapshot_variables(locked=False), s.graph.version,
                                             {"reason": reason, "busy": True}, skip_if_unchanged=True)
                log.info("%s: graph %r checkpointed as %s", reason, name, m["tag"])
            except Exception:
                log.error("%s: checkpoint of graph %r failed", reason, name, exc_info=True)

    def load_from_state(self) -> None:
        """Rebuild every graph of the state dir with its newest checkpoint."""
        assert self.state is not None
        for name, seed, dicts in self.state.load_graphs():
            s = self._session_for(name, seed)
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

    def _adopt(self, s: GraphSession) -> GraphSession:
        """A loaded session starts persisting from here on."""
        state, name, seed = self.state, s.name, s.graph.seed
        assert state is not None
        s.persist = lambda since, dicts: state.append_graph_nodes(name, seed, since, dicts)
        return s


def _deleted_graph(since: int, dicts: list[dict]) -> None:
    raise NotFoundError("the graph was deleted meanwhile; open it again with rt.graph(name)")


def _global_step(arrays: dict[str, np.ndarray]) -> int | None:
    """The value of a 0-d integer ``global_step`` variable, else None."""
    a = arrays.get("global_step")
    if a is not None and a.ndim == 0 and a.dtype.kind in "iu":
        return int(a)
    return None
