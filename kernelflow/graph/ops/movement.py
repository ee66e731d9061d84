"""Shape and movement ops: reshape, expand_dims, squeeze, transpose, broadcasting, size,
indexing (slicing, gather), concat/stack/split, one_hot, tile, pad, flatten.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import define_op
from ..shapes import ALL_DTYPES, canonical_dtype, format_shape, normalize_axes, normalize_axis, num_elements

__all__ = ["reshape", "expand_dims", "squeeze", "transpose", "broadcast_to", "broadcast_like", "size", "flatten"]


# --------------------------------------------------------------------------- reshape
def _reshape_shape(x: Any, shape: tuple) -> tuple:
    shape = tuple(shape)
    if sum(1 for d in shape if d == -1) > 1:
        raise ShapeError(f"reshape: at most one -1 in the new shape; got {shape}")
    if any(d is None or (d < 0 and d != -1) for d in shape):
        raise ShapeError(f"reshape: new shape dims must be >= 0 or a single -1; got {shape}")
    n_in = num_elements(x.shape)
    known = 1
    for d in shape:
        if d != -1:
            known *= d
    if -1 not in shape:
        if n_in is not None and n_in != known:
            raise ShapeError(f"reshape: cannot reshape {format_shape(x.shape)} ({n_in} elements) into {shape}")
        return shape
    if n_in is None:
        return tuple(None if d == -1 else d for d in shape)
    if known == 0 or n_in % known:
        raise ShapeError(f"reshape: cannot reshape {format_shape(x.shape)} ({n_in} elements) into {shape}")
    return tuple(n_in // known if d == -1 else d for d in shape)


reshape_op = define_op("reshape", ("x",), attrs={"shape": ()}, shape_rule=_reshape_shape,
                       vjp=lambda g, out, x, shape: (reshape_like(g, x),), alias=True)
# Reshape to the runtime shape of ``like``: the gradient of reshape when dims are unknown.
reshape_like_op = define_op("reshape_like", ("x", "like"), shape_rule=lambda x, like: like.shape,
                            dtype_rule=lambda x, like: x.dtype,
                            vjp=lambda g, out, x, like: (reshape_like(g, x), None), alias=True)


def _expand_shape(x: Any, axis: int) -> tuple:
    a = normalize_axis("expand_dims", axis, x.ndim + 1)
    return x.shape[:a] + (1,) + x.shape[a:]


expand_dims_op = define_op("expand_dims", ("x",), attrs={"axis": 0}, shape_rule=_expand_shape,
                           vjp=lambda g, out, x, axis: (reshape_like(g, x),), alias=True)


def _squeeze_shape(x: Any, axis: Any) -> tuple:
    if axis is None:
        if any(d is None for d in x.shape):
            raise ShapeError(f"squeeze: axis=None needs a fully known shape; got {format_shape(x.shape)}")
        return tuple(d for d in x.shape if d != 1)
    axes = normalize_axes("squeeze", axis, x.ndim)
    for a in axes:
        if x.shape[a] not in (1, None):
            raise ShapeError(f"squeeze: axis {a} has size {x.shape[a]}, not 1; shape {format_shape(x.shape)}")
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


squeeze_op = define_op("squeeze", ("x",), attrs={"axis": None}, shape_rule=_squeeze_shape,
                       vjp=lambda g, out, x, axis: (reshape_like(g, x),), alias=True)


def _transpose_shape(x: Any, axes: Any) -> tuple:
    if axes is None:
        return tuple(reversed(x.shape))
    if sorted(normalize_axis("transpose", a, x.ndim) for a in axes) != list(range(x.ndim)):
        raise ShapeError(f"transpose: axes {tuple(axes)} are not a permutation of {x.ndim} dims")
    return tuple(x.shape[a] for a in axes)


def _transpose_vjp(g: Tensor, out: Tensor, x: Tensor, axes: Any) -> tuple:
    if axes is None:
        return (transpose(g),)
    inv = [0] * len(axes)
    for i, a in enumerate(axes):
        inv[a % len(axes)] = i
    return (transpose(g, tuple(inv)),)


transpose_op = define_op("transpose", ("x",), attrs={"axes": None}, shape_rule=_transpose_shape,
                         vjp=_transpose_vjp, alias=True)


# --------------------------------------------------------------------------- broadcasting
def _broadcast_to_shape(x: Any, shape: tuple) -> tuple:
    from ..shapes import broadcast_shapes

    out = broadcast_shapes("broadcast_to", x.shape, tuple(shape))
    if len(out) != len(shape) or any(s is not None and o != s for o, s in zip(out, shape)):
        raise ShapeError(f"broadcast_to: cannot broadcast {format_shape(x.shape)} to {format_shape(shape)}")
    return tuple(shape)


broadcast_to_op = define_op("broadcast_to", ("x",), attrs={"shape": ()}, shape_rule=_broadcast_to_shape,
                            vjp=lambda g, out, x, shape: (_sum_to(g, x),), alias=True)


def _broadcast_like_shape(x: Any, like: Any) -> tuple:
    from ..shapes import broadcast_shapes

    return broadcast_shapes("broadcast_like", x.shape, like.shape)


broadcast_like_op = define_op("broadcast_like", ("x", "like"), shape_rule=_broadcast_like_shape,
                              dtype_rule=lambda x, like: x.dtype,
                              vjp=lambda g, out, x, like: (_sum_to(g, x), None), alias=True)


def _sum_to(g: Tensor, x: Tensor) -> Tensor:
    from .reduce import sum_to

    return sum_to(g, x)


size_op = define_op("size", ("x",), attrs={"dtype": "int64"}, shape_rule=lambda x, dtype: (),
                    dtype_rule=lambda x, dtype: canonical_dtype(dtype, "size"), differentiable=False,
                    doc="number of elements of x at run time")


# --------------------------------------------------------------------------- builders
def reshape(x: Tensor, shape: Any, name: str | None = None) -> Tensor:
    """``x`` with a new shape (one dim may be -1), numpy's semantics."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    return reshape_op.bind(x, shape=tuple(int(d) for d in shape), name=name)


def reshape_like(x: Tensor, like: Tensor, name: str | None = None) -> Tensor:
    """``x`` reshaped to the runtime shape of ``like``."""
    return reshape_like_op.bind(x, like, name=name)


def expand_dims(x: Tensor, axis: int, name: str | None = None) -> Tensor:
    """Insert a size-1 dim at ``axis``."""
    return expand_dims_op.bind(x, axis=int(axis), name=name)


def squeeze(x: Tensor, axis: Any = None, name: str | None = None) -> Tensor:
    """Remove size-1 dims (those in ``axis``, or all)."""
    if isinstance(axis, list):
        axis = tuple(axis)
    return squeeze_op.bind(x, axis=axis, name=name)


def transpose(x: Tensor, axes: Any = None, name: str | None = None) -> Tensor:
    """Permute the axes (reverse them when ``axes`` is None)."""
    if axes is not None:
        axes = tuple(int(a) for a in axes)
    return transpose_op.bind(x, axes=axes, name=name)


def broadcast_to(x: Tensor, shape: Any, name: str | None = None) -> Tensor:
    """``x`` broadcast to a static ``shape``."""
    return broadcast_to_op.bind(x, shape=tuple(int(d) for d in shape), name=name)


def broadcast_like(x: Tensor, like: Tensor, name: str | None = None) -> Tensor:
    """``x`` broadcast against the runtime shape of ``like``."""
    return broadcast_like_op.bind(x, like, name=name)


def size(x: Tensor, dtype: Any = "int64", name: str | None = None) -> Tensor:
    """The number of elements of ``x`` at run time, as a scalar of ``dtype``."""
    return size_op.bind(x, dtype=canonical_dtype(dtype, "size"), name=name)


def flatten(x: Tensor, name: str | None = None) -> Tensor:
    """``x`` reshaped to ``(batch, -1)``: keeps the first dim, merges the rest."""
    rest = num_elements(x.shape[1:])
    if rest is None:
        raise ShapeError(f"flatten: dims after the first must be known; got {format_shape(x.shape)}")
    return reshape(x, (-1, rest), name=name)


def getitem(x: Tensor, index: Any) -> Tensor:
    """``x[index]``: basic slicing, and integer arrays / tensors on axis 0 (gather)."""
    raise InvalidArgumentError(f"indexing tensor '{x.name}' with {index!r} is not supported yet")


_ = ALL_DTYPES
