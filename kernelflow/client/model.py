"""Exported models from the client: `export` (behind ``g.export``), `ModelHandle` (``rt.model(name)``)
and `load_model` (``kf.load_model(path)``: a model directory run by any runtime).

Contents: export, ModelHandle, list_models, load_model, LocalModel.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError, KernelflowError, NotFoundError
from ..graph.ir import Tensor
from ..protocol.model_dir import MARKER, read_model_dir, versions_on_disk

if TYPE_CHECKING:
    from .graph import RemoteGraph
    from .runtime import Runtime


def _node_names(graph: RemoteGraph, m: Any, what: str) -> dict[str, str]:
    if not isinstance(m, dict) or not m:
        raise InvalidArgumentError(f"export: {what} must be a non-empty dict of name -> tensor")
    out = {}
    for k, t in m.items():
        if isinstance(t, str):
            t = graph[t]
        if not isinstance(t, Tensor) or t.graph is not graph:
            raise InvalidArgumentError(f"export: {what}['{k}'] must be a tensor of graph '{graph.name}'")
        out[str(k)] = t.name
    return out


def export(graph: RemoteGraph, name: str, inputs: dict, outputs: dict, version: int | None = None) -> int:
    """Export the inference subgraph from ``inputs`` to ``outputs`` as a new version of model ``name``.

    The runtime writes ``<state dir>/models/<name>/<version>/``: the nodes the outputs need
    (pruned at the inputs; control dependencies, optimiser slots and assign ops left out),
    the current values of the variables they read, and the signature.

    Args:
        graph: the graph.
        name: the model's name (letters, digits, ``_.-``).
        inputs: {signature name: tensor}, e.g. ``{"image": x}``.
        outputs: {signature name: tensor}, e.g. ``{"probabilities": p, "class": c}``.
        version: the version number (None: one more than the highest).

    Returns:
        The version written.

    Raises:
        InvalidArgumentError: naming a placeholder the outputs need that is not among ``inputs``.
        FailedPreconditionError: the runtime has no state dir.
    """
    ins, outs = _node_names(graph, inputs, "inputs"), _node_names(graph, outputs, "outputs")
    graph.sync()
    r = graph.runtime.call("model.export", [graph.name, name, ins, outs, version])
    return int(r["version"])


class ModelHandle:
    """A model served by a runtime. Made by ``rt.model(name)``.

    Args:
        runtime: the runtime.
        name: the model's name.
        version: a fixed version, or None for the latest.
    """

    def __init__(self, runtime: Runtime, name: str, version: int | None = None):
        self.runtime, self.name, self.version = runtime, name, version

    def __repr__(self) -> str:
        return f"<kf.Model '{self.name}' version={self.version or 'latest'} runtime={self.runtime.url}>"

    def predict(self, inputs: dict[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model: ``inputs`` {input name: array} -> {output name: array}.

        Example:
            >>> rt.model("digits").predict({"image": batch})["class"]
        """
        feed = {k: np.asarray(v) for k, v in inputs.items()}
        return self.runtime.call("model.predict", [self.name, self.version, feed, outputs])

    @property
    def rest_url(self) -> str | None:
        """The model's REST URL (TensorFlow Serving's API): ``<runtime REST>/v1/models/NAME``
        (``/versions/N`` when the handle names a version); POST to ``rest_url + ":predict"``.
        None when the runtime serves no REST."""
        base = self.runtime.rest_url
        if base is None:
            return None
        return f"{base}/v1/models/{self.name}" + (f"/versions/{self.version}" if self.version else "")

    def status(self) -> dict:
        """Versions and their states (TF Serving's fields), the served version and its signature."""
        return self.runtime.call("model.status", [self.name, self.version])


def list_models(runtime: Runtime) -> list[dict]:
    """Every model the runtime serves: ``[{"name", "model_version_status": [...]}]``."""
    return runtime.call("model.list", [])


class LocalModel:
    """A model directory loaded into a runtime's graph (see `load_model`); ``path`` is what was
    loaded: the version directory, or the ``.tar.gz`` it came in."""

    def __init__(self, graph: RemoteGraph, signature: dict, path: Path):
        self.graph, self.signature, self.path = graph, signature, path
        self.inputs: dict[str, dict] = signature["inputs"]
        self.outputs: dict[str, dict] = signature["outputs"]

    def __repr__(self) -> str:
        return f"<kf.LocalModel {self.path} inputs={sorted(self.inputs)} outputs={sorted(self.outputs)}>"

    def predict(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the model: ``inputs`` {input name: array} -> {output name: array}."""
        if set(inputs) != set(self.inputs):
            raise InvalidArgumentError(f"predict: the model takes inputs {sorted(self.inputs)}; got {sorted(inputs)}")
        feed = {self.graph[self.inputs[k]["name"]]: v for k, v in inputs.items()}
        return self.graph.run({k: self.graph[s["name"]] for k, s in self.outputs.items()}, feed=feed)


def _load_archive(path: Path, runtime: Runtime | None) -> LocalModel:
    """A ``.tar.gz`` written by ``kernelflow export-model``: ``<name>/<version>/`` files."""
    import platform
    import tarfile
    import tempfile

    if not hasattr(tarfile, "data_filter"):  # the "data" extraction filter came in 3.10.12 / 3.11.4 / 3.12
        raise FailedPreconditionError(
            f"load_model: unpacking {path} safely needs tarfile's 'data' filter, which needs Python >= 3.10.12 "
            f"(3.10.x), >= 3.11.4 (3.11.x) or >= 3.12; this is Python {platform.python_version()}. Upgrade "
            "Python, or unpack the archive yourself and load its <name>/<version> directory")
    with tempfile.TemporaryDirectory(prefix="kf-model-") as tmp:
        try:
            with tarfile.open(path, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..' and links out of tmp
        except (OSError, tarfile.TarError) as e:
            raise FailedPreconditionError(f"load_model: {path} is not a readable model archive: {e}") from e
        names = [d for d in Path(tmp).iterdir() if d.is_dir()]
        if len(names) != 1:
            raise NotFoundError(f"load_model: {path} must hold one <name>/<version>/ model dir; got "
                                f"{sorted(d.name for d in names)}")
        model = load_model(names[0], runtime)  # reads every file into memory: tmp can go
    model.path = path  # not the temp dir, which is gone now
    return model


def load_model(path: str | Path, runtime: Runtime | None = None) -> LocalModel:
    """Load a model version directory (``.../<name>/<version>``, or ``.../<name>`` for its latest),
    or a ``.tar.gz`` made by ``kernelflow export-model``.

    It needs nothing but the directory: the subgraph becomes a new graph of ``runtime``
    (default: an in-process one) named ``<name>@<version>``, replacing one of that name.

    Raises:
        NotFoundError: no complete model version there.
        FailedPreconditionError: damaged files.
    """
    from .runtime import connect  # lazily: runtime imports this module

    p = Path(path)
    if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
        return _load_archive(p, runtime)
    if not (p / MARKER).is_file():
        versions = versions_on_disk(p)
        if not versions:
            raise NotFoundError(f"load_model: {p} holds no complete model version (no {MARKER})")
        p = p / str(versions[-1])
    try:
        dicts, signature = read_model_dir(p)
    except KernelflowError as e:
        raise type(e)(f"load_model: {e.message}") from e
    rt = runtime if runtime is not None else connect("inproc")
    gname = f"{p.parent.name}@{p.name}"
    if gname in rt.graphs():
        rt.delete_graph(gname)
    g = rt.graph(gname)
    g.extend_from_dicts(dicts)
    g.sync()
    return LocalModel(g, signature, p)
