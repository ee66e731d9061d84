"""The `Layer` base class, shared defaults (``kf.nn.defaults``), regularizers and name lookups.

A layer is an object built from its config (plain, picklable values). Its variables are made
on its first call in a graph, under the graph's name scope ``<layer name>/``; later calls in the
same graph reuse them (a second call in another graph makes that graph's own). A call
``layer(inputs, training=None)`` takes graph tensors and returns graph tensors; ``training`` is a
Python bool (the branch is chosen when the graph is built) or a bool scalar tensor (chosen at run
time). Called on `SymbolicTensor` inputs (``kf.Input``), a layer records the call for a functional
`kernelflow.nn.models.Model` instead.

To write a layer: subclass, take your arguments in ``__init__`` (pass the rest to
``super().__init__(**kwargs)``), create variables in ``build(input_shape, dtype)`` with
``self.add_weight``, compute in ``call(inputs, training)``, and list your arguments in
``get_config``.

Contents: Layer, SymbolicTensor, Input, defaults, Regularizer, L1, L2, L1L2, get_activation,
get_initializer, get_regularizer.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ShapeError
from ..graph.ir import Graph, Tensor, Variable
from ..graph.ops import elementwise as E
from ..graph.ops import nn as N
from ..graph.ops import reduce as R
from ..graph.shapes import FLOATING, format_shape
from . import init as kinit

__all__ = ["Layer", "SymbolicTensor", "Input", "defaults", "Regularizer", "L1", "L2", "L1L2", "get_activation",
           "get_initializer", "get_regularizer", "UNSET"]


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # an argument the caller left to `defaults` (or the layer's own default)

# --------------------------------------------------------------------------- name lookups
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": E.relu, "sigmoid": E.sigmoid, "tanh": E.tanh, "softplus": E.softplus, "elu": E.elu, "gelu": E.gelu,
    "leaky_relu": E.leaky_relu, "exp": E.exp, "softmax": N.softmax, "log_softmax": N.log_softmax,
}


def get_activation(a: Any) -> Callable[[Tensor], Tensor] | None:
    """An activation from a Keras name (``"relu"``, ``"softmax"``, ``"linear"``...), a callable or None."""
    if a is None or a == "linear":
        return None
    if isinstance(a, str):
        if a not in _ACTIVATIONS:
            raise InvalidArgumentError(f"unknown activation '{a}'; known: {sorted(_ACTIVATIONS) + ['linear']}")
        return _ACTIVATIONS[a]
    if callable(a):
        return a
    raise InvalidArgumentError(f"activation must be a name, a callable or None; got {a!r}")


def activation_name(a: Any) -> str:
    """The config form of an activation: its name."""
    if a is None:
        return "linear"
    if isinstance(a, str):
        return a
    return getattr(a, "__name__", repr(a))


_INITS = {"glorot_uniform": kinit.glorot_uniform, "glorot_normal": kinit.glorot_normal,
          "he_uniform": kinit.he_uniform, "he_normal": kinit.he_normal, "lecun_normal": kinit.lecun_normal,
          "orthogonal": kinit.orthogonal, "zeros": kinit.zeros, "ones": kinit.ones,
          "random_normal": kinit.normal, "random_uniform": kinit.uniform, "truncated_normal": kinit.truncated_normal}
_UNSEEDED = ("zeros", "ones")


def get_initializer(i: Any) -> Callable[..., Any]:
    """An initialiser factory ``f(shape, seed=..., dtype=...)`` from a Keras name or a callable."""
    if isinstance(i, str):
        if i not in _INITS:
            raise InvalidArgumentError(f"unknown initializer '{i}'; known: {sorted(_INITS)}")
        f = _INITS[i]
        if i in _UNSEEDED:
            return lambda shape, seed=None, dtype="float32": f(shape, dtype=dtype)
        return f
    if callable(i):
        return i
    raise InvalidArgumentError(f"initializer must be a name or a callable; got {i!r}")


# --------------------------------------------------------------------------- regularizers
class Regularizer:
    """A penalty on a weight, added to the model's loss. Subclasses define ``__call__(w) -> scalar``."""

    def __call__(self, w: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_config(self) -> dict:
        return dict(vars(self))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"kf.nn.{type(self).__name__}({args})"


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w**2)`` (Keras' meaning: no 1/2 factor)."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1, self.l2 = float(l1), float(l2)
        if self.l1 < 0 or self.l2 < 0:
            raise InvalidArgumentError(f"L1L2: factors must be >= 0; got l1={l1}, l2={l2}")

    def __call__(self, w: Tensor) -> Tensor:
        out = None
        if self.l1:
            out = R.sum(E.abs(w)) * self.l1
        if self.l2:
            p = R.sum(E.square(w)) * self.l2
            out = p if out is None else out + p
        return out if out is not None else R.sum(w) * 0.0


class L1(L1L2):
    """``l1 * sum(|w|)``."""

    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)


class L2(L1L2):
    """``l2 * sum(w**2)``."""

    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)


def get_regularizer(r: Any) -> Regularizer | None:
    """A regularizer from None, ``"l1"``, ``"l2"``, a `Regularizer` or a callable."""
    if r is None or isinstance(r, Regularizer) or callable(r):
        return r
    if r == "l1":
        return L1()
    if r == "l2":
        return L2()
    raise InvalidArgumentError(f"unknown regularizer {r!r}; known: 'l1', 'l2', kf.nn.L1L2(l1, l2)")


# --------------------------------------------------------------------------- defaults
_DEFAULTS = threading.local()
_DEFAULTABLE = ("activation", "kernel_initializer", "bias_initializer", "kernel_regularizer", "bias_regularizer",
                "padding", "use_bias")
_ALIASES = {"kernel_init": "kernel_initializer", "bias_init": "bias_initializer"}


@contextlib.contextmanager
def defaults(**kwargs: Any) -> Iterator[None]:
    """Shared layer arguments for layers constructed inside (TF-Slim's ``arg_scope``).

    An argument a layer is given explicitly wins; nested blocks override outer ones.

    Args:
        **kwargs: any of activation, kernel_initializer (alias kernel_init), bias_initializer
            (bias_init), kernel_regularizer, bias_regularizer, padding, use_bias.

    Example:
        >>> with kf.nn.defaults(activation="relu", kernel_init="he_normal"):
        ...     model = kf.Sequential([kf.nn.Dense(64), kf.nn.Dense(64)])
    """
    norm = {_ALIASES.get(k, k): v for k, v in kwargs.items()}
    unknown = sorted(set(norm) - set(_DEFAULTABLE))
    if unknown:
        raise InvalidArgumentError(f"defaults: unknown argument(s) {unknown}; known: {sorted(_DEFAULTABLE)}")
    stack = _defaults_stack()
    stack.append({**(stack[-1] if stack else {}), **norm})
    try:
        yield
    finally:
        stack.pop()


def _defaults_stack() -> list[dict]:
    if not hasattr(_DEFAULTS, "stack"):
        _DEFAULTS.stack = []
    return _DEFAULTS.stack


def resolve(name: str, value: Any, fallback: Any) -> Any:
    """``value`` unless UNSET; then the innermost `defaults` for ``name``; then ``fallback``."""
    if value is not UNSET:
        return value
    stack = _defaults_stack()
    if stack and name in stack[-1]:
        return stack[-1][name]
    return fallback


# --------------------------------------------------------------------------- symbolic tensors (functional API)
class SymbolicTensor:
    """A placeholder for a tensor of a functional model not yet built on a graph.

    Made by `Input` and by calling layers on symbolic tensors; `kernelflow.nn.models.Model`
    replays the recorded calls on its graph.

    Attributes:
        shape: the static shape, batch dim first (None).
        dtype: the dtype name.
        layer: the layer whose call made it (None for an input).
        inputs: the symbolic inputs of that call.
        index: which output of the call.
    """

    _ids = itertools.count()

    def __init__(self, shape: tuple, dtype: str, layer: Layer | None = None, inputs: Any = None,
                 kwargs: dict | None = None, index: int = 0, name: str | None = None):
        self.shape, self.dtype = tuple(shape), dtype
        self.layer, self.inputs, self.kwargs, self.index = layer, inputs, kwargs or {}, index
        self.id = next(self._ids)
        self.name = name or (f"{layer.name}:{index}" if layer is not None else f"input_{self.id}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"<kf.SymbolicTensor '{self.name}' shape={format_shape(self.shape)} dtype={self.dtype}>"


def Input(shape: Sequence[int | None], dtype: str = "float32", name: str | None = None) -> SymbolicTensor:  # noqa: N802
    """A model input (Keras' ``Input``): ``shape`` excludes the batch dim.

    Example:
        >>> x = kf.Input((8, 8, 1))
        >>> y = kf.nn.Dense(10)(kf.nn.Flatten()(x))
        >>> model = kf.Model(x, y)
    """
    return SymbolicTensor((None, *tuple(shape)), dtype, name=name or f"input_{next(_input_counter)}")


_input_counter = itertools.count(1)


def _flat(x: Any) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


# --------------------------------------------------------------------------- the base class
_NAME_COUNTS: dict[str, itertools.count] = {}
_NAME_LOCK = threading.Lock()


def _snake(name: str) -> str:
    out = []
    for i, c in enumerate(name):
        if c.isupper() and i and (not name[i - 1].isupper() or (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(c.lower())
    return "".join(out).replace("2_d", "2d").replace("1_d", "1d")


def _auto_name(cls: type) -> str:
    base = _snake(cls.__name__)
    with _NAME_LOCK:
        n = next(_NAME_COUNTS.setdefault(base, itertools.count()))
    return base if n == 0 else f"{base}_{n}"


class Layer:
    """Base of the layers: config in, graph tensors out; see the module docstring.

    Args:
        name: the name scope of its nodes and variables (default: snake-case class name,
            numbered: ``dense``, ``dense_1``...).
        trainable: False freezes its variables (the optimiser skips them).
        input_shape: the input's shape without the batch dim; only read by a `Sequential`
            whose first layer this is.
        seed: seed of the initialisers (default: derived from the graph's seed and the
            variable's name, so a rebuilt model starts from the same weights).
        dtype: dtype of its variables (default: the input's float dtype, else float32).
    """

    #: True for layers that compute differently in training (dropout, batch norm)
    uses_training: bool = False
    #: True for layers that run as in inference when frozen (``trainable=False``), as Keras 3's batch norm
    inference_when_frozen: bool = False
    #: the input rank the layer takes (with batch), or None for any; checked on call
    input_ndim: int | tuple[int, ...] | None = None

    def __init__(self, name: str | None = None, trainable: bool = True, input_shape: Sequence[int | None] | None = None,
                 seed: int | None = None, dtype: str | None = None):
        self.name = name or _auto_name(type(self))
        self.trainable = bool(trainable)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.seed = seed
        self.dtype = dtype
        self._vars: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._shapes: tuple[Any, Any] | None = None   # (input shape, output shape) of the last call

    # ----------------------------------------------------------------- to override
    def build(self, input_shape: Any, dtype: str) -> None:
        """Create variables with `add_weight` (called once per graph, inside the name scope)."""

    def call(self, inputs: Any, training: Any) -> Any:  # pragma: no cover - abstract
        """The computation: graph tensors in, graph tensors out."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """The constructor arguments (plain values): ``type(layer)(**layer.get_config())`` rebuilds it."""
        cfg: dict[str, Any] = {"name": self.name, "trainable": self.trainable}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        if self.dtype is not None:
            cfg["dtype"] = self.dtype
        return cfg

    @classmethod
    def from_config(cls, config: dict) -> Layer:
        """A layer from `get_config`'s map."""
        return cls(**config)

    # ----------------------------------------------------------------- calling
    def __call__(self, inputs: Any, training: Any = None) -> Any:
        """Apply the layer to graph tensors (or record the call on symbolic ones).

        Args:
            inputs: a tensor, or a list of tensors for merge layers.
            training: True, False, None (False) or a bool scalar tensor.

        Returns:
            The output tensor(s).

        Raises:
            ShapeError: an input of the wrong rank or a feature size other than the one the
                layer was built for, naming the layer and both shapes.
        """
        flat = _flat(inputs)
        if flat and all(isinstance(t, SymbolicTensor) for t in flat):
            return self._call_symbolic(inputs)
        if not flat or not all(isinstance(t, Tensor) for t in flat):
            raise InvalidArgumentError(f"{self.name}: inputs must be graph tensors or kf.Input tensors; got "
                                       f"{[type(t).__name__ for t in flat]}")
        g = flat[0].graph
        self._check_input(inputs)
        if self.inference_when_frozen and not self.trainable:
            training = False
        with g.name_scope(self.name):
            if g not in self._vars:
                self._vars[g] = {}
                shape = [t.shape for t in flat] if isinstance(inputs, (list, tuple)) else inputs.shape
                self._graph_building = g
                try:
                    self.build(shape, self._var_dtype(flat[0]))
                finally:
                    self._graph_building = None
                self._built_shape = shape
            for n, v in self._vars[g].items():  # the variables of this graph, if built in several
                setattr(self, n.replace("/", "_"), v)
            self._graph = g
            out = self.call(inputs, False if training is None else training)
        self._shapes = (_shape_of(inputs), _shape_of(out))
        return out

    def _call_symbolic(self, inputs: Any) -> Any:
        """Shape-check the call on a scratch graph; return symbolic outputs recording it."""
        scratch = Graph("scratch")
        ph = [scratch.placeholder(t.shape, t.dtype, name=f"in{i}") for i, t in enumerate(_flat(inputs))]
        real = ph if isinstance(inputs, (list, tuple)) else ph[0]
        out = self(real)
        outs = _flat(out)
        sym = [SymbolicTensor(o.shape, o.dtype, self, inputs, index=i) for i, o in enumerate(outs)]
        return sym if isinstance(out, (list, tuple)) else sym[0]

    def _check_input(self, inputs: Any) -> None:
        if self.input_ndim is not None and not isinstance(inputs, (list, tuple)):
            ok = (self.input_ndim,) if isinstance(self.input_ndim, int) else self.input_ndim
            if inputs.ndim not in ok:
                raise ShapeError(f"layer '{self.name}' ({type(self).__name__}): expected an input of rank "
                                 f"{' or '.join(map(str, ok))} (batch first); got shape {format_shape(inputs.shape)}")
        built = getattr(self, "_built_shape", None)
        if built is not None and not isinstance(inputs, (list, tuple)) and isinstance(built, tuple):
            got = inputs.shape
            if len(got) != len(built) or any(a is not None and b is not None and a != b
                                             for a, b in zip(got[1:], built[1:])):
                raise ShapeError(f"layer '{self.name}' ({type(self).__name__}): built for inputs of shape "
                                 f"{format_shape(built)}; got shape {format_shape(got)}")

    def _var_dtype(self, x: Tensor) -> str:
        if self.dtype is not None:
            return self.dtype
        return x.dtype if x.dtype in FLOATING else "float32"

    # ----------------------------------------------------------------- weights
    def add_weight(self, name: str, shape: Sequence[int], initializer: Any = "zeros", dtype: str = "float32",
                   trainable: bool = True, regularizer: Any = None) -> Variable:
        """Create variable ``<scope>/<name>`` in the graph being built (call from `build`).

        Its penalty ``regularizer(w)`` joins the graph collection ``"regularization_losses"``,
        which a model adds to its loss.
        """
        g = self._building_graph()
        init = get_initializer(initializer)
        full = "/".join(g._scope + [name])
        if self.seed is not None:
            seed = (self.seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFFFFFF
        else:
            seed = zlib.crc32(f"{g.seed}/{full}".encode()) & 0x7FFFFFFF
        v = g.variable(init(tuple(int(d) for d in shape), seed=seed, dtype=dtype), name=name,
                       trainable=trainable and self.trainable)
        self._vars[g][name] = v
        setattr(self, name.replace("/", "_"), v)
        if regularizer is not None:
            g.add_to_collection("regularization_losses", regularizer(v))
        return v

    def _building_graph(self) -> Graph:
        g = getattr(self, "_graph_building", None)
        if g is None:
            raise InvalidArgumentError(f"{self.name}: add_weight is called from build(), during the layer's first call")
        return g

    def variables(self, graph: Graph | None = None) -> list[Variable]:
        """The layer's variables in ``graph`` (default: the graph of its last call), in creation order."""
        g = graph if graph is not None else getattr(self, "_graph", None)
        return list(self._vars.get(g, {}).values()) if g is not None else []

    def count_params(self) -> int:
        """Number of scalars in the layer's variables (trainable and not), as Keras counts them."""
        return int(sum(int(np.prod(v.shape)) for v in self.variables()))

    @property
    def output_shape(self) -> Any:
        """Shape of the output of the last call (batch dim None)."""
        return self._shapes[1] if self._shapes else None

    def get_weights(self) -> list[np.ndarray]:
        """Current values of the layer's variables, fetched from the runtime."""
        return [v.graph.read_variable(v) for v in self.variables()]

    def set_weights(self, values: Sequence[Any]) -> None:
        """Assign the layer's variables, in the order of `variables`."""
        vs = self.variables()
        if len(values) != len(vs):
            raise InvalidArgumentError(f"{self.name}.set_weights: expected {len(vs)} arrays "
                                       f"{[v.name for v in vs]}; got {len(values)}")
        for v, a in zip(vs, values):
            a = np.asarray(a, dtype=v.dtype)
            if a.shape != tuple(v.shape):
                raise ShapeError(f"{self.name}.set_weights: '{v.name}' has shape {format_shape(v.shape)}; got "
                                 f"{format_shape(a.shape)}")
            v.graph.write_variable(v, a)

    def __repr__(self) -> str:
        return f"<kf.nn.{type(self).__name__} '{self.name}'>"

    def __getstate__(self) -> dict:
        # an unbuilt copy: variables live on a runtime and are not part of the config
        return {"config": self.get_config()}

    def __setstate__(self, state: dict) -> None:
        fresh = type(self).from_config(state["config"])
        self.__dict__.update(fresh.__dict__)


def _shape_of(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [t.shape for t in x]
    return x.shape

