"""The runtime: builds every store with its dependencies and the one RPC method table.

The same service answers the TCP server (net/) and the in-process transport. Params are
always a list; results are msgpack-able (maps, lists, scalars, ndarrays).

Contents: PROTOCOL_VERSION, RuntimeService, join_world, serve_follower.
"""

from __future__ import annotations

import logging
import platform
import sys
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import InvalidArgumentError
from . import logsafe
from .datasets import DatasetStore
from .distributed.comm import DEFAULT_TIMEOUT_S
from .distributed.data_parallel import DataParallel
from .distributed.fusion import DEFAULT_BUCKET_BYTES
from .distributed.launch import attach_leader, leave_world, run_follower, start_world
from .distributed.world import World, local_world
from .engine.compile_options import PlanMethods, make_compiler
from .engine.devices import DeviceManager
from .engine.runs import RunRegistry, kernel_element_limit
from .engine.summaries import SummaryMethods
from .graphs import GraphStore
from .methods import MethodTable, build_method_table
from .persist.state import StateDir
from .serving.manager import ModelManager
from .serving.rpc import ModelMethods
from .training.jobs import JobManager

PROTOCOL_VERSION = 1

log = logging.getLogger("kernelflow.service")

# At shutdown: how long jobs get to reach a step boundary, and busy graphs to finish their run
# (after being cancelled) before a graph is checkpointed without its lock; the whole shutdown
# stays well inside 10 s whatever runs.
SHUTDOWN_JOB_WAIT_S = 4.0
SHUTDOWN_LOCK_WAIT_S = 2.0


class RuntimeService:
    """Graphs, variables, datasets, jobs and models, behind one table of named methods.

    Args:
        device: default device for nodes with none ("cpu", "gpu:N" or "auto").
        soft_placement: run nodes that ask for a missing GPU on the CPU instead of failing.
        state_dir: where graphs, checkpoints, datasets, job histories and models persist (None:
            memory only, and ``graph.save`` / ``graph.restore`` answer FailedPreconditionError).
            Given, the dir is locked to this runtime and everything in it is loaded now.
        max_run_seconds: cancel a run (``graph.run``, ``tensor.summary``) that takes longer, at
            its next kernel; kernels certain to outlast it are refused before they start (None:
            no limit; kernels over `engine.runs.MAX_KERNEL_ELEMENTS` are refused all the same).
        world: the world of ranks this service is a rank of (None: a one-rank world). Rank 0 of a
            bigger world replicates its mutating methods to the others (docs/distributed.md).
        collective_timeout_s: how long a rank waits for the others (commands, collectives).
        fusion_bytes: the fusion threshold of the data-parallel gradient all-reduce.
        compile: the graph compiler: "on" (plans optimised, fused kernels compile in the background),
            "sync" (kernels compile before the run that needs them), "off"; None: ``$KERNELFLOW_COMPILE``,
            default "on".
        cuda_graphs: capture GPU plans as CUDA graphs (engine/cuda_graphs.py; None:
            ``$KERNELFLOW_CUDA_GRAPHS`` = 1).

    Raises:
        FailedPreconditionError: another live server holds ``state_dir``.
    """

    def __init__(self, device: str = "cpu", soft_placement: bool = False, state_dir: str | None = None,
                 max_run_seconds: float | None = None, world: World | None = None,
                 collective_timeout_s: float = DEFAULT_TIMEOUT_S, fusion_bytes: int = DEFAULT_BUCKET_BYTES,
                 compile: str | None = None, cuda_graphs: bool | None = None):
        if max_run_seconds is not None and not max_run_seconds > 0:
            raise InvalidArgumentError(f"RuntimeService: max_run_seconds must be > 0 or None; got {max_run_seconds}")
        logsafe.install()  # names from clients are logged escaped (issue #15)
        self.devices = DeviceManager(device, soft_placement, cuda_graphs)
        self.compiler = make_compiler(compile)
        self.state: StateDir | None = StateDir(state_dir) if state_dir else None
        self.runs = RunRegistry(max_run_seconds)
        self.graphs = GraphStore(self.devices, self.state, self.compiler)
        self.graphs.max_kernel_elements = kernel_element_limit(max_run_seconds)
        self.datasets = DatasetStore(self.devices, self.state)
        self.jobs = JobManager(self.graphs, self.datasets, self.state)
        self.models = ModelManager(self.state.models_dir() if self.state is not None else None, self.devices)
        self.rest_url: str | None = None   # set by `serve` once REST listens (in-process: none)
        self.rest_port: int | None = None
        self.model_methods = ModelMethods(self.graphs.session, self.models)
        self.summaries = SummaryMethods(self.graphs.session)
        self.world: World = world if world is not None else local_world(timeout_s=collective_timeout_s)
        self.jobs.data_parallel = DataParallel(self.world, fusion_bytes)
        self.leader: Any = None  # rank 0's command stream in a world of several ranks
        self.plans = PlanMethods(self.graphs.session)
        self.methods: MethodTable = build_method_table(self)
        self._is_shut_down = False
        if self.state is not None:
            self.state.lock()
            self.graphs.load_from_state()
            self.datasets.load_from_state()
            self.jobs.load_from_state()
        if self.world.size > 1 and self.world.rank == 0:
            self.leader = attach_leader(self, self.world, collective_timeout_s)

    def call(self, method: str, params: list, peer: Any = None) -> Any:
        """Dispatch one request from ``peer`` (a connection; None when no notifications can go back).

        Raises:
            NotFoundError: for an unknown method.
            InvalidArgumentError: for params that are not a list or do not fit the method.
        """
        return self.methods.call(method, params, peer)

    def peer_closed(self, peer: Any) -> None:
        """Called by the transport when a peer is gone: its runs are cancelled, its uploads and
        subscriptions end."""
        self.runs.cancel("the client closed its connection", peer=peer)
        for store in (self.datasets, self.jobs):
            try:
                store.peer_closed(peer)
            except Exception:
                log.error("dropping a closed peer's %s state failed", type(store).__name__, exc_info=True)

    def info(self) -> dict:
        """Version, protocol, devices, memory in use, graphs and the method list."""
        sessions = self.graphs.sessions()
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
            "methods": self.methods.names(),
            "rest_url": self.rest_url,
            "rest_port": self.rest_port,
            "python_prefix": sys.prefix,
            "world": self._world_info(),
        }

    def _world_info(self) -> dict:
        w = self.world.info()
        if self.world.size == 1:
            w["ranks"][0]["devices"] = self.devices.devices()
        return w

    def world_report(self) -> list[dict]:
        """Per rank: graphs with their versions and variable checksums, datasets, divergences from rank 0."""
        from .distributed.follower import variable_checksums

        me = {"rank": 0, "graphs": variable_checksums(self),
              "datasets": {d["name"]: d["length"] for d in self.datasets.list()}, "divergences": []}
        return [me, *(self.leader.report() if self.leader is not None else [])]

    def listen_rest(self, port: int, host: str, max_body_bytes: int) -> int:
        """Serve TF Serving's REST API for this runtime's models on the running IO loop; returns the port.

        tornado is imported here, on first use: the in-process runtime never loads it.
        """
        from .serving.rest import listen_rest

        return listen_rest(self.models, port, host, max_body_bytes)[1]

    def run_list(self) -> list[dict]:
        """The runs in flight: ``{"id", "method", "graph", "seconds", "kernel", "cancelled"}`` each."""
        return [c.describe() for c in self.runs.runs()]

    def run_cancel(self, graph: str | None = None, run_id: int | None = None) -> int:
        """Cancel the runs in flight on ``graph`` (or the run ``run_id``; neither: every run);
        returns how many. Each stops before its next kernel and answers CancelledError."""
        n = self.runs.cancel("cancelled by run.cancel", graph=graph, run_id=run_id)
        if n:
            log.info("run.cancel: %d runs cancelled (graph %r, run %r)", n, graph, run_id)
        return n

    def shutdown(self) -> None:
        """Clean shutdown: cancel runs, stop jobs at a checkpoint, then checkpoint every graph (if
        a state dir), all within a few seconds whatever runs.

        A graph still busy after `SHUTDOWN_LOCK_WAIT_S` (a kernel that cannot be interrupted) is
        checkpointed at its state before that run when the run has not updated a variable yet.
        Graphs whose variables equal their newest checkpoint get no new one. Idempotent; runs
        still inside a kernel are left behind (`busy_runs`), for the caller to abandon.
        """
        if self._is_shut_down:
            return
        self._is_shut_down = True
        self.runs.cancel("the server is shutting down")
        stop_jobs = lambda: self.jobs.shutdown(wait_s=SHUTDOWN_JOB_WAIT_S)  # noqa: E731
        for what, close in (("stopping jobs", stop_jobs), ("closing the model manager", self.models.close)):
            try:
                close()
            except Exception:
                log.error("%s at shutdown failed", what, exc_info=True)
        if self.leader is not None:
            self.leader.close()  # the followers stop and leave MPI with rank 0
        if self.state is None:
            return
        self.graphs.checkpoint_all("shutdown", runs=self.runs, lock_wait_s=SHUTDOWN_LOCK_WAIT_S)
        self.state.close()

    def busy_runs(self) -> int:
        """Runs still in flight (after `shutdown`: runs stuck in a kernel)."""
        return len(self.runs.runs())

    def leave_world(self) -> None:
        """At process exit, after `shutdown`: leave MPI (at once when the world is broken)."""
        leave_world(self.world)


def join_world(collective_timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "cpu") -> World:
    """Start MPI and learn this process's rank (``kernelflow serve --distributed``, every rank)."""
    return start_world(collective_timeout_s, device)


def serve_follower(world: World, device: str = "cpu", collective_timeout_s: float = DEFAULT_TIMEOUT_S,
                   fusion_bytes: int = DEFAULT_BUCKET_BYTES, compile: str | None = None) -> int:
    """A rank > 0 of ``world``: a service without state dir or clients, driven by rank 0 until it stops."""
    service = RuntimeService(device=device, world=world, collective_timeout_s=collective_timeout_s,
                             fusion_bytes=fusion_bytes, compile=compile)
    return run_follower(world, service)
