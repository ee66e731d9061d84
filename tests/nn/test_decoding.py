"""Decoding (issue #13): beam_search against a plain-numpy reference beam search (TFA
BeamSearchDecoder semantics) on a random RNN step, for several widths, with and without
length penalty, with early end tokens; greedy_decode; gather_tree; tile_batch."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf

BATCH, HIDDEN, VOCAB, END = 3, 5, 7, 1


def _weights(seed, end_bias):
    rng = np.random.default_rng(seed)
    w = {"A": rng.standard_normal((HIDDEN, HIDDEN)) * 0.8, "E": rng.standard_normal((VOCAB, HIDDEN)),
         "W": rng.standard_normal((HIDDEN, VOCAB)) * 1.5, "h0": rng.standard_normal((BATCH, HIDDEN))}
    w["W"][:, END] += end_bias  # early end tokens when positive
    return w


def _np_step(w, token, h):
    h = np.tanh(h @ w["A"] + w["E"][token])
    z = h @ w["W"]
    z = z - z.max()
    return z - np.log(np.exp(z).sum()), h


def _np_beam_search(w, start, k, max_len, alpha):
    """Per batch entry, with Python lists: the reference semantics, written independently."""
    def score(raw, n):
        return raw / ((5.0 + n) / 6.0) ** alpha if alpha else raw

    results = []
    for b in range(BATCH):
        beams = [dict(raw=0.0, pen=0, toks=[], h=w["h0"][b], last=int(start[b]), done=False)]
        steps = 0
        while steps < max_len and not all(x["done"] for x in beams):
            cands = []
            for i, x in enumerate(beams):
                if x["done"]:
                    cands.append((score(x["raw"], x["pen"]), i * VOCAB + END, i, END, x["raw"], x["pen"], x["h"]))
                    continue
                lp, h = _np_step(w, x["last"], x["h"])
                for v in range(VOCAB):
                    pen = x["pen"] + (v != END)
                    cands.append((score(x["raw"] + lp[v], pen), i * VOCAB + v, i, v, x["raw"] + lp[v], pen, h))
            cands.sort(key=lambda c: (-c[0], c[1]))
            beams = [dict(raw=c[4], pen=c[5], toks=beams[c[2]]["toks"] + [c[3]], h=c[6], last=c[3],
                          done=beams[c[2]]["done"] or c[3] == END, score=c[0]) for c in cands[:k]]
            steps += 1
        results.append(beams)
    t_run = max(len(bs[0]["toks"]) for bs in results)
    ids = np.full((BATCH, k, t_run), END)
    scores = np.zeros((BATCH, k))
    lengths = np.zeros((BATCH, k), int)
    for b, bs in enumerate(results):
        for i, x in enumerate(bs):
            toks = x["toks"]
            n = toks.index(END) + 1 if END in toks else len(toks)
            ids[b, i, :n] = toks[:n]
            scores[b, i] = x["score"]
            lengths[b, i] = n
    return ids, scores, lengths


def _kf_step(g, w):
    A, Em, W = (g.constant(w[k]) for k in ("A", "E", "W"))

    def step(tokens, h, t):
        h = kf.tanh(h @ A + kf.gather(Em, tokens))
        return h @ W, h

    return step


@pytest.fixture
def g():
    rt = kf.connect("inproc")
    yield rt.graph("decode")
    rt.close()


@pytest.mark.parametrize("k,alpha,end_bias", [(1, 0.0, 0.0), (3, 0.0, 1.0), (3, 0.7, 1.0), (5, 1.0, 0.5),
                                              (7, 0.0, 2.5)])
def test_beam_search_matches_numpy_reference(g, k, alpha, end_bias):
    w = _weights(k + int(10 * end_bias), end_bias)
    start = np.array([0, 2, 4], "int32")
    st = g.placeholder((None,), "int32", name="start")
    h0 = g.placeholder((None, HIDDEN), "float64", name="h0")
    ids, scores, lengths = kf.nn.beam_search(_kf_step(g, w), h0, st, END, k, max_length=8, length_penalty=alpha)
    got = g.run([ids, scores, lengths], {st: start, h0: w["h0"]})
    want = _np_beam_search(w, start, k, 8, alpha)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10)
    np.testing.assert_array_equal(got[2], want[2])
    if end_bias >= 1.0:
        assert (want[2] < 8).any()  # some beams really ended early


def test_greedy_decode_is_beam_search_of_width_one(g):
    w = _weights(3, 1.0)
    st = g.constant(np.array([0, 2, 4], "int32"))
    h0 = g.constant(w["h0"])
    greedy = kf.nn.greedy_decode(_kf_step(g, w), h0, st, END, max_length=8)
    beam = kf.nn.beam_search(_kf_step(g, w), h0, st, END, 1, max_length=8)
    gi, gs, gl = g.run(greedy)
    bi, bs, bl = g.run(beam)
    np.testing.assert_array_equal(gi, bi[:, 0])
    np.testing.assert_allclose(gs, bs[:, 0], rtol=1e-12)
    np.testing.assert_array_equal(gl, bl[:, 0])


def test_gather_tree_follows_parents_and_pads_after_end(g):
    step = np.array([[[2, 3]], [[4, 1]], [[5, 6]]])  # (time 3, batch 1, beam 2)
    parent = np.array([[[0, 0]], [[1, 0]], [[1, 1]]])
    out = g.run(kf.gather_tree(g.constant(step), g.constant(parent), g.constant(np.array([3])), end_token=1))
    # beam 0: t2 token 5 <- parent 1 at t1 (token 1 = end) <- parent 0 at t0 (token 2): [2, 1, 1(after end)]
    # beam 1: t2 token 6 <- parent 1 (token 1) <- 0 (token 2): [2, 1, 1]
    np.testing.assert_array_equal(out[:, 0, :], [[2, 2], [1, 1], [1, 1]])
    out = g.run(kf.gather_tree(g.constant(step), g.constant(np.zeros_like(parent)), g.constant(np.array([2])), 9))
    np.testing.assert_array_equal(out[:, 0, :], [[2, 2], [4, 1], [9, 9]])  # past max length: end token 9


def test_tile_batch_repeats_each_entry(g):
    x = g.constant(np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(g.run(kf.nn.tile_batch(x, 2)), np.repeat(np.arange(6).reshape(3, 2), 2, axis=0))


def test_beam_search_bad_arguments_raise(g):
    st = g.constant(np.array([0], "int32"))
    with pytest.raises(kf.errors.InvalidArgumentError, match="beam_search: beam_width must be a positive int; got 0"):
        kf.nn.beam_search(lambda t, s, i: (s, s), st, st, 1, 0, 5)
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"beam_search: start_tokens must be a \(batch,\)"):
        kf.nn.beam_search(lambda t, s, i: (s, s), st, g.constant(np.zeros(2)), 1, 2, 5)


def test_top_k_breaks_ties_by_lower_index_and_take_along_axis(g):
    x = g.constant(np.array([[1.0, 3.0, 3.0, 0.5], [2.0, -1.0, 2.0, 2.0]]))
    idx = kf.top_k(x, 3)
    got_idx, got_vals = g.run([idx, kf.take_along_axis(x, idx)])
    np.testing.assert_array_equal(got_idx, [[1, 2, 0], [0, 2, 3]])
    np.testing.assert_array_equal(got_vals, [[3.0, 3.0, 1.0], [2.0, 2.0, 2.0]])
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"top_k: k must be in \[1, 4\]"):
        kf.top_k(x, 5)


def test_top_k_partition_path_matches_a_stable_sort_with_ties(g):
    rng = np.random.default_rng(5)
    xv = rng.integers(0, 6, (4, 3, 50)).astype("float64")  # many ties
    x = g.placeholder(xv.shape, "float64", name="x")
    got = g.run(kf.top_k(x, 4), {x: xv})
    np.testing.assert_array_equal(got, np.argsort(-xv, axis=-1, kind="stable")[..., :4])
