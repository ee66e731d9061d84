"""Runs in flight and how they are cancelled: a `RunControl` per run, checked by the executor
between kernels, and the `RunRegistry` that finds runs by graph, connection or id.

A run is cancelled by ``run.cancel``, by its connection closing (a client that gave up at its
deadline or was interrupted), by the server's per-run time limit (``--max-run-seconds``) or by
shutdown. The executor stops before its next kernel; a single kernel cannot be interrupted, so
kernels whose known cost is far beyond the limit are refused before the run starts
(`kernel_element_limit`).

Contents: RunControl, RunRegistry, current_run, kernel_element_limit, ELEMENTS_PER_S, MAX_KERNEL_ELEMENTS.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...errors import CancelledError, DeadlineExceededError

# A kernel touching more elements than this is refused even without a time limit: at a generous
# 1e9 elements/s it would run for 18 minutes, and nothing can stop a kernel once it started.
MAX_KERNEL_ELEMENTS = 1 << 40
# With --max-run-seconds: a kernel is refused when even at this (optimistic) rate it would
# outlast the limit, i.e. when it is certainly far beyond it.
ELEMENTS_PER_S = 1e10

_local = threading.local()
_ids = itertools.count(1)


def kernel_element_limit(max_run_seconds: float | None) -> int:
    """The most elements one kernel may touch under a per-run time limit."""
    if max_run_seconds is None:
        return MAX_KERNEL_ELEMENTS
    return max(1, min(MAX_KERNEL_ELEMENTS, int(max_run_seconds * ELEMENTS_PER_S)))


class RunControl:
    """One run in flight: who asked, for which graph, and whether it must stop.

    The executor calls `at` before each kernel; it raises CancelledError (or DeadlineExceededError
    past the time limit) once the run is cancelled.
    """

    __slots__ = ("id", "method", "graph", "peer", "started", "deadline", "reason", "step", "first_mutation",
                 "thread")

    def __init__(self, method: str, graph: str | None, peer: Any, max_seconds: float | None):
        self.id = next(_ids)
        self.method = method
        self.graph = graph
        self.peer = peer
        self.started = time.monotonic()
        self.deadline = self.started + max_seconds if max_seconds is not None else None
        self.reason: str | None = None  # set once cancelled
        self.step = -1  # the kernel about to run (or running)
        self.first_mutation: int | None = None  # the plan's first kernel that updates a variable
        self.thread = threading.get_ident()

    def at(self, step: int) -> None:
        """Kernel ``step`` is next: raise if the run was cancelled or is past its deadline."""
        self.step = step
        if self.reason is not None:
            raise CancelledError(f"{self.method} on graph {self.graph!r} cancelled before kernel {step}: "
                                 f"{self.reason}")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceededError(f"{self.method} on graph {self.graph!r}: over the server's per-run limit "
                                        f"of {self.deadline - self.started:g} s (kernelflow serve "
                                        f"--max-run-seconds); stopped before kernel {step}")

    def check(self) -> None:
        """`at` without moving the run's kernel (a sub-graph's kernels inside one kernel)."""
        step = self.step
        self.at(step)

    def cancel(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def attach(self, plan: Any) -> None:
        """The run executes ``plan``: note where its first variable update is (see `has_mutated`)."""
        first = getattr(plan, "_first_mutation", None)
        if first is None:
            nodes = plan.step_nodes
            first = next((k for k, n in enumerate(nodes) if n.op.mutates), len(nodes))
            plan._first_mutation = first
        self.first_mutation = first
        self.step = -1

    @property
    def has_mutated(self) -> bool:
        """Whether a variable may already have changed in this run (unknown counts as yes)."""
        return self.first_mutation is None or self.step >= self.first_mutation

    def describe(self) -> dict:
        return {"id": self.id, "method": self.method, "graph": self.graph,
                "seconds": round(time.monotonic() - self.started, 3), "kernel": self.step,
                "cancelled": self.reason is not None}


def current_run() -> RunControl | None:
    """The run the calling thread serves (None outside a tracked call)."""
    return getattr(_local, "run", None)


class RunRegistry:
    """Every tracked run in flight.

    Args:
        max_run_seconds: the per-run time limit (None: none).
    """

    def __init__(self, max_run_seconds: float | None = None):
        self.max_run_seconds = max_run_seconds
        self._runs: dict[int, RunControl] = {}
        self._lock = threading.Lock()

    @contextmanager
    def track(self, method: str, graph: str | None, peer: Any = None) -> Iterator[RunControl]:
        """Register a run for the calling thread while the block runs."""
        ctl, prev = self.begin(method, graph, peer)
        try:
            yield ctl
        finally:
            self.end(ctl, prev)

    def begin(self, method: str, graph: str | None, peer: Any = None) -> tuple[RunControl, RunControl | None]:
        """`track` for a hot path, without a generator: register a run for the calling thread;
        returns it and the run it shadows, for `end`."""
        ctl = RunControl(method, graph, peer, self.max_run_seconds)
        prev = getattr(_local, "run", None)
        with self._lock:
            self._runs[ctl.id] = ctl
        _local.run = ctl
        return ctl, prev

    def end(self, ctl: RunControl, prev: RunControl | None) -> None:
        """The run ``ctl`` of `begin` is over."""
        _local.run = prev
        with self._lock:
            self._runs.pop(ctl.id, None)

    def runs(self) -> list[RunControl]:
        with self._lock:
            return list(self._runs.values())

    def cancel(self, reason: str, *, graph: str | None = None, peer: Any = None, run_id: int | None = None) -> int:
        """Cancel the runs matching every given filter (none given: all); returns how many."""
        n = 0
        for ctl in self.runs():
            if graph is not None and ctl.graph != graph:
                continue
            if peer is not None and ctl.peer is not peer:
                continue
            if run_id is not None and ctl.id != run_id:
                continue
            if ctl.reason is None:
                ctl.cancel(reason)
                n += 1
        return n

    def busy(self, graph: str) -> RunControl | None:
        """A run in flight on ``graph``, if any."""
        for ctl in self.runs():
            if ctl.graph == graph:
                return ctl
        return None
