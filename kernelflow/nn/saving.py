"""Loading a saved model: `load` rebuilds a model object from the description ``model.save()``
keeps in its graph.

Contents: load.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, NotFoundError
from . import models as _models
from .models import CONFIG_NODE, Model

__all__ = ["load"]


class _LoadedModel(Model):
    """A model rebuilt from its graph's description (`load`)."""

    def __init__(self, g: Any, cfg: dict):
        super().__init__(name=cfg["name"], rt=g.runtime)
        self.graph, self._loaded, self._layers = g, cfg, []
        self._tensors = {"inputs": [g[n] for n in cfg["inputs"]], "outputs": [g[n] for n in cfg["outputs"]]}
        c = cfg.get("compiled")
        if c:
            self._tensors.update(_variant(g, c))
            self._tensors["y"] = next(iter(self._tensors["labels"].values()))
            if c.get("weighted"):
                self._tensors["weighted"] = _variant(g, c["weighted"], self._tensors["labels"])
            self._lr_var = g[c["learning_rate"]] if c.get("learning_rate") else None
            self._compiled = {"loaded": True}


def _variant(g: Any, c: dict, labels: dict | None = None) -> dict:
    """One compiled variant's tensors from their saved node names (format 1 saved a single label ``y``)."""
    if labels is None:
        labels = {int(i): g[n] for i, n in c["labels"].items()} if "labels" in c else {0: g[c["y"]]}
    return {"labels": labels, "train_op": g[c["train_op"]], "metrics": {k: g[v] for k, v in c["metrics"].items()},
            "val_metrics": {k: g[v] for k, v in c["val_metrics"].items()},
            "sample_weight": g[c["sample_weight"]] if c.get("sample_weight") else None,
            "weight_sum": g[c["weight_sum"]] if c.get("weight_sum") else None,
            "weighted_names": list(c.get("weighted_names", []))}


def load(name: str, rt: Any = None) -> Model:
    """The model saved (``model.save()``) in graph ``name`` of runtime ``rt``.

    The loaded model predicts, evaluates, exports and trains further (with the compile it
    was saved with); its layers are described (summary, weights by name), not rebuilt.

    Raises:
        NotFoundError: no such graph, or a graph without a saved model description.
    """
    if rt is None:
        if _models._RUNTIME_FACTORY is None:
            raise FailedPreconditionError("load: pass rt=kf.connect(...)")
        rt = _models._RUNTIME_FACTORY()
    if name not in rt.graphs():
        raise NotFoundError(f"load: runtime {rt.url} has no graph '{name}'; graphs: {rt.graphs()}")
    g = rt.graph(name)
    blobs = [n for n in g.nodes() if n.name.startswith(CONFIG_NODE)]
    if not blobs:
        raise NotFoundError(f"load: graph '{name}' holds no saved model (model.save() writes one)")
    cfg = json.loads(bytes(np.asarray(blobs[-1].attrs["value"], np.uint8)).decode())
    return _LoadedModel(g, cfg)

