"""Linear algebra: matmul (batched, broadcasting) and einsum."""

from __future__ import annotations

import string
from typing import Any

import numpy as np

from ...errors import InvalidArgumentError, ShapeError
from ..ir import Tensor
from ..registry import REQUIRED, define_op
from ..shapes import FLOATING, NUMERIC, broadcast_shapes, format_shape, promote

__all__ = ["matmul", "einsum"]


# --------------------------------------------------------------------------- matmul
def _matmul_shape(x: Any, y: Any) -> tuple:
    if x.ndim == 0 or y.ndim == 0:
        raise ShapeError(f"matmul: operands must have at least 1 dim; got x.shape={format_shape(x.shape)}, "
                         f"y.shape={format_shape(y.shape)}")
    xs = (1,) + x.shape if x.ndim == 1 else x.shape
    ys = y.shape + (1,) if y.ndim == 1 else y.shape
    k1, k2 = xs[-1], ys[-2]
    if k1 is not None and k2 is not None and k1 != k2:
        raise ShapeError(f"matmul: inner dimensions must match; got x.shape={format_shape(x.shape)}, "
                         f"y.shape={format_shape(y.shape)}")
    batch = broadcast_shapes("matmul", xs[:-2], ys[:-2])
    out = batch + (xs[-2], ys[-1])
    if x.ndim == 1:
        out = out[:-2] + out[-1:]
    if y.ndim == 1:
        out = out[:-1]
    return out


def _matmul_dtype(x: Any, y: Any) -> str:
    for a in (x, y):
        if a.dtype not in NUMERIC:
            raise InvalidArgumentError(f"matmul: expected numeric dtypes; got {a.dtype}")
    return promote("matmul", x.dtype, y.dtype)


def _matmul_vjp(g: Tensor, out: Tensor, x: Tensor, y: Tensor) -> tuple:
    from .movement import expand_dims, squeeze, transpose

    def swap(t: Tensor) -> Tensor:
        return transpose(t, tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2))

    # Vectors are lifted to matrices ((k,) -> (1, k) for x, (k, 1) for y) and g gets the
    # matching size-1 dims back; the lifted dim is squeezed off each cotangent, and autodiff
    # sums away any batch dims a vector operand was broadcast over.
    x2 = expand_dims(x, 0) if x.ndim == 1 else x
    y2 = expand_dims(y, -1) if y.ndim == 1 else y
    if y.ndim == 1:
        g = expand_dims(g, -1)
    if x.ndim == 1:
        g = expand_dims(g, -2)
    gx, gy = matmul(g, swap(y2)), matmul(swap(x2), g)
    if x.ndim == 1:
        gx = squeeze(gx, -2)
    if y.ndim == 1:
        gy = squeeze(gy, -1)
    return gx, gy


matmul_op = define_op("matmul", ("x", "y"), shape_rule=_matmul_shape, dtype_rule=_matmul_dtype, vjp=_matmul_vjp)


def matmul(x: Any, y: Any, name: str | None = None) -> Tensor:
    """Matrix product with numpy's ``@`` semantics (batched and broadcasting).

    Args:
        x: ``(..., n, k)`` numeric tensor, or a ``(k,)`` vector.
        y: ``(..., k, m)`` numeric tensor, or a ``(k,)`` vector.
        name: optional node name.

    Returns:
        ``(..., n, m)`` with the batch dims broadcast; a vector operand's dim is dropped.

    Raises:
        ShapeError: for 0-d operands, inner dims that differ, or batch dims that do not broadcast.
    """
    return matmul_op.bind(x, y, name=name)


# --------------------------------------------------------------------------- einsum
_LETTERS = string.ascii_letters


def _parse_term(subscripts: str, term: str, what: str) -> tuple[list[str], bool]:
    """Letters of one term and whether it has an ellipsis (whose place is marked by ``"..."``)."""
    labels: list[str] = []
    has_ellipsis = False
    rest = term
    while rest:
        if rest.startswith("..."):
            if has_ellipsis:
                raise ShapeError(f"einsum: {what} has more than one '...'; got subscripts={subscripts!r}")
            has_ellipsis = True
            labels.append("...")
            rest = rest[3:]
            continue
        c = rest[0]
        if c not in _LETTERS:
            raise ShapeError(f"einsum: invalid character {c!r} in {what}; subscripts use letters a-z, A-Z, "
                             f"',', '->' and '...'; got subscripts={subscripts!r}")
        if c in labels:
            raise ShapeError(f"einsum: index {c!r} repeats in {what} (diagonals are not supported); "
                             f"got subscripts={subscripts!r}")
        labels.append(c)
        rest = rest[1:]
    return labels, has_ellipsis


def _parse_einsum(subscripts: Any, avals: list[Any]) -> tuple[list[list[str]], list[str], dict[str, int | None]]:
    """Explicit per-operand labels, output labels and the size of each label.

    An ellipsis becomes letters unused elsewhere, right-aligned across operands as in
    broadcasting; implicit mode (no ``->``) outputs the ellipsis dims, then the labels used
    exactly once, sorted.

    Raises:
        ShapeError: for malformed subscripts or operands whose dims do not fit them.
    """
    if not isinstance(subscripts, str):
        raise InvalidArgumentError(f"einsum: subscripts must be a string; got {subscripts!r}")
    spec = subscripts.replace(" ", "")
    if spec.count("->") > 1:
        raise ShapeError(f"einsum: at most one '->' is allowed; got subscripts={subscripts!r}")
    lhs, arrow, rhs = spec.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(avals):
        raise ShapeError(f"einsum: subscripts name {len(terms)} operand(s) but {len(avals)} were given; "
                         f"got subscripts={subscripts!r}")
    parsed = [_parse_term(subscripts, t, f"operand {i} ({t!r})") for i, t in enumerate(terms)]
    out_parsed = _parse_term(subscripts, rhs, f"the output ({rhs!r})") if arrow else None

    named = {c for labels, _ in parsed for c in labels if c != "..."}
    if out_parsed is not None:
        named |= {c for c in out_parsed[0] if c != "..."}
    free = [c for c in _LETTERS if c not in named]
    ell_ranks = []
    for i, ((labels, has_ell), aval) in enumerate(zip(parsed, avals)):
        n = len(labels) - has_ell
        if (n > aval.ndim) or (not has_ell and n != aval.ndim):
            raise ShapeError(f"einsum: operand {i} has rank {aval.ndim} but its subscripts {terms[i]!r} name "
                             f"{n} dims; got subscripts={subscripts!r}, shape={format_shape(aval.shape)}")
        ell_ranks.append(aval.ndim - n if has_ell else 0)
    n_ell = max(ell_ranks, default=0)
    if n_ell > len(free):
        raise ShapeError(f"einsum: too many dims for 52 index letters; got subscripts={subscripts!r}")
    ell = free[:n_ell]

    ins: list[list[str]] = []
    for (labels, _), e in zip(parsed, ell_ranks):
        expanded: list[str] = []
        for c in labels:
            expanded.extend(ell[n_ell - e:] if c == "..." else [c])
        ins.append(expanded)

    counts: dict[str, int] = {}
    for labels in ins:
        for c in labels:
            counts[c] = counts.get(c, 0) + 1
    if out_parsed is None:
        out = ell + sorted(c for c in counts if counts[c] == 1 and c not in ell)
    else:
        out_labels, out_ell = out_parsed
        if n_ell and not out_ell:
            raise ShapeError(f"einsum: the output needs '...' because the operands' '...' cover {n_ell} dim(s); "
                             f"got subscripts={subscripts!r}")
        out = []
        for c in out_labels:
            if c == "...":
                out.extend(ell)
            elif c not in counts:
                raise ShapeError(f"einsum: output index {c!r} appears in no operand; got subscripts={subscripts!r}")
            else:
                out.append(c)

    sizes: dict[str, int | None] = {}
    where: dict[str, tuple[int, int | None]] = {}
    for i, (labels, aval) in enumerate(zip(ins, avals)):
        for c, d in zip(labels, aval.shape):
            if c not in sizes:
                sizes[c], where[c] = d, (i, d)
                continue
            have = sizes[c]
            if d is not None and have is not None and d != have and 1 not in (d, have):
                j, dj = where[c]
                raise ShapeError(f"einsum: index {c!r} has size {dj} in operand {j} but {d} in operand {i}; "
                                 f"got subscripts={subscripts!r}, shapes="
                                 + ", ".join(format_shape(a.shape) for a in avals))
            # Size-1 dims broadcast, as numpy's einsum allows; unknown dims stay unknown.
            if have == 1 or (have is None and d not in (None, 1)):
                sizes[c], where[c] = d, (i, d)
    return ins, out, sizes


def _einsum_shape(*operands: Any, subscripts: str) -> tuple:
    _, out, sizes = _parse_einsum(subscripts, list(operands))
    return tuple(sizes[c] for c in out)


def _einsum_dtype(*operands: Any, subscripts: str) -> str:
    for i, a in enumerate(operands):
        if a.dtype not in NUMERIC:
            raise InvalidArgumentError(f"einsum: expected numeric dtypes; got {a.dtype} for operand {i}")
    return promote("einsum", *[a.dtype for a in operands])


def _einsum_vjp(g: Tensor, out: Tensor, *operands: Tensor, subscripts: str) -> tuple:
    from .movement import broadcast_like, expand_dims

    ins, out_labels, _ = _parse_einsum(subscripts, [t.aval for t in operands])
    cts: list[Tensor | None] = []
    for i, x in enumerate(operands):
        if x.dtype not in FLOATING:
            cts.append(None)
            continue
        others = [j for j in range(len(operands)) if j != i]
        # The cotangent of operand i contracts g with every other operand. A label of operand i
        # found nowhere else was summed out: the einsum cannot produce it, so it is put back
        # as a size-1 dim and broadcast.
        kept = [c for c in ins[i] if c in out_labels or any(c in ins[j] for j in others)]
        if not others and kept == out_labels:
            ct = g
        else:
            spec = ",".join("".join(t) for t in [out_labels] + [ins[j] for j in others]) + "->" + "".join(kept)
            ct = einsum_op.bind(g, *[operands[j] for j in others], subscripts=spec)
        if len(kept) < len(ins[i]):
            for pos, c in enumerate(ins[i]):
                if c not in kept:
                    ct = expand_dims(ct, pos)
            ct = broadcast_like(ct, x)
        cts.append(ct)
    return tuple(cts)


# A primitive rather than transposes + matmul: one node (and one gradient rule) covers
# attention-style contractions, and the backend's einsum picks the contraction order.
# alias: with one operand ('ij->ji') numpy returns a view of it.
einsum_op = define_op("einsum", ("*operands",), attrs={"subscripts": REQUIRED}, shape_rule=_einsum_shape,
                      dtype_rule=_einsum_dtype, vjp=_einsum_vjp, alias=True)


def einsum(subscripts: str, *operands: Any, name: str | None = None) -> Tensor:
    """Einstein summation over ``operands``, numpy's ``einsum`` semantics.

    The subscripts are stored in explicit form (``'ij,jk'`` becomes ``'ij,jk->ik'``, and an
    ellipsis becomes letters), so the graph does not depend on implicit-mode rules.
    Repeated indices within one operand (diagonals, traces) are not supported.

    Args:
        subscripts: e.g. ``'bhqd,bhkd->bhqk'``; letters, ``','``, ``'->'`` and ``'...'``.
        *operands: numeric tensors (or arrays/scalars), one per comma-separated term.
        name: optional node name.

    Returns:
        The contraction, with the dims named by the output term; size-1 dims broadcast.

    Raises:
        ShapeError: for malformed subscripts, a rank that differs from its term, or an index
            whose sizes differ between operands.

    Example:
        >>> scores = kf.einsum("bhqd,bhkd->bhqk", q, k)
    """
    ranks = [o.aval if isinstance(o, Tensor) else _RankOnly(np.ndim(o)) for o in operands]
    try:
        ins, out, _ = _parse_einsum(subscripts, ranks)
    except InvalidArgumentError:
        # Let the shape rule raise it, so the error names the node and the user's line.
        return einsum_op.bind(*operands, subscripts=subscripts, name=name)
    canonical = ",".join("".join(t) for t in ins) + "->" + "".join(out)
    return einsum_op.bind(*operands, subscripts=canonical, name=name)


class _RankOnly:
    """Stand-in aval for a non-tensor operand: its rank, with unknown dims."""

    def __init__(self, ndim: int):
        self.ndim = ndim
        self.shape = (None,) * ndim
