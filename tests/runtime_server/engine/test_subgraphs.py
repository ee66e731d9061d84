"""Sub-graphs run lean inside their control-flow kernel (engine/subgraphs.py): every shape of the
one-kernel path and the general path give the loop's values, a kernel failing inside a body is
named as before, a run nobody tracks still runs, and a tracked run stops between iterations when
cancelled or past its deadline, on every path (a loop without kernels too)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.runtime_server.engine import subgraphs
from kernelflow.runtime_server.engine.runs import RunRegistry

WAIT_S = 60.0  # a deadline for polls, never a speed claim


@pytest.fixture
def g(inproc_rt):
    """A graph of an in-process runtime: the tests look at its service's internals."""
    return inproc_rt.graph("sub")


@pytest.fixture
def paths(monkeypatch):
    """The path (`_one_kernel` or `_kernels`) of each sub-graph a loop binds, in bind order."""
    seen: list[str] = []
    bind = subgraphs.SubRunner.bind

    def spy(self, *args, **kwargs):
        run = bind(self, *args, **kwargs)
        seen.append(run.__qualname__.split(".")[0])
        return run

    monkeypatch.setattr(subgraphs.SubRunner, "bind", spy)
    return seen


class _Graph:
    """What the loops below call, in the graph."""

    exp = staticmethod(kf.exp)
    f64 = staticmethod(lambda t: kf.cast(t, "float64"))


class _Numpy:
    """What the loops below call, in the numpy reference."""

    exp = staticmethod(np.exp)
    f64 = staticmethod(np.float64)


# name: (cond(n, ops), body(n, ops), initial values, the paths of cond and body); n is fed.
LOOPS = {
    "var<capture, var+const": (lambda n, o: lambda i: i < n, lambda n, o: lambda i: i + 1, [0],
                               ("_one_kernel",) * 2),
    "capture>var, const+var": (lambda n, o: lambda i: n > i, lambda n, o: lambda i: 1 + i, [0],
                               ("_one_kernel",) * 2),
    "var*var": (lambda n, o: lambda x: x < 1e6, lambda n, o: lambda x: x * x, [1.5], ("_one_kernel",) * 2),
    "one input": (lambda n, o: lambda x: x < 100.0, lambda n, o: lambda x: o.exp(x), [0.0], ("_one_kernel",) * 2),
    "general": (lambda n, o: lambda i, x: i < n, lambda n, o: lambda i, x: (i + 1, x * 0.5 + o.f64(i)), [0, 3.0],
                ("_one_kernel", "_kernels")),
}


def _typed(v):
    return np.int64(v) if isinstance(v, int) else np.float64(v)


@pytest.mark.parametrize("name", list(LOOPS))
def test_lean_paths_give_the_loops_values(g, paths, name):
    make_cond, make_body, init, expected_paths = LOOPS[name]
    n = g.placeholder((), "int64", name="n")
    start = [g.constant(v, dtype=_typed(v).dtype.name) for v in init]
    out = kf.while_loop(make_cond(n, _Graph), make_body(n, _Graph), start)
    for trips in (13, 4):  # the runners are bound again in each run: the new n is seen
        got = g.run(list(out), {n: np.int64(trips)})
        vals = [_typed(v) for v in init]
        cond, body = make_cond(np.int64(trips), _Numpy), make_body(np.int64(trips), _Numpy)
        while cond(*vals):
            vals = body(*vals)
            vals = list(vals) if isinstance(vals, tuple) else [vals]
        for a, b in zip(got, vals, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)
    assert tuple(paths[:2]) == expected_paths


def test_loop_without_kernels_runs_its_trip_count(g, paths):
    out = kf.while_loop(lambda x: True, lambda x: x, [g.constant(2.5, dtype="float64")], maximum_iterations=7)
    b, x = kf.while_loop(lambda b, x: b, lambda b, x: (b, x + 1.0),
                         [g.constant(True), g.constant(0.5, dtype="float64")], maximum_iterations=4)
    got = g.run([out[0], x])
    assert got[0] == 2.5 and got[1] == 4.5
    assert paths[:2] == ["_kernels", "_kernels"]


@pytest.mark.parametrize("draw", [lambda g: lambda x: kf.random_uniform(like=x, dtype="float64"),
                                  lambda g: lambda x: kf.random_uniform((4,), dtype="float64", graph=x.graph)],
                         ids=["like the carry", "no inputs"])
def test_random_body_of_one_kernel_draws_at_every_run(g, paths, draw):
    """The one-kernel path with a kernel that needs its context (an RNG), of one input and of none."""
    x = kf.while_loop(lambda x: True, draw(g), [g.constant(np.zeros(4))], maximum_iterations=2)[0]
    a, b = g.run(x), g.run(x)
    assert np.all((a >= 0.0) & (a < 1.0)) and np.all((b >= 0.0) & (b < 1.0))
    assert not np.array_equal(a, b)  # the kernel ran again: nothing was evaluated once and kept
    assert paths[1::2] == ["_one_kernel", "_one_kernel"]


@pytest.mark.parametrize("body", [lambda m: lambda x: x @ m, lambda m: lambda x: (x @ m) + 1.0],
                         ids=["one kernel", "general"])
def test_failing_body_kernel_is_named_with_its_inputs_and_changes_nothing(g, body):
    m = g.placeholder((None, None), "float64", name="m")
    v = g.variable(np.float64(1.0), name="v")
    out = kf.while_loop(lambda x: kf.sum(x) < 100.0, body(m), [g.constant(np.ones((2, 2)))])[0]
    step = v.assign_add(np.float64(1.0))
    with pytest.raises(kf.errors.InvalidArgumentError,
                       match=r"matmul \(matmul\) failed at run time: ValueError: .*; inputs: arg0: float64\(2, 2\), "
                             r"captured/m: float64\(3, 3\)") as info:
        g.run([out, step], {m: np.ones((3, 3))})  # the loop runs first (made first) and fails
    assert info.value.node == "matmul"
    assert g.run(v) == 1.0
    got = g.run([out, step], {m: 2.0 * np.eye(2)})[0]
    assert float(np.sum(got)) >= 100.0 and g.run(v) == 2.0


def test_untracked_run_of_a_loop_gives_its_value(g):
    """A plan run outside any tracked call (a job's thread) binds no run control."""
    n = g.placeholder((), "int64", name="n")
    i = kf.while_loop(lambda i: i < n, lambda i: i + 1, [g.constant(0, dtype="int64")])[0]
    g.sync()
    s = g.runtime._transport.service.graphs.session(g.name)
    assert s.run([i.name], [n.name], [np.array(21, "int64")])[0] == 21


# Loops that would run for years: one kernel in cond and body, several kernels, and none at all.
ENDLESS = {
    "one kernel": lambda g: kf.while_loop(lambda i: i >= 0, lambda i: i + 1, [g.constant(0, dtype="int64")])[0],
    "general": lambda g: kf.while_loop(lambda i, x: i >= 0, lambda i, x: (i + 1, x * 0.5 + 1.0),
                                       [g.constant(0, dtype="int64"), g.constant(1.0, dtype="float64")])[0],
    "no kernels": lambda g: kf.while_loop(lambda x: True, lambda x: x, [g.constant(1.0, dtype="float64")])[0],
}


def _start(g, name: str, registry: RunRegistry) -> tuple[threading.Thread, list, list]:
    """Run loop ``name`` of ENDLESS on a thread, as a run of ``registry``: (thread, [its control], [what it raised])."""
    out = ENDLESS[name](g)
    g.sync()
    s = g.runtime._transport.service.graphs.session(g.name)
    started: list = []
    got: list[BaseException] = []

    def run() -> None:
        ctl, prev = registry.begin("graph.run", s.name)
        started.append(ctl)
        try:
            s.run([out.name], [], [])
        except BaseException as e:  # noqa: BLE001 -- the test inspects it
            got.append(e)
        finally:
            registry.end(ctl, prev)

    t = threading.Thread(target=run, daemon=True)  # daemon: a loop that failed to stop must not hang pytest
    t.start()
    return t, started, got


def _wait_for(pred, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("name", list(ENDLESS))
def test_cancel_stops_an_endless_loop_between_iterations(g, name):
    registry = RunRegistry()
    t, started, got = _start(g, name, registry)
    _wait_for(lambda: started, "the loop to start")
    started[0].cancel("test")
    t.join(WAIT_S)
    assert not t.is_alive(), "the loop did not stop"
    assert len(got) == 1 and isinstance(got[0], kf.errors.CancelledError), got
    assert not registry.runs()


@pytest.mark.parametrize("name", list(ENDLESS))
def test_deadline_stops_an_endless_loop(g, name):
    t, _, got = _start(g, name, RunRegistry(max_run_seconds=0.2))
    t.join(WAIT_S)
    assert not t.is_alive(), "the loop did not stop"
    assert len(got) == 1 and isinstance(got[0], kf.errors.DeadlineExceededError), got
