"""Search ops for decoding: arange, top_k, take_along_axis, gather_tree (integer-valued, no gradients).

Each is a primitive for a reason: ``top_k`` and ``take_along_axis`` are one kernel call where
a composite would sort or build index grids from many nodes; ``gather_tree`` follows parent
pointers back through every step of a beam search in one pass.

Contents: arange, top_k, take_along_axis, gather_tree.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import REQUIRED, define_op
from ..shapes import INTEGER, format_shape

__all__ = ["arange", "top_k", "take_along_axis", "gather_tree"]


def _int(op: str, what: str, a: Any) -> None:
    if a.dtype not in INTEGER:
        raise InvalidArgumentError(f"{op}: {what} must be an integer tensor; got {a}")


def _arange_shape(n: Any, dtype: str) -> tuple:
    _int("arange", "n", n)
    if n.shape != ():
        raise ShapeError(f"arange: n must be a scalar; got shape {format_shape(n.shape)}")
    return (None,)


arange_op = define_op("arange", ("n",), attrs={"dtype": "int64"}, shape_rule=_arange_shape,
                      dtype_rule=lambda n, dtype: dtype, differentiable=False, doc="0, 1, ..., n-1")


def _top_k_shape(x: Any, k: int) -> tuple:
    if x.ndim == 0:
        raise ShapeError("top_k: x must have at least 1 dim; got a scalar")
    if not isinstance(k, int) or k < 1 or (x.shape[-1] is not None and k > x.shape[-1]):
        raise InvalidArgumentError(f"top_k: k must be in [1, {x.shape[-1]}] (x.shape={format_shape(x.shape)}); "
                                   f"got {k!r}")
    return x.shape[:-1] + (k,)


top_k_op = define_op("top_k", ("x",), attrs={"k": REQUIRED}, shape_rule=_top_k_shape,
                     dtype_rule=lambda x, k: "int64", differentiable=False,
                     doc="indices of the k largest values along the last axis, largest first (ties: lower index)")


def _take_along_shape(x: Any, indices: Any) -> tuple:
    _int("take_along_axis", "indices", indices)
    if x.ndim != indices.ndim:
        raise ShapeError(f"take_along_axis: x and indices must have the same rank; got x.shape="
                         f"{format_shape(x.shape)}, indices.shape={format_shape(indices.shape)}")
    return x.shape[:-1] + indices.shape[-1:]


take_along_axis_op = define_op("take_along_axis", ("x", "indices"), shape_rule=_take_along_shape,
                               dtype_rule=lambda x, i: x.dtype, differentiable=False,
                               doc="numpy.take_along_axis on the last axis")


def _gather_tree_shape(step_ids: Any, parent_ids: Any, max_lengths: Any, end_token: int) -> tuple:
    for what, a in (("step_ids", step_ids), ("parent_ids", parent_ids), ("max_sequence_lengths", max_lengths)):
        _int("gather_tree", what, a)
    if step_ids.ndim != 3 or parent_ids.ndim != 3 or max_lengths.ndim != 1:
        raise ShapeError(f"gather_tree: expected step_ids and parent_ids (time, batch, beam) and "
                         f"max_sequence_lengths (batch,); got {step_ids}, {parent_ids}, {max_lengths}")
    return step_ids.shape


gather_tree_op = define_op("gather_tree", ("step_ids", "parent_ids", "max_sequence_lengths"),
                           attrs={"end_token": REQUIRED}, shape_rule=_gather_tree_shape,
                           dtype_rule=lambda s, p, m, end_token: s.dtype, differentiable=False,
                           doc="beams' full token sequences from per-step ids and parent pointers")


def arange(n: Any, dtype: str = "int64", name: str | None = None) -> Tensor:
    """``0, 1, ..., n-1`` for a run-time scalar ``n`` (an integer tensor)."""
    return arange_op.bind(n, dtype=dtype, name=name)


def top_k(x: Tensor, k: int, name: str | None = None) -> Tensor:
    """Indices (int64) of the ``k`` largest values along the last axis, largest first; ties keep the lower index.

    Combine with `take_along_axis` for the values (``tf.math.top_k`` returns both).
    """
    return top_k_op.bind(x, k=int(k), name=name)


def take_along_axis(x: Tensor, indices: Tensor, name: str | None = None) -> Tensor:
    """``numpy.take_along_axis(x, indices, axis=-1)``."""
    return take_along_axis_op.bind(x, indices, name=name)


def gather_tree(step_ids: Tensor, parent_ids: Tensor, max_sequence_lengths: Tensor, end_token: int,
                name: str | None = None) -> Tensor:
    """The full sequences of beams from per-step token ids and parent beam ids (TF's ``gather_tree``).

    Args:
        step_ids: (time, batch, beam) token chosen by each beam at each step.
        parent_ids: (time, batch, beam) the beam each one continued.
        max_sequence_lengths: (batch,) steps to trace back from; later steps become ``end_token``.
        end_token: the end token; every position after a beam's first end token is set to it.
        name: optional node name.

    Returns:
        (time, batch, beam) token sequences, beam k following its parents back from step
        ``max_sequence_lengths[b] - 1``.
    """
    return gather_tree_op.bind(step_ids, parent_ids, max_sequence_lengths, end_token=int(end_token), name=name)
