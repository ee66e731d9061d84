"""ONNX forms of the fused whole-sequence recurrent ops: lstm_sequence -> LSTM, gru_sequence -> GRU.

A layer's ``lstm_sequence`` / ``gru_sequence`` node becomes ONNX's own ``LSTM`` / ``GRU`` op
(GRU with ``linear_before_reset=1``: Keras's ``reset_after`` form):

- **The input projection is folded into W.** Where the op's input is the layer's projection
  ``inputs @ kernel`` (the 2-D matmul between two reshapes that `kf.nn.RNN` emits, or a
  batched matmul), ONNX's ``X`` is the time-major layer input and ``W`` the kernel with its
  gate blocks in ONNX's order, transposed (an initializer when the kernel is a variable or
  constant); the MatMul and reshapes are left unread and pruned from the model. A layer going
  backwards reads the projection reversed in time: ``X`` is then the input reversed by a Slice. Otherwise
  ``X`` is kernelflow's projected input and ``W`` a gate-reordering identity.
- **Gate order.** LSTM: Keras's i, f, c, o -> ONNX's i, o, f, c. GRU: both z, r, h.
  ``B`` is ``[Wb, Rb]``: LSTM's bias then zeros; GRU's input bias then its recurrent bias.
- **Masks.** A mask built from ``sequence_length`` (``arange(T)[:, None] < lengths[None, :]``,
  the prefix form `kf.nn.RNN` emits going forwards) becomes ``sequence_lens`` (the lengths
  clipped to [0, T]); ONNX zeroes the outputs past a row's length where kernelflow repeats
  the last state, so the outputs are ``Where(mask, Y, final state)``, and a row of length 0
  keeps its initial state. Any other mask keeps the `Scan` of the step, whose steps keep the
  state where the mask is False. So does a float64 op: onnxruntime runs LSTM and GRU in float32 only.

Contents: gate_order (the importer's too), the two converters (registered in
`kernelflow.interop.onnx_ops.CONVERTERS` on import).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..graph.ir import Aval, Tensor
from .onnx_control import _lstm_step, _parts
from .onnx_ops import INT64_MIN, _conv

if TYPE_CHECKING:
    from .onnx_builder import OnnxBuilder


def gate_order(units: int, gates: int) -> np.ndarray:
    """Column indices taking Keras's gate blocks to ONNX's: LSTM (i, f, c, o) -> (i, o, f, c); GRU: as is.
    ``np.argsort`` of it takes ONNX's back to Keras's (the importer's direction)."""
    blocks = (0, 3, 1, 2) if gates == 4 else tuple(range(gates))
    return np.concatenate([np.arange(units) + k * units for k in blocks]).astype(np.int64)


def _projection(b: OnnxBuilder, x: Tensor) -> tuple[str, Tensor] | None:
    """(ONNX name of the time-major layer input, the kernel) when ``x`` is ``inputs @ kernel``, or
    ``(inputs @ kernel)[::-1]`` (a layer going backwards: the inputs reversed in time by a Slice)."""
    rev = x.op.name == "strided_slice" and tuple(x.attrs["index"]) == ((None, None, -1),)
    if rev:
        x = x.inputs[0]
    if x.op.name == "reshape" and x.inputs[0].op.name == "matmul":
        mm = x.inputs[0]
        flat, kernel = mm.inputs
        if flat.op.name != "reshape" or flat.inputs[0].ndim != 3:
            return None
        seq = flat.inputs[0]
        if tuple(flat.attrs["shape"]) != (-1, seq.shape[2]) or tuple(x.attrs["shape"])[1:] != (
                seq.shape[1], kernel.shape[1]) or seq.shape[1] is None:
            return None
    elif x.op.name == "matmul" and x.inputs[0].ndim == 3 and x.inputs[1].ndim == 2:
        seq, kernel = x.inputs
    else:
        return None
    if kernel.ndim != 2 or seq.dtype != x.dtype or id(seq) not in b.names or id(kernel) not in b.names:
        return None
    name = b.names[id(seq)]
    if rev:
        name = b.op("Slice", [name, b.ints([-1]), b.ints([INT64_MIN]), b.ints([0]), b.ints([-1])])
    return name, kernel


def _prefix_lengths(b: OnnxBuilder, mask: Tensor) -> tuple[str, str] | None:
    """(ONNX names of) ``lengths`` and ``n`` as int64 when ``mask`` is
    ``expand_dims(arange(n), 1) < expand_dims(lengths, 0)``, else None."""
    if mask.op.name != "less":
        return None
    t, ln = mask.inputs
    if not (t.op.name == "expand_dims" and t.attrs["axis"] == 1 and t.inputs[0].op.name == "arange"
            and ln.op.name == "expand_dims" and ln.attrs["axis"] == 0 and ln.inputs[0].ndim == 1):
        return None
    lengths, n = ln.inputs[0], t.inputs[0].inputs[0]
    if id(lengths) not in b.names or id(n) not in b.names or not lengths.dtype.startswith(("int", "uint")):
        return None
    return b.cast(b.names[id(lengths)], lengths.dtype, "int64"), b.cast(b.names[id(n)], n.dtype, "int64")


def _matrix(b: OnnxBuilder, k: str, order: np.ndarray, dtype: str) -> str:
    """``k`` (rows, gates * units) as ONNX's (1, gates * units, rows), columns in ``order``: a
    fresh initializer named after ``k``'s when its value is known, else Gather / Transpose ops."""
    known = b.value_of(k)
    if known is not None:
        name, value = known
        return b.derived_initializer(name, value[:, order].T[None].astype(dtype))
    return b.op("Unsqueeze", [b.op("Transpose", [b.op("Gather", [k, b.ints(order)], axis=1)]), b.ints([0])])


def _fused(b: OnnxBuilder, n: Tensor, xs: list, out: str, gates: int) -> bool:
    """Write ``n`` as ONNX's LSTM (gates 4) or GRU (gates 3); False where it keeps the Scan form."""
    n_states = 2 if gates == 4 else 1
    rk_at = 1 + n_states
    units, dt = n.inputs[rk_at].shape[0], n.inputs[0].dtype
    has_mask = len(xs) == rk_at + 3
    lengths = _prefix_lengths(b, n.inputs[-1]) if has_mask else None
    if units is None or dt != "float32" or (has_mask and lengths is None):  # onnxruntime: float32 only
        return False
    u = int(units)
    order = gate_order(u, gates)
    proj = _projection(b, n.inputs[0])
    if proj is not None:
        x, w = proj[0], _matrix(b, b.names[id(proj[1])], order, dt)
    else:
        x, w = xs[0], b.const(np.eye(gates * u, dtype=dt)[order][None])
    r = _matrix(b, xs[rk_at], order, dt)
    bias, known = xs[rk_at + 1], b.value_of(xs[rk_at + 1])
    if known is not None:  # [Wb, Rb] as one initializer
        v = known[1]
        bias = b.const((np.concatenate([v[order], np.zeros_like(v)]) if gates == 4 else v).reshape(1, -1).astype(dt))
    else:
        if gates == 4:
            bias = b.op("Concat", [b.op("Gather", [bias, b.ints(order)]), b.const(np.zeros(4 * u, dt))], axis=0)
        bias = b.op("Reshape", [bias, b.ints([1, 2 * gates * u])])
    init = [b.op("Unsqueeze", [s, b.ints([0])]) for s in xs[1:1 + n_states]]
    lens = ""
    if lengths is not None:  # clipped to [0, T], as ONNX requires (kernelflow's mask is just t < length)
        clipped = b.op("Min", [b.op("Max", [lengths[0], b.const(np.asarray(0, np.int64))]), lengths[1]])
        lens = b.cast(clipped, "int64", "int32")
    args, outs_ = [x, w, r, bias, lens, *init], [None] * (1 + n_states)
    ys = b.ops("LSTM", args, outs_, hidden_size=u) if gates == 4 else \
        b.ops("GRU", args, outs_, hidden_size=u, linear_before_reset=1)
    outs = _parts(n, out)  # the last part (the gradient's reserve) is never read by inference
    hs, finals = b.op("Squeeze", [ys[0], b.ints([1])]), [b.op("Squeeze", [y, b.ints([0])]) for y in ys[1:]]
    if lengths is None:
        b.op("Identity", [hs], outs[0])
    else:  # ONNX zeroes Y past a row's length and its final states for a length of 0; kernelflow keeps the state
        ran = b.op("Unsqueeze", [b.op("Greater", [clipped, b.const(np.asarray(0, np.int64))]), b.ints([1])])
        finals = [b.op("Where", [ran, f, s]) for f, s in zip(finals, xs[1:1 + n_states])]
        b.op("Where", [b.op("Unsqueeze", [xs[-1], b.ints([2])]), hs, finals[0]], outs[0])
    if gates == 4:
        b.op("Identity", [finals[1]], outs[1])
    return True


def _scan(b: OnnxBuilder, n: Tensor, xs: list, out: str, n_states: int, x_bias: str,
          step: Callable[[OnnxBuilder, str, list[str]], list[str]]) -> None:
    """``n`` (inputs: x, the ``n_states`` initial states, the recurrent kernel, the bias[, the mask])
    as a Scan over time of ``step(body, x_t, states) -> new states`` (the first is h), with
    ``x + x_bias`` as the scanned input; a mask keeps every state where it is False at a step."""
    c = b.child()
    *states, x_t = (c.unique(f"{n.name}/step::{k}") for k in ("h", "c")[:n_states] + ("x",))
    aval = n.inputs[1].aval
    ins = [c.value_info(s, aval) for s in states] + [c.value_info(x_t, Aval(n.inputs[0].shape[1:], n.inputs[0].dtype))]
    new = step(c, x_t, states)
    scanned = 3 + n_states  # xs[scanned:]: the mask, scanned with x
    if len(xs) > scanned:
        m = c.unique(f"{n.name}/step::mask")
        ins.append(c.value_info(m, Aval(n.inputs[scanned].shape[1:], "bool")))
        keep = c.op("Unsqueeze", [m, c.ints([1])])
        new = [c.op("Where", [keep, s2, s]) for s2, s in zip(new, states)]
    g = c.graph(f"{n.name}/step", ins, [(s, aval) for s in new] + [(new[0], aval)])
    xb = b.op("Add", [xs[0], x_bias])  # the bias, once for all steps
    parts = _parts(n, out)  # hs, then the final states after h (the last part, the gradient's reserve: unread)
    b.ops("Scan", [*xs[1:1 + n_states], xb, *xs[scanned:]], [None, *parts[1:n_states], parts[0]], body=g,
          num_scan_inputs=len(xs) - scanned + 1)


@_conv("lstm_sequence", form="ONNX LSTM: X the layer's input and W its kernel when the op reads the projection "
       "inputs @ kernel (else X the projections through a gate-reordering identity W), gates reordered to ONNX's "
       "i, o, f, c; a sequence_length mask becomes sequence_lens (outputs past a length: the last state); another "
       "mask, a Scan of the lstm_cell form whose steps keep (h, c) where the mask is False")
def _lstm_sequence(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    if _fused(b, n, xs, out, 4):
        return

    def step(c: OnnxBuilder, x_t: str, states: list[str]) -> list[str]:
        h, cc = states
        return list(_lstm_step(c, c.op("Add", [x_t, c.op("MatMul", [h, xs[3]])]), cc))

    _scan(b, n, xs, out, 2, xs[4], step)


@_conv("gru_sequence", form="ONNX GRU (linear_before_reset=1; gates z, r, h in both), W and X as for lstm_sequence, "
       "B = [input bias, recurrent bias]; a sequence_length mask becomes sequence_lens; another mask, a Scan of "
       "the step: z, r = Sigmoid(x + b0 + h R + b1), hh = Tanh(xh + r * (h Rh + b1h)), h' = z h + (1 - z) hh, "
       "keeping h where the mask is False")
def _gru_sequence(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    if _fused(b, n, xs, out, 3):
        return
    b1 = b.op("Gather", [xs[3], b.ints([1])], axis=0)

    def step(c: OnnxBuilder, x_t: str, states: list[str]) -> list[str]:
        (h,) = states
        xz, xr, xh = c.ops("Split", [x_t], [None] * 3, axis=1, num_outputs=3)
        iz, ir, ih = c.ops("Split", [c.op("Add", [c.op("MatMul", [h, xs[2]]), b1])], [None] * 3, axis=1,
                           num_outputs=3)
        z, r = c.op("Sigmoid", [c.op("Add", [xz, iz])]), c.op("Sigmoid", [c.op("Add", [xr, ir])])
        hh = c.op("Tanh", [c.op("Add", [xh, c.op("Mul", [r, ih])])])
        one = c.const(np.asarray(1, n.inputs[0].dtype))
        return [c.op("Add", [c.op("Mul", [z, h]), c.op("Mul", [c.op("Sub", [one, z]), hh])])]

    _scan(b, n, xs, out, 1, b.op("Gather", [xs[3], b.ints([0])], axis=0), step)  # the input bias
