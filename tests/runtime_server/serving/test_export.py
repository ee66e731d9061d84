"""Model export (issue #7): directory layout, pruning, errors, and loading in a fresh runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.protocol.model_dir import MARKER

from .conftest import build_digits


def test_export_writes_version_dir_with_signature_and_marker(inproc_state, tmp_path):
    d = build_digits(inproc_state, steps=3)
    v = d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs, "class": d.cls})
    assert v == 1
    vdir = tmp_path / "state" / "models" / "digits" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == sorted(
        [MARKER, "graph.msgpack", "signature.json", "variables.safetensors"])
    sig = json.loads((vdir / "signature.json").read_text())
    assert sig["inputs"] == {"image": {"name": "x", "dtype": "float32", "shape": [None, 64]}}
    assert sig["outputs"]["probabilities"]["shape"] == [None, 10]
    assert sig["outputs"]["class"]["dtype"] == "int64"
    from safetensors.numpy import load_file

    arrays = load_file(str(vdir / "variables.safetensors"))
    assert sorted(arrays) == ["b1", "b2", "w1", "w2"]  # no optimiser slots
    np.testing.assert_array_equal(arrays["w1"], d.g.run(d.g["w1"]))


def test_export_prunes_training_nodes(inproc_state, tmp_path):
    from kernelflow.protocol.codec import decode

    d = build_digits(inproc_state, steps=1)
    d.g.export("digits", inputs={"image": d.x}, outputs={"class": d.cls})
    nodes = decode((tmp_path / "state" / "models" / "digits" / "1" / "graph.msgpack").read_bytes())["nodes"]
    ops = {n["op"] for n in nodes}
    assert not ops & {"assign", "assign_add", "assign_sub", "group"}
    assert "y" not in {n["name"] for n in nodes}
    assert all("control_inputs" not in n for n in nodes)


def test_export_second_version_is_two(inproc_state):
    d = build_digits(inproc_state, steps=1)
    assert d.g.export("digits", inputs={"image": d.x}, outputs={"class": d.cls}) == 1
    assert d.g.export("digits", inputs={"image": d.x}, outputs={"class": d.cls}) == 2
    assert [s["version"] for s in inproc_state.models()[0]["model_version_status"]] == ["2", "1"]


def test_export_existing_version_raises(inproc_state):
    d = build_digits(inproc_state, steps=0)
    d.g.export("digits", inputs={"image": d.x}, outputs={"class": d.cls}, version=5)
    with pytest.raises(kf.errors.AlreadyExistsError, match="version 5"):
        d.g.export("digits", inputs={"image": d.x}, outputs={"class": d.cls}, version=5)
    assert d.g.export("digits", inputs={"image": d.x}, outputs={"class": d.cls}) == 6


def test_export_missing_placeholder_raises_naming_it(inproc_state):
    g = inproc_state.graph("two")
    a = g.placeholder((None, 2), "float32", name="a")
    b = g.placeholder((None, 2), "float32", name="b_extra")
    with pytest.raises(kf.errors.InvalidArgumentError, match="placeholder 'b_extra'"):
        g.export("two", inputs={"a": a}, outputs={"s": a + b})


def test_export_bad_model_name_raises(inproc_state):
    g = inproc_state.graph("g")
    a = g.placeholder((None,), "float32", name="a")
    for bad in ["../evil", "a/b", "", ".hidden"]:
        with pytest.raises(kf.errors.InvalidArgumentError, match="model name"):
            g.export(bad, inputs={"a": a}, outputs={"o": a * 2.0})


def test_export_without_state_dir_raises():
    rt = kf.connect("inproc")
    g = rt.graph("g")
    a = g.placeholder((None,), "float32", name="a")
    with pytest.raises(kf.errors.FailedPreconditionError, match="state dir"):
        g.export("m", inputs={"a": a}, outputs={"o": a * 2.0})


def test_rpc_predict_matches_graph_run(inproc_state):
    d = build_digits(inproc_state, steps=5)
    d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs, "class": d.cls})
    batch = d.X[:17]
    out = inproc_state.model("digits").predict({"image": batch})
    ref = d.g.run({"probabilities": d.probs, "class": d.cls}, feed={d.x: batch})
    assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (17, 10)
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out["class"], ref["class"])


def test_rpc_predict_wrong_input_name_raises(inproc_state):
    d = build_digits(inproc_state, steps=0)
    d.g.export("digits", inputs={"image": d.x}, outputs={"class": d.cls})
    with pytest.raises(kf.errors.InvalidArgumentError, match="unknown: \\['img'\\]"):
        inproc_state.model("digits").predict({"img": d.X[:2]})
    with pytest.raises(kf.errors.NotFoundError, match="no model named 'nope'"):
        inproc_state.model("nope").predict({"image": d.X[:2]})


def test_export_snapshot_keeps_values_after_more_training(inproc_state):
    d = build_digits(inproc_state, steps=2)
    d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs})
    before = d.g.run(d.probs, feed={d.x: d.X[:4]})
    d.g.write_variable(d.g["b2"], np.full(10, 3.0, "float32"))
    out = inproc_state.model("digits", version=1).predict({"image": d.X[:4]})
    np.testing.assert_allclose(out["probabilities"], before, rtol=1e-6)


def test_load_model_in_fresh_runtime_matches(inproc_state, tmp_path):
    d = build_digits(inproc_state, steps=5)
    d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs, "class": d.cls})
    m = kf.load_model(tmp_path / "state" / "models" / "digits")  # its latest version, new inproc runtime
    out = m.predict({"image": d.X[:9]})
    ref = d.g.run({"probabilities": d.probs, "class": d.cls}, feed={d.x: d.X[:9]})
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out["class"], ref["class"])


def test_load_model_without_marker_raises(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    with pytest.raises(kf.errors.NotFoundError, match="no complete model version"):
        kf.load_model(tmp_path / "m")


def test_load_model_damaged_files_raise_naming_the_dir(tmp_path):
    d = tmp_path / "m" / "1"
    d.mkdir(parents=True)
    (d / "signature.json").write_text("{}")
    (d / "graph.msgpack").write_bytes(b"\x00 not msgpack")
    (d / "MODEL_COMPLETE").write_text("x\n")
    with pytest.raises(kf.errors.FailedPreconditionError, match=f"load_model: model at {d} is damaged"):
        kf.load_model(tmp_path / "m")


def _dropout_net(rt: kf.Runtime, training_flag: bool):
    """x -> dense -> dropout(0.5) -> batch norm -> dense; training a bool placeholder (or True)."""
    g = rt.graph("drop")
    rng = np.random.default_rng(3)
    x = g.placeholder((None, 8), "float32", name="x")
    training = g.placeholder((), "bool", name="training") if training_flag else True
    w1 = g.variable(rng.standard_normal((8, 16)).astype("float32"), name="w1")
    w2 = g.variable(rng.standard_normal((16, 3)).astype("float32"), name="w2")
    mm = g.variable(np.full(16, 0.5, "float32"), name="moving_mean", trainable=False)
    mv = g.variable(np.full(16, 2.0, "float32"), name="moving_var", trainable=False)
    h = kf.dropout(kf.relu(x @ w1), 0.5, training=training)
    h = kf.batch_norm(h, None, None, mm, mv, training=training)
    return g, x, training, h @ w2


def test_export_binds_training_flag_to_inference_and_drops_dropout(inproc_state, tmp_path):
    from kernelflow.protocol.codec import decode

    g, x, training, y = _dropout_net(inproc_state, training_flag=True)
    X = np.random.default_rng(4).standard_normal((6, 8)).astype("float32")
    train_a, train_b = g.run(y, feed={x: X, training: True}), g.run(y, feed={x: X, training: True})
    assert not np.allclose(train_a, train_b)  # dropout is live in training mode
    g.export("drop", inputs={"x": x}, outputs={"y": y})
    vdir = tmp_path / "state" / "models" / "drop" / "1"
    nodes = decode((vdir / "graph.msgpack").read_bytes())["nodes"]
    assert not [n["name"] for n in nodes if n["op"].startswith("random_")]
    assert {n["name"]: n["op"] for n in nodes}.get("training", "constant") == "constant"
    assert json.loads((vdir / "signature.json").read_text())["bound"] == {"training": False}
    ref = g.run(y, feed={x: X, training: False})
    out1 = inproc_state.model("drop").predict({"x": X})["y"]
    out2 = kf.load_model(vdir).predict({"x": X})["y"]
    np.testing.assert_allclose(out1, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out1, out2)
    np.testing.assert_array_equal(out1, inproc_state.model("drop").predict({"x": X})["y"])  # deterministic


def test_export_dropout_in_training_mode_raises_naming_random_node(inproc_state):
    g, x, _, y = _dropout_net(inproc_state, training_flag=False)
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"random node 'dropout/uniform.*training=False"):
        g.export("drop", inputs={"x": x}, outputs={"y": y})


def test_export_is_predictable_as_soon_as_export_returns(inproc_state):
    d = build_digits(inproc_state, steps=2)
    for v in (1, 2, 3):
        d.g.write_variable(d.g["b2"], np.eye(10, dtype="float32")[v] * 50.0)
        assert d.g.export("digits", inputs={"image": d.x}, outputs={"class": d.cls}) == v
        assert inproc_state.model("digits").predict({"image": d.X[:3]})["class"].tolist() == [v, v, v]
    states = {s["version"]: s["state"] for s in inproc_state.models()[0]["model_version_status"]}
    assert states == {"3": "AVAILABLE", "2": "END", "1": "END"}  # latest: the old ones unloaded


def test_export_training_flag_used_as_value_becomes_constant_false(inproc_state):
    g = inproc_state.graph("flag")
    x = g.placeholder((None, 2), "float32", name="x")
    training = g.placeholder((), "bool", name="is_training")
    y = x + kf.cast(training, "float32") * 100.0
    g.export("flag", inputs={"x": x}, outputs={"y": y})
    X = np.ones((2, 2), "float32")
    np.testing.assert_array_equal(inproc_state.model("flag").predict({"x": X})["y"], X)
    assert inproc_state.model("flag").status()["signature"]["bound"] == {"is_training": False}
