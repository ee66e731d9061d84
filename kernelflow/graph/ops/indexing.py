"""Indexing ops: basic slicing (``x[1:, ::-1, None]``), gather/take, scatter_add, one_hot.

Part of the movement family, split off for file size; `movement` re-exports every builder.

A basic index is stored as the attr ``index``: a tuple with one entry per indexed dim,
each an int (the dim is dropped), a ``(start, stop, step)`` triple of ints or None (a
Python slice), or None (a new size-1 dim). Ellipsis is expanded when the node is built
(the rank is static); dims past the last entry are kept whole. The kernel applies the
same Python index, so dims unknown when the graph is built are sliced at run time.
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import REQUIRED, define_op
from ..shapes import INTEGER, canonical_dtype, format_shape, normalize_axis

__all__ = ["strided_slice", "slice", "getitem", "gather", "take", "scatter_add", "one_hot"]

_FULL = (None, None, None)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# --------------------------------------------------------------------------- strided_slice
def _check_index(op: str, index: Any, rank: int) -> None:
    """Validate an ``index`` attr (it may come from the wire) against the input rank."""
    if not isinstance(index, tuple):
        raise InvalidArgumentError(f"{op}: attr index must be a tuple; got {index!r}")
    consumed = 0
    for e in index:
        if e is None:
            continue
        if isinstance(e, tuple):
            if len(e) != 3 or not all(v is None or _is_int(v) for v in e):
                raise InvalidArgumentError(f"{op}: a slice entry must be (start, stop, step) of ints or None; "
                                           f"got {e!r}")
            if e[2] == 0:
                raise InvalidArgumentError(f"{op}: slice step must not be zero; got index {index!r}")
        elif not _is_int(e):
            raise InvalidArgumentError(f"{op}: index entries must be ints, (start, stop, step) or None; got {e!r}")
        consumed += 1
    if consumed > rank:
        raise ShapeError(f"{op}: too many indices for a tensor of rank {rank}; got {consumed} in {index!r}")


def _strided_slice_shape(x: Any, index: tuple) -> tuple:
    _check_index("strided_slice", index, x.ndim)
    out: list[int | None] = []
    axis = 0
    for e in index:
        if e is None:
            out.append(1)
            continue
        d = x.shape[axis]
        if isinstance(e, tuple):
            out.append(None if d is None else len(range(*builtins.slice(*e).indices(d))))
        elif d is not None and not -d <= e < d:
            raise ShapeError(f"strided_slice: index {e} is out of range for axis {axis} with size {d}; "
                             f"x.shape={format_shape(x.shape)}")
        axis += 1
    return tuple(out) + tuple(x.shape[axis:])


strided_slice_op = define_op(
    "strided_slice", ("x",), attrs={"index": ()}, shape_rule=_strided_slice_shape,
    vjp=lambda g, out, x, index: (strided_slice_grad_op.bind(g, x, index=index),), alias=True,
    doc="x[index] with basic (view) indexing")


def _strided_slice_grad_shape(g: Any, like: Any, index: tuple) -> tuple:
    want = _strided_slice_shape(like, index)
    if len(want) != g.ndim or any(w is not None and d is not None and w != d for w, d in zip(want, g.shape)):
        raise ShapeError(f"strided_slice_grad: g must have the shape of like[index] = {format_shape(want)}; "
                         f"got g.shape={format_shape(g.shape)}")
    return like.shape


# Zeros of like's runtime shape with g written at ``index``: the adjoint of strided_slice.
strided_slice_grad_op = define_op(
    "strided_slice_grad", ("g", "like"), attrs={"index": ()}, shape_rule=_strided_slice_grad_shape,
    dtype_rule=lambda g, like, index: g.dtype,
    vjp=lambda g, out, gin, like, index: (strided_slice_op.bind(g, index=index), None))


# --------------------------------------------------------------------------- take / scatter_add
def _check_indices(op: str, indices: Any) -> None:
    if indices.dtype not in INTEGER:
        raise InvalidArgumentError(f"{op}: indices must have an integer dtype; got {indices.dtype}")


def _take_shape(x: Any, indices: Any, axis: int) -> tuple:
    _check_indices("take", indices)
    if x.ndim == 0:
        raise ShapeError("take: x must have rank >= 1; got a scalar")
    a = normalize_axis("take", axis, x.ndim)
    return x.shape[:a] + indices.shape + x.shape[a + 1:]


def _scatter_add_shape(updates: Any, indices: Any, like: Any, axis: int) -> tuple:
    _check_indices("scatter_add", indices)
    if like.ndim == 0:
        raise ShapeError("scatter_add: like must have rank >= 1; got a scalar")
    a = normalize_axis("scatter_add", axis, like.ndim)
    want = like.shape[:a] + indices.shape + like.shape[a + 1:]
    if len(want) != updates.ndim or any(w is not None and u is not None and w != u
                                        for w, u in zip(want, updates.shape)):
        raise ShapeError(f"scatter_add: updates must have shape like.shape[:axis] + indices.shape + "
                         f"like.shape[axis+1:] = {format_shape(want)}; got updates.shape="
                         f"{format_shape(updates.shape)}")
    return like.shape


take_op = define_op("take", ("x", "indices"), attrs={"axis": 0}, shape_rule=_take_shape,
                    dtype_rule=lambda x, indices, axis: x.dtype,
                    vjp=lambda g, out, x, indices, axis: (scatter_add_op.bind(g, indices, x, axis=axis), None),
                    doc="numpy.take: the slices of x at integer indices along axis (gather)")
scatter_add_op = define_op("scatter_add", ("updates", "indices", "like"), attrs={"axis": 0},
                           shape_rule=_scatter_add_shape, dtype_rule=lambda u, i, like, axis: u.dtype,
                           vjp=lambda g, out, u, indices, like, axis: (take_op.bind(g, indices, axis=axis), None,
                                                                       None),
                           doc="zeros of like's shape with updates added at indices along axis (repeats add)")


# --------------------------------------------------------------------------- one_hot
def _one_hot_shape(indices: Any, depth: int, dtype: str, on_value: Any, off_value: Any) -> tuple:
    if not _is_int(depth) or depth < 0:
        raise InvalidArgumentError(f"one_hot: depth must be an int >= 0; got {depth!r}")
    for label, v in (("on_value", on_value), ("off_value", off_value)):
        if not isinstance(v, (int, float, np.number)):
            raise InvalidArgumentError(f"one_hot: {label} must be a number; got {v!r}")
    return indices.shape + (int(depth),)


def _one_hot_dtype(indices: Any, depth: int, dtype: str, **attrs: Any) -> str:
    _check_indices("one_hot", indices)
    return canonical_dtype(dtype, "one_hot")


one_hot_op = define_op("one_hot", ("indices",),
                       attrs={"depth": REQUIRED, "dtype": "float32", "on_value": 1, "off_value": 0},
                       shape_rule=_one_hot_shape, dtype_rule=_one_hot_dtype, differentiable=False,
                       doc="on_value where the last axis equals indices, else off_value")


# --------------------------------------------------------------------------- builders
def _opt_int(v: Any, what: str) -> int | None:
    if v is None:
        return None
    if _is_int(v):
        return int(v)
    if isinstance(v, Tensor):
        raise InvalidArgumentError(f"{what}: slice bounds must be Python ints; tensor '{v.name}' is not supported")
    raise InvalidArgumentError(f"{what}: slice bounds must be ints or None; got {v!r}")


def _bind_index(x: Tensor, entries: list, name: str | None) -> Tensor:
    while entries and entries[-1] == _FULL:  # trailing whole dims are implied
        entries.pop()
    return strided_slice_op.bind(x, index=tuple(entries), name=name)


def _basic_index(x: Tensor, index: tuple, name: str | None = None) -> Tensor:
    if sum(e is Ellipsis for e in index) > 1:
        raise InvalidArgumentError(f"getitem: an index can have only one Ellipsis; got {index!r}")
    consumed = sum(1 for e in index if e is not None and e is not Ellipsis)
    if consumed > x.ndim:
        raise ShapeError(f"getitem: too many indices for tensor '{x.name}' of rank {x.ndim}; got {consumed}")
    entries: list = []
    for e in index:
        if e is Ellipsis:
            entries.extend([_FULL] * (x.ndim - consumed))
        elif e is None:
            entries.append(None)
        elif isinstance(e, builtins.slice):
            entries.append(tuple(_opt_int(v, "getitem") for v in (e.start, e.stop, e.step)))
        elif _is_int(e) or (isinstance(e, np.ndarray) and e.ndim == 0 and e.dtype.kind in "iu"):
            entries.append(int(e))
        else:
            raise InvalidArgumentError(
                f"getitem: unsupported index {e!r}; use ints, slices, None, Ellipsis, or an integer array "
                "or tensor on axis 0")
    return _bind_index(x, entries, name)


def _is_array_index(e: Any) -> bool:
    return isinstance(e, (Tensor, list)) or (isinstance(e, np.ndarray) and e.ndim > 0)


def _as_indices(op: str, e: Any) -> Any:
    """An integer Tensor or int64 array from an index-like; bool masks are refused."""
    if isinstance(e, Tensor):
        if e.dtype not in INTEGER:
            raise InvalidArgumentError(f"{op}: index tensor '{e.name}' must have an integer dtype; got {e.dtype} "
                                       "(boolean masks are not supported; use kf.where)")
        return e
    arr = np.asarray(e)
    if arr.dtype.kind == "b":
        raise InvalidArgumentError(f"{op}: boolean mask indexing is not supported; use kf.where")
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{op}: indices must be integers; got {e!r}")
    return arr.astype(np.int64, copy=False)


def getitem(x: Tensor, index: Any) -> Tensor:
    """``x[index]``, as ``Tensor.__getitem__`` calls it.

    Supports numpy's basic indexing (ints, slices with any step, Ellipsis, None) and, on
    axis 0 only, integer-array indexing with a list, an int ndarray or an integer tensor
    (a gather), optionally followed by basic indices for the remaining dims.

    Args:
        x: the tensor to index.
        index: the index, as numpy takes it.

    Returns:
        The indexed tensor. Basic indexing yields a view (no copy) at run time.

    Raises:
        ShapeError: too many indices, or an int index out of range of a known dim.
        InvalidArgumentError: unsupported index kinds (boolean masks, arrays on other axes).
    """
    if not isinstance(index, tuple):
        index = (index,)
    if index and _is_array_index(index[0]):
        if x.ndim == 0:
            raise ShapeError(f"getitem: cannot index a scalar tensor '{x.name}' with an array")
        out = take(x, _as_indices("getitem", index[0]), axis=0)
        rest = index[1:]
        if not rest:
            return out
        k = out.ndim - (x.ndim - 1)  # rank of the index array: its dims lead the result
        return _basic_index(out, (builtins.slice(None),) * k + rest)
    if any(_is_array_index(e) for e in index):
        raise InvalidArgumentError(
            f"getitem: integer-array indexing is supported on axis 0 only; got {index!r}; "
            "use kf.take(x, indices, axis) for other axes")
    return _basic_index(x, index)


def strided_slice(x: Tensor, begin: Any, end: Any, strides: Any = None, name: str | None = None) -> Tensor:
    """``x[begin[0]:end[0]:strides[0], begin[1]:end[1]:strides[1], ...]`` (Python slice semantics).

    Args:
        x: the tensor to slice.
        begin: one start per leading dim (ints, negative from the end, or None).
        end: one stop per leading dim (ints or None), same length as ``begin``.
        strides: one step per leading dim (nonzero ints or None; default 1).
        name: optional node name.

    Returns:
        The slice; dims past ``len(begin)`` are kept whole.

    Raises:
        ShapeError: when the lists are longer than the rank of ``x`` or differ in length.
    """
    begin, end = list(begin), list(end)
    strides = [None] * len(begin) if strides is None else list(strides)
    if not len(begin) == len(end) == len(strides):
        raise ShapeError(f"strided_slice: begin, end and strides must have equal lengths; got begin={begin}, "
                         f"end={end}, strides={strides}")
    if len(begin) > x.ndim:
        raise ShapeError(f"strided_slice: got {len(begin)} begin values for tensor '{x.name}' of rank {x.ndim}")
    entries = [tuple(_opt_int(v, "strided_slice") for v in e) for e in zip(begin, end, strides)]
    return _bind_index(x, entries, name)


def slice(x: Tensor, begin: Any, size: Any, name: str | None = None) -> Tensor:  # noqa: A001 (TF's name)
    """The block of ``x`` starting at ``begin`` with extent ``size`` (TensorFlow's ``tf.slice``).

    Args:
        x: the tensor to slice.
        begin: one non-negative start per dim of ``x``.
        size: one extent per dim; -1 means "to the end of the dim".
        name: optional node name.

    Returns:
        ``x[begin[0]:begin[0]+size[0], ...]``.

    Raises:
        ShapeError: wrong lengths, negative begin, size < -1, or a block past a known dim.
    """
    begin = [int(b) for b in begin]
    size = [int(s) for s in size]
    if len(begin) != x.ndim or len(size) != x.ndim:
        raise ShapeError(f"slice: begin and size need one entry per dim of x (rank {x.ndim}); got begin={begin}, "
                         f"size={size}")
    entries = []
    for i, (b, s, d) in enumerate(zip(begin, size, x.shape)):
        if b < 0 or s < -1:
            raise ShapeError(f"slice: begin must be >= 0 and size >= -1; got begin[{i}]={b}, size[{i}]={s}")
        if d is not None and (b > d or (s != -1 and b + s > d)):
            raise ShapeError(f"slice: begin[{i}]={b} with size[{i}]={s} runs past dim {i} of size {d}; "
                             f"x.shape={format_shape(x.shape)}")
        entries.append((b, None if s == -1 else b + s, None))
    return _bind_index(x, entries, name)


def take(x: Tensor, indices: Any, axis: int = 0, name: str | None = None) -> Tensor:
    """``numpy.take``: the slices of ``x`` at integer ``indices`` along ``axis``.

    Args:
        x: the tensor to gather from (rank >= 1).
        indices: integer tensor, array or list of any shape; negative values count from the end.
        axis: the axis to gather along.
        name: optional node name.

    Returns:
        A tensor of shape ``x.shape[:axis] + indices.shape + x.shape[axis+1:]``. Out-of-range
        indices raise InvalidArgumentError on numpy; on cupy they wrap around.
    """
    axis = normalize_axis("take", axis, x.ndim) if x.ndim else int(axis)
    return take_op.bind(x, _as_indices("take", indices), axis=axis, name=name)


def gather(params: Tensor, indices: Any, name: str | None = None) -> Tensor:
    """Rows of ``params`` at integer ``indices`` (axis 0): ``take(params, indices, 0)``.

    Args:
        params: ``(n, ...)`` tensor.
        indices: integer tensor, array or list of any shape, values in ``[-n, n)``.
        name: optional node name.

    Returns:
        A tensor of shape ``indices.shape + params.shape[1:]``.
    """
    return take(params, indices, axis=0, name=name)


def scatter_add(updates: Tensor, indices: Any, like: Tensor, axis: int = 0, name: str | None = None) -> Tensor:
    """Zeros of ``like``'s runtime shape with ``updates`` added at ``indices`` along ``axis``.

    The adjoint of `take`: rows named several times in ``indices`` accumulate.

    Args:
        updates: tensor of shape ``like.shape[:axis] + indices.shape + like.shape[axis+1:]``.
        indices: integer tensor, array or list.
        like: tensor whose runtime shape the result takes (its values are not read).
        axis: the axis of ``like`` that ``indices`` address.
        name: optional node name.

    Returns:
        A tensor of ``like``'s shape and ``updates``' dtype.
    """
    axis = normalize_axis("scatter_add", axis, like.ndim) if like.ndim else int(axis)
    return scatter_add_op.bind(updates, _as_indices("scatter_add", indices), like, axis=axis, name=name)


def one_hot(indices: Any, depth: int, dtype: Any = "float32", on_value: Any = 1, off_value: Any = 0,
            name: str | None = None) -> Tensor:
    """One-hot encoding along a new last axis.

    Args:
        indices: integer tensor of any shape; values outside ``[0, depth)`` give all-off rows.
        depth: the size of the new axis.
        dtype: the output dtype.
        on_value: value where the position equals the index.
        off_value: value elsewhere.
        name: optional node name.

    Returns:
        A tensor of shape ``indices.shape + (depth,)``.
    """
    if not _is_int(depth):
        raise InvalidArgumentError(f"one_hot: depth must be an int; got {depth!r}")
    on_value = on_value.item() if isinstance(on_value, np.generic) else on_value
    off_value = off_value.item() if isinstance(off_value, np.generic) else off_value
    return one_hot_op.bind(indices, depth=int(depth), dtype=canonical_dtype(dtype, "one_hot"), on_value=on_value,
                           off_value=off_value, name=name)
