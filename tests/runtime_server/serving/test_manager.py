"""ModelManager internals, in process: close while a version loads, failed versions not retried,
a request that outlives an unload, REST's status codes per error.

Model versions are real exports (a small model written by an in-process runtime), copied into
the manager's base path as an exporter would.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.runtime_server.serving.manager import ModelManager, ServedVersion, parse_model_config

from .conftest import drop_held_version, drop_version, wait_for


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A version dir of model 'small': y = 2a + w, batch-major (so it gets a batcher)."""
    tmp = tmp_path_factory.mktemp("small")
    rt = kf.connect("inproc", state_dir=tmp / "state")
    try:
        g = rt.graph("small")
        a = g.placeholder((None, 3), "float32", name="a")
        w = g.variable(np.array([1.0, 2.0, 3.0], "float32"), name="w")
        assert g.export("small", inputs={"a": a}, outputs={"y": a * 2.0 + w}) == 1
        yield tmp / "state" / "models" / "small" / "1"
    finally:
        rt.close()


def _batcher_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("kf-batcher-small")]


def test_manager_close_while_loading_releases_the_version_without_batcher(small, tmp_path):
    mgr = ModelManager(tmp_path / "base", batching={"enabled": True})
    (tmp_path / "base").mkdir()
    mgr.start(poll_wait_s=0.02)
    try:
        release = drop_held_version(small, tmp_path / "base", "small", 1)  # its load blocks reading the signature
        wait_for(lambda: mgr.status("small")["model_version_status"][0]["state"] == "LOADING", "v1 LOADING")
        sv = mgr._models["small"][1]
        closer = threading.Thread(target=mgr.close)
        closer.start()
        wait_for(lambda: sv.state == "END", "close() to end the loading version")
        release()  # the load goes on, builds the model, and must not serve it
        closer.join(timeout=60)
    finally:
        mgr.close()
    assert sv.state == "END"
    # The loader thread ends once its load has given up what it built (the pool was shut down).
    wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("kf-model-load")],
             "the loader thread to finish the released load", timeout_s=60)
    assert sv.model is None and not _batcher_threads()
    with pytest.raises(kf.errors.UnavailableError, match="shutting down"):
        mgr.predict("small", None, {"a": np.ones((1, 3), "float32")})
    assert sv.state == "END" and sv.model is None and not _batcher_threads()


def test_manager_after_close_loads_nothing(small, tmp_path):
    mgr = ModelManager(tmp_path / "base", batching={"enabled": True})  # not watching: loads on request
    mgr.close()
    drop_version(small, tmp_path / "base", "small", 1)
    mgr.poll(only="small", wait=True)
    mgr._reconcile("small")  # what a load finishing after close calls
    assert all(sv.state != "AVAILABLE" for vs in mgr._models.values() for sv in vs.values())
    assert not _batcher_threads()
    with pytest.raises(kf.errors.UnavailableError, match="shutting down"):
        mgr.predict("small", None, {"a": np.ones((1, 3), "float32")})


def _damage(base: Path, version: int) -> None:
    d = base / "small" / str(version)
    d.mkdir(parents=True)
    (d / "signature.json").write_text("{}")
    (d / "graph.msgpack").write_bytes(b"\x00 not msgpack")
    (d / "MODEL_COMPLETE").write_text("x\n")


def test_manager_failed_versions_are_attempted_once_across_polls(small, tmp_path, caplog):
    base = tmp_path / "base"
    for v in range(1, 8):  # more failed versions than the END versions a status keeps
        _damage(base, v)
    mgr = ModelManager(base, config=parse_model_config({"models": {"small": {"version_policy": "all"}}}))
    try:
        with caplog.at_level(logging.ERROR, "kernelflow.models"):
            for _ in range(4):
                mgr.poll(wait=True)
        attempts = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
        assert all("is damaged" in m for m in attempts), attempts
        assert sorted(int(m.split("version ")[1].split()[0]) for m in attempts) == list(range(1, 8))
        st = mgr.status("small")["model_version_status"]
        assert [(s["version"], s["state"], s["status"]["error_code"]) for s in st] == \
            [(str(v), "END", "FAILED_PRECONDITION") for v in range(7, 0, -1)]
        # A failed version whose dir is replaced by a good copy is tried afresh once the dir was gone.
        import shutil

        shutil.rmtree(base / "small" / "1")
        mgr.poll(wait=True)
        drop_version(small, base, "small", 1)
        with mgr.use("small", 1) as sv:
            assert sv.state == "AVAILABLE"
    finally:
        mgr.close()


def test_manager_request_outliving_unload_gets_unavailable(small, tmp_path):
    drop_version(small, tmp_path / "base", "small", 1)
    x = np.ones((2, 3), "float32")
    for batching in ({"enabled": True}, {"enabled": False}):
        mgr = ModelManager(tmp_path / "base", batching=batching)
        try:
            with mgr.use("small") as sv:
                # An unload that gives up waiting for this request (30 s in the server) frees the model.
                t = threading.Thread(target=mgr._unload, args=(sv,), kwargs={"wait_users_s": 0.05})
                t.start()
                t.join(timeout=30)
                assert sv.state == "END"
                with pytest.raises(kf.errors.UnavailableError, match="was unloaded"):
                    mgr.submit(sv, {"a": x})  # not an AssertionError or AttributeError (500)
                with pytest.raises(kf.errors.UnavailableError, match="was unloaded"):
                    mgr.loaded(sv)  # what the REST handler reads the model with
        finally:
            mgr.close()


class _LoadsWhileLookedAt(ServedVersion):
    """A version whose load finishes the moment a request has looked at its state once: the first
    read of ``state`` says LOADING, every later one AVAILABLE (what a loader thread does to a request
    that reads the state twice)."""

    reads = 0

    @property
    def state(self) -> str:
        self.reads += 1
        return "LOADING" if self.reads == 1 else "AVAILABLE"

    @state.setter
    def state(self, value: str) -> None:
        pass


@pytest.mark.parametrize("version", [None, 1])
def test_manager_request_racing_a_finishing_load_gets_unavailable(small, tmp_path, version):
    """A request that meets a load finishing gets "retry" (503), never "no AVAILABLE version" (404):
    the CI flake of test_serve_answers_rpc_while_its_models_load."""
    drop_version(small, tmp_path / "base", "small", 1)
    mgr = ModelManager(tmp_path / "base")
    try:
        mgr.start(poll_wait_s=3600)  # watching (a request does not poll first); its next pass is an hour off
        sv = mgr._models["small"][1]
        assert sv.state == "AVAILABLE"
        sv.__class__ = _LoadsWhileLookedAt
        with pytest.raises(kf.errors.UnavailableError, match="LOADING; retry"):
            mgr._served("small", version)
        assert sv.reads == 1  # one consistent look at the states
        assert mgr._served("small", version) is sv  # the next request is served
    finally:
        sv.__class__ = ServedVersion
        mgr.close()


@pytest.mark.parametrize("error,status", [
    (kf.errors.InvalidArgumentError, 400), (kf.errors.ShapeError, 400), (kf.errors.NotFoundError, 404),
    (kf.errors.FailedPreconditionError, 400),  # TF Serving answers FAILED_PRECONDITION with 400
    (kf.errors.UnavailableError, 503), (kf.errors.InternalError, 500), (kf.errors.ResourceExhaustedError, 429),
])
def test_rest_error_status_follows_tf_serving(error, status):
    from kernelflow.runtime_server.serving.rest import http_status

    assert http_status(error("x")) == status
