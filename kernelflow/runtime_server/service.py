"""The runtime: builds every store with its dependencies and the one RPC method table.

The same service answers the TCP server (net/) and the in-process transport. Params are
always a list; results are msgpack-able (maps, lists, scalars, ndarrays).

Contents: PROTOCOL_VERSION, RuntimeService.
"""

from __future__ import annotations

import logging
import platform
from typing import Any

import numpy as np

from .._version import __version__
from .datasets import DatasetStore
from .engine.compile_options import PlanMethods, make_compiler
from .engine.devices import DeviceManager
from .engine.summaries import SummaryMethods
from .graphs import GraphStore
from .methods import MethodTable, build_method_table
from .persist.state import StateDir
from .serving.manager import ModelManager
from .serving.rpc import ModelMethods
from .training.jobs import JobManager

PROTOCOL_VERSION = 1

log = logging.getLogger("kernelflow.service")


class RuntimeService:
    """Graphs, variables, datasets, jobs and models, behind one table of named methods.

    Args:
        device: default device for nodes with none ("cpu", "gpu:N" or "auto").
        soft_placement: run nodes that ask for a missing GPU on the CPU instead of failing.
        state_dir: where graphs, checkpoints, datasets, job histories and models persist (None:
            memory only, and ``graph.save`` / ``graph.restore`` answer FailedPreconditionError).
            Given, the dir is locked to this runtime and everything in it is loaded now.
        compile: the graph compiler: "on" (plans optimised, fused kernels compile in the background),
            "sync" (kernels compile before the run that needs them), "off"; None: ``$KERNELFLOW_COMPILE``,
            default "on".

    Raises:
        FailedPreconditionError: another live server holds ``state_dir``.
    """

    def __init__(self, device: str = "cpu", soft_placement: bool = False, state_dir: str | None = None,
                 compile: str | None = None):
        self.devices = DeviceManager(device, soft_placement)
        self.compiler = make_compiler(compile)
        self.state: StateDir | None = StateDir(state_dir) if state_dir else None
        self.graphs = GraphStore(self.devices, self.state, self.compiler)
        self.datasets = DatasetStore(self.devices, self.state)
        self.jobs = JobManager(self.graphs, self.datasets, self.state)
        self.models = ModelManager(self.state.models_dir() if self.state is not None else None, self.devices)
        self.model_methods = ModelMethods(self.graphs.session, self.models)
        self.summaries = SummaryMethods(self.graphs.session)
        self.plans = PlanMethods(self.graphs.session)
        self.methods: MethodTable = build_method_table(self)
        self._is_shut_down = False
        if self.state is not None:
            self.state.lock()
            self.graphs.load_from_state()
            self.datasets.load_from_state()
            self.jobs.load_from_state()

    def call(self, method: str, params: list, peer: Any = None) -> Any:
        """Dispatch one request from ``peer`` (a connection; None when no notifications can go back).

        Raises:
            NotFoundError: for an unknown method.
            InvalidArgumentError: for params that are not a list or do not fit the method.
        """
        return self.methods.call(method, params, peer)

    def peer_closed(self, peer: Any) -> None:
        """Called by the transport when a peer is gone: its uploads and subscriptions end."""
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
        }

    def listen_rest(self, port: int, host: str, max_body_bytes: int) -> int:
        """Serve TF Serving's REST API for this runtime's models on the running IO loop; returns the port.

        tornado is imported here, on first use: the in-process runtime never loads it.
        """
        from .serving.rest import listen_rest

        return listen_rest(self.models, port, host, max_body_bytes)[1]

    def shutdown(self) -> None:
        """Clean shutdown: stop jobs at a checkpoint, then checkpoint every graph (if a state dir).

        Graphs whose variables equal their newest checkpoint get no new one. Idempotent.
        """
        if self._is_shut_down:
            return
        self._is_shut_down = True
        for what, close in (("stopping jobs", self.jobs.shutdown), ("closing the model manager", self.models.close)):
            try:
                close()
            except Exception:
                log.error("%s at shutdown failed", what, exc_info=True)
        if self.state is None:
            return
        self.graphs.checkpoint_all("shutdown")
        self.state.close()
