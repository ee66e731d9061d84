"""Shared shape and dtype helpers for op rules: broadcasting, axes, dtype promotion.

Static shapes are tuples whose entries are ints or ``None`` (unknown until run time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import InvalidArgumentError, ShapeError

Shape = tuple  # tuple[int | None, ...]

FLOATING = ("float16", "float32", "float64")
SIGNED = ("int8", "int16", "int32", "int64")
UNSIGNED = ("uint8",)
INTEGER = SIGNED + UNSIGNED
NUMERIC = FLOATING + INTEGER
BOOL = ("bool",)
ALL_DTYPES = NUMERIC + BOOL


def canonical_dtype(dtype: object, what: str = "dtype") -> str:
    """The kernelflow name of a dtype-like (``np.float32``, ``"f4"``, ``"float32"``...).

    Raises:
        InvalidArgumentError: for dtypes kernelflow does not support.
    """
    try:
        name = np.dtype(dtype).name  # type: ignore[arg-type]
    except TypeError as e:
        raise InvalidArgumentError(f"{what}: {dtype!r} is not a dtype; expected one of {ALL_DTYPES}") from e
    if name not in ALL_DTYPES:
        raise InvalidArgumentError(f"{what}: dtype {name} is not supported; expected one of {ALL_DTYPES}")
    return name


def format_shape(shape: Sequence[int | None] | None) -> str:
    """``(None, 64)`` style text for a static shape (``None`` = unknown rank)."""
    if shape is None:
        return "<unknown>"
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def normalize_shape(shape: Iterable[int | None] | int | None, what: str = "shape") -> Shape:
    """A tuple of ints/None from a shape-like, validating non-negative dims."""
    if shape is None:
        raise InvalidArgumentError(f"{what}: a shape is required, got None")
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    out = []
    for d in shape:
        if d is None:
            out.append(None)
        elif isinstance(d, (int, np.integer)) and not isinstance(d, bool) and int(d) >= 0:
            out.append(int(d))
        else:
            raise InvalidArgumentError(f"{what}: dims must be non-negative ints or None; got {tuple(shape)!r}")
    return tuple(out)


def broadcast_shapes(op: str, *shapes: Shape) -> Shape:
    """numpy broadcasting over static shapes with unknown (None) dims.

    Raises:
        ShapeError: naming the op and both shapes when two known dims differ and neither is 1.
    """
    rank = max((len(s) for s in shapes), default=0)
    out: list[int | None] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            labels = ", ".join(format_shape(s) for s in shapes)
            raise ShapeError(f"{op}: shapes cannot be broadcast together; got {labels}")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def normalize_axis(op: str, axis: int, rank: int) -> int:
    """A non-negative axis for ``rank`` dims, or ShapeError naming the op."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise InvalidArgumentError(f"{op}: axis must be an int; got {axis!r}")
    if not -rank <= axis < max(rank, 1) or (rank == 0 and axis not in (0, -1)):
        raise ShapeError(f"{op}: axis {axis} is out of range for a tensor of rank {rank}")
    return int(axis) % max(rank, 1)


def normalize_axes(op: str, axis: int | Sequence[int] | None, rank: int) -> tuple[int, ...]:
    """Sorted non-negative axes; ``None`` means all axes."""
    if axis is None:
        return tuple(range(rank))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    axes = tuple(sorted(normalize_axis(op, a, rank) for a in axis))
    if len(set(axes)) != len(axes):
        raise InvalidArgumentError(f"{op}: repeated axis in {tuple(axis)!r}")
    return axes


def promote(op: str, *dtypes: str) -> str:
    """numpy's result type of several dtypes, restricted to supported ones."""
    return canonical_dtype(np.result_type(*[np.dtype(d) for d in dtypes]), what=op)


def num_elements(shape: Shape) -> int | None:
    """Product of dims, or None if any is unknown."""
    n = 1
    for d in shape:
        if d is None:
            return None
        n *= d
    return n


def is_floating(dtype: str | None) -> bool:
    """True for float16/32/64."""
    return dtype in FLOATING
