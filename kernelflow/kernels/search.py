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
    if xp is np:
        order = np.argsort(-x, axis=-1, kind="stable")  # ties: the lower index first, as tf.math.top_k
    else:
        order = xp.argsort(-x, axis=-1)
    return order[..., :k].astype("int64")


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
