"""`Sequential`: a linear stack of layers, a `kernelflow.nn.models.Model`.

Contents: Sequential.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..graph.ir import Tensor
from .layer_base import Layer, SymbolicTensor
from .models import Model

__all__ = ["Sequential"]


class Sequential(Model):
    """A linear stack of layers: ``kf.Sequential([kf.nn.Dense(64, activation="relu"), ...])``.

    The input shape comes from a leading ``kf.Input(shape)``, from the first layer's
    ``input_shape=``, or from the first array given to fit/predict.

    Args:
        layers: the layers (optionally led by a ``kf.Input``).
        name: as `Model`.
        rt: the runtime (default ``kf.connect()``).
        seed: as `Model`.

    Example:
        >>> model = kf.Sequential([kf.Input((64,)), kf.nn.Dense(32, activation="relu"),
        ...                        kf.nn.Dense(10, activation="softmax")], rt=kf.connect("inproc"))
    """

    _kind = "sequential"

    def __init__(self, layers: Sequence[Any] | None = None, name: str | None = None, rt: Any = None, seed: int = 0):
        super().__init__(name=name, rt=rt, seed=seed)
        self._layers = []
        self._input_spec: tuple[tuple, str] | None = None
        self._multi_out = False
        for layer in layers or []:
            self.add(layer)

    def add(self, layer: Any) -> None:
        """Append a layer (or, first, a ``kf.Input``)."""
        if self.built:
            raise FailedPreconditionError(f"Sequential '{self.name}': add layers before the model is built")
        if isinstance(layer, SymbolicTensor):
            if self._layers or self._input_spec is not None:
                raise InvalidArgumentError("Sequential: a kf.Input may only come first")
            self._input_spec = (layer.shape[1:], layer.dtype)
            return
        if isinstance(layer, Model):
            layer = layer.as_layer()
            spec = layer.model._input_spec_for_nesting()
            if not self._layers and self._input_spec is None and spec is not None:
                self._input_spec = (tuple(spec[0]), spec[1])
        if not isinstance(layer, Layer):
            raise InvalidArgumentError(f"Sequential: expected a kf.nn layer or a model; got {type(layer).__name__}")
        if not self._layers and self._input_spec is None and layer.input_shape is not None:
            self._input_spec = (tuple(layer.input_shape), layer.dtype or "float32")
        self._layers.append(layer)

    def _ensure_built_spec(self) -> None:
        if not self.built and self._input_spec is not None and self._layers:
            self._build([self._input_spec])

    def _input_names(self) -> list[str]:
        return ["x"]

    def _n_inputs(self) -> int | None:
        return 1

    def _input_spec_for_nesting(self) -> tuple[tuple, str] | None:
        return self._input_spec

    @property
    def output_names(self) -> list[str]:
        """The one output's name: the last layer's."""
        if self._loaded is not None or not self._layers:
            return super().output_names if self._loaded is not None else ["output"]
        return [self._layers[-1].name]

    def _forward(self, inputs: list[Tensor], training: bool) -> list[Tensor]:
        h = inputs[0]
        for layer in self._layers:
            h = layer(h, training=training)
        return [h]

    def compile(self, *args: Any, **kwargs: Any) -> None:
        super().compile(*args, **kwargs)
        self._ensure_built_spec()
        if self.built and not self.compiled:
            self._compile_graph()

    def build(self, input_shape: Sequence[int | None], dtype: str = "float32") -> None:
        """Build for inputs of ``input_shape`` (with or without the leading batch dim None)."""
        shape = tuple(input_shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        self._input_spec = (shape, dtype)
        self._ensure_built_spec()
        if self._compiled is not None and not self.compiled:
            self._compile_graph()

    def summary(self, print_fn: Callable[[str], Any] | None = print) -> str:
        self._ensure_built_spec()
        return super().summary(print_fn)
