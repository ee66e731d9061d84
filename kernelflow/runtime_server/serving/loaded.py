"""A loaded model version: its own graph session, input checks, predict and warm-up.

Contents: LoadedModel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, UnavailableError
from ...graph.shapes import format_shape
from ...protocol.model_dir import read_model_dir
from ..engine.devices import DeviceManager
from ..engine.session import GraphSession


class LoadedModel:
    """One loaded model version: its own graph session, runnable without any other state.

    Args:
        name: the model's name.
        version: its version number.
        path: the version's directory.
        devices: the device manager to place its nodes with.
    """

    def __init__(self, name: str, version: int, path: Path, devices: DeviceManager):
        self.name, self.version, self.path = name, version, path
        dicts, self.signature = read_model_dir(path)
        self.session: GraphSession | None = GraphSession(f"model:{name}:{version}", devices)
        self.session.extend(dicts, 0)
        self.inputs: dict[str, dict] = self.signature["inputs"]
        self.outputs: dict[str, dict] = self.signature["outputs"]

    @property
    def batchable(self) -> bool:
        """Whether requests can be stacked along axis 0: every input and output is batch-major
        (leading dim None) and inputs have no other unknown dim (rows of requests must fit)."""
        ins = [s.get("shape") for s in self.inputs.values()]
        outs = [s.get("shape") for s in self.outputs.values()]
        return (all(sh and sh[0] is None and None not in sh[1:] for sh in ins)
                and all(sh and sh[0] is None for sh in outs))

    def check_inputs(self, inputs: Any) -> dict[str, np.ndarray]:
        """``inputs`` as arrays of the signature's dtypes and shapes, in signature order.

        Raises:
            InvalidArgumentError: not a map, missing or unknown input names, wrong dtype or shape.
        """
        if not isinstance(inputs, dict):
            raise InvalidArgumentError(f"predict: inputs must be a map of input name -> array; "
                                       f"got {type(inputs).__name__}")
        unknown = sorted(set(inputs) - set(self.inputs))
        missing = sorted(set(self.inputs) - set(inputs))
        if unknown or missing:
            raise InvalidArgumentError(f"predict: model '{self.name}' takes inputs {sorted(self.inputs)}; "
                                       f"unknown: {unknown}, missing: {missing}")
        out = {}
        for k, spec in self.inputs.items():
            v = inputs[k]
            arr = v if isinstance(v, np.ndarray) else np.asarray(v)
            if arr.dtype.name != spec["dtype"]:
                raise InvalidArgumentError(f"predict: input '{k}' of model '{self.name}' must be {spec['dtype']}; "
                                           f"got {arr.dtype.name} (shape {format_shape(arr.shape)})")
            shape = spec.get("shape")
            if shape is not None and (arr.ndim != len(shape)
                                      or any(d is not None and d != a for d, a in zip(shape, arr.shape))):
                raise InvalidArgumentError(f"predict: input '{k}' of model '{self.name}' must have shape "
                                           f"{format_shape(tuple(shape))}; got {format_shape(arr.shape)}")
            out[k] = arr
        return out

    def check_output_keys(self, output_keys: list[str] | None) -> list[str]:
        keys = list(self.outputs) if output_keys is None else list(output_keys)
        for k in keys:
            if k not in self.outputs:
                raise InvalidArgumentError(f"predict: model '{self.name}' has no output '{k}'; "
                                           f"outputs: {sorted(self.outputs)}")
        return keys

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output for checked ``inputs`` (see `check_inputs`); runs are serialised by the session lock."""
        session = self.session
        if session is None:  # a served version unloaded under a request that outlived the unload's wait
            raise UnavailableError(f"model '{self.name}' version {self.version} was unloaded; retry")
        vals = session.run([s["name"] for s in self.outputs.values()],
                           [self.inputs[k]["name"] for k in self.inputs], [inputs[k] for k in self.inputs])
        return dict(zip(self.outputs, vals))

    def warm_up(self) -> None:
        """One run on zeros of the signature's shapes (unknown dims 1), so the first request pays no
        plan-building or allocation cost."""
        self.run({k: np.zeros(tuple(1 if d is None else d for d in (s.get("shape") or ())), s["dtype"])
                  for k, s in self.inputs.items()})

    def predict(self, inputs: dict[str, Any], output_keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model on ``inputs`` ({input name: array}); returns {output name: array}.

        Raises:
            InvalidArgumentError: missing or unknown input names, wrong dtype or shape.
        """
        arrays = self.check_inputs(inputs)
        keys = self.check_output_keys(output_keys)
        out = self.run(arrays)
        return {k: out[k] for k in keys}

    def release(self) -> None:
        """Drop the session (its variables and cached plans) so the memory can be freed."""
        self.session = None
