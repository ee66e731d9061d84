"""Fixtures of the runtime tests: a real `kernelflow serve` subprocess per test module (so one
module's graphs, datasets and jobs never show in another's), and a connection to it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.runtime.test_server import ServerProcess

    srv = ServerProcess(tmp_path_factory.mktemp("srv")).wait_listening()
    yield srv
    srv.stop()


@pytest.fixture
def remote(server):
    rt = server.connect()
    yield rt
    rt.close()
