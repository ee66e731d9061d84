"""Exported models: the on-disk format, loading, a registry of versions, predict, and the model.* RPC methods.

A model directory (``<base>/<name>/<version>/``) holds::

    graph.msgpack          the inference subgraph's node dicts (kernelflow's codec); variable
                           nodes carry no ``initial`` attr: their values are in variables.safetensors
    variables.safetensors  the values of the variables the subgraph reads
    signature.json         {"signature_name", "method_name", "inputs", "outputs"}; each input and
                           output is {"name": node, "dtype": numpy name, "shape": [int or null]}
    MODEL_COMPLETE         written last: a version without it is never loaded

Versions are increasing integers. A version is written into a hidden temp dir and renamed
into place, so a reader sees it whole or not at all. Nothing read from a model dir is
unpickled or evaluated.

Export binds training-mode switches to inference (`kernelflow.graph.inference`, shared with
the ONNX exporter): a bool scalar training-flag placeholder becomes the constant False and a
``where`` on it keeps only its inference branch; a random op left on the path is
InvalidArgumentError naming it.

Contents: export_model, read_model_dir, LoadedModel, register (the version manager is in
model_manager.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file, save_file

from ...errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError
from ...graph.inference import inference_nodes
from ...graph.ir import Tensor, node_to_dict
from ...graph.ops.state import variable_op
from ...graph.shapes import format_shape
from ...protocol.codec import decode, encode
from ..engine.devices import DeviceManager
from ..engine.session import GraphSession

if TYPE_CHECKING:
    from .manager import ModelManager

log = logging.getLogger("kernelflow.models")

MARKER = "MODEL_COMPLETE"
SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
FORMAT = "kernelflow-model-1"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,127}")


def check_model_name(name: Any) -> str:
    """``name`` if it is a safe model name (no path characters), else InvalidArgumentError."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidArgumentError(f"model name must match [A-Za-z0-9][A-Za-z0-9_.-]* (no '/', no '..'); "
                                   f"got {name!r}")
    return name


def _versions_on_disk(model_dir: Path) -> list[int]:
    """Complete versions (those with the marker), ascending."""
    out = []
    try:
        entries = list(os.scandir(model_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for e in entries:
        if e.name.isdigit() and e.is_dir() and (Path(e.path) / MARKER).is_file():
            out.append(int(e.name))
    return sorted(out)


def _all_version_numbers(model_dir: Path) -> list[int]:
    try:
        return sorted(int(e.name) for e in os.scandir(model_dir) if e.name.isdigit())
    except FileNotFoundError:
        return []


# ----------------------------------------------------------------- export
def _tensor_spec(t: Tensor) -> dict:
    return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}


def export_model(session: GraphSession, base: Path, name: str, inputs: dict, outputs: dict,
                 version: int | None = None) -> dict:
    """Write the inference subgraph of ``session`` from ``inputs`` to ``outputs`` as a model version.

    Args:
        session: the graph's session.
        base: the model base path (``<state dir>/models``).
        name: the model's name.
        inputs: {signature input name: node name}.
        outputs: {signature output name: node name}.
        version: the version number (None: one more than the highest there).

    Returns:
        ``{"name", "version", "path", "signature"}``.

    Raises:
        InvalidArgumentError: a bad name, an unknown node, a placeholder the outputs need that
            is not among the inputs, or a node that updates a variable.
        AlreadyExistsError: ``version`` exists already.
    """
    check_model_name(name)
    for what, m in (("inputs", inputs), ("outputs", outputs)):
        if not isinstance(m, dict) or not m:
            raise InvalidArgumentError(f"model.export: {what} must be a non-empty map of name -> node")
        for k, v in m.items():
            if not isinstance(k, str) or not _KEY_RE.fullmatch(k):
                raise InvalidArgumentError(f"model.export: {what} key {k!r} must match [A-Za-z_][A-Za-z0-9_.-]*")
            if not isinstance(v, str) or v not in session.graph:
                raise InvalidArgumentError(f"model.export: {what}['{k}'] = {v!r} is not a node of graph "
                                           f"'{session.name}'")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise InvalidArgumentError(f"model.export: version must be a positive integer; got {version!r}")
    with session.lock:
        g = session.graph
        in_nodes = {k: g[v] for k, v in inputs.items()}
        out_nodes = {k: g[v] for k, v in outputs.items()}
        dicts, var_names, bound = [], [], {}
        for item in inference_nodes(list(out_nodes.values()), list(in_nodes.values()), "model.export"):
            n = item.node
            if item.role == "input":
                # An input that is not a placeholder (e.g. a hidden layer) becomes one.
                dicts.append({"name": n.name, "op": "placeholder", "inputs": [],
                              "attrs": {"shape": list(n.shape), "dtype": n.dtype}})
            elif item.role == "fold":  # where(training, train_branch, inference_branch) -> the inference branch
                assert item.branch is not None
                dicts.append({"name": n.name, "op": "identity", "inputs": [item.branch.name], "attrs": {}})
                bound[n.inputs[0].name] = False
            elif item.role == "flag":
                # A training-mode switch (dropout, batch norm): served models run in inference mode.
                dicts.append({"name": n.name, "op": "constant", "inputs": [], "attrs": {"value": np.array(False)}})
                bound[n.name] = False
            else:
                d = node_to_dict(n)
                d.pop("control_inputs", None)
                d.pop("device", None)
                if n.op is variable_op:
                    d["attrs"] = {k: v for k, v in d["attrs"].items() if k != "initial"}
                    var_names.append(n.name)
                dicts.append(d)
        values = session.snapshot_variables()
        arrays = {v: np.ascontiguousarray(values[v]) for v in var_names}
    signature = {"signature_name": SIGNATURE_NAME, "method_name": PREDICT_METHOD, "format": FORMAT,
                 "graph": session.name,
                 "inputs": {k: _tensor_spec(t) for k, t in in_nodes.items()},
                 "outputs": {k: _tensor_spec(t) for k, t in out_nodes.items()}}
    if bound:
        signature["bound"] = bound  # placeholders fixed at export (training flags -> False)
    return _write_version(base, name, version, dicts, arrays, signature)


_export_lock = threading.Lock()


def _write_version(base: Path, name: str, version: int | None, dicts: list, arrays: dict, signature: dict) -> dict:
    model_dir = base / name
    model_dir.mkdir(parents=True, exist_ok=True)
    with _export_lock:
        existing = _all_version_numbers(model_dir)
        if version is None:
            version = (existing[-1] + 1) if existing else 1
        elif version in existing:
            raise AlreadyExistsError(f"model.export: model '{name}' has a version {version} already; "
                                     f"versions: {existing}")
        tmp = model_dir / f".tmp-{version}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            with open(tmp / "graph.msgpack", "wb") as f:
                for fr in encode({"format": FORMAT, "nodes": dicts}):
                    f.write(fr)
            save_file(arrays, str(tmp / "variables.safetensors"), metadata={"format": FORMAT})
            (tmp / "signature.json").write_text(json.dumps(signature, indent=1))
            for p in tmp.iterdir():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
            (tmp / MARKER).write_text(f"{FORMAT}\n")
            os.replace(tmp, model_dir / str(version))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("exported model '%s' version %d (%d nodes, %d variables)", name, version, len(dicts), len(arrays))
    return {"name": name, "version": version, "path": str(model_dir / str(version)), "signature": signature}


# ----------------------------------------------------------------- loading and predict
def read_model_dir(path: Path) -> tuple[list[dict], dict]:
    """The node dicts (variables' ``initial`` filled in) and signature of a model version dir.

    Raises:
        NotFoundError: not a complete model version.
        FailedPreconditionError: damaged files.
    """
    if not (path / MARKER).is_file():
        raise NotFoundError(f"{path} is not a complete kernelflow model version (no {MARKER})")
    try:
        signature = json.loads((path / "signature.json").read_text())
        body = decode((path / "graph.msgpack").read_bytes())
        arrays = load_file(str(path / "variables.safetensors"))
        dicts = body["nodes"]
        for d in dicts:
            if d.get("op") == "variable":
                d["attrs"] = {**(d.get("attrs") or {}), "initial": arrays[d["name"]]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FailedPreconditionError(f"model at {path} is damaged: {e}") from e
    return dicts, signature


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


# ----------------------------------------------------------------- RPC methods
class ModelMethods:
    """The ``model.*`` RPC methods: export a graph's inference subgraph, then serve it through ``manager``."""

    def __init__(self, session: Callable[[str], GraphSession], manager: ModelManager):
        self.session = session
        self.manager = manager

    def export(self, graph: str, name: str, inputs: dict, outputs: dict, version: int | None = None) -> dict:
        """Export a new version of model ``name``; it answers requests when this returns."""
        mgr = self.manager
        base_path = mgr.require_base("model.export")
        out = export_model(self.session(graph), base_path, name, inputs, outputs, version)
        mgr.poll(only=name, wait=True)  # served by the next request, not after the next watcher poll
        return out

    def list(self) -> list[dict]:
        """Every model and its versions' states."""
        return self.manager.list()

    def predict(self, name: str, version: int | None, inputs: dict, output_keys: list | None = None) -> dict:
        """Run a served version on ``inputs``."""
        return self.manager.predict(name, version, inputs, output_keys)

    def status(self, name: str, version: int | None = None) -> dict:
        """A version's state and signature."""
        mgr = self.manager
        with mgr.use(name, version) as sv:
            return {**mgr.status(name, version), "name": name, "version": sv.version,
                    "signature": mgr.loaded(sv)[0].signature}
