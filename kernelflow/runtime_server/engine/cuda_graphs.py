"""CUDA graph capture of a whole plan (issue #16): a GPU step replayed as one graph launch.

Opt-in (``kf.connect(..., cuda_graphs=True)``, ``kernelflow serve --cuda-graphs`` or
``$KERNELFLOW_CUDA_GRAPHS=1``). A plan qualifies when every node and feed is on one GPU and no
node draws random numbers, runs a control-flow op (its host decides the branch or the trip
count), or prints. Per feed-shape signature, its first run is a plain one (kernels compile,
scratch buffers and cuBLAS handles are made), its second is captured on a private stream into a
private memory pool and then launched, and later runs copy the feeds into the captured input
buffers and launch the graph: one launch instead of one per kernel, no Python per kernel.

Safety: every array the graph reads or writes stays allocated while the graph lives (the
private pool is used by nothing else; the scratch buffers of the capturing thread are held);
each replay first checks that every variable still has the storage the graph captured (a
`load` or `assign` that replaced it makes the next run capture afresh) and waits for work
queued on the default stream. A capture that fails (a kernel needs the host mid-step, as a
label check does) is ended, logged with its reason in `CudaGraphs.declined`, and the plan runs
unfused by graphs from then on.

Contents: CudaGraphs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...graph.ops import control_flow as cf
from ...graph.ops import random as rnd
from ...graph.ops import summary as summ
from ...graph.ops.state import print_op, variable_op

if TYPE_CHECKING:
    from .executor import Plan

log = logging.getLogger("kernelflow.cuda_graphs")

_MAX_SIGNATURES = 8  # captured graphs per plan (one per feed-shape signature)
# Ops a replay cannot repeat: the host picks a branch or a trip count, draws a seed, or writes.
_HOST_OPS = {cf.case_op, cf.while_op, cf.scan_op, cf.loop_grad_op, print_op, summ.summary_op,
             rnd.random_normal_op, rnd.random_normal_like_op, rnd.random_uniform_op, rnd.random_uniform_like_op,
             rnd.random_shuffle_op, rnd.random_permutation_op}


class _Captured:
    """One signature's graph: its inputs, outputs and everything it must keep alive."""

    def __init__(self) -> None:
        self.runs = 0  # plain runs so far (the first run of a signature is plain)
        self.graph: Any = None
        self.inputs: list[Any] = []
        self.outputs: list[Any] = []
        self.keep: list[Any] = []
        self.storage: dict[str, int] = {}  # variable name -> data pointer the graph captured
        self.checks: list[tuple[int, Any]] = []  # (feed index, check) run on the feeds before each launch
        self.launches = 0


class CudaGraphs:
    """The CUDA graphs of one plan (built by `Plan` when the runtime enables them)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.reason = self._ineligible(plan)  # None: the plan may be captured
        self.declined: list[str] = []  # why captures failed
        self._sigs: dict[tuple, _Captured] = {}
        self._stream: Any = None
        self._pool: Any = None
        self._variables = [n.name for n in plan.step_nodes if n.op is variable_op]
        if self.reason:
            log.info("CUDA graphs: plan of %d kernels not captured: %s", len(plan.steps), self.reason)

    @staticmethod
    def _ineligible(plan: Plan) -> str | None:
        places = set()
        for t in plan.feeds:
            places.add(_key(plan.session.placement(t)))
        for n in plan.step_nodes:
            places.add(_key(plan.session.placement(n)))
            if n.op in _HOST_OPS:
                return f"node '{n.name}' ({n.op.name}) needs the host during the step"
        if len(places) != 1 or next(iter(places))[0] != "cupy":
            return "not every node and feed is on one GPU"
        if not plan.steps:
            return "no kernels"
        return None

    @property
    def launches(self) -> int:
        """Graph launches so far, all signatures."""
        return sum(c.launches for c in self._sigs.values())

    def run(self, feed_values: Sequence[Any], control: Any) -> list[Any] | None:
        """The fetches' values (device arrays) from a capture or a replay, or None: run the plan as usual."""
        if self.reason is not None:
            return None
        key = tuple((tuple(v.shape), str(v.dtype)) if hasattr(v, "shape") else None for v in feed_values)
        cap = self._sigs.get(key)
        if cap is None:
            if len(self._sigs) >= _MAX_SIGNATURES:
                return None
            cap = self._sigs[key] = _Captured()
        if cap.graph is not None and not self._same_storage(cap):
            log.info("CUDA graphs: a variable's storage was replaced; capturing afresh")
            cap = self._sigs[key] = _Captured()
        if cap.graph is None:
            if cap.runs == 0:
                cap.runs += 1
                return None  # the first run of a signature is plain: compiles, scratch, handles
            return self._capture(cap, feed_values, control)
        return self._replay(cap, feed_values, control)

    # ----------------------------------------------------------------- capture and replay
    def _cupy(self) -> Any:
        import cupy

        if self._stream is None:
            self._stream = cupy.cuda.Stream(non_blocking=True)
            self._pool = cupy.cuda.MemoryPool()
        return cupy

    def _capture(self, cap: _Captured, feed_values: Sequence[Any], control: Any) -> list[Any] | None:
        cupy = self._cupy()
        plan, stream = self.plan, self._stream
        from ...kernels.registry import deferred_checks
        from ...kernels.training import scratch_arrays

        with cupy.cuda.using_allocator(self._pool.malloc), stream:
            stream.wait_event(cupy.cuda.Stream.null.record())
            cap.inputs = [None if v is None else cupy.empty_like(v) for v in feed_values]
            for dst, src in zip(cap.inputs, feed_values):
                if dst is not None:
                    dst[...] = src
            stream.begin_capture()
            try:
                with deferred_checks() as checks:
                    outs = plan.execute(cap.inputs)
            except Exception as e:  # noqa: BLE001  (a kernel that needs the host, a CUDA error)
                try:
                    stream.end_capture()
                except Exception:  # noqa: BLE001  (an invalidated capture ends with an error)
                    pass
                self._decline(f"{type(e).__name__}: {e}")
                return None
            try:
                cap.graph = stream.end_capture()
            except Exception as e:  # noqa: BLE001
                self._decline(f"end of capture: {type(e).__name__}: {e}")
                return None
        # A check a kernel deferred (the range of a label feed) runs on the feed before each launch;
        # one on a value the graph computes cannot, so such a plan is not replayed.
        for arr, check in checks:
            index = next((i for i, a in enumerate(cap.inputs) if a is arr), None)
            if index is None:
                self._decline("a kernel checks a value computed inside the step (only feeds can be checked "
                              "before a launch)")
                return None
            cap.checks.append((index, check))
        cap.outputs = list(outs)
        cap.keep = scratch_arrays()
        cap.storage = self._pointers()
        return self._replay(cap, feed_values, control, copied=True)

    def _replay(self, cap: _Captured, feed_values: Sequence[Any], control: Any, copied: bool = False) -> list[Any]:
        cupy = self._cupy()
        stream = self._stream
        if control is not None:
            control.at(0)
        for index, check in cap.checks:
            check(feed_values[index])  # raises as the kernel would (InvalidArgumentError), before any update
        with stream:
            stream.wait_event(cupy.cuda.Stream.null.record())  # behind work queued on the default stream
            if not copied:
                for dst, src in zip(cap.inputs, feed_values):
                    if dst is not None:
                        dst[...] = src
            cap.graph.launch(stream)
        stream.synchronize()
        cap.launches += 1
        return cap.outputs

    def _decline(self, why: str) -> None:
        self.reason = f"capture failed: {why}"
        self.declined.append(why)
        log.warning("CUDA graphs: %s; the plan runs kernel by kernel", self.reason)

    def _pointers(self) -> dict[str, int]:
        variables = self.plan.session.variables
        return {name: int(variables[name].data.ptr) for name in self._variables if name in variables}

    def _same_storage(self, cap: _Captured) -> bool:
        return self._pointers() == cap.storage


def _key(place: Any) -> tuple:
    return (place.backend, place.index)
