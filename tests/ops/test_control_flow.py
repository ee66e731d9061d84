"""Control-flow op checks: cond, switch_case, while_loop, scan, map_fn, fori_loop against plain
numpy loops, forward (float32/float64) and gradients by finite differences, on both runtimes
(the real server case carries the sub-graphs over the wire)."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from tests.ops.opcheck import OpCase, check_forward, check_gradient


def _norm(*shapes):
    return lambda r, d: [r.standard_normal(s).astype(d) for s in shapes]


def _np_while(x, w):
    v = x
    for _ in range(4):
        v = np.tanh(v * w + x)
    return v


def _kf_while(x, w):
    _, v = kf.while_loop(lambda i, v: i < 4, lambda i, v: (i + 1, kf.tanh(v * w + x)), (0, x))
    return v


def _np_nested(x, w):
    v = x
    for _ in range(3):
        u = v
        for _ in range(2):
            u = np.sin(u * w) + v
        v = u * 0.5
    return v


def _kf_nested(x, w):
    def outer(i, v):
        _, u = kf.while_loop(lambda j, u: j < 2, lambda j, u: (j + 1, kf.sin(u * w) + v), (0, v))
        return i + 1, u * 0.5

    return kf.while_loop(lambda i, v: i < 3, outer, (0, x))[1]


def _np_cond_in_loop(x, w):
    v = x
    for _ in range(5):
        v = v * w if v.sum() > 0 else v + w * w
    return v


def _kf_cond_in_loop(x, w):
    return kf.fori_loop(0, 5, lambda i, v: kf.cond(kf.sum(v) > 0, lambda: v * w, lambda: v + w * w), x)


def _np_loop_in_cond(x, w):
    if x.sum() > 0:
        v = x
        for _ in range(3):
            v = v * w + 1.0
        return v
    return x * x


def _kf_loop_in_cond(x, w):
    return kf.cond(kf.sum(x) > 0, lambda: kf.fori_loop(0, 3, lambda i, v: v * w + 1.0, x), lambda: x * x)


def _np_scan(xs, w):
    acc, out = np.zeros(xs.shape[1:]), []
    for e in xs:
        acc = np.tanh(acc * w) + e
        out.append(acc)
    return np.stack(out)


def _np_scan_rev(xs, w):
    return _np_scan(xs[::-1], w)[::-1]


def _np_grow(x, w):
    v = x
    for _ in range(3):
        v = np.concatenate([v * w[0], v[:1] * w[1]])
    return v


def _kf_grow(x, w):
    # The loop variable grows each iteration: its static shape relaxes to (None,).
    _, v = kf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, kf.concat([v * w[0], v[:1] * w[1]])), (0, x))
    return v


def _np_switch(k, x):
    return [lambda: x * 2.0, lambda: np.sin(x), lambda: x * x][min(int(k), 2)]()


def _np_trip(n, x, w):
    v = x
    for _ in range(int(n)):
        v = v * w + 0.1
    return v


def _np_lstm_cell(z, c):
    u = c.shape[1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = sig(z[:, :u]), sig(z[:, u:2 * u]), np.tanh(z[:, 2 * u:3 * u]), sig(z[:, 3 * u:])
    c2 = f * c + i * g
    return np.concatenate([o * np.tanh(c2), c2 * 0.5], axis=1)


def _kf_lstm_cell(z, c):
    h, c2 = kf.lstm_cell(z, c)
    return kf.concat([h, c2 * 0.5], axis=1)


def _np_lstm_sequence(x, h0, c0, rk, bias, mask=None):
    """Every h and the last c, one step at a time (the unfused formulas, Keras's masking)."""
    u = h0.shape[1]
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, c, hs = h0, c0, []
    for t in range(x.shape[0]):
        z = x[t] + bias + h @ rk
        i, f, g, o = sig(z[:, :u]), sig(z[:, u:2 * u]), np.tanh(z[:, 2 * u:3 * u]), sig(z[:, 3 * u:])
        c2 = f * c + i * g
        h2 = o * np.tanh(c2)
        if mask is not None:
            m = mask[t][:, None]
            h2, c2 = np.where(m, h2, h), np.where(m, c2, c)
        h, c = h2, c2
        hs.append(h)
    return np.concatenate([np.stack(hs).reshape(-1), (c * 0.5).reshape(-1)])


def _kf_lstm_sequence(x, h0, c0, rk, bias, mask=None):
    hs, c = kf.lstm_sequence(x, h0, c0, rk, bias, mask)
    return kf.concat([kf.reshape(hs, (-1,)), kf.reshape(c * 0.5, (-1,))])


def _np_gru_sequence(x, h0, rk, bias, mask=None):
    """Every h, one step at a time (Keras's GRU with reset_after=True, and its masking)."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h, hs = h0, []
    for t in range(x.shape[0]):
        xz, xr, xh = np.split(x[t] + bias[0], 3, axis=1)
        iz, ir, ih = np.split(h @ rk + bias[1], 3, axis=1)
        z, r = sig(xz + iz), sig(xr + ir)
        h2 = z * h + (1 - z) * np.tanh(xh + r * ih)
        if mask is not None:
            h2 = np.where(mask[t][:, None], h2, h)
        h = h2
        hs.append(h)
    return np.stack(hs)


def _gru_seq_args(t, b, u, masked=False):
    def make(r, d):
        args = [r.standard_normal((t, b, 3 * u)), r.standard_normal((b, u)) * 0.5, r.standard_normal((u, 3 * u)) * 0.5,
                r.standard_normal((2, 3 * u)) * 0.5]
        args = [a.astype(d) for a in args]
        if masked:
            args.append(np.arange(t)[:, None] < np.array([3, 1, 0])[None, :])
        return args

    return make


def _lstm_seq_args(t, b, u, masked=False):
    def make(r, d):
        args = [r.standard_normal((t, b, 4 * u)), r.standard_normal((b, u)) * 0.5, r.standard_normal((b, u)),
                r.standard_normal((u, 4 * u)) * 0.5, r.standard_normal(4 * u) * 0.5]
        args = [a.astype(d) for a in args]
        if masked:  # rows of lengths 3, 1 and 0 (a fully padded row keeps h0, c0)
            args.append(np.arange(t)[:, None] < np.array([3, 1, 0])[None, :])
        return args

    return make


CASES = [
    OpCase("lstm_cell", _kf_lstm_cell, _np_lstm_cell, _norm((3, 8), (3, 2))),
    OpCase("lstm_sequence", _kf_lstm_sequence, _np_lstm_sequence, _lstm_seq_args(4, 3, 2)),
    OpCase("lstm_sequence_masked", _kf_lstm_sequence, _np_lstm_sequence, _lstm_seq_args(4, 3, 2, masked=True)),
    OpCase("lstm_sequence_dynamic_time", _kf_lstm_sequence, _np_lstm_sequence, _lstm_seq_args(5, 2, 3),
           static_shapes=False),
    OpCase("lstm_sequence_hs_only", lambda x, h0, c0, rk, b: kf.lstm_sequence(x, h0, c0, rk, b)[0],
           lambda *a: _np_lstm_sequence(*a)[:-a[1].size].reshape(a[0].shape[:2] + a[1].shape[1:]),
           _lstm_seq_args(3, 2, 2)),
    OpCase("gru_sequence", lambda x, h0, rk, b: kf.gru_sequence(x, h0, rk, b), _np_gru_sequence,
           _gru_seq_args(4, 3, 2)),
    OpCase("gru_sequence_masked", lambda x, h0, rk, b, m: kf.gru_sequence(x, h0, rk, b, m), _np_gru_sequence,
           _gru_seq_args(4, 3, 2, masked=True)),
    OpCase("gru_sequence_dynamic_time_no_bias", lambda x, h0, rk, b: kf.gru_sequence(x, h0, rk),
           lambda x, h0, rk, b: _np_gru_sequence(x, h0, rk, b * 0), _gru_seq_args(5, 2, 3), static_shapes=False),
    OpCase("lstm_sequence_last_c_only_no_bias", lambda x, h0, c0, rk, b: kf.lstm_sequence(x, h0, c0, rk)[1],
           lambda x, h0, c0, rk, b: _np_lstm_sequence(x, h0, c0, rk, b * 0)[-h0.size:].reshape(h0.shape) * 2,
           _lstm_seq_args(3, 2, 2)),
    OpCase("while_loop_captures", _kf_while, _np_while, _norm((3,), (3,))),
    OpCase("while_loop_nested", _kf_nested, _np_nested, _norm((2, 3), (3,))),
    OpCase("cond_in_while_loop", _kf_cond_in_loop, _np_cond_in_loop, lambda r, d: [
        np.array([0.3, -0.2, 0.4], d), np.array([0.9, 1.1, -0.5], d)]),
    OpCase("while_loop_in_cond_taken", _kf_loop_in_cond, _np_loop_in_cond, lambda r, d: [
        np.abs(r.standard_normal(3)).astype(d), r.standard_normal(3).astype(d)]),
    OpCase("while_loop_in_cond_not_taken", _kf_loop_in_cond, _np_loop_in_cond, lambda r, d: [
        -np.abs(r.standard_normal(3)).astype(d), r.standard_normal(3).astype(d)]),
    OpCase("scan", lambda xs, w: kf.scan(lambda a, e: kf.tanh(a * w) + e, xs, initializer=xs[0] * 0.0),
           _np_scan, _norm((5, 3), (3,))),
    OpCase("scan_reverse", lambda xs, w: kf.scan(lambda a, e: kf.tanh(a * w) + e, xs, initializer=xs[0] * 0.0,
                                                 reverse=True), _np_scan_rev, _norm((4, 2), (2,))),
    OpCase("scan_dynamic_length", lambda xs, w: kf.scan(lambda a, e: kf.tanh(a * w) + e, xs,
                                                        initializer=xs[0] * 0.0),
           _np_scan, _norm((6, 3), (3,)), static_shapes=False),
    OpCase("map_fn", lambda xs, w: kf.map_fn(lambda e: kf.sum(kf.sin(e) * w), xs),
           lambda xs, w: (np.sin(xs) * w).sum(1), _norm((4, 3), (3,))),
    OpCase("while_loop_relaxed_shape", _kf_grow, _np_grow, _norm((2,), (2,))),
    OpCase("switch_case", lambda k, x: kf.switch_case(k, [lambda: x * 2.0, lambda: kf.sin(x), lambda: x * x]),
           _np_switch, lambda r, d: [np.array(1, "int32"), r.standard_normal(3).astype(d)]),
    OpCase("switch_case_default", lambda k, x: kf.switch_case(k, [lambda: x * 2.0, lambda: kf.sin(x), lambda: x * x]),
           _np_switch, lambda r, d: [np.array(7, "int32"), r.standard_normal(3).astype(d)]),
    OpCase("while_loop_trip_count_fed", lambda n, x, w: kf.while_loop(
        lambda i, v: i < n, lambda i, v: (i + 1, v * w + 0.1), (kf.cast(n * 0, "int64"), x))[1],
        _np_trip, lambda r, d: [np.array(3, "int64"), r.standard_normal(3).astype(d), r.standard_normal(3).astype(d)]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_control_flow_forward_and_gradient(case, rng):
    for dtype in case.dtypes:
        check_forward(case, dtype, rng)
    check_gradient(case, rng)
