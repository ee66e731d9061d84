"""ONNX export of whole models (issue #17): digits MLP, a CNN, batch norm + dropout; errors; the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.interop import OnnxExportError, export_onnx
from tests.runtime_server.serving.conftest import build_digits

from .conftest import onnx_matches_run


def test_digits_mlp_onnxruntime_equals_run_with_free_batch(rt, tmp_path):
    d = build_digits(rt, name="onnx_digits", steps=5)
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.standard_normal((n, 64)).astype("float32")} for n in (1, 64)]
    model = onnx_matches_run(d.g, tmp_path / "digits.onnx", {"image": d.x},
                             {"probabilities": d.probs, "class": d.cls}, feeds)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [dims[0].dim_param, dims[1].dim_value] == ["batch", 64]
    inits = {i.name for i in model.graph.initializer}
    assert {"w1", "b1", "w2", "b2"} <= inits
    assert not any("Adam" in i or "/m" in i for i in inits)  # no optimiser slots
    # The trained values, not the initial ones.
    from onnx import numpy_helper

    w1 = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "w1")
    np.testing.assert_array_equal(w1, d.g.run(d.g["w1"]))


def _cnn(rt, name: str = "onnx_cnn"):
    g = rt.graph(name)
    x = g.placeholder((None, 16, 16, 3), "float32", name="x")
    h = kf.layers.conv2d(x, 8, 3, activation=kf.relu, name="conv1", seed=1)
    h = kf.max_pool2d(h, 2, 2, padding="SAME")
    h = kf.layers.conv2d(h, 16, 3, strides=2, padding="VALID", activation=kf.relu, name="conv2", seed=2)
    h = kf.avg_pool2d(h, 2, 1, padding="SAME")
    h = kf.flatten(h)
    logits = kf.layers.dense(h, 10, name="fc", seed=3)
    return g, x, logits


def test_cnn_onnxruntime_equals_run(rt, tmp_path):
    g, x, logits = _cnn(rt)
    rng = np.random.default_rng(1)
    feeds = [{"image": rng.standard_normal((n, 16, 16, 3)).astype("float32")} for n in (1, 4)]
    onnx_matches_run(g, tmp_path / "cnn.onnx", {"image": x},
                     {"logits": logits, "probs": kf.softmax(logits)}, feeds, rtol=1e-4, atol=1e-5)


def _bn_dropout(rt):
    g = rt.graph("onnx_bn")
    x = g.placeholder((None, 6), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    training = g.placeholder((), "bool", name="training")
    h = kf.layers.dense(x, 12, name="d1", seed=0)
    mm = g.variable(np.zeros(12, "float32"), name="bn/moving_mean", trainable=False)
    mv = g.variable(np.ones(12, "float32"), name="bn/moving_var", trainable=False)
    gamma = g.variable(np.ones(12, "float32"), name="bn/gamma")
    beta = g.variable(np.zeros(12, "float32"), name="bn/beta")
    h = kf.relu(kf.batch_norm(h, gamma, beta, mm, mv, training, momentum=0.5))
    h = kf.dropout(h, 0.5, training=training, seed=3)
    logits = kf.layers.dense(h, 3, name="d2", seed=1)
    loss = kf.mean(kf.softmax_cross_entropy(logits, y))
    train = kf.optim.SGD(lr=0.1).minimize(loss)
    rng = np.random.default_rng(2)
    for _ in range(5):  # moving statistics and weights move away from their initial values
        g.run(train, feed={x: rng.standard_normal((32, 6)).astype("float32") * 3 + 1,
                           y: rng.integers(0, 3, 32).astype("int64"), training: True})
    return g, x, training, logits, mm


def test_batch_norm_dropout_model_exports_inference_mode(rt, tmp_path):
    g, x, training, logits, mm = _bn_dropout(rt)
    assert np.abs(g.run(mm)).max() > 0.1  # the moving mean was trained
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((n, 6)).astype("float32")} for n in (1, 9)]
    model = onnx_matches_run(g, tmp_path / "bn.onnx", {"x": x}, {"logits": logits}, feeds,
                             feed_extra={training: False})
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"RandomUniform", "RandomUniformLike", "RandomNormal", "Dropout"}
    assert [i.name for i in model.graph.input] == ["x"]  # the training flag is bound, not an input


def test_unfed_placeholder_raises_naming_it_and_writes_nothing(rt, tmp_path):
    g = rt.graph("onnx_two")
    a = g.placeholder((None, 2), "float32", name="a")
    b = g.placeholder((None, 2), "float32", name="b_extra")
    path = tmp_path / "out" / "m.onnx"
    with pytest.raises(kf.errors.InvalidArgumentError, match="placeholder 'b_extra'") as e:
        g.export_onnx(path, inputs={"a": a}, outputs={"s": a + b})
    assert e.value.node == "b_extra"
    assert not path.exists() and (not path.parent.exists() or not list(path.parent.iterdir()))


def test_op_without_onnx_form_raises_naming_node_and_writes_nothing(rt, tmp_path):
    g = rt.graph("onnx_wrap")
    a = g.placeholder((None, 3), "float32", name="a")
    p = kf.pad(a, ((0, 0), (1, 1)), mode="wrap", name="wrapped")
    path = tmp_path / "m.onnx"
    with pytest.raises(OnnxExportError, match="node 'wrapped'.*wrap") as e:
        g.export_onnx(path, inputs={"a": a}, outputs={"p": p * 2.0})
    assert e.value.node == "wrapped"
    with pytest.raises(OnnxExportError, match=r"node '.*max_pool2d_grad.*' \(op max_pool2d_grad\) has no ONNX form"):
        x = g.placeholder((None, 4, 4, 1), "float32", name="x")
        (dx,) = kf.gradients(kf.sum(kf.max_pool2d(x, 2)), [x])
        g.export_onnx(path, inputs={"x": x}, outputs={"dx": dx})
    assert list(tmp_path.iterdir()) == []


def test_random_op_on_path_raises_naming_it(rt, tmp_path):
    g = rt.graph("onnx_rand")
    a = g.placeholder((None, 3), "float32", name="a")
    y = kf.dropout(a, 0.5, training=True, name="drop")
    with pytest.raises(kf.errors.InvalidArgumentError, match="random node 'drop/uniform'"):
        g.export_onnx(tmp_path / "m.onnx", inputs={"a": a}, outputs={"y": y})
    assert list(tmp_path.iterdir()) == []


def test_export_existing_file_is_replaced_whole(rt, tmp_path):
    g = rt.graph("onnx_replace")
    a = g.placeholder((None, 3), "float32", name="a")
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    info = g.export_onnx(path, inputs={"a": a}, outputs={"y": a * 3.0})
    assert info["inputs"] == ["a"] and info["outputs"] == ["y"]
    assert path.read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_cli_export_model_format_onnx_from_state_dir(tmp_path):
    import onnxruntime as ort

    state = tmp_path / "state"
    rt = kf.connect("inproc", state_dir=state)
    try:
        d = build_digits(rt, name="digits", steps=3)
        d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs})
        X = np.random.default_rng(5).standard_normal((3, 64)).astype("float32")
        want = d.g.run(d.probs, feed={d.x: X})
    finally:
        rt.close()
    out = tmp_path / "digits.onnx"
    r = subprocess.run([sys.executable, "-m", "kernelflow", "export-model", "digits", "--state-dir", str(state),
                        "--format", "onnx", "--to", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "onnx" in r.stdout
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": X})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    r = subprocess.run([sys.executable, "-m", "kernelflow", "export-model", "digits", "--state-dir", str(state),
                        "--format", "onnx", "--to", str(tmp_path / "d2.tar.gz")], capture_output=True, text=True)
    assert r.returncode == 2 and "--format onnx writes a .onnx file" in r.stderr


def test_inner_node_as_input_becomes_a_graph_input(rt, tmp_path):
    d = build_digits(rt, name="onnx_hidden", steps=2)
    hidden = d.g["relu"]  # the MLP's hidden layer: the ONNX model starts there
    rng = np.random.default_rng(4)
    feeds = [{"hidden": np.abs(rng.standard_normal((n, 32))).astype("float32")} for n in (1, 6)]
    model = onnx_matches_run(d.g, tmp_path / "head.onnx", {"hidden": hidden}, {"class": d.cls}, feeds)
    assert [i.name for i in model.graph.input] == ["hidden"]
    assert "w1" not in {i.name for i in model.graph.initializer}  # the layer before is cut off


def test_output_name_equal_to_another_nodes_name_keeps_both_apart(rt, tmp_path):
    d = build_digits(rt, name="onnx_names", steps=1)
    assert "relu" in d.g  # the hidden layer's node; "relu" names the class output below
    rng = np.random.default_rng(6)
    feeds = [{"x": rng.standard_normal((3, 64)).astype("float32")}]
    model = onnx_matches_run(d.g, tmp_path / "names.onnx", {"x": d.x}, {"relu": d.cls, "probs": d.probs}, feeds)
    assert [o.name for o in model.graph.output] == ["relu", "probs"]
    assert "relu:kf" in {n.output[0] for n in model.graph.node}


def _wide(name: str, rows: int, cols: int) -> tuple:
    g = kf.Graph(name)
    x = g.placeholder((None, rows), "float32", name="x")
    value = np.random.default_rng(7).standard_normal((rows, cols)).astype("float32")
    return g, x, kf.matmul(x, g.variable(value, name="w")), value


def test_export_of_a_large_variable_holds_one_copy_of_it(tmp_path):
    """Bytes, not time: the Python (numpy and bytes) allocations of an export peak at one copy of
    the variable (its serialised form), not two (a numpy copy kept by the builder beside them)."""
    import tracemalloc

    import onnx
    from onnx import numpy_helper

    g, x, y, _ = _wide("onnx_small", 4, 3)  # warm up: the modules an export imports are loaded before measuring
    export_onnx(g, tmp_path / "small.onnx", {"x": x}, {"y": y}, variables={"w": g["w"].attrs["initial"]})
    g, x, y, value = _wide("onnx_wide", 2048, 4096)  # 32 MiB
    tracemalloc.start()
    try:
        export_onnx(g, tmp_path / "wide.onnx", {"x": x}, {"y": y}, variables={"w": value})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * value.nbytes, (peak, value.nbytes)  # a kept numpy copy made it 2x
    (w,) = onnx.load(str(tmp_path / "wide.onnx")).graph.initializer
    np.testing.assert_array_equal(numpy_helper.to_array(w), value)
