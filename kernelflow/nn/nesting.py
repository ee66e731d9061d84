"""A model used as a layer of another model: `ModelLayer` (``kf.Sequential([encoder, ...])``, ``encoder(x)``).

Calling a model on tensors (``encoder(x)``), or putting it in a `Sequential`, wraps it in a
`ModelLayer`: its layers run in the caller's graph under the name scope ``<model name>/``
(``encoder/dense/kernel``), as one row of the outer summary. A model lives on a runtime in
its own graph and a graph's variables are its own, so the outer model gets its own copy of
the inner model's variables, initialised with the inner model's current weights when the
outer model is built (a pretrained base brings its weights). Training the outer model changes
that copy, not the inner model's graph: ``outer.get_layer("encoder").get_weights()`` reads
the trained values and ``encoder.set_weights(...)`` copies them back.

``inner.trainable = False`` before the outer model is built freezes the copy (its variables are
not trainable), and its batch-norm layers normalise with their moving statistics in training
too, as Keras 3 does for frozen batch norms.

Contents: ModelLayer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.ir import Graph, Variable
from .layer_base import Layer, _flat

__all__ = ["ModelLayer"]


class ModelLayer(Layer):
    """A `kernelflow.nn.models.Model` called as a layer; made by ``model(x)`` or `Sequential` (see the module).

    Args:
        model: the inner model.
    """

    def __init__(self, model: Any):
        self.model = model
        spec = model._input_spec_for_nesting()
        super().__init__(name=model.name, trainable=model.trainable,
                         input_shape=spec[0] if spec is not None else None, dtype=None)

    @property  # type: ignore[override]
    def trainable(self) -> bool:
        return bool(self.model.trainable)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self.model.trainable = bool(value)

    @property  # type: ignore[override]
    def uses_training(self) -> bool:
        return any(getattr(layer, "uses_training", False) for layer in self.model._layers)

    @property
    def class_name(self) -> str:
        """The summary's type column: Keras' names ("Functional" for ``kf.Model(inputs, outputs)``)."""
        return "Functional" if type(self.model).__name__ == "Model" else type(self.model).__name__

    @property
    def layers(self) -> list[Layer]:
        """The inner model's layers."""
        return list(self.model._layers)

    def call(self, inputs: Any, training: Any) -> Any:
        m = self.model
        flat = _flat(inputs)
        want = m._n_inputs()
        if want is not None and len(flat) != want:
            raise InvalidArgumentError(f"layer '{self.name}' (model): expected {want} input(s); got {len(flat)}")
        frozen = not self.trainable
        saved = [(layer, layer.trainable) for layer in m._layers]
        if frozen:  # the variables made now are not trainable; the inner model's own layers are left as they were
            for layer, _ in saved:
                layer.trainable = False
        try:
            outs = m._forward(flat, training)
        finally:
            for layer, was in saved:
                layer.trainable = was
        return outs if m._multi_out else outs[0]

    def variables(self, graph: Graph | None = None) -> list[Variable]:
        """The inner layers' variables in ``graph`` (default: the graph of the last call), layer by layer."""
        g = graph if graph is not None else getattr(self, "_graph", None)
        return [v for layer in self.model._layers for v in layer.variables(g)] if g is not None else []

    def copy_inner_weights(self, graph: Any) -> None:
        """Write the inner model's current weights into this layer's variables of ``graph`` (a model's graph)."""
        m = self.model
        if m.graph is None or m._loaded is not None:
            return
        mine = self.variables(graph)
        theirs = m._variables()
        if len(mine) != len(theirs):  # pragma: no cover - both walk the same layers
            raise InvalidArgumentError(f"layer '{self.name}': {len(mine)} variables here, {len(theirs)} in the model")
        if theirs:
            for v, value in zip(mine, m.graph.run(theirs)):  # one run fetches them all
                graph.write_variable(v, np.asarray(value, v.dtype))

    def get_config(self) -> dict:
        raise InvalidArgumentError(f"layer '{self.name}' wraps model '{self.model.name}', which lives on a runtime: "
                                   "it has no config to copy or pickle; build the model again instead")

    def __repr__(self) -> str:
        return f"<kf.nn.ModelLayer '{self.name}' ({self.class_name})>"

