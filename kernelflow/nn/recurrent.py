"""Recurrent layers on `kf.scan`: LSTM, GRU, SimpleRNN, their cells, and Bidirectional.

Weights follow Keras's layout and gate order, so Keras weights load as they are:
LSTM ``kernel (in, 4u)``, ``recurrent_kernel (u, 4u)``, ``bias (4u,)``, gates i, f, c, o;
GRU (``reset_after=True``) ``kernel (in, 3u)``, ``recurrent_kernel (u, 3u)``, ``bias (2, 3u)``,
gates z, r, h; SimpleRNN ``kernel (in, u)``, ``recurrent_kernel (u, u)``, ``bias (u,)``.
Layers are built from their config and create their variables on the first call, under
their name scope (``lstm/kernel``); a cell can also be called inside a user's while_loop.

Contents: SimpleRNNCell, LSTMCell, GRUCell, RNN, SimpleRNN, LSTM, GRU, Bidirectional.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import control_flow as cf
from ..graph.ir import Tensor
from ..graph.ops import elementwise as E
from ..graph.ops import movement as M
from ..graph.ops import recurrent as R
from . import init as kinit

__all__ = ["SimpleRNNCell", "LSTMCell", "GRUCell", "SimpleRNN", "LSTM", "GRU", "Bidirectional"]


class _Cell:
    """A recurrent cell: ``cell(x, states) -> (output, new_states)``; variables made on first call."""

    n_gates = 1
    n_states = 1

    def __init__(self, units: int, activation: Callable[[Tensor], Tensor] = E.tanh,
                 recurrent_activation: Callable[[Tensor], Tensor] = E.sigmoid, use_bias: bool = True,
                 name: str | None = None, seed: int | None = None, dtype: str | None = None):
        if not isinstance(units, int) or units <= 0:
            raise InvalidArgumentError(f"{type(self).__name__}: units must be a positive int; got {units!r}")
        self.units = units
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.use_bias = use_bias
        self.name = name or type(self).__name__.lower().replace("cell", "_cell")
        self.seed = seed
        self.dtype = dtype
        self.kernel: Tensor | None = None
        self.recurrent_kernel: Tensor | None = None
        self.bias: Tensor | None = None

    def get_config(self) -> dict:
        return {"units": self.units, "activation": self.activation, "recurrent_activation": self.recurrent_activation,
                "use_bias": self.use_bias, "name": self.name, "seed": self.seed, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config: dict) -> _Cell:
        return cls(**config)

    @property
    def built(self) -> bool:
        return self.kernel is not None

    def _bias_init(self, dtype: str) -> np.ndarray:
        return np.zeros(self.n_gates * self.units, dtype)

    def build(self, x: Tensor) -> None:
        """Create the variables for input features ``x.shape[-1]`` (done by the first call)."""
        features = x.shape[-1]
        if features is None:
            raise InvalidArgumentError(f"{self.name}: the input's last dim must be known; got shape {x.shape}")
        g = x.graph
        dtype = self.dtype or x.dtype
        k = self.n_gates * self.units
        s = self.seed
        with g.name_scope(self.name):
            self.kernel = g.variable(kinit.glorot_uniform((features, k), seed=s, dtype=dtype), name="kernel")
            self.recurrent_kernel = g.variable(
                kinit.orthogonal((self.units, k), seed=None if s is None else s + 1, dtype=dtype),
                name="recurrent_kernel")
            if self.use_bias:
                self.bias = g.variable(self._bias_init(dtype), name="bias")

    def input_projection(self, x: Tensor) -> Tensor:
        """``x @ kernel (+ bias)`` for any leading dims: done once for all steps by the layers."""
        if not self.built:
            self.build(x)
        if x.ndim == 3 and x.shape[1] is not None:
            # One 2-D matmul: a batched (T, B, F) @ (F, k) has a gradient that builds (T, F, k) first.
            y = M.reshape(M.reshape(x, (-1, x.shape[2])) @ self.kernel, (-1, x.shape[1], self.kernel.shape[1]))
        else:
            y = x @ self.kernel
        if self.use_bias:
            y = y + (self.bias if self.bias.ndim == 1 else self.bias[0])
        return y

    def __call__(self, x: Tensor, states: Any) -> tuple[Tensor, list[Tensor]]:
        """One step: ``x`` (batch, features), ``states`` a list of (batch, units) tensors."""
        if not isinstance(states, (list, tuple)):
            states = [states]
        return self.step(self.input_projection(x), list(states))

    def step(self, xk: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        raise NotImplementedError


class SimpleRNNCell(_Cell):
    """``h' = activation(x @ kernel + h @ recurrent_kernel + bias)`` (Keras's SimpleRNNCell)."""

    def step(self, xk: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h = self.activation(xk + states[0] @ self.recurrent_kernel)
        return h, [h]


class LSTMCell(_Cell):
    """Keras's LSTMCell: gates i, f, c, o; ``unit_forget_bias`` starts the forget bias at 1."""

    n_gates = 4
    n_states = 2

    def __init__(self, units: int, unit_forget_bias: bool = True, **kwargs: Any):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = unit_forget_bias

    def get_config(self) -> dict:
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}

    def _bias_init(self, dtype: str) -> np.ndarray:
        b = np.zeros(4 * self.units, dtype)
        if self.unit_forget_bias:
            b[self.units:2 * self.units] = 1
        return b

    def step(self, xk: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h, c = states
        u = self.units
        z = xk + h @ self.recurrent_kernel
        if self.activation is E.tanh and self.recurrent_activation is E.sigmoid:
            h2, c2 = R.lstm_cell(z, c)  # the fused step: one kernel forward, one backward
            return h2, [h2, c2]
        i = self.recurrent_activation(z[:, :u])
        f = self.recurrent_activation(z[:, u:2 * u])
        cc = self.activation(z[:, 2 * u:3 * u])
        o = self.recurrent_activation(z[:, 3 * u:])
        c2 = f * c + i * cc
        h2 = o * self.activation(c2)
        return h2, [h2, c2]


class GRUCell(_Cell):
    """Keras's GRUCell with ``reset_after=True`` (its default): gates z, r, h; bias (2, 3u)."""

    n_gates = 3

    def _bias_init(self, dtype: str) -> np.ndarray:
        return np.zeros((2, 3 * self.units), dtype)

    def step(self, xk: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h = states[0]
        u = self.units
        inner = h @ self.recurrent_kernel
        if self.use_bias:
            inner = inner + self.bias[1]
        z = self.recurrent_activation(xk[:, :u] + inner[:, :u])
        r = self.recurrent_activation(xk[:, u:2 * u] + inner[:, u:2 * u])
        hh = self.activation(xk[:, 2 * u:] + r * inner[:, 2 * u:])
        h2 = z * h + (1 - z) * hh
        return h2, [h2]


# --------------------------------------------------------------------------- layers
class RNN:
    """Runs a cell over a (batch, time, features) sequence with `kf.scan`.

    Args:
        cell: the cell.
        return_sequences: return the output of every step (batch, time, units), else the last.
        return_state: also return the final states (a list after the output).
        go_backwards: process the sequence in reverse (outputs come in reversed order, as Keras).
        zero_output_for_mask: padded steps output zeros instead of the last valid output.
    """

    def __init__(self, cell: _Cell, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, zero_output_for_mask: bool = False):
        self.cell = cell
        self.return_sequences = return_sequences
        self.return_state = return_state
        self.go_backwards = go_backwards
        self.zero_output_for_mask = zero_output_for_mask

    @property
    def name(self) -> str:
        return self.cell.name

    @property
    def weights(self) -> list[Tensor]:
        """[kernel, recurrent_kernel, bias] (Keras's order), once built."""
        c = self.cell
        return [w for w in (c.kernel, c.recurrent_kernel, c.bias) if w is not None]

    def __call__(self, inputs: Tensor, sequence_length: Any = None, initial_state: Any = None) -> Any:
        """Run over ``inputs`` (batch, time, features).

        Args:
            inputs: the sequences.
            sequence_length: (batch,) integer lengths; steps at or after a row's length change
                neither its state nor (unless ``zero_output_for_mask``) its output.
            initial_state: list of (batch, units) tensors (default zeros).

        Returns:
            The output, or ``[output, *states]`` with ``return_state``.
        """
        if not isinstance(inputs, Tensor) or inputs.ndim != 3:
            raise InvalidArgumentError(f"{self.name}: inputs must be a (batch, time, features) tensor; got "
                                       f"{getattr(inputs, 'shape', type(inputs).__name__)}")
        g = inputs.graph
        cell = self.cell
        xk = cell.input_projection(M.transpose(inputs, (1, 0, 2)))  # one matmul for all steps, outside the loop
        with g.name_scope(cell.name):
            if initial_state is not None:
                states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            else:
                zero = M.broadcast_like(g.constant(0, dtype=xk.dtype), xk[0][:, :cell.units])
                states = [zero] * cell.n_states
            masked = sequence_length is not None
            if masked:
                lengths = sequence_length if isinstance(sequence_length, Tensor) else g.constant(
                    np.asarray(sequence_length, "int64"))
                lengths = E.cast(lengths, "int64")
                steps = M.size(xk[:, 0, 0], dtype="int64")
                t0 = steps - 1 if self.go_backwards else steps * 0
            dt = -1 if self.go_backwards else 1
            zero_out = self.zero_output_for_mask

            # The output of these cells is their first state (h), and a padded step keeps h, so the
            # stacked first states are the outputs; only zero_output_for_mask carries its own output.
            own_out = masked and zero_out
            n_s = cell.n_states

            def fn(acc: Any, xk_t: Tensor) -> Any:
                old = list(acc[:n_s])
                out, new = cell.step(xk_t, old)
                if not masked:
                    return tuple(new)
                t = acc[n_s]
                m = M.expand_dims(E.cast(E.less(t, lengths), xk_t.dtype), 1)  # (batch, 1)
                new = [s + m * (n - s) for s, n in zip(old, new)]
                return (*new, t + dt, out * m) if own_out else (*new, t + dt)

            acc0: tuple = tuple(states)
            if masked:
                acc0 = acc0 + (t0,) + ((states[0],) if own_out else ())
            seq = cf.scan(fn, xk[::-1] if self.go_backwards else xk, initializer=acc0)
            final = [s[-1] for s in seq[:n_s]]
            outputs = seq[-1] if own_out else seq[0]
            y = M.transpose(outputs, (1, 0, 2)) if self.return_sequences else final[0]
        return [y, *final] if self.return_state else y


def _layer(cell_cls: type) -> type:
    class Layer(RNN):
        def __init__(self, units: int, return_sequences: bool = False, return_state: bool = False,
                     go_backwards: bool = False, zero_output_for_mask: bool = False, **cell_kwargs: Any):
            cell_kwargs.setdefault("name", cell_cls.__name__.lower().replace("cell", ""))
            super().__init__(cell_cls(units, **cell_kwargs), return_sequences, return_state, go_backwards,
                             zero_output_for_mask)
            self._config = {"units": units, "return_sequences": return_sequences, "return_state": return_state,
                            "go_backwards": go_backwards, "zero_output_for_mask": zero_output_for_mask,
                            **cell_kwargs}

        def get_config(self) -> dict:
            return dict(self._config)

        @classmethod
        def from_config(cls, config: dict) -> Any:
            return cls(**config)

    return Layer


class SimpleRNN(_layer(SimpleRNNCell)):  # type: ignore[misc]
    """A fully connected RNN layer (Keras's SimpleRNN); see `RNN` for the call."""


class LSTM(_layer(LSTMCell)):  # type: ignore[misc]
    """An LSTM layer (Keras's LSTM, weights in its layout); see `RNN` for the call.

    Example:
        >>> y = kf.nn.LSTM(64, return_sequences=True)(x, sequence_length=lengths)
    """


class GRU(_layer(GRUCell)):  # type: ignore[misc]
    """A GRU layer (Keras's GRU with reset_after=True); see `RNN` for the call."""


class Bidirectional:
    """Runs a layer forwards and a copy of it (built from its config) backwards; merges the outputs.

    Args:
        layer: an LSTM, GRU or SimpleRNN layer (not yet called).
        merge_mode: "concat" (default), "sum", "mul" or "ave".
    """

    def __init__(self, layer: RNN, merge_mode: str = "concat"):
        if merge_mode not in ("concat", "sum", "mul", "ave"):
            raise InvalidArgumentError(f"Bidirectional: merge_mode must be concat, sum, mul or ave; got {merge_mode!r}")
        cfg = layer.get_config()  # type: ignore[attr-defined]
        name = cfg.get("name", "rnn")
        fwd = {**cfg, "name": f"forward_{name}", "zero_output_for_mask": True}
        bwd = {**cfg, "name": f"backward_{name}", "zero_output_for_mask": True, "go_backwards": True}
        self.forward_layer = type(layer).from_config(fwd)  # type: ignore[attr-defined]
        self.backward_layer = type(layer).from_config(bwd)  # type: ignore[attr-defined]
        self.merge_mode = merge_mode
        self.return_sequences = cfg["return_sequences"]
        self.return_state = cfg["return_state"]

    def __call__(self, inputs: Tensor, sequence_length: Any = None, initial_state: Any = None) -> Any:
        f = self.forward_layer(inputs, sequence_length)
        b = self.backward_layer(inputs, sequence_length)
        fs, bs = (f[1:], b[1:]) if self.return_state else ([], [])
        fo, bo = (f[0], b[0]) if self.return_state else (f, b)
        if self.return_sequences:
            bo = bo[:, ::-1]
        if self.merge_mode == "concat":
            y = M.concat([fo, bo], axis=-1)
        elif self.merge_mode == "sum":
            y = fo + bo
        elif self.merge_mode == "mul":
            y = fo * bo
        else:
            y = (fo + bo) * 0.5
        return [y, *fs, *bs] if self.return_state else y
