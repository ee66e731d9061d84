"""A Keras-style model on a real `kernelflow serve`: survives a kill -9 and restart through the
state dir, and its export answers REST predictions equal to model.predict."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

import kernelflow as kf
from kernelflow.errors import AlreadyExistsError, NotFoundError
from tests.runtime_server.serving.test_rest import http, rest_port
from tests.support.server import ServerProcess
from tests.support.waiting import wait_for


@pytest.fixture(scope="module")
def data():
    d = load_digits()
    return (d.data / 16.0).astype("float32").reshape(-1, 8, 8, 1), d.target


def test_model_survives_kill_and_restart_and_export_round_trips(tmp_path, data):
    X, y = data
    state = str(tmp_path / "state")
    srv = ServerProcess(tmp_path, "--state-dir", state, "--http-port", "0",
                        "--file-system-poll-wait-seconds", "0.2").wait_listening()
    try:
        rt = srv.connect()
        model = kf.Sequential([kf.Input((8, 8, 1)), kf.nn.Conv2D(4, 3, activation="relu"),
                               kf.nn.BatchNormalization(), kf.nn.Flatten(), kf.nn.Dropout(0.2),
                               kf.nn.Dense(10, activation="softmax")], name="digits_cnn", rt=rt)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(X[:600], y[:600], epochs=2, verbose=0)
        before = model.predict(X[:50])
        summary = model.summary(print_fn=None)
        with pytest.raises(AlreadyExistsError, match="kf.models.load\\('digits_cnn'"):
            kf.Sequential([kf.nn.Dense(2)], name="digits_cnn", rt=rt).build((3,))
        # export: REST predict equals model.predict (the inference pass: no dropout, moving BN statistics)
        assert model.export("digits_cnn") == 1
        port = rest_port(srv)
        wait_for(lambda: http(port, "GET", "/v1/models/digits_cnn")[1].get("model_version_status", [{}])[0]
                 .get("state") == "AVAILABLE", "model digits_cnn served")
        code, doc = http(port, "POST", "/v1/models/digits_cnn:predict", {"instances": X[:50].tolist()})
        assert code == 200, doc
        np.testing.assert_allclose(np.array(doc["predictions"]), before, rtol=1e-5, atol=1e-6)
        model.save(tag="after-fit")
        rt.close()
    finally:
        srv.proc.kill()  # no clean shutdown: what survives is what the state dir had
        srv.proc.wait(timeout=30)
    srv2 = ServerProcess(tmp_path, "--state-dir", state).wait_listening()
    try:
        rt2 = srv2.connect()
        with pytest.raises(NotFoundError, match="no graph 'nope'"):
            kf.models.load("nope", rt=rt2)
        loaded = kf.models.load("digits_cnn", rt=rt2)
        np.testing.assert_allclose(loaded.predict(X[:50]), before, rtol=1e-6, atol=1e-7)
        assert loaded.summary(print_fn=None) == summary
        loss0, _ = loaded.evaluate(X[600:900], y[600:900])
        hist = loaded.fit(X[:600], y[:600], epochs=2, verbose=0)  # trains on with the compile it was saved with
        assert len(hist.history["loss"]) == 2
        assert loaded.evaluate(X[600:900], y[600:900])[0] < loss0
        rt2.close()
    finally:
        srv2.stop()
