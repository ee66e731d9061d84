"""Several outputs, sample and class weights, and nested models, checked against Keras (tensorflow-cpu)
with the same weights in float64: evaluate's values and names, one training step's new weights,
predictions and summary counts."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, ShapeError

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

N = 24


@pytest.fixture(scope="module", autouse=True)
def keras_float64():
    """Keras' data adapters cast float arrays to floatx: float64 here, so both sides see the same inputs."""
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(old)


@pytest.fixture
def rt():  # per test: nested-model tests name their encoder graph "encoder"
    runtime = kf.connect("inproc")
    yield runtime
    runtime.close()


@pytest.fixture
def data():
    rng = np.random.default_rng(5)
    return {"x": rng.normal(size=(N, 4)), "cls": rng.integers(0, 3, N), "reg": rng.normal(size=(N, 1)),
            "sw": rng.uniform(0.2, 2.0, N)}


def _two_heads(lib, rt=None):
    """A shared trunk with a softmax head 'cls' and a linear head 'reg'."""
    L = kf.nn if lib is kf else keras.layers
    inp = kf.Input((4,), dtype="float64") if lib is kf else keras.Input((4,), dtype="float64")
    kw = {} if lib is kf else {"dtype": "float64"}
    h = L.Dense(5, activation="tanh", name="trunk", **kw)(inp)
    outs = [L.Dense(3, activation="softmax", name="cls", **kw)(h), L.Dense(1, name="reg", **kw)(h)]
    return kf.Model(inp, outs, rt=rt) if lib is kf else keras.Model(inp, outs)


def _same_weights(ours, theirs, seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0.0, 0.5, w.shape) for w in theirs.get_weights()]
    theirs.set_weights(ws)
    ours.set_weights(ws)
    return ws


MULTI = dict(loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"}, loss_weights={"cls": 1.0, "reg": 0.5},
             metrics={"cls": ["accuracy"], "reg": ["mae"]})


def test_multi_output_evaluate_and_predict_match_keras(rt, data):
    ours, theirs = _two_heads(kf, rt), _two_heads(keras)
    _same_weights(ours, theirs)
    ours.compile("sgd", **MULTI)
    theirs.compile("sgd", **MULTI)
    ys = [data["cls"], data["reg"]]
    expect = theirs.evaluate(data["x"], ys, batch_size=N, verbose=0, return_dict=True)
    got = ours.evaluate(data["x"], {"reg": data["reg"], "cls": data["cls"]}, batch_size=7, return_dict=True)
    assert set(got) == set(expect) == {"loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae"}
    for k in expect:  # Keras computes in float32 here and there: its own rounding, not ours
        assert got[k] == pytest.approx(expect[k], rel=1e-6), k
    assert got["loss"] == pytest.approx(got["cls_loss"] + 0.5 * got["reg_loss"], rel=1e-12)
    as_list = ours.evaluate(data["x"], ys)
    assert as_list == pytest.approx([got[k] for k in ("loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae")],
                                    rel=1e-12)  # Keras' order: loss, per-output losses, metrics
    for a, b in zip(ours.predict(data["x"]), theirs.predict(data["x"], verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-10)


def _one_step(model, fit_kw, compile_kw, x, y):
    """One full-batch SGD step; the new weights."""
    model.compile(keras.optimizers.SGD(0.1) if isinstance(model, keras.Model) else kf.optim.SGD(lr=0.1), **compile_kw)
    model.fit(x, y, batch_size=N, epochs=1, shuffle=False, verbose=0, **fit_kw)
    return model.get_weights()


def _assert_same_step(ours, theirs, fit_kw, compile_kw, x, y, y_keras=None, fit_kw_keras=None):
    w0 = _same_weights(ours, theirs)
    got = _one_step(ours, fit_kw, compile_kw, x, y)
    expect = _one_step(theirs, fit_kw if fit_kw_keras is None else fit_kw_keras, compile_kw, x,
                       y if y_keras is None else y_keras)
    for a, b, start in zip(got, expect, w0):
        assert not np.allclose(a, start)  # the step moved every weight
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_multi_output_training_step_with_loss_weights_matches_keras(rt, data):
    _assert_same_step(_two_heads(kf, rt), _two_heads(keras), {}, MULTI, data["x"],
                      {"cls": data["cls"], "reg": data["reg"]}, [data["cls"], data["reg"]])


def test_multi_output_fit_logs_keras_names_and_trains_both_heads(rt, data):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 4))
    y = {"cls": (x[:, 0] > 0).astype(int) + (x[:, 1] > 0), "reg": x[:, 2:3] * 2 - x[:, 3:4]}
    model = _two_heads(kf, rt)
    model.compile(kf.optim.Adam(lr=0.03), **MULTI)
    before = model.evaluate(x, y, return_dict=True)
    hist = model.fit(x, y, epochs=30, batch_size=40, validation_split=0.2, verbose=0, log_every=1)
    theirs = _two_heads(keras)
    theirs.compile("adam", **MULTI)
    names = set(theirs.fit(x, [y["cls"], y["reg"]], epochs=1, validation_split=0.2, verbose=0).history)
    assert set(hist.history) == names
    after = model.evaluate(x, y, return_dict=True)
    assert after["cls_loss"] < before["cls_loss"] / 2 and after["reg_loss"] < before["reg_loss"] / 4
    assert hist.history["val_reg_loss"][-1] < hist.history["val_reg_loss"][0]


def test_output_without_loss_is_not_trained_and_needs_no_labels(rt, data):
    model = _two_heads(kf, rt)
    model.compile("sgd", loss=["sparse_categorical_crossentropy", None])
    w0 = model.get_weights()
    model.fit(data["x"], {"cls": data["cls"]}, epochs=1, verbose=0)
    w1 = model.get_weights()
    np.testing.assert_array_equal(w1[-2], w0[-2])  # reg's kernel: no loss reaches it
    assert not np.allclose(w1[0], w0[0])
    assert model.evaluate(data["x"], [data["cls"], None], return_dict=True).keys() == {"loss", "cls_loss"}


def test_multi_output_bad_compile_and_labels_name_the_outputs(rt, data):
    model = _two_heads(kf, rt)
    with pytest.raises(InvalidArgumentError, match=r"loss names unknown output\(s\) \['clss'\]; the model's outputs "
                                                   r"are \['cls', 'reg'\]"):
        model.compile("sgd", loss={"clss": "mse"})
    with pytest.raises(InvalidArgumentError, match=r"loss_weights has 3 entries for the 2 output\(s\)"):
        model.compile("sgd", loss="mse", loss_weights=[1, 2, 3])
    model.compile("sgd", **MULTI)
    with pytest.raises(InvalidArgumentError, match="no labels for output 'reg'"):
        model.evaluate(data["x"], {"cls": data["cls"]})
    with pytest.raises(InvalidArgumentError, match=r"labels of the outputs \['cls', 'reg'\] as a list"):
        model.evaluate(data["x"], data["cls"])
    with pytest.raises(InvalidArgumentError, match="class_weight is for models with one output"):
        model.fit(data["x"], [data["cls"], data["reg"]], class_weight={0: 2.0}, verbose=0)


# --------------------------------------------------------------------------- sample and class weights
def _softmax_model(lib, rt=None):
    if lib is kf:
        return kf.Sequential([kf.Input((4,), dtype="float64"), kf.nn.Dense(6, activation="relu"),
                              kf.nn.Dense(3, activation="softmax")], rt=rt)
    return keras.Sequential([keras.Input((4,), dtype="float64"), keras.layers.Dense(6, activation="relu",
                             dtype="float64"), keras.layers.Dense(3, activation="softmax", dtype="float64")])


def test_sample_weighted_evaluate_and_weighted_metrics_match_keras(rt, data):
    ours, theirs = _softmax_model(kf, rt), _softmax_model(keras)
    _same_weights(ours, theirs)
    kw = dict(loss="sparse_categorical_crossentropy", metrics=["accuracy"], weighted_metrics=["accuracy"])
    ours.compile("sgd", **kw)
    theirs.compile("sgd", **kw)
    expect = theirs.evaluate(data["x"], data["cls"], sample_weight=data["sw"], batch_size=N, verbose=0,
                             return_dict=True)
    got = ours.evaluate(data["x"], data["cls"], sample_weight=data["sw"], batch_size=5, return_dict=True)
    assert set(got) == set(expect) == {"loss", "accuracy", "weighted_accuracy"}
    for k in expect:
        assert got[k] == pytest.approx(expect[k], rel=1e-6), k
    p = ours.predict(data["x"])  # Keras' meanings, in float64: the loss divides by rows, the metric by weight
    nll = -np.log(p[np.arange(N), data["cls"]])
    hit = p.argmax(1) == data["cls"]
    assert got["loss"] == pytest.approx(np.mean(nll * data["sw"]), rel=1e-12)
    assert got["weighted_accuracy"] == pytest.approx(np.sum(hit * data["sw"]) / np.sum(data["sw"]), rel=1e-12)
    assert got["accuracy"] == pytest.approx(hit.mean(), rel=1e-12)
    plain = ours.evaluate(data["x"], data["cls"], return_dict=True)  # no weights: the unweighted variant
    assert plain["loss"] == pytest.approx(nll.mean(), rel=1e-12)
    assert plain["weighted_accuracy"] == pytest.approx(hit.mean(), rel=1e-12)


def test_training_step_with_sample_weight_matches_keras(rt, data):
    _assert_same_step(_softmax_model(kf, rt), _softmax_model(keras), {"sample_weight": data["sw"]},
                      {"loss": "sparse_categorical_crossentropy"}, data["x"], data["cls"])


def test_training_step_with_class_weight_matches_keras(rt, data):
    _assert_same_step(_softmax_model(kf, rt), _softmax_model(keras), {"class_weight": {0: 3.0, 2: 0.25}},
                      {"loss": "sparse_categorical_crossentropy"}, data["x"], data["cls"])


def test_class_and_sample_weights_multiply_and_one_hot_labels_use_argmax(rt, data):
    onehot = np.eye(3)[data["cls"]]
    # tf.keras 2 multiplies the two; Keras 3 refuses the pair, so it gets the product as sample_weight
    product = data["sw"] * np.where(data["cls"] == 1, 4.0, 1.0)
    _assert_same_step(_softmax_model(kf, rt), _softmax_model(keras),
                      {"class_weight": {1: 4.0}, "sample_weight": data["sw"]}, {"loss": "categorical_crossentropy"},
                      data["x"], onehot, fit_kw_keras={"sample_weight": product})


def test_zero_weights_leave_the_model_unchanged_and_validation_keeps_its_weights(rt, data):
    model = _softmax_model(kf, rt)
    model.compile(kf.optim.SGD(lr=0.5), "sparse_categorical_crossentropy")
    w0 = model.get_weights()
    model.fit(data["x"], data["cls"], sample_weight=np.zeros(N), epochs=2, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), w0):
        np.testing.assert_array_equal(a, b)
    vw = np.linspace(0.0, 2.0, 8)
    hist = model.fit(data["x"][:16], data["cls"][:16], validation_data=(data["x"][16:], data["cls"][16:], vw),
                     epochs=1, batch_size=16, verbose=0)
    expect = model.evaluate(data["x"][16:], data["cls"][16:], sample_weight=vw)
    assert hist.history["val_loss"][0] == pytest.approx(expect, rel=1e-9)


def test_bad_sample_weights_are_named(rt, data):
    model = _softmax_model(kf, rt)
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ShapeError, match=r"sample_weight must have shape \(24,\), one weight per row; got \(23,\)"):
        model.fit(data["x"], data["cls"], sample_weight=np.ones(N - 1), verbose=0)
    with pytest.raises(InvalidArgumentError, match="finite and >= 0"):
        model.evaluate(data["x"], data["cls"], sample_weight=-np.ones(N))
    with pytest.raises(InvalidArgumentError, match="class_weight must map class indices to numbers"):
        model.fit(data["x"], data["cls"], class_weight={"a": "b"}, verbose=0)


def test_weighted_variant_survives_save_and_load(tmp_path, data):
    with kf.connect("inproc", state_dir=str(tmp_path / "state")) as rt_state:
        model = _two_heads(kf, rt_state)
        model.compile("sgd", **MULTI)
        model.fit(data["x"], [data["cls"], data["reg"]], sample_weight=data["sw"], epochs=1, verbose=0)
        expect = model.evaluate(data["x"], [data["cls"], data["reg"]], sample_weight=data["sw"], return_dict=True)
        model.save()
        loaded = kf.models.load(model.graph.name, rt=rt_state)
        assert loaded.output_names == ["cls", "reg"]
        got = loaded.evaluate(data["x"], {"cls": data["cls"], "reg": data["reg"]}, sample_weight=data["sw"],
                              return_dict=True)
        assert got == pytest.approx(expect, rel=1e-12)
        plain = _softmax_model(kf, rt_state)
        plain.compile("sgd", "sparse_categorical_crossentropy")
        plain.save()
        with pytest.raises(FailedPreconditionError, match="sample weights need the weighted loss"):
            kf.models.load(plain.graph.name, rt=rt_state).evaluate(data["x"], data["cls"], sample_weight=data["sw"])


# --------------------------------------------------------------------------- nested models
def _encoder(lib, rt=None):
    L = kf.nn if lib is kf else keras.layers
    kw = {} if lib is kf else {"dtype": "float64"}
    inp = kf.Input((4,), dtype="float64") if lib is kf else keras.Input((4,), dtype="float64")
    h = L.BatchNormalization(name="bn", **kw)(L.Dense(6, activation="tanh", name="e1", **kw)(inp))
    out = L.Dense(5, activation="relu", name="e2", **kw)(h)
    return kf.Model(inp, out, name="encoder", rt=rt) if lib is kf else keras.Model(inp, out, name="encoder")


def _nested_both(rt, functional):
    enc_k, enc_o = _encoder(keras), _encoder(kf, rt)
    _same_weights(enc_o, enc_k, seed=3)
    if functional:
        ik, io = keras.Input((4,), dtype="float64"), kf.Input((4,), dtype="float64")
        theirs = keras.Model(ik, keras.layers.Dense(3, activation="softmax", name="head", dtype="float64")(enc_k(ik)))
        ours = kf.Model(io, kf.nn.Dense(3, activation="softmax", name="head")(enc_o(io)), rt=rt)
    else:
        theirs = keras.Sequential([enc_k, keras.layers.Dense(3, activation="softmax", name="head", dtype="float64")])
        ours = kf.Sequential([enc_o, kf.nn.Dense(3, activation="softmax", name="head")], rt=rt)
    head = np.random.default_rng(4)
    hw = [head.normal(size=w.shape) for w in theirs.get_layer("head").get_weights()]
    theirs.get_layer("head").set_weights(hw)
    ours.get_layer("head").set_weights(hw)
    return ours, theirs, enc_o


@pytest.mark.parametrize("functional", [False, True], ids=["sequential", "functional"])
def test_nested_model_predicts_like_keras_and_counts_params(rt, data, functional):
    ours, theirs, enc = _nested_both(rt, functional)
    np.testing.assert_allclose(ours.predict(data["x"]), theirs.predict(data["x"], verbose=0), rtol=1e-10)
    assert ours.count_params() == theirs.count_params()
    rows = {(r[1], r[3]) for r in ours._summary()}
    assert rows == {(type(layer).__name__, layer.count_params()) for layer in theirs.layers if layer.count_params()}
    assert "encoder (Functional)" in ours.summary(print_fn=None)
    nested = ours.get_layer("encoder")
    assert [v.name for v in nested.variables()][:2] == ["encoder/e1/kernel", "encoder/e1/bias"]
    for a, b in zip(nested.get_weights(), enc.get_weights()):  # starts from the inner model's weights
        np.testing.assert_array_equal(a, b)


def test_nested_model_trains_a_copy_of_its_weights_and_step_matches_keras(rt, data):
    ours, theirs, enc = _nested_both(rt, functional=False)
    inner_before = enc.get_weights()
    w0 = ours.get_weights()
    ours.compile(kf.optim.SGD(lr=0.1), "sparse_categorical_crossentropy")
    theirs.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    ours.fit(data["x"], data["cls"], batch_size=N, epochs=1, shuffle=False, verbose=0)
    theirs.fit(data["x"], data["cls"], batch_size=N, epochs=1, shuffle=False, verbose=0)
    # layer by layer (Keras lists a nested model's trainable weights first): the same names, order and values
    pairs = [(layer, theirs.get_layer("encoder").get_layer(layer.name)) for layer in ours.get_layer("encoder").layers]
    pairs.append((ours.get_layer("head"), theirs.get_layer("head")))
    start = dict(zip([v.name for v in ours._variables()], w0))
    for mine, keras_layer in pairs:
        for v, a, b in zip(mine.variables(ours.graph), mine.get_weights(), keras_layer.get_weights()):
            # 1e-7: Keras' result moves by ~1e-8 when other Keras tests ran first in the process (alone: 1e-9)
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10, err_msg=v.name)
            assert not np.allclose(a, start[v.name]), v.name  # the step and the moving-statistics updates
    assert sum(len(m.variables(ours.graph)) for m, _ in pairs) == len(w0)
    for a, b in zip(enc.get_weights(), inner_before):  # the inner model's own graph is left alone
        np.testing.assert_array_equal(a, b)


def test_frozen_nested_model_keeps_its_weights_and_batch_norm_statistics(rt, data):
    enc = _encoder(kf, rt)
    enc.trainable = False
    outer = kf.Sequential([enc, kf.nn.Dense(3, activation="softmax", name="head")], rt=rt)
    text = outer.summary(print_fn=None)
    assert "Trainable params: 18" in text and "Non-trainable params: 89" in text  # only the head's 5*3 + 3
    outer.compile(kf.optim.Adam(lr=0.05), "sparse_categorical_crossentropy")
    frozen0 = outer.get_layer("encoder").get_weights()
    head0 = outer.get_layer("head").get_weights()
    outer.fit(data["x"], data["cls"], epochs=3, batch_size=8, verbose=0)
    for a, b in zip(outer.get_layer("encoder").get_weights(), frozen0):  # moving statistics too: inference mode
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(outer.get_layer("head").get_weights()[0], head0[0])
    assert all(layer.trainable for layer in enc.layers)  # freezing the copy did not touch the inner layers


def test_nested_model_errors(rt, data):
    enc = _encoder(kf, rt)
    with pytest.raises(NotFoundError, match=r"has no layer 'nope'; layers: \['e1', 'bn', 'e2'\]"):
        enc.get_layer("nope")
    with pytest.raises(InvalidArgumentError, match="wraps model 'encoder', which lives on a runtime"):
        enc.as_layer().get_config()
    two = kf.Model([a := kf.Input((2,)), b := kf.Input((2,))], kf.nn.Add()([a, b]), rt=rt)
    with pytest.raises(InvalidArgumentError, match=r"expected 2 input\(s\); got 1"):
        two(kf.Input((2,)))


def test_model_called_twice_shares_one_set_of_variables(rt, data):
    enc = _encoder(kf, rt)
    a, b = kf.Input((4,), dtype="float64"), kf.Input((4,), dtype="float64")
    siamese = kf.Model([a, b], kf.nn.Concatenate()([enc(a), enc(b)]), rt=rt)
    assert siamese.count_params() == enc.count_params()
    left, right = data["x"][:12], data["x"][12:]
    out = siamese.predict([left, right])
    np.testing.assert_allclose(out, np.concatenate([enc.predict(left), enc.predict(right)], axis=1), rtol=1e-12)


def test_multi_output_weighted_fit_on_a_resident_dataset_by_column_names(rt, data):
    model = _two_heads(kf, rt)
    model.compile(kf.optim.SGD(lr=0.1), **MULTI)
    ds = rt.dataset("heads", {"feat": data["x"], "c": data["cls"].astype("int64"), "r": data["reg"], "w": data["sw"]})
    twin = _two_heads(kf, rt)
    twin.compile(kf.optim.SGD(lr=0.1), **MULTI)
    twin.set_weights(model.get_weights())
    cols = {"x": "feat", "cls": "c", "reg": "r", "sample_weight": "w"}
    model.fit(ds, columns=cols, batch_size=N, epochs=1, shuffle=False, verbose=0)
    twin.fit(data["x"], [data["cls"], data["reg"]], sample_weight=data["sw"], batch_size=N, epochs=1, shuffle=False,
             verbose=0)
    for a, b in zip(model.get_weights(), twin.get_weights()):  # the same weighted step from arrays or columns
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_epoch_callbacks_see_per_output_validation_logs_of_a_weighted_fit(rt, data):
    model = _two_heads(kf, rt)
    model.compile(kf.optim.SGD(lr=0.05), **MULTI)
    seen = []
    keep = kf.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append((e, sorted(logs))))
    keep.epoch_control = True  # one job per epoch: the path EarlyStopping and friends take
    stop = kf.callbacks.EarlyStopping(monitor="val_cls_loss", patience=100)
    hist = model.fit(data["x"], [data["cls"], data["reg"]], sample_weight=data["sw"], validation_split=0.25,
                     epochs=3, batch_size=6, callbacks=[keep, stop], verbose=0)
    assert len(hist.jobs) == 3 and [e for e, _ in seen] == [0, 1, 2]
    assert seen[0][1] == sorted(["loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mae", "val_loss", "val_cls_loss",
                                 "val_reg_loss", "val_cls_accuracy", "val_reg_mae"])
    vx, vy = data["x"][18:], [data["cls"][18:], data["reg"][18:]]
    expect = model.evaluate(vx, vy, sample_weight=data["sw"][18:], return_dict=True)
    assert hist.history["val_cls_loss"][-1] == pytest.approx(expect["cls_loss"], rel=1e-9)


def test_nested_multi_output_model_exports_every_output(tmp_path, data):
    with kf.connect("inproc", state_dir=str(tmp_path / "state")) as rt_state:
        enc = _encoder(kf, rt_state)
        inp = kf.Input((4,), dtype="float64", name="features")
        h = enc(inp)
        model = kf.Model(inp, [kf.nn.Dense(3, activation="softmax", name="cls")(h), kf.nn.Dense(1, name="reg")(h)],
                         rt=rt_state)
        model.compile(kf.optim.Adam(lr=0.01), **MULTI)
        model.fit(data["x"], [data["cls"], data["reg"]], sample_weight=data["sw"], epochs=2, batch_size=8, verbose=0)
        assert model.export("heads") == 1
        served = rt_state.model("heads").predict({"features": data["x"]})
        want = model.predict(data["x"])  # inference pass: the moving batch-norm statistics of the nested encoder
        assert sorted(served) == ["output_0", "output_1"]
        np.testing.assert_allclose(served["output_0"], want[0], rtol=1e-12)
        np.testing.assert_allclose(served["output_1"], want[1], rtol=1e-12)


def test_inputs_by_name_as_keras_takes_them(rt, data):
    a, b = kf.Input((4,), dtype="float64", name="left"), kf.Input((2,), dtype="float64", name="right")
    out = kf.nn.Dense(1, name="y")(kf.nn.Concatenate()([a, kf.nn.Dense(3)(b)]))
    model = kf.Model([a, b], out, rt=rt)
    model.compile(kf.optim.SGD(lr=0.05), "mse")
    xl, xr = data["x"], data["x"][:, :2] * 2
    np.testing.assert_array_equal(model.predict({"right": xr, "left": xl}), model.predict([xl, xr]))
    assert model.evaluate({"left": xl, "right": xr}, data["reg"]) == model.evaluate([xl, xr], data["reg"])
    hist = model.fit({"left": xl, "right": xr}, data["reg"], validation_data=({"left": xl, "right": xr}, data["reg"]),
                     epochs=2, verbose=0)
    assert len(hist.history["val_loss"]) == 2
    with pytest.raises(InvalidArgumentError, match=r"must give exactly \['left', 'right'\]; unknown \['rigth'\], "
                                                   r"missing \['right'\]"):
        model.predict({"left": xl, "rigth": xr})


def test_trainable_flags_are_read_at_compile_as_keras_reads_them(rt, data):
    enc = _encoder(kf, rt)
    model = kf.Sequential([enc, kf.nn.Dense(3, activation="softmax", name="head")], rt=rt)
    model.build((4,))  # built with everything trainable; freezing afterwards takes effect at the next compile
    enc.trainable = False
    model.compile(kf.optim.SGD(lr=0.5), "sparse_categorical_crossentropy")
    frozen = [w for v, w in zip(model._variables(), model.get_weights()) if v.trainable]
    model.fit(data["x"], data["cls"], epochs=1, batch_size=8, verbose=0)
    after = [w for v, w in zip(model._variables(), model.get_weights()) if v.trainable]
    n_enc = sum(v.trainable for v in model.get_layer("encoder").variables())
    for a, b in zip(after[:n_enc], frozen[:n_enc]):  # the encoder's kernels, biases, gamma, beta: untouched
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(after[-2], frozen[-2])  # the head trained
    enc.trainable = True  # fine-tuning: recompile, and the encoder trains too
    model.compile(kf.optim.SGD(lr=0.5), "sparse_categorical_crossentropy")
    model.fit(data["x"], data["cls"], epochs=1, batch_size=8, verbose=0)
    tuned = [w for v, w in zip(model._variables(), model.get_weights()) if v.trainable]
    assert not np.allclose(tuned[0], after[0])
    model.get_layer("head").trainable = False
    enc.trainable = False
    with pytest.raises(InvalidArgumentError, match="every layer is frozen"):
        model.compile("sgd", "sparse_categorical_crossentropy")
