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


def fused_plan(fetches, feeds, multi=True):
    """(new order, fused_for, made groups) of fusing every node of ``fetches``' plan after the
    passes; ``multi``: groups may have several outputs."""
    from kernelflow.compiler.fusion import fuse
    from kernelflow.compiler.passes import run_passes

    order, fed = plan_of(fetches, feeds)
    rw = run_passes(order, fed, fetches)
    return fuse(rw.order, fed, [rw.resolve(f) for f in fetches], lambda n: True, multi_ok=lambda n: multi)


@pytest.fixture
def rng():
    return np.random.default_rng(7)
