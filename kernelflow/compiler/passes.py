"""Rewrites of a pruned, scheduled plan: constant folding, CSE, no-op removal, simplification, dead nodes.

A plan is a list of `Tensor` nodes in execution order. The graph's own nodes are never
changed: a node whose inputs change is rebuilt as a new `Tensor` outside the graph (same
name, op, attrs, position), so the graph, its other plans and its clients see nothing.

Values that may be a variable's live storage (a variable, or a view of one) are never the
target of a rewrite that would hand a consumer the live buffer instead of a value taken at
that point: the executor orders only the original readers before in-place updates.

Contents: Rewriter, run_passes, is_storage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..graph.ir import Tensor, Variable
from ..graph.ops import elementwise as E
from ..graph.ops import movement as M
from ..graph.ops import reduce as R
from ..graph.ops import state as S
from ..kernels.registry import get_kernel

FOLD_MAX_ELEMENTS = 1 << 16
"""Folded constants larger than this stay computed at run time (they would bloat the plan)."""

_NO_CSE = {S.placeholder_op, S.variable_op, S.read_variable_op, S.print_op}


def is_storage(n: Tensor, memo: dict[int, bool]) -> bool:
    """True when ``n``'s value may be (a view of) a variable's storage or a constant."""
    key = id(n)
    if key not in memo:
        memo[key] = n.op.alias and (not n.inputs or is_storage(n.inputs[0], memo))
    return memo[key]


def rebuild(n: Tensor, inputs: Sequence[Tensor], control: Sequence[Tensor], op: Any = None,
            attrs: dict | None = None) -> Tensor:
    """A copy of ``n`` outside its graph with other inputs (and optionally another op and attrs)."""
    cls = Variable if isinstance(n, Variable) else Tensor
    return cls(n.graph, n.name, op or n.op, tuple(inputs), tuple(control), n.attrs if attrs is None else attrs,
               n.aval, n.device, n.source, n.index)


def _plain(v: Any) -> bool:
    """An attr value whose repr is its identity: numbers, strings, None, and tuples/lists of them."""
    if v is None or isinstance(v, (bool, int, float, str, np.integer, np.floating)):
        return True
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return False


def _static(shape: tuple) -> bool:
    return all(isinstance(d, int) for d in shape)


def _const_value(n: Tensor) -> np.ndarray | None:
    return n.attrs["value"] if n.op is S.constant_op else None


def _is_scalar_const(n: Tensor, value: float) -> bool:
    v = _const_value(n)
    return v is not None and v.ndim == 0 and v.dtype.kind in "fiu" and v == value


class Rewriter:
    """Applies the passes to one plan.

    Args:
        order: the scheduled plan nodes.
        fed: ids of fed nodes (never rewritten).
        fetches: fetched nodes (never removed; rebuilt ones are mapped in `subst`).
    """

    def __init__(self, order: list[Tensor], fed: set[int], fetches: Sequence[Tensor]):
        self.order = order
        self.fed = fed
        self.fetch_ids = {id(t) for t in fetches}
        self.subst: dict[int, Tensor] = {}
        self.memo: dict[int, bool] = {}
        self._alive: list[Tensor] = []
        self._reps: dict[int, Tensor] = {}
        self.stats = {"folded": 0, "cse": 0, "noop": 0, "simplified": 0, "dead": 0}

    def resolve(self, t: Tensor) -> Tensor:
        while id(t) in self.subst:
            t = self.subst[id(t)]
        return t

    def _walk(self, visit: Callable[[Tensor], Tensor | None]) -> None:
        """Rebuild each node on its resolved inputs, then let ``visit`` replace it (or not)."""
        out = []
        for n in self.order:
            if id(n) in self.fed:
                out.append(n)
                continue
            ins = [self.resolve(i) for i in n.inputs]
            ctl = [self.resolve(i) for i in n.control_inputs]
            cur = n
            if any(a is not b for a, b in zip(ins, n.inputs)) or any(a is not b for a, b in zip(ctl, n.control_inputs)):
                cur = rebuild(n, ins, ctl)
                self._map(n, cur)
                if id(n) in self.fetch_ids:
                    self.fetch_ids.add(id(cur))
            new = visit(cur) if id(cur) not in self.fetch_ids or visit == self._fold else None
            if new is not None and new is not cur:
                self._map(cur, new)
                if id(cur) in self.fetch_ids:
                    self.fetch_ids.add(id(new))
                if new.index == cur.index and new.name == cur.name:  # a replacement in place (folding)
                    out.append(new)
                continue
            out.append(cur)
        self.order = out

    def _map(self, old: Tensor, new: Tensor) -> None:
        self.subst[id(old)] = new
        self._alive += (old, new)  # ids key `subst`: no node may die and lend its id to another

    # ----------------------------------------------------------------- passes
    def _fold(self, n: Tensor) -> Tensor | None:
        op = n.op
        if not n.inputs or op.stateful or op.mutates or n.control_inputs or n.dtype is None:
            return None
        if op is M.size_op and _static(n.inputs[0].shape):  # known from the static shape alone
            self.stats["folded"] += 1
            value = np.array(int(np.prod(n.inputs[0].shape, dtype=np.int64)), dtype=n.dtype)
            return rebuild(n, (), (), op=S.constant_op, attrs={"value": value})
        values = [_const_value(i) for i in n.inputs]
        if any(v is None for v in values):
            return None
        try:
            entry = get_kernel(op, "numpy")
            if entry.needs_ctx:
                return None
            with np.errstate(all="ignore"):
                out = np.asarray(entry.bind(np, n.attrs)(*values))
        except Exception:  # folding is an optimisation: the run reports the error as it would unfused
            return None
        if out.dtype.name != n.dtype or out.size > FOLD_MAX_ELEMENTS or len(out.shape) != len(n.shape) or any(
                s is not None and s != d for s, d in zip(n.shape, out.shape)):
            return None
        self.stats["folded"] += 1
        return rebuild(n, (), (), op=S.constant_op, attrs={"value": np.array(out, copy=True)})

    def _cse_key(self, n: Tensor) -> tuple | None:
        op = n.op
        if op in _NO_CSE or op.stateful or op.mutates or n.control_inputs or is_storage(n, self.memo) and n.inputs:
            return None
        if op is S.constant_op:
            v = n.attrs["value"]
            if v.size > 64:
                return None
            return (op, v.dtype.str, v.shape, v.tobytes(), n.device)
        if not all(_plain(v) for v in n.attrs.values()):
            return None  # e.g. a control-flow op's sub-graphs: no reliable equality, never merged
        return (op, tuple(id(i) for i in n.inputs), repr(sorted(n.attrs.items())), n.device)

    def _simplify(self, n: Tensor) -> Tensor | None:
        op, ins = n.op, n.inputs
        # Ops whose kernels return their input itself: dropping them changes nothing at all.
        if op in (S.identity_op, S.stop_gradient_op):
            self.stats["noop"] += 1
            return ins[0]
        if op is R.sum_to_op and (ins[0].shape == n.shape and _static(n.shape)
                                  or self._shape_rep(ins[0]) is self._shape_rep(ins[1])):
            self.stats["noop"] += 1
            return ins[0]
        # The rest would return a fresh value: keep them when the input is live storage.
        if op is E.cast_op and ins[0].dtype == n.dtype and not is_storage(ins[0], self.memo):
            self.stats["noop"] += 1
            return ins[0]
        if op is E.negative_op and ins[0].op is E.negative_op and not is_storage(ins[0].inputs[0], self.memo):
            self.stats["simplified"] += 1
            return ins[0].inputs[0]
        if len(ins) == 2 and op in _IDENTITY_RIGHT:
            for pos, unit in ((0, _IDENTITY_RIGHT.get(op)), (1, _IDENTITY_LEFT.get(op))):
                if unit is None:
                    continue
                x, c = (ins[0], ins[1]) if pos == 0 else (ins[1], ins[0])
                if _is_scalar_const(c, unit) and x.dtype == n.dtype and x.shape == n.shape and _static(n.shape) \
                        and not is_storage(x, self.memo):
                    self.stats["simplified"] += 1
                    return x
        return None

    def _shape_rep(self, n: Tensor) -> Tensor:
        """A node with the same run-time shape as ``n`` (for shapes with unknown dims): follows
        elementwise ops whose output has one input's shape, and ``sum_to`` (its target's shape)."""
        key = id(n)
        rep = self._reps.get(key)
        if rep is None:
            rep = n
            src = _same_shape_input(n)
            if src is not None:
                rep = self._shape_rep(src)
            elif n.op.name in _ELEMENTWISE_NAMES and n.inputs:
                reps = {id(self._shape_rep(i)) for i in n.inputs}  # all inputs share one run-time shape
                if len(reps) == 1:
                    rep = self._shape_rep(n.inputs[0])
            self._reps[key] = rep
        return rep

    def run(self) -> None:
        self._walk(self._fold)
        seen: dict[tuple, Tensor] = {}

        def cse(n: Tensor) -> Tensor | None:
            key = self._cse_key(n)
            if key is None:
                return None
            first = seen.get(key)
            if first is None:
                seen[key] = n
                return None
            self.stats["cse"] += 1
            return first

        self._walk(cse)
        self._walk(self._simplify)
        self._walk(lambda n: None)  # settle inputs rebuilt by the last pass
        self._drop_dead()

    def _drop_dead(self) -> None:
        live: set[int] = set()
        by_id = {id(n): n for n in self.order}
        stack = [by_id[i] for i in {self.resolve_id(f) for f in self.fetch_ids} if i in by_id]
        while stack:
            t = stack.pop()
            if id(t) in live:
                continue
            live.add(id(t))
            stack.extend(t.inputs)
            stack.extend(t.control_inputs)
        keep = [n for n in self.order if id(n) in live or id(n) in self.fed]
        self.stats["dead"] += len(self.order) - len(keep)
        self.order = keep

    def resolve_id(self, i: int) -> int:
        while i in self.subst:
            i = id(self.subst[i])
        return i


def _fits_inside(small: tuple, big: tuple) -> bool:
    """True when broadcasting ``small`` against ``big`` gives ``big``'s shape, whatever its unknown dims are."""
    if len(small) > len(big):
        return False
    return all(d == 1 or (d is not None and d == b) for d, b in zip(small, big[len(big) - len(small):]))


def _same_shape_input(n: Tensor) -> Tensor | None:
    """An input whose run-time shape ``n``'s output has, or None when that is not certain."""
    op = n.op
    if op is R.sum_to_op:
        return n.inputs[1]
    if op.name in ("max_pool2d_grad", "identity", "stop_gradient", "cast") or (
            len(n.inputs) == 1 and op.name in _ELEMENTWISE_NAMES):
        return n.inputs[0]
    if op.name in _ELEMENTWISE_NAMES and len(n.inputs) > 1:
        for i, x in enumerate(n.inputs):
            if all(_fits_inside(y.shape, x.shape) for j, y in enumerate(n.inputs) if j != i):
                return x
    return None


_ELEMENTWISE_NAMES = {
    "add", "subtract", "multiply", "divide", "pow", "negative", "abs", "exp", "log", "log1p", "sqrt", "rsqrt",
    "square", "sin", "cos", "tanh", "sigmoid", "relu", "relu_grad", "maximum", "minimum", "equal", "not_equal",
    "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or", "logical_not", "isfinite",
    "where", "sign", "gelu", "erf", "floor_divide", "mod"}


_IDENTITY_RIGHT = {E.add_op: 0, E.subtract_op: 0, E.multiply_op: 1, E.divide_op: 1}
_IDENTITY_LEFT = {E.add_op: 0, E.multiply_op: 1}


def run_passes(order: list[Tensor], fed: set[int], fetches: Sequence[Tensor]) -> Rewriter:
    """Fold, CSE, simplify and prune ``order``; the `Rewriter` holds the new order and the substitutions."""
    rw = Rewriter(order, fed, fetches)
    rw.run()
    return rw
