"""Value summaries computed on the runtime: a small subgraph of reductions, so only numbers travel.

The summary of a tensor (shape, dtype, min/max/mean/std over its finite values, NaN and
Inf counts, a histogram) is computed by kf ops added to the tensor's own graph under the
``_inspect/<tensor name>/`` scope, once per tensor (a later summary re-runs the same nodes,
also after a re-attach), and fetched with one ``g.run``. The full tensor is never fetched.

Contents: INSPECT_SCOPE, requirements, value_summary.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FailedPreconditionError, InvalidArgumentError
from ..graph import ops
from ..graph.ir import Graph, Tensor, toposort

INSPECT_SCOPE = "_inspect"
"""Scope of the summary nodes; the inspector does not draw it."""

HIST_BINS = 20


def requirements(t: Tensor) -> tuple[list[str], list[str]]:
    """What running ``t`` takes: (placeholders it needs fed, nodes that would change state).

    State-changing nodes are the ones whose op mutates a variable (assign, optimizer updates)
    among ``t``'s data and control dependencies.
    """
    feeds, effects = [], []
    for n in toposort([t]):
        if n.op.name == "placeholder":
            feeds.append(n.name)
        elif n.op.mutates:
            effects.append(n.name)
    return feeds, effects


def _summary_nodes(g: Graph, t: Tensor, bins: int) -> dict[str, Tensor]:
    base = f"{INSPECT_SCOPE}/{t.name}/"
    names = ("size", "finite", "nan", "min", "max", "mean", "std", "hist")
    if all(base + k in g for k in names):
        return {k: g[base + k] for k in names}
    if any(base + k in g for k in names):
        raise FailedPreconditionError(f"inspect: graph '{g.name}' holds a partial summary of '{t.name}' under "
                                      f"'{base}'; it cannot be rebuilt in place")
    with g.control_dependencies(None), g.device(t.device), g.name_scope(INSPECT_SCOPE + "/" + t.name), \
            g.name_scope("ops"):
        # Shared constants: each Python scalar would otherwise become a node of its own.
        zero, one, inf = g.constant(0.0, dtype="float64"), g.constant(1.0, dtype="float64"), \
            g.constant(np.inf, dtype="float64")
        x = ops.reshape(t if t.dtype == "float64" else ops.cast(t, "float64"), (-1,))
        fin = ops.isfinite(x)
        n_fin = ops.count_nonzero(fin)
        has = ops.greater(n_fin, g.constant(0, dtype="int64"))
        lo = ops.where(has, ops.min(ops.where(fin, x, inf)), zero)
        hi = ops.where(has, ops.max(ops.where(fin, x, -inf)), zero)
        denom = ops.maximum(ops.cast(n_fin, "float64"), one)
        mean = ops.sum(ops.where(fin, x, zero)) / denom
        var = ops.sum(ops.where(fin, ops.square(x - mean), zero)) / denom
        span = ops.where(ops.greater(hi, lo), hi - lo, one)
        top = g.constant(float(bins - 1), dtype="float64")
        pos = ops.minimum(ops.maximum((ops.where(fin, x, lo) - lo) / span * g.constant(float(bins)), zero), top)
        idx = ops.cast(pos, "int64")  # pos >= 0, so the cast truncates like floor
        hist = ops.scatter_add(ops.cast(fin, "float64"), idx, g.constant(np.zeros(bins)))
        out = {"size": ops.size(x), "finite": n_fin, "nan": ops.count_nonzero(ops.not_equal(x, x)),
               "min": lo, "max": hi, "mean": mean, "std": ops.sqrt(var), "hist": hist}
    with g.control_dependencies(None), g.device(t.device), g.name_scope(INSPECT_SCOPE + "/" + t.name):
        return {k: ops.identity(v, name=k) for k, v in out.items()}


def value_summary(t: Tensor, feed: dict | None = None, bins: int = HIST_BINS, allow_side_effects: bool = False) -> dict:
    """Summarise the value of ``t`` on its runtime without fetching it.

    Args:
        t: a tensor of a graph attached to a runtime (``rt.graph(...)``).
        feed: values for the placeholders ``t`` depends on, as for ``g.run``.
        bins: histogram bins, between the finite min and max.
        allow_side_effects: run ``t`` even when that runs ops that change variables.

    Returns:
        ``{"shape", "dtype", "size", "min", "max", "mean", "std", "nan", "inf", "finite",
        "hist": {"counts", "edges"}}``: min/max/mean/std over the finite values (None if none).

    Raises:
        InvalidArgumentError: ``t`` yields no value, needs feeds that ``feed`` lacks, or runs
            state-changing ops (unless ``allow_side_effects``).
    """
    if t.dtype is None:
        raise InvalidArgumentError(f"inspect: '{t.name}' ({t.op.name}) yields no value to summarise")
    feeds, effects = requirements(t)
    given = {k if isinstance(k, str) else k.name for k in (feed or {})}
    missing = [p for p in feeds if p not in given]
    if missing:
        raise InvalidArgumentError(f"inspect: the value of '{t.name}' needs feeds for {missing}; pass feed={{...}}")
    if effects and not allow_side_effects:
        raise InvalidArgumentError(f"inspect: computing '{t.name}' would run state-changing ops {effects[:5]}; "
                                   "pass allow_side_effects=True to run them anyway")
    g = t.graph
    nodes = _summary_nodes(g, t, int(bins))
    vals = g.run(nodes, feed)
    size, finite, nan = int(vals["size"]), int(vals["finite"]), int(vals["nan"])
    lo, hi = float(vals["min"]), float(vals["max"])
    span = hi - lo if hi > lo else 1.0
    has = finite > 0
    return {
        "name": t.name, "shape": list(t.shape), "dtype": t.dtype, "size": size,
        "min": lo if has else None, "max": hi if has else None,
        "mean": float(vals["mean"]) if has else None, "std": float(vals["std"]) if has else None,
        "finite": finite, "nan": nan, "inf": size - finite - nan,
        "hist": {"counts": [int(c) for c in np.asarray(vals["hist"])],
                 "edges": [lo + span * i / int(bins) for i in range(int(bins) + 1)] if has else []},
    }


def summary_status(t: Tensor) -> dict[str, Any]:
    """What the details panel says before a summary: ``{"needs_feeds", "side_effects", "can_run"}``."""
    feeds, effects = requirements(t)
    return {"needs_feeds": feeds, "side_effects": effects,
            "can_run": t.dtype is not None and not feeds and not effects}
