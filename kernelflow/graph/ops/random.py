"""Random ops: normal and uniform samples, shuffles and permutations.

All are stateful: each node owns a generator that the runtime seeds from (graph seed, op
seed), or (graph seed, node index) when the op has no seed, and that advances from run to
run. So the same graph and seeds give the same numbers in a fresh runtime, and successive
runs give new ones. Within one run a node is computed once: every consumer (a forward
pass and its gradient) sees the same sample.

An op with no tensor input needs its graph: pass ``graph=``. The ``like=`` form takes the
shape from another tensor at run time, so it works with unknown dims (a batch of any size).

Contents: random_normal, random_uniform, random_shuffle, random_permutation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import InvalidArgumentError
from ..ir import Graph, Tensor
from ..registry import REQUIRED, define_op
from ..shapes import FLOATING, INTEGER, canonical_dtype, format_shape, normalize_shape

__all__ = ["random_normal", "random_uniform", "random_shuffle", "random_permutation"]


def _float_dtype(op: str, dtype: Any) -> str:
    d = canonical_dtype(dtype, op)
    if d not in FLOATING:
        raise InvalidArgumentError(f"{op}: dtype must be floating; got {d}")
    return d


def _static_shape(op: str, shape: Any) -> tuple:
    shape = normalize_shape(shape, what=f"{op} shape")
    if any(d is None for d in shape):
        raise InvalidArgumentError(f"{op}: shape {format_shape(shape)} has unknown dims; pass like= a tensor "
                                   "to take the shape at run time")
    return shape


def _seed(op: str, seed: Any) -> int | None:
    if seed is None:
        return None
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InvalidArgumentError(f"{op}: seed must be a non-negative int or None; got {seed!r}")
    return int(seed)


_random = dict(differentiable=False, stateful=True, random=True)
_sample_attrs = {"dtype": "float32", "seed": None}

random_normal_op = define_op(
    "random_normal", (), attrs={"shape": REQUIRED, "mean": 0.0, "stddev": 1.0, **_sample_attrs},
    shape_rule=lambda shape, **a: _static_shape("random_normal", shape),
    dtype_rule=lambda dtype, **a: _float_dtype("random_normal", dtype), **_random,
    doc="samples of N(mean, stddev**2) with a static shape")
random_normal_like_op = define_op(
    "random_normal_like", ("like",), attrs={"mean": 0.0, "stddev": 1.0, **_sample_attrs},
    shape_rule=lambda like, **a: like.shape, dtype_rule=lambda like, dtype, **a: _float_dtype("random_normal", dtype),
    **_random, doc="samples of N(mean, stddev**2) shaped like the input at run time")
random_uniform_op = define_op(
    "random_uniform", (), attrs={"shape": REQUIRED, "minval": 0.0, "maxval": 1.0, **_sample_attrs},
    shape_rule=lambda shape, **a: _static_shape("random_uniform", shape),
    dtype_rule=lambda dtype, **a: _float_dtype("random_uniform", dtype), **_random,
    doc="samples of U[minval, maxval) with a static shape")
random_uniform_like_op = define_op(
    "random_uniform_like", ("like",), attrs={"minval": 0.0, "maxval": 1.0, **_sample_attrs},
    shape_rule=lambda like, **a: like.shape, dtype_rule=lambda like, dtype, **a: _float_dtype("random_uniform", dtype),
    **_random, doc="samples of U[minval, maxval) shaped like the input at run time")


def _shuffle_shape(x: Any, seed: Any) -> tuple:
    if x.ndim == 0:
        raise InvalidArgumentError("random_shuffle: x must have at least one dim (axis 0 is shuffled); got a scalar")
    return x.shape


random_shuffle_op = define_op("random_shuffle", ("x",), attrs={"seed": None}, shape_rule=_shuffle_shape, **_random,
                              doc="x with its rows (axis 0) in a random order")


def _permutation_dtype(n: Any, dtype: Any, seed: Any) -> str:
    d = canonical_dtype(dtype, "random_permutation")
    if d not in INTEGER:
        raise InvalidArgumentError(f"random_permutation: dtype must be an integer type; got {d}")
    return d


random_permutation_op = define_op(
    "random_permutation", (), attrs={"n": REQUIRED, "dtype": "int64", "seed": None},
    shape_rule=lambda n, **a: _static_shape("random_permutation", (n,)), dtype_rule=_permutation_dtype, **_random,
    doc="a random order of range(n)")


# --------------------------------------------------------------------------- builders
def _sample(op_static: Any, op_like: Any, name: str, shape: Any, graph: Graph | None, like: Tensor | None,
            node_name: str | None, **attrs: Any) -> Tensor:
    attrs["dtype"] = _float_dtype(name, attrs["dtype"])
    attrs["seed"] = _seed(name, attrs["seed"])
    if like is not None:
        if not isinstance(like, Tensor):
            raise InvalidArgumentError(f"{name}: like must be a kf.Tensor; got {type(like).__name__}")
        if shape is not None:
            raise InvalidArgumentError(f"{name}: give shape or like, not both")
        return op_like.bind(like, name=node_name, **attrs)
    if not isinstance(graph, Graph):
        raise InvalidArgumentError(f"{name}: pass graph= (a kf.Graph) or like= (a tensor) to say where the op goes")
    attrs["shape"] = _static_shape(name, shape)
    return graph.add_node(op_static, (), attrs, node_name or name)


def random_normal(shape: Any = None, mean: float = 0.0, stddev: float = 1.0, dtype: Any = "float32",
                  seed: int | None = None, graph: Graph | None = None, like: Tensor | None = None,
                  name: str | None = None) -> Tensor:
    """Samples of a normal distribution, new ones at every run.

    Args:
        shape: a static shape (ints); leave None when ``like`` is given.
        mean: mean of the distribution.
        stddev: standard deviation.
        dtype: a floating dtype.
        seed: op seed; with the graph's seed it fixes the sequence across runtimes.
        graph: the graph to add the op to (needed unless ``like`` is given).
        like: a tensor whose run-time shape the samples take (its values are not read).
        name: node name.

    Returns:
        A tensor of ``shape`` (or like's shape) and ``dtype``.

    Example:
        >>> noise = kf.random_normal((4, 3), stddev=0.1, graph=g, seed=1)
    """
    return _sample(random_normal_op, random_normal_like_op, "random_normal", shape, graph, like, name,
                   mean=float(mean), stddev=float(stddev), dtype=dtype, seed=seed)


def random_uniform(shape: Any = None, minval: float = 0.0, maxval: float = 1.0, dtype: Any = "float32",
                   seed: int | None = None, graph: Graph | None = None, like: Tensor | None = None,
                   name: str | None = None) -> Tensor:
    """Samples of a uniform distribution on ``[minval, maxval)``, new ones at every run.

    Args:
        shape: a static shape (ints); leave None when ``like`` is given.
        minval: lower bound (included).
        maxval: upper bound (excluded).
        dtype: a floating dtype.
        seed: op seed; with the graph's seed it fixes the sequence across runtimes.
        graph: the graph to add the op to (needed unless ``like`` is given).
        like: a tensor whose run-time shape the samples take (its values are not read).
        name: node name.

    Returns:
        A tensor of ``shape`` (or like's shape) and ``dtype``.
    """
    if not float(minval) < float(maxval):
        raise InvalidArgumentError(f"random_uniform: minval must be < maxval; got minval={minval}, maxval={maxval}")
    return _sample(random_uniform_op, random_uniform_like_op, "random_uniform", shape, graph, like, name,
                   minval=float(minval), maxval=float(maxval), dtype=dtype, seed=seed)


def random_shuffle(x: Tensor, seed: int | None = None, name: str | None = None) -> Tensor:
    """``x`` with its rows (axis 0) in a new random order at every run; no gradient.

    Args:
        x: a tensor of rank >= 1.
        seed: op seed.
        name: node name.

    Returns:
        A tensor like ``x``.
    """
    return random_shuffle_op.bind(x, seed=_seed("random_shuffle", seed), name=name)


def random_permutation(n: int, graph: Graph, dtype: Any = "int64", seed: int | None = None,
                       name: str | None = None) -> Tensor:
    """A random order of ``range(n)``, new at every run.

    Args:
        n: the number of elements (a static int).
        graph: the graph to add the op to.
        dtype: an integer dtype.
        seed: op seed.
        name: node name.

    Returns:
        An (n,) tensor of ``dtype``.
    """
    if not isinstance(graph, Graph):
        raise InvalidArgumentError(f"random_permutation: graph must be a kf.Graph; got {type(graph).__name__}")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise InvalidArgumentError(f"random_permutation: n must be a non-negative int; got {n!r}")
    attrs = {"n": int(n), "dtype": canonical_dtype(dtype, "random_permutation"),
             "seed": _seed("random_permutation", seed)}
    return graph.add_node(random_permutation_op, (), attrs, name or "random_permutation")
