"""CUDA graph capture of GPU plans (issue #16): a step replayed as a few graph launches.

Opt-in (``kf.connect(..., cuda_graphs=True)``, ``kernelflow serve --cuda-graphs`` or
``$KERNELFLOW_CUDA_GRAPHS=1``). A plan qualifies when every node and feed is on one GPU and no
node draws random numbers, runs a control-flow op (its host decides the branch or the trip
count), or prints.

Piecewise: CuPy refuses cuBLAS calls during a capture (NotImplementedError "calling cuBLAS API
during stream capture is currently unsupported"), so the plan's steps are split at the nodes
whose kernels call cuBLAS (`cublas_ops`: matrix products, einsum, the convolutions, the LSTM/GRU
sequence ops) into pieces (`plan_segments`): each run of two or more kernels between them is
captured as its own graph, and the cuBLAS nodes run kernel by kernel between the launches, on
the same private stream. An eager node's result is copied into the buffer the next graphs
captured (`pinned_slots`). A node whose capture raises anyway (another library call CuPy
refuses, a kernel that needs the host) is run eagerly from then on: it is listed in
``CudaGraphs.refused`` and the next run of that signature captures the new pieces.

Per feed-shape signature, the first run is a plain one (kernels compile, scratch buffers and
cuBLAS handles are made), the second captures each piece on a private stream into a private
memory pool and launches it at once, and later runs copy the feeds into the captured input
buffers and launch the pieces in order. ``CudaGraphs.segments`` records the last pieces made:
``(kind, first step, end step)``, kind "graph" or "eager".

Safety: every array a graph reads or writes stays allocated while the graph lives (the private
pool is used by nothing else; the scratch buffers of the capturing thread are held); each
replay first checks that every variable still has the storage the graph captured (a `load` or
`assign` that replaced it makes the next run capture afresh) and waits for work queued on the
default stream. Label checks a capture cannot do (they read a feed back) are deferred and run on
the feeds before any launch. A capture that fails in a way no node can be blamed for is logged
in ``CudaGraphs.declined`` and the plan runs kernel by kernel from then on.

Contents: CUBLAS_NAMES, calls_cublas, cublas_ops, kernel_count, plan_segments, pinned_slots, CudaGraphs.
"""

from __future__ import annotations

import contextlib
import dis
import logging
import types
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ...errors import KernelflowError
from ...graph.ops import control_flow as cf
from ...graph.ops import random as rnd
from ...graph.ops import summary as summ
from ...graph.ops.state import group_op, no_op_op, print_op, variable_op

if TYPE_CHECKING:
    from .executor import Plan

log = logging.getLogger("kernelflow.cuda_graphs")

_MAX_SIGNATURES = 8  # captured plans per plan (one per feed-shape signature)
_MAX_REFUSED = 16  # nodes made eager after a refused capture, before the plan is declined
MIN_KERNELS = 2  # a piece with fewer kernels runs eagerly: one launch either way
# Ops a replay cannot repeat: the host picks a branch or a trip count, draws a seed, or writes.
_HOST_OPS = {cf.case_op, cf.while_op, cf.scan_op, cf.loop_grad_op, print_op, summ.summary_op,
             rnd.random_normal_op, rnd.random_normal_like_op, rnd.random_uniform_op, rnd.random_uniform_like_op,
             rnd.random_shuffle_op, rnd.random_permutation_op}
_NO_KERNEL = {variable_op, group_op, no_op_op}

CUBLAS_NAMES = frozenset({"matmul", "dot", "vdot", "inner", "tensordot", "einsum", "kron", "linalg"})
"""Array-module attributes that run cuBLAS (or cuSOLVER) under CuPy."""


# --------------------------------------------------------------------------- pure planning
def calls_cublas(fn: Any, _seen: set | None = None) -> bool:
    """True when function ``fn`` (or a kernelflow function it calls by a global name, or a function
    nested in it) reads an attribute or global in `CUBLAS_NAMES`: derived from the code objects,
    so a new kernel that multiplies matrices is found without being listed."""
    seen = _seen if _seen is not None else set()
    code = getattr(fn, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    glb = getattr(fn, "__globals__", {})
    stack = [code]
    while stack:
        c = stack.pop()
        if CUBLAS_NAMES.intersection(c.co_names) or _has_matmul_operator(c):
            return True
        stack += [k for k in c.co_consts if isinstance(k, types.CodeType)]
        for name in c.co_names:
            g = glb.get(name)
            if isinstance(g, types.FunctionType) and g.__module__.startswith("kernelflow.") \
                    and calls_cublas(g, seen):
                return True
    return False


def _has_matmul_operator(code: types.CodeType) -> bool:
    """Whether ``code`` uses the ``@`` operator (an instruction, not a name)."""
    return any(ins.opname == "BINARY_OP" and ins.argrepr in ("@", "@=")
               or ins.opname in ("BINARY_MATRIX_MULTIPLY", "INPLACE_MATRIX_MULTIPLY")
               for ins in dis.get_instructions(code))


_cublas_ops: frozenset[str] | None = None


def cublas_ops() -> frozenset[str]:
    """Names of the ops whose GPU kernel (the CuPy override, else the generic one) calls cuBLAS."""
    global _cublas_ops
    if _cublas_ops is None:
        from ...kernels.registry import _KERNELS, _load_all

        _load_all()
        names = set()
        for op, per in _KERNELS.items():
            entry = per.get("cupy") or per.get("any")
            if entry is None:
                continue
            if entry.xp_attr in CUBLAS_NAMES or entry.fn is not None and calls_cublas(entry.fn):
                names.add(op.name)
        _cublas_ops = frozenset(names)
    return _cublas_ops


def kernel_count(op: Any) -> int:
    """Kernels a node of ``op`` launches, roughly: 0 for a variable, a group, a no-op or a view."""
    if op in _NO_KERNEL or op.alias and not op.mutates:
        return 0
    return 1


def plan_segments(eager: Sequence[bool], kernels: Sequence[int],
                  min_kernels: int = MIN_KERNELS) -> list[tuple[str, int, int]]:
    """The pieces of a step list: ``(kind, start, stop)`` over steps ``start..stop-1``.

    A maximal run of steps not in ``eager`` with at least ``min_kernels`` kernels (``kernels``: per
    step) is a "graph" piece; everything else is "eager", adjacent eager steps in one piece.
    """
    out: list[tuple[str, int, int]] = []

    def add(kind: str, lo: int, hi: int) -> None:
        if lo == hi:
            return
        if out and out[-1][0] == kind == "eager":
            out[-1] = ("eager", out[-1][1], hi)
        else:
            out.append((kind, lo, hi))

    k, n = 0, len(eager)
    while k < n:
        if eager[k]:
            add("eager", k, k + 1)
            k += 1
            continue
        j = k
        while j < n and not eager[j]:
            j += 1
        add("graph" if sum(kernels[k:j]) >= min_kernels else "eager", k, j)
        k = j
    return out


def pinned_slots(steps: Sequence[tuple], segments: Sequence[tuple[str, int, int]],
                 fetch_slots: Sequence[int] = ()) -> set[int]:
    """Slots an eager piece writes that are read after a graph piece (by a later piece, or fetched).

    At each replay such a result is copied into the buffer it had when captured: a graph reads
    that address, and a fresh array could lie in memory a later graph uses as scratch (the
    private pool gives out what a capture freed). ``steps``: the plan's ``(fn, ins, out, free)``.
    """
    made: dict[int, int] = {}  # slot -> the eager piece that wrote it
    pinned: set[int] = set()
    for p, (kind, lo, hi) in enumerate(segments):
        for k in range(lo, hi):
            ins, out = steps[k][1], steps[k][2]
            pinned.update(i for i in ins if made.get(i, p) != p)
            if kind == "eager":
                made[out] = p
    graphs = [p for p, seg in enumerate(segments) if seg[0] == "graph"]
    pinned.update(s for s in fetch_slots if s in made and any(g > made[s] for g in graphs))
    return pinned


# --------------------------------------------------------------------------- the device
class _CupyDevice:
    """The private stream and memory pool the graphs are captured on and launched from."""

    def __init__(self) -> None:
        import cupy

        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.pool = cupy.cuda.MemoryPool()

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Allocations from the private pool, work on the private stream behind the default one's."""
        cupy = self.cupy
        with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
            self.stream.wait_event(cupy.cuda.Stream.null.record())
            yield

    def empty_like(self, v: Any) -> Any:
        return self.cupy.empty_like(v)

    def begin(self) -> None:
        self.stream.begin_capture()

    def end(self) -> Any:
        return self.stream.end_capture()

    def abort(self) -> None:
        try:
            self.stream.end_capture()
        except Exception:  # noqa: BLE001  (an invalidated capture ends with an error)
            pass

    def call(self, fn: Callable, args: list, node: Any) -> Any:
        """A kernel called while capturing (``node``: its plan node)."""
        return fn(*args)

    def launch(self, graph: Any) -> None:
        graph.launch(self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()


class _Piece:
    """One piece of a captured plan: a graph and the slots it leaves filled, or eager steps."""

    __slots__ = ("kind", "lo", "hi", "graph", "outs")

    def __init__(self, kind: str, lo: int, hi: int):
        self.kind, self.lo, self.hi = kind, lo, hi
        self.graph: Any = None
        self.outs: list[tuple[int, Any]] = []  # (slot, array the graph writes) read after the piece


class _Captured:
    """One signature's pieces: its inputs, outputs and everything it must keep alive."""

    def __init__(self, runs: int = 0) -> None:
        self.runs = runs  # plain runs so far (the first run of a signature is plain)
        self.pieces: list[_Piece] | None = None  # None: not captured
        self.inputs: list[Any] = []
        self.pinned: dict[int, Any] = {}  # slot -> buffer the graphs read an eager result from
        self.keep: list[Any] = []
        self.storage: dict[str, int] = {}  # variable name -> data pointer the graphs captured
        self.checks: list[tuple[int, Any]] = []  # (feed index, check) run on the feeds before each launch


class CudaGraphs:
    """The CUDA graphs of one plan (built by `Plan` when the runtime enables them).

    Args:
        plan: the plan.
        device: the stream, pool and capture calls (default: CuPy's; tests pass a stand-in).
    """

    def __init__(self, plan: Plan, device: Any = None):
        self.plan = plan
        self._device = device
        self.reason = self._ineligible(plan, gpu=device is None)  # None: the plan may be captured
        self.declined: list[str] = []  # why captures failed
        self.refused: list[str] = []  # nodes made eager because their capture raised
        self.segments: list[tuple[str, int, int]] = []  # the last pieces made
        self.launches = 0  # runs served by graphs (captured or replayed), all signatures and captures
        self.graph_launches = 0  # graphs launched, all pieces
        self._sigs: dict[tuple, _Captured] = {}
        self._variables = [n.name for n in plan.step_nodes if n.op is variable_op]
        cublas = cublas_ops() if self.reason is None else frozenset()
        self._eager = [n.op.name in cublas for n in plan.step_nodes]
        self._kernels = [kernel_count(n.op) for n in plan.step_nodes]
        if self.reason:
            log.info("CUDA graphs: plan of %d kernels not captured: %s", len(plan.steps), self.reason)

    @staticmethod
    def _ineligible(plan: Plan, gpu: bool = True) -> str | None:
        places = set()
        for t in plan.feeds:
            places.add(_key(plan.session.placement(t)))
        for n in plan.step_nodes:
            places.add(_key(plan.session.placement(n)))
            if n.op in _HOST_OPS:
                return f"node '{n.name}' ({n.op.name}) needs the host during the step"
        if gpu and (len(places) != 1 or next(iter(places))[0] != "cupy"):
            return "not every node and feed is on one GPU"
        if not plan.steps:
            return "no kernels"
        return None

    def eager_nodes(self) -> list[str]:
        """The nodes that run between the graphs (cuBLAS callers and refused captures)."""
        return [n.name for n, e in zip(self.plan.step_nodes, self._eager) if e]

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
        if cap.pieces is not None and not self._same_storage(cap):
            log.info("CUDA graphs: a variable's storage was replaced; capturing afresh")
            cap = self._sigs[key] = _Captured()
        if cap.pieces is None:
            if cap.runs == 0:
                cap.runs += 1
                return None  # the first run of a signature is plain: compiles, scratch, handles
            return self._capture(key, cap, feed_values, control)
        return self._replay(cap, feed_values, control)

    # ----------------------------------------------------------------- capture
    def _dev(self) -> Any:
        if self._device is None:
            self._device = _CupyDevice()
        return self._device

    def _capture(self, key: tuple, cap: _Captured, feed_values: Sequence[Any], control: Any) -> list[Any] | None:
        plan, dev = self.plan, self._dev()
        segs = plan_segments(self._eager, self._kernels)
        self.segments = segs
        if not any(kind == "graph" for kind, _, _ in segs):
            self._decline(f"no run of {MIN_KERNELS} or more kernels between the cuBLAS calls")
            return None
        from ...kernels.registry import deferred_checks
        from ...kernels.training import scratch_arrays

        pinned = pinned_slots(plan.steps, segs, plan.fetch_slots)
        steps, nodes = plan.steps, plan.step_nodes
        pieces: list[_Piece] = []
        with dev.context():
            cap.inputs = [None if v is None else dev.empty_like(v) for v in feed_values]
            for dst, src in zip(cap.inputs, feed_values):
                if dst is not None:
                    dst[...] = src
            vals = self._start(cap.inputs)
            for kind, lo, hi in segs:
                piece = _Piece(kind, lo, hi)
                if kind == "eager":
                    self._eagerly(vals, lo, hi, control)
                    for k in range(lo, hi):
                        if steps[k][2] in pinned:
                            cap.pinned[steps[k][2]] = vals[steps[k][2]]
                    pieces.append(piece)
                    continue
                if control is not None:
                    control.at(lo)
                saved = vals.copy()
                k = lo
                dev.begin()
                try:
                    with deferred_checks() as checks:
                        for k in range(lo, hi):
                            fn, ins, out, free = steps[k]
                            vals[out] = dev.call(fn, [vals[i] for i in ins], nodes[k])
                            for f in free:
                                vals[f] = None
                except Exception as e:  # noqa: BLE001  (cuBLAS, a kernel that needs the host, a CUDA error)
                    dev.abort()
                    self._refuse(k, e)
                    return self._abandon(key, vals_from=saved, lo=lo, control=control)
                try:
                    piece.graph = dev.end()
                except Exception as e:  # noqa: BLE001  (an invalidated capture: no node to blame)
                    self._decline(f"end of capture: {type(e).__name__}: {e}")
                    return self._abandon(key, vals_from=saved, lo=lo, control=control)
                # A check a kernel deferred (the range of a label feed) runs on the feed before each
                # launch; one on a value the graph computes cannot, so such a plan is not replayed.
                for arr, check in checks:
                    index = next((i for i, a in enumerate(cap.inputs) if a is arr), None)
                    if index is None:
                        self._decline("a kernel checks a value computed inside the step (only feeds can be "
                                      "checked before a launch)")
                        return self._abandon(key, vals_from=saved, lo=lo, control=control)
                    cap.checks.append((index, check))
                    try:
                        check(feed_values[index])
                    except Exception:
                        self._sigs[key] = _Captured(runs=cap.runs)
                        raise
                piece.outs = [(s, vals[s]) for s in {steps[j][2] for j in range(lo, hi)} if vals[s] is not None]
                dev.launch(piece.graph)
                self.graph_launches += 1
                pieces.append(piece)
            dev.synchronize()
        cap.pieces = pieces
        cap.keep = scratch_arrays() + [a for p in pieces for _, a in p.outs]
        cap.storage = self._pointers()
        self.launches += 1
        return [vals[s] for s in plan.fetch_slots]

    def _abandon(self, key: tuple, vals_from: list, lo: int, control: Any) -> list[Any]:
        """A piece could not be captured: this run goes on kernel by kernel from its first step (the
        pieces before it have run), and the next run of the signature captures afresh."""
        cap = self._sigs.get(key)
        if cap is not None:
            self._sigs[key] = _Captured(runs=cap.runs)
        self._eagerly(vals_from, lo, len(self.plan.steps), control)
        self._dev().synchronize()
        return [vals_from[s] for s in self.plan.fetch_slots]

    def _refuse(self, k: int, e: Exception) -> None:
        node = self.plan.step_nodes[k]
        why = f"{node.name} ({node.op.name}): {type(e).__name__}: {e}"
        self._eager[k] = True
        self.refused.append(why)
        log.warning("CUDA graphs: capture refused at %s; that node runs between the graphs from now on", why)
        if len(self.refused) > _MAX_REFUSED:
            self._decline(f"{len(self.refused)} nodes refused a capture (last: {why})")

    # ----------------------------------------------------------------- replay
    def _replay(self, cap: _Captured, feed_values: Sequence[Any], control: Any) -> list[Any]:
        dev = self._dev()
        if control is not None:
            control.at(0)
        for index, check in cap.checks:
            check(feed_values[index])  # raises as the kernel would (InvalidArgumentError), before any update
        steps = self.plan.steps
        with dev.context():
            for dst, src in zip(cap.inputs, feed_values):
                if dst is not None:
                    dst[...] = src
            vals = self._start(cap.inputs)
            for piece in cap.pieces or ():
                if piece.kind == "eager":
                    self._eagerly(vals, piece.lo, piece.hi, control)
                    for k in range(piece.lo, piece.hi):
                        out = steps[k][2]
                        buf = cap.pinned.get(out)
                        if buf is not None and vals[out] is not buf:
                            buf[...] = vals[out]  # where the next graphs read it
                            vals[out] = buf
                    continue
                if control is not None:
                    control.at(piece.lo)
                dev.launch(piece.graph)
                self.graph_launches += 1
                for s, arr in piece.outs:
                    vals[s] = arr
            dev.synchronize()
        self.launches += 1
        return [vals[s] for s in self.plan.fetch_slots]

    # ----------------------------------------------------------------- helpers
    def _start(self, inputs: list) -> list:
        vals = self.plan.template.copy()
        for s, v in zip(self.plan.feed_slots, inputs):
            vals[s] = v
        return vals

    def _eagerly(self, vals: list, lo: int, hi: int, control: Any) -> None:
        """Steps ``lo..hi-1`` kernel by kernel (on the current stream), errors named as `Plan.execute` names them."""
        plan = self.plan
        k = lo
        try:
            for k in range(lo, hi):
                if control is not None:
                    control.at(k)
                fn, ins, out, free = plan.steps[k]
                vals[out] = fn(*[vals[i] for i in ins])
                for f in free:
                    vals[f] = None
        except KernelflowError as e:
            plan.step_error(e, k, vals)
            raise
        except Exception as e:
            raise plan.step_error(e, k, vals) from e

    def _decline(self, why: str) -> None:
        self.reason = f"capture failed: {why}"
        self.declined.append(why)
        log.warning("CUDA graphs: %s; the plan runs kernel by kernel", self.reason)

    def _pointers(self) -> dict[str, int]:
        variables = self.plan.session.variables
        return {name: _address(variables[name]) for name in self._variables if name in variables}

    def _same_storage(self, cap: _Captured) -> bool:
        return self._pointers() == cap.storage


def _address(a: Any) -> int:
    data = getattr(a, "data", None)
    ptr = getattr(data, "ptr", None)
    return int(ptr) if ptr is not None else int(a.__array_interface__["data"][0])


def _key(place: Any) -> tuple:
    return (place.backend, place.index)
