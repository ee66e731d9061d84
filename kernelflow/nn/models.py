"""Keras-style models bound to a runtime: `Sequential` and the functional `Model`.

A model owns one graph on its runtime. Building it (on construction when the input shape is
known, else on the first fit/predict) adds the input placeholders and two passes through the
layers that share their variables: the *training* pass (``training=True``: dropout masks,
batch statistics and their moving-average updates) that the loss and the train op use, and the
*inference* pass (``training=False``) behind ``evaluate``, ``predict``, validation during
``fit`` and ``export``. Layers that behave the same either way get one pass. The choice is made
when the graph is built because a training job feeds only dataset arrays, never a flag: fit's
job runs the training pass's train op and validates on the inference pass, so exported
models and ``predict`` never see a dropout mask or move a moving statistic.

``compile`` adds the label placeholder, the loss (plus the layers' regularization penalties),
the optimiser's update and the metrics. ``save`` stores a description of the model (its
tensors by node name, summary, compile state) as a constant node of the graph, and
checkpoints the variables; `load` rebuilds a model object from the graph on any client.

This module imports no client code: a model calls its runtime through the runtime's public
methods (``rt.graph``, ``rt.dataset``, ``g.fit``, ``g.export``). ``kf.Sequential`` with no
``rt`` uses the runtime factory ``kernelflow/__init__`` installs (``kf.connect()``).

Contents: Model, Sequential, load, set_runtime_factory.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, ShapeError
from ..graph.ir import Tensor
from ..graph.ops.state import identity
from ..graph.shapes import format_shape
from . import optim as kopt
from .compiling import build_compiled, resolve_compile
from .layer_base import Layer, SymbolicTensor, _flat
from .model_arrays import ArrayMethods
from .nesting import ModelLayer

__all__ = ["Model", "Sequential", "load", "set_runtime_factory", "OPTIMIZERS"]

_RUNTIME_FACTORY: Callable[[], Any] | None = None
CONFIG_NODE = "__kf_model__/config"
_model_counts: dict[str, itertools.count] = {}

OPTIMIZERS: dict[str, tuple[type, float]] = {  # Keras' names and default learning rates
    "sgd": (kopt.SGD, 0.01), "adam": (kopt.Adam, 1e-3), "adamw": (kopt.AdamW, 1e-3),
    "rmsprop": (kopt.RMSProp, 1e-3), "adagrad": (kopt.Adagrad, 1e-3),
}


def set_runtime_factory(factory: Callable[[], Any] | None) -> None:
    """The runtime a model without ``rt`` uses: ``factory()`` (``kernelflow`` sets ``kf.connect``)."""
    global _RUNTIME_FACTORY
    _RUNTIME_FACTORY = factory


def _auto_model_name(base: str) -> str:
    n = next(_model_counts.setdefault(base, itertools.count()))
    return base if n == 0 else f"{base}_{n}"


def get_optimizer(opt: Any) -> kopt.Optimizer:
    """An optimiser from a Keras name (``"adam"``) or an optimiser object.

    Raises:
        InvalidArgumentError: an unknown name, listing the known ones.
    """
    if isinstance(opt, kopt.Optimizer):
        return opt
    if isinstance(opt, str):
        key = opt.lower()
        if key not in OPTIMIZERS:
            raise InvalidArgumentError(f"compile: unknown optimizer '{opt}'; known: {sorted(OPTIMIZERS)}")
        cls, lr = OPTIMIZERS[key]
        return cls(lr=lr)
    raise InvalidArgumentError(f"compile: optimizer must be a name or a kf.optim optimiser; got {opt!r}")


class Model(ArrayMethods):
    """A functional model: ``kf.Model(inputs, outputs)`` from `kernelflow.nn.Input` tensors.

    Args:
        inputs: a `SymbolicTensor` from ``kf.Input`` or a list of them.
        outputs: the symbolic tensor(s) layer calls made from them.
        name: the model's name; also its graph's name on the runtime (an automatic name gets a
            random suffix so that two notebooks never share a graph).
        rt: the runtime (default: ``kf.connect()``, the local runtime).
        seed: the graph's seed: layer initialisers without their own seed derive theirs from it.

    Example:
        >>> x = kf.Input((64,))
        >>> h = kf.nn.Dense(32, activation="relu")(x)
        >>> model = kf.Model(x, kf.nn.Dense(10, activation="softmax")(h), rt=kf.connect("inproc"))
        >>> model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    """

    _kind = "model"

    def __init__(self, inputs: Any = None, outputs: Any = None, name: str | None = None, rt: Any = None,
                 seed: int = 0):
        self.name = name or _auto_model_name(self._kind)
        self._explicit_name = name is not None
        self._rt = rt
        self.seed = int(seed)
        self.trainable = True
        self._as_layer: Any = None
        self.stop_training = False
        self.history: Any = None
        self.graph: Any = None
        self._compiled: dict | None = None
        self._tensors: dict[str, Any] = {}
        self._datasets: dict[str, Any] = {}   # what fit uploaded: deleted with the model
        self._loaded: dict | None = None
        self._lr_var: Any = None
        self._optimizer: Any = None
        if inputs is not None or outputs is not None:
            if inputs is None or outputs is None:
                raise InvalidArgumentError("Model: give both inputs and outputs (kf.Input tensors and what layers "
                                           "made from them)")
            self._sym_inputs = _flat(inputs)
            self._sym_outputs = _flat(outputs)
            for t in self._sym_inputs + self._sym_outputs:
                if not isinstance(t, SymbolicTensor):
                    raise InvalidArgumentError(f"Model: inputs and outputs must be kf.Input tensors and layer "
                                               f"outputs made from them; got {type(t).__name__}")
            self._multi_out = isinstance(outputs, (list, tuple))
            self._layers = self._trace()
            self._build([(t.shape[1:], t.dtype) for t in self._sym_inputs])

    # ----------------------------------------------------------------- structure
    def _trace(self) -> list[Layer]:
        """The layers from the inputs to the outputs, in call order; checks the outputs reach the inputs."""
        order: list[Layer] = []
        seen: set[int] = set()
        inputs = {t.id for t in self._sym_inputs}

        def visit(t: SymbolicTensor) -> None:
            if t.layer is None:
                if t.id not in inputs:
                    raise InvalidArgumentError(f"Model: output depends on input '{t.name}', which is not among the "
                                               f"model's inputs {[i.name for i in self._sym_inputs]}")
                return
            for i in _flat(t.inputs):
                visit(i)
            if id(t.layer) not in seen:
                seen.add(id(t.layer))
                order.append(t.layer)

        for o in self._sym_outputs:
            visit(o)
        return order

    @property
    def layers(self) -> list[Layer]:
        """The model's layers in call order."""
        return list(self._layers)

    @property
    def runtime(self) -> Any:
        """The runtime the model's graph lives on."""
        if self._rt is None:
            if _RUNTIME_FACTORY is None:
                raise FailedPreconditionError(f"model '{self.name}': no runtime given and no default; pass "
                                              "rt=kf.connect(...)")
            self._rt = _RUNTIME_FACTORY()
        return self._rt

    @property
    def built(self) -> bool:
        return self.graph is not None

    def _forward(self, inputs: list[Tensor], training: bool) -> list[Tensor]:
        memo: dict[int, Any] = {t.id: x for t, x in zip(self._sym_inputs, inputs)}
        calls: dict[tuple, Any] = {}

        def value(t: SymbolicTensor) -> Tensor:
            if t.id in memo:
                return memo[t.id]
            args = t.inputs
            key = (id(t.layer), tuple(i.id for i in _flat(args)))
            if key not in calls:
                real = [value(i) for i in args] if isinstance(args, (list, tuple)) else value(args)
                calls[key] = t.layer(real, training=training)
            out = calls[key]
            memo[t.id] = out[t.index] if isinstance(out, (list, tuple)) else out
            return memo[t.id]

        return [value(o) for o in self._sym_outputs]

    def _graph_name(self) -> str:
        return self.name if self._explicit_name else f"{self.name}-{uuid.uuid4().hex[:8]}"

    def _build(self, specs: Sequence[tuple[tuple, str]]) -> None:
        """Create the graph: input placeholders, the training and inference passes, named outputs."""
        rt = self.runtime
        name = self._graph_name()
        if self._explicit_name and name in rt.graphs():
            raise AlreadyExistsError(f"model '{name}': runtime {rt.url} already has a graph of that name; load it with "
                                     f"kf.models.load('{name}', rt=...) or pick another name")
        g = rt.graph(name, seed=self.seed)
        names = self._input_names()
        phs = [g.placeholder((None, *shape), dtype, name=n) for n, (shape, dtype) in zip(names, specs)]
        infer = self._forward(phs, training=False)
        if any(getattr(layer, "uses_training", False) for layer in self._layers):
            train = self._forward(phs, training=True)
        else:
            train = infer
        outs = [identity(o, name="output" if len(infer) == 1 else f"output_{i}") for i, o in enumerate(infer)]
        for layer in self._layers:
            if isinstance(layer, ModelLayer):  # a nested model starts from its current weights
                layer.copy_inner_weights(g)
        self.graph = g
        self._tensors = {"inputs": phs, "outputs": outs, "train_outputs": train}
        self._summary_rows = self._make_summary_rows()

    def _input_names(self) -> list[str]:
        return [t.name for t in self._sym_inputs]

    def _n_inputs(self) -> int | None:
        return len(self._sym_inputs)

    def _input_spec_for_nesting(self) -> tuple[tuple, str] | None:
        """(shape without batch, dtype) of the one input, for a `Sequential` this model leads."""
        if len(self._sym_inputs) != 1:
            return None
        return self._sym_inputs[0].shape[1:], self._sym_inputs[0].dtype

    def get_layer(self, name: str) -> Layer:
        """The layer called ``name`` (a nested model is a `kernelflow.nn.nesting.ModelLayer`).

        Raises:
            NotFoundError: no layer of that name, listing the names.
        """
        self._ensure_built_spec()
        for layer in self._layers:
            if layer.name == name:
                return layer
        raise NotFoundError(f"model '{self.name}' has no layer '{name}'; layers: {[x.name for x in self._layers]}")

    # ----------------------------------------------------------------- compile
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None, metrics: Any = None,
                loss_weights: Any = None, weighted_metrics: Any = None) -> None:
        """Choose the optimiser, the loss(es) and the metrics (Keras' meanings).

        Args:
            optimizer: ``"adam"``, ``"sgd"``, ``"rmsprop"``, ``"adamw"``, ``"adagrad"`` (Keras'
                default learning rates) or a `kernelflow.optim` optimiser.
            loss: ``"sparse_categorical_crossentropy"``, ``"categorical_crossentropy"``,
                ``"binary_crossentropy"`` (all expecting probabilities), ``"mse"``, ``"mae"``, or a
                `kernelflow.nn.losses.Loss` (``SparseCategoricalCrossentropy(from_logits=True)``).
                With several outputs: one loss for all, a list in output order, or a dict by
                output name (`output_names`); None for an output leaves it untrained.
            metrics: names (``"accuracy"`` follows the loss, as in Keras), losses or callables;
                with several outputs a dict by output name, a list of lists, or one list for all.
            loss_weights: factors of the outputs' losses in the total (a list or a dict by
                output name; default 1 each).
            weighted_metrics: metrics weighted by ``sample_weight`` / ``class_weight``
                (``weighted_<name>``: ``sum(v * w) / sum(w)``), in the forms ``metrics`` takes.

        Raises:
            InvalidArgumentError: an unknown optimizer, loss or metric name, listing the known ones;
                an output name that is not the model's.
        """
        if self._loaded is not None:
            raise FailedPreconditionError(f"model '{self.name}' was loaded with the compile it was saved with; "
                                          "build a new model to compile differently")
        spec = resolve_compile(get_optimizer(optimizer), loss, metrics, loss_weights, weighted_metrics,
                               self.output_names)
        self._optimizer = spec.optimizer
        self._compiled = {"spec": spec}
        if self.built:
            self._compile_graph()

    @property
    def output_names(self) -> list[str]:
        """Names of the outputs (the layers making them): the keys of per-output losses, labels and logs."""
        if self._loaded is not None:
            return list(self._loaded.get("output_names", ["output"]))
        names = []
        for t in self._sym_outputs:
            base = t.layer.name if t.layer is not None else t.name
            names.append(base if base not in names else f"{base}_{t.index}")
        return names

    def _compile_graph(self) -> None:
        assert self._compiled is not None and self.graph is not None
        g = self.graph
        opt = self._optimizer
        if isinstance(opt.lr, (int, float)):
            var_dtype = next((v.dtype for v in g.trainable_variables()), "float32")
            with g.name_scope("compile"):
                self._lr_var = g.variable(np.asarray(opt.lr, var_dtype), name="learning_rate", trainable=False)
            opt.lr = self._lr_var
        self._compiled["spec"].var_list = [v for layer in self._layers for v in _live_variables(layer, g)]
        built = build_compiled(g, self._compiled["spec"], self._tensors["train_outputs"], self._tensors["outputs"])
        labels = built["labels"]
        self._tensors.update(built, y=next(iter(labels.values())))

    def _variant(self, weighted: bool) -> dict[str, Any]:
        """The compiled tensors without or with sample weights (the weighted ones built on first use)."""
        if not weighted:
            return self._tensors
        w = self._tensors.get("weighted")
        if w is None:
            if self._loaded is not None:
                raise FailedPreconditionError(f"model '{self.name}': sample weights need the weighted loss, which "
                                              "the saved model lacks (fit or evaluate it with sample_weight before "
                                              "save)")
            w = build_compiled(self.graph, self._compiled["spec"], self._tensors["train_outputs"],
                               self._tensors["outputs"], labels=self._tensors["labels"], weighted=True)
            self._tensors["weighted"] = w
        return w

    @property
    def compiled(self) -> bool:
        return "train_op" in self._tensors

    @property
    def learning_rate(self) -> float:
        """The optimiser's current learning rate (a variable on the runtime after compile)."""
        if self._lr_var is None:
            raise FailedPreconditionError(f"model '{self.name}': the learning rate is a variable only after compile "
                                          "with a numeric learning rate")
        return float(self.graph.read_variable(self._lr_var))

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        if self._lr_var is None:
            raise FailedPreconditionError(f"model '{self.name}': the learning rate is a variable only after compile "
                                          "with a numeric learning rate")
        self.graph.write_variable(self._lr_var, np.asarray(value, self._lr_var.dtype))

    def _require_compiled(self, what: str) -> None:
        if self._compiled is None and not self.compiled:
            raise FailedPreconditionError(f"{what}: model '{self.name}' is not compiled; call "
                                          f"model.compile(optimizer, loss, metrics) first")

    # ----------------------------------------------------------------- data
    def _ensure_built(self, x: Any) -> None:
        if not self.built:
            arrays = [np.asarray(a) for a in _flat(x)]
            self._build([(a.shape[1:], _float_or(a.dtype)) for a in arrays])
        if self._compiled is not None and not self.compiled:
            self._compile_graph()

    # ----------------------------------------------------------------- training and inference
    def fit(self, x: Any = None, y: Any = None, **kwargs: Any) -> Any:
        """Train as a job on the runtime; see `kernelflow.nn.fitting.fit` for the arguments.

        Returns:
            A `kernelflow.nn.callbacks.History` (``wait=True``, the default outside a notebook),
            or the running job (``wait=False``, the default in a notebook).
        """
        from .fitting import fit

        return fit(self, x, y, **kwargs)

    def __call__(self, inputs: Any, training: Any = None) -> Any:
        """Use the model as a layer: on ``kf.Input`` tensors (a functional model nesting it) or graph tensors.

        Every call goes through one `kernelflow.nn.nesting.ModelLayer`, so calls share its
        variables within a graph. See `kernelflow.nn.nesting` for what the outer model gets.
        """
        return self.as_layer()(inputs, training=training)

    def as_layer(self) -> ModelLayer:
        """The `kernelflow.nn.nesting.ModelLayer` through which this model is a layer of others."""
        if self._loaded is not None:
            raise FailedPreconditionError(f"model '{self.name}' was loaded: its layers are described, not rebuilt, "
                                          "so it cannot be nested in another model")
        if self._as_layer is None:
            self._as_layer = ModelLayer(self)
        return self._as_layer

    # ----------------------------------------------------------------- weights
    def get_weights(self) -> list[np.ndarray]:
        """Values of every layer variable (trainable and not), layer by layer."""
        return [self.graph.read_variable(v) for v in self._variables()]

    def set_weights(self, values: Sequence[Any]) -> None:
        """Assign every layer variable, in the order of `get_weights`."""
        vs = self._variables()
        if len(values) != len(vs):
            raise InvalidArgumentError(f"model '{self.name}'.set_weights: expected {len(vs)} arrays; got {len(values)}")
        for v, a in zip(vs, values):
            a = np.asarray(a, v.dtype)
            if a.shape != tuple(v.shape):
                raise ShapeError(f"set_weights: '{v.name}' has shape {format_shape(v.shape)}; got "
                                 f"{format_shape(a.shape)}")
            self.graph.write_variable(v, a)

    def _variables(self) -> list[Any]:
        if self._loaded is not None:
            return [self.graph[n] for row in self._loaded["layers"] for n in row["weights"]]
        self._need_built("get_weights")
        return [v for layer in self._layers for v in layer.variables(self.graph)]

    def _ensure_built_spec(self) -> None:
        """Build now if the input shape is known (a `Sequential` led by ``kf.Input``); functional models are built."""

    def _need_built(self, what: str) -> None:
        self._ensure_built_spec()
        if not self.built:
            raise FailedPreconditionError(f"{what}: model '{self.name}' is not built yet: its input shape is unknown "
                                          "until the first fit/predict, or give kf.Input / input_shape")

    def count_params(self) -> int:
        """Scalars in the layers' variables (Keras' "Total params")."""
        return sum(r[3] for r in self._summary())

    # ----------------------------------------------------------------- summary
    def _make_summary_rows(self) -> list[list]:
        rows = []
        for layer in self._layers:
            vs = layer.variables(self.graph)
            trainable = sum(int(np.prod(v.shape)) for v in vs if v.trainable)
            total = sum(int(np.prod(v.shape)) for v in vs)
            shape = layer.output_shape
            cls = getattr(layer, "class_name", type(layer).__name__)
            rows.append([layer.name, cls, _shape_text(shape), total, trainable,
                         [v.name for v in vs]])
        return rows

    def _summary(self) -> list[list]:
        if self._loaded is not None:
            return [[r["name"], r["class"], r["output_shape"], r["params"], r["trainable"], r["weights"]]
                    for r in self._loaded["layers"]]
        self._need_built("summary")
        return self._summary_rows

    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        """A table of the layers: name (type), output shape, parameter count; then the totals.

        Counts follow Keras: batch-norm moving statistics are non-trainable parameters,
        optimiser slots are not parameters.

        Returns:
            The table's text (also passed to ``print_fn`` unless it is None).
        """
        rows = self._summary()
        head = ("Layer (type)", "Output Shape", "Param #")
        body = [(f"{r[0]} ({r[1]})", r[2], f"{r[3]:,}") for r in rows]
        w = [max(len(a[i]) for a in [head, *body]) + 2 for i in range(3)]
        line = "─" * (sum(w) + 2)
        out = [f'Model: "{self.name}"', line, "".join(h.ljust(n) for h, n in zip(head, w)), line]
        out += ["".join(c.ljust(n) for c, n in zip(b, w)) for b in body]
        total = sum(r[3] for r in rows)
        trainable = sum(r[4] for r in rows)
        out += [line, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {total - trainable:,}"]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text

    # ----------------------------------------------------------------- state dir, serving, widgets
    def _config(self) -> dict:
        t = self._tensors
        cfg: dict[str, Any] = {
            "format": 1, "class": type(self).__name__, "name": self.name,
            "inputs": [p.name for p in t["inputs"]], "outputs": [o.name for o in t["outputs"]],
            "layers": [{"name": r[0], "class": r[1], "output_shape": r[2], "params": r[3], "trainable": r[4],
                        "weights": r[5]} for r in self._summary()],
        }
        cfg["output_names"] = self.output_names
        if self.compiled:
            cfg["compiled"] = _variant_config(t)
            cfg["compiled"]["learning_rate"] = self._lr_var.name if self._lr_var is not None else None
            if "weighted" in t:
                cfg["compiled"]["weighted"] = _variant_config(t["weighted"])
        return cfg

    def save(self, tag: str | None = None) -> dict:
        """Checkpoint the model on its runtime's state dir (the graph stays there, by name).

        A description of the model is kept in the graph, so ``kf.models.load(model.graph.name,
        rt=...)`` rebuilds it later, from any client, also after a server restart.

        Args:
            tag: the checkpoint's tag (default: the runtime numbers it).

        Returns:
            The checkpoint's manifest.

        Raises:
            FailedPreconditionError: the runtime has no state dir.
        """
        self._need_built("save")
        blob = np.frombuffer(json.dumps(self._config()).encode(), np.uint8).copy()
        with self.graph.name_scope("__kf_model__"):
            self.graph.constant(blob, name="config")
        return self.graph.save(tag=tag)

    def export(self, name: str | None = None, version: int | None = None) -> int:
        """Export the inference pass as a served model (REST / ``rt.model(name).predict``).

        Signature: inputs by the model's input names (``"x"`` for a Sequential), outputs
        ``"output"`` (``"output_<i>"`` for several).

        Returns:
            The version written.
        """
        self._need_built("export")
        ins = {p.name: p for p in self._tensors["inputs"]}
        outs = {o.name: o for o in self._tensors["outputs"]}
        return self.graph.export(name or self.name, ins, outs, version)

    def inspect(self, **kwargs: Any) -> Any:
        """The graph inspector widget of the model's graph."""
        self._need_built("inspect")
        return self.graph.inspect(**kwargs)

    def monitor(self, **kwargs: Any) -> Any:
        """The live training monitor of the model's latest fit job."""
        job = getattr(self, "last_job", None)
        if job is None:
            raise FailedPreconditionError(f"monitor: model '{self.name}' has no fit job yet; call model.fit first")
        return job.monitor(**kwargs)

    def delete(self) -> None:
        """Delete the model's graph and its fit datasets from the runtime."""
        if self.graph is None:
            return
        for ds in self._datasets.values():
            try:
                ds.delete()
            except NotFoundError:  # deleted meanwhile by someone else
                pass
        self._datasets.clear()
        self.graph.runtime.delete_graph(self.graph.name)
        self.graph = None

    def __repr__(self) -> str:
        where = f" graph='{self.graph.name}'" if self.graph is not None else " (not built)"
        return f"<kf.{type(self).__name__} '{self.name}'{where}>"


def _live_variables(layer: Layer, g: Any) -> list:
    """The variables of ``layer`` in ``g`` that training updates now: trainable ones of layers not frozen."""
    if not layer.trainable:
        return []
    if isinstance(layer, ModelLayer):
        return [v for inner in layer.model._layers for v in _live_variables(inner, g)]
    return [v for v in layer.variables(g) if v.trainable]


def _variant_config(t: dict) -> dict:
    """Node names of one compiled variant, for the saved description."""
    return {"labels": {str(i): p.name for i, p in t["labels"].items()}, "train_op": t["train_op"].name,
            "metrics": {k: v.name for k, v in t["metrics"].items()},
            "val_metrics": {k: v.name for k, v in t["val_metrics"].items()},
            "sample_weight": t["sample_weight"].name if t.get("sample_weight") is not None else None,
            "weight_sum": t["weight_sum"].name if t.get("weight_sum") is not None else None,
            "weighted_names": list(t.get("weighted_names", []))}


def _float_or(dtype: Any) -> str:
    d = np.dtype(dtype)
    if d.kind == "f":
        return d.name
    if d.kind in "iub":
        return "int64" if d.kind != "b" else "bool"
    return "float32"


def _shape_text(shape: Any) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return ", ".join(format_shape(s) for s in shape)
    return format_shape(shape)


# The subclasses live in their own modules; imported here (after Model) so kf.models has them all.
from .saving import _LoadedModel, load  # noqa: E402
from .sequential import Sequential  # noqa: E402

_ = _LoadedModel
