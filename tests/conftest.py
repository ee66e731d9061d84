"""Shared fixtures: a fresh runtime and graph per test."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf


@pytest.fixture
def rt():
    """An in-process runtime (the server-backed variant is added by the server tests)."""
    runtime = kf.connect("inproc")
    yield runtime
    runtime.close()


@pytest.fixture
def g(rt):
    return rt.graph("test")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
