"""Shared fixtures. The compute-core tests run twice: against an in-process runtime and
against a real `kernelflow serve` subprocess on 127.0.0.1 (one per test session)."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

import kernelflow as kf
from tests.ops import opcheck

RUNTIMES = ["inproc", "server"]
_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _compiler_cache_dir(tmp_path_factory):
    """Kernels the graph compiler generates in this session go to a tmp dir, not the user's cache."""
    old = os.environ.get("KERNELFLOW_CACHE_DIR")
    os.environ["KERNELFLOW_CACHE_DIR"] = str(tmp_path_factory.mktemp("kf-cache"))
    yield os.environ["KERNELFLOW_CACHE_DIR"]
    if old is None:
        os.environ.pop("KERNELFLOW_CACHE_DIR", None)
    else:
        os.environ["KERNELFLOW_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real runtime server subprocess shared by the session's tests."""
    from tests.support.server import ServerProcess

    proc = ServerProcess(tmp_path_factory.mktemp("kf-server")).wait_listening()
    yield proc
    proc.stop()


def _connect(kind: str, request) -> kf.Runtime:
    if kind == "inproc":
        return kf.connect("inproc")
    srv = request.getfixturevalue("server")
    return kf.connect(srv.url, token=srv.token, timeout=60)


def _cleanup(runtime: kf.Runtime, kind: str) -> None:
    if kind == "server":  # the server is shared: leave it empty for the next test
        for name in runtime.graphs():
            runtime.delete_graph(name)
    runtime.close()


@pytest.fixture(params=RUNTIMES)
def rt(request):
    """A runtime: in-process, or a connection to the session's real server."""
    runtime = _connect(request.param, request)
    yield runtime
    _cleanup(runtime, request.param)


@pytest.fixture
def inproc_rt():
    """An in-process runtime, for tests that look at the service's internals."""
    runtime = kf.connect("inproc")
    yield runtime
    runtime.close()


@pytest.fixture
def g(rt):
    return rt.graph("test")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=RUNTIMES)
def op_runtime(request):
    """Points tests/ops/opcheck.py at an in-process runtime or the real server."""
    runtime = _connect(request.param, request)
    opcheck.RUNTIME = runtime
    yield runtime
    opcheck.RUNTIME = None
    _cleanup(runtime, request.param)


def new_graph_name(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"
