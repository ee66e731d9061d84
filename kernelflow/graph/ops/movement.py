"""Shape and movement ops: reshape, expand_dims, squeeze, transpose, broadcasting, size,
concat/stack/split, tile, pad, flatten; and (from `indexing`, split off for file size)
slicing, gather/take, scatter_add, one_hot.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import REQUIRED, define_op
from ..shapes import canonical_dtype, format_shape, normalize_axes, normalize_axis, num_elements, promote

__all__ = ["reshape", "expand_dims", "squeeze", "transpose", "broadcast_to", "broadcast_like", "size", "flatten",
           "concat", "stack", "split", "tile", "pad"]


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


# --------------------------------------------------------------------------- concat / split
def _concat_shape(*values: Any, axis: int) -> tuple:
    if not values:
        raise InvalidArgumentError("concat: needs at least one tensor")
    rank = values[0].ndim
    if rank == 0:
        raise ShapeError("concat: cannot concatenate rank-0 tensors; use kf.stack")
    a = normalize_axis("concat", axis, rank)
    out = list(values[0].shape)
    ref = [0] * rank  # which input fixed each dim, for the error message
    for i, v in enumerate(values[1:], 1):
        if v.ndim != rank:
            raise ShapeError(f"concat: all inputs must have the same rank; got values[0].shape="
                             f"{format_shape(values[0].shape)}, values[{i}].shape={format_shape(v.shape)}")
        for k, d in enumerate(v.shape):
            if k == a or d is None:
                continue
            if out[k] is None:
                out[k], ref[k] = d, i
            elif out[k] != d:
                raise ShapeError(f"concat: dims other than axis {a} must match; got values[{ref[k]}].shape="
                                 f"{format_shape(values[ref[k]].shape)}, values[{i}].shape={format_shape(v.shape)}")
    sizes = [v.shape[a] for v in values]
    out[a] = None if None in sizes else sum(sizes)
    return tuple(out)


def _concat_vjp(g: Tensor, out: Tensor, *values: Tensor, axis: int) -> tuple:
    from .indexing import strided_slice

    a = axis % values[0].ndim
    sizes = [v.shape[a] for v in values]
    if None in sizes:  # offsets known only at run time
        return tuple(split_part_op.bind(g, *values, axis=a, index=k, num=0) for k in range(len(values)))
    offsets = [sum(sizes[:k]) for k in range(len(values))]
    lead = [None] * a
    return tuple(strided_slice(g, lead + [o], lead + [o + s]) for o, s in zip(offsets, sizes))


concat_op = define_op("concat", ("*values",), attrs={"axis": 0}, shape_rule=_concat_shape,
                      dtype_rule=lambda *values, axis: promote("concat", *[v.dtype for v in values]),
                      vjp=_concat_vjp, doc="numpy.concatenate")


def _split_part_shape(x: Any, *likes: Any, axis: int, index: int, num: int) -> tuple:
    a = normalize_axis("split_part", axis, x.ndim)
    d = x.shape[a]
    if likes:
        if not 0 <= index < len(likes) or any(v.ndim != x.ndim for v in likes):
            raise InvalidArgumentError(f"split_part: index {index} must name one of {len(likes)} like tensors "
                                       f"of rank {x.ndim}")
        return x.shape[:a] + (likes[index].shape[a],) + x.shape[a + 1:]
    if not (isinstance(num, int) and num >= 1 and 0 <= index < num):
        raise InvalidArgumentError(f"split_part: need num >= 1 and 0 <= index < num; got num={num}, index={index}")
    if d is not None and d % num:
        raise ShapeError(f"split: axis {a} of size {d} does not divide into {num} equal parts; "
                         f"x.shape={format_shape(x.shape)}")
    return x.shape[:a] + (None if d is None else d // num,) + x.shape[a + 1:]


def _zeros_like(t: Tensor, dtype: str) -> Tensor:
    return broadcast_like(t.graph.constant(0, dtype=dtype), t)


def _split_part_vjp(g: Tensor, out: Tensor, x: Tensor, *likes: Tensor, axis: int, index: int, num: int) -> tuple:
    if likes:
        parts = [g if k == index else _zeros_like(v, g.dtype) for k, v in enumerate(likes)]
    else:
        zero = _zeros_like(g, g.dtype)
        parts = [g if k == index else zero for k in range(num)]
    return (concat(parts, axis),) + (None,) * len(likes)


# Part ``index`` of x along ``axis``: of ``num`` equal parts, or (num=0) of parts sized like
# the ``likes`` along that axis. Used where the part offsets are known only at run time.
split_part_op = define_op("split_part", ("x", "*likes"), attrs={"axis": REQUIRED, "index": REQUIRED, "num": 0},
                          shape_rule=_split_part_shape, dtype_rule=lambda x, *likes, **attrs: x.dtype,
                          vjp=_split_part_vjp, alias=True, doc="one part of an even or like-sized split")


# --------------------------------------------------------------------------- tile
def _check_reps(op: str, reps: Any) -> tuple:
    if not isinstance(reps, tuple) or not all(isinstance(r, int) and r >= 0 for r in reps):
        raise InvalidArgumentError(f"{op}: reps must be a tuple of ints >= 0; got {reps!r}")
    return reps


def _tile_shape(x: Any, reps: tuple) -> tuple:
    reps = _check_reps("tile", reps)
    n = max(len(reps), x.ndim)
    shape = (1,) * (n - x.ndim) + tuple(x.shape)
    reps = (1,) * (n - len(reps)) + reps
    return tuple(None if d is None else d * r for d, r in zip(shape, reps))


tile_op = define_op("tile", ("x",), attrs={"reps": ()}, shape_rule=_tile_shape,
                    vjp=lambda g, out, x, reps: (tile_grad_op.bind(g, x, reps=reps),), doc="numpy.tile")
# Sum of the tiled copies of g, in like's runtime shape: the adjoint of tile.
tile_grad_op = define_op("tile_grad", ("g", "like"), attrs={"reps": ()},
                         shape_rule=lambda g, like, reps: (_check_reps("tile_grad", reps), like.shape)[1],
                         dtype_rule=lambda g, like, reps: g.dtype,
                         vjp=lambda g, out, gin, like, reps: (tile(g, reps), None))


# --------------------------------------------------------------------------- pad
PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def _check_pad_width(op: str, x: Any, pad_width: Any) -> None:
    if not isinstance(pad_width, tuple) or len(pad_width) != x.ndim:
        raise ShapeError(f"{op}: pad_width needs one (before, after) pair per dim of x (rank {x.ndim}); "
                         f"got {pad_width!r}")
    for p in pad_width:
        if not (isinstance(p, tuple) and len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p)):
            raise ShapeError(f"{op}: pad widths must be (before, after) pairs of ints >= 0; got {pad_width!r}")


def _pad_shape(x: Any, pad_width: tuple, mode: str, constant_values: Any) -> tuple:
    _check_pad_width("pad", x, pad_width)
    if mode not in PAD_MODES:
        raise InvalidArgumentError(f"pad: mode must be one of {PAD_MODES}; got {mode!r}")
    if not isinstance(constant_values, (int, float, bool)):
        raise InvalidArgumentError(f"pad: constant_values must be a number; got {constant_values!r}")
    for i, (d, (b, e)) in enumerate(zip(x.shape, pad_width)):
        if mode != "constant" and d == 0 and b + e:
            raise ShapeError(f"pad: mode '{mode}' cannot pad axis {i}, which is empty; x.shape={format_shape(x.shape)}")
    return tuple(None if d is None else d + b + e for d, (b, e) in zip(x.shape, pad_width))


def _pad_vjp(g: Tensor, out: Tensor, x: Tensor, pad_width: tuple, mode: str, constant_values: Any) -> tuple:
    if mode == "constant":
        from .indexing import strided_slice

        return (strided_slice(g, [b for b, _ in pad_width], [-e if e else None for _, e in pad_width]),)
    return (pad_grad_op.bind(g, x, pad_width=pad_width, mode=mode),)


pad_op = define_op("pad", ("x",), attrs={"pad_width": (), "mode": "constant", "constant_values": 0},
                   shape_rule=_pad_shape, vjp=_pad_vjp, doc="numpy.pad (constant, edge, reflect, symmetric, wrap)")


def _pad_grad_shape(g: Any, like: Any, pad_width: tuple, mode: str) -> tuple:
    _check_pad_width("pad_grad", like, pad_width)
    if mode not in PAD_MODES:
        raise InvalidArgumentError(f"pad_grad: mode must be one of {PAD_MODES}; got {mode!r}")
    return like.shape


# Each element of like's shape summed over the positions the padded copy reads it into:
# the adjoint of a non-constant pad.
pad_grad_op = define_op("pad_grad", ("g", "like"), attrs={"pad_width": (), "mode": "edge"},
                        shape_rule=_pad_grad_shape, dtype_rule=lambda g, like, **attrs: g.dtype,
                        vjp=lambda g, out, gin, like, pad_width, mode: (pad_op.bind(g, pad_width=pad_width,
                                                                                     mode=mode), None))


# --------------------------------------------------------------------------- builders
def reshape(x: Tensor, shape: Any, name: str | None = None) -> Tensor:
    """``x`` with a new shape (one dim may be -1), numpy's semantics."""
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    return reshape_op.bind(x, shape=tuple(d if d is None else int(d) for d in shape), name=name)


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
    if x.ndim == 0:
        raise ShapeError(f"flatten: x must have rank >= 1; got a scalar '{x.name}'")
    rest = num_elements(x.shape[1:])
    if rest is None:
        raise ShapeError(f"flatten: dims after the first must be known; got {format_shape(x.shape)}")
    return reshape(x, (-1, rest), name=name)


def concat(values: Any, axis: int = 0, name: str | None = None) -> Tensor:
    """Join tensors along an existing ``axis`` (``numpy.concatenate``).

    Args:
        values: a list of tensors (arrays among them become constants) of equal rank whose
            dims match except along ``axis``; dtypes are promoted as numpy does.
        axis: the axis to join along.
        name: optional node name.

    Returns:
        The joined tensor.

    Raises:
        ShapeError: ranks differ, other dims differ, or ``axis`` is out of range.
    """
    values = list(values)
    return concat_op.bind(*values, axis=int(axis), name=name)


def stack(values: Any, axis: int = 0, name: str | None = None) -> Tensor:
    """Join same-shaped tensors along a new ``axis`` (``numpy.stack``).

    Args:
        values: a non-empty list of tensors of one shape.
        axis: where the new axis goes in the result (``-1``: last).
        name: optional node name.

    Returns:
        A tensor of rank one more than the inputs.

    Raises:
        ShapeError: when the shapes differ or ``axis`` is out of range.
    """
    values = list(values)
    if not values or not any(isinstance(v, Tensor) for v in values):
        raise InvalidArgumentError("stack: needs a non-empty list with at least one kf.Tensor")
    graph = next(v for v in values if isinstance(v, Tensor)).graph
    values = [v if isinstance(v, Tensor) else graph.constant(v) for v in values]
    first = values[0]
    for i, v in enumerate(values[1:], 1):
        if v.ndim != first.ndim or any(a is not None and b is not None and a != b
                                       for a, b in zip(first.shape, v.shape)):
            raise ShapeError(f"stack: all inputs must have the same shape; got values[0].shape="
                             f"{format_shape(first.shape)}, values[{i}].shape={format_shape(v.shape)}")
    a = normalize_axis("stack", axis, first.ndim + 1)
    return concat([expand_dims(v, a) for v in values], axis=a, name=name)


def split(x: Tensor, num_or_sizes: Any, axis: int = 0, name: str | None = None) -> list[Tensor]:
    """Split ``x`` along ``axis`` into equal parts or parts of given sizes.

    Args:
        x: the tensor to split.
        num_or_sizes: an int N (N equal parts; the dim must divide by N) or a list of sizes,
            one of which may be -1 (the rest of the dim).
        axis: the axis to split.
        name: optional base name of the part nodes.

    Returns:
        A list of tensors, one per part (each a node of its own).

    Raises:
        ShapeError: when a known dim does not divide, or the sizes do not add up to it.
    """
    a = normalize_axis("split", axis, x.ndim)
    d = x.shape[a]
    base = name or "split"
    if isinstance(num_or_sizes, (int, np.integer)):
        num = int(num_or_sizes)
        if num < 1:
            raise InvalidArgumentError(f"split: the number of parts must be >= 1; got {num}")
        if d is not None and d % num:
            raise ShapeError(f"split: axis {a} of size {d} does not divide into {num} equal parts; "
                             f"x.shape={format_shape(x.shape)}")
        return [split_part_op.bind(x, axis=a, index=k, num=num, name=base) for k in range(num)]
    from .indexing import strided_slice

    sizes = [int(s) for s in num_or_sizes]
    if any(s < -1 for s in sizes) or sizes.count(-1) > 1:
        raise ShapeError(f"split: sizes must be >= 0 with at most one -1; got {sizes}")
    known = sum(s for s in sizes if s != -1)
    if d is not None:
        if -1 in sizes and known <= d:
            sizes[sizes.index(-1)] = d - known
        elif known != d or -1 in sizes:
            raise ShapeError(f"split: sizes {sizes} do not add up to the size {d} of axis {a}; "
                             f"x.shape={format_shape(x.shape)}")
    lead = [None] * a
    out = []
    for k, s in enumerate(sizes):
        before, after = sizes[:k], sizes[k + 1:]
        if s == -1:
            tail = sum(after)
            bounds = (sum(before), -tail if tail else None)
        elif -1 in before:  # the dim is unknown: place the parts after the -1 from the end
            tail = s + sum(after)
            bounds = (-tail, -tail + s or None) if s else (0, 0)
        else:
            bounds = (sum(before), sum(before) + s)
        out.append(strided_slice(x, lead + [bounds[0]], lead + [bounds[1]], name=base))
    return out


def tile(x: Tensor, reps: Any, name: str | None = None) -> Tensor:
    """Repeat ``x`` ``reps[i]`` times along each dim (``numpy.tile``).

    Args:
        x: the tensor to repeat.
        reps: an int or a sequence of ints >= 0; the shorter of ``reps`` and ``x.shape``
            is padded with leading 1s.
        name: optional node name.

    Returns:
        The tiled tensor.
    """
    if isinstance(reps, (int, np.integer)):
        reps = (reps,)
    return tile_op.bind(x, reps=tuple(int(r) for r in reps), name=name)


def _pad_pairs(x: Tensor, pad_width: Any) -> tuple:
    """numpy's pad_width forms (int, (n,), (before, after), per-dim pairs) as per-dim pairs."""
    if isinstance(pad_width, (int, np.integer)):
        return ((int(pad_width),) * 2,) * x.ndim
    pw = [p if isinstance(p, (int, np.integer)) else tuple(p) for p in pad_width]
    if len(pw) == 1 and isinstance(pw[0], (int, np.integer)):
        return ((int(pw[0]),) * 2,) * x.ndim
    if len(pw) == 2 and all(isinstance(p, (int, np.integer)) for p in pw):
        return ((int(pw[0]), int(pw[1])),) * x.ndim
    if len(pw) == 1 and len(pw[0]) == 2:
        return (tuple(int(v) for v in pw[0]),) * x.ndim
    try:
        return tuple(tuple(int(v) for v in p) for p in pw)
    except TypeError:
        raise ShapeError(f"pad: pad_width must be an int or (before, after) pairs; got {pad_width!r}") from None


def pad(x: Tensor, pad_width: Any, mode: str = "constant", constant_values: Any = 0,
        name: str | None = None) -> Tensor:
    """Pad ``x`` (``numpy.pad``).

    Args:
        x: the tensor to pad.
        pad_width: ``((before_0, after_0), ...)`` per dim, or numpy's shorthands: one
            ``(before, after)`` pair or one int for every dim.
        mode: ``"constant"``, ``"edge"``, ``"reflect"``, ``"symmetric"`` or ``"wrap"``.
        constant_values: the fill value in ``"constant"`` mode.
        name: optional node name.

    Returns:
        The padded tensor.

    Raises:
        ShapeError: a pad_width of the wrong length or with negative widths.
        InvalidArgumentError: an unknown mode.
    """
    if isinstance(constant_values, np.generic):
        constant_values = constant_values.item()
    return pad_op.bind(x, pad_width=_pad_pairs(x, pad_width), mode=mode, constant_values=constant_values,
                       name=name)


from .indexing import gather, getitem, one_hot, scatter_add, slice, strided_slice, take  # noqa: E402

__all__ += ["strided_slice", "slice", "gather", "take", "scatter_add", "one_hot"]
_ = (getitem, gather, one_hot, scatter_add, slice, strided_slice, take)
