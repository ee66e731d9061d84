"""Starting a distributed runtime (``kernelflow serve --distributed``): MPI, the followers' loop,
and rank 0's side (replicated methods, the initial sync of a loaded state dir, shutdown).

Each rank runs under a small supervisor process (`supervise`): MPICH's launcher, when one rank
dies by a signal, may kill the ranks it launched along with it even under
``-disable-auto-cleanup`` (a race between its exit and PMI-socket handlers, seen on MPICH 5.0);
a rank that is the launcher's grandchild is only sent the SIGUSR1 failure notice. The
supervisor forwards SIGTERM/SIGINT and exits with its rank's status.

Contents: SUPERVISED_ENV, needs_supervisor, supervise, start_world, run_follower, attach_leader, leave_world.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import numpy as np

from .world import World, mpi_world

log = logging.getLogger("kernelflow.distributed")

SUPERVISED_ENV = "KERNELFLOW_RANK_SUPERVISED"


def needs_supervisor() -> bool:
    """True in a process the MPI launcher started directly (and not yet supervised)."""
    return "PMI_RANK" in os.environ and os.environ.get(SUPERVISED_ENV) != "1"


def supervise(cmd: list[str]) -> int:
    """Run ``cmd`` (e.g. ``python -m kernelflow serve ...``) as this rank's child (same PMI
    environment, descriptors and process group) and return its exit status."""
    import subprocess

    # The launcher signals the whole process group, the child included: the supervisor only outlives
    # it. Handlers, not SIG_IGN, which the child would inherit.
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: None)
    child = subprocess.Popen(cmd, close_fds=False, env={**os.environ, SUPERVISED_ENV: "1"})
    while True:
        try:
            rc = child.wait()
            break
        except InterruptedError:  # pragma: no cover - wait() retries on EINTR itself
            continue
    # Python puts SIG_DFL back at exit; a late failure notice (another rank leaving first) must not
    # turn this rank's clean exit into a death by SIGUSR1.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    return rc if rc >= 0 else 128 - rc


def start_world(timeout_s: float, device: str = "cpu") -> World:
    """Start MPI (every rank, in the same order); on a GPU runtime also NCCL over each rank's GPU
    (local rank modulo the GPUs seen). Exits with a clear message when mpi4py is missing."""
    try:
        world = mpi_world(None, timeout_s)
    except ImportError as e:
        print(f"kernelflow serve --distributed needs mpi4py and an MPI (pip install 'kernelflow[distributed]'): {e}",
              file=sys.stderr)
        raise SystemExit(2) from e
    if device != "cpu" and _gpus() > 0:
        from .nccl import NCCLCommunicator

        world.device_comm = NCCLCommunicator(world.data, world.local_rank % _gpus(), timeout_s)
        log.info("world: rank %d uses NCCL on GPU %d", world.rank, world.device_comm.device)
    return world


def _gpus() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) if cupy.cuda.is_available() else 0
    except Exception:  # no CuPy, or CUDA present but unusable  # noqa: BLE001
        return 0


def run_follower(world: World, service: Any) -> int:
    """A follower rank's whole life: ``service`` (no state dir, no clients) driven by rank 0."""
    from .data_parallel import run_replica
    from .follower import Follower

    fusion = service.jobs.data_parallel.fusion_bytes
    f = Follower(world, service, lambda job_id, spec: run_replica(service, world, job_id, spec, fusion))
    if threading.current_thread() is threading.main_thread():  # mpiexec forwards SIGTERM/SIGINT to every rank
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, fr: f.stop())
    log.info("world: rank %d of %d follows rank 0", world.rank, world.size)
    try:
        f.run()
    finally:
        service.shutdown()
    _exit(world)
    return 0


def attach_leader(service: Any, world: World, timeout_s: float) -> Any:
    """Make ``service`` rank 0 of ``world``: wrap its mutating methods, send the followers what a
    loaded state dir holds (graphs, variables, datasets); returns the command stream (None in a
    one-rank world)."""
    from .replication import Leader, install_replication

    if world.size == 1:
        return None
    leader = Leader(world, timeout_s)
    service.jobs.data_parallel.leader = leader
    install_replication(service, leader)
    sessions = service.graphs.sessions()
    for s in sessions:
        with s.lock:
            leader.send(["graph.install", s.name, s.graph.seed, s.graph.to_dicts(0)])
            leader.send(["graph.set_variables", s.name, s.snapshot_variables()])
    from ..engine.devices import to_host

    datasets = sorted(service.datasets.datasets.values(), key=lambda d: d.view_of is not None)
    for ds in datasets:
        if world.shard_datasets:  # each follower gets its shard (a view's rows copied)
            from .replication import PerRank
            from .shards import shard_commands

            leader.send_each(PerRank("dataset.install", lambda r, ds=ds: shard_commands(ds, r, world.size)))
        elif ds.view_of is None:
            cols = {c: np.ascontiguousarray(to_host(a)) for c, a in ds.columns.items()}
            meta = {"fingerprint": ds.meta.get("fingerprint"), "created": ds.meta.get("created")}
            leader.send(["dataset.install", ds.name, cols, meta])
        else:
            leader.send(["dataset.install_view", ds.name, ds.view_of, ds.index, {k: v for k, v in ds.meta.items()
                                                                                 if isinstance(v, (str, int, float))}])
    if sessions or datasets:
        log.info("world: sent %d graph(s) and %d dataset(s) to %d follower(s)", len(sessions), len(datasets),
                 world.size - 1)
    return leader


def leave_world(world: World) -> None:
    """Rank 0 at exit, after the service shut down (and told the followers): leave MPI."""
    if world.backend != "mpi":
        return
    if threading.current_thread() is threading.main_thread():  # a second SIGTERM must not skip MPI_Finalize,
        for sig in (signal.SIGTERM, signal.SIGINT):            # which the followers wait for
            signal.signal(sig, lambda s, f: None)
    _exit(world)


def _exit(world: World) -> None:
    """Leave now when the world is broken: MPI_Finalize would wait for the abandoned collectives."""
    if world.broken():
        log.warning("world: rank %d exits without MPI_Finalize (the world is broken: %s)", world.rank, world.broken())
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(0)
