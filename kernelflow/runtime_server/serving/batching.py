"""Dynamic batching of predict requests: concurrent requests for one model merged into one run.

Modelled on TensorFlow Serving's BasicBatchScheduler. Requests (dicts of batch-major arrays,
each possibly several rows) wait in a queue; one worker thread forms a batch of up to
``max_batch_size`` rows, waiting at most ``batch_timeout_micros`` after the batch's first
request arrived for more, runs it once on the inputs concatenated along axis 0 and splits
every output back by row ranges, so each caller's future gets exactly its own rows.

- Only requests whose inputs have the same names, dtypes and non-batch shapes are merged;
  the others wait for a batch of their own (the oldest request always goes first).
- A request of more than ``max_batch_size`` rows runs alone, unsplit.
- The queue holds at most ``max_enqueued_batches * max_batch_size`` rows (counted in rows, not
  batches: requests vary in size). A request that would go over it is refused at once with
  UnavailableError ("queue full"); an empty queue takes a request of any size, so an oversize
  request is never refused for its size alone. The batch being run is not counted.
- If ``run`` raises, every future of that batch gets the same exception. An output whose
  leading dimension is not the batch's row count cannot be split: those futures get
  InvalidArgumentError naming the output.
- ``close()`` stops the worker: the batch it has taken finishes, queued requests fail with
  UnavailableError, later submits too.

Callers on an asyncio loop should ``await asyncio.wrap_future(batcher.submit(x))`` rather
than block a pool thread on ``.result()``: a pool of N threads would cap batches at N requests.

Contents: check_option, BatchingOptions, Batcher.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from kernelflow.errors import InvalidArgumentError, UnavailableError

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
_IDLE, _COLLECTING, _WAKING, _RUNNING = range(4)  # the worker's states


def check_option(name: str, value: Any, label: str | None = None) -> None:
    """Raise InvalidArgumentError unless ``value`` suits batching option ``name`` (a field of
    `BatchingOptions`); the message names it as ``label`` (default ``batching option NAME``)."""
    label = label or f"batching option {name}"
    if name == "enabled":
        if not isinstance(value, bool):
            raise InvalidArgumentError(f"{label} must be true or false (a bool); got {value!r}")
        return
    positive = name != "batch_timeout_micros"  # a timeout of 0 means "never wait"
    if not isinstance(value, int) or isinstance(value, bool) or value < (1 if positive else 0):
        want = "a positive integer" if positive else "a non-negative integer"
        raise InvalidArgumentError(f"{label} must be {want}; got {value!r}")


@dataclass
class BatchingOptions:
    """How a model's predicts are batched (TensorFlow Serving's names and defaults where it has them).

    Attributes:
        enabled: merge concurrent requests; False: the caller runs requests directly (a Batcher
            given False runs each request alone, still queued and in order).
        max_batch_size: most rows in one run.
        batch_timeout_micros: longest wait, after a batch's first request, for more requests.
        max_enqueued_batches: the queue holds at most this many times ``max_batch_size`` rows.
    """

    enabled: bool = True
    max_batch_size: int = 64
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100

    def validate(self) -> BatchingOptions:
        """Check every field; returns self. Raises InvalidArgumentError naming the bad option."""
        for f in fields(self):
            check_option(f.name, getattr(self, f.name))
        return self


class _Request:
    __slots__ = ("inputs", "future", "rows", "seq", "t_enqueued")

    def __init__(self, inputs: dict[str, np.ndarray], future: concurrent.futures.Future, rows: int, seq: int):
        self.inputs, self.future, self.rows, self.seq = inputs, future, rows, seq
        self.t_enqueued = time.monotonic()


def _check_inputs(inputs: dict) -> tuple[dict[str, np.ndarray], int, tuple]:
    """(arrays, row count, merge key) of a request; InvalidArgumentError when it has no batch dim."""
    if not isinstance(inputs, dict) or not inputs:
        raise InvalidArgumentError(f"batching: a request must be a non-empty map of input name -> array; "
                                   f"got {type(inputs).__name__ if not isinstance(inputs, dict) else 'an empty map'}")
    arrays, rows = {}, None
    for k, v in inputs.items():
        a = np.asarray(v)
        if a.ndim == 0:
            raise InvalidArgumentError(f"batching: input '{k}' must be batch-major (at least 1-D); got a scalar")
        if rows is None:
            rows = a.shape[0]
        elif a.shape[0] != rows:
            raise InvalidArgumentError(f"batching: every input needs the same number of rows; input '{k}' has "
                                       f"{a.shape[0]}, another has {rows}")
        arrays[k] = a
    key = tuple(sorted((k, a.dtype.str, a.shape[1:]) for k, a in arrays.items()))
    return arrays, int(rows), key


class Batcher:
    """Merges concurrent requests for one model into runs of ``run``; see the module docstring.

    Args:
        run: computes a batch: {input: array of N rows} -> {output: array of N rows}.
        options: the batching options (validated here).
        name: for the worker thread's name and error messages (e.g. "digits@2").
    """

    def __init__(self, run: RunFn, options: BatchingOptions, name: str = ""):
        self.options = options.validate() if isinstance(options, BatchingOptions) else None
        if self.options is None:
            raise InvalidArgumentError(f"batching: options must be BatchingOptions; got {type(options).__name__}")
        self.name = name
        self._run = run
        self._max_rows = options.max_batch_size if options.enabled else 1
        self._timeout = options.batch_timeout_micros / 1e6 if options.enabled else 0.0
        self._queue_limit = options.max_enqueued_batches * options.max_batch_size
        self._cond = threading.Condition()
        # One FIFO per merge key; the worker serves the key whose head is oldest.
        self._queues: dict[tuple, collections.deque[_Request]] = {}
        self._queued_rows = 0
        self._seq = itertools.count()
        self._closed = False
        # What the worker does, so submit wakes it only when that changes something: when it
        # waits for work, or when it collects a batch that the new request fills or ends.
        self._state = _RUNNING
        self._collect_key: tuple | None = None
        self._collect_room = 0  # rows the collecting batch can still take
        self.batches_run = 0  # counters for tests and benchmarks
        self.requests_run = 0
        self.rows_run = 0
        self._worker = threading.Thread(target=self._loop, name=f"kf-batcher-{name}", daemon=True)
        self._worker.start()

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the queue (including a batch still collecting, not the one running)."""
        with self._cond:
            return self._queued_rows

    def _label(self) -> str:
        return f" of model '{self.name}'" if self.name else ""

    def submit(self, inputs: dict[str, np.ndarray]) -> concurrent.futures.Future:
        """Queue one request; the future gets {output: its rows} or the run's exception.

        Raises:
            InvalidArgumentError: not a map of batch-major arrays with equal row counts.
            UnavailableError: the queue is full, or the batcher is closed.
        """
        arrays, rows, key = _check_inputs(inputs)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._closed:
                raise UnavailableError(f"batching queue{self._label()} is closed")
            if self._queued_rows and self._queued_rows + rows > self._queue_limit:
                raise UnavailableError(
                    f"batching queue{self._label()} is full: {self._queued_rows} rows queued, a request of {rows} "
                    f"would go over max_enqueued_batches * max_batch_size = {self._queue_limit} rows; retry later")
            self._queues.setdefault(key, collections.deque()).append(_Request(arrays, fut, rows, next(self._seq)))
            self._queued_rows += rows
            if self._state == _IDLE:
                self._state = _WAKING
                self._cond.notify()
            elif self._state == _COLLECTING and key == self._collect_key:
                # Waking the worker for every request would cost a GIL hand-over each; it
                # takes them all at its deadline unless this one fills the batch or cannot fit.
                if rows >= self._collect_room:
                    self._state = _WAKING
                    self._cond.notify()
                else:
                    self._collect_room -= rows
        return fut

    def close(self) -> None:
        """Stop the worker and fail every queued request; returns once the worker has stopped.

        A batch already taken by the worker (running, or collecting: it stops waiting) still
        runs and answers its requests.
        """
        with self._cond:
            if self._closed:
                pending = []
            else:
                self._closed = True
                pending = [r for q in self._queues.values() for r in q]
                self._queues.clear()
                self._queued_rows -= sum(r.rows for r in pending)  # a collecting batch counts itself down
                self._cond.notify_all()
        err = UnavailableError(f"batching queue{self._label()} closed before the request ran")
        for r in pending:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(err)
        if threading.current_thread() is not self._worker:
            self._worker.join()

    # --------------------------------------------------------------- worker side
    def _oldest_key(self) -> tuple | None:
        best = None
        for key, q in self._queues.items():
            if q and (best is None or q[0].seq < self._queues[best][0].seq):
                best = key
        return best

    def _take(self, key: tuple, batch: list[_Request], rows: int) -> tuple[int, bool]:
        """Move requests of ``key`` that fit into ``batch``; returns (rows, batch can take no more)."""
        q = self._queues.get(key)  # None once close() cleared the queues
        while q:
            r = q[0]
            if batch and rows + r.rows > self._max_rows:
                return rows, True  # the next one does not fit: run what we have
            q.popleft()
            batch.append(r)
            rows += r.rows
            if rows >= self._max_rows:
                return rows, True
        return rows, False

    def _next_batch(self) -> list[_Request] | None:
        """Block until a batch is ready (None once closed); called without the lock held."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                key = self._oldest_key()
                if key is not None:
                    break
                self._state = _IDLE
                self._cond.wait()
            batch: list[_Request] = []
            rows, full = self._take(key, batch, 0)
            deadline = batch[0].t_enqueued + self._timeout
            while not full:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._state, self._collect_key, self._collect_room = _COLLECTING, key, self._max_rows - rows
                self._cond.wait(left)
                rows, full = self._take(key, batch, rows)
            self._state, self._collect_key = _RUNNING, None
            if key in self._queues and not self._queues[key]:  # (close() may have cleared them)
                del self._queues[key]
            self._queued_rows -= rows
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]  # drop cancelled ones
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Request]) -> None:
        if len(batch) == 1:
            feed = batch[0].inputs
        else:
            # The one copy of the inputs: each input's rows, request after request.
            feed = {k: np.concatenate([r.inputs[k] for r in batch], axis=0) for k in batch[0].inputs}
        total = sum(r.rows for r in batch)
        try:
            out = self._run(feed)
            if not isinstance(out, dict):
                raise InvalidArgumentError(f"batching: the run{self._label()} returned "
                                           f"{type(out).__name__}, not a map of output name -> array")
            out = {k: np.asarray(v) for k, v in out.items()}
            for k, v in out.items():
                if v.ndim == 0 or v.shape[0] != total:
                    raise InvalidArgumentError(
                        f"batching: output '{k}'{self._label()} has shape {tuple(v.shape)}, whose "
                        f"leading dimension is not the batch's {total} rows; batching needs batch-major "
                        "outputs (turn batching off for this model)")
        except BaseException as e:  # every caller of the batch hears it, the worker goes on
            for r in batch:
                r.future.set_exception(e)
            return
        finally:
            self.batches_run += 1
            self.requests_run += len(batch)
            self.rows_run += total
        start = 0
        for r in batch:
            # Views into the batch's outputs: no copy per request.
            r.future.set_result({k: v[start:start + r.rows] for k, v in out.items()})
            start += r.rows
