"""ONNX's own LSTM and GRU ops for kernelflow's fused lstm_sequence / gru_sequence (issue #17 follow-up).

A layer's whole-sequence op exports as ONNX's ``LSTM`` / ``GRU`` with the input projection
folded into ``W`` (no MatMul left), a ``sequence_length`` mask as ``sequence_lens``; other masks
keep the Scan. Each model passes onnx.checker, onnxruntime equals ``g.run`` on random inputs,
and ``kf.import_onnx`` brings the ops back as lstm_sequence / gru_sequence computing the same.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf

from .conftest import onnx_matches_run, onnx_round_trip
from .test_onnx_control import _ops

R = np.random.default_rng(1717)
LAYERS = {"lstm": (kf.nn.LSTM, (0, 3, 1, 2)), "gru": (kf.nn.GRU, (0, 1, 2))}  # ONNX's gate blocks, Keras's index


def _f(*shape: int) -> np.ndarray:
    return R.standard_normal(shape).astype("float32")


def _trained(g, y, feed) -> None:
    """A few SGD steps, so the weights (and biases) are not their initial values."""
    train = kf.optim.SGD(lr=0.2).minimize(kf.mean(kf.square(y - 0.3)))
    for _ in range(2):
        g.run(train, feed=feed)


def _program(rt, kind: str, mode: str, name: str):
    masked = mode == "sequence_length"
    g = rt.graph(name)
    x = g.placeholder((None, None, 3), "float32", name="x")
    lengths = g.placeholder((None,), "int64", name="lengths")
    layer = LAYERS[kind][0](5, return_sequences=True, return_state=True, go_backwards=mode == "backwards",
                            name="rnn", seed=3)
    y, *states = layer(x, sequence_length=lengths if masked else None)
    ins = {"x": x, **({"lengths": lengths} if masked else {})}
    feed = {x: _f(4, 6, 3), **({lengths: np.array([6, 2, 0, 4])} if masked else {})}
    _trained(g, y, feed)
    outs = {"y": y, "h": states[0], **({"c": states[1]} if kind == "lstm" else {})}
    feeds = []
    for n, t in ((1, 7), (4, 6), (3, 1)):
        f = {"x": _f(n, t, 3)}
        if masked:  # lengths 0, inside, equal to and past the sequence (clipped to it, as kernelflow's mask)
            f["lengths"] = np.array([0, t // 2, t, t + 3][:n] if n > 1 else [t // 2 + 1], "int64")
        feeds.append(f)
    return g, layer, ins, outs, feeds


@pytest.mark.parametrize("mode", ["plain", "sequence_length", "backwards"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_exports_as_the_onnx_op_with_the_kernel_in_w(rt, tmp_path, kind, mode):
    g, layer, ins, outs, feeds = _program(rt, kind, mode, f"onnx_{kind}_{mode}")
    model = onnx_matches_run(g, tmp_path / "m.onnx", ins, outs, feeds, rtol=1e-5, atol=1e-5)
    ops = _ops(model.graph)
    assert ops.count(kind.upper()) == 1 and "Scan" not in ops and "MatMul" not in ops, ops
    node = next(n for n in model.graph.node if n.op_type == kind.upper())
    assert (node.input[4] != "") == (mode == "sequence_length")  # sequence_lens
    if kind == "gru":
        assert {a.name: a.i for a in node.attribute}["linear_before_reset"] == 1
    import onnx

    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    kernel, recurrent = (g.run(v) for v in layer.weights[:2])
    u, blocks = 5, LAYERS[kind][1]
    cols = np.concatenate([np.arange(u) + k * u for k in blocks])
    # W holds the trained kernel (ONNX's gate order, transposed), under the kernel's own name
    np.testing.assert_array_equal(inits[node.input[1]][0], kernel[:, cols].T)
    np.testing.assert_array_equal(inits[node.input[2]][0], recurrent[:, cols].T)
    assert node.input[1] == "rnn/kernel" and node.input[2] == "rnn/recurrent_kernel"
    assert np.abs(kernel).sum() > 0 and np.abs(recurrent).sum() > 0


@pytest.mark.parametrize("mode", ["plain", "sequence_length", "backwards"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_layer_round_trips_through_import(rt, tmp_path, kind, mode):
    g, _, ins, outs, feeds = _program(rt, kind, mode, f"rt_onnx_{kind}_{mode}")
    m = onnx_round_trip(rt, g, tmp_path / "m.onnx", ins, outs, feeds, rtol=1e-5, atol=1e-5)
    ops = {n.op.name for n in m.graph.nodes()}
    assert f"{kind}_sequence" in ops and "scan" not in ops, ops


def test_other_masks_and_inputs_keep_their_forms(rt, tmp_path):
    """go_backwards with lengths (a mask that is not a prefix) stays a Scan; a fused op on inputs that
    are not a projection gets ONNX's op through a gate-reordering identity W; an arbitrary mask, a Scan."""
    g = rt.graph("onnx_rnn_forms")
    x = g.placeholder((None, None, 3), "float32", name="x")
    lengths = g.placeholder((None,), "int64", name="lengths")
    back = kf.nn.GRU(4, return_sequences=True, go_backwards=True, name="back", seed=1)(x, sequence_length=lengths)
    z = g.placeholder((None, None, 8), "float32", name="z")  # (time, batch, 4 * units), already projected
    h0 = g.placeholder((None, 2), "float32", name="h0")
    m = g.placeholder((None, None), "bool", name="m")
    rk = g.constant(_f(2, 8) * 0.5, name="rk")
    bias = g.constant(_f(8) * 0.5, name="bias")
    rk_in = g.placeholder((2, 8), "float32", name="rk_in")  # weights fed at run time: R and B become ops
    bias_in = g.placeholder((8,), "float32", name="bias_in")
    hs, c = kf.lstm_sequence(z, h0, h0 * 0.5, rk_in, bias_in)
    hs_m, c_m = kf.lstm_sequence(z, h0, h0 * 0.5, rk, bias, mask=m)
    ins = {"x": x, "lengths": lengths, "z": z, "h0": h0, "m": m, "rk_in": rk_in, "bias_in": bias_in}
    outs = {"back": back, "hs": hs, "c": c, "hs_m": hs_m, "c_m": c_m}
    feeds = [{"x": _f(n, t, 3), "lengths": R.integers(0, t + 2, n).astype("int64"), "z": _f(t, n, 8),
              "h0": _f(n, 2), "m": R.random((t, n)) < 0.6, "rk_in": _f(2, 8) * 0.5, "bias_in": _f(8)}
             for n, t in ((3, 5), (1, 2))]
    model = onnx_matches_run(g, tmp_path / "forms.onnx", ins, outs, feeds, rtol=1e-5, atol=1e-5)
    ops = _ops(model.graph)
    assert ops.count("Scan") == 2 and ops.count("LSTM") == 1 and "GRU" not in ops, ops
    onnx_round_trip(rt, g, tmp_path / "forms.onnx", ins, outs, feeds, rtol=1e-5, atol=1e-5)


def test_float64_layers_keep_the_scan(rt, tmp_path):
    """onnxruntime runs LSTM and GRU in float32 only: float64 layers export as Scans, equal to g.run in float64."""
    g = rt.graph("onnx_rnn_f64")
    x = g.placeholder((None, None, 3), "float64", name="x")
    lengths = g.placeholder((None,), "int64", name="lengths")
    outs = {k: cls(4, return_sequences=True, name=k, seed=2, dtype="float64")(x, sequence_length=lengths)
            for k, cls in (("gru", kf.nn.GRU), ("lstm", kf.nn.LSTM))}
    feeds = [{"x": R.standard_normal((3, 5, 3)), "lengths": np.array([5, 0, 2])}]
    model = onnx_matches_run(g, tmp_path / "f64.onnx", {"x": x, "lengths": lengths}, outs, feeds,
                             rtol=1e-12, atol=1e-12)
    ops = _ops(model.graph)
    assert ops.count("Scan") == 2 and "LSTM" not in ops and "GRU" not in ops


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_hand_made_onnx_op_imports_equal_to_onnxruntime(rt, kind):
    """ONNX's op with biases, initial states and sequence_lens (0, inside, full): kernelflow's import
    equals onnxruntime on Y, Y_h (and Y_c), zeros past a row's length included."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    u, i, gates = 5, 3, 4 if kind == "LSTM" else 3
    inits = [numpy_helper.from_array(R.standard_normal(s).astype("float32") * 0.5, n)
             for n, s in (("W", (1, gates * u, i)), ("R", (1, gates * u, u)), ("B", (1, 2 * gates * u)))]
    states = ["h0", "c0"][:gates - 2]
    outs = ["Y", "Y_h", "Y_c"][:gates - 1]
    extra = {"linear_before_reset": 1} if kind == "GRU" else {}
    node = helper.make_node(kind, ["X", "W", "R", "B", "L", *states], outs, name="rnn", hidden_size=u, **extra)
    model = helper.make_model(helper.make_graph(
        [node], "hand", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", i]),
                         helper.make_tensor_value_info("L", TensorProto.INT32, ["N"])]
        + [helper.make_tensor_value_info(s, TensorProto.FLOAT, [1, "N", u]) for s in states],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in outs], initializer=inits),
        opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    m = kf.import_onnx(model, rt.graph(f"rt_onnx_hand_{kind}"))
    assert f"{kind.lower()}_sequence" in {n.op.name for n in m.graph.nodes()}
    for t, n in ((6, 3), (1, 2)):
        feed = {"X": _f(t, n, i), "L": np.array([t, 0, t // 2 + 1][:n], "int32"),
                **{s: _f(1, n, u) for s in states}}
        want = dict(zip(outs, sess.run(None, feed)))
        got = m.graph.run(m.outputs, feed={m.inputs[k]: v for k, v in feed.items()})
        for k in want:
            assert got[k].shape == want[k].shape
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
        assert np.abs(want["Y"]).sum() > 0 and not want["Y"][:, :, 1].any()  # row 1 has length 0


def test_gru_without_linear_before_reset_is_refused(rt):
    from onnx import TensorProto, helper, numpy_helper

    from kernelflow.interop import OnnxImportError

    inits = [numpy_helper.from_array(_f(1, 6, 3), "W"), numpy_helper.from_array(_f(1, 6, 2), "R")]
    node = helper.make_node("GRU", ["X", "W", "R"], ["Y"], name="g0", hidden_size=2)
    model = helper.make_model(helper.make_graph(
        [node], "hand", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits),
        opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(OnnxImportError, match=r"node 'g0' \(GRU\): only a forward GRU .*linear_before_reset=1"):
        kf.import_onnx(model, rt.graph("rt_onnx_gru_lbr0"))


def test_lstm_with_peepholes_is_refused(rt):
    """Input P (peephole weights) has no kernelflow form: refused, not silently dropped."""
    from onnx import TensorProto, helper, numpy_helper

    from kernelflow.interop import OnnxImportError

    u = 2
    inits = [numpy_helper.from_array(_f(1, 4 * u, 3), "W"), numpy_helper.from_array(_f(1, 4 * u, u), "R"),
             numpy_helper.from_array(_f(1, 3 * u), "P")]
    node = helper.make_node("LSTM", ["X", "W", "R", "", "", "", "", "P"], ["Y"], name="p0", hidden_size=u)
    model = helper.make_model(helper.make_graph(
        [node], "hand", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], initializer=inits),
        opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(OnnxImportError, match=r"node 'p0' \(LSTM\): an LSTM with peephole weights"):
        kf.import_onnx(model, rt.graph("rt_onnx_lstm_peephole"))
