"""Kernels of the search ops (same order as graph/ops/search.py)."""

from __future__ import annotations

import numpy as np

from ..graph.ops import search as S
from .registry import kernel


@kernel(S.arange_op)
def arange_kernel(xp, n, dtype):
    return xp.arange(int(n), dtype=dtype)


@kernel(S.top_k_op)
def top_k_kernel(xp, x, k):
    if xp is not np or x.size == 0 or 4 * k >= x.shape[-1]:
        order = xp.argsort(-x, axis=-1, kind="stable") if xp is np else xp.argsort(-x, axis=-1)
        return order[..., :k].astype("int64")  # ties: the lower index first, as tf.math.top_k
    return _top_k_partition(x, k)


def _top_k_partition(x, k):
    """top_k in O(n) per row: partition for the k-th largest value, then sort only the candidates
    (values >= it) by (value descending, index ascending), so ties resolve as tf.math.top_k."""
    rows = x.reshape(-1, x.shape[-1])
    kth = -np.partition(-rows, k - 1, axis=-1)[:, k - 1:k]
    r, c = np.nonzero(rows >= kth)
    order = np.lexsort((c, -rows[r, c], r))
    r, c = r[order], c[order]
    first = np.searchsorted(r, np.arange(rows.shape[0]))
    keep = (np.arange(r.size) - first[r]) < k
    return c[keep].reshape(x.shape[:-1] + (k,)).astype("int64")


@kernel(S.take_along_axis_op)
def take_along_axis_kernel(xp, x, indices):
    return xp.take_along_axis(x, indices, axis=-1)


@kernel(S.gather_tree_op)
def gather_tree_kernel(xp, step_ids, parent_ids, max_sequence_lengths, end_token):
    steps, batch, beam = step_ids.shape
    out = xp.full(step_ids.shape, end_token, dtype=step_ids.dtype)
    rows = xp.arange(batch)[:, None]
    parent = xp.broadcast_to(xp.arange(beam)[None, :], (batch, beam)).copy()
    lengths = xp.minimum(max_sequence_lengths.astype("int64"), steps)
    for t in range(steps - 1, -1, -1):
        live = (t < lengths)[:, None]  # (batch, 1): this step is inside the traced length
        out[t] = xp.where(live, step_ids[t][rows, parent], end_token)
        parent = xp.where(live, parent_ids[t][rows, parent], parent)
    ended = xp.cumsum(out == end_token, axis=0) > 0  # at or after a beam's first end token
    return xp.where(ended, end_token, out)
