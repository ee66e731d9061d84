"""ONNX export of control flow (issue #17): recurrent layers, while_loop, cond / switch_case, scan.

Each program is exported, checked by onnx.checker and run by onnxruntime on random inputs of
several batch (and sequence) sizes; its outputs must equal g.run's within float32 tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.graph.ops.control_flow import scan_op, tuple_get
from kernelflow.graph.subgraph import trace, with_captures
from kernelflow.interop import OnnxExportError

from .conftest import onnx_matches_run

R = np.random.default_rng(17)


def _f(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype("float32")


def _ops(graph) -> list[str]:
    """Every op type in an ONNX graph and, recursively, in its bodies."""
    out = []
    for node in graph.node:
        out.append(node.op_type)
        for a in node.attribute:
            if a.type == a.GRAPH:
                out += _ops(a.g)
    return out


def _train(g, loss, feeds: list[dict], steps: int = 3) -> None:
    train = kf.optim.Adam(0.05).minimize(loss)
    for k in range(steps):
        g.run(train, feed=feeds[k % len(feeds)])


def lstm_program(rt, name="onnx_lstm"):
    g = rt.graph(name)
    x = g.placeholder((None, None, 4), "float32", name="x")
    lengths = g.placeholder((None,), "int64", name="lengths")
    labels = g.placeholder((None,), "int64", name="labels")
    h = kf.nn.LSTM(8, return_sequences=True, name="lstm1", seed=1)(x, sequence_length=lengths)
    last, h_state, c_state = kf.nn.LSTM(6, return_state=True, go_backwards=True, name="lstm2", seed=2)(h)
    logits = kf.nn.Dense(3, name="head", seed=3)(last)
    loss = kf.mean(kf.softmax_cross_entropy(logits, labels))
    _train(g, loss, [{x: _f(5, 7, 4), lengths: np.array([7, 3, 5, 1, 7]), labels: np.array([0, 1, 2, 1, 0])}])
    feeds = [{"x": _f(n, t, 4), "lengths": R.integers(1, t + 1, n).astype("int64")} for n, t in ((1, 7), (5, 3))]
    return g, {"x": x, "lengths": lengths}, {"logits": logits, "h": h_state, "c": c_state}, feeds


def test_lstm_model_with_lengths_and_backwards_layer(rt, tmp_path):
    g, ins, outs, feeds = lstm_program(rt)
    model = onnx_matches_run(g, tmp_path / "lstm.onnx", ins, outs, feeds, rtol=1e-4, atol=1e-5)
    ops = _ops(model.graph)
    # One loop per layer (any sequence length): a Scan of the decomposed lstm_cell, or ONNX's LSTM op
    # where the layer is one fused lstm_sequence node without a mask.
    assert ops.count("Scan") + ops.count("LSTM") == 2
    assert {"Sigmoid", "Tanh"} <= set(ops) or ops.count("LSTM") == 2
    assert {"lstm1/kernel", "lstm2/recurrent_kernel", "head/kernel"} <= {i.name for i in model.graph.initializer}


def gru_program(rt, name="onnx_gru"):
    g = rt.graph(name)
    x = g.placeholder((None, 6, 3), "float32", name="x")
    h = kf.nn.Bidirectional(kf.nn.GRU(5, return_sequences=True, seed=4), name="bi")(x)
    y = kf.nn.SimpleRNN(4, name="rnn", seed=5)(h)
    _train(g, kf.mean(kf.square(y - 0.5)), [{x: _f(4, 6, 3)}])
    return g, {"x": x}, {"y": y, "seq": h}, [{"x": _f(n, 6, 3)} for n in (1, 4)]


def test_gru_bidirectional_and_simple_rnn(rt, tmp_path):
    g, ins, outs, feeds = gru_program(rt)
    onnx_matches_run(g, tmp_path / "gru.onnx", ins, outs, feeds, rtol=1e-4, atol=1e-5)


def while_program(rt, name="onnx_while"):
    g = rt.graph(name)
    x = g.placeholder((None,), "float32", name="x")
    cap = g.placeholder((), "int32", name="cap")

    def newton(limit):
        return kf.while_loop(lambda i, y: kf.max(kf.abs(y * y - x)) > 1e-4,
                             lambda i, y: (i + 1, 0.5 * (y + x / y)), (g.constant(np.int64(0)), x + 1.0),
                             maximum_iterations=limit)

    steps, root = newton(None)  # runs until the condition fails
    capped_steps, capped = newton(cap)  # stops at `cap` iterations when that comes first
    total = kf.fori_loop(0, 4, lambda i, s: s + kf.cast(i, "float32") * x, x * 0.0)
    outs = {"steps": steps, "root": root, "capped_steps": capped_steps, "capped": capped, "total": total}
    feeds = [{"x": np.abs(_f(n)) * 10 + 0.1, "cap": np.array(c, "int32")} for n, c in ((1, 2), (6, 100), (3, -1))]
    return g, {"x": x, "cap": cap}, outs, feeds


def test_while_loop_newton_sqrt_with_tensor_and_missing_bounds(rt, tmp_path):
    g, ins, outs, feeds = while_program(rt)
    model = onnx_matches_run(g, tmp_path / "while.onnx", ins, outs, feeds)
    assert _ops(model.graph).count("Loop") == 3
    got = g.run({k: outs[k] for k in ("steps", "capped_steps")}, feed={ins[k]: v for k, v in feeds[0].items()})
    assert got["steps"] > 2 and got["capped_steps"] == 2  # both ways of stopping were exercised


def cond_program(rt, name="onnx_cond"):
    g = rt.graph(name)
    x = g.placeholder((None,), "float32", name="x")
    k = g.placeholder((), "int32", name="k")
    w = g.variable(np.array([1.5, -2.0, 0.5], "float32"), name="w")
    big, small = kf.cond(kf.sum(x) > 0, lambda: (x * w[0], kf.concat([x, x], 0)),
                         lambda: (-x, kf.exp(x) + w[1]))
    picked = kf.switch_case(k, [lambda: x + 1.0, lambda: x * w[2], lambda: kf.sin(x)], default=lambda: x * 0.0 - 7.0)
    plain = kf.switch_case(k, [lambda: x + 1.0, lambda: x * 3.0])  # out of range: the last branch
    outs = {"big": big, "small": small, "picked": picked, "plain": plain}
    feeds = [{"x": _f(n) + shift, "k": np.array(i, "int32")}
             for n, shift, i in ((3, 5.0, 0), (4, -5.0, 1), (2, 5.0, 2), (5, -5.0, 3), (1, 5.0, -1), (3, 5.0, 9))]
    return g, {"x": x, "k": k}, outs, feeds


def test_cond_and_switch_case_take_each_branch(rt, tmp_path):
    g, ins, outs, feeds = cond_program(rt)
    model = onnx_matches_run(g, tmp_path / "cond.onnx", ins, outs, feeds)
    assert "If" in _ops(model.graph)
    feed = {ins["x"]: np.ones(2, "float32"), ins["k"]: np.int32(-1)}
    assert g.run(outs["picked"], feed=feed).tolist() == [-7.0, -7.0]


def scan_program(rt, name="onnx_scan"):
    g = rt.graph(name)
    x = g.placeholder((None, 3), "float32", name="x")
    scale = g.placeholder((3,), "float32", name="scale")
    outs = {
        "cumsum": kf.scan(lambda a, e: a + e * scale, x),  # no initializer: elems[0] starts it
        "rev": kf.scan(lambda a, e: a * 0.5 + e, x, initializer=g.constant(np.zeros(3, "float32")), reverse=True),
        "pair": kf.scan(lambda a, e: (a[0] + e[0], a[1] * e[1]), (x, x[:, 0]),
                        initializer=(g.constant(np.zeros(3, "float32")), g.constant(np.float32(1.0))))[1],
        "map": kf.map_fn(lambda e: kf.cond(kf.sum(e) > 0, lambda: e * 2.0, lambda: e - 1.0), x),
        # a while_loop in each step: the power e**3 by repeated multiplication
        "nested": kf.map_fn(lambda e: kf.fori_loop(0, 3, lambda i, p: p * e, e * 0.0 + 1.0), x),
    }
    feeds = [{"x": _f(n, 3), "scale": _f(3)} for n in (2, 6)]  # (not 1: onnxruntime's Scan refuses 0 steps)
    return g, {"x": x, "scale": scale}, outs, feeds


def test_scan_forms_map_fn_and_nesting(rt, tmp_path):
    g, ins, outs, feeds = scan_program(rt)
    model = onnx_matches_run(g, tmp_path / "scan.onnx", ins, outs, feeds)
    ops = _ops(model.graph)
    assert ops.count("Scan") == 5 and "Loop" in ops and "If" in ops


def decode_program(rt, name="onnx_decode"):
    """Greedy decoding with an LSTM cell (a while_loop whose loop variables grow), and a growing concat."""
    g = rt.graph(name)
    h0 = g.placeholder((None, 8), "float32", name="h0")
    start = g.placeholder((None,), "int64", name="start")
    emb = g.variable(_f(12, 8), name="emb")
    proj = g.variable(_f(8, 12), name="proj")
    cell = kf.nn.LSTMCell(8, name="cell", seed=1)

    def step(tokens, state, t):
        out, new = cell(kf.embedding(emb, tokens), list(state))
        return kf.log_softmax(out @ proj), tuple(new)

    ids, scores, lengths = kf.nn.greedy_decode(step, (h0, h0 * 0.0), start, end_token=0, max_length=6)
    x = g.placeholder((None,), "float32", name="x")
    _, grown = kf.while_loop(lambda i, s: i < 3, lambda i, s: (i + 1, kf.concat([s, s * 2.0], 0)),
                             (g.constant(np.int64(0)), x))
    feeds = [{"h0": _f(n, 8), "start": R.integers(1, 12, n).astype("int64"), "x": _f(m)} for n, m in ((1, 1), (4, 3))]
    return g, {"h0": h0, "start": start, "x": x}, {"ids": ids, "scores": scores, "lengths": lengths,
                                                     "grown": grown}, feeds


def test_greedy_decoding_and_growing_loop_variables(rt, tmp_path):
    g, ins, outs, feeds = decode_program(rt)
    onnx_matches_run(g, tmp_path / "decode.onnx", ins, outs, feeds, rtol=1e-5, atol=1e-5)
    assert g.run(outs["grown"], feed={ins["x"]: feeds[1]["x"]}).shape == (24,)


def length_scan_program(rt, name="onnx_scan_len"):
    g = rt.graph(name)
    x = g.placeholder((None,), "float32", name="x")
    nodes = {}
    for reverse in (False, True):
        tg, phs, outs, _ = trace(g, lambda c: (c * 2.0 + x, kf.sum(c)), [x.aval], "scan")
        caps, (sub,) = with_captures([(tg, phs, outs)])
        node = g.add_node(scan_op, [x, *caps], {"fn": sub, "n_carry": 1, "n_xs": 0, "length": 4,
                                                "reverse": reverse})
        nodes[reverse] = (tuple_get(node, 0), tuple_get(node, 1))
    outs = {"last": nodes[False][0], "ys": nodes[False][1], "ys_rev": nodes[True][1]}
    return g, {"x": x}, outs, [{"x": _f(n)} for n in (1, 3)]


def test_scan_without_elems_becomes_a_loop_of_length_trips(rt, tmp_path):
    g, ins, outs, feeds = length_scan_program(rt)
    onnx_matches_run(g, tmp_path / "len.onnx", ins, outs, feeds)
    ys, rev = g.run([outs["ys"], outs["ys_rev"]], feed={ins["x"]: feeds[1]["x"]})
    np.testing.assert_array_equal(ys[::-1], rev)  # reverse stacks the steps back to front


@pytest.mark.parametrize("where", ["while body", "scan body", "cond branch"])
def test_op_without_onnx_form_inside_a_body_names_the_inner_node(rt, tmp_path, where):
    g = rt.graph(f"onnx_bad_{where.replace(' ', '_')}")
    x = g.placeholder((None, 3), "float32", name="x")

    def bad(t):
        return kf.pad(t, ((0, 0), (1, 1)), mode="wrap", name="wrapped")[:, 1:-1]

    if where == "while body":
        y = kf.while_loop(lambda t: kf.sum(t) < 100.0, lambda t: bad(t) + 1.0, x, maximum_iterations=5)
    elif where == "scan body":
        y = kf.map_fn(lambda e: bad(kf.expand_dims(e, 0))[0], x)
    else:
        y = kf.cond(kf.sum(x) > 0, lambda: bad(x), lambda: x)
    path = tmp_path / "m.onnx"
    with pytest.raises(OnnxExportError, match=r"node '[^']*wrapped'.*wrap") as e:
        g.export_onnx(path, inputs={"x": x}, outputs={"y": y})
    assert e.value.node.endswith("wrapped")
    assert list(tmp_path.iterdir()) == []


def test_random_op_inside_a_loop_is_refused(rt, tmp_path):
    g = rt.graph("onnx_bad_random")
    x = g.placeholder((None, 3), "float32", name="x")
    y = kf.map_fn(lambda e: e + kf.random_uniform(like=e, name="noise"), x)
    with pytest.raises(OnnxExportError, match=r"node '[^']*noise' \(op random_uniform_like\) has no ONNX form: random"):
        g.export_onnx(tmp_path / "m.onnx", inputs={"x": x}, outputs={"y": y})
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_an_lstm_model_directory_to_onnx(tmp_path):
    import subprocess
    import sys

    import onnxruntime as ort

    rt = kf.connect("inproc", state_dir=tmp_path / "state")
    try:
        g, ins, outs, feeds = lstm_program(rt, name="seq")
        g.export("seq", inputs=ins, outputs={"logits": outs["logits"]})
        want = g.run(outs["logits"], feed={ins[k]: v for k, v in feeds[1].items()})
    finally:
        rt.close()
    out = tmp_path / "seq.onnx"
    r = subprocess.run([sys.executable, "-m", "kernelflow", "export-model", "seq", "--state-dir",
                        str(tmp_path / "state"), "--format", "onnx", "--to", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, feeds[1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_gather_tree_becomes_a_loop_backwards_over_the_steps(rt, tmp_path, dtype):
    """Random ids and parent pointers, max lengths 0, inside, equal to and past the steps, end tokens
    in the middle of beams: onnxruntime's Loop equals kernelflow's gather_tree."""
    g = rt.graph(f"onnx_gather_tree_{dtype}")
    ids = g.placeholder((None, None, 3), dtype, name="ids")
    parents = g.placeholder((None, None, 3), dtype, name="parents")
    lengths = g.placeholder((None,), "int32", name="lengths")
    out = kf.nn.gather_tree(ids, parents, lengths, end_token=2)
    feeds = [{"ids": R.integers(0, 6, (t, n, 3)).astype(dtype), "parents": R.integers(0, 3, (t, n, 3)).astype(dtype),
              "lengths": np.array([t, 0, t // 2 + 1, t + 4][:n], "int32")} for t, n in ((7, 4), (1, 2))]
    model = onnx_matches_run(g, tmp_path / "tree.onnx", {"ids": ids, "parents": parents, "lengths": lengths},
                             {"tree": out}, feeds)
    assert "Loop" in _ops(model.graph) and "GatherElements" in _ops(model.graph)
    got = g.run(out, feed={ids: feeds[0]["ids"], parents: feeds[0]["parents"], lengths: feeds[0]["lengths"]})
    assert (got != 2).sum() > 5 and (got[:, 1] == 2).all()  # real tokens traced; length 0: end tokens only


def beam_program(rt, name="onnx_beam"):
    """Beam search with an LSTM cell: a while_loop, then gather_tree over the stacked steps."""
    g = rt.graph(name)
    h0 = g.placeholder((None, 8), "float32", name="h0")
    start = g.placeholder((None,), "int64", name="start")
    emb = g.variable(_f(12, 8), name="emb")
    proj = g.variable(_f(8, 12) * 2, name="proj")
    cell = kf.nn.LSTMCell(8, name="cell", seed=1)

    def step(tokens, state, t):
        out, new = cell(kf.embedding(emb, tokens), list(state))
        return kf.log_softmax(out @ proj), tuple(new)

    ids, scores, lengths = kf.nn.beam_search(step, (h0, h0 * 0.0), start, end_token=0, beam_width=3, max_length=6)
    feeds = [{"h0": _f(n, 8), "start": R.integers(1, 12, n).astype("int64")} for n in (1, 4)]
    return g, {"h0": h0, "start": start}, {"ids": ids, "scores": scores, "lengths": lengths}, feeds


def test_beam_search_exports(rt, tmp_path):
    g, ins, outs, feeds = beam_program(rt)
    model = onnx_matches_run(g, tmp_path / "beam.onnx", ins, outs, feeds, rtol=1e-5, atol=1e-5)
    assert _ops(model.graph).count("Loop") >= 2  # the search's while_loop and gather_tree's
    got = g.run(outs["ids"], feed={ins[k]: v for k, v in feeds[1].items()})
    assert got.shape[:2] == (4, 3) and got.shape[2] >= 2 and len(np.unique(got)) > 2
