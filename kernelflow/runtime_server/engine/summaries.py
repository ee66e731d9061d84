"""The ``tensor.summary`` RPC: statistics of one tensor's value computed on the runtime, so only numbers travel.

A summary is what the graph inspector shows in its "value" section: shape, dtype, size,
min/max/mean/std over the finite values (in float64), NaN and Inf counts, and a histogram
of the finite values. The tensor is evaluated in the graph's session with a throwaway
fetch (its plan is not cached, and no node is added to the graph); a variable is read
where it lives, on its device, without running anything. Only the summary goes back.

Params: ``[graph, since, nodes, tensor, feed_names, feed_values, bins=30, allow_side_effects=False]``,
laid out like ``graph.run``'s (``nodes`` piggy-backs nodes the client has not sent yet).

Contents: DEFAULT_BINS, MAX_BINS, summarize, SummaryMethods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, NotFoundError
from ...graph.ir import Tensor, Variable
from ...graph.ops.state import placeholder_op
from .executor import Plan
from .session import GraphSession

DEFAULT_BINS = 30
MAX_BINS = 10_000


def _needs(t: Tensor, fed: set[str]) -> tuple[list[str], list[str]]:
    """(placeholders ``t`` needs that are not fed, nodes on the way that change variables).

    The walk stops at fed nodes: feeding an intermediate tensor cuts what lies above it.
    """
    missing, effects, seen, stack = [], [], set(), [t]
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n.name in fed:
            continue
        if n.op is placeholder_op:
            missing.append(n)
        elif n.op.mutates:
            effects.append(n)
        stack.extend(n.inputs)
        stack.extend(n.control_inputs)
    return [n.name for n in sorted(missing, key=lambda n: n.index)], \
        [n.name for n in sorted(effects, key=lambda n: n.index)]


def _stats(a: Any, bins: int) -> dict:
    """The numbers of a summary, computed with ``a``'s array module (numpy, or cupy on a GPU)."""
    xp: Any = np
    if not isinstance(a, np.ndarray):
        import cupy as xp  # a variable held on a GPU: reduce it there
    flat = xp.asarray(a).ravel()
    if flat.dtype.kind == "c":
        raise InvalidArgumentError(f"tensor.summary: complex values ({flat.dtype.name}) have no summary")
    flat = flat.astype(xp.float64)
    size = int(flat.size)
    with np.errstate(all="ignore"):
        nan = int(xp.count_nonzero(xp.isnan(flat)))
        finite_mask = xp.isfinite(flat)
        n_fin = int(xp.count_nonzero(finite_mask))
        out: dict[str, Any] = {"size": size, "finite": n_fin, "nan": nan, "inf": size - n_fin - nan,
                               "min": None, "max": None, "mean": None, "std": None,
                               "hist": {"counts": [], "edges": []}}
        if n_fin == 0:
            return out
        fin = flat if n_fin == size else flat[finite_mask]
        lo, hi = float(fin.min()), float(fin.max())
        mean = float(fin.mean())
        std = float(fin.std())
        # The edges span [min, max] exactly, so a client can rebuild them with
        # np.histogram(values, bins, range=(min, max)); a constant tensor gets one unit-wide range.
        counts, edges = xp.histogram(fin, bins=bins, range=(lo, hi) if hi > lo else (lo, lo + 1.0))
    out.update({"min": lo, "max": hi, "mean": mean, "std": std,
                "hist": {"counts": [int(c) for c in counts.tolist()], "edges": [float(e) for e in edges.tolist()]}})
    return out


def summarize(s: GraphSession, tensor: str, feed_names: Sequence[str], feed_values: Sequence[Any],
              bins: int = DEFAULT_BINS, allow_side_effects: bool = False) -> dict:
    """The summary of node ``tensor`` of session ``s``, evaluated with the given feeds.

    Returns:
        ``{"name", "shape", "dtype", "size", "min", "max", "mean", "std", "finite", "nan", "inf",
        "hist": {"counts", "edges"}}``; ``shape`` is the value's shape, min/max/mean/std are None
        when no value is finite.

    Raises:
        NotFoundError: no node ``tensor`` (or a feed name that is no node).
        InvalidArgumentError: bad bins, a node with no value, placeholders left unfed (named),
            or state-changing ops on the way (named; unless ``allow_side_effects``).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_BINS:
        raise InvalidArgumentError(f"tensor.summary: bins must be an integer in 1..{MAX_BINS}; got {bins!r}")
    if not isinstance(tensor, str) or tensor not in s.graph:
        raise NotFoundError(f"tensor.summary: graph '{s.name}' has no node named {tensor!r}")
    with s.lock:
        t = s.graph[tensor]
        if t.dtype is None:
            raise InvalidArgumentError(f"tensor.summary: '{t.name}' ({t.op.name}) yields no value to summarise")
        for n in feed_names:
            if not isinstance(n, str) or n not in s.graph:
                raise NotFoundError(f"tensor.summary: feed {n!r} is not a node of graph '{s.name}'")
        feeds = [s.graph[n] for n in feed_names]
        if len(set(feed_names)) != len(feed_names):
            raise InvalidArgumentError(f"tensor.summary: a node is fed twice in {list(feed_names)}")
        missing, effects = _needs(t, set(feed_names))
        if missing:
            raise InvalidArgumentError(f"tensor.summary: the value of '{t.name}' needs feeds for the placeholders "
                                       f"{missing}; pass feed={{...}} with them", node=t.name)
        if effects and not allow_side_effects:
            raise InvalidArgumentError(f"tensor.summary: computing '{t.name}' would run the state-changing ops "
                                       f"{effects[:5]}; pass allow_side_effects=True to run them anyway",
                                       node=t.name)
        if isinstance(t, Variable) and t.name not in feed_names and t.name in s.variables:
            # A copy on the variable's device (no transfer): a job's steps update the storage in
            # place, and the statistics below must not hold the graph's lock.
            value = s.variables[t.name].copy()
        else:
            # A plan of its own, not s.run's cached one: inspector clicks must not grow the cache.
            plan = Plan(s, [t], feeds)
            # (a fetch that aliases a variable's storage comes back copied: Plan.copy_fetch)
            value = plan.run([s._check_feed(f, v) for f, v in zip(plan.feeds, feed_values)])[0]
    summary = _stats(value, bins)
    return {"name": t.name, "shape": [int(d) for d in value.shape], "dtype": t.dtype, **summary}


class SummaryMethods:
    """The ``tensor.summary`` RPC method over the sessions ``session(name)`` returns."""

    def __init__(self, session: Callable[[str], GraphSession]):
        self.session = session

    def tensor_summary(self, graph: str, since: int, nodes: list, tensor: str, feed_names: list, feed_values: list,
                       bins: int = DEFAULT_BINS, allow_side_effects: bool = False) -> dict:
        """Statistics and a histogram of ``tensor``'s value (piggy-backed ``nodes`` added first)."""
        s = self.session(graph)
        if nodes:
            if not isinstance(nodes, (list, tuple)):
                raise InvalidArgumentError(f"tensor.summary: nodes must be a list; got {type(nodes).__name__}")
            s.extend(list(nodes), since)
        if not isinstance(feed_names, (list, tuple)) or not isinstance(feed_values, (list, tuple)):
            raise InvalidArgumentError("tensor.summary: feed names and values must be lists; got "
                                       f"{type(feed_names).__name__} and {type(feed_values).__name__}")
        if len(feed_names) != len(feed_values):
            raise InvalidArgumentError(f"tensor.summary: {len(feed_names)} feed names but {len(feed_values)} values")
        return summarize(s, tensor, list(feed_names), list(feed_values), bins, bool(allow_side_effects))
