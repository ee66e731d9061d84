"""Initialisers: ``kf.init.glorot_uniform((64, 128), seed=0)`` makes the value at once,
with numpy, on the client; ``g.variable(...)`` sends it with the graph.

Each initialiser returns an `Initializer`, a callable ``init(dtype=None) -> ndarray``, so
``g.variable(kf.init.he_normal((3, 3, 1, 8), seed=1))`` needs no separate init step.

Contents: Initializer, zeros, ones, constant, normal, uniform, truncated_normal,
glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_normal, orthogonal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph.shapes import canonical_dtype, normalize_shape

__all__ = ["Initializer", "zeros", "ones", "constant", "normal", "uniform", "truncated_normal", "glorot_uniform",
           "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "orthogonal"]


class Initializer:
    """A deferred initial value: ``init()`` or ``init(dtype="float64")`` gives the array."""

    def __init__(self, name: str, shape: Sequence[int], dtype: Any, make: Callable[[np.random.Generator], np.ndarray],
                 seed: int | None):
        self.name = name
        self.shape = normalize_shape(shape, f"init.{name}")
        if any(d is None for d in self.shape):
            raise InvalidArgumentError(f"init.{name}: shape must be fully known; got {self.shape}")
        self.dtype = canonical_dtype(dtype, f"init.{name}")
        self.seed = seed
        self._make = make

    def __call__(self, dtype: Any = None) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return np.asarray(self._make(rng), dtype=canonical_dtype(dtype or self.dtype))

    def __repr__(self) -> str:
        return f"kf.init.{self.name}(shape={self.shape}, dtype={self.dtype}, seed={self.seed})"


def _fans(shape: tuple) -> tuple[float, float]:
    """fan_in, fan_out as TF/Keras count them (HWIO conv kernels use the receptive field)."""
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


def zeros(shape: Sequence[int], dtype: Any = "float32") -> Initializer:
    """All zeros."""
    return Initializer("zeros", shape, dtype, lambda rng: np.zeros(tuple(shape)), None)


def ones(shape: Sequence[int], dtype: Any = "float32") -> Initializer:
    """All ones."""
    return Initializer("ones", shape, dtype, lambda rng: np.ones(tuple(shape)), None)


def constant(value: float, shape: Sequence[int], dtype: Any = "float32") -> Initializer:
    """Every element ``value``."""
    return Initializer("constant", shape, dtype, lambda rng: np.full(tuple(shape), value), None)


def normal(shape: Sequence[int], stddev: float = 0.05, mean: float = 0.0, seed: int | None = None,
           dtype: Any = "float32") -> Initializer:
    """Normal(mean, stddev)."""
    return Initializer("normal", shape, dtype, lambda rng: rng.normal(mean, stddev, tuple(shape)), seed)


def uniform(shape: Sequence[int], minval: float = -0.05, maxval: float = 0.05, seed: int | None = None,
            dtype: Any = "float32") -> Initializer:
    """Uniform[minval, maxval)."""
    return Initializer("uniform", shape, dtype, lambda rng: rng.uniform(minval, maxval, tuple(shape)), seed)


def _truncated(rng: np.random.Generator, shape: tuple, stddev: float) -> np.ndarray:
    out = rng.normal(0.0, 1.0, shape)
    bad = np.abs(out) > 2
    while bad.any():  # redraw beyond two standard deviations, as TF does
        out[bad] = rng.normal(0.0, 1.0, int(bad.sum()))
        bad = np.abs(out) > 2
    return out * stddev


def truncated_normal(shape: Sequence[int], stddev: float = 0.05, seed: int | None = None,
                     dtype: Any = "float32") -> Initializer:
    """Normal(0, stddev) redrawn beyond two standard deviations."""
    return Initializer("truncated_normal", shape, dtype, lambda rng: _truncated(rng, tuple(shape), stddev), seed)


def glorot_uniform(shape: Sequence[int], seed: int | None = None, dtype: Any = "float32") -> Initializer:
    """Uniform(-l, l) with l = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010)."""
    fan_in, fan_out = _fans(tuple(shape))
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return Initializer("glorot_uniform", shape, dtype, lambda rng: rng.uniform(-limit, limit, tuple(shape)), seed)


def glorot_normal(shape: Sequence[int], seed: int | None = None, dtype: Any = "float32") -> Initializer:
    """Truncated normal with stddev sqrt(2 / (fan_in + fan_out)) / 0.8796 (Keras' correction)."""
    fan_in, fan_out = _fans(tuple(shape))
    std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
    return Initializer("glorot_normal", shape, dtype, lambda rng: _truncated(rng, tuple(shape), std), seed)


def he_uniform(shape: Sequence[int], seed: int | None = None, dtype: Any = "float32") -> Initializer:
    """Uniform(-l, l) with l = sqrt(6 / fan_in) (He et al. 2015), for ReLU layers."""
    fan_in, _ = _fans(tuple(shape))
    limit = math.sqrt(6.0 / fan_in)
    return Initializer("he_uniform", shape, dtype, lambda rng: rng.uniform(-limit, limit, tuple(shape)), seed)


def he_normal(shape: Sequence[int], seed: int | None = None, dtype: Any = "float32") -> Initializer:
    """Truncated normal with stddev sqrt(2 / fan_in) / 0.8796."""
    fan_in, _ = _fans(tuple(shape))
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    return Initializer("he_normal", shape, dtype, lambda rng: _truncated(rng, tuple(shape), std), seed)


def lecun_normal(shape: Sequence[int], seed: int | None = None, dtype: Any = "float32") -> Initializer:
    """Truncated normal with stddev sqrt(1 / fan_in) / 0.8796 (for SELU)."""
    fan_in, _ = _fans(tuple(shape))
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return Initializer("lecun_normal", shape, dtype, lambda rng: _truncated(rng, tuple(shape), std), seed)


def orthogonal(shape: Sequence[int], gain: float = 1.0, seed: int | None = None, dtype: Any = "float32") -> Initializer:
    """A (semi-)orthogonal matrix over the last dim (Saxe et al. 2014)."""
    shape_t = tuple(shape)
    if len(shape_t) < 2:
        raise InvalidArgumentError(f"init.orthogonal: needs at least 2 dims; got shape {shape_t}")
    rows, cols = math.prod(shape_t[:-1]), shape_t[-1]

    def make(rng: np.random.Generator) -> np.ndarray:
        a = rng.normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        q = q if rows >= cols else q.T
        return gain * q[:rows, :cols].reshape(shape_t)

    return Initializer("orthogonal", shape, dtype, make, seed)
