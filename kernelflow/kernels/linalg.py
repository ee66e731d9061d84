"""Kernels of the linear-algebra ops (same order as graph/ops/linalg.py)."""

from __future__ import annotations

from ..graph.ops import linalg as L
from .registry import kernel, xp_kernel

xp_kernel(L.matmul_op, "matmul")

# Below this many elements, planning a contraction order costs more than it saves (~10 us).
_OPTIMIZE_MIN_SIZE = 4096


@kernel(L.einsum_op)
def einsum_kernel(xp, *operands, subscripts):
    # optimize lets numpy route contractions through BLAS matmul (about 9x faster on
    # 'bhqd,bhkd->bhqk' at 8x8x128x64) and pick a good order for three or more operands.
    optimize = len(operands) > 2 or (len(operands) == 2 and max(o.size for o in operands) >= _OPTIMIZE_MIN_SIZE)
    return xp.einsum(subscripts, *operands, optimize=optimize)
