"""Sharded datasets (``kernelflow serve --distributed --shard-datasets``): each follower keeps one
shard of every dataset instead of a replica, and a data-parallel job draws each rank's rows from
its own shard.

Shard r of N of a dataset of n rows holds its rows ``r, r+N, r+2N, ...`` (a view, such as a split's
train part, is sent as its own rows, copied). Rank 0 keeps every dataset whole (it serves reads,
validation and plain jobs) and uses the rows of shard 0 in a data-parallel job.

An epoch of a sharded job: rank r shuffles its shard with the seed (job seed, epoch, rank); the
epoch's global sequence interleaves the ranks' shuffled shards (position p is rank ``p mod N``'s
row ``p div N``), and the global batches are cut from that sequence as a one-rank job cuts them
from its permutation. So every row is used once per epoch and a step's rows of rank r are a
contiguous range of its shuffled shard, but the batches are not those of a one-rank job, and they
change with N (also on a resume with another N).

Contents: shard_rows, shard_range, shard_order, shard_commands, global_length.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine.devices import to_host


def shard_rows(n: int, rank: int, size: int) -> np.ndarray:
    """Positions (of a dataset of ``n`` rows) of shard ``rank`` of ``size``."""
    return np.arange(rank, n, size, dtype=np.int64)


def _count(x: int, rank: int, size: int) -> int:
    """How many positions p < x have p mod size == rank."""
    return max(0, (x - rank + size - 1) // size)


def shard_range(lo: int, m: int, rank: int, size: int) -> tuple[int, int]:
    """The rows ``[a, b)`` of rank ``rank``'s shuffled shard in the epoch positions ``[lo, lo + m)``."""
    return _count(lo, rank, size), _count(lo + m, rank, size)


def shard_order(seed: int, epoch: int, rank: int, n_local: int, shuffle: bool) -> np.ndarray:
    """Rank ``rank``'s rows of its shard (0..n_local) in the order of ``epoch``."""
    if not shuffle:
        return np.arange(n_local, dtype=np.int64)
    return np.random.default_rng([seed & ((1 << 64) - 1), epoch, rank]).permutation(n_local)


def global_length(ds: Any) -> int:
    """The rows of the whole dataset ``ds`` is (a shard of)."""
    shard = ds.meta.get("shard")
    return int(shard[2]) if shard else int(ds.length)


def shard_commands(ds: Any, rank: int, size: int) -> list[list]:
    """The ``dataset.install`` command that gives follower ``rank`` its shard of ``ds`` (root or view)."""
    rows = ds.base_rows()[rank::size]
    cols = {c: np.ascontiguousarray(to_host(a)[rows]) for c, a in ds.columns.items()}
    fp = ds.meta.get("fingerprint")
    meta = {"fingerprint": f"{fp}/shard{rank}of{size}" if fp else None, "created": ds.meta.get("created"),
            "shard": [rank, size, int(ds.length)]}
    return [["dataset.install", ds.name, cols, meta]]
