"""The world: this process's rank among the runtime's processes, the hosts and devices of all of
them, and the communicators (a control one for the command stream, a data one for jobs).

`local_world()` is the one-rank world of a plain server (no MPI, nothing imported);
`mpi_world()` starts MPI (mpi4py, imported only here) and learns the others over it.
Outside ``mpiexec`` it is a one-rank MPI world.

Contents: World, local_world, mpi_world.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .comm import DEFAULT_TIMEOUT_S, Communicator, LocalCommunicator, MPICommunicator

log = logging.getLogger("kernelflow.distributed")


@dataclass
class World:
    """Ranks, hosts and devices, with the communicators this rank talks through.

    Attributes:
        rank: this process's rank (0 is the front that clients talk to).
        size: the number of ranks.
        ranks: per rank ``{"rank", "host", "pid", "local_rank", "devices"}``.
        data: the communicator of data-parallel jobs (collectives).
        control: the communicator of the command stream (None in a one-rank local world).
        backend: "local" (no MPI) or "mpi".
        lost: ranks found dead (the world is broken once any is).
        shard_datasets: followers keep one shard of each dataset, not a replica (``--shard-datasets``).
    """

    rank: int
    size: int
    ranks: list[dict[str, Any]]
    data: Communicator
    control: Any = None
    backend: str = "local"
    lost: set[int] = field(default_factory=set)
    failure_notice: threading.Event = field(default_factory=threading.Event)
    mpi: Any = None
    device_comm: Communicator | None = None   # NCCL over this rank's GPU, when the runtime runs on GPUs
    shard_datasets: bool = False               # followers keep a shard of each dataset (shards.py)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def local_rank(self) -> int:
        return int(self.ranks[self.rank]["local_rank"])

    def broken(self) -> str | None:
        """Why the world can no longer run collectives, or None."""
        if self.lost:
            return f"rank(s) {sorted(self.lost)} lost"
        return self.data.broken

    def info(self) -> dict[str, Any]:
        """What ``rt.info()["world"]`` shows."""
        collectives = self.data.backend + (f" + {self.device_comm.backend}" if self.device_comm is not None else "")
        return {"size": self.size, "rank": self.rank, "backend": self.backend, "collectives": collectives,
                "timeout_s": self.data.timeout_s, "ranks": [dict(r) for r in self.ranks],
                "hosts": sorted({r["host"] for r in self.ranks}), "lost": sorted(self.lost),
                "broken": self.broken(), "shard_datasets": self.shard_datasets}

    def notice_failure(self) -> None:
        """The launcher reported a dead process: collectives in flight give up now."""
        self.failure_notice.set()
        self.data.failure_notice.set()
        if self.device_comm is not None:
            self.device_comm.failure_notice.set()


def _me(rank: int, local_rank: int, devices: list[str]) -> dict[str, Any]:
    return {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "local_rank": local_rank,
            "devices": devices}


def local_world(devices: list[str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """The one-rank world of a server started without ``--distributed``."""
    return World(0, 1, [_me(0, 0, devices or ["cpu"])], LocalCommunicator(timeout_s))


def mpi_world(devices: list[str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Start MPI and describe the world (every rank calls it at start).

    MPICH's launcher started with ``-disable-auto-cleanup`` keeps the live ranks running when
    one dies and sends them SIGUSR1, whose default action would end them too: it is caught
    here and turned into a failure notice (on the main thread; a no-op elsewhere).

    Raises:
        ImportError: mpi4py is not installed (``pip install kernelflow[distributed]``).
    """
    world_ref: list[World] = []
    on_main = threading.current_thread() is threading.main_thread()
    if on_main:
        signal.signal(signal.SIGUSR1, lambda s, f: world_ref and world_ref[0].notice_failure())
    from mpi4py import MPI

    if on_main:
        signal.signal(signal.SIGUSR1, lambda s, f: world_ref and world_ref[0].notice_failure())  # MPI_Init may reset it
        # At exit Python puts SIG_DFL back for signals it handled, and a rank that leaves first can make the
        # launcher send SIGUSR1 to the others while they finalize: ignore it from then on (runs before
        # mpi4py's own atexit MPI_Finalize, atexit being last-in first-out).
        atexit.register(signal.signal, signal.SIGUSR1, signal.SIG_IGN)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    host = socket.gethostname()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank = local.Get_rank()
    local.Free()
    me = _me(rank, local_rank, devices or ["cpu"])
    data = MPICommunicator(comm.Dup(), timeout_s)
    control = comm.Dup()
    blobs = data.allgather_bytes(msgpack.packb(me, use_bin_type=True), "world: hello")
    ranks = [msgpack.unpackb(b, raw=False, strict_map_key=True) for b in blobs]
    w = World(rank, size, ranks, data, control, "mpi", mpi=MPI)
    world_ref.append(w)
    log.info("world: rank %d of %d on %s (local rank %d)", rank, size, host, local_rank)
    return w
