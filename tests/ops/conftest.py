"""Every op test runs against both runtimes (see tests/conftest.py `op_runtime`)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _op_runtime(op_runtime):
    yield op_runtime
