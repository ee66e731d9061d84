"""Tensor fusion for the gradient all-reduce: many small tensors packed into a few flat
buffers ("buckets") so that one collective carries them, as Horovod's fusion buffer does.

A collective costs a latency (microseconds on shared memory, tens of them on a network) plus
bytes / bandwidth; a model has dozens of gradient tensors, most of them small (biases, norms),
so one all-reduce per tensor pays the latency dozens of times. Buckets hold tensors of one
dtype in a fixed order, up to ``bucket_bytes`` each (a tensor bigger than that gets a bucket of
its own). The buffers are allocated once per job on the gradients' device; each step copies
the gradients in, starts each bucket's all-reduce once all its tensors are in (the first runs
while the next ones are packed), waits under the communicator's watchdog and hands back views
of the buffers.

Overlap with the backward pass: given the order in which the plan makes the gradients, the
buckets are filled in that order, and a `ReduceRound` takes gradients one at a time as the
executor reports them (`Plan.run(..., ready=...)`): a bucket's all-reduce starts as soon as its
last tensor arrives, while the plan goes on computing the next gradients. Buckets start in
bucket order on every rank (a bucket that fills early waits for the ones before it), so the
ranks issue their collectives in the same order, as MPI requires, whatever the kernel order.

Contents: Bucket, GradientReducer, ReduceRound, plan_buckets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, UnavailableError
from ..engine.devices import to_host
from .comm import Communicator

DEFAULT_BUCKET_BYTES = 16 << 20


@dataclass
class Bucket:
    """One fusion buffer: tensors ``members`` (indices into the gradient list) of one dtype."""

    dtype: str
    members: list[int]
    offsets: list[int]      # element offsets of each member in the buffer
    sizes: list[int]
    nbytes: int
    buffer: Any = None


def plan_buckets(specs: Sequence[tuple[str, tuple[int, ...], str]], bucket_bytes: int,
                 order: Sequence[int] | None = None) -> list[Bucket]:
    """Buckets for gradients ``specs`` (name, shape, dtype), filled in ``order`` (indices into
    ``specs``; default: as given); ``bucket_bytes`` 0: one per tensor.

    Raises:
        InvalidArgumentError: a negative ``bucket_bytes``, a shape with unknown dimensions, or an
            ``order`` that is not a permutation of the specs.
    """
    if bucket_bytes < 0:
        raise InvalidArgumentError(f"all-reduce: bucket_bytes must be >= 0 (0: no fusion); got {bucket_bytes}")
    if order is None:
        order = range(len(specs))
    elif sorted(order) != list(range(len(specs))):
        raise InvalidArgumentError(f"all-reduce: order must list each of the {len(specs)} gradients once; got "
                                   f"{list(order)}")
    open_: dict[str, Bucket] = {}
    out: list[Bucket] = []
    for i in order:
        name, shape, dtype = specs[i]
        if any(d is None for d in shape):
            raise InvalidArgumentError(f"all-reduce: gradient '{name}' has an unknown dimension in its shape "
                                       f"{shape}; variables have static shapes")
        n = int(np.prod(shape, dtype=np.int64))
        nbytes = n * np.dtype(dtype).itemsize
        b = open_.get(dtype)
        if b is None or bucket_bytes == 0 or b.nbytes + nbytes > bucket_bytes:
            b = Bucket(dtype, [], [], [], 0)
            out.append(b)
            open_[dtype] = b
        b.members.append(i)
        b.offsets.append(b.nbytes // np.dtype(dtype).itemsize)
        b.sizes.append(n)
        b.nbytes += nbytes
    return out


class GradientReducer:
    """Sums a fixed list of gradient tensors over the ranks through fusion buckets.

    Args:
        comm: the job's communicator.
        specs: ``(name, shape, dtype)`` of each gradient, in the order `reduce` receives them.
        bucket_bytes: the fusion threshold (0: one collective per tensor, fusion off).
        xp: the array module of the gradients (numpy, or cupy for device buffers with NCCL).
        order: the order in which the gradients become ready (indices into ``specs``); the
            buckets are filled in it (default: the order of ``specs``).
    """

    def __init__(self, comm: Communicator, specs: Sequence[tuple[str, tuple[int, ...], str]],
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, xp: Any = np, order: Sequence[int] | None = None):
        self.comm = comm
        self.specs = [(n, tuple(s), str(d)) for n, s, d in specs]
        self.buckets = plan_buckets(self.specs, bucket_bytes, order)
        self.xp = xp
        self.bucket_of: list[int] = [0] * len(self.specs)
        for j, b in enumerate(self.buckets):
            b.buffer = xp.empty(b.nbytes // np.dtype(b.dtype).itemsize, dtype=b.dtype)
            for i in b.members:
                self.bucket_of[i] = j

    def signature(self) -> str:
        """A short hash of the gradient list and bucket layout (equal on ranks that agree)."""
        h = hashlib.sha1(repr((self.specs, [(b.dtype, b.members) for b in self.buckets])).encode())
        return h.hexdigest()[:16]

    def reduce(self, grads: Sequence[Any], what: str, scale: float = 1.0) -> list[Any]:
        """The rank-wise sums of ``scale * grads`` (views into the fusion buffers, valid until the next call).

        Raises:
            InvalidArgumentError: a gradient whose count, shape or dtype differs from the specs.
            DeadlineExceededError, UnavailableError: the collective failed (see `Communicator`).
        """
        if len(grads) != len(self.specs):
            raise InvalidArgumentError(f"{what}: {len(grads)} gradients for {len(self.specs)} specs")
        rnd = self.begin(what, scale)
        for b in self.buckets:
            for i in b.members:
                rnd.add(i, grads[i])
        return rnd.finish()

    def begin(self, what: str, scale: float = 1.0, events: list | None = None) -> ReduceRound:
        """A round that takes the gradients one at a time (`ReduceRound.add`), in any order."""
        return ReduceRound(self, what, scale, events)


class ReduceRound:
    """One step's all-reduce, fed gradient by gradient (see `GradientReducer.begin`).

    Args:
        reducer: the reducer (buffers, buckets, communicator).
        what: the label of the collectives (named in errors).
        scale: each gradient is multiplied by it as it is packed.
        events: if given, ``("start", bucket)`` is appended when a bucket's all-reduce starts.
    """

    def __init__(self, reducer: GradientReducer, what: str, scale: float = 1.0, events: list | None = None):
        self.r = reducer
        self.what = what
        self.label = f"{what} ({len(reducer.buckets)} buckets)"
        self.scale = scale
        self.events = events
        self.missing = [len(b.members) for b in reducer.buckets]
        self.added = [False] * len(reducer.specs)
        self.started = 0     # buckets [0, started) have their all-reduce in flight or done
        self.pending: list[Any] = []

    def add(self, i: int, g: Any) -> None:
        """Pack gradient ``i``; start every bucket that is now complete and next in order.

        Raises:
            InvalidArgumentError: ``g``'s shape or dtype differs from the spec, or ``i`` came twice.
            DeadlineExceededError, UnavailableError: a collective failed.
        """
        r = self.r
        name, shape, dtype = r.specs[i]
        if self.added[i]:
            raise InvalidArgumentError(f"{self.what}: gradient '{name}' reported twice")
        if tuple(g.shape) != shape or str(g.dtype) != dtype:
            raise InvalidArgumentError(f"{self.what}: gradient '{name}' is {g.dtype}{tuple(g.shape)}; expected "
                                       f"{dtype}{shape}")
        self.added[i] = True
        j = r.bucket_of[i]
        b = r.buckets[j]
        k = b.members.index(i)
        off, n = b.offsets[k], b.sizes[k]
        if r.xp is np and not isinstance(g, np.ndarray):
            g = to_host(g)  # a device gradient reduced by MPI on the host
        b.buffer[off:off + n] = g.reshape(-1)
        if self.scale != 1.0:
            b.buffer[off:off + n] *= b.buffer.dtype.type(self.scale)
        self.missing[j] -= 1
        while self.started < len(r.buckets) and self.missing[self.started] == 0:
            self.pending.append(r.comm.start_allreduce_sum(r.buckets[self.started].buffer, self.label))
            if self.events is not None:
                self.events.append(("start", self.started))
            self.started += 1
        if self.pending and self.started < len(r.buckets):
            self.poll()

    def poll(self) -> None:
        """Test the collectives in flight once (MPI progresses a non-blocking collective inside its calls)."""
        try:
            self.pending = [t for t in self.pending if not t()]
        except Exception as e:  # as the watchdog does: an MPI error means a peer is gone
            self.r.comm.mark_broken(f"{self.label} failed on rank {self.r.comm.rank}: {e}")
            raise UnavailableError(f"{self.label}: failed on rank {self.r.comm.rank} of {self.r.comm.size}: {e}") \
                from e

    def finish(self) -> list[Any]:
        """Wait for every bucket (under the watchdog); the sums as views of the buffers.

        Raises:
            InvalidArgumentError: a gradient was never added.
            DeadlineExceededError, UnavailableError: a collective failed.
        """
        r = self.r
        if self.started < len(r.buckets):
            absent = [r.specs[i][0] for i, a in enumerate(self.added) if not a]
            raise InvalidArgumentError(f"{self.what}: gradients {absent} were never reported")
        r.comm.wait_all(self.pending, self.label)
        self.pending = []
        out: list[Any] = [None] * len(r.specs)
        for b in r.buckets:
            for i, off, n in zip(b.members, b.offsets, b.sizes):
                out[i] = b.buffer[off:off + n].reshape(r.specs[i][1])
        return out
