"""Version management (issue #7): policies, the base-path watcher, states, warm-up, 503 while
loading, failed loads, memory after load/unload cycles, batching under concurrency, :classify.

Every test drives a real ``kernelflow serve-models`` subprocess with a plain HTTP client; model
versions are made in-process and dropped into the served base path as a real exporter would.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.runtime_server.serving.manager import parse_model_config

from .conftest import ModelServer, build_digits, drop_held_version, drop_version, wait_for


@dataclass
class Sources:
    digits: Path  # <models>/digits, holding versions 1, 2, 3 (different b2, so different answers)
    big: Path  # <models>/big/1: 12 MiB of variables
    other: Path  # <models>/other/1: a model without class outputs
    X: np.ndarray
    expected: dict  # version -> probabilities on X
    classes: dict  # version -> class on X


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sources")
    rt = kf.connect("inproc", state_dir=tmp / "state")
    try:
        d = build_digits(rt, steps=5)
        X = d.X[:4]
        expected, classes = {}, {}
        for v in (1, 2, 3):
            d.g.write_variable(d.g["b2"], np.eye(10, dtype="float32")[3 * v] * 20.0)  # class 3v wins
            assert d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs, "class": d.cls}) == v
            ref = d.g.run({"p": d.probs, "c": d.cls}, feed={d.x: X})
            expected[v], classes[v] = ref["p"], ref["c"]
        assert len({tuple(c) for c in classes.values()}) == 3  # the versions answer differently
        g = rt.graph("big")
        x = g.placeholder((None, 1024), "float32", name="x")
        rng = np.random.default_rng(1)
        y = x
        for i in range(3):  # 3 x 4 MiB: a version that leaked would show in the server's RSS
            y = y @ g.variable((rng.standard_normal((1024, 1024)) * 0.03).astype("float32"), name=f"w{i}")
        g.export("big", inputs={"x": x}, outputs={"y": y})
        g2 = rt.graph("other")
        a = g2.placeholder((None, 3), "float32", name="a")
        g2.export("other", inputs={"a": a}, outputs={"doubled": a * 2.0})
        models = tmp / "state" / "models"
        yield Sources(models / "digits", models / "big" / "1", models / "other" / "1", X, expected, classes)
    finally:
        rt.close()


def _predict(srv: ModelServer, path: str, X: np.ndarray) -> tuple[int, dict]:
    return srv.http("POST", path, {"instances": X.tolist()})


def _probs(doc: dict) -> np.ndarray:
    return np.array([p["probabilities"] for p in doc["predictions"]])


@pytest.fixture
def base(tmp_path):
    b = tmp_path / "base"
    b.mkdir()
    return b


def test_versions_latest_serves_new_version_and_unloads_old(sources, base):
    drop_version(sources.digits / "1", base, "digits", 1)
    srv = ModelServer(base)
    try:
        assert srv.states("digits") == {"1": "AVAILABLE"}  # loaded before the port is announced
        code, doc = _predict(srv, "/v1/models/digits:predict", sources.X)
        assert code == 200 and np.allclose(_probs(doc), sources.expected[1], rtol=1e-6, atol=1e-7)
        drop_version(sources.digits / "2", base, "digits", 2)
        wait_for(lambda: srv.states("digits") == {"2": "AVAILABLE", "1": "END"}, "v2 AVAILABLE and v1 END")
        code, doc = _predict(srv, "/v1/models/digits:predict", sources.X)
        assert code == 200 and np.allclose(_probs(doc), sources.expected[2], rtol=1e-6, atol=1e-7)
        assert [p["class"] for p in doc["predictions"]] == sources.classes[2].tolist()
        code, doc = _predict(srv, "/v1/models/digits/versions/1:predict", sources.X)
        assert code == 404 and "version policy 'latest' serves [2]" in doc["error"], doc
        assert srv.http("GET", "/v1/models/digits/metadata")[1]["model_spec"]["version"] == "2"
    finally:
        srv.stop()


def test_versions_dir_without_marker_is_never_loaded(sources, base):
    drop_version(sources.digits / "1", base, "digits", 1)
    srv = ModelServer(base)
    try:
        half = base / "digits" / "2"
        half.mkdir()
        for p in (sources.digits / "2").iterdir():
            if p.name != "MODEL_COMPLETE":
                (half / p.name).write_bytes(p.read_bytes())
        # A model dropped after the half-written version: once it is served, a poll has seen both.
        drop_version(sources.other, base, "other", 1)
        wait_for(lambda: srv.states("other") == {"1": "AVAILABLE"}, "model 'other' served")
        assert srv.states("digits") == {"1": "AVAILABLE"}
        assert srv.http("GET", "/v1/models/digits/versions/2")[0] == 404
        (half / "MODEL_COMPLETE").write_text("kernelflow-model-1\n")  # the exporter's last write
        wait_for(lambda: srv.states("digits") == {"2": "AVAILABLE", "1": "END"}, "v2 served once complete")
    finally:
        srv.stop()


def test_versions_specific_policy_serves_only_those(sources, base, tmp_path):
    for v in (1, 2, 3):
        drop_version(sources.digits / str(v), base, "digits", v)
    cfg = tmp_path / "models.json"
    cfg.write_text(json.dumps({"models": {"digits": {"version_policy": {"specific": [1, 3]}}}}))
    srv = ModelServer(base, "--model-config-file", str(cfg))
    try:
        assert srv.states("digits") == {"3": "AVAILABLE", "1": "AVAILABLE"}
        for v in (1, 3):
            code, doc = _predict(srv, f"/v1/models/digits/versions/{v}:predict", sources.X)
            assert code == 200 and np.allclose(_probs(doc), sources.expected[v], rtol=1e-6, atol=1e-7)
        code, doc = _predict(srv, "/v1/models/digits/versions/2:predict", sources.X)
        assert code == 404 and "specific [1, 3]" in doc["error"], doc
        code, doc = _predict(srv, "/v1/models/digits:predict", sources.X)  # no version: the highest served
        assert code == 200 and np.allclose(_probs(doc), sources.expected[3], rtol=1e-6, atol=1e-7)
    finally:
        srv.stop()


def test_versions_all_policy_serves_every_version_and_new_ones(sources, base, tmp_path):
    for v in (1, 2):
        drop_version(sources.digits / str(v), base, "digits", v)
    cfg = tmp_path / "models.json"
    cfg.write_text(json.dumps({"models": {"digits": {"version_policy": "all"}}}))
    srv = ModelServer(base, "--model-config-file", str(cfg))
    try:
        assert srv.states("digits") == {"2": "AVAILABLE", "1": "AVAILABLE"}
        drop_version(sources.digits / "3", base, "digits", 3)
        wait_for(lambda: srv.states("digits") == {"3": "AVAILABLE", "2": "AVAILABLE", "1": "AVAILABLE"}, "v3 added")
        for v in (1, 2, 3):
            code, doc = _predict(srv, f"/v1/models/digits/versions/{v}:predict", sources.X)
            assert code == 200 and [p["class"] for p in doc["predictions"]] == sources.classes[v].tolist()
    finally:
        srv.stop()


def test_versions_loading_version_gives_503_and_old_one_answers(sources, base, tmp_path):
    drop_version(sources.digits / "1", base, "digits", 1)
    srv = ModelServer(base)
    try:
        release = drop_held_version(sources.digits / "2", base, "digits", 2)  # its load blocks reading the signature
        wait_for(lambda: srv.states("digits") == {"2": "LOADING", "1": "AVAILABLE"}, "v2 LOADING")
        code, doc = _predict(srv, "/v1/models/digits/versions/2:predict", sources.X)
        assert code == 503 and "version 2 is LOADING" in doc["error"], doc
        code, doc = _predict(srv, "/v1/models/digits:predict", sources.X)  # never from the half-loaded one
        assert code == 200 and np.allclose(_probs(doc), sources.expected[1], rtol=1e-6, atol=1e-7)
        assert srv.states("digits") == {"2": "LOADING", "1": "AVAILABLE"}
        release()
        wait_for(lambda: srv.states("digits") == {"2": "AVAILABLE", "1": "END"}, "v2 AVAILABLE")
        code, doc = _predict(srv, "/v1/models/digits/versions/2:predict", sources.X)
        assert code == 200 and np.allclose(_probs(doc), sources.expected[2], rtol=1e-6, atol=1e-7)
    finally:
        srv.stop()


def test_versions_failed_load_shows_error_and_old_keeps_serving(sources, base):
    drop_version(sources.digits / "1", base, "digits", 1)
    srv = ModelServer(base)
    try:
        bad = base / "digits" / ".incoming-2"
        bad.mkdir()
        (bad / "signature.json").write_text("{}")
        (bad / "graph.msgpack").write_bytes(b"\x00 not msgpack")
        (bad / "MODEL_COMPLETE").write_text("x\n")
        os.replace(bad, base / "digits" / "2")
        doc = wait_for(lambda: (lambda d: d if d[0] == 200 and d[1]["model_version_status"][0]["state"] == "END"
                                else None)(srv.http("GET", "/v1/models/digits/versions/2")), "v2 failed")
        st = doc[1]["model_version_status"][0]["status"]
        assert st["error_code"] == "FAILED_PRECONDITION" and "damaged" in st["error_message"], st
        drop_version(sources.other, base, "other", 1)  # once it is served, the watcher has passed again
        wait_for(lambda: srv.states("other") == {"1": "AVAILABLE"}, "model 'other' served")
        assert srv.states("digits") == {"2": "END", "1": "AVAILABLE"}
        code, out = _predict(srv, "/v1/models/digits:predict", sources.X)
        assert code == 200 and np.allclose(_probs(out), sources.expected[1], rtol=1e-6, atol=1e-7)
        code, out = _predict(srv, "/v1/models/digits/versions/2:predict", sources.X)
        assert code == 404 and "failed to load" in out["error"]
    finally:
        srv.stop()


def test_versions_20_load_unload_cycles_keep_memory_bounded(sources, base):
    drop_version(sources.big, base, "big", 1)
    srv = ModelServer(base)
    x = np.ones((1, 1024), "float32").tolist()
    try:
        def cycle(v: int) -> None:
            drop_version(sources.big, base, "big", v)
            wait_for(lambda: (lambda s: s.get(str(v)) == "AVAILABLE" and s.get(str(v - 1)) == "END")(srv.states("big")),
                     f"big v{v} AVAILABLE, v{v - 1} END", every_s=0.02)
            assert srv.http("POST", f"/v1/models/big/versions/{v}:predict", {"instances": x})[0] == 200

        cycle(2)
        rss0 = srv.rss_kib()
        for v in range(3, 23):
            cycle(v)
        rss1 = srv.rss_kib()
        # Each version holds 12 MiB of variables; 20 kept versions would add ~240 MiB.
        assert rss1 - rss0 < 40 * 1024, f"RSS grew from {rss0} to {rss1} KiB over 20 load/unload cycles"
        assert sum(1 for s in srv.states("big").values() if s == "AVAILABLE") == 1
    finally:
        srv.stop()


def _digits_ref(sources: Sources) -> tuple[np.ndarray, np.ndarray]:
    """120 digits and version 3's probabilities on them, computed in-process with kf.load_model."""
    from sklearn.datasets import load_digits

    X = (load_digits().data[:120] / 16.0).astype("float32")
    return X, kf.load_model(sources.digits / "3").predict({"image": X})["probabilities"]


def test_batching_50_concurrent_clients_get_their_own_answers(sources, base):
    drop_version(sources.digits / "3", base, "digits", 3)
    srv = ModelServer(base, "--batching", "on", "--batch-timeout-micros", "5000")
    X, ref = _digits_ref(sources)
    try:
        barrier = threading.Barrier(50)

        def client(i: int) -> tuple[int, list, dict]:
            rows = [(7 * i + k) % 120 for k in range(1 + i % 3)]  # 1 to 3 rows, different per client
            barrier.wait(timeout=60)
            code, doc = srv.http("POST", "/v1/models/digits:predict", {"instances": X[rows].tolist()})
            return code, rows, doc

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(client, range(50)))
        for code, rows, doc in results:
            assert code == 200, doc
            np.testing.assert_allclose(_probs(doc), ref[rows], rtol=1e-6, atol=1e-7)
            assert [p["class"] for p in doc["predictions"]] == ref[rows].argmax(axis=1).tolist()
        stats = next(m for m in srv.http("GET", "/v1/models")[1]["models"] if m["name"] == "digits")["batching"]["3"]
        assert stats["requests_run"] == 50 and stats["rows_run"] == sum(1 + i % 3 for i in range(50))
        assert stats["batches_run"] < stats["requests_run"], stats  # requests were merged
    finally:
        srv.stop()


def test_classify_gives_label_score_pairs(sources, base):
    drop_version(sources.digits / "3", base, "digits", 3)
    drop_version(sources.other, base, "other", 1)
    srv = ModelServer(base)
    try:
        code, doc = srv.http("POST", "/v1/models/digits:classify",
                             {"examples": [{"image": r} for r in sources.X[:2].tolist()]})
        assert code == 200, doc
        first = doc
        assert len(doc["result"]) == 2 and [lab for lab, _ in doc["result"][0]] == [str(k) for k in range(10)]
        np.testing.assert_allclose(np.array([[s for _, s in r] for r in doc["result"]]), sources.expected[3][:2],
                                   rtol=1e-6, atol=1e-7)
        code, doc = srv.http("POST", "/v1/models/other:classify", {"examples": [{"a": [1.0, 2.0, 3.0]}]})
        assert code == 400 and "no class outputs" in doc["error"], doc
        code, doc = srv.http("POST", "/v1/models/digits:classify", {"examples": [{"img": [0.0] * 64}]})
        assert code == 400 and "the model takes ['image']" in doc["error"], doc
        code, doc = srv.http("POST", "/v1/models/digits:classify", {"examples": [{"image": [0.0] * 63}]})
        assert code == 400 and "expected 64 values" in doc["error"], doc
        code, rows = srv.http("POST", "/v1/models/digits:classify", {"instances": sources.X[:2].tolist()})
        assert code == 200 and rows == first, rows  # predict's row format is accepted too
        code, doc = srv.http("POST", "/v1/models/digits:classify", {"examples": []})
        assert code == 400 and "\"examples\"" in doc["error"], doc
        code, doc = srv.http("POST", "/v1/models/digits:classify",
                             {"context": {"image": [0.0] * 64}, "examples": [{"image": [0.0] * 64}]})
        assert code == 400 and "repeats context features ['image']" in doc["error"], doc
        code, doc = srv.http("POST", "/v1/models/digits:classify", {"context": {"image": sources.X[0].tolist()},
                                                                    "examples": [{}, {}]})
        assert code == 200 and len(doc["result"]) == 2 and doc["result"][0] == first["result"][0]
    finally:
        srv.stop()


@pytest.mark.parametrize("doc,message", [
    ({"models": {"d": {"version_policy": "newest"}}}, "version_policy must be"),
    ({"models": {"d": {"version_policy": {"specific": []}}}}, "version_policy must be"),
    ({"models": {"d": {"batching": {"max_batch_size": 0}}}}, "'max_batch_size' must be a positive integer"),
    ({"models": {"d": {"batching": {"size": 3}}}}, "unknown batching option 'size'"),
    ({"models": {"../x": {}}}, "model name"),
    ({"model": {}}, "expected {\"models\""),
    ({"models": {"d": {"policy": "all"}}}, "settings may have"),
])
def test_model_config_bad_document_raises_naming_it(doc, message):
    with pytest.raises(kf.errors.InvalidArgumentError) as e:
        parse_model_config(doc)
    assert message in str(e.value)


def test_model_config_policies_choose_versions():
    cfg = parse_model_config({"models": {"a": {"version_policy": {"specific": [3, 1]}},
                                         "b": {"version_policy": "all"},
                                         "c": {"version_policy": {"latest": {"num_versions": 2}}},
                                         "d": {}}})
    assert cfg["a"].policy.choose([1, 2, 3, 4]) == [1, 3]
    assert cfg["b"].policy.choose([1, 2, 3]) == [1, 2, 3]
    assert cfg["c"].policy.choose([1, 2, 5]) == [2, 5]
    assert cfg["d"].policy.choose([1, 2, 5]) == [5]


def test_serve_models_bad_config_file_exits_2_naming_it(base, tmp_path):
    import subprocess
    import sys

    cfg = tmp_path / "models.json"
    cfg.write_text(json.dumps({"models": {"digits": {"version_policy": "sometimes"}}}))
    r = subprocess.run([sys.executable, "-m", "kernelflow", "serve-models", "--model-base-path", str(base),
                        "--port", "0", "--model-config-file", str(cfg)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "model 'digits'" in r.stderr and "sometimes" in r.stderr, r.stderr


@pytest.mark.parametrize("flags,message", [
    (["--max-batch-size", "0"], "kernelflow serve-models: --max-batch-size must be a positive integer; got 0"),
    (["--max-enqueued-batches", "-2"], "--max-enqueued-batches must be a positive integer; got -2"),
    (["--batch-timeout-micros", "-1"], "--batch-timeout-micros must be a non-negative integer; got -1"),
])
def test_serve_models_bad_batching_flag_exits_2_naming_the_flag(base, flags, message):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "kernelflow", "serve-models", "--model-base-path", str(base),
                        "--port", "0", *flags], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_batching_full_queue_gives_503_and_server_goes_on(inproc_state, tmp_path):
    g = inproc_state.graph("slow")
    x = g.placeholder((None, 1024), "float32", name="x")
    w = g.variable(np.eye(1024, dtype="float32"), name="w")
    y = x
    for _ in range(40):  # ~40 passes over a 4 MiB matrix per run: runs far slower than requests arrive
        y = y @ w
    g.export("slow", inputs={"x": x}, outputs={"y": y})
    srv = ModelServer(tmp_path / "state" / "models", "--max-batch-size", "1", "--max-enqueued-batches", "1",
                      "--batch-timeout-micros", "0")
    row = np.arange(1024, dtype="float32")[None] / 1024
    try:
        barrier = threading.Barrier(24)

        def client(_: int) -> tuple[int, dict]:
            barrier.wait(timeout=60)
            return srv.http("POST", "/v1/models/slow:predict", {"instances": row.tolist()})

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(client, range(24)))
        codes = sorted(c for c, _ in results)
        assert 503 in codes and 200 in codes and set(codes) == {200, 503}, codes
        assert all("queue" in doc["error"] and "full" in doc["error"] for c, doc in results if c == 503)
        assert all(np.allclose(doc["predictions"], row) for c, doc in results if c == 200)
        code, doc = srv.http("POST", "/v1/models/slow:predict", {"instances": row.tolist()})
        assert code == 200 and np.allclose(doc["predictions"], row)
    finally:
        srv.stop()


def test_manager_warms_up_before_available_and_unload_drops_session(sources, tmp_path):
    from kernelflow.runtime_server.serving.manager import ModelManager

    drop_version(sources.digits / "1", tmp_path / "b", "digits", 1)
    mgr = ModelManager(tmp_path / "b")
    with mgr.use("digits") as sv:
        assert sv.state == "AVAILABLE"
        assert sv.model.session._plans  # the warm-up run built (and cached) the plan before any request
        model = sv.model
    drop_version(sources.digits / "2", tmp_path / "b", "digits", 2)
    with mgr.use("digits") as sv2:
        assert sv2.version == 2
    assert sv.state == "END" and sv.model is None and model.session is None  # released
    with pytest.raises(kf.errors.InvalidArgumentError, match="positive integer"):
        mgr.predict("digits", True, {"image": sources.X})


def test_class_outputs_rules_and_classify_labels_from_classes_output():
    from kernelflow.runtime_server.serving.rest import class_outputs, format_classify

    f = {"dtype": "float32", "shape": [None, 3]}
    assert class_outputs({"scores": f, "classes": {"dtype": "int64", "shape": [None, 3]}}) == ("scores", "classes")
    assert class_outputs({"scores": f, "classes": {"dtype": "int64", "shape": [None, 2]}}) == ("scores", None)
    assert class_outputs({"probabilities": f, "class": {"dtype": "int64", "shape": [None]}}) == ("probabilities", None)
    assert class_outputs({"logits": f}) is None
    assert class_outputs({"scores": {"dtype": "int32", "shape": [None, 3]}}) is None
    out = {"scores": np.array([[0.5, 0.25]], "float32"), "classes": np.array([[7, 2]])}
    assert format_classify(out, "scores", "classes") == {"result": [[["7", 0.5], ["2", 0.25]]]}
    assert format_classify(out, "scores", None) == {"result": [[["0", 0.5], ["1", 0.25]]]}
