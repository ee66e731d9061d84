"""Fused recurrent ops: lstm_cell (one step), lstm_sequence and gru_sequence (whole sequences), gradients.

A primitive for speed: one LSTM step (gates i, f, c, o from the pre-activations, Keras's
order) as one kernel instead of about a dozen elementwise nodes, and its backward pass as one
more instead of about thirty; a 50-step LSTM runs these once per step. Both yield two values
(read with ``tuple_get``).

``lstm_sequence`` runs every step of an LSTM in one kernel and saves the gate activations;
its gradient runs backpropagation through time in one more (as cuDNN and PyTorch do): no
per-step dispatch, no forward recomputation. kf.nn.LSTM uses it for its sigmoid/tanh cell;
``gru_sequence`` does the same for kf.nn.GRU (Keras's reset_after form).

Contents: lstm_cell, lstm_sequence, gru_sequence.
"""

from __future__ import annotations

from typing import Any

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Aval, Tensor
from ..registry import define_op
from ..shapes import FLOATING, format_shape
from .control_flow import tuple_get, zeros_like

__all__ = ["lstm_cell", "lstm_sequence", "gru_sequence"]


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


# --------------------------------------------------------------------------- whole-sequence LSTM
def _dim(op: str, what: str, *dims: Any) -> Any:
    """The one known value among ``dims`` (None when none is known); disagreeing dims raise."""
    known = {d for d in dims if d is not None}
    if len(known) > 1:
        raise ShapeError(f"{op}: {what} disagree: {sorted(known)}")
    return known.pop() if known else None


def _seq_dims(op: str, x: Any, h0: Any, c0: Any, rk: Any, bias: Any, mask: tuple) -> tuple:
    """(T, B, U) of an lstm_sequence's inputs, checked."""
    dt = x.dtype
    if dt not in FLOATING or any(a.dtype != dt for a in (h0, c0, rk, bias)):
        raise ShapeError(f"{op}: x, h0, c0, recurrent_kernel and bias must share a floating dtype; got {x}, {h0}, "
                         f"{c0}, {rk}, {bias}")
    if x.ndim != 3 or h0.ndim != 2 or c0.ndim != 2 or rk.ndim != 2 or bias.ndim != 1:
        raise ShapeError(f"{op}: expected x (time, batch, 4 * units), h0 and c0 (batch, units), recurrent_kernel "
                         f"(units, 4 * units), bias (4 * units,); got x{format_shape(x.shape)}, "
                         f"h0{format_shape(h0.shape)}, c0{format_shape(c0.shape)}, "
                         f"recurrent_kernel{format_shape(rk.shape)}, bias{format_shape(bias.shape)}")
    quarter = [None if d is None else d / 4 for d in (x.shape[2], rk.shape[1], bias.shape[0])]
    u = _dim(op, "the units (h0, c0 and recurrent_kernel dims; x's, recurrent_kernel's and bias's last dim / 4)",
             h0.shape[1], c0.shape[1], rk.shape[0], *quarter)
    if u is not None and u != int(u):
        raise ShapeError(f"{op}: the last dim of x, recurrent_kernel and bias must be 4 * units; got "
                         f"x{format_shape(x.shape)}, recurrent_kernel{format_shape(rk.shape)}, "
                         f"bias{format_shape(bias.shape)}")
    m = _sequence_mask(op, mask)
    t = _dim(op, "the time dims (x, mask)", x.shape[0], *(m.shape[:1] if m is not None else ()))
    b = _dim(op, "the batch dims (x, h0, c0, mask)", x.shape[1], h0.shape[0], c0.shape[0],
             *(m.shape[1:] if m is not None else ()))
    return t, b, None if u is None else int(u)


def _sequence_mask(op: str, mask: tuple) -> Any:
    """The optional (time, batch) bool mask of a sequence op, or None."""
    if len(mask) > 1:
        raise InvalidArgumentError(f"{op}: at most one mask; got {len(mask)}")
    m = mask[0] if mask else None
    if m is not None and (m.dtype != "bool" or m.ndim != 2):
        raise ShapeError(f"{op}: the mask must be a (time, batch) bool tensor; got {m}")
    return m


def _seq_parts(x: Any, h0: Any, c0: Any, rk: Any, bias: Any, *mask: Any) -> tuple:
    t, b, u = _seq_dims("lstm_sequence", x, h0, c0, rk, bias, mask)
    return (Aval((t, b, u), x.dtype), Aval((b, u), x.dtype), Aval((t, 6, b, u), x.dtype))


def _seq_vjp(ct: list, out: Tensor, x: Tensor, h0: Tensor, c0: Tensor, rk: Tensor, bias: Tensor,
             *mask: Tensor) -> tuple:
    if ct[2] is not None:
        raise InvalidArgumentError("lstm_sequence: output 2 (the reserve saved for the gradient) is not "
                                   "differentiable; differentiate outputs 0 (every h) and 1 (the last c)")
    hs, c, res = (tuple_get(out, i) for i in range(3))
    dhs = ct[0] if ct[0] is not None else zeros_like(hs)
    dc = ct[1] if ct[1] is not None else zeros_like(c)
    grad = lstm_sequence_grad_op.bind(h0, c0, rk, hs, res, dhs, dc, *mask)
    return tuple(tuple_get(grad, i) for i in range(5)) + (None,) * len(mask)


lstm_sequence_op = define_op(
    "lstm_sequence", ("x", "h0", "c0", "recurrent_kernel", "bias", "*mask"), shape_rule=lambda *a: (),
    dtype_rule=lambda *a: None, parts_rule=_seq_parts, vjp=_seq_vjp,
    doc="(every h, the last c, a reserve for the gradient) of an LSTM over x = inputs @ kernel "
        "(time-major, gates i, f, c, o)")


def _seq_grad_parts(h0: Any, c0: Any, rk: Any, hs: Any, res: Any, dhs: Any, dc: Any, *mask: Any) -> tuple:
    t, b, u = _seq_dims("lstm_sequence_grad", Aval(hs.shape[:2] + (None,), hs.dtype), h0, c0, rk,
                        Aval((None,), hs.dtype), mask)
    if res.ndim != 4 or dhs.ndim != 3 or dc.ndim != 2:
        raise ShapeError(f"lstm_sequence_grad: expected reserve (time, 6, batch, units), dhs (time, batch, units) "
                         f"and dc (batch, units); got {res}, {dhs}, {dc}")
    g = None if u is None else 4 * u
    return (Aval((t, b, g), h0.dtype), Aval(h0.shape, h0.dtype), Aval(c0.shape, c0.dtype), Aval(rk.shape, rk.dtype),
            Aval((g,), h0.dtype))


lstm_sequence_grad_op = define_op(
    "lstm_sequence_grad", ("h0", "c0", "recurrent_kernel", "hs", "reserve", "dhs", "dc", "*mask"),
    shape_rule=lambda *a: (), dtype_rule=lambda *a: None, parts_rule=_seq_grad_parts, differentiable=False,
    doc="(dx, dh0, dc0, drecurrent_kernel, dbias) of lstm_sequence: backpropagation through time in one kernel")


def lstm_sequence(x: Tensor, h0: Tensor, c0: Tensor, recurrent_kernel: Tensor, bias: Tensor | None = None,
                  mask: Tensor | None = None, name: str | None = None) -> tuple[Tensor, Tensor]:
    """A whole LSTM sequence in one op (sigmoid gates, tanh): every step's h and the last c.

    Step t computes ``z = x[t] + bias + h @ recurrent_kernel``, gates i, f, c, o (Keras's order),
    ``c' = f * c + i * tanh(z_c)``, ``h' = o * tanh(c')``; where ``mask[t, b]`` is False, row b
    keeps its ``(h, c)`` (Keras's masking). The forward pass saves the gate activations, so the
    gradient is one backward sweep (no recomputation) with the recurrent kernel's gradient as
    one matrix product over all steps.

    Args:
        x: (time, batch, 4 * units) input projections ``inputs @ kernel``, time-major.
        h0: (batch, units) the initial output state.
        c0: (batch, units) the initial cell state.
        recurrent_kernel: (units, 4 * units).
        bias: optional (4 * units,) (added each step; default zeros).
        mask: optional (time, batch) bool; False steps leave a row's state unchanged.
        name: optional node name.

    Returns:
        ``(hs, c)``: hs (time, batch, units) the output state after every step (a masked step
        repeats the previous one, so ``hs[-1]`` is the final h), c (batch, units) the final
        cell state.

    Example:
        >>> hs, c = kf.lstm_sequence(xs @ w, h0, c0, u, b)
    """
    if bias is None:
        bias = zeros_like(recurrent_kernel[0])
    node = lstm_sequence_op.bind(x, h0, c0, recurrent_kernel, bias, *(() if mask is None else (mask,)), name=name)
    return tuple_get(node, 0), tuple_get(node, 1)


# --------------------------------------------------------------------------- whole-sequence GRU
def _gru_dims(op: str, x: Any, h0: Any, rk: Any, bias: Any, mask: tuple) -> tuple:
    """(T, B, U) of a gru_sequence's inputs, checked."""
    dt = x.dtype
    if dt not in FLOATING or any(a.dtype != dt for a in (h0, rk, bias)):
        raise ShapeError(f"{op}: x, h0, recurrent_kernel and bias must share a floating dtype; got {x}, {h0}, {rk}, "
                         f"{bias}")
    if x.ndim != 3 or h0.ndim != 2 or rk.ndim != 2 or bias.ndim != 2 or bias.shape[0] not in (None, 2):
        raise ShapeError(f"{op}: expected x (time, batch, 3 * units), h0 (batch, units), recurrent_kernel "
                         f"(units, 3 * units), bias (2, 3 * units); got x{format_shape(x.shape)}, "
                         f"h0{format_shape(h0.shape)}, recurrent_kernel{format_shape(rk.shape)}, "
                         f"bias{format_shape(bias.shape)}")
    third = [None if d is None else d / 3 for d in (x.shape[2], rk.shape[1], bias.shape[1])]
    u = _dim(op, "the units (h0 and recurrent_kernel dims; x's, recurrent_kernel's and bias's last dim / 3)",
             h0.shape[1], rk.shape[0], *third)
    if u is not None and u != int(u):
        raise ShapeError(f"{op}: the last dim of x, recurrent_kernel and bias must be 3 * units; got "
                         f"x{format_shape(x.shape)}, recurrent_kernel{format_shape(rk.shape)}")
    m = _sequence_mask(op, mask)
    t = _dim(op, "the time dims (x, mask)", x.shape[0], *(m.shape[:1] if m is not None else ()))
    b = _dim(op, "the batch dims (x, h0, mask)", x.shape[1], h0.shape[0], *(m.shape[1:] if m is not None else ()))
    return t, b, None if u is None else int(u)


def _gru_parts(x: Any, h0: Any, rk: Any, bias: Any, *mask: Any) -> tuple:
    t, b, u = _gru_dims("gru_sequence", x, h0, rk, bias, mask)
    return (Aval((t, b, u), x.dtype), Aval((t, 4, b, u), x.dtype))


def _gru_vjp(ct: list, out: Tensor, x: Tensor, h0: Tensor, rk: Tensor, bias: Tensor, *mask: Tensor) -> tuple:
    if ct[1] is not None:
        raise InvalidArgumentError("gru_sequence: output 1 (the reserve saved for the gradient) is not "
                                   "differentiable; differentiate output 0 (every h)")
    hs, res = tuple_get(out, 0), tuple_get(out, 1)
    grad = gru_sequence_grad_op.bind(h0, rk, hs, res, ct[0], *mask)
    return tuple(tuple_get(grad, i) for i in range(4)) + (None,) * len(mask)


gru_sequence_op = define_op(
    "gru_sequence", ("x", "h0", "recurrent_kernel", "bias", "*mask"), shape_rule=lambda *a: (),
    dtype_rule=lambda *a: None, parts_rule=_gru_parts, vjp=_gru_vjp,
    doc="(every h, a reserve for the gradient) of a GRU (Keras's reset_after) over x = inputs @ kernel "
        "(time-major, gates z, r, h)")


def _gru_grad_parts(h0: Any, rk: Any, hs: Any, res: Any, dhs: Any, *mask: Any) -> tuple:
    t, b, u = _gru_dims("gru_sequence_grad", Aval(hs.shape[:2] + (None,), hs.dtype), h0, rk,
                        Aval((2, None), hs.dtype), mask)
    if res.ndim != 4 or dhs.ndim != 3:
        raise ShapeError(f"gru_sequence_grad: expected reserve (time, 4, batch, units) and dhs (time, batch, units); "
                         f"got {res}, {dhs}")
    g = None if u is None else 3 * u
    return (Aval((t, b, g), h0.dtype), Aval(h0.shape, h0.dtype), Aval(rk.shape, rk.dtype), Aval((2, g), h0.dtype))


gru_sequence_grad_op = define_op(
    "gru_sequence_grad", ("h0", "recurrent_kernel", "hs", "reserve", "dhs", "*mask"),
    shape_rule=lambda *a: (), dtype_rule=lambda *a: None, parts_rule=_gru_grad_parts, differentiable=False,
    doc="(dx, dh0, drecurrent_kernel, dbias) of gru_sequence: backpropagation through time in one kernel")


def gru_sequence(x: Tensor, h0: Tensor, recurrent_kernel: Tensor, bias: Tensor | None = None,
                 mask: Tensor | None = None, name: str | None = None) -> Tensor:
    """A whole GRU sequence in one op (Keras's ``reset_after=True``, sigmoid gates, tanh): every h.

    Step t computes ``xz, xr, xh = x[t] + bias[0]`` and ``iz, ir, ih = h @ recurrent_kernel +
    bias[1]`` (gates z, r, h), ``z = sigmoid(xz + iz)``, ``r = sigmoid(xr + ir)``,
    ``hh = tanh(xh + r * ih)``, ``h' = z * h + (1 - z) * hh``; where ``mask[t, b]`` is False,
    row b keeps its h. The gradient is one backward sweep over the saved activations.

    Args:
        x: (time, batch, 3 * units) input projections ``inputs @ kernel``, time-major.
        h0: (batch, units) the initial state.
        recurrent_kernel: (units, 3 * units).
        bias: optional (2, 3 * units): the input bias, then the recurrent one (default zeros).
        mask: optional (time, batch) bool; False steps leave a row's state unchanged.
        name: optional node name.

    Returns:
        hs (time, batch, units): the state after every step (``hs[-1]`` is the final one).
    """
    if bias is None:
        from .movement import stack

        bias = zeros_like(stack([recurrent_kernel[0]] * 2))
    node = gru_sequence_op.bind(x, h0, recurrent_kernel, bias, *(() if mask is None else (mask,)), name=name)
    return tuple_get(node, 0)
