"""Recurrent layers: LSTM and GRU (one fused op each), SimpleRNN (on `kf.scan`), cells, Bidirectional.

Weights follow Keras's layout and gate order, so Keras weights load as they are:
LSTM ``kernel (in, 4u)``, ``recurrent_kernel (u, 4u)``, ``bias (4u,)``, gates i, f, c, o;
GRU (``reset_after=True``) ``kernel (in, 3u)``, ``recurrent_kernel (u, 3u)``, ``bias (2, 3u)``,
gates z, r, h; SimpleRNN ``kernel (in, u)``, ``recurrent_kernel (u, u)``, ``bias (u,)``.
All are `Layer` subclasses (so they go in ``kf.Sequential``, the functional API and
``model.summary()``): built from their config, their variables made on the first call under
their name scope (``lstm/kernel``). A cell can also be called inside a user's while_loop; a
layer's ``cell`` uses the layer's variables once the layer is built.

Contents: SimpleRNNCell, LSTMCell, GRUCell, RNN, SimpleRNN, LSTM, GRU, Bidirectional.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import control_flow as cf
from ..graph.ir import Graph, Tensor
from ..graph.ops import elementwise as E
from ..graph.ops import movement as M
from ..graph.ops import recurrent as R
from ..graph.ops import search as S
from ..graph.subgraph import TraceGraph
from .layer_base import Layer, SymbolicTensor, activation_name, get_activation

__all__ = ["SimpleRNNCell", "LSTMCell", "GRUCell", "RNN", "SimpleRNN", "LSTM", "GRU", "Bidirectional"]

_BASE_KEYS = ("name", "trainable", "input_shape", "seed", "dtype")


class _Cell(Layer):
    """A recurrent cell: ``cell(x, states) -> (output, new_states)``; variables made on first call.

    Args:
        units: the state size.
        activation: of the candidate and the output (name or callable; default ``"tanh"``).
        recurrent_activation: of the gates (default ``"sigmoid"``).
        use_bias: add the bias.
        kernel_initializer: of ``kernel`` (default ``"glorot_uniform"``, as Keras).
        recurrent_initializer: of ``recurrent_kernel`` (default ``"orthogonal"``, as Keras).
        **kwargs: `Layer`'s (name, trainable, seed, dtype).
    """

    n_gates = 1
    n_states = 1

    def __init__(self, units: int, activation: Any = "tanh", recurrent_activation: Any = "sigmoid",
                 use_bias: bool = True, kernel_initializer: Any = "glorot_uniform",
                 recurrent_initializer: Any = "orthogonal", **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(units, int) or isinstance(units, bool) or units <= 0:
            raise InvalidArgumentError(f"{type(self).__name__}: units must be a positive int; got {units!r}")
        get_activation(activation)
        get_activation(recurrent_activation)  # checked now, not at first use
        self.units = units
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.use_bias = bool(use_bias)
        self.kernel_initializer = kernel_initializer
        self.recurrent_initializer = recurrent_initializer
        self.kernel: Tensor | None = None
        self.recurrent_kernel: Tensor | None = None
        self.bias: Tensor | None = None

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "activation": activation_name(self.activation),
                "recurrent_activation": activation_name(self.recurrent_activation), "use_bias": self.use_bias,
                "kernel_initializer": self.kernel_initializer, "recurrent_initializer": self.recurrent_initializer,
                "seed": self.seed}

    @property
    def built(self) -> bool:
        return self.kernel is not None

    def _bias_init(self, shape: tuple, seed: Any = None, dtype: str = "float32") -> np.ndarray:
        return np.zeros(shape, dtype)

    def _bias_shape(self) -> tuple:
        return (self.n_gates * self.units,)

    def build(self, input_shape: Any, dtype: str) -> None:
        """Create kernel, recurrent_kernel and bias for inputs of ``input_shape`` (last dim known)."""
        features = input_shape[-1]
        if features is None:
            raise InvalidArgumentError(f"{self.name}: the input's last dim must be known; got shape {input_shape}")
        k = self.n_gates * self.units
        self.add_weight("kernel", (features, k), self.kernel_initializer, dtype)
        self.add_weight("recurrent_kernel", (self.units, k), self.recurrent_initializer, dtype)
        if self.use_bias:
            self.add_weight("bias", self._bias_shape(), self._bias_init, dtype)

    def _build_in(self, g: Graph, input_shape: Any, dtype: str) -> dict:
        """Build in ``g`` (inside the caller's name scope); the variables by name."""
        self._vars[g] = {}
        self._graph_building = g
        try:
            self.build(input_shape, dtype)
        finally:
            self._graph_building = None
        self._built_shape = tuple(input_shape)
        return self._vars[g]

    def _bind(self, g: Graph) -> None:
        for n, v in self._vars[g].items():
            setattr(self, n, v)
        self._graph = g

    def input_projection(self, x: Tensor, with_bias: bool = True) -> Tensor:
        """``x @ kernel (+ bias)`` for any leading dims: done once for all steps by the layers."""
        if not self.built:
            raise InvalidArgumentError(f"{self.name}: the cell is not built; call it (or its layer) first")
        if x.ndim == 3 and x.shape[1] is not None:
            # One 2-D matmul: a batched (T, B, F) @ (F, k) has a gradient that builds (T, F, k) first.
            y = M.reshape(M.reshape(x, (-1, x.shape[2])) @ self.kernel, (-1, x.shape[1], self.kernel.shape[1]))
        else:
            y = x @ self.kernel
        if self.use_bias and with_bias:
            y = y + (self.bias if self.bias.ndim == 1 else self.bias[0])
        return y

    def __call__(self, inputs: Any, states: Any = None, training: Any = None) -> tuple[Tensor, list[Tensor]]:
        """One step: ``inputs`` (batch, features), ``states`` a list of (batch, units) tensors.

        Returns:
            ``(output, new_states)``.
        """
        if not isinstance(inputs, Tensor) or inputs.ndim != 2:
            raise InvalidArgumentError(f"{self.name}: inputs must be a (batch, features) graph tensor; got "
                                       f"{getattr(inputs, 'shape', type(inputs).__name__)}")
        if states is None:
            raise InvalidArgumentError(f"{self.name}: pass the states, a list of {self.n_states} (batch, "
                                       f"{self.units}) tensors")
        states = list(states) if isinstance(states, (list, tuple)) else [states]
        if len(states) != self.n_states:
            raise InvalidArgumentError(f"{self.name}: expected {self.n_states} state tensor(s); got {len(states)}")
        g = inputs.graph
        # Inside a loop body (a TraceGraph) the variables are the enclosing root graph's: key them
        # by it, so the cell of a built layer (decoding with ``layer.cell``) uses the layer's weights.
        root = g.root() if isinstance(g, TraceGraph) else g
        with g.name_scope(self.name):
            if root not in self._vars:
                self._vars[root] = self._build_in(g, inputs.shape, self._var_dtype(inputs))
                if g is not root:
                    del self._vars[g]
            self._bind(root)
            return self.step(self.input_projection(inputs), states)

    def step(self, xk: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        raise NotImplementedError

    def fuses(self) -> bool:
        """Whether `sequence` runs the whole sequence as one op (else the layer scans `step`)."""
        return False

    def sequence(self, xks: Tensor, states: list[Tensor], mask: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        """Every step at once with a fused whole-sequence op (only where `fuses`).

        Args:
            xks: (time, batch, k) input projections without the bias, time-major, in
                processing order.
            states: the initial states.
            mask: None or (time, batch) bool, False where a row keeps its state.

        Returns:
            ``(outputs, final_states)`` with outputs (time, batch, units) (a masked step
            repeats the previous output).
        """
        raise NotImplementedError

    def _act(self) -> Any:
        return get_activation(self.activation) or (lambda t: t)

    def _ract(self) -> Any:
        return get_activation(self.recurrent_activation) or (lambda t: t)


class SimpleRNNCell(_Cell):
    """``h' = activation(x @ kernel + h @ recurrent_kernel + bias)`` (Keras's SimpleRNNCell)."""

    def step(self, xk: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h = self._act()(xk + states[0] @ self.recurrent_kernel)
        return h, [h]


class LSTMCell(_Cell):
    """Keras's LSTMCell: gates i, f, c, o; ``unit_forget_bias`` starts the forget bias at 1."""

    n_gates = 4
    n_states = 2

    def __init__(self, units: int, unit_forget_bias: bool = True, **kwargs: Any):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def get_config(self) -> dict:
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}

    def _bias_init(self, shape: tuple, seed: Any = None, dtype: str = "float32") -> np.ndarray:
        b = np.zeros(shape, dtype)
        if self.unit_forget_bias:
            b[self.units:2 * self.units] = 1
        return b

    def step(self, xk: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h, c = states
        u = self.units
        z = xk + h @ self.recurrent_kernel
        act, ract = self._act(), self._ract()
        if act is E.tanh and ract is E.sigmoid:
            h2, c2 = R.lstm_cell(z, c)  # the fused step: one kernel forward, one backward
            return h2, [h2, c2]
        i = ract(z[:, :u])
        f = ract(z[:, u:2 * u])
        cc = act(z[:, 2 * u:3 * u])
        o = ract(z[:, 3 * u:])
        c2 = f * c + i * cc
        h2 = o * act(c2)
        return h2, [h2, c2]

    def fuses(self) -> bool:
        return self._act() is E.tanh and self._ract() is E.sigmoid

    def sequence(self, xks: Tensor, states: list[Tensor], mask: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        bias = self.bias if self.use_bias else None
        hs, c = R.lstm_sequence(xks, states[0], states[1], self.recurrent_kernel, bias, mask)  # one kernel each way
        return hs, [hs[-1], c]


class GRUCell(_Cell):
    """Keras's GRUCell with ``reset_after=True`` (its default): gates z, r, h; bias (2, 3u)."""

    n_gates = 3

    def _bias_shape(self) -> tuple:
        return (2, 3 * self.units)

    def step(self, xk: Tensor, states: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        h = states[0]
        u = self.units
        act, ract = self._act(), self._ract()
        inner = h @ self.recurrent_kernel
        if self.use_bias:
            inner = inner + self.bias[1]
        z = ract(xk[:, :u] + inner[:, :u])
        r = ract(xk[:, u:2 * u] + inner[:, u:2 * u])
        hh = act(xk[:, 2 * u:] + r * inner[:, 2 * u:])
        h2 = z * h + (1 - z) * hh
        return h2, [h2]

    def fuses(self) -> bool:
        return self._act() is E.tanh and self._ract() is E.sigmoid

    def sequence(self, xks: Tensor, states: list[Tensor], mask: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        bias = self.bias if self.use_bias else None
        hs = R.gru_sequence(xks, states[0], self.recurrent_kernel, bias, mask)  # one kernel each way
        return hs, [hs[-1]]


# --------------------------------------------------------------------------- layers
class RNN(Layer):
    """Runs a cell over a (batch, time, features) sequence: one fused op where the cell has one
    (LSTM, GRU with tanh/sigmoid: ``lstm_sequence``, ``gru_sequence``), else `kf.scan` of its step.

    Called as ``layer(inputs, training=None, sequence_length=None, initial_state=None)``:
    ``sequence_length`` (batch,) integer lengths (steps at or after a row's length change
    neither its state nor, unless ``zero_output_for_mask``, its output); ``initial_state`` a
    list of (batch, units) tensors (default zeros). Returns the output, or ``[output, *states]``
    with ``return_state``. In a functional model (``kf.Input``) only ``inputs`` may be given.

    Args:
        cell: the cell (its variables become the layer's: ``<layer>/kernel``...).
        return_sequences: return the output of every step (batch, time, units), else the last.
        return_state: also return the final states (a list after the output).
        go_backwards: process the sequence in reverse (outputs come in reversed order, as Keras).
        zero_output_for_mask: padded steps output zeros instead of the last valid output.
        **kwargs: `Layer`'s (name, trainable, input_shape, seed, dtype).
    """

    input_ndim = 3

    def __init__(self, cell: _Cell, return_sequences: bool = False, return_state: bool = False,
                 go_backwards: bool = False, zero_output_for_mask: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        if not isinstance(cell, _Cell):
            raise InvalidArgumentError(f"{self.name}: cell must be a kf.nn LSTMCell, GRUCell or SimpleRNNCell; "
                                       f"got {type(cell).__name__}")
        self.cell = cell
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self._extras: tuple[Any, Any] = (None, None)

    @property
    def units(self) -> int:
        return self.cell.units

    @property
    def weights(self) -> list[Tensor]:
        """[kernel, recurrent_kernel, bias] (Keras's order) in the graph of the last call."""
        return self.variables()

    def get_config(self) -> dict:
        return {**super().get_config(), "cell": {"class_name": type(self.cell).__name__,
                                                  "config": self.cell.get_config()},
                **self._flags()}

    def _flags(self) -> dict:
        return {"return_sequences": self.return_sequences, "return_state": self.return_state,
                "go_backwards": self.go_backwards, "zero_output_for_mask": self.zero_output_for_mask}

    @classmethod
    def from_config(cls, config: dict) -> Layer:
        cfg = dict(config)
        c = cfg.pop("cell")
        cell_cls = _CELLS.get(c.get("class_name")) if isinstance(c, dict) else None
        if cell_cls is None:
            raise InvalidArgumentError(f"RNN.from_config: unknown cell {c!r}; known: {sorted(_CELLS)}")
        return cls(cell_cls.from_config(c["config"]), **cfg)

    def __call__(self, inputs: Any, training: Any = None, sequence_length: Any = None,
                 initial_state: Any = None) -> Any:
        """Run over ``inputs`` (batch, time, features); see the class docstring."""
        if isinstance(inputs, SymbolicTensor) and (sequence_length is not None or initial_state is not None):
            raise InvalidArgumentError(f"{self.name}: sequence_length / initial_state are not supported on kf.Input "
                                       "tensors (functional models); call the layer on graph tensors")
        self._extras = (sequence_length, initial_state)
        try:
            return super().__call__(inputs, training)
        finally:
            self._extras = (None, None)

    def build(self, input_shape: Any, dtype: str) -> None:
        g = self._building_graph()
        self._vars[g].update(self.cell._build_in(g, input_shape, dtype))

    def call(self, inputs: Tensor, training: Any) -> Any:
        sequence_length, initial_state = self._extras
        g = inputs.graph
        cell = self.cell
        cell._bind(g)
        fused = cell.fuses()
        # One matmul for all steps, outside the loop (a fused op adds the bias itself, per step).
        xt = M.transpose(inputs, (1, 0, 2))
        xk = cell.input_projection(xt, with_bias=not fused)
        if initial_state is not None:
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            if len(states) != cell.n_states:
                raise InvalidArgumentError(f"{self.name}: initial_state needs {cell.n_states} tensor(s); got "
                                           f"{len(states)}")
        else:
            # Shapes from the inputs, not the projection: an ONNX export folds the projection into its
            # LSTM / GRU op only where nothing else reads it.
            zero = M.broadcast_like(g.constant(np.zeros((1, cell.units), xk.dtype)), xt[0][:, :1])
            states = [zero] * cell.n_states
        masked = sequence_length is not None
        if masked:
            lengths = sequence_length if isinstance(sequence_length, Tensor) else g.constant(
                np.asarray(sequence_length, "int64"))
            lengths = E.cast(lengths, "int64")
            steps = M.size(xt[:, 0, 0], dtype="int64")
            t0 = steps - 1 if self.go_backwards else steps * 0
        dt = -1 if self.go_backwards else 1

        # The output of these cells is their first state (h), and a padded step keeps h, so the
        # stacked first states are the outputs; only zero_output_for_mask carries its own output.
        own_out = masked and self.zero_output_for_mask
        xs = xk[::-1] if self.go_backwards else xk
        mask = None
        if masked:
            times = S.arange(steps)  # the time of each processing step
            if self.go_backwards:
                times = steps - 1 - times
            mask = E.less(M.expand_dims(times, 1), M.expand_dims(lengths, 0))  # (time, batch)
        if fused:
            outputs, final = cell.sequence(xs, states, mask)
            if own_out:
                outputs = E.where(M.expand_dims(mask, 2), outputs, 0)
            return self._result(outputs, final)
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
        seq = cf.scan(fn, xs, initializer=acc0)
        return self._result(seq[-1] if own_out else seq[0], [s[-1] for s in seq[:n_s]])

    def _result(self, outputs: Tensor, final: list[Tensor]) -> Any:
        """The layer's value from the time-major outputs and the final states."""
        y = M.transpose(outputs, (1, 0, 2)) if self.return_sequences else final[0]
        return [y, *final] if self.return_state else y


def _layer(cell_cls: type) -> type:
    class _Recurrent(RNN):
        def __init__(self, units: int, return_sequences: bool = False, return_state: bool = False,
                     go_backwards: bool = False, zero_output_for_mask: bool = False, **kwargs: Any):
            base = {k: kwargs.pop(k) for k in _BASE_KEYS if k in kwargs}
            cell_kw = {k: base[k] for k in ("seed", "dtype", "trainable") if k in base}
            name = base.get("name")
            super().__init__(cell_cls(units, name=f"{name}_cell" if name else cell_cls.__name__.lower()
                                      .replace("cell", "_cell"), **cell_kw, **kwargs),
                             return_sequences, return_state, go_backwards, zero_output_for_mask, **base)

        def get_config(self) -> dict:
            cell = self.cell.get_config()
            for k in _BASE_KEYS:
                cell.pop(k, None)
            return {**Layer.get_config(self), "seed": self.seed, **cell, **self._flags()}

        @classmethod
        def from_config(cls, config: dict) -> Layer:
            return cls(**config)

    return _Recurrent


class SimpleRNN(_layer(SimpleRNNCell)):  # type: ignore[misc]
    """A fully connected RNN layer (Keras's SimpleRNN); see `RNN` for the call.

    Args:
        units: the state size; the rest as `RNN` and `SimpleRNNCell`.
    """


class LSTM(_layer(LSTMCell)):  # type: ignore[misc]
    """An LSTM layer (Keras's LSTM, weights in its layout); see `RNN` for the call.

    Args:
        units: the state size; the rest as `RNN` and `LSTMCell`.

    Example:
        >>> y = kf.nn.LSTM(64, return_sequences=True)(x, sequence_length=lengths)
        >>> model = kf.Sequential([kf.nn.Embedding(1000, 32), kf.nn.LSTM(64), kf.nn.Dense(2)])
    """


class GRU(_layer(GRUCell)):  # type: ignore[misc]
    """A GRU layer (Keras's GRU with reset_after=True); see `RNN` for the call.

    Args:
        units: the state size; the rest as `RNN` and `GRUCell`.
    """


_CELLS: dict[str, type] = {"SimpleRNNCell": SimpleRNNCell, "LSTMCell": LSTMCell, "GRUCell": GRUCell}
#: the recurrent layer classes by name (what `Bidirectional.from_config` rebuilds)
RECURRENT_LAYERS: dict[str, type] = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}


class Bidirectional(Layer):
    """Runs a layer forwards and a copy of it (built from its config) backwards; merges the outputs.

    Called as `RNN` is; ``initial_state`` is the forward layer's states then the backward's.
    With ``return_state`` returns ``[output, *forward_states, *backward_states]``.

    Args:
        layer: an LSTM, GRU or SimpleRNN layer (not yet called).
        merge_mode: "concat" (default), "sum", "mul" or "ave".
        **kwargs: `Layer`'s (name, trainable, input_shape).
    """

    input_ndim = 3

    def __init__(self, layer: Any, merge_mode: str = "concat", **kwargs: Any):
        super().__init__(**kwargs)
        if merge_mode not in ("concat", "sum", "mul", "ave"):
            raise InvalidArgumentError(f"Bidirectional: merge_mode must be concat, sum, mul or ave; got {merge_mode!r}")
        if isinstance(layer, dict):  # from get_config
            cls = RECURRENT_LAYERS.get(layer.get("class_name"))
            if cls is None:
                raise InvalidArgumentError(f"Bidirectional: unknown layer {layer.get('class_name')!r}; known: "
                                           f"{sorted(RECURRENT_LAYERS)}")
            layer = cls.from_config(layer["config"])
        if not isinstance(layer, tuple(RECURRENT_LAYERS.values())):
            raise InvalidArgumentError(f"Bidirectional: layer must be a kf.nn LSTM, GRU or SimpleRNN; got "
                                       f"{type(layer).__name__}")
        self.layer = layer
        cfg = layer.get_config()
        name = cfg["name"]
        seed = cfg.get("seed")
        fwd = {**cfg, "name": f"forward_{name}", "zero_output_for_mask": True}
        bwd = {**cfg, "name": f"backward_{name}", "zero_output_for_mask": True, "go_backwards": True,
               "seed": None if seed is None else seed + 1}  # its own initial weights
        self.forward_layer = type(layer).from_config(fwd)
        self.backward_layer = type(layer).from_config(bwd)
        self.merge_mode = merge_mode
        self.return_sequences = bool(cfg["return_sequences"])
        self.return_state = bool(cfg["return_state"])
        self._extras: tuple[Any, Any] = (None, None)

    def get_config(self) -> dict:
        return {**super().get_config(), "merge_mode": self.merge_mode,
                "layer": {"class_name": type(self.layer).__name__, "config": self.layer.get_config()}}

    def variables(self, graph: Graph | None = None) -> list:
        """The forward layer's variables, then the backward layer's (Keras's order)."""
        g = graph if graph is not None else getattr(self, "_graph", None)
        return self.forward_layer.variables(g) + self.backward_layer.variables(g)

    def __call__(self, inputs: Any, training: Any = None, sequence_length: Any = None,
                 initial_state: Any = None) -> Any:
        """Run both directions over ``inputs`` (batch, time, features); see `RNN`."""
        if isinstance(inputs, SymbolicTensor) and (sequence_length is not None or initial_state is not None):
            raise InvalidArgumentError(f"{self.name}: sequence_length / initial_state are not supported on kf.Input "
                                       "tensors (functional models); call the layer on graph tensors")
        self._extras = (sequence_length, initial_state)
        try:
            return super().__call__(inputs, training)
        finally:
            self._extras = (None, None)

    def call(self, inputs: Tensor, training: Any) -> Any:
        lengths, init = self._extras
        fi = bi = None
        if init is not None:
            init = list(init)
            n = self.forward_layer.cell.n_states
            if len(init) != 2 * n:
                raise InvalidArgumentError(f"{self.name}: initial_state needs {2 * n} tensors (forward's then "
                                           f"backward's); got {len(init)}")
            fi, bi = init[:n], init[n:]
        f = self.forward_layer(inputs, training, sequence_length=lengths, initial_state=fi)
        b = self.backward_layer(inputs, training, sequence_length=lengths, initial_state=bi)
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
