"""Communicators: one interface for the collectives a data-parallel job needs, an MPI backend
(host buffers, mpi4py) and a one-rank backend; every collective runs under a watchdog.

The watchdog: each collective is started non-blocking (``Iallreduce``, ``Ibcast``, ...) and
polled with ``Test`` until it completes or ``timeout_s`` passes. A dead peer therefore cannot
hang the caller: after the deadline the communicator is marked broken (an abandoned
collective leaves it unusable) and this and every later call raise at once. Process-failure
notices (MPICH's launcher sends SIGUSR1 to the live ranks when one dies) end the wait early.

Contents: Communicator, LocalCommunicator, MPICommunicator, check_agreement, wait_all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import numpy as np

from ...errors import DeadlineExceededError, FailedPreconditionError, UnavailableError

DEFAULT_TIMEOUT_S = 60.0
_SPIN = 64               # Test() calls before the poll loop starts sleeping
_SLEEP_MAX_S = 0.0005    # longest sleep between two polls (latency added to a collective at worst)


class Communicator:
    """Collectives over the ranks of a world, each bounded by ``timeout_s``.

    Buffers are numpy arrays (MPI) or device arrays (NCCL); operations work in place where
    the name says so. Every method raises `UnavailableError` once the communicator is broken
    (a collective timed out or a peer failed), and `DeadlineExceededError` for the collective
    that found out.

    Attributes:
        rank: this process's rank.
        size: the number of ranks.
        backend: "local", "mpi" or "nccl".
        timeout_s: the longest a collective may wait for the other ranks.
    """

    backend = "abstract"

    def __init__(self, rank: int, size: int, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.rank = rank
        self.size = size
        self.timeout_s = float(timeout_s)
        self.broken: str | None = None
        self.failure_notice = threading.Event()   # set by the world when the launcher reports a dead rank

    # ----------------------------------------------------------------- the interface
    def start_allreduce_sum(self, buf: Any, what: str) -> Callable[[], bool]:
        """Start summing ``buf`` over the ranks in place; returns its test (True once done).

        Wait for it with `wait_all`; the buffer must stay untouched until then.
        """
        raise NotImplementedError

    def allreduce_sum(self, bufs: Sequence[Any], what: str) -> None:
        """Sum every buffer of ``bufs`` over the ranks, in place (started together, waited together)."""
        self.wait_all([self.start_allreduce_sum(b, what) for b in bufs], what)

    def broadcast(self, buf: Any, root: int, what: str, timeout_s: float | None = None) -> None:
        """Overwrite ``buf`` on every rank with ``root``'s ``buf`` (``timeout_s``: this call's deadline,
        ``math.inf`` to wait as long as the root takes; a failure notice still ends the wait)."""
        raise NotImplementedError

    def allgather(self, send: np.ndarray, what: str) -> np.ndarray:
        """``(size, *send.shape)``: every rank's ``send`` (small host arrays: control and metrics)."""
        raise NotImplementedError

    def allgather_bytes(self, data: bytes, what: str) -> list[bytes]:
        """Every rank's ``data`` (any length), in rank order."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the communicator (a broken one is only dropped: freeing it could block)."""

    # ----------------------------------------------------------------- shared
    def check_usable(self, what: str) -> None:
        if self.broken is not None:
            raise UnavailableError(f"{what}: the world's communicator is broken ({self.broken}); restart the world "
                                   "(mpiexec ... kernelflow serve --distributed) to run data-parallel jobs again")

    def mark_broken(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason

    def wait_all(self, tests: Sequence[Callable[[], bool]], what: str, timeout_s: float | None = None) -> None:
        """Poll ``tests`` (each True once its operation completed) until all are, under the watchdog.

        Raises:
            DeadlineExceededError: not done within ``timeout_s`` (the communicator is now broken).
            UnavailableError: a peer failure was notified meanwhile.
        """
        wait_all(tests, what, self, timeout_s)


def wait_all(tests: Sequence[Callable[[], bool]], what: str, comm: Communicator,
             timeout_s: float | None = None) -> None:
    """The watchdog loop of `Communicator.wait_all`."""
    pending = list(tests)
    limit = comm.timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + limit
    polls, sleep = 0, 0.00002
    longest = _SLEEP_MAX_S if limit != float("inf") else 0.005  # a patient wait need not poll as often
    while pending:
        try:
            pending = [t for t in pending if not t()]
        except Exception as e:  # an MPI error (ERRORS_RETURN): a peer is gone
            comm.mark_broken(f"{what} failed on rank {comm.rank}: {e}")
            raise UnavailableError(f"{what}: failed on rank {comm.rank} of {comm.size}: {e}") from e
        if not pending:
            return
        polls += 1
        if polls < _SPIN:
            continue
        if comm.failure_notice.is_set():
            comm.mark_broken(f"the launcher reported a dead rank during {what}")
            raise UnavailableError(f"{what}: a rank of the world died (the launcher reported a process failure); "
                                   f"rank {comm.rank} of {comm.size} gave up waiting")
        now = time.monotonic()
        if now > deadline:
            comm.mark_broken(f"{what} timed out after {limit:g} s")
            raise DeadlineExceededError(f"{what}: the other ranks did not answer within {limit:g} s "
                                        f"(rank {comm.rank} of {comm.size}); a rank is dead or stuck")
        time.sleep(sleep)
        sleep = min(sleep * 2, longest)


class LocalCommunicator(Communicator):
    """The one-rank world: every collective is the identity."""

    backend = "local"

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(0, 1, timeout_s)

    def start_allreduce_sum(self, buf: Any, what: str) -> Callable[[], bool]:
        self.check_usable(what)
        return _done

    def broadcast(self, buf: Any, root: int, what: str, timeout_s: float | None = None) -> None:
        self.check_usable(what)

    def allgather(self, send: np.ndarray, what: str) -> np.ndarray:
        self.check_usable(what)
        return np.asarray(send)[None].copy()

    def allgather_bytes(self, data: bytes, what: str) -> list[bytes]:
        self.check_usable(what)
        return [bytes(data)]


class MPICommunicator(Communicator):
    """Collectives on host buffers over an MPI communicator (mpi4py; buffers, never pickle).

    Args:
        comm: an ``mpi4py.MPI.Comm`` this object owns (give it a ``Dup()`` of the world's: the
            collectives of two communicators never interleave).
        timeout_s: the watchdog's deadline per collective.
    """

    backend = "mpi"

    def __init__(self, comm: Any, timeout_s: float = DEFAULT_TIMEOUT_S):
        from mpi4py import MPI

        super().__init__(comm.Get_rank(), comm.Get_size(), timeout_s)
        self.MPI = MPI
        self.comm = comm

    def start_allreduce_sum(self, buf: Any, what: str) -> Callable[[], bool]:
        self.check_usable(what)
        try:
            return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM).Test
        except self.MPI.Exception as e:
            self.mark_broken(f"{what}: {e}")
            raise UnavailableError(f"{what}: cannot start the all-reduce on rank {self.rank}: {e}") from e

    def broadcast(self, buf: Any, root: int, what: str, timeout_s: float | None = None) -> None:
        self.check_usable(what)
        req = self.comm.Ibcast(buf, root=root)
        self.wait_all([req.Test], what, timeout_s)

    def allgather(self, send: np.ndarray, what: str) -> np.ndarray:
        self.check_usable(what)
        send = np.ascontiguousarray(send)
        out = np.empty((self.size, *send.shape), send.dtype)
        req = self.comm.Iallgather(send, out)
        self.wait_all([req.Test], what)
        return out

    def allgather_bytes(self, data: bytes, what: str) -> list[bytes]:
        lengths = self.allgather(np.array([len(data)], np.int64), what + " (lengths)")[:, 0]
        out = np.empty(int(lengths.sum()), np.uint8)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        send = np.frombuffer(data, np.uint8) if data else np.empty(0, np.uint8)
        req = self.comm.Iallgatherv(send, [out, lengths.tolist(), offsets.tolist(), self.MPI.BYTE])
        self.wait_all([req.Test], what)
        return [out[o:o + n].tobytes() for o, n in zip(offsets.tolist(), lengths.tolist())]

    def close(self) -> None:
        if self.broken is None:
            try:
                self.comm.Free()
            except self.MPI.Exception:
                pass


def _done() -> bool:
    return True


def check_agreement(comm: Communicator, mine: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """Compare a map of facts (graph version, tensor names...) across ranks; returns every rank's.

    Lists are compared as lists; a difference names the ranks, the key and what differs (for
    name lists: the names only some ranks have).

    Raises:
        FailedPreconditionError: the ranks disagree (the message names what).
    """
    blobs = comm.allgather_bytes(msgpack.packb(mine, use_bin_type=True), what)
    theirs = [msgpack.unpackb(b, raw=False, strict_map_key=True) for b in blobs]
    problems = []
    for key in mine:
        values = [t.get(key) for t in theirs]
        if all(v == values[0] for v in values):
            continue
        if all(isinstance(v, list) for v in values):
            for r, v in enumerate(values):
                only = sorted(map(str, set(map(_hashable, v)) - set(map(_hashable, values[0]))))
                missing = sorted(map(str, set(map(_hashable, values[0])) - set(map(_hashable, v))))
                if only or missing:
                    problems.append(f"{key}: rank {r} has {only[:8]} that rank 0 lacks and lacks {missing[:8]}")
                elif v != values[0]:
                    problems.append(f"{key}: rank {r} has the same entries as rank 0 in another order")
        else:
            problems.append(f"{key}: " + ", ".join(f"rank {r} has {v!r}" for r, v in enumerate(values)))
    if problems:
        raise FailedPreconditionError(f"{what}: the ranks disagree: " + "; ".join(problems))
    return theirs


def _hashable(v: Any) -> Any:
    return tuple(_hashable(x) for x in v) if isinstance(v, list) else v
