"""Decoding as one graph: beam search and greedy decoding built from while_loop, top_k and gather.

The whole search is one ``g.run`` on the runtime (and can sit inside an exported model),
not a Python loop of round trips. Semantics follow TensorFlow Addons' ``BeamSearchDecoder``:
step log-probs are log-softmax normalised; a finished beam keeps its score and emits the
end token; scores carry GNMT's length penalty ``((5 + length) / 6) ** alpha`` where, as in
TFA, the length counts the tokens before the end token; the returned lengths count the end
token (as ``dynamic_decode``'s sequence lengths do). Beams come best first.

Contents: tile_batch, beam_search, greedy_decode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..graph import control_flow as cf
from ..graph.ir import Tensor
from ..graph.ops import elementwise as E
from ..graph.ops import movement as M
from ..graph.ops import nn as N
from ..graph.ops import reduce as R
from ..graph.ops import search as S
from ..graph.subgraph import flatten, unflatten

__all__ = ["tile_batch", "beam_search", "greedy_decode", "gather_tree"]

gather_tree = S.gather_tree

StepFn = Callable[[Tensor, Any, Tensor], tuple[Tensor, Any]]


def tile_batch(t: Any, multiplier: int) -> Any:
    """Repeat each batch entry ``multiplier`` times along axis 0: (batch, ...) -> (batch * multiplier, ...).

    Works on any nest of tensors; entry b lands in rows ``b * multiplier ... b * multiplier + multiplier - 1``
    (TFA's ``tile_batch``). Trailing dims must be known.
    """
    leaves, tree = flatten(t)
    out = []
    for x in leaves:
        if not isinstance(x, Tensor) or x.ndim == 0 or any(d is None for d in x.shape[1:]):
            raise InvalidArgumentError(f"tile_batch: expected tensors of shape (batch, known dims...); got {x!r}")
        tiled = M.tile(M.expand_dims(x, 1), (1, multiplier) + (1,) * (x.ndim - 1))
        out.append(M.reshape(tiled, (-1,) + tuple(x.shape[1:])))
    return unflatten(tree, out)


def _penalty(lengths: Tensor, alpha: float, dtype: str) -> Any:
    return E.pow((E.cast(lengths, dtype) + 5.0) / 6.0, alpha)


def _check(what: str, beam_width: int, max_length: Any, start_tokens: Any) -> None:
    if not isinstance(beam_width, int) or beam_width < 1:
        raise InvalidArgumentError(f"{what}: beam_width must be a positive int; got {beam_width!r}")
    if not isinstance(max_length, Tensor) and (not isinstance(max_length, int) or max_length < 0):
        raise InvalidArgumentError(f"{what}: max_length must be a non-negative int or an int tensor; got "
                                   f"{max_length!r}")
    if not isinstance(start_tokens, Tensor) or start_tokens.ndim != 1 or start_tokens.dtype not in ("int32", "int64"):
        raise InvalidArgumentError(f"{what}: start_tokens must be a (batch,) int32/int64 tensor; got {start_tokens!r}")


def _log_probs(what: str, lp: Any, rows: int | None) -> Tensor:
    if not isinstance(lp, Tensor) or lp.ndim != 2 or lp.shape[-1] is None or lp.dtype not in ("float32", "float64"):
        raise InvalidArgumentError(f"{what}: step_fn must return log_probs of shape (batch * beam, vocab) with a "
                                   f"known vocab, float32/64; got {lp!r}")
    return N.log_softmax(lp)


def beam_search(step_fn: StepFn, initial_state: Any, start_tokens: Tensor, end_token: int, beam_width: int,
                max_length: Any, length_penalty: float = 0.0, name: str = "beam_search") -> tuple:
    """Beam search over ``step_fn`` as one graph (TFA BeamSearchDecoder semantics).

    Args:
        step_fn: ``(tokens (batch * beam,), state, time) -> (log_probs (batch * beam, vocab), new_state)``;
            the state is any nest of tensors whose first dim is batch * beam.
        initial_state: the state for each batch entry (first dim batch); tiled to the beams.
        start_tokens: (batch,) int tokens fed at the first step.
        end_token: the token that finishes a beam.
        beam_width: beams kept per batch entry.
        max_length: most steps to run (an int or a scalar int tensor).
        length_penalty: alpha of GNMT's ``((5 + length) / 6) ** alpha`` (0: none).
        name: name scope.

    Returns:
        ``(ids, scores, lengths)``: ids (batch, beam_width, time) int64 best beam first, tokens
        after a beam's end token are the end token; scores (batch, beam_width); lengths
        (batch, beam_width) int64 counting the end token. ``time`` is the steps run (at most
        max_length; fewer when every beam ended).

    Example:
        >>> ids, scores, lengths = kf.nn.beam_search(step, h0, start, end_token=1, beam_width=5, max_length=30)
    """
    _check("beam_search", beam_width, max_length, start_tokens)
    k = beam_width
    g = start_tokens.graph
    with g.name_scope(name):
        state0 = tile_batch(initial_state, k)
        tokens0 = E.cast(tile_batch(start_tokens, k), "int64")
        batch = S.arange(M.size(start_tokens, dtype="int64"))  # (batch,)
        offsets = M.expand_dims(batch * k, 1)  # (batch, 1)
        zeros_bk = E.cast(M.expand_dims(batch, 1) * 0 + M.expand_dims(S.arange(g.constant(k, dtype="int64")), 0) * 0,
                          "int64")  # (batch, beam)

        def first_beam_only(dtype: str) -> Tensor:
            row = np.full(k, np.finfo(dtype).min / 2, dtype)  # at step 0 only beam 0 of each batch entry is live
            row[0] = 0
            return E.cast(zeros_bk, dtype) + g.constant(row)

        def body(t: Tensor, tokens: Tensor, state: Any, log_probs: Tensor, finished: Tensor, pen_len: Tensor,
                 lengths: Tensor, ids: Tensor, parents: Tensor, scores: Tensor) -> tuple:
            lp, new_state = step_fn(E.cast(tokens, start_tokens.dtype), state, t)
            lp = _log_probs("beam_search", lp, None)
            dtype = lp.dtype
            vocab = lp.shape[-1]
            lp = M.reshape(lp, (-1, k, vocab))
            eos = np.arange(vocab) == end_token
            fin = M.expand_dims(finished, 2)
            finished_row = g.constant(np.where(eos, 0, np.finfo(dtype).min).astype(dtype))
            lp = E.where(fin, finished_row, lp)
            total = M.expand_dims(E.cast(log_probs, dtype), 2) + lp  # (batch, beam, vocab)
            add = g.constant((~eos).astype("int64")) * E.cast(E.logical_not(fin), "int64")
            new_pen = M.expand_dims(pen_len, 2) + add
            sc = total / _penalty(new_pen, length_penalty, dtype) if length_penalty else total
            flat = M.reshape(sc, (-1, k * vocab))
            idx = S.top_k(flat, k)  # (batch, beam), best first
            word = idx % vocab
            beam = idx // vocab
            prev_fin = S.take_along_axis(finished, beam)
            next_fin = E.logical_or(prev_fin, E.equal(word, end_token))
            rows = M.reshape(beam + offsets, (-1,))
            out = (t + 1, M.reshape(word, (-1,)),
                   unflatten(flatten(new_state)[1], [M.take(s, rows, axis=0) for s in flatten(new_state)[0]]),
                   E.cast(S.take_along_axis(M.reshape(total, (-1, k * vocab)), idx), log_probs.dtype), next_fin,
                   S.take_along_axis(M.reshape(new_pen, (-1, k * vocab)), idx),
                   S.take_along_axis(lengths, beam) + E.cast(E.logical_not(prev_fin), "int64"),
                   M.concat([ids, M.expand_dims(word, 0)], 0), M.concat([parents, M.expand_dims(beam, 0)], 0),
                   E.cast(S.take_along_axis(flat, idx), scores.dtype))
            return out

        def cond(t: Tensor, tokens: Tensor, state: Any, log_probs: Tensor, finished: Tensor, *rest: Any) -> Tensor:
            return E.logical_and(E.less(t, max_length), E.logical_not(R.all(finished)))

        fdtype = _state_dtype(initial_state)
        none_ids = E.cast(M.expand_dims(zeros_bk, 0)[:0], "int64")  # (0, batch, beam)
        loop = (g.constant(0, dtype="int64"), tokens0, state0, first_beam_only(fdtype),
                E.cast(zeros_bk, "bool"), zeros_bk, zeros_bk, none_ids, none_ids, E.cast(zeros_bk, fdtype))
        t, _, _, _, _, _, lengths, ids, parents, scores = cf.while_loop(
            cond, body, loop, maximum_iterations=max_length if isinstance(max_length, int) else None)
        full = M.broadcast_like(t, batch)
        seqs = S.gather_tree(ids, parents, full, end_token)
        return M.transpose(seqs, (1, 2, 0)), scores, lengths


def _state_dtype(state: Any) -> str:
    leaves, _ = flatten(state)
    for x in leaves:
        if isinstance(x, Tensor) and x.dtype in ("float32", "float64"):
            return x.dtype
    return "float32"


def greedy_decode(step_fn: StepFn, initial_state: Any, start_tokens: Tensor, end_token: int, max_length: Any,
                  name: str = "greedy_decode") -> tuple:
    """Greedy decoding as one graph: the most likely token at each step until ``end_token`` or ``max_length``.

    Args:
        step_fn: ``(tokens (batch,), state, time) -> (log_probs (batch, vocab), new_state)``.
        initial_state: any nest of (batch, ...) tensors.
        start_tokens: (batch,) int tokens fed at the first step.
        end_token: the token that ends a sequence (emitted, then repeated).
        max_length: most steps (an int or scalar int tensor).
        name: name scope.

    Returns:
        ``(ids, scores, lengths)``: ids (batch, time) int64, scores (batch,) summed log-probs of
        the emitted tokens, lengths (batch,) int64 counting the end token.
    """
    _check("greedy_decode", 1, max_length, start_tokens)
    g = start_tokens.graph
    with g.name_scope(name):
        zeros_b = E.cast(start_tokens, "int64") * 0
        fdtype = _state_dtype(initial_state)

        def body(t: Tensor, tokens: Tensor, state: Any, finished: Tensor, lengths: Tensor, ids: Tensor,
                 scores: Tensor) -> tuple:
            lp, new_state = step_fn(E.cast(tokens, start_tokens.dtype), state, t)
            lp = _log_probs("greedy_decode", lp, None)
            word = R.argmax(lp, axis=-1)
            best = M.reshape(S.take_along_axis(lp, M.expand_dims(word, 1)), (-1,))
            word = E.where(finished, end_token, word)
            new_scores = scores + E.cast(E.where(finished, 0.0, best), scores.dtype)
            return (t + 1, word, new_state, E.logical_or(finished, E.equal(word, end_token)),
                    lengths + E.cast(E.logical_not(finished), "int64"), M.concat([ids, M.expand_dims(word, 1)], 1),
                    new_scores)

        def cond(t: Tensor, tokens: Tensor, state: Any, finished: Tensor, *rest: Any) -> Tensor:
            return E.logical_and(E.less(t, max_length), E.logical_not(R.all(finished)))

        loop = (g.constant(0, dtype="int64"), E.cast(start_tokens, "int64"), initial_state, E.cast(zeros_b, "bool"),
                zeros_b, M.expand_dims(zeros_b, 1)[:, :0], E.cast(zeros_b, fdtype))
        _, _, _, _, lengths, ids, scores = cf.while_loop(
            cond, body, loop, maximum_iterations=max_length if isinstance(max_length, int) else None)
        return ids, scores, lengths
