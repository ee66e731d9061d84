"""Callbacks of ``model.fit`` (Keras' hooks and names) and the `History` fit returns.

Callbacks run on the client. Observers (the `Callback` default) see the job's streamed
records: ``on_train_batch_end(step, logs)`` for each logged step and ``on_epoch_end(epoch,
logs)`` when an epoch's records are in. Callbacks that act between epochs (change the learning
rate, stop, keep the best weights, checkpoint) set ``epoch_control = True``; then ``fit`` runs
one job per epoch and calls ``on_epoch_end`` after each epoch's job has finished, with the
model's variables exactly as that epoch left them.

Contents: Callback, History, EarlyStopping, ModelCheckpoint, LearningRateScheduler,
ReduceLROnPlateau, LambdaCallback.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint", "LearningRateScheduler", "ReduceLROnPlateau",
           "LambdaCallback"]


class Callback:
    """Base class: override the hooks you need. ``self.model`` is set by ``fit``.

    Attributes:
        epoch_control: True for callbacks that must run between epochs with the model as the
            epoch left it (``fit`` then runs one job per epoch).
    """

    epoch_control = False

    def __init__(self) -> None:
        self.model: Any = None
        self.params: dict = {}

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_params(self, params: dict) -> None:
        self.params = params

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Before the first epoch."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """After the last epoch."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Before an epoch (per-epoch jobs only)."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """After an epoch: ``logs`` has the epoch's mean training metrics and its validation metrics."""

    def on_train_batch_end(self, step: int, logs: dict | None = None) -> None:
        """For each logged training step (every ``log_every`` steps), with that step's metrics."""


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, on_epoch_end: Callable | None = None, on_train_batch_end: Callable | None = None,
                 on_train_begin: Callable | None = None, on_train_end: Callable | None = None):
        super().__init__()
        for name, f in (("on_epoch_end", on_epoch_end), ("on_train_batch_end", on_train_batch_end),
                        ("on_train_begin", on_train_begin), ("on_train_end", on_train_end)):
            if f is not None:
                setattr(self, name, f)


class History(Callback):
    """What ``fit`` returns: ``history.history = {"loss": [per epoch], "val_loss": [...], ...}``.

    Attributes:
        history: metric name -> list of per-epoch values.
        epoch: the epoch numbers recorded.
        jobs: the runtime jobs that trained (one, or one per epoch).
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.jobs: list[Any] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))

    def __repr__(self) -> str:
        return f"<kf History epochs={len(self.epoch)} keys={list(self.history)}>"


def _mode_better(mode: str, monitor: str) -> Callable[[float, float, float], bool]:
    if mode not in ("auto", "min", "max"):
        raise InvalidArgumentError(f"mode must be 'auto', 'min' or 'max'; got {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    if mode == "min":
        return lambda cur, best, delta: cur < best - delta
    return lambda cur, best, delta: cur > best + delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Args:
        monitor: a History key (``"val_loss"``, ``"loss"``, ``"val_accuracy"``...).
        min_delta: the least change that counts as an improvement.
        patience: epochs without improvement before stopping.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracies).
        restore_best_weights: at the end, set the weights of the best epoch.
        baseline: a value the metric must beat.
        start_from_epoch: epochs to wait before counting.
    """

    epoch_control = True

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, mode: str = "auto",
                 restore_best_weights: bool = False, baseline: float | None = None, start_from_epoch: int = 0):
        super().__init__()
        self.monitor, self.min_delta, self.patience = monitor, abs(float(min_delta)), int(patience)
        self.better = _mode_better(mode, monitor)
        self.restore_best_weights, self.baseline = restore_best_weights, baseline
        self.start_from_epoch = start_from_epoch
        self.stopped_epoch = 0
        self.best_epoch = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.wait, self.best, self.best_weights, self.stopped_epoch = 0, None, None, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        cur = (logs or {}).get(self.monitor)
        if cur is None:
            raise InvalidArgumentError(f"EarlyStopping: monitor '{self.monitor}' is not among the epoch's logs "
                                       f"{sorted(logs or {})}")
        if epoch < self.start_from_epoch:
            return
        ref = self.best if self.best is not None else self.baseline
        if ref is None or self.better(cur, ref, self.min_delta):
            self.best, self.best_epoch, self.wait = cur, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= max(self.patience, 1):  # Keras: stop after `patience` epochs without improvement
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Checkpoint the model on the runtime's state dir after epochs.

    Args:
        filepath: the checkpoint tag, formatted with ``epoch`` (1-based, as Keras) and the logs,
            e.g. ``"ckpt-{epoch:02d}"``.
        monitor: the metric ``save_best_only`` compares.
        save_best_only: save only when ``monitor`` improved.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
    """

    epoch_control = True

    def __init__(self, filepath: str = "epoch-{epoch:03d}", monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto"):
        super().__init__()
        self.filepath, self.monitor, self.save_best_only = filepath, monitor, bool(save_best_only)
        self.better = _mode_better(mode, monitor)
        self.best: float | None = None
        self.saved: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.save_best_only:
            cur = logs.get(self.monitor)
            if cur is None:
                raise InvalidArgumentError(f"ModelCheckpoint: monitor '{self.monitor}' is not among the epoch's logs "
                                           f"{sorted(logs)}")
            if self.best is not None and not self.better(cur, self.best, 0.0):
                return
            self.best = cur
        tag = self.filepath.format(epoch=epoch + 1, **logs)
        self.model.save(tag=tag)
        self.saved.append(tag)


class LearningRateScheduler(Callback):
    """Set the learning rate before each epoch: ``schedule(epoch, lr) -> new lr``."""

    epoch_control = True

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        lr = float(self.schedule(epoch, self.model.learning_rate))
        if not math.isfinite(lr) or lr < 0:
            raise InvalidArgumentError(f"LearningRateScheduler: the schedule gave lr={lr} at epoch {epoch}")
        self.model.learning_rate = lr

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = self.model.learning_rate


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` stalls for ``patience`` epochs.

    Args:
        monitor: the metric.
        factor: in (0, 1).
        patience: epochs without improvement before a reduction.
        min_delta: the least change that counts.
        cooldown: epochs to wait after a reduction.
        min_lr: the floor.
        mode: ``"min"``, ``"max"`` or ``"auto"``.
    """

    epoch_control = True

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, min_delta: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0, mode: str = "auto"):
        super().__init__()
        if not 0.0 < factor < 1.0:
            raise InvalidArgumentError(f"ReduceLROnPlateau: factor must be in (0, 1); got {factor}")
        self.monitor, self.factor, self.patience, self.min_delta = monitor, float(factor), int(patience), min_delta
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)
        self.better = _mode_better(mode, monitor)
        self.best: float | None = None
        self.wait = self.cooldown_left = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        cur = logs.get(self.monitor)
        if cur is None:
            raise InvalidArgumentError(f"ReduceLROnPlateau: monitor '{self.monitor}' is not among the epoch's logs "
                                       f"{sorted(logs)}")
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if self.best is None or self.better(cur, self.best, self.min_delta):
            self.best, self.wait = cur, 0
        elif self.cooldown_left <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                lr = self.model.learning_rate
                new = max(lr * self.factor, self.min_lr)
                if new < lr:
                    self.model.learning_rate = new
                self.cooldown_left, self.wait = self.cooldown, 0
        logs["learning_rate"] = self.model.learning_rate


def epoch_logs(history: dict, steps_per_epoch: int, epoch_in_job: int) -> dict[str, float]:
    """Mean of each training metric over one epoch's logged steps, and the validation metrics
    logged at its end, from a job's ``history`` (``{name: {"step", "value"}}``)."""
    lo, hi = epoch_in_job * steps_per_epoch, (epoch_in_job + 1) * steps_per_epoch
    out: dict[str, float] = {}
    for k, h in history.items():
        steps, vals = np.asarray(h["step"]), np.asarray(h["value"])
        sel = (steps > lo) & (steps <= hi)
        if sel.any():
            out[k] = float(vals[sel][-1]) if k.startswith("val_") else float(vals[sel].mean())
    return out
