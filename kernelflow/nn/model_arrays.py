"""What a model does with arrays: checks and converts inputs, labels and sample weights; `predict`, `evaluate`.

A mixin of `kernelflow.nn.models.Model`: it reads the model's ``_tensors`` (input and label
placeholders, the compiled variants) and runs batches through ``graph.make_callable``.

Contents: ArrayMethods.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError, ShapeError
from ..graph.shapes import format_shape
from .layer_base import _flat

__all__ = ["ArrayMethods"]


class ArrayMethods:
    """`predict`, `evaluate` and the checks of the arrays fit/predict/evaluate take."""

    name: str
    graph: Any
    _tensors: dict[str, Any]
    output_names: list[str]

    def _ensure_built(self, x: Any) -> None:  # pragma: no cover - Model defines it
        raise NotImplementedError

    def _require_compiled(self, what: str) -> None:  # pragma: no cover - Model defines it
        raise NotImplementedError

    def _variant(self, weighted: bool) -> dict[str, Any]:  # pragma: no cover - Model defines it
        raise NotImplementedError

    def _input_names(self) -> list[str]:  # pragma: no cover - Model defines it
        raise NotImplementedError

    def _input_list(self, x: Any) -> Any:
        """``x`` as fit/predict/evaluate take it: a dict by input name (Keras' form) becomes a list in input order."""
        if not isinstance(x, dict):
            return x
        names = [p.name for p in self._tensors["inputs"]] if "inputs" in self._tensors else self._input_names()
        unknown = sorted(set(x) - set(names), key=str)
        missing = [n for n in names if n not in x]
        if unknown or missing:
            raise InvalidArgumentError(f"model '{self.name}': inputs by name must give exactly {names}; unknown "
                                       f"{unknown}, missing {missing}")
        return [x[n] for n in names] if len(names) > 1 else x[names[0]]

    def _inputs_feed(self, x: Any) -> list[np.ndarray]:
        arrays = _flat(x)
        phs = self._tensors["inputs"]
        if len(arrays) != len(phs):
            raise InvalidArgumentError(f"model '{self.name}': expected {len(phs)} input array(s) "
                                       f"{[p.name for p in phs]}; got {len(arrays)}")
        out = []
        for a, p in zip(arrays, phs):
            a = np.asarray(a)
            if a.ndim != len(p.shape) or any(d is not None and d != s for d, s in zip(p.shape[1:], a.shape[1:])):
                raise ShapeError(f"model '{self.name}': input '{p.name}' expects shape {format_shape(p.shape)}; got "
                                 f"{format_shape(a.shape)}")
            out.append(a.astype(p.dtype, copy=False))
        return out

    def _label_arrays(self, y: Any, n: int) -> list[np.ndarray]:
        """Labels for each label placeholder (the outputs with a loss), from an array, a list or a dict."""
        labels = self._tensors["labels"]
        names = self.output_names
        if len(names) == 1:
            given = {0: y}
        elif isinstance(y, dict):
            unknown = sorted(set(y) - set(names), key=str)
            if unknown:
                raise InvalidArgumentError(f"model '{self.name}': labels for unknown output(s) {unknown}; outputs: "
                                           f"{names}")
            given = {i: y.get(names[i]) for i in labels}
        elif isinstance(y, (list, tuple)) and len(y) == len(names):
            given = dict(enumerate(y))
        else:
            raise InvalidArgumentError(f"model '{self.name}': give the labels of the outputs {names} as a list in "
                                       "that order or a dict by name")
        out = []
        for i, ph in labels.items():
            if given.get(i) is None:
                raise InvalidArgumentError(f"model '{self.name}': no labels for output '{names[i]}', which has a loss")
            out.append(self._label(given[i], ph, n, names[i]))
        return out

    def _label(self, y: Any, yt: Any, n: int, output: str) -> np.ndarray:
        a = np.asarray(y)
        what = f"labels of output '{output}'" if len(self.output_names) > 1 else "y"
        if a.shape[:1] != (n,):
            raise InvalidArgumentError(f"model '{self.name}': x has {n} rows but {what} has shape "
                                       f"{format_shape(a.shape)}")
        if yt.dtype.startswith("int") and a.dtype.kind == "f":
            if not np.all(a == np.round(a)):
                raise InvalidArgumentError(f"model '{self.name}': the loss expects integer class labels; got "
                                           f"non-integer floats")
        if yt.ndim != a.ndim:
            if a.ndim == yt.ndim + 1 and a.shape[-1] == 1:
                a = a[..., 0]
            elif a.ndim + 1 == yt.ndim and yt.shape[-1] == 1:
                a = a[..., None]
            else:
                raise ShapeError(f"model '{self.name}': {what} for the loss must have shape "
                                 f"{format_shape(yt.shape)}; got {format_shape(a.shape)}")
        return a.astype(yt.dtype, copy=False)

    def _sample_weights(self, sample_weight: Any, n: int) -> np.ndarray:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.ndim == 2 and w.shape[1] == 1:
            w = w[:, 0]
        if w.shape != (n,):
            raise ShapeError(f"model '{self.name}': sample_weight must have shape ({n},), one weight per row; got "
                             f"{format_shape(w.shape)}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise InvalidArgumentError(f"model '{self.name}': sample_weight must be finite and >= 0")
        return w

    def predict(self, x: Any, batch_size: int = 256, verbose: Any = 0) -> Any:
        """Outputs of the inference pass for ``x`` (an array, a list or a dict by input name), in batches of
        ``batch_size`` rows run on the runtime; a list of arrays for several outputs."""
        x = self._input_list(x)
        self._ensure_built(x)
        feeds = self._inputs_feed(x)
        n = feeds[0].shape[0]
        outs = self._tensors["outputs"]
        step = self.graph.make_callable(outs, feed_list=self._tensors["inputs"])
        parts: list[list[np.ndarray]] = [[] for _ in outs]
        for lo in range(0, max(n, 1), batch_size):
            vals = step(*[f[lo:lo + batch_size] for f in feeds])
            for p, v in zip(parts, vals):
                p.append(np.asarray(v))
        res = [np.concatenate(p) for p in parts]
        return res if len(res) > 1 else res[0]

    def evaluate(self, x: Any, y: Any, batch_size: int = 256, verbose: Any = 0, sample_weight: Any = None,
                 return_dict: bool = False) -> Any:
        """Loss and metrics of the inference pass over ``(x, y)``.

        Args:
            x: an array, a list of them (one per input) or a dict by input name.
            y: labels; with several outputs a list in output order or a dict by output name.
            batch_size: rows per run.
            verbose: ignored (Keras' argument).
            sample_weight: (rows,) weights: the losses become ``sum(l * w) / rows`` and the
                ``weighted_metrics`` ``sum(v * w) / sum(w)``, as Keras computes them.
            return_dict: return ``{name: value}``.

        Returns:
            The loss (a float) when it is the only value, else ``[loss, *per-output losses,
            *metrics]`` (Keras' order); with ``return_dict``, ``{"loss": ..., "accuracy": ...}``.
        """
        self._require_compiled("evaluate")
        x = self._input_list(x)
        self._ensure_built(x)
        feeds = self._inputs_feed(x)
        n = feeds[0].shape[0]
        labels = self._label_arrays(y, n)
        weighted = sample_weight is not None
        t = self._variant(weighted)
        val = t["val_metrics"]
        names = [k[4:] for k in val]
        fetch = list(val.values())
        feed_list = [*self._tensors["inputs"], *t["labels"].values()]
        arrays = [*feeds, *labels]
        if weighted:
            fetch.append(t["weight_sum"])
            feed_list.append(t["sample_weight"])
            arrays.append(self._sample_weights(sample_weight, n).astype(t["sample_weight"].dtype))
        by_weight = np.array([k in t["weighted_names"] and weighted for k in names])
        step = self.graph.make_callable(fetch, feed_list=feed_list)
        sums = np.zeros(len(names))
        rows = wsum = 0.0
        for lo in range(0, n, batch_size):
            vals = [float(v) for v in step(*[a[lo:lo + batch_size] for a in arrays])]
            m = min(batch_size, n - lo)
            w = vals.pop() if weighted else float(m)
            sums += np.array(vals) * np.where(by_weight, w, m)
            rows, wsum = rows + m, wsum + w
        res = dict(zip(names, (float(v) for v in sums / np.where(by_weight, wsum or 1.0, rows or 1.0))))
        if return_dict:
            return res
        return res["loss"] if len(res) == 1 else list(res.values())
