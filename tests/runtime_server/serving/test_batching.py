"""Tests of the dynamic batcher (kernelflow/runtime_server/batching.py) with real run functions.

Most tests use a numpy matmul that records every batch it saw and can be held on an Event,
so the queue can be filled deterministically while the worker is busy; one test batches the
exported digits classifier itself.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.errors import InvalidArgumentError, NotFoundError, UnavailableError
from kernelflow.runtime_server.serving.batching import _COLLECTING, Batcher, BatchingOptions
from tests.support.waiting import wait_for

from .conftest import build_digits

DEADLINE_S = 30.0
W = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0


class MatmulRun:
    """{"x": (n, 3)} -> {"y": x @ W, "rowsum": sum of x per row}; records each batch's shapes.

    ``hold()`` makes the next run block until ``release()``; ``started`` is set when a run begins.
    """

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[int, ...], str]] = []
        self.started = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._lock = threading.Lock()

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def __call__(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feed["x"]
        with self._lock:
            self.batches.append((x.shape, x.dtype.str))
        self.started.set()
        assert self._gate.wait(DEADLINE_S)
        return {"y": x @ W[: x.shape[1]] if x.shape[1] <= 3 else x[:, :3] @ W, "rowsum": x.sum(axis=1)}

    def sizes(self) -> list[int]:
        with self._lock:
            return [s[0] for s, _ in self.batches]


def expected(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x @ W[: x.shape[1]] if x.shape[1] <= 3 else x[:, :3] @ W, "rowsum": x.sum(axis=1)}


@pytest.fixture
def make_batcher():
    made: list[tuple[Batcher, MatmulRun]] = []

    def make(**opts) -> tuple[Batcher, MatmulRun]:
        run = MatmulRun()
        b = Batcher(run, BatchingOptions(**opts), name="m@1")
        made.append((b, run))
        return b, run

    yield make
    for b, run in made:
        run.release()
        b.close()


def block_worker(b: Batcher, run: MatmulRun) -> concurrent.futures.Future:
    """Occupy the worker with a one-row run held on ``run``'s gate; returns its future."""
    run.hold()
    f = b.submit({"x": np.zeros((1, 3))})
    assert run.started.wait(DEADLINE_S)
    return f


def rows(i: int, n: int = 1, width: int = 3, dtype: str = "float64") -> np.ndarray:
    return (np.arange(n * width).reshape(n, width) + 100 * i).astype(dtype)


def test_batcher_queued_requests_merge_into_full_batches_and_each_gets_its_rows(make_batcher):
    b, run = make_batcher(max_batch_size=16, batch_timeout_micros=0)
    first = block_worker(b, run)
    xs = [rows(i) for i in range(40)]
    futs = [b.submit({"x": x}) for x in xs]
    assert b.queued_rows == 40
    run.release()
    for x, f in zip(xs, futs):
        out = f.result(DEADLINE_S)
        np.testing.assert_allclose(out["y"], expected(x)["y"])
        np.testing.assert_allclose(out["rowsum"], expected(x)["rowsum"])
    first.result(DEADLINE_S)
    assert run.sizes() == [1, 16, 16, 8]
    assert (b.batches_run, b.requests_run, b.rows_run) == (4, 41, 41)


def test_batcher_concurrent_threads_merge_and_get_their_own_rows(make_batcher):
    b, run = make_batcher(max_batch_size=64, batch_timeout_micros=200_000)
    n = 32
    barrier = threading.Barrier(n)
    xs = [rows(i, n=1 + i % 3) for i in range(n)]
    results: list = [None] * n

    def client(i: int) -> None:
        barrier.wait()
        results[i] = b.submit({"x": xs[i]}).result(DEADLINE_S)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S)
    for x, out in zip(xs, results):
        assert out is not None and out["y"].shape == (x.shape[0], 4)
        np.testing.assert_allclose(out["y"], expected(x)["y"])
    assert b.requests_run == n and b.rows_run == sum(x.shape[0] for x in xs)
    assert len(run.batches) < n  # merged: fewer runs than requests


def test_batcher_lone_request_waits_at_most_the_timeout(make_batcher):
    b, run = make_batcher(max_batch_size=8, batch_timeout_micros=300_000)
    t0 = time.monotonic()
    out = b.submit({"x": rows(0, n=2)}).result(DEADLINE_S)
    waited = time.monotonic() - t0
    np.testing.assert_allclose(out["y"], expected(rows(0, n=2))["y"])
    assert 0.3 <= waited < 0.3 + 5.0  # waited for company, then ran alone
    assert run.sizes() == [2]


def test_batcher_full_batch_runs_without_waiting_the_timeout(make_batcher):
    b, run = make_batcher(max_batch_size=4, batch_timeout_micros=60_000_000)
    t0 = time.monotonic()
    futs = [b.submit({"x": rows(i)}) for i in range(4)]
    for f in futs:
        f.result(DEADLINE_S)  # a 60 s timeout would fail this
    assert time.monotonic() - t0 < DEADLINE_S
    assert run.sizes() == [4]


def test_batcher_request_that_cannot_fit_ends_the_collecting_batch_at_once(make_batcher):
    b, run = make_batcher(max_batch_size=4, batch_timeout_micros=60_000_000)
    f3 = b.submit({"x": rows(0, n=3)})
    wait_for(lambda: b._state == _COLLECTING, "the worker to wait for company")
    f2a = b.submit({"x": rows(1, n=2)})  # 3 + 2 > 4: the 3-row batch runs now, not in 60 s
    np.testing.assert_allclose(f3.result(DEADLINE_S)["y"], expected(rows(0, n=3))["y"])
    f2b = b.submit({"x": rows(2, n=2)})  # fills the next batch: it runs now too
    np.testing.assert_allclose(f2a.result(DEADLINE_S)["y"], expected(rows(1, n=2))["y"])
    np.testing.assert_allclose(f2b.result(DEADLINE_S)["y"], expected(rows(2, n=2))["y"])
    assert run.sizes() == [3, 4]


def test_batcher_mismatched_shapes_and_dtypes_do_not_merge(make_batcher):
    b, run = make_batcher(max_batch_size=64, batch_timeout_micros=0)
    first = block_worker(b, run)
    reqs = [rows(0, width=3), rows(1, width=5), rows(2, width=3), rows(3, width=3, dtype="float32"),
            rows(4, width=5), rows(5, width=3, dtype="float32")]
    futs = [b.submit({"x": x}) for x in reqs]
    run.release()
    for x, f in zip(reqs, futs):
        out = f.result(DEADLINE_S)
        np.testing.assert_allclose(out["y"], expected(x)["y"], rtol=1e-6)
    first.result(DEADLINE_S)
    # Oldest first; each run holds one kind: (2, 3) float64, (2, 5) float64, (2, 3) float32.
    assert run.batches[1:] == [((2, 3), "<f8"), ((2, 5), "<f8"), ((2, 3), "<f4")]


def test_batcher_oversize_request_runs_alone(make_batcher):
    b, run = make_batcher(max_batch_size=4, batch_timeout_micros=0)
    first = block_worker(b, run)
    reqs = [rows(0, n=1), rows(1, n=10), rows(2, n=1), rows(3, n=2)]
    futs = [b.submit({"x": x}) for x in reqs]
    run.release()
    for x, f in zip(reqs, futs):
        np.testing.assert_allclose(f.result(DEADLINE_S)["y"], expected(x)["y"])
    first.result(DEADLINE_S)
    assert run.sizes() == [1, 1, 10, 3]


def test_batcher_full_queue_raises_unavailable_at_once(make_batcher):
    b, run = make_batcher(max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=3)
    first = block_worker(b, run)
    futs = [b.submit({"x": rows(i)}) for i in range(6)]  # 3 batches of 2 rows: the limit
    with pytest.raises(UnavailableError, match=r"queue of model 'm@1' is full.*6 rows queued"):
        b.submit({"x": rows(6)})
    assert b.queued_rows == 6  # the refused request was not queued
    run.release()
    for i, f in enumerate(futs):
        np.testing.assert_allclose(f.result(DEADLINE_S)["y"], expected(rows(i))["y"])
    first.result(DEADLINE_S)
    wait_for(lambda: b.queued_rows == 0, "the queue to drain")
    # Drained: takes requests again, and an empty queue takes even one over the whole limit.
    big = rows(7, n=9)
    np.testing.assert_allclose(b.submit({"x": big}).result(DEADLINE_S)["y"], expected(big)["y"])


def test_batcher_run_error_reaches_every_request_of_the_batch():
    calls: list[int] = []
    hold, started = threading.Event(), threading.Event()

    def run(feed):
        calls.append(feed["x"].shape[0])
        started.set()
        assert hold.wait(DEADLINE_S)  # the first run holds the worker while the queue fills
        if (feed["x"] < 0).any():
            raise NotFoundError("variable 'w1' is gone")
        return {"y": feed["x"] * 2}

    b = Batcher(run, BatchingOptions(max_batch_size=8, batch_timeout_micros=0), name="m@1")
    try:
        f0 = b.submit({"x": np.ones((1, 2))})
        assert started.wait(DEADLINE_S)
        futs = [b.submit({"x": np.full((1, 2), v)}) for v in (1.0, -1.0, 2.0)]
        hold.set()
        f0.result(DEADLINE_S)
        errors = []
        for f in futs:
            with pytest.raises(NotFoundError, match="variable 'w1' is gone"):
                f.result(DEADLINE_S)
            errors.append(f.exception())
        assert calls == [1, 3]
        assert errors[0] is errors[1] is errors[2]  # the typed error itself, not a wrapper
        # The worker goes on.
        np.testing.assert_array_equal(b.submit({"x": np.ones((2, 2))}).result(DEADLINE_S)["y"], 2 * np.ones((2, 2)))
    finally:
        hold.set()
        b.close()


def test_batcher_output_not_batch_major_fails_naming_it():
    b = Batcher(lambda f: {"probs": f["x"], "mean": f["x"].mean(axis=0)}, BatchingOptions(batch_timeout_micros=0),
                name="m@1")
    try:
        with pytest.raises(InvalidArgumentError, match=r"output 'mean' of model 'm@1' has shape \(2,\).*3 rows"):
            b.submit({"x": np.ones((3, 2))}).result(DEADLINE_S)
    finally:
        b.close()


def test_batcher_close_fails_pending_requests(make_batcher):
    b, run = make_batcher(max_batch_size=2, batch_timeout_micros=0)
    first = block_worker(b, run)
    futs = [b.submit({"x": rows(i)}) for i in range(3)]
    closer = threading.Thread(target=b.close)
    closer.start()
    for f in futs:  # failed at once, while the running batch is still held
        with pytest.raises(UnavailableError, match="closed before the request ran"):
            f.result(DEADLINE_S)
    assert not first.done()
    run.release()
    closer.join(DEADLINE_S)
    assert not closer.is_alive()
    np.testing.assert_allclose(first.result(DEADLINE_S)["y"], expected(np.zeros((1, 3)))["y"])  # it finished
    with pytest.raises(UnavailableError, match="is closed"):
        b.submit({"x": rows(0)})


def test_batcher_close_while_collecting_runs_that_batch_without_waiting_the_timeout(make_batcher):
    b, run = make_batcher(max_batch_size=8, batch_timeout_micros=60_000_000)
    f = b.submit({"x": rows(0)})
    wait_for(lambda: b._state == _COLLECTING, "the worker to wait for company")
    t0 = time.monotonic()
    b.close()
    assert time.monotonic() - t0 < DEADLINE_S  # not the 60 s timeout
    np.testing.assert_allclose(f.result(0)["y"], expected(rows(0))["y"])
    assert b.queued_rows == 0 and run.sizes() == [1]


def test_batcher_disabled_runs_each_request_alone(make_batcher):
    b, run = make_batcher(enabled=False, batch_timeout_micros=60_000_000)
    first = block_worker(b, run)
    xs = [rows(i, n=2) for i in range(5)]
    futs = [b.submit({"x": x}) for x in xs]
    run.release()
    for x, f in zip(xs, futs):
        np.testing.assert_allclose(f.result(DEADLINE_S)["y"], expected(x)["y"])
    first.result(DEADLINE_S)
    assert run.sizes() == [1, 2, 2, 2, 2, 2]


def test_batcher_cancelled_request_is_skipped(make_batcher):
    b, run = make_batcher(max_batch_size=8, batch_timeout_micros=0)
    first = block_worker(b, run)
    keep1, gone, keep2 = (b.submit({"x": rows(i)}) for i in range(3))
    assert gone.cancel()
    run.release()
    np.testing.assert_allclose(keep1.result(DEADLINE_S)["y"], expected(rows(0))["y"])
    np.testing.assert_allclose(keep2.result(DEADLINE_S)["y"], expected(rows(2))["y"])
    first.result(DEADLINE_S)
    assert run.sizes() == [1, 2]


@pytest.mark.parametrize("opts, name", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_batch_size": True}, "max_batch_size"),
    ({"batch_timeout_micros": -1}, "batch_timeout_micros"),
    ({"max_enqueued_batches": 2.5}, "max_enqueued_batches"),
    ({"enabled": "yes"}, "enabled"),
])
def test_batching_options_bad_value_raises_naming_it(opts, name):
    with pytest.raises(InvalidArgumentError, match=f"batching option {name} must be"):
        Batcher(lambda f: f, BatchingOptions(**opts))


@pytest.mark.parametrize("inputs, match", [
    ({}, "non-empty map"),
    ([np.ones((1, 3))], "non-empty map"),
    ({"x": np.float64(1.0)}, "input 'x' must be batch-major"),
    ({"x": np.ones((2, 3)), "z": np.ones((3, 3))}, "same number of rows"),
])
def test_batcher_submit_bad_request_raises(make_batcher, inputs, match):
    b, _ = make_batcher()
    with pytest.raises(InvalidArgumentError, match=match):
        b.submit(inputs)


def test_batcher_runs_exported_digits_model_like_direct_predict(inproc_state, tmp_path):
    d = build_digits(inproc_state, steps=3)
    d.g.export("digits", inputs={"image": d.x}, outputs={"probabilities": d.probs, "class": d.cls})
    m = kf.load_model(tmp_path / "state" / "models" / "digits")
    sizes: list[int] = []

    def run(feed):
        sizes.append(feed["image"].shape[0])
        return m.predict(feed)

    b = Batcher(run, BatchingOptions(max_batch_size=32, batch_timeout_micros=100_000), name="digits@1")
    try:
        chunks = [d.X[i * 3:i * 3 + 1 + i % 4] for i in range(20)]
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            outs = list(pool.map(lambda c: b.submit({"image": c}).result(DEADLINE_S), chunks))
        for c, out in zip(chunks, outs):
            ref = m.predict({"image": c})
            np.testing.assert_allclose(out["probabilities"], ref["probabilities"], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(out["class"], ref["class"])
        assert sum(sizes) == sum(len(c) for c in chunks)
        assert len(sizes) < len(chunks)
    finally:
        b.close()
