"""``%kf gc``: delete ended jobs and scratch graphs from a runtime, or list what would go.

Contents: parse_duration, Tidy, plan_tidy, run_tidy.
"""

from __future__ import annotations

import fnmatch
import re
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError, KernelflowError

# ended jobs that can go; an interrupted job (the server stopped under it) can still resume
DELETABLE_JOBS = ("completed", "stopped", "failed")
ACTIVE_JOBS = ("queued", "running", "paused")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds of ``"90"``, ``"90s"``, ``"30m"``, ``"2h"`` or ``"1d"``.

    Raises:
        InvalidArgumentError: anything else, naming the text.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise InvalidArgumentError(f"%kf gc: --older-than takes a duration such as 90s, 30m, 2h or 1d; got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass
class Tidy:
    """What ``%kf gc`` deletes (or would): job status maps and graph names, and why others stay."""

    jobs: list[dict] = field(default_factory=list)
    graphs: list[str] = field(default_factory=list)
    kept_graphs: dict[str, str] = field(default_factory=dict)  # name -> reason


def plan_tidy(rt: Any, older_than_s: float = 0.0, graphs: str | None = None, now: float | None = None) -> Tidy:
    """The ended jobs (completed, stopped, failed) that finished more than ``older_than_s`` ago, and the
    graphs whose name matches the glob ``graphs`` that no job left on the runtime trains.

    Args:
        rt: the runtime.
        older_than_s: only jobs that finished at least this long ago.
        graphs: a glob (``"scratch*"``) of graphs to delete too; None: no graph.
        now: the current time (``time.time()``).
    """
    now = time.time() if now is None else now
    plan = Tidy()
    all_jobs = list(rt.jobs())
    for j in all_jobs:
        finished = j.get("finished")
        if j.get("status") in DELETABLE_JOBS and finished is not None and now - float(finished) >= older_than_s:
            plan.jobs.append(j)
    if graphs is not None:
        going = {j["id"] for j in plan.jobs}
        used = {j.get("graph"): j for j in all_jobs if j["id"] not in going}
        for name in rt.graphs():
            if not fnmatch.fnmatchcase(name, graphs):
                continue
            if name in used:
                j = used[name]
                plan.kept_graphs[name] = f"job {j.get('name') or j['id']} ({j.get('status')}) trains it"
            else:
                plan.graphs.append(name)
    return plan


def run_tidy(rt: Any, plan: Tidy) -> list[str]:
    """Delete what ``plan`` lists; returns the errors (a job or graph another client removed first)."""
    errors = []
    for j in plan.jobs:
        try:
            rt.job(j["id"]).delete()
        except KernelflowError as e:
            errors.append(f"job {j['id']}: {type(e).__name__}: {e}")
    for name in plan.graphs:
        try:
            rt.delete_graph(name)
        except KernelflowError as e:
            errors.append(f"graph {name}: {type(e).__name__}: {e}")
    return errors
