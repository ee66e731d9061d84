"""Tensor fusion for the gradient all-reduce: many small tensors packed into a few flat
buffers ("buckets") so that one collective carries them, as Horovod's fusion buffer does.

A collective costs a latency (microseconds on shared memory, tens of them on a network) plus
bytes / bandwidth; a model has dozens of gradient tensors, most of them small (biases, norms),
so one all-reduce per tensor pays the latency dozens of times. Buckets hold tensors of one
dtype in a fixed order, up to ``bucket_bytes`` each (a tensor bigger than that gets a bucket of
its own). The buffers are allocated once per job on the gradients' device; each step copies
the gradients in, starts every bucket's all-reduce at once (the first runs while the next ones
are packed), waits under the communicator's watchdog and hands back views of the buffers.

Contents: Bucket, GradientReducer, plan_buckets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
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


def plan_buckets(specs: Sequence[tuple[str, tuple[int, ...], str]], bucket_bytes: int) -> list[Bucket]:
    """Buckets for gradients ``specs`` (name, shape, dtype), in order; ``bucket_bytes`` 0: one per tensor.

    Raises:
        InvalidArgumentError: a negative ``bucket_bytes`` or a shape with unknown dimensions.
    """
    if bucket_bytes < 0:
        raise InvalidArgumentError(f"all-reduce: bucket_bytes must be >= 0 (0: no fusion); got {bucket_bytes}")
    open_: dict[str, Bucket] = {}
    out: list[Bucket] = []
    for i, (name, shape, dtype) in enumerate(specs):
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
    """

    def __init__(self, comm: Communicator, specs: Sequence[tuple[str, tuple[int, ...], str]],
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, xp: Any = np):
        self.comm = comm
        self.specs = [(n, tuple(s), str(d)) for n, s, d in specs]
        self.buckets = plan_buckets(self.specs, bucket_bytes)
        self.xp = xp
        for b in self.buckets:
            b.buffer = xp.empty(b.nbytes // np.dtype(b.dtype).itemsize, dtype=b.dtype)

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
        label = f"{what} ({len(self.buckets)} buckets)"
        tests = []
        for b in self.buckets:  # each bucket's collective starts as soon as it is packed
            for i, off, n in zip(b.members, b.offsets, b.sizes):
                g = grads[i]
                name, shape, dtype = self.specs[i]
                if tuple(g.shape) != shape or str(g.dtype) != dtype:
                    raise InvalidArgumentError(f"{what}: gradient '{name}' is {g.dtype}{tuple(g.shape)}; expected "
                                               f"{dtype}{shape}")
                if self.xp is np and not isinstance(g, np.ndarray):
                    g = to_host(g)  # a device gradient reduced by MPI on the host
                b.buffer[off:off + n] = g.reshape(-1)
                if scale != 1.0:
                    b.buffer[off:off + n] *= b.buffer.dtype.type(scale)
            tests.append(self.comm.start_allreduce_sum(b.buffer, label))
        self.comm.wait_all(tests, label)
        out: list[Any] = [None] * len(self.specs)
        for b in self.buckets:
            for i, off, n in zip(b.members, b.offsets, b.sizes):
                out[i] = b.buffer[off:off + n].reshape(self.specs[i][1])
        return out
