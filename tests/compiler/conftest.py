"""Fixtures of the compiler tests: a sync-compiling kernel cache in a tmp dir, graphs to plan."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.compiler.numba_backend import KernelCache
from kernelflow.graph.ir import toposort


@pytest.fixture(scope="session")
def kcache(tmp_path_factory):
    """Kernels compiled inline (no background thread) into a session tmp dir."""
    return KernelCache(str(tmp_path_factory.mktemp("kcache")), background=False)


@pytest.fixture
def graph():
    rt = kf.connect("inproc", compile="off")
    yield rt.graph("c")
    rt.close()


def plan_of(fetches, feeds=()):
    """(order, fed ids) of the nodes ``fetches`` need, pruned at ``feeds``."""
    order = toposort(fetches)
    return order, {id(f) for f in feeds}


@pytest.fixture
def rng():
    return np.random.default_rng(7)
