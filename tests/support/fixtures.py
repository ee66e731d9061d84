"""Fixtures of the server and client test packages: a real `kernelflow serve` subprocess per test module
(so one module's graphs, datasets and jobs never show in another's), and a connection to it.

A conftest takes them in with ``from tests.support.fixtures import remote, server  # noqa: F401``.
"""

from __future__ import annotations

import pytest

from tests.support.server import ServerProcess


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("srv")).wait_listening()
    yield srv
    srv.stop()


@pytest.fixture
def remote(server):
    rt = server.connect()
    yield rt
    rt.close()
