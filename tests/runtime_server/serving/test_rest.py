"""TensorFlow Serving REST API (issue #7) on a real `kernelflow serve` subprocess, with a plain HTTP client."""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.support.server import ServerProcess

from .conftest import build_digits, drop_held_version, drop_version, wait_for

MAX_BODY = 200_000


def http(port: int, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else {})


def rest_port(srv: ServerProcess) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in srv.stdout:
            m = re.search(r"REST \(TensorFlow Serving API\) on http://127\.0\.0\.1:(\d+)", line)
            if m:
                return int(m.group(1))
        srv.stdout.append(srv.lines.get(timeout=10))
    raise RuntimeError(f"no REST line: {srv.stdout}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, REST port, runtime, digits model) with version 1 of model 'digits' exported."""
    tmp = tmp_path_factory.mktemp("serving")
    srv = ServerProcess(tmp, "--state-dir", str(tmp / "state"), "--http-port", "0",
                        "--http-max-body-bytes", str(MAX_BODY),
                        "--file-system-poll-wait-seconds", "0.2").wait_listening()
    rt = srv.connect()
    try:
        d = build_digits(rt, steps=10)
        assert d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs, "class": d.cls}) == 1
        d.g.export("digits_p", inputs={"image": d.x}, outputs={"probabilities": d.probs})
        yield srv, rest_port(srv), rt, d
    finally:
        rt.close()
        srv.stop()


def test_rest_predict_row_format_matches_graph_run(served):
    _, port, _, d = served
    batch = d.X[:5]
    code, doc = http(port, "POST", "/v1/models/digits:predict", {"instances": batch.tolist()})
    assert code == 200, doc
    ref = d.g.run({"probabilities": d.probs, "class": d.cls}, feed={d.x: batch})
    assert len(doc["predictions"]) == 5 and set(doc["predictions"][0]) == {"probabilities", "class"}
    np.testing.assert_allclose(np.array([p["probabilities"] for p in doc["predictions"]]), ref["probabilities"],
                               rtol=1e-6, atol=1e-7)
    assert [p["class"] for p in doc["predictions"]] == ref["class"].tolist()


def test_rest_predict_row_format_single_output_is_plain_list(served):
    _, port, _, d = served
    code, doc = http(port, "POST", "/v1/models/digits_p/versions/1:predict",
                     {"signature_name": "serving_default", "instances": [{"image": r} for r in d.X[:3].tolist()]})
    assert code == 200, doc
    np.testing.assert_allclose(np.array(doc["predictions"]), d.g.run(d.probs, feed={d.x: d.X[:3]}), rtol=1e-6)


def test_rest_predict_columnar_format(served):
    _, port, _, d = served
    code, doc = http(port, "POST", "/v1/models/digits:predict", {"inputs": {"image": d.X[10:14].tolist()}})
    assert code == 200, doc
    ref = d.g.run({"probabilities": d.probs, "class": d.cls}, feed={d.x: d.X[10:14]})
    assert set(doc["outputs"]) == {"probabilities", "class"}
    np.testing.assert_allclose(np.array(doc["outputs"]["probabilities"]), ref["probabilities"], rtol=1e-6, atol=1e-7)
    assert doc["outputs"]["class"] == ref["class"].tolist()
    code, doc = http(port, "POST", "/v1/models/digits_p:predict", {"inputs": d.X[:2].tolist()})
    assert code == 200 and np.array(doc["outputs"]).shape == (2, 10)


def test_rest_predict_b64_values_are_bytes(served):
    _, port, _, d = served
    # b64 leaves become lists of byte values: here 64 bytes 0..15 for one 64-pixel image.
    pixels = (d.X[0] * 16).astype("uint8")
    code, doc = http(port, "POST", "/v1/models/digits:predict",
                     {"instances": [{"image": {"b64": base64.b64encode(pixels.tobytes()).decode()}}]})
    assert code == 200, doc
    ref = d.g.run(d.cls, feed={d.x: pixels.astype("float32")[None]})
    assert doc["predictions"][0]["class"] == int(ref[0])


def test_rest_predict_matches_rpc_predict(served):
    _, port, rt, d = served
    code, doc = http(port, "POST", "/v1/models/digits:predict", {"instances": d.X[:6].tolist()})
    out = rt.model("digits").predict({"image": d.X[:6]})
    assert code == 200
    assert [p["class"] for p in doc["predictions"]] == out["class"].tolist()
    assert out["probabilities"].dtype == np.float32


def test_rest_status_document_uses_tf_serving_fields(served):
    _, port, _, _ = served
    code, doc = http(port, "GET", "/v1/models/digits_p")
    assert code == 200
    assert doc == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert http(port, "GET", "/v1/models/digits_p/versions/1") == (200, doc)


def test_rest_metadata_document_uses_tf_serving_fields(served):
    _, port, _, _ = served
    code, doc = http(port, "GET", "/v1/models/digits/versions/1/metadata")
    assert code == 200
    assert doc["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    sig = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["image"] == {"dtype": "DT_FLOAT", "name": "x", "tensor_shape": {
        "dim": [{"size": "-1", "name": ""}, {"size": "64", "name": ""}], "unknown_rank": False}}
    assert sig["outputs"]["class"]["dtype"] == "DT_INT64"
    assert sig["outputs"]["probabilities"]["tensor_shape"]["dim"][1]["size"] == "10"


def test_rest_list_models(served):
    _, port, _, _ = served
    code, doc = http(port, "GET", "/v1/models")
    assert code == 200
    names = [m["name"] for m in doc["models"]]
    assert "digits" in names and "digits_p" in names


@pytest.mark.parametrize("body,status,message", [
    (b"{not json", 400, "malformed JSON"),
    ({"instances": [{"img": [0.0] * 64}]}, 400, "the model takes"),
    ({"inputs": {"img": [[0.0] * 64]}}, 400, "the model takes"),
    ({"instances": [[0.0] * 64, [0.0] * 3]}, 400, "ragged"),
    ({"instances": [["a"] * 64]}, 400, "expected float32"),
    ({"instances": [[0.0] * 63]}, 400, "expected shape"),
    ({"instances": []}, 400, "non-empty"),
    ({"instances": [[0.0] * 64], "inputs": {}}, 400, "exactly one"),
    ({"instances": [[0.0] * 64], "signature_name": "other"}, 400, "no signature"),
    ({"instances": [{"b64": "!!notbase64"}]}, 400, "base64"),
])
def test_rest_bad_input_gives_400(served, body, status, message):
    _, port, _, _ = served
    code, doc = http(port, "POST", "/v1/models/digits:predict", body)
    assert code == status and message in doc["error"], doc


@pytest.mark.parametrize("method,path,status,message", [
    ("GET", "/v1/models/nope", 404, "no model named 'nope'"),
    ("GET", "/v1/models/digits/versions/9", 404, "no version 9"),
    ("POST", "/v1/models/digits/versions/9:predict", 404, "no version 9"),
    ("GET", "/v1/models/..%2F..%2Fetc", 400, "model name"),
    ("GET", "/v1/models/%2E%2E/metadata", 400, "model name"),
    ("GET", "/v1/models/digits/versions/x1", 400, "version must be"),
])
def test_rest_bad_route_gives_status(served, method, path, status, message):
    _, port, _, _ = served
    code, doc = http(port, method, path, {"instances": [[0.0] * 64]} if method == "POST" else None)
    assert code == status and message in doc["error"], doc


def test_rest_body_over_limit_gives_413_and_server_goes_on(served):
    _, port, _, d = served
    code, doc = http(port, "POST", "/v1/models/digits:predict", b"{" + b" " * (MAX_BODY + 10) + b"}")
    assert code == 413 and "over the limit" in doc["error"]
    try:  # far over: tornado refuses it while reading (400) and may close before the client has sent it all
        code = http(port, "POST", "/v1/models/digits:predict", b"{" + b" " * (3 * MAX_BODY) + b"}")[0]
    except (ConnectionResetError, BrokenPipeError, urllib.error.URLError):
        code = 400
    assert code in (400, 413)
    assert http(port, "POST", "/v1/models/digits:predict", {"instances": d.X[:1].tolist()})[0] == 200


def test_rest_second_export_is_version_2_and_served_as_latest(served):
    _, port, _, d = served
    d.g.write_variable(d.g["b2"], np.arange(10, dtype="float32") * 5.0)  # a visibly different model
    assert d.g.export("digits_v", inputs={"image": d.x}, outputs={"class": d.cls}) == 1
    assert d.g.export("digits_v", inputs={"image": d.x}, outputs={"class": d.cls}) == 2
    code, doc = http(port, "GET", "/v1/models/digits_v")
    assert [s["version"] for s in doc["model_version_status"]] == ["2", "1"]
    code, doc = http(port, "POST", "/v1/models/digits_v:predict", {"instances": d.X[:4].tolist()})
    assert code == 200 and doc["predictions"] == d.g.run(d.cls, feed={d.x: d.X[:4]}).tolist()
    assert http(port, "GET", "/v1/models/digits_v/metadata")[1]["model_spec"]["version"] == "2"


def test_serve_models_serves_a_model_base_path(served, tmp_path):
    import subprocess
    import sys

    srv, _, _, d = served
    base = next(p for p in srv.runtime_dir.parent.rglob("models") if p.is_dir())
    proc = subprocess.Popen([sys.executable, "-m", "kernelflow", "serve-models", "--model-base-path", str(base),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        for line in proc.stdout:
            m = re.search(r"on http://127\.0\.0\.1:(\d+)/v1/models", line)
            if m:
                port = int(m.group(1))
                break
        assert port, "serve-models printed no REST line"
        code, doc = http(port, "POST", "/v1/models/digits/versions/1:predict", {"instances": d.X[:3].tolist()})
        assert code == 200, doc
        same = http(served[1], "POST", "/v1/models/digits/versions/1:predict", {"instances": d.X[:3].tolist()})[1]
        assert doc == same and len(doc["predictions"]) == 3
        assert http(port, "GET", "/v1/models/nope")[0] == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rest_version_dropped_into_state_dir_is_served_by_watcher(served):
    srv, port, rt, d = served
    models = next(p for p in srv.runtime_dir.parent.rglob("models") if p.is_dir())
    drop_version(models / "digits" / "1", models, "dropped", 1)
    wait_for(lambda: http(port, "GET", "/v1/models/dropped")[1].get("model_version_status", [{}])[0].get("state")
             == "AVAILABLE", "the watcher loads the dropped version")
    code, doc = http(port, "POST", "/v1/models/dropped:predict", {"instances": d.X[:3].tolist()})
    assert code == 200 and doc == http(port, "POST", "/v1/models/digits/versions/1:predict",
                                       {"instances": d.X[:3].tolist()})[1]
    listed = {m["name"]: m["model_version_status"] for m in rt.models()}
    assert listed["dropped"] == [{"version": "1", "state": "AVAILABLE",
                                  "status": {"error_code": "OK", "error_message": ""}}]


def test_rest_dropout_model_served_in_inference_mode(served):
    import kernelflow as kf

    _, port, rt, _ = served
    g = rt.graph("dropnet")
    x = g.placeholder((None, 4), "float32", name="x")
    training = g.placeholder((), "bool", name="training")
    w = g.variable(np.arange(12, dtype="float32").reshape(4, 3) / 10, name="w")
    y = kf.dropout(x @ w, 0.5, training=training)
    assert g.export("dropnet", inputs={"x": x}, outputs={"y": y}) == 1
    X = np.ones((5, 4), "float32")
    ref = g.run(y, feed={x: X, training: False})
    answers = [http(port, "POST", "/v1/models/dropnet:predict", {"instances": X.tolist()}) for _ in range(3)]
    assert all(code == 200 for code, _ in answers)
    assert answers[0][1] == answers[1][1] == answers[2][1]  # no random mask
    np.testing.assert_allclose(np.array(answers[0][1]["predictions"]), ref, rtol=1e-6)
    np.testing.assert_allclose(rt.model("dropnet").predict({"x": X})["y"], ref, rtol=1e-6)


def test_rest_predict_right_after_export_gets_the_new_version(served):
    _, port, rt, d = served
    for v in (1, 2):
        d.g.write_variable(d.g["b2"], np.eye(10, dtype="float32")[v + 4] * 50.0)
        assert d.g.export("fresh", inputs={"image": d.x}, outputs={"class": d.cls}) == v
        code, doc = http(port, "POST", "/v1/models/fresh:predict", {"instances": d.X[:2].tolist()})
        assert code == 200 and doc["predictions"] == [v + 4, v + 4]
        assert rt.model("fresh").predict({"image": d.X[:2]})["class"].tolist() == [v + 4, v + 4]


def test_serve_answers_rpc_while_its_models_load(inproc_state, tmp_path):
    """`kernelflow serve` loads the state dir's models off its IO loop: RPC answers meanwhile."""
    import kernelflow as kf

    g = inproc_state.graph("small")
    a = g.placeholder((None, 3), "float32", name="a")
    g.export("small", inputs={"a": a}, outputs={"y": a * 2.0})
    release = drop_held_version(tmp_path / "state" / "models" / "small" / "1", tmp_path / "served" / "models",
                                "small", 1)  # the load blocks reading the signature until release()
    srv = ServerProcess(tmp_path, "--state-dir", str(tmp_path / "served"), "--http-port", "-1").wait_listening()
    try:
        rt = srv.connect(timeout=20)
        try:
            assert rt.info()["version"]  # not stuck behind the held load
            with pytest.raises(kf.errors.UnavailableError, match="is (START|LOADING)"):
                rt.model("small").predict({"a": np.ones((1, 3), "float32")})
            release()
            out = wait_for(lambda: _predict_or_none(rt), "model 'small' served once its load goes on")
            np.testing.assert_array_equal(out["y"], np.full((1, 3), 2.0, "float32"))
        finally:
            rt.close()
    finally:
        srv.stop()


def _predict_or_none(rt):
    import kernelflow as kf

    try:
        return rt.model("small").predict({"a": np.ones((1, 3), "float32")})
    except kf.errors.UnavailableError:
        return None
