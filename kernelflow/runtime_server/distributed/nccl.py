"""The NCCL backend: collectives on device buffers through CuPy's NCCL binding, one GPU per rank.

Written against the same `Communicator` interface as the MPI backend (the fusion buckets and
the data-parallel loop do not know which one they hold). The NCCL unique id travels over the
host communicator (MPI), so no extra port is opened. Each collective is enqueued on the
communicator's own stream after an event that orders it behind the work that wrote the
buffer; the watchdog polls a CUDA event recorded after it. On a timeout the NCCL
communicator is aborted (``ncclCommAbort``), which releases a kernel stuck on a dead peer.
Small host-side exchanges (control words, metrics, agreement checks) go over MPI.

Contents: NCCLCommunicator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from .comm import DEFAULT_TIMEOUT_S, Communicator

_NCCL_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
                "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8", "int8": "NCCL_INT8"}


class NCCLCommunicator(Communicator):
    """Device-buffer collectives over NCCL; host exchanges delegated to ``host``.

    Args:
        host: the MPI (or one-rank) communicator of the same ranks, for the unique id and
            host-side exchanges.
        device: the CUDA device of this rank (usually its local rank).
        timeout_s: the watchdog's deadline per collective.
    """

    backend = "nccl"

    def __init__(self, host: Communicator, device: int, timeout_s: float = DEFAULT_TIMEOUT_S):
        import cupy
        from cupy.cuda import nccl

        super().__init__(host.rank, host.size, timeout_s)
        self.cupy = cupy
        self.nccl = nccl
        self.host = host
        self.failure_notice = host.failure_notice
        self.device = int(device)
        uid = np.zeros(128, np.int8)
        if host.rank == 0:
            raw = nccl.get_unique_id()  # a tuple of 128 signed chars, or (CuPy 14) 128 bytes
            uid[:] = np.frombuffer(bytes(raw), np.int8) if isinstance(raw, (bytes, bytearray)) \
                else np.array(raw, np.int64).astype(np.int8)
        host.broadcast(uid, 0, "nccl: unique id")
        with cupy.cuda.Device(self.device):
            self.stream = cupy.cuda.Stream(non_blocking=True)
            try:
                self.comm = nccl.NcclCommunicator(host.size, tuple(int(v) for v in uid), host.rank)
            except (TypeError, ValueError):  # CuPy 14 takes the id as bytes, as get_unique_id gives it
                self.comm = nccl.NcclCommunicator(host.size, uid.tobytes(), host.rank)

    def _dtype(self, buf: Any) -> int:
        name = _NCCL_DTYPES.get(str(buf.dtype))
        if name is None:
            raise InvalidArgumentError(f"nccl: cannot reduce a {buf.dtype} buffer; dtypes: {sorted(_NCCL_DTYPES)}")
        return getattr(self.nccl, name)

    def _after_writers(self) -> None:
        """Order the communicator's stream behind the work already queued on the current stream."""
        ev = self.cupy.cuda.Event(disable_timing=True)
        ev.record(self.cupy.cuda.get_current_stream())
        self.stream.wait_event(ev)

    def _done_event(self) -> Callable[[], bool]:
        ev = self.cupy.cuda.Event(disable_timing=True)
        ev.record(self.stream)
        return lambda: bool(ev.done)

    def start_allreduce_sum(self, buf: Any, what: str) -> Callable[[], bool]:
        self.check_usable(what)
        with self.cupy.cuda.Device(self.device):
            self._after_writers()
            self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self._dtype(buf), self.nccl.NCCL_SUM,
                                self.stream.ptr)
            return self._done_event()

    def broadcast(self, buf: Any, root: int, what: str, timeout_s: float | None = None) -> None:
        if isinstance(buf, np.ndarray):
            self.host.broadcast(buf, root, what, timeout_s)
            return
        self.check_usable(what)
        with self.cupy.cuda.Device(self.device):
            self._after_writers()
            self.comm.bcast(buf.data.ptr, buf.size, self._dtype(buf), root, self.stream.ptr)
            done = self._done_event()
        self.wait_all([done], what, timeout_s)

    def allgather(self, send: np.ndarray, what: str) -> np.ndarray:
        return self.host.allgather(send, what)

    def allgather_bytes(self, data: bytes, what: str) -> list[bytes]:
        return self.host.allgather_bytes(data, what)

    def mark_broken(self, reason: str) -> None:
        first = self.broken is None
        super().mark_broken(reason)
        if first:
            try:
                self.comm.abort()  # frees a kernel waiting on a dead peer
            except Exception:
                pass

    def close(self) -> None:
        if self.broken is None:
            self.comm.destroy()
