"""ONNX forms of control flow and multi-output ops: case -> If, while -> Loop, scan -> Scan, lstm_cell.

A control-flow node's branches and bodies are kernelflow `Subgraph`s: each becomes an ONNX
body graph (`OnnxBuilder.inline` into a child builder). Values a sub-graph captured (the
node's trailing inputs: weights, closures) are not body inputs in ONNX: the body reads the
outer value by name, as ONNX scoping allows. A multi-output node writes its outputs as
``part(name, i)`` and ``tuple_get`` is the Identity of one of them.

- ``case`` (cond / switch_case): If on the bool predicate, or a chain of If(Equal(index, k))
  for an integer index, the last branch taking every index out of range (as kernelflow).
- ``while``: Loop with trip count ``max_iters`` (none when negative) and the initial
  condition computed before it; the body runs the loop body, then the condition on its result.
- ``scan``: Scan over the elems (``reverse``: both directions reversed, so the stacked
  outputs keep the elems' order); without elems, a Loop of ``length`` trips.
- ``lstm_cell``: Split into the four gates (Keras's order i, f, c, o), Sigmoid / Tanh, Mul, Add.
- ``gather_tree``: a Loop backwards over the steps, GatherElements on the parent pointers.

The whole-sequence ``lstm_sequence`` and ``gru_sequence``: `onnx_recurrent`.

The table is `kernelflow.interop.onnx_ops.CONVERTERS`: a new op is one more ``@_conv`` here.

Contents: the converters above (registered on import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..graph.ir import Aval, Tensor
from .onnx_builder import part
from .onnx_ops import INT64_MAX, INT64_MIN, _conv

if TYPE_CHECKING:
    from .onnx_builder import OnnxBuilder

_SCALAR_BOOL = Aval((), "bool")


@_conv("tuple_get", form="Identity of one output of the multi-output node it reads")
def _tuple_get(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    b.op("Identity", [part(xs[0], int(n.attrs["index"]))], out)


def _loop_heads(c: OnnxBuilder, label: str) -> tuple[str, str, list]:
    """A Loop body's first two inputs (iteration number, condition: scalars) and their ValueInfos."""
    it, keep = c.unique(f"{label}::iter"), c.unique(f"{label}::cond_in")
    return it, keep, [c.value_info(it, Aval((), "int64")), c.value_info(keep, _SCALAR_BOOL)]


def _parts(n: Tensor, out: str) -> list[str]:
    return [part(out, i) for i in range(len(n.aval.parts))]


# --------------------------------------------------------------------------- case -> If
def _branch_graph(b: OnnxBuilder, n: Tensor, k: int, args: list, label: str) -> object:
    """Branch ``k`` of case node ``n`` as an If body (no inputs; it reads ``args`` from the outer scope)."""
    c = b.child()
    outs = c.inline(n.attrs["branches"][k], args, f"{label}/branch{k}")
    return c.graph(f"{label}/branch{k}", [], list(zip(outs, n.aval.parts)))


def _chain_graph(b: OnnxBuilder, n: Tensor, k: int, idx: str, args: list, label: str) -> object:
    """An If body running branch k if idx == k, else the chain from k + 1 (the last branch: itself)."""
    branches = n.attrs["branches"]
    if k == len(branches) - 1:
        return _branch_graph(b, n, k, args, label)
    c = b.child()
    hit = c.op("Equal", [idx, c.const(np.asarray(k, np.int64))])
    outs = c.ops("If", [hit], [None] * len(n.aval.parts), then_branch=_branch_graph(c, n, k, args, label),
                 else_branch=_chain_graph(c, n, k + 1, idx, args, label))
    return c.graph(f"{label}/from{k}", [], list(zip(outs, n.aval.parts)))


@_conv("case", form="If (cond: on the predicate; switch_case: a chain of If(Equal(index, k)), the last "
       "branch for any index out of range); the branches become If bodies reading the captured values "
       "from the outer scope")
def _case(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    branches, args, outs = n.attrs["branches"], xs[1:], _parts(n, out)
    if len(branches) == 1:
        for o, v in zip(outs, b.inline(branches[0], args, f"{n.name}/branch0")):
            b.op("Identity", [v], o)
        return
    if n.inputs[0].dtype == "bool" and len(branches) == 2:
        b.ops("If", [xs[0]], outs, then_branch=_branch_graph(b, n, 1, args, n.name),
              else_branch=_branch_graph(b, n, 0, args, n.name))
        return
    idx = b.cast(xs[0], n.inputs[0].dtype, "int64")
    hit = b.op("Equal", [idx, b.const(np.asarray(0, np.int64))])
    b.ops("If", [hit], outs, then_branch=_branch_graph(b, n, 0, args, n.name),
          else_branch=_chain_graph(b, n, 1, idx, args, n.name))


# --------------------------------------------------------------------------- while -> Loop
def _trip_count(b: OnnxBuilder, x: str, dtype: str) -> str:
    """``x`` as Loop's int64 trip count; a negative one (no bound) becomes INT64_MAX."""
    m = b.cast(x, dtype, "int64")
    return b.op("Where", [b.op("Less", [m, b.const(np.asarray(0, np.int64))]),
                          b.const(np.asarray(INT64_MAX, np.int64)), m])


@_conv("while", form="Loop (trip count max_iters, none when negative; the condition is computed before "
       "the loop and at the end of each body)")
def _while(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    cond, body, nv = n.attrs["cond"], n.attrs["body"], int(n.attrs["n_vars"])
    init, caps = xs[1:1 + nv], xs[1 + nv:]
    cond0 = b.inline(cond, init + caps, f"{n.name}/cond0")[0]
    c = b.child()
    _, _, heads = _loop_heads(c, f"{n.name}/body")
    vars_in = [c.unique(f"{n.name}/body::var{i}") for i in range(nv)]
    new = c.inline(body, vars_in + caps, f"{n.name}/body")
    go = c.inline(cond, new + caps, f"{n.name}/body/cond")[0]
    avals = body.in_avals[:nv]
    g = c.graph(f"{n.name}/body", heads + [c.value_info(v, a) for v, a in zip(vars_in, avals)],
                [(go, _SCALAR_BOOL)] + list(zip(new, body.out_avals)))
    b.ops("Loop", [_trip_count(b, xs[0], n.inputs[0].dtype), cond0, *init], _parts(n, out), body=g)


# --------------------------------------------------------------------------- scan -> Scan / Loop
@_conv("scan", form="Scan over the elems (reverse: scan_input_directions and scan_output_directions 1); "
       "without elems, Loop of `length` trips")
def _scan(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    fn, nc, nx = n.attrs["fn"], int(n.attrs["n_carry"]), int(n.attrs["n_xs"])
    carry, elems, caps = xs[:nc], xs[nc:nc + nx], xs[nc + nx:]
    ny, reverse = len(fn.outputs) - nc, bool(n.attrs["reverse"])
    c = b.child()
    formal = [c.unique(f"{n.name}/fn::arg{i}") for i in range(nc + nx)]
    ins = [c.value_info(v, a) for v, a in zip(formal, fn.in_avals[:nc + nx])]
    outs = c.inline(fn, formal + caps, f"{n.name}/fn")
    results = list(zip(outs, fn.out_avals))
    if nx:
        g = c.graph(f"{n.name}/fn", ins, results)
        dirs = {"scan_input_directions": [1] * nx, **({"scan_output_directions": [1] * ny} if ny else {})}
        b.ops("Scan", carry + elems, _parts(n, out), body=g, num_scan_inputs=nx, **(dirs if reverse else {}))
        return
    _, keep, heads = _loop_heads(c, f"{n.name}/fn")
    g = c.graph(f"{n.name}/fn", heads + ins,
                [(keep, _SCALAR_BOOL)] + results)
    trips = b.const(np.asarray(int(n.attrs["length"]), np.int64))
    parts = _parts(n, out)
    loop_outs = b.ops("Loop", [trips, b.const(np.asarray(True)), *carry],
                      parts[:nc] + ([None] * ny if reverse else parts[nc:]), body=g)
    if reverse:  # a Loop stacks in iteration order; reversed steps stack back to front
        for y, p in zip(loop_outs[nc:], parts[nc:]):
            b.op("Slice", [y, b.ints([-1]), b.ints([INT64_MIN]), b.ints([0]), b.ints([-1])], p)


# --------------------------------------------------------------------------- fused recurrent cells
def _lstm_step(b: OnnxBuilder, z: str, c: str, outs: tuple = (None, None)) -> tuple[str, str]:
    """(h', c') of one LSTM step from pre-activations z (gates i, f, c, o) and the cell state c."""
    i, f, g, o = b.ops("Split", [z], [None] * 4, axis=1, num_outputs=4)
    c2 = b.op("Add", [b.op("Mul", [b.op("Sigmoid", [f]), c]),
                      b.op("Mul", [b.op("Sigmoid", [i]), b.op("Tanh", [g])])], outs[1])
    return b.op("Mul", [b.op("Sigmoid", [o]), b.op("Tanh", [c2])], outs[0]), c2


@_conv("lstm_cell", form="Split(z, 4) into the gates i, f, c, o (Keras's order); c' = Sigmoid(f) * c + "
       "Sigmoid(i) * Tanh(g), h' = Sigmoid(o) * Tanh(c')")
def _lstm_cell(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    _lstm_step(b, xs[0], xs[1], tuple(_parts(n, out)))


# --------------------------------------------------------------------------- gather_tree -> Loop
@_conv("gather_tree", form="Loop over the steps from the last one back (trip count T), each step GatherElements "
       "of its ids and parents at the current parent pointers (a step at or past a row's max length gives the "
       "end token and keeps the pointers), the stacked steps reversed by a Slice; then every token at or after "
       "a beam's first end token (ArgMax of Equal(ids, end) over time) becomes it")
def _gather_tree(b: OnnxBuilder, n: Tensor, xs: list, out: str) -> None:
    step_ids, parents, lengths = xs
    dt = n.dtype
    parents = b.cast(parents, n.inputs[1].dtype, "int64")
    lengths = b.cast(lengths, n.inputs[2].dtype, "int64")
    end = b.const(np.asarray(n.attrs["end_token"], dt))

    def i64(v: int) -> str:
        return b.const(np.asarray(v, np.int64))

    shape = b.op("Shape", [step_ids])
    steps = b.op("Gather", [shape, i64(0)], axis=0)
    beams = b.op("Range", [i64(0), b.op("Gather", [shape, i64(2)], axis=0), i64(1)])
    pointer0 = b.op("Expand", [beams, b.op("Slice", [shape, b.ints([1]), b.ints([3])])])  # (batch, beam): k
    lengths = b.op("Unsqueeze", [b.op("Min", [lengths, steps]), b.ints([1])])  # (batch, 1)
    c = b.child()
    it, keep, heads = _loop_heads(c, f"{n.name}/back")
    ptr = c.unique(f"{n.name}/back::parent")
    t = c.op("Sub", [c.op("Sub", [steps, it]), c.const(np.asarray(1, np.int64))])  # T - 1 - i
    live = c.op("Less", [t, lengths])
    ids_t = c.op("GatherElements", [c.op("Gather", [step_ids, t], axis=0), ptr], axis=1)
    par_t = c.op("GatherElements", [c.op("Gather", [parents, t], axis=0), ptr], axis=1)
    tok = c.op("Where", [live, ids_t, end])
    new_ptr = c.op("Where", [live, par_t, ptr])
    bb = Aval(n.shape[1:], "int64")
    g = c.graph(f"{n.name}/back", heads + [c.value_info(ptr, bb)],
                [(keep, _SCALAR_BOOL), (new_ptr, bb), (tok, Aval(n.shape[1:], dt))])
    _, rev = b.ops("Loop", [steps, b.const(np.asarray(True)), pointer0], [None, None], body=g)
    toks = b.op("Slice", [rev, b.ints([-1]), b.ints([INT64_MIN]), b.ints([0]), b.ints([-1])])  # back in time order
    # at or after the first end token of a beam: t >= ArgMax(is_end) (the first maximum) where any is_end
    is_end = b.cast(b.op("Equal", [toks, end]), "bool", "int32")
    first = b.op("ArgMax", [is_end], axis=0, keepdims=1)
    any_end = b.op("Greater", [b.op("ReduceMax", [is_end, b.ints([0])], keepdims=1), b.const(np.asarray(0, np.int32))])
    times = b.op("Unsqueeze", [b.op("Range", [i64(0), steps, i64(1)]), b.ints([1, 2])])
    ended = b.op("And", [any_end, b.op("GreaterOrEqual", [times, first])])
    b.op("Where", [ended, end, toks], out)
