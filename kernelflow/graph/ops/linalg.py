"""Linear algebra: matmul (batched, broadcasting) and einsum."""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import define_op
from ..shapes import NUMERIC, broadcast_shapes, format_shape, promote

__all__ = ["matmul"]


def _matmul_shape(x: Any, y: Any) -> tuple:
    if x.ndim == 0 or y.ndim == 0:
        raise ShapeError(f"matmul: operands must have at least 1 dim; got x.shape={format_shape(x.shape)}, "
                         f"y.shape={format_shape(y.shape)}")
    xs = (1,) + x.shape if x.ndim == 1 else x.shape
    ys = y.shape + (1,) if y.ndim == 1 else y.shape
    k1, k2 = xs[-1], ys[-2]
    if k1 is not None and k2 is not None and k1 != k2:
        raise ShapeError(f"matmul: inner dimensions must match; got x.shape={format_shape(x.shape)}, "
                         f"y.shape={format_shape(y.shape)}")
    batch = broadcast_shapes("matmul", xs[:-2], ys[:-2])
    out = batch + (xs[-2], ys[-1])
    if x.ndim == 1:
        out = out[:-2] + out[-1:]
    if y.ndim == 1:
        out = out[:-1]
    return out


def _matmul_dtype(x: Any, y: Any) -> str:
    for a in (x, y):
        if a.dtype not in NUMERIC:
            raise InvalidArgumentError(f"matmul: expected numeric dtypes; got {a.dtype}")
    return promote("matmul", x.dtype, y.dtype)


def _matmul_vjp(g: Tensor, out: Tensor, x: Tensor, y: Tensor) -> tuple:
    from .movement import expand_dims, reshape_like, transpose

    if x.ndim == 1 or y.ndim == 1:  # lift vectors to matrices; autodiff reshapes back
        x2 = expand_dims(x, 0) if x.ndim == 1 else x
        y2 = expand_dims(y, -1) if y.ndim == 1 else y
        g2 = reshape_like(g, matmul(x2, y2))
        gx, gy = _matmul_vjp(g2, out, x2, y2)
        return reshape_like(gx, x) if x.ndim == 1 else gx, reshape_like(gy, y) if y.ndim == 1 else gy

    def swap(t: Tensor) -> Tensor:
        return transpose(t, tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2))

    return matmul(g, swap(y)), matmul(swap(x), g)


matmul_op = define_op("matmul", ("x", "y"), shape_rule=_matmul_shape, dtype_rule=_matmul_dtype, vjp=_matmul_vjp)


def matmul(x: Any, y: Any, name: str | None = None) -> Tensor:
    """Matrix product with numpy's ``@`` semantics (batched and broadcasting)."""
    return matmul_op.bind(x, y, name=name)
