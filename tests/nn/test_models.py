"""kf.Sequential / kf.Model: compile, fit as a job, callbacks, evaluate, predict, summary, errors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import kernelflow as kf
from kernelflow.errors import FailedPreconditionError, InvalidArgumentError, ShapeError

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = (d.data / 16.0).astype("float32")
    return train_test_split(X, d.target, test_size=0.25, random_state=0, stratify=d.target)


@pytest.fixture
def rt():
    runtime = kf.connect("inproc")
    yield runtime
    runtime.close()


def _mlp(rt, **kw):
    return kf.Sequential([kf.Input((64,)), kf.nn.Dense(32, activation="relu"),
                          kf.nn.Dense(10, activation="softmax")], rt=rt, **kw)


def test_sequential_cnn_reaches_97_percent_on_digits(rt, digits):
    X_train, X_test, y_train, y_test = digits
    model = kf.Sequential([
        kf.Input((8, 8, 1)),
        kf.nn.Conv2D(16, 3, padding="same", activation="relu"),
        kf.nn.BatchNormalization(),
        kf.nn.MaxPool2D(),
        kf.nn.Dropout(0.1),
        kf.nn.Flatten(),
        kf.nn.Dense(10, activation="softmax"),
    ], rt=rt)
    model.compile(kf.optim.Adam(lr=2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(X_train.reshape(-1, 8, 8, 1), y_train, epochs=15, batch_size=32, validation_split=0.1,
                     verbose=0)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(hist.history["val_loss"]) == 15 and hist.history["loss"][-1] < hist.history["loss"][0] / 3
    loss, acc = model.evaluate(X_test.reshape(-1, 8, 8, 1), y_test)
    assert acc >= 0.97
    pred = model.predict(X_test.reshape(-1, 8, 8, 1), batch_size=100)
    assert pred.shape == (len(X_test), 10)
    assert np.mean(pred.argmax(1) == y_test) == pytest.approx(acc, abs=1e-6)


def test_fit_before_compile_says_so(rt, digits):
    with pytest.raises(FailedPreconditionError, match="not compiled; call model.compile"):
        _mlp(rt).fit(digits[0], digits[2])


def test_unknown_loss_and_optimizer_strings_list_the_known_ones(rt):
    model = _mlp(rt)
    with pytest.raises(InvalidArgumentError, match=r"unknown loss 'crossentropy'; known: \[.*'mse'"):
        model.compile("adam", "crossentropy")
    with pytest.raises(InvalidArgumentError, match=r"unknown optimizer 'adamm'; known: \['adagrad', 'adam'"):
        model.compile("adamm", "mse")
    with pytest.raises(InvalidArgumentError, match="unknown metric 'acuracy'"):
        model.compile("adam", "mse", metrics=["acuracy"])


def test_wrong_input_shape_names_the_layer_and_both_shapes(rt):
    g = rt.graph("shapes")
    dense = kf.nn.Dense(3, name="head")
    dense(g.placeholder((None, 4), "float32"))
    with pytest.raises(ShapeError, match=r"layer 'head' \(Dense\): built for inputs of shape \(None, 4\); got "
                                         r"shape \(None, 5\)"):
        dense(g.placeholder((None, 5), "float32"))
    with pytest.raises(ShapeError, match=r"layer 'c' \(Conv2D\): expected an input of rank 4.*got shape \(None, 8\)"):
        kf.nn.Conv2D(2, 3, name="c")(g.placeholder((None, 8), "float32"))
    model = _mlp(rt)
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ShapeError, match=r"input 'x' expects shape \(None, 64\); got \(3, 65\)"):
        model.predict(np.zeros((3, 65), "float32"))


def test_string_cross_entropy_expects_probabilities_and_objects_take_logits(rt):
    g = rt.graph("ce")
    y = g.placeholder((None,), "int64")
    p = g.placeholder((None, 3), "float64")
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 2])
    expect = -np.mean(np.log(probs[[0, 1], labels]))
    got = g.run(kf.losses.get_loss("sparse_categorical_crossentropy")(y, p), {y: labels, p: probs})
    assert got == pytest.approx(expect, rel=1e-12)
    logits = np.log(probs) + 1.5  # softmax(logits) == probs
    obj = kf.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert g.run(obj(y, p), {y: labels, p: logits}) == pytest.approx(expect, rel=1e-12)


def test_l2_regularizer_penalty_joins_the_loss(rt, digits):
    X_train, _, y_train, _ = digits
    model = kf.Sequential([kf.Input((64,), dtype="float64"),
                           kf.nn.Dense(10, activation="softmax", kernel_regularizer=kf.nn.L2(0.01), name="out")],
                          rt=rt)
    model.compile("sgd", "sparse_categorical_crossentropy")
    w, b = model.get_weights()
    x = X_train[:50].astype("float64")
    z = x @ w + b
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ce = -np.mean(np.log(p[np.arange(50), y_train[:50]]))
    assert model.evaluate(x, y_train[:50]) == pytest.approx(ce + 0.01 * np.sum(w ** 2), rel=1e-9)


def test_defaults_apply_to_layers_built_inside_unless_given(rt):
    with kf.nn.defaults(activation="tanh", kernel_init="zeros"):
        a = kf.nn.Dense(3)
        b = kf.nn.Dense(3, activation=None)
    c = kf.nn.Dense(3)
    assert (a.activation, b.activation, c.activation) == ("tanh", None, None)
    assert a.kernel_initializer == "zeros" and c.kernel_initializer == "glorot_uniform"
    with pytest.raises(InvalidArgumentError, match="unknown argument"):
        with kf.nn.defaults(activaton="relu"):
            pass


def test_early_stopping_restores_the_best_epochs_weights(rt, digits):
    X_train, _, y_train, _ = digits
    model = _mlp(rt)
    model.compile(kf.optim.SGD(lr=2.0), "sparse_categorical_crossentropy")  # lr high enough to diverge
    seen = {}

    class Keep(kf.callbacks.Callback):
        epoch_control = True

        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = (logs["val_loss"], model.get_weights())

    stop = kf.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    hist = model.fit(X_train, y_train, epochs=12, batch_size=16, validation_split=0.2, callbacks=[Keep(), stop],
                     verbose=0)
    ran = len(hist.epoch)
    losses = hist.history["val_loss"]
    best = int(np.argmin(losses))
    assert ran < 12 and ran == best + 2  # stopped one epoch (patience) after the best
    for a, b in zip(model.get_weights(), seen[best][1]):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_callbacks_change_the_optimisers_rate(rt, digits):
    X_train, _, y_train, _ = digits
    model = _mlp(rt)
    model.compile(kf.optim.Adam(lr=0.01), "sparse_categorical_crossentropy")
    sched = kf.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 * 0.5 ** epoch)
    hist = model.fit(X_train[:200], y_train[:200], epochs=3, callbacks=[sched], verbose=0)
    assert hist.history["learning_rate"] == pytest.approx([0.01, 0.005, 0.0025], rel=1e-6)
    plateau = kf.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0)
    model.fit(X_train[:200], y_train[:200], epochs=3, callbacks=[plateau], verbose=0)
    assert model.learning_rate == pytest.approx(0.0025 * 0.25, rel=1e-6)  # no 10.0 drop: halved at epochs 2, 3


def test_user_callback_sees_streamed_steps_and_epoch_ends_of_one_job(rt, digits):
    X_train, _, y_train, _ = digits
    model = _mlp(rt)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    steps, epochs = [], []
    cb = kf.callbacks.LambdaCallback(on_train_batch_end=lambda s, logs: steps.append((s, sorted(logs))),
                                     on_epoch_end=lambda e, logs: epochs.append((e, sorted(logs))))
    hist = model.fit(X_train[:320], y_train[:320], epochs=3, batch_size=32, initial_epoch=1, log_every=5,
                     validation_data=(X_train[320:400], y_train[320:400]), callbacks=[cb], verbose=0)
    assert len(hist.jobs) == 1  # observers only: one job for every epoch
    assert [s for s, _ in steps] == [5, 10, 15, 20] and steps[0][1] == ["accuracy", "loss"]
    assert [e for e, _ in epochs] == [1, 2] and hist.epoch == [1, 2]
    assert epochs[0][1] == ["accuracy", "loss", "val_accuracy", "val_loss"]


def test_fit_without_wait_returns_the_running_job(rt, digits):
    X_train, _, y_train, _ = digits
    model = _mlp(rt)
    model.compile("adam", "sparse_categorical_crossentropy")
    job = model.fit(X_train, y_train, epochs=2, wait=False)
    assert job.wait(timeout=120) == "completed"
    assert job.progress["step"] == 2 * int(np.ceil(len(X_train) / 32))
    assert model.last_job is job
    with pytest.raises(InvalidArgumentError, match="need fit\\(..., wait=True\\)"):
        model.fit(X_train, y_train, wait=False, callbacks=[kf.callbacks.EarlyStopping()])


def test_functional_model_with_two_inputs_trains(rt):
    a, b = kf.Input((4,), name="a"), kf.Input((3,), name="b")
    h = kf.nn.Concatenate()([kf.nn.Dense(5, activation="relu")(a), b])
    h = kf.nn.Add()([kf.nn.Dense(8)(h), kf.nn.Dense(8)(h)])
    out = kf.nn.Dense(1)(kf.nn.LayerNormalization()(h))
    model = kf.Model([a, b], out, rt=rt)
    model.compile("adam", "mse", metrics=["mae"])
    rng = np.random.default_rng(11)  # its own data: the module RNG's state depends on which tests ran before
    xa, xb = rng.normal(size=(256, 4)), rng.normal(size=(256, 3))
    y = xa[:, :1] - xb[:, 1:2]
    first = model.evaluate([xa, xb], y)[0]
    hist = model.fit([xa, xb], y, epochs=40, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < first / 4
    assert model.predict([xa, xb]).shape == (256, 1)
    assert model.graph["a"].shape == (None, 4)


def test_functional_output_must_come_from_the_inputs(rt):
    a, other = kf.Input((4,)), kf.Input((4,))
    with pytest.raises(InvalidArgumentError, match="not among the model's inputs"):
        kf.Model(a, kf.nn.Dense(2)(other), rt=rt)


def test_fit_on_a_resident_dataset_by_column_names(rt, digits):
    X_train, X_test, y_train, y_test = digits
    ds = rt.dataset("digits_cols", {"pixels": X_train, "label": y_train.astype("int64")})
    model = _mlp(rt)
    model.compile(kf.optim.Adam(lr=1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(ds, epochs=3, columns={"x": "pixels", "y": "label"}, verbose=0)
    assert len(hist.history["loss"]) == 3
    assert model.evaluate(X_test, y_test)[1] > 0.85
    with pytest.raises(InvalidArgumentError, match="has no array 'x0'"):
        model.fit(ds, epochs=1, verbose=0)
    with pytest.raises(InvalidArgumentError, match="for a Dataset give validation_data"):
        model.fit(ds, validation_split=0.1, columns={"x": "pixels", "y": "label"}, verbose=0)


def test_model_checkpoint_saves_tagged_checkpoints_in_the_state_dir(tmp_path, digits):
    X_train, _, y_train, _ = digits
    with kf.connect("inproc", state_dir=str(tmp_path / "state")) as rt_state:
        model = _mlp(rt_state)
        model.compile("adam", "sparse_categorical_crossentropy")
        ckpt = kf.callbacks.ModelCheckpoint("ep{epoch}-{loss:.3f}", monitor="loss", save_best_only=True)
        hist = model.fit(X_train[:256], y_train[:256], epochs=3, callbacks=[ckpt], verbose=0)
        tags = [c["tag"] for c in model.graph.checkpoints()]
        assert ckpt.saved and set(ckpt.saved) <= set(tags)
        assert ckpt.saved[0] == f"ep1-{hist.history['loss'][0]:.3f}"
        losses = hist.history["loss"]
        assert len(ckpt.saved) == sum(v < min(losses[:i], default=np.inf) for i, v in enumerate(losses))


def test_blocking_fit_shows_a_progress_bar_and_a_line_per_epoch(rt, digits, capsys):
    X_train, _, y_train, _ = digits
    model = _mlp(rt)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(X_train[:320], y_train[:320], epochs=2, batch_size=32, wait=True)  # verbose="auto"
    out, err = capsys.readouterr()
    assert "20/20" in err and "step" in err  # tqdm's bar over the job's steps
    lines = [ln for ln in out.splitlines() if ln.startswith("Epoch ")]
    assert lines == [f"Epoch {e + 1}/2 - loss: {hist.history['loss'][e]:.4f} - accuracy: "
                     f"{hist.history['accuracy'][e]:.4f}" for e in range(2)]
