"""Learning-rate schedules: callables that build the learning rate of a step as graph nodes.

A schedule is called with the step tensor (usually the ``global_step`` variable) and returns
a 0-d float64 tensor, so the learning rate is computed on the runtime, next to the update.
Optimisers accept a schedule as ``lr`` and call it with the step of the update (0 for the
first update). The formulas are TensorFlow's (``tf.compat.v1.train.*_decay``).

Example:
    >>> sched = kf.optim.linear_warmup(kf.optim.cosine_decay(0.1, 1000, alpha=0.01), 100)
    >>> opt = kf.optim.SGD(lr=sched, momentum=0.9)

Contents: Schedule, Constant, ExponentialDecay, CosineDecay, LinearWarmup, constant,
exponential_decay, cosine_decay, linear_warmup, as_schedule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.ir import Tensor
from ..graph.ops.elementwise import cast, cos, floor_divide, less, maximum, minimum, pow, where

__all__ = ["Schedule", "Constant", "ExponentialDecay", "CosineDecay", "LinearWarmup", "constant",
           "exponential_decay", "cosine_decay", "linear_warmup", "as_schedule"]


def _positive(what: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{what} must be a number; got {value!r}") from e
    if not v > 0:
        raise InvalidArgumentError(f"{what} must be > 0; got {value!r}")
    return v


def _number(what: str, value: Any) -> float:
    if isinstance(value, Tensor) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"{what} must be a Python number; got {value!r}")
    return float(value)


class Schedule:
    """Base of the schedules: ``schedule(step) -> 0-d float64 tensor``."""

    def __call__(self, step: Tensor) -> Tensor:
        """The learning rate at ``step`` (an integer or floating 0-d tensor), as graph nodes."""
        if not isinstance(step, Tensor) or step.shape != ():
            raise InvalidArgumentError(f"{type(self).__name__}: step must be a 0-d tensor; got {step!r}")
        with step.graph.name_scope(type(self).__name__):
            return self._build(cast(step, "float64"))

    def _build(self, step: Tensor) -> Tensor:
        raise NotImplementedError

    def _const(self, step: Tensor, value: float) -> Tensor:
        return step.graph.constant(value, dtype="float64")


class Constant(Schedule):
    """The same learning rate at every step.

    Args:
        lr: the learning rate.
    """

    def __init__(self, lr: float):
        self.lr = _number("constant: lr", lr)

    def __repr__(self) -> str:
        return f"Constant(lr={self.lr})"

    def _build(self, step: Tensor) -> Tensor:
        return self._const(step, self.lr)


class ExponentialDecay(Schedule):
    """``lr * decay_rate ** (step / decay_steps)``; with ``staircase`` the exponent is floored.

    Args:
        lr: the initial learning rate.
        decay_steps: steps per factor of ``decay_rate`` (> 0).
        decay_rate: the decay factor.
        staircase: decay in discrete jumps every ``decay_steps`` steps.
    """

    def __init__(self, lr: float, decay_steps: float, decay_rate: float, staircase: bool = False):
        self.lr = _number("exponential_decay: lr", lr)
        self.decay_steps = _positive("exponential_decay: decay_steps", decay_steps)
        self.decay_rate = _number("exponential_decay: decay_rate", decay_rate)
        self.staircase = bool(staircase)

    def __repr__(self) -> str:
        return (f"ExponentialDecay(lr={self.lr}, decay_steps={self.decay_steps}, decay_rate={self.decay_rate}, "
                f"staircase={self.staircase})")

    def _build(self, step: Tensor) -> Tensor:
        p = floor_divide(step, self.decay_steps) if self.staircase else step / self.decay_steps
        return pow(self._const(step, self.decay_rate), p) * self.lr


class CosineDecay(Schedule):
    """``lr * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)``.

    Args:
        lr: the initial learning rate.
        decay_steps: steps to decay over (> 0); the rate stays at ``alpha * lr`` afterwards.
        alpha: the floor, as a fraction of ``lr``.
    """

    def __init__(self, lr: float, decay_steps: float, alpha: float = 0.0):
        self.lr = _number("cosine_decay: lr", lr)
        self.decay_steps = _positive("cosine_decay: decay_steps", decay_steps)
        self.alpha = _number("cosine_decay: alpha", alpha)

    def __repr__(self) -> str:
        return f"CosineDecay(lr={self.lr}, decay_steps={self.decay_steps}, alpha={self.alpha})"

    def _build(self, step: Tensor) -> Tensor:
        done = minimum(step, self.decay_steps) / self.decay_steps
        cosine = (cos(done * math.pi) + 1.0) * 0.5
        return (cosine * (1.0 - self.alpha) + self.alpha) * self.lr


class LinearWarmup(Schedule):
    """A linear ramp from ``initial_lr`` to ``schedule(0)`` over ``warmup_steps`` steps, then
    ``schedule(step - warmup_steps)`` (the wrapped schedule starts when the warm-up ends,
    as Keras's ``warmup_steps``).

    Args:
        schedule: the schedule after warm-up (a `Schedule`, or a float for a constant rate).
        warmup_steps: length of the ramp (> 0).
        initial_lr: the rate at step 0.
    """

    def __init__(self, schedule: Schedule | float, warmup_steps: float, initial_lr: float = 0.0):
        self.schedule = as_schedule(schedule, "linear_warmup: schedule")
        self.warmup_steps = _positive("linear_warmup: warmup_steps", warmup_steps)
        self.initial_lr = _number("linear_warmup: initial_lr", initial_lr)

    def __repr__(self) -> str:
        return f"LinearWarmup({self.schedule!r}, warmup_steps={self.warmup_steps}, initial_lr={self.initial_lr})"

    def _build(self, step: Tensor) -> Tensor:
        target = self.schedule(self._const(step, 0.0))
        ramp = (target - self.initial_lr) * (step / self.warmup_steps) + self.initial_lr
        after = self.schedule(maximum(step - self.warmup_steps, 0.0))
        return where(less(step, self.warmup_steps), ramp, after)


def constant(lr: float) -> Constant:
    """A constant learning rate (see `Constant`)."""
    return Constant(lr)


def exponential_decay(lr: float, decay_steps: float, decay_rate: float, staircase: bool = False) -> ExponentialDecay:
    """Exponential decay, ``tf.compat.v1.train.exponential_decay`` (see `ExponentialDecay`)."""
    return ExponentialDecay(lr, decay_steps, decay_rate, staircase)


def cosine_decay(lr: float, decay_steps: float, alpha: float = 0.0) -> CosineDecay:
    """Cosine decay to ``alpha * lr``, ``tf.compat.v1.train.cosine_decay`` (see `CosineDecay`)."""
    return CosineDecay(lr, decay_steps, alpha)


def linear_warmup(schedule: Schedule | float, warmup_steps: float, initial_lr: float = 0.0) -> LinearWarmup:
    """A linear warm-up in front of ``schedule`` (see `LinearWarmup`)."""
    return LinearWarmup(schedule, warmup_steps, initial_lr)


def as_schedule(value: Any, what: str = "lr") -> Schedule:
    """``value`` if it is a `Schedule`, `Constant(value)` if it is a number.

    Raises:
        InvalidArgumentError: for anything else.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return Constant(float(value))
    raise InvalidArgumentError(f"{what}: expected a Schedule or a number; got {value!r}")
