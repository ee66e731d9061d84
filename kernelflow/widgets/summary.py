"""Value summaries for the inspector, computed on the runtime by its ``tensor.summary`` method.

The runtime evaluates the tensor (or reads the variable where it lives) and sends back only
the numbers: shape, dtype, min/max/mean/std over the finite values, NaN and Inf counts, a
histogram (`kernelflow.runtime_server.engine.summaries`). Nothing is added to the user's graph.
Before asking, the inspector checks locally which placeholders the tensor needs and whether
running it would change variables, so the details panel can say so without a round trip.

Contents: HIST_BINS, requirements, value_summary, summary_status.
"""

from __future__ import annotations

from typing import Any

from ..errors import FailedPreconditionError
from ..graph.ir import Tensor, toposort

HIST_BINS = 30


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
        InvalidArgumentError: from the runtime: ``t`` yields no value, needs feeds that ``feed``
            lacks (named), or runs state-changing ops (named; unless ``allow_side_effects``).
        FailedPreconditionError: ``t``'s graph is not held by a runtime.
    """
    summary = getattr(t.graph, "summary", None)
    if summary is None:
        raise FailedPreconditionError(f"inspect: graph '{t.graph.name}' is not held by a runtime, so its values "
                                      "cannot be summarised; build it with rt.graph(name)")
    return summary(t, feed=feed, bins=int(bins), allow_side_effects=allow_side_effects)


def summary_status(t: Tensor) -> dict[str, Any]:
    """What the details panel says before a summary: ``{"needs_feeds", "side_effects", "can_run"}``."""
    feeds, effects = requirements(t)
    return {"needs_feeds": feeds, "side_effects": effects,
            "can_run": t.dtype is not None and not feeds and not effects}
