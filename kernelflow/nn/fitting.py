"""``model.fit``: upload the data as resident datasets and train in a job on the runtime.

Contents: fit, in_notebook.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError, error_class
from .callbacks import Callback, History, epoch_logs
from .layer_base import _flat

__all__ = ["fit", "in_notebook"]

_ENDED = ("completed", "stopped", "failed", "interrupted")


def in_notebook() -> bool:
    """True inside a running IPython kernel (a notebook), where fit returns at once by default."""
    mod = sys.modules.get("ipykernel.kernelbase")
    if mod is None:
        return False
    try:
        return bool(mod.Kernel.initialized())
    except Exception:  # noqa: BLE001 - an odd ipykernel: treat as a terminal
        return False


def _is_dataset(x: Any) -> bool:
    return hasattr(x, "arrays") and hasattr(x, "split") and hasattr(x, "runtime")


def _label_columns(model: Any) -> list[str]:
    labels = model._tensors["labels"]
    return ["y"] if len(labels) == 1 else [f"y{i}" for i in labels]


def _feed(model: Any, weighted: bool, columns: dict[str, str] | None = None) -> dict:
    """{placeholder: dataset array name}: inputs ``x0``..., labels ``y`` (``y<i>`` per output), ``sample_weight``."""
    cols = columns or {}
    t = model._tensors
    feed = {p: cols.get(f"x{i}", cols.get("x", "x0")) if i == 0 else cols.get(f"x{i}", f"x{i}")
            for i, p in enumerate(t["inputs"])}
    names = model.output_names
    for (i, p), col in zip(t["labels"].items(), _label_columns(model)):
        feed[p] = cols.get(col, cols.get(names[i], col) if len(names) > 1 else col)
    if weighted:
        feed[model._variant(True)["sample_weight"]] = cols.get("sample_weight", "sample_weight")
    return feed


def _upload(model: Any, what: str, x: Any, y: Any, sw: np.ndarray | None) -> tuple[Any, dict, int]:
    """A dataset on the model's runtime holding ``x``, ``y`` (and weights); returns (dataset, feed, rows)."""
    feeds = model._inputs_feed(x)
    n = feeds[0].shape[0]
    arrays = {f"x{i}": a for i, a in enumerate(feeds)}
    arrays.update(zip(_label_columns(model), model._label_arrays(y, n)))
    if sw is not None:
        arrays["sample_weight"] = sw.astype(model._variant(True)["sample_weight"].dtype)
    name = f"{model.graph.name}.{what}"
    ds = model.graph.runtime.dataset(name, arrays, overwrite=True)
    model._datasets[what] = ds
    return ds, _feed(model, sw is not None), n


def class_weights(y: np.ndarray, class_weight: dict) -> np.ndarray:
    """Keras' per-row weights of ``class_weight`` ({class index: weight}; missing classes weigh 1).

    The class of a row is its integer label, or the argmax of a one-hot / probability row.
    """
    try:
        table = {int(k): float(v) for k, v in class_weight.items()}
    except (AttributeError, TypeError, ValueError) as e:
        raise InvalidArgumentError(f"fit: class_weight must map class indices to numbers; got {class_weight!r}") from e
    a = np.asarray(y)
    cls = a.argmax(-1) if a.ndim > 1 and a.shape[-1] > 1 else np.round(a.reshape(len(a), -1)[:, 0]).astype(np.int64)
    return np.array([table.get(int(c), 1.0) for c in cls], np.float64)


def fit(model: Any, x: Any = None, y: Any = None, batch_size: int = 32, epochs: int = 1, verbose: Any = "auto",
        callbacks: list[Callback] | None = None, validation_split: float = 0.0, validation_data: Any = None,
        shuffle: bool = True, class_weight: dict | None = None, sample_weight: Any = None, initial_epoch: int = 0,
        wait: bool | None = None, seed: int = 0,
        log_every: int = 10, columns: dict[str, str] | None = None, checkpoint_every_s: float | None = 60.0,
        name: str | None = None, replicas: int | str | None = None) -> Any:
    """Train ``model`` as a job on its runtime.

    The data go up once as resident datasets (``<graph>.train``, ``<graph>.val``); minibatches
    are cut on the runtime. Training metrics are logged every ``log_every`` steps; History
    holds their mean per epoch, as Keras reports; validation runs at each epoch's end on the
    inference pass.

    Args:
        model: a compiled model.
        x: an array (or a list, one per model input, or a dict by input name), or a
            `kernelflow.client.dataset.Dataset` already on the runtime (its arrays named by ``columns``).
        y: labels (class ids for sparse cross-entropy; None with a dataset); with several
            outputs a list in output order or a dict by output name.
        batch_size: rows per step.
        epochs: the epoch to stop after (Keras' meaning with ``initial_epoch``).
        verbose: 0 silent; 1 / "auto" a progress bar and one line per epoch (blocking form).
        callbacks: `kernelflow.nn.callbacks.Callback` objects.
        validation_split: the last fraction of the rows (before shuffling) held out, as Keras.
        validation_data: ``(x_val, y_val)``, ``(x_val, y_val, val_sample_weight)`` or a Dataset.
        shuffle: reshuffle the training rows every epoch.
        class_weight: {class index: weight} (one output): each training row's loss is scaled by
            its class's weight (Keras' meaning; validation is not).
        sample_weight: (rows,) weights of the training rows' losses, times ``class_weight``'s.
            The loss is ``sum(l * w) / batch rows``; ``weighted_metrics`` weigh by them too.
        initial_epoch: the epoch to start at (epochs ``initial_epoch .. epochs-1`` run).
        wait: True blocks and returns a `History`; False returns the running job at once (only
            observer callbacks then). Default: False in a notebook, True elsewhere.
        seed: seed of the shuffles.
        log_every: steps between logged training metrics.
        columns: for a Dataset x: ``{"x": array name, "y": array name}`` (multi-input:
            ``"x0"``, ``"x1"``...; several outputs: ``"y<i>"`` or the output's name; weights:
            ``"sample_weight"``); default the names fit uploads with (``x0``..., ``y``).
        checkpoint_every_s: the job's periodic checkpoints (with a state dir), or None.
        name: the job's name (default: the model's).
        replicas: ``"all"``: data-parallel over every rank of a distributed runtime, ``batch_size``
            being the global batch (docs/distributed.md); None: an ordinary job.

    Returns:
        A `History` when blocking, else the `kernelflow.client.job.Job`.

    Raises:
        FailedPreconditionError: the model is not compiled.
        InvalidArgumentError: bad arguments (each named), or callbacks that act between epochs
            with ``wait=False``.
    """
    model._require_compiled("fit")
    callbacks = list(callbacks or [])
    epochs, initial_epoch, batch_size = int(epochs), int(initial_epoch), int(batch_size)
    if wait is None:
        wait = not in_notebook()
    control = _check_fit_args(callbacks, epochs, initial_epoch, batch_size, validation_split, wait)
    train_ds, feed, n, val_ds, weighted = _fit_data(model, x, y, validation_split, validation_data, columns,
                                                    sample_weight, class_weight)
    spe = math.ceil(n / batch_size)
    t = model._variant(weighted)
    job_args: dict[str, Any] = dict(data=train_ds, feed=feed, batch_size=batch_size, shuffle=shuffle,
                                    metrics=t["metrics"], log_every=log_every, checkpoint_every_s=checkpoint_every_s,
                                    name=name or model.name)
    if replicas is not None:
        job_args["replicas"] = replicas
    if val_ds is not None:
        job_args["validation"] = (val_ds, t["val_metrics"])
    history = History()
    params = {"epochs": epochs, "steps": spe, "batch_size": batch_size, "verbose": verbose}
    for cb in [history, *callbacks]:
        cb.set_model(model)
        cb.set_params(params)
    model.history, model.stop_training = history, False
    verbose_on = verbose not in (0, False)
    if not control:
        job = model.graph.fit(t["train_op"], epochs=epochs - initial_epoch,
                              seed=seed * 1_000_003 + initial_epoch, **job_args)
        model.last_job = history.job = job
        history.jobs.append(job)
        observer = _Observer([*callbacks, history], spe, initial_epoch, val_ds is not None, model)
        for cb in callbacks:
            cb.on_train_begin()
        job.subscribe(observer)
        if not wait:
            return job
        status = job.wait(progress=True) if verbose_on else _wait_fast(job)
        _ = job.history  # catches up: the records the stream has not delivered yet reach the observer now
        job.unsubscribe(observer)
        _raise_if_failed(job, status)
        if verbose_on:  # under the progress bar, Keras' line per epoch
            for i, e in enumerate(history.epoch):
                print(_epoch_line(e, epochs, {k: v[i] for k, v in history.history.items() if i < len(v)}),
                      flush=True)
        for cb in callbacks:
            cb.on_train_end()
        return history
    return _fit_epoch_by_epoch(model, t["train_op"], history, callbacks, job_args, initial_epoch, epochs, seed, spe,
                               verbose_on)


def _check_fit_args(callbacks: list, epochs: int, initial_epoch: int, batch_size: int, validation_split: float,
                    wait: bool) -> list:
    """InvalidArgumentError for a bad argument of `fit`; returns the callbacks that act between epochs."""
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise InvalidArgumentError(f"fit: callbacks must be kf.nn.callbacks.Callback objects; got {cb!r}")
    if batch_size < 1:
        raise InvalidArgumentError(f"fit: batch_size must be >= 1; got {batch_size}")
    if not 0 <= initial_epoch < epochs:
        raise InvalidArgumentError(f"fit: need 0 <= initial_epoch < epochs; got initial_epoch={initial_epoch}, "
                                   f"epochs={epochs}")
    if not 0.0 <= validation_split < 1.0:
        raise InvalidArgumentError(f"fit: validation_split must be in [0, 1); got {validation_split}")
    control = [cb for cb in callbacks if cb.epoch_control]
    if control and not wait:
        raise InvalidArgumentError(f"fit: callbacks {[type(c).__name__ for c in control]} act between epochs; "
                                   "they need fit(..., wait=True)")
    return control


def _fit_data(model: Any, x: Any, y: Any, validation_split: float, validation_data: Any,
              columns: dict[str, str] | None, sample_weight: Any, class_weight: dict | None
              ) -> tuple[Any, dict, int, Any, bool]:
    """The training data on the runtime: (train dataset, feed, rows, validation dataset or None, weighted).

    With weights anywhere (``sample_weight``, ``class_weight``, or a third item of
    ``validation_data``) both datasets carry a ``sample_weight`` column (ones where none was
    given): the job feeds the validation set the training feed's columns.
    """
    val_sw = None
    if validation_data is not None and not _is_dataset(validation_data):
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise InvalidArgumentError("fit: validation_data must be (x_val, y_val), (x_val, y_val, sample_weight) "
                                       "or a Dataset")
        if len(validation_data) == 3:
            val_sw = validation_data[2]
    weighted = sample_weight is not None or class_weight is not None or val_sw is not None
    if class_weight is not None and len(model.output_names) > 1:
        raise InvalidArgumentError(f"fit: class_weight is for models with one output; model '{model.name}' has "
                                   f"{model.output_names}: give sample_weight instead")
    val_ds = None
    if _is_dataset(x):
        if model.graph is None:
            raise FailedPreconditionError("fit on a Dataset: build the model first (kf.Input or input_shape)")
        if validation_split:
            raise InvalidArgumentError("fit: validation_split takes rows from arrays; for a Dataset give "
                                       "validation_data (e.g. train, val = ds.split(0.9))")
        if sample_weight is not None or class_weight is not None:
            raise InvalidArgumentError("fit on a Dataset: weights come from its array named by "
                                       "columns={'sample_weight': ...}, not sample_weight/class_weight")
        model._ensure_built(None)
        weighted = weighted or "sample_weight" in (columns or {})
        feed = _feed(model, weighted, columns)
        train_ds, n = x, len(x)
    else:
        if x is None or y is None:
            raise InvalidArgumentError("fit: give x and y arrays (or a Dataset as x)")
        x = model._input_list(x)
        model._ensure_built(x)
        xs = [np.asarray(a) for a in _flat(x)]
        n_all = xs[0].shape[0]
        sw = None
        if weighted:
            sw = np.ones(n_all) if sample_weight is None else model._sample_weights(sample_weight, n_all)
            if class_weight is not None:
                sw = sw * class_weights(model._label_arrays(y, n_all)[0], class_weight)
        if validation_split and validation_data is None:
            cut = n_all - int(math.floor(n_all * validation_split))
            if cut <= 0 or cut >= n_all:
                raise InvalidArgumentError(f"fit: validation_split={validation_split} of {n_all} rows leaves an "
                                           "empty part")
            validation_data = ([a[cut:] for a in xs], _rows(model, y, cut, None))
            if sample_weight is not None:  # Keras: the held-out rows keep their sample weights, not class weights
                val_sw = model._sample_weights(sample_weight, n_all)[cut:]
            xs, y = [a[:cut] for a in xs], _rows(model, y, 0, cut)
            sw = sw[:cut] if sw is not None else None
        train_ds, feed, n = _upload(model, "train", xs if len(xs) > 1 else xs[0], y, sw)
    if validation_data is not None:
        if _is_dataset(validation_data):
            val_ds = validation_data
        else:
            vx, vy = model._input_list(validation_data[0]), validation_data[1]
            vn = np.asarray(_flat(vx)[0]).shape[0]
            vw = None
            if weighted:
                vw = np.ones(vn) if val_sw is None else model._sample_weights(val_sw, vn)
            val_ds, _, _ = _upload(model, "val", vx, vy, vw)
    return train_ds, feed, n, val_ds, weighted


def _rows(model: Any, y: Any, lo: int, hi: int | None) -> Any:
    """Rows ``lo:hi`` of labels given as an array, a list (one per output) or a dict by output name."""
    if isinstance(y, dict):
        return {k: None if v is None else np.asarray(v)[lo:hi] for k, v in y.items()}
    if len(model.output_names) > 1 and isinstance(y, (list, tuple)):
        return [None if v is None else np.asarray(v)[lo:hi] for v in y]
    return np.asarray(y)[lo:hi]


def _fit_epoch_by_epoch(model: Any, train_op: Any, history: History, callbacks: list, job_args: dict,
                        initial_epoch: int, epochs: int, seed: int, spe: int, verbose_on: bool) -> History:
    """One job per epoch: callbacks that act between epochs see the model exactly as each epoch left it."""
    for cb in [history, *callbacks]:
        cb.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        job = model.graph.fit(train_op, epochs=1, seed=seed * 1_000_003 + epoch, **job_args)
        model.last_job = history.job = job
        history.jobs.append(job)
        status = _wait_fast(job)
        _raise_if_failed(job, status)
        logs = epoch_logs(job.history, spe, 0)
        for cb in [*callbacks, history]:  # History last: it records what the others added (learning_rate)
            cb.on_epoch_end(epoch, logs)
        if verbose_on:
            print(_epoch_line(epoch, epochs, logs), flush=True)
        if model.stop_training:
            break
    for cb in [history, *callbacks]:
        cb.on_train_end()
    return history


def _wait_fast(job: Any) -> str:
    """Wait for a short job, polling every few milliseconds (a per-epoch job is often brief)."""
    interval = 0.002
    while True:
        st = job.refresh()["status"]
        if st in _ENDED:
            return st
        time.sleep(interval)
        interval = min(interval * 1.5, 0.05)


def _raise_if_failed(job: Any, status: str) -> None:
    if status == "failed":
        err = job.error or {}
        raise error_class(err.get("type", "InternalError"))(
            f"fit: the training job failed at step {err.get('step')}: {err.get('message')}",
            node=err.get("node"), source=err.get("source"))


def _epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    parts = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
    return f"Epoch {epoch + 1}/{epochs} - {parts}"


class _Observer:
    """Turns a job's streamed records into callback calls (training steps, epoch ends)."""

    def __init__(self, callbacks: list[Callback], spe: int, first_epoch: int, has_val: bool, model: Any):
        self.callbacks, self.spe, self.first_epoch, self.has_val = callbacks, spe, first_epoch, has_val
        self.model = model
        self.done_epochs = 0
        self.train: dict[str, list[tuple[int, float]]] = {}
        self.val: dict[int, dict[str, float]] = {}

    def __call__(self, records: list[dict]) -> None:
        for r in records:
            if r.get("kind") != "scalars":
                continue
            step, values = int(r["step"]), r["values"]
            if any(k.startswith("val_") for k in values):
                self.val.setdefault(step, {}).update(values)
            else:
                for k, v in values.items():
                    self.train.setdefault(k, []).append((step, v))
                for cb in self.callbacks:
                    cb.on_train_batch_end(step, dict(values))
            self._epochs_ready(step)

    def _epochs_ready(self, step: int) -> None:
        while (self.done_epochs + 1) * self.spe <= step:
            end = (self.done_epochs + 1) * self.spe
            if self.has_val and end not in self.val:
                return
            self._emit(self.done_epochs)

    def _emit(self, e: int) -> None:
        lo, hi = e * self.spe, (e + 1) * self.spe
        logs = {k: float(np.mean([v for s, v in pts if lo < s <= hi])) for k, pts in self.train.items()
                if any(lo < s <= hi for s, _ in pts)}
        logs.update(self.val.get(hi, {}))
        for cb in self.callbacks:
            cb.on_epoch_end(self.first_epoch + e, logs)
        self.done_epochs += 1
