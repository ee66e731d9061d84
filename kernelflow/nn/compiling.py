"""``model.compile`` made concrete: losses per output with loss weights, metrics, and the sample-weighted variant.

A compiled model holds, under ``compile/`` in its graph: a label placeholder per output that has
a loss, the total loss (the weighted sum of the outputs' losses plus the layers' regularization
penalties) behind the optimiser's train op, and the metrics of the training and of the
inference pass. Fits and evaluations with sample weights (``sample_weight``, ``class_weight``)
use a second variant under ``compile_weighted/``, built the first time one asks for it: a
(batch,) weight placeholder, the losses ``mean(per_example * w)`` (Keras' meaning: the sum
of the weighted losses over the batch size), the weighted metrics (``sum(v * w) / sum(w)``)
and a train op from the same optimiser object, so its slots and step counter are shared.
Plain ``metrics`` stay unweighted in both, as in Keras.

Names follow Keras: one output logs ``loss`` and the metric names; several log ``loss``, then
``<output>_loss`` per output, then ``<output>_<metric>``. Weighted metrics are
``weighted_<metric>``.

Contents: CompileSpec, resolve_compile, build_compiled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError
from ..graph.ops import reduce as R
from ..graph.ops.state import identity
from .losses import Loss, Metric, get_loss, get_metric

__all__ = ["CompileSpec", "resolve_compile", "build_compiled"]


@dataclass
class CompileSpec:
    """What ``compile`` was given, resolved per output.

    Attributes:
        optimizer: the optimiser object.
        output_names: the model's output names (the layers that make them).
        losses: a `Loss` per output, or None for an output that is not trained.
        loss_weights: the factor of each output's loss in the total.
        metrics: per output, the unweighted metrics.
        weighted_metrics: per output, the metrics weighted by the sample weights.
        var_list: the variables the train op updates (set when the graph part is built: the
            layers' ``trainable`` flags as they are at compile, as Keras reads them).
    """

    optimizer: Any
    output_names: list[str]
    losses: list[Loss | None]
    loss_weights: list[float]
    metrics: list[list[Metric]]
    weighted_metrics: list[list[Metric]]
    var_list: list | None = None


def _per_output(value: Any, names: list[str], what: str) -> list:
    """``value`` for each output: a dict by output name, a list in output order, or one value for all."""
    n = len(names)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(names), key=str)
        if unknown:
            raise InvalidArgumentError(f"compile: {what} names unknown output(s) {unknown}; the model's outputs are "
                                       f"{names}")
        return [value.get(k) for k in names]
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise InvalidArgumentError(f"compile: {what} has {len(value)} entries for the {n} output(s) {names}")
        return list(value)
    return [value] * n


def _metric_lists(value: Any, names: list[str], losses: list[Loss | None], what: str) -> list[list[Metric]]:
    n = len(names)
    if value is None:
        per: list = [[] for _ in names]
    elif isinstance(value, dict):
        per = [v if isinstance(v, (list, tuple)) else ([] if v is None else [v])
               for v in _per_output(value, names, what)]
    elif isinstance(value, (list, tuple)):
        nested = n > 1 and len(value) == n and all(v is None or isinstance(v, (list, tuple)) for v in value)
        per = [list(v or []) for v in value] if nested else [list(value) for _ in names]
    else:
        raise InvalidArgumentError(f"compile: {what} must be a list (or a dict by output name); got {value!r}")
    out = []
    for i, ms in enumerate(per):
        if ms and losses[i] is None:
            raise InvalidArgumentError(f"compile: {what} for output '{names[i]}' need a loss on it (its labels)")
        out.append([get_metric(m, losses[i] or Loss()) for m in ms])
    return out


def resolve_compile(optimizer: Any, loss: Any, metrics: Any, loss_weights: Any, weighted_metrics: Any,
                    output_names: list[str]) -> CompileSpec:
    """Check ``compile``'s arguments against the model's outputs and resolve names into objects.

    Raises:
        InvalidArgumentError: an unknown loss or metric name (listing the known ones), an output
            name that is not the model's, or a list of the wrong length.
    """
    names = list(output_names)
    if loss is None:
        raise InvalidArgumentError("compile: give a loss, e.g. loss='sparse_categorical_crossentropy'")
    if len(names) == 1 and isinstance(loss, (list, tuple)) and len(loss) == 1:
        loss = loss[0]
    losses = [None if v is None else get_loss(v) for v in _per_output(loss, names, "loss")]
    if all(v is None for v in losses):
        raise InvalidArgumentError(f"compile: no output has a loss; outputs: {names}")
    if loss_weights is None:
        weights = [1.0] * len(names)
    else:
        if len(names) == 1 and isinstance(loss_weights, (int, float)):
            loss_weights = [loss_weights]
        raw = _per_output(loss_weights, names, "loss_weights")
        try:
            weights = [1.0 if w is None else float(w) for w in raw]
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError(f"compile: loss_weights must be numbers; got {loss_weights!r}") from e
    return CompileSpec(optimizer=optimizer, output_names=names, losses=losses, loss_weights=weights,
                       metrics=_metric_lists(metrics, names, losses, "metrics"),
                       weighted_metrics=_metric_lists(weighted_metrics, names, losses, "weighted_metrics"))


def _name(names: list[str], i: int, base: str) -> str:
    return base if len(names) == 1 else f"{names[i]}_{base}"


def build_compiled(g: Any, spec: CompileSpec, train_outs: list, infer_outs: list, labels: dict | None = None,
                   weighted: bool = False) -> dict[str, Any]:
    """Add the labels, losses, train op and metrics of ``spec`` to graph ``g``.

    Args:
        g: the model's graph.
        spec: the resolved compile.
        train_outs, infer_outs: the outputs of the training and of the inference pass.
        labels: {output index: label placeholder} of the unweighted variant (the weighted one
            shares them, so both read the same dataset columns); None makes them.
        weighted: build the sample-weighted variant.

    Returns:
        ``{"labels", "sample_weight", "train_op", "metrics", "val_metrics", "weight_sum",
        "weighted_names"}``: metrics are {History name: scalar tensor}; ``weight_sum`` is the
        validation batch's sum of weights (None unweighted), ``weighted_names`` the metrics to
        average by it.
    """
    names = spec.output_names
    with g.name_scope("compile_weighted" if weighted else "compile"):
        if labels is None:
            labels = {}
            for i, (loss, out) in enumerate(zip(spec.losses, infer_outs)):
                if loss is not None:
                    shape, dtype = loss.label_spec(out.shape, out.dtype)
                    labels[i] = g.placeholder(shape, dtype, name="y_true" if len(names) == 1 else f"y_true_{i}")
        sw = None
        if weighted:
            sw_dtype = next((o.dtype for o in infer_outs if o.dtype.startswith("float")), "float32")
            sw = g.placeholder((None,), sw_dtype, name="sample_weight")
        penalty = None
        for p in g.collections.get("regularization_losses", ()):
            penalty = p if penalty is None else penalty + p

        def scalars(outs: list, prefix: str) -> dict[str, Any]:
            parts = {}
            total = None
            for i, y in labels.items():
                loss = spec.losses[i]
                assert loss is not None
                part = loss.weighted(y, outs[i], sw) if sw is not None else loss(y, outs[i])
                parts[i] = part
                term = part if spec.loss_weights[i] == 1.0 else part * spec.loss_weights[i]
                total = term if total is None else total + term
            if penalty is not None:
                total = total + penalty
            res = {f"{prefix}loss": identity(total, name=f"{prefix}loss")}
            if len(names) > 1:
                for i, part in parts.items():
                    k = f"{prefix}{names[i]}_loss"
                    res[k] = identity(part, name=k)
            for i, ms in enumerate(spec.metrics):
                for m in ms:
                    k = prefix + _name(names, i, m.name)
                    res[k] = identity(m(labels[i], outs[i]), name=k)
            for i, ms in enumerate(spec.weighted_metrics):
                for m in ms:
                    k = prefix + _name(names, i, f"weighted_{m.name}")
                    value = m.weighted(labels[i], outs[i], sw) if sw is not None else m(labels[i], outs[i])
                    res[k] = identity(value, name=k)
            return res

        metrics = scalars(train_outs, "")
        val = scalars(infer_outs, "val_")
        if spec.var_list is not None and not spec.var_list:
            raise InvalidArgumentError("compile: every layer is frozen (trainable=False): nothing to train")
        train_op = spec.optimizer.minimize(metrics["loss"], var_list=spec.var_list)
        weight_sum = None
        if sw is not None:
            weight_sum = identity(R.sum(sw), name="weight_sum")
    weighted_names = [k for i, ms in enumerate(spec.weighted_metrics) for k in
                      (_name(names, i, f"weighted_{m.name}") for m in ms)]
    return {"labels": labels, "sample_weight": sw, "train_op": train_op, "metrics": metrics, "val_metrics": val,
            "weight_sum": weight_sum, "weighted_names": weighted_names}
