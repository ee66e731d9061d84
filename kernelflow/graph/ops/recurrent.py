"""Fused recurrent-cell ops: lstm_cell and its gradient.

A primitive for speed: one LSTM step (gates i, f, c, o from the pre-activations, Keras's
order) as one kernel instead of about a dozen elementwise nodes, and its backward pass as one
more instead of about thirty; a 50-step LSTM runs these once per step. Both yield two values
(read with ``tuple_get``).

Contents: lstm_cell.
"""

from __future__ import annotations

from typing import Any

from ...errors import ShapeError
from ..ir import Aval, Tensor
from ..registry import define_op
from ..shapes import FLOATING, format_shape
from .control_flow import tuple_get, zeros_like

__all__ = ["lstm_cell"]


def _lstm_parts(z: Any, c: Any) -> tuple:
    if z.dtype not in FLOATING or z.dtype != c.dtype:
        raise ShapeError(f"lstm_cell: z and c must share a floating dtype; got {z}, {c}")
    if z.ndim != 2 or c.ndim != 2 or (z.shape[1] is not None and c.shape[1] is not None
                                      and z.shape[1] != 4 * c.shape[1]):
        raise ShapeError(f"lstm_cell: expected z (batch, 4 * units) and c (batch, units); got "
                         f"z.shape={format_shape(z.shape)}, c.shape={format_shape(c.shape)}")
    return (Aval(c.shape, c.dtype), Aval(c.shape, c.dtype))


def _lstm_vjp(ct: list, out: Tensor, z: Tensor, c: Tensor) -> tuple:
    dh = ct[0] if ct[0] is not None else zeros_like(tuple_get(out, 0))
    dc = ct[1] if ct[1] is not None else zeros_like(tuple_get(out, 1))
    grad = lstm_cell_grad_op.bind(z, c, dh, dc)
    return (tuple_get(grad, 0), tuple_get(grad, 1))


lstm_cell_op = define_op("lstm_cell", ("z", "c"), shape_rule=lambda *a: (), dtype_rule=lambda *a: None,
                         parts_rule=_lstm_parts, vjp=_lstm_vjp,
                         doc="(h, c) of an LSTM step from pre-activations z = x W + h U + b (gates i, f, c, o)")


def _lstm_grad_parts(z: Any, c: Any, dh: Any, dc: Any) -> tuple:
    _lstm_parts(z, c)
    return (Aval(z.shape, z.dtype), Aval(c.shape, c.dtype))


lstm_cell_grad_op = define_op("lstm_cell_grad", ("z", "c", "dh", "dc"), shape_rule=lambda *a: (),
                              dtype_rule=lambda *a: None, parts_rule=_lstm_grad_parts, differentiable=False,
                              doc="(dz, dc_prev) of lstm_cell")


def lstm_cell(z: Tensor, c: Tensor, name: str | None = None) -> tuple[Tensor, Tensor]:
    """One LSTM step with sigmoid gates and tanh: ``(h, c)`` from pre-activations and the cell state.

    Args:
        z: (batch, 4 * units) pre-activations ``x @ kernel + h @ recurrent_kernel + bias``, gates
            in Keras's order i, f, c, o.
        c: (batch, units) the previous cell state.
        name: optional node name.

    Returns:
        ``(h, c)`` of the step, each (batch, units).
    """
    node = lstm_cell_op.bind(z, c, name=name)
    return tuple_get(node, 0), tuple_get(node, 1)
