"""kf.import_onnx (issue #17): models exported by kernelflow come back as kernelflow graphs that compute the same."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.interop import OnnxImportError
from tests.runtime_server.serving.conftest import build_digits

from . import test_onnx_control as control
from .conftest import onnx_round_trip
from .test_onnx_export import _bn_dropout, _cnn
from .test_onnx_ops import CASES, _build

R = np.random.default_rng(23)


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_cases_round_trip(rt, tmp_path, case):
    specs, fn = CASES[case]
    g, phs, outs, feeds = _build(rt, f"rt_{case}", specs, fn)
    if case == "scatter":  # one index per row of updates
        for f in feeds:
            f["ids"] = R.integers(0, 4, f["u"].shape[0]).astype("int64")
    onnx_round_trip(rt, g, tmp_path / f"{case}.onnx", phs, outs, feeds)


@pytest.mark.parametrize("program", ["lstm", "gru", "while", "cond", "scan", "decode", "length_scan"])
def test_control_flow_programs_round_trip(rt, tmp_path, program):
    g, ins, outs, feeds = getattr(control, f"{program}_program")(rt, name=f"rt_{program}")
    m = onnx_round_trip(rt, g, tmp_path / f"{program}.onnx", ins, outs, feeds, rtol=1e-4, atol=1e-5)
    ops = {n.op.name for n in m.graph.nodes()}
    want = {"lstm": "lstm_sequence", "gru": "gru_sequence", "while": "while", "cond": "case", "scan": "scan",
            "decode": "while", "length_scan": "scan"}[program]
    assert want in ops  # a loop stays a loop (any sequence length), a branch a branch


def test_models_round_trip(rt, tmp_path):
    d = build_digits(rt, name="rt_digits", steps=3)
    feeds = [{"image": R.standard_normal((n, 64)).astype("float32")} for n in (1, 7)]
    onnx_round_trip(rt, d.g, tmp_path / "digits.onnx", {"image": d.x}, {"probs": d.probs, "class": d.cls}, feeds)
    g, x, logits = _cnn(rt, name="rt_cnn")
    feeds = [{"image": R.standard_normal((n, 16, 16, 3)).astype("float32")} for n in (1, 3)]
    onnx_round_trip(rt, g, tmp_path / "cnn.onnx", {"image": x}, {"logits": logits}, feeds, rtol=1e-4, atol=1e-5)
    g, x, training, logits, _ = _bn_dropout(rt)
    feeds = [{"x": R.standard_normal((n, 6)).astype("float32")} for n in (1, 5)]
    g.export_onnx(tmp_path / "bn.onnx", inputs={"x": x}, outputs={"logits": logits})
    m = kf.import_onnx(tmp_path / "bn.onnx", rt.graph("rt_bn_imported"))
    for feed in feeds:  # the imported graph is the inference one: no training flag to feed
        np.testing.assert_allclose(m.graph.run(m.outputs["logits"], feed={m.inputs["x"]: feed["x"]}),
                                   g.run(logits, feed={x: feed["x"], training: False}), rtol=1e-5, atol=1e-6)


def test_conv_variants_round_trip(rt, tmp_path):
    g = rt.graph("rt_conv")
    x = g.placeholder((None, 9, 8, 3), "float32", name="x")
    w = g.variable(R.standard_normal((3, 3, 3, 4)).astype("float32"), name="w")
    wt = g.variable(R.standard_normal((3, 3, 2, 4)).astype("float32"), name="wt")
    same = kf.conv2d(x, w, padding="SAME")
    outs = {"same": same, "valid_s2": kf.conv2d(x, w, strides=2, padding="VALID"),
            "dilated": kf.conv2d(x, w, dilations=2, padding="SAME"),
            "maxpool": kf.max_pool2d(x, 2, 2, padding="SAME"), "avgpool": kf.avg_pool2d(x, 3, 2, padding="SAME"),
            "tconv": kf.conv2d_transpose(same, wt, (18, 16), strides=2, padding="SAME"),
            "tconv_valid": kf.conv2d_transpose(same, wt, (11, 10), padding="VALID")}
    feeds = [{"x": R.standard_normal((n, 9, 8, 3)).astype("float32")} for n in (1, 2)]
    onnx_round_trip(rt, g, tmp_path / "conv.onnx", {"x": x}, outs, feeds, rtol=1e-4, atol=1e-4)


def test_imported_weights_are_variables_that_train(rt, tmp_path):
    d = build_digits(rt, name="rt_train", steps=1)
    d.g.export_onnx(tmp_path / "d.onnx", inputs={"image": d.x}, outputs={"probs": d.probs})
    g = rt.graph("rt_train_imported")
    m = kf.import_onnx(tmp_path / "d.onnx", g)
    assert {"w1", "b1", "w2", "b2"} <= set(m.variables)
    np.testing.assert_array_equal(g.run(m.variables["w1"]), d.g.run(d.g["w1"]))
    y = g.placeholder((None,), "int64", name="y")
    loss = -kf.mean(kf.sum(kf.one_hot(y, 10) * kf.log(m.outputs["probs"] + 1e-9), axis=1))
    train = kf.optim.SGD(lr=0.5).minimize(loss)
    X, Y = R.standard_normal((64, 64)).astype("float32"), R.integers(0, 10, 64).astype("int64")
    feed = {m.inputs["image"]: X, y: Y}
    before = g.run(loss, feed=feed)
    for _ in range(10):
        g.run(train, feed=feed)
    assert g.run(loss, feed=feed) < before * 0.8
    frozen = kf.import_onnx(tmp_path / "d.onnx", rt.graph("rt_frozen"), trainable=False)
    assert frozen.variables == {}


def _model(nodes, inputs, outputs, inits=()):
    import onnx

    g = onnx.helper.make_graph(nodes, "hand", inputs, outputs, initializer=list(inits))
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)])


def test_unsupported_onnx_op_or_form_names_the_node(rt, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    lrn = _model([helper.make_node("Hardmax", ["x"], ["y"], name="hm")], [x], [y])
    with pytest.raises(OnnxImportError, match=r"node 'hm' \(Hardmax\): has no kernelflow form"):
        kf.import_onnx(lrn, rt.graph("bad1"))
    dyn = _model([helper.make_node("Shape", ["x"], ["s"], name="sh"),
                  helper.make_node("Cast", ["s"], ["s2"], name="c", to=TensorProto.INT64),
                  helper.make_node("Reshape", ["x", "s2"], ["y"], name="rs")], [x], [y])
    with pytest.raises(OnnxImportError, match=r"node 'c' \(Cast\): uses Shape"):
        kf.import_onnx(dyn, rt.graph("bad2"))
    slice_dyn = _model([helper.make_node("Slice", ["x", "k", "e"], ["y"], name="sl")],
                       [x, helper.make_tensor_value_info("k", TensorProto.INT64, [1])], [y],
                       [numpy_helper.from_array(np.array([3], np.int64), "e")])
    with pytest.raises(OnnxImportError, match=r"node 'sl' \(Slice\): needs its starts as an initializer"):
        kf.import_onnx(slice_dyn, rt.graph("bad3"))
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Add", ["v", "one"], ["v2"]), helper.make_node("Less", ["v2", "ten"], ["go"]),
         helper.make_node("Identity", ["v2"], ["y"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("v", f, [])],
        [helper.make_tensor_value_info(k, t, []) for k, t in (("go", TensorProto.BOOL), ("v2", f), ("y", f))])
    until = _model([helper.make_node("Loop", ["m", "t", "v0"], ["vf", "ys"], name="until", body=body)],
                   [helper.make_tensor_value_info("v0", f, [])], [helper.make_tensor_value_info("ys", f, None)],
                   [numpy_helper.from_array(np.array(9, np.int64), "m"), numpy_helper.from_array(np.array(True), "t"),
                    numpy_helper.from_array(np.float32(1), "one"), numpy_helper.from_array(np.float32(10), "ten")])
    with pytest.raises(OnnxImportError, match=r"node 'until' \(Loop\): a Loop with scan outputs is imported only"):
        kf.import_onnx(until, rt.graph("bad5"))
    bad = tmp_path / "not.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(kf.errors.InvalidArgumentError, match="cannot read an ONNX model"):
        kf.import_onnx(bad, rt.graph("bad4"))
    assert onnx  # the optional dependency is what the test runs against


def test_every_onnx_op_the_exporter_writes_is_imported():
    import re
    from pathlib import Path

    from kernelflow.interop import onnx_ops
    from kernelflow.interop.onnx_import_ops import IMPORTERS

    src = "".join((Path(onnx_ops.__file__).parent / f).read_text()
                  for f in ("onnx_ops.py", "onnx_control.py", "onnx_recurrent.py", "onnx_builder.py"))
    written = set(re.findall(r'\b[bc]\.ops?\("([A-Za-z]+)"', src))
    for table in (onnx_ops._SIMPLE_BINARY, onnx_ops._COMPARE, onnx_ops._UNARY, onnx_ops._REDUCE):
        written |= set(table.values())
    assert len(written) > 50
    assert written <= set(IMPORTERS), written - set(IMPORTERS)


def test_onnx_lstm_op_imports_as_lstm_sequence_equal_to_onnxruntime(rt):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    u, i = 5, 3
    inits = [numpy_helper.from_array(R.standard_normal(s).astype("float32") * 0.5, n)
             for n, s in (("W", (1, 4 * u, i)), ("R", (1, 4 * u, u)), ("B", (1, 8 * u)))]
    node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "h0", "c0"], ["Y", "Y_h", "Y_c"], name="lstm",
                            hidden_size=u)
    model = _model([node], [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", i]),
                            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "N", u]),
                            helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, "N", u])],
                   [helper.make_tensor_value_info(k, TensorProto.FLOAT, None) for k in ("Y", "Y_h", "Y_c")], inits)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    m = kf.import_onnx(model, rt.graph("rt_onnx_lstm"))
    assert "lstm_sequence" in {n.op.name for n in m.graph.nodes()}
    for t, n in ((6, 2), (1, 4)):
        feed = {"X": R.standard_normal((t, n, i)).astype("float32"),
                "h0": R.standard_normal((1, n, u)).astype("float32"),
                "c0": R.standard_normal((1, n, u)).astype("float32")}
        want = dict(zip(("Y", "Y_h", "Y_c"), sess.run(None, feed)))
        got = m.graph.run(m.outputs, feed={m.inputs[k]: v for k, v in feed.items()})
        for k in want:
            assert got[k].shape == want[k].shape
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    bi = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], name="bi", hidden_size=u, direction="bidirectional")
    bad = _model([bi],
                 [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", i])],
                 [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], inits[:2])
    with pytest.raises(OnnxImportError, match=r"node 'bi' \(LSTM\): only a forward LSTM"):
        kf.import_onnx(bad, rt.graph("rt_onnx_lstm_bad"))
