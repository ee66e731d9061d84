"""The served model versions: version policies, the base-path watcher, load / warm-up / unload, batching.

Each version goes through TensorFlow Serving's states: START (found on disk and wanted by the
policy), LOADING (files read, session built, one warm-up run), AVAILABLE (answers requests),
UNLOADING (no new requests; waits for the ones in flight), END (released, or failed to load:
then its status carries the error). Only AVAILABLE versions answer; a request for a version
that is START or LOADING gets UnavailableError (HTTP 503).

Policies (per model, from the config file; default ``latest``): ``latest`` serves the highest
complete version (``{"latest": {"num_versions": N}}``: the N highest), ``all`` every complete
version, ``{"specific": [1, 3]}`` those. A version the policy drops is unloaded once one the
policy wants is AVAILABLE (or none is wanted), so a switch never leaves a gap; a new version
that fails to load leaves the old one serving. A version that failed is not loaded again while
its directory stays (remove it and put a fixed copy back to retry).

A manager either watches (``start``: a thread polls the base path every ``poll_wait_s``, loads
run on a loader thread) or, in an in-process runtime, looks at the disk on each request and
loads there. Each AVAILABLE version whose inputs and outputs are batch-major gets a `Batcher`
(batching.py) when batching is on.

Contents: VersionPolicy, ModelConfig, parse_model_config, load_model_config, ModelManager.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import FailedPreconditionError, InvalidArgumentError, KernelflowError, NotFoundError, UnavailableError
from ...protocol.model_dir import NAME_RE, check_model_name, versions_on_disk
from ..engine.devices import DeviceManager
from .batching import BatchingOptions, check_option
from .loaded import LoadedModel

log = logging.getLogger("kernelflow.models")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
BATCHING_FIELDS = tuple(f.name for f in fields(BatchingOptions))
KEEP_ENDED = 5  # END versions kept in a model's status (newest first), so it does not grow forever
# Test hook: while <dir>/hold-<model name> exists, loads of that model wait in LOADING.
_CODES = {"InvalidArgumentError": "INVALID_ARGUMENT", "ShapeError": "INVALID_ARGUMENT", "NotFoundError": "NOT_FOUND",
          "FailedPreconditionError": "FAILED_PRECONDITION", "ResourceExhaustedError": "RESOURCE_EXHAUSTED",
          "UnavailableError": "UNAVAILABLE", "InternalError": "INTERNAL"}


# ----------------------------------------------------------------- configuration
@dataclass(frozen=True)
class VersionPolicy:
    """Which complete versions of a model to serve: ``latest`` (the ``num_versions`` highest),
    ``all``, or ``specific`` (``versions``)."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def choose(self, on_disk: list[int]) -> list[int]:
        """The wanted versions among ``on_disk`` (ascending)."""
        if self.kind == "all":
            return list(on_disk)
        if self.kind == "specific":
            return [v for v in on_disk if v in self.versions]
        return list(on_disk[-self.num_versions:])

    def describe(self) -> str:
        if self.kind == "specific":
            return f"specific {list(self.versions)}"
        return "latest" if self.kind == "latest" and self.num_versions == 1 else \
            (f"latest {self.num_versions}" if self.kind == "latest" else self.kind)


@dataclass
class ModelConfig:
    """A model's policy and batching overrides (keys of `BATCHING_FIELDS`)."""

    policy: VersionPolicy = field(default_factory=VersionPolicy)
    batching: dict[str, Any] = field(default_factory=dict)


def _parse_policy(v: Any, where: str) -> VersionPolicy:
    if v in ("latest", "all"):
        return VersionPolicy(v)
    if isinstance(v, dict) and len(v) == 1:
        (kind, arg), = v.items()
        if kind == "specific" and isinstance(arg, list) and arg and all(
                isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in arg):
            return VersionPolicy("specific", versions=tuple(sorted(set(arg))))
        if kind == "latest" and isinstance(arg, dict) and set(arg) == {"num_versions"} and isinstance(
                arg["num_versions"], int) and not isinstance(arg["num_versions"], bool) and arg["num_versions"] > 0:
            return VersionPolicy("latest", num_versions=arg["num_versions"])
    raise InvalidArgumentError(f"{where}: version_policy must be \"latest\", \"all\", {{\"specific\": [positive "
                               f"ints]}} or {{\"latest\": {{\"num_versions\": N}}}}; got {json.dumps(v)}")


def parse_batching(doc: Any, where: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Checked batching options: a map with keys of `BATCHING_FIELDS` (values checked by
    batching.check_option). ``labels`` names options in messages (the CLI: its flags).

    Raises:
        InvalidArgumentError: ``where: <option> must be ...; got ...``.
    """
    if not isinstance(doc, dict):
        raise InvalidArgumentError(f"{where}: batching must be an object; got {json.dumps(doc)}")
    for k, v in doc.items():
        if k not in BATCHING_FIELDS:
            raise InvalidArgumentError(f"{where}: unknown batching option {k!r}; known: {sorted(BATCHING_FIELDS)}")
        check_option(k, v, f"{where}: " + (labels or {}).get(k, f"batching option {k!r}"))
    return dict(doc)


def parse_model_config(doc: Any) -> dict[str, ModelConfig]:
    """``{"models": {name: {"version_policy": ..., "batching": {...}}}}`` -> {name: ModelConfig}.

    Raises:
        InvalidArgumentError: naming the key that is wrong.
    """
    if not isinstance(doc, dict) or set(doc) - {"models"}:
        raise InvalidArgumentError(f"model config: expected {{\"models\": {{name: {{...}}}}}}; got keys "
                                   f"{sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
    models = doc.get("models", {})
    if not isinstance(models, dict):
        raise InvalidArgumentError("model config: \"models\" must be an object of model name -> settings")
    out = {}
    for name, m in models.items():
        check_model_name(name)
        where = f"model config, model '{name}'"
        if not isinstance(m, dict) or set(m) - {"version_policy", "batching"}:
            raise InvalidArgumentError(f"{where}: settings may have \"version_policy\" and \"batching\"; got "
                                       f"{sorted(m) if isinstance(m, dict) else json.dumps(m)}")
        out[name] = ModelConfig(_parse_policy(m.get("version_policy", "latest"), where),
                                parse_batching(m.get("batching", {}), where))
    return out


def load_model_config(path: str | Path) -> dict[str, ModelConfig]:
    """Read and check a JSON model config file (see `parse_model_config`)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as e:
        raise InvalidArgumentError(f"model config {path}: cannot read it: {e}") from e
    except ValueError as e:
        raise InvalidArgumentError(f"model config {path}: not valid JSON: {e}") from e
    return parse_model_config(doc)


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc); server.tune_malloc otherwise keeps 512 MiB."""
    import ctypes
    import ctypes.util
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


# ----------------------------------------------------------------- served versions
class ServedVersion:
    """One version's state, its loaded model and batcher, and the requests using it."""

    def __init__(self, name: str, version: int, path: Path):
        self.name, self.version, self.path = name, version, path
        self.state = START
        self.model: LoadedModel | None = None
        self.batcher: Any = None
        self.error: BaseException | None = None
        self.users = 0

    def status(self) -> dict:
        code, msg = "OK", ""
        if self.error is not None:
            code = _CODES.get(type(self.error).__name__, "UNKNOWN")
            msg = getattr(self.error, "message", None) or str(self.error)
        return {"version": str(self.version), "state": self.state,
                "status": {"error_code": code, "error_message": msg}}


class ModelManager:
    """The models under a base path, loaded and unloaded by their version policies.

    Args:
        base: the model base path (``<state dir>/models`` or ``--model-base-path``); None: no models.
        devices: device manager for loaded models.
        config: per-model settings (`parse_model_config`); other models get ``latest``.
        batching: default batching options (keys of `BATCHING_FIELDS`); None or enabled False: predicts
            run directly.
    """

    def __init__(self, base: Path | str | None, devices: DeviceManager | None = None,
                 config: dict[str, ModelConfig] | None = None, batching: dict[str, Any] | None = None):
        self.base = Path(base) if base is not None else None
        self.devices = devices or DeviceManager("cpu")
        self.config = dict(config or {})
        self.batching = dict(batching or {"enabled": False})
        self._models: dict[str, dict[int, ServedVersion]] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._poll_lock = threading.Lock()
        self._loader: ThreadPoolExecutor | None = None
        self._direct: ThreadPoolExecutor | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.poll_wait_s = 1.0
        self.polls = 0  # completed watcher passes (tests and the REST status can tell a pass happened)

    # ------------------------------------------------------------- lifecycle
    @property
    def watching(self) -> bool:
        return self._thread is not None

    def configure(self, config: dict[str, ModelConfig] | None = None, batching: dict[str, Any] | None = None) -> None:
        """Set policies and default batching; call before `start` (versions loaded already keep theirs)."""
        if config is not None:
            self.config = dict(config)
        if batching is not None:
            self.batching = dict(batching)

    def start(self, poll_wait_s: float = 1.0, wait: bool = True) -> None:
        """Load what the policies want now, then watch the base path every ``poll_wait_s``. With
        ``wait``, return once those loads finished; else once they are scheduled (a look at the
        disk): requests meanwhile see the versions START or LOADING (UnavailableError)."""
        if self._thread is not None or self._stop.is_set():
            return
        self.poll_wait_s = float(poll_wait_s)
        self._loader = ThreadPoolExecutor(2, thread_name_prefix="kf-model-load")
        self._thread = threading.Thread(target=self._watch, name="kf-model-watch", daemon=True)
        self.poll(wait=wait)
        self._thread.start()

    def close(self) -> None:
        """Stop watching and unload every version (pending batched requests fail with UnavailableError).

        Versions not loaded yet end (END): a load still running releases what it built instead
        of serving it, and nothing is loaded after this."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=10)  # (not started yet: a `start` still waiting for loads; it will not watch)
        with self._lock:
            versions = []
            for vs in self._models.values():
                for sv in vs.values():
                    if sv.state in (START, LOADING):
                        sv.state = END
                    elif sv.state == AVAILABLE:
                        versions.append(sv)
            self._changed.notify_all()
        for sv in versions:  # no collection per version: the whole manager is going (seconds in a big heap)
            self._unload(sv, wait_users_s=2.0, collect=False)
        for pool in (self._loader, self._direct):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_wait_s):
            try:
                self.poll()
            except Exception:  # a bad pass must not end watching
                log.error("model base path poll failed", exc_info=True)

    def require_base(self, what: str) -> Path:
        if self.base is None:
            raise FailedPreconditionError(f"{what}: this runtime has no state dir to keep models in; start the "
                                          "server with `kernelflow serve --state-dir DIR`")
        return self.base

    # ------------------------------------------------------------- disk and policy
    def _names_on_disk(self) -> list[str]:
        if self.base is None or not self.base.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.base)
                      if e.is_dir() and NAME_RE.fullmatch(e.name) and ".." not in e.name)

    def _settings(self, name: str) -> ModelConfig:
        return self.config.get(name) or ModelConfig()

    def poll(self, only: str | None = None, wait: bool = False) -> None:
        """One pass over the base path (or model ``only``): start loads of wanted versions, unload
        dropped ones. With ``wait``, return once the loads it started have finished. After `close`: nothing."""
        if self._stop.is_set():
            return
        with self._poll_lock:
            names = [only] if only is not None else sorted(set(self._names_on_disk()) | set(self._models))
            started: list[Future] = []
            for name in names:
                started += self._reconcile(name)
            if only is None:
                self.polls += 1
        if wait:
            for f in started:
                with contextlib.suppress(CancelledError):  # a close() dropped the queued load
                    f.result()

    def _reconcile(self, name: str) -> list[Future]:
        on_disk = versions_on_disk(self.base / name) if self.base is not None else []
        wanted = self._settings(name).policy.choose(on_disk)
        loads, unloads = [], []
        with self._lock:
            vs = self._models.setdefault(name, {})
            for v in wanted:
                sv = vs.get(v)
                if sv is None or (sv.state == END and sv.error is None):
                    sv = vs[v] = ServedVersion(name, v, self.base / name / str(v))  # type: ignore[operator]
                    loads.append(sv)
            serving = any(vs[v].state == AVAILABLE for v in wanted if v in vs)
            for v, sv in vs.items():
                # Keep a dropped version serving until a wanted one is AVAILABLE (a wanted one
                # that failed to load leaves it serving), unless none is wanted or its dir is gone.
                if v not in wanted and sv.state == AVAILABLE and (serving or not wanted or v not in on_disk):
                    sv.state = UNLOADING
                    unloads.append(sv)
            for v in [v for v, sv in vs.items() if sv.error is not None and v not in on_disk]:
                del vs[v]  # a failed version whose dir went: a copy put back is tried afresh
            # A failed version stays while its dir is there, however many END versions there are:
            # pruned, it would look new to the next pass and be loaded again (failed loads are not retried).
            ended = sorted((v for v, sv in vs.items() if sv.state == END and sv.error is None), reverse=True)
            for v in ended[KEEP_ENDED:]:
                del vs[v]
            if not vs:
                del self._models[name]
        return [self._schedule(self._load, sv) for sv in loads] + [self._schedule(self._unload, sv) for sv in unloads]

    def _schedule(self, fn: Any, sv: ServedVersion) -> Future:
        f: Future = Future()
        if self._stop.is_set():  # closed: load nothing more (close unloads what is loaded)
            f.set_result(None)
            return f
        if self._loader is not None:
            with contextlib.suppress(RuntimeError):  # a pool shut down by a close that began meanwhile
                return self._loader.submit(fn, sv)
            f.set_result(None)
            return f
        fn(sv)  # not watching: do it now, in the caller's thread
        f.set_result(None)
        return f

    # ------------------------------------------------------------- load and unload
    def _load(self, sv: ServedVersion) -> None:
        with self._lock:
            if sv.state != START or self._stop.is_set():
                return
            sv.state = LOADING
        batcher = model = None
        try:
            model = LoadedModel(sv.name, sv.version, sv.path, self.devices)
            t0 = time.perf_counter()
            try:
                model.warm_up()
            except KernelflowError as e:  # a model may need real values; it still serves
                log.warning("model '%s' version %d: warm-up run failed (%s); serving without it",
                            sv.name, sv.version, e)
            batcher = self._make_batcher(model)
            log.info("loaded model '%s' version %d (warm-up %.1f ms, batching %s)", sv.name, sv.version,
                     (time.perf_counter() - t0) * 1e3, "on" if batcher is not None else "off")
        except Exception as e:
            log.error("model '%s' version %d failed to load: %s", sv.name, sv.version, e)
            with self._lock:
                sv.state, sv.error = END, e
                self._changed.notify_all()
            return
        with self._lock:
            if sv.state == LOADING and not self._stop.is_set():
                sv.model, sv.batcher, sv.state = model, batcher, AVAILABLE
                model = batcher = None
            else:  # the manager closed meanwhile: serve nothing, keep no batcher thread
                sv.state = END
            self._changed.notify_all()
        if batcher is not None:
            batcher.close()
        if model is not None:
            model.release()
            return
        self._reconcile(sv.name)  # unload what the new version replaces now, not at the next poll

    def _make_batcher(self, model: LoadedModel) -> Any:
        opts = {**self.batching, **self._settings(model.name).batching}
        if not opts.get("enabled", True) or not model.batchable:
            return None
        from .batching import Batcher

        return Batcher(model.run, BatchingOptions(**opts), name=f"{model.name}:{model.version}")

    def _unload(self, sv: ServedVersion, wait_users_s: float = 30.0, collect: bool = True) -> None:
        """Retire ``sv`` once its requests in flight are done; ``collect``: then run a full garbage
        collection and hand freed pages back to the OS, so a replaced version's memory is returned
        at once (a collection costs about a second in a process of a million objects)."""
        with self._lock:
            if sv.state not in (AVAILABLE, UNLOADING):
                return
            sv.state = UNLOADING
            deadline = time.monotonic() + wait_users_s
            while sv.users and time.monotonic() < deadline:  # requests in flight finish first
                self._changed.wait(deadline - time.monotonic())
            batcher, model = sv.batcher, sv.model
            sv.batcher = sv.model = None
        if batcher is not None:
            batcher.close()
        if model is not None:
            model.release()
        del batcher, model
        with self._lock:
            sv.state = END
            self._changed.notify_all()
        if collect:
            gc.collect()
            _malloc_trim()
        log.info("unloaded model '%s' version %d", sv.name, sv.version)

    # ------------------------------------------------------------- requests
    def _served(self, name: str, version: int | None) -> ServedVersion:
        check_model_name(name)
        if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
            raise InvalidArgumentError(f"version must be a positive integer; got {version!r}")
        if self._stop.is_set():
            raise UnavailableError(f"model '{name}': the model server is shutting down")
        if not self.watching:
            self.poll(only=name, wait=True)
        with self._lock:  # one consistent look: a load may finish while this request is refused
            vs = dict(self._models.get(name, {}))
            states = {v: sv.state for v, sv in vs.items()}
            errors = {v: sv.error for v, sv in vs.items() if sv.error is not None}
        avail = [v for v, st in states.items() if st == AVAILABLE]
        if avail and (version is None or version in avail):  # the hot path: no disk access
            return vs[max(avail) if version is None else version]
        on_disk = versions_on_disk(self.base / name) if self.base is not None else []
        if not vs and not on_disk:
            raise NotFoundError(f"no model named '{name}'; models: {self.names()}")
        policy = self._settings(name).policy
        if version is None:
            loading = sorted(v for v, st in states.items() if st in (START, LOADING))
            if loading:
                raise UnavailableError(f"model '{name}' has no AVAILABLE version yet: version {loading[-1]} is "
                                       f"{states[loading[-1]]}; retry shortly")
            if errors:
                v = max(errors)
                why = f": version {v} failed to load: {errors[v]}"
            else:
                seen = ", ".join(f"{v} {st}" for v, st in sorted(states.items())) or "none"
                why = f" (versions: {seen}; complete on disk: {on_disk})"
            raise NotFoundError(f"model '{name}' has no AVAILABLE version{why}")
        state = states.get(version)
        if state in (START, LOADING):
            raise UnavailableError(f"model '{name}' version {version} is {state}; retry shortly")
        if version not in on_disk:
            raise NotFoundError(f"model '{name}' has no version {version}; versions: {on_disk}")
        why = f"failed to load: {errors[version]}" if version in errors else f"is {state or 'not loaded'}"
        raise NotFoundError(f"model '{name}' version {version} {why}; the version policy "
                            f"'{policy.describe()}' serves {policy.choose(on_disk)}")

    def acquire(self, name: str, version: int | None = None) -> ServedVersion:
        """The AVAILABLE version (highest when ``version`` is None), kept loaded until `release`.
        A manager that does not watch looks at the disk (and may load) first: call it off an IO loop.

        Raises:
            NotFoundError: no such model or version, or the policy does not serve it.
            UnavailableError: it is still loading, or the manager is closed.
        """
        while True:
            sv = self._served(name, version)
            with self._lock:
                if sv.state == AVAILABLE:  # not unloaded between the lookup and here
                    sv.users += 1
                    return sv

    def release(self, sv: ServedVersion) -> None:
        """End a use begun by `acquire`."""
        with self._lock:
            sv.users -= 1
            self._changed.notify_all()

    @contextlib.contextmanager
    def use(self, name: str, version: int | None = None) -> Iterator[ServedVersion]:
        """`acquire` ... `release` around a block."""
        sv = self.acquire(name, version)
        try:
            yield sv
        finally:
            self.release(sv)

    def loaded(self, sv: ServedVersion) -> tuple[LoadedModel, Any]:
        """(model, batcher or None) of a version held by `use`.

        Raises:
            UnavailableError: it was unloaded anyway (an unload gives up waiting for requests after
                30 s), so the request can be retried on the version serving now.
        """
        with self._lock:
            model, batcher = sv.model, sv.batcher
        if model is None:
            raise UnavailableError(f"model '{sv.name}' version {sv.version} was unloaded while this request "
                                   "used it; retry")
        return model, batcher

    def submit(self, sv: ServedVersion, inputs: dict[str, np.ndarray]) -> Future:
        """Run checked ``inputs`` on a version held by `use`: a future of every output (batched when on;
        else run in a pool of 4 threads).

        Raises:
            UnavailableError: the batch queue is full, or the version was unloaded.
        """
        model, batcher = self.loaded(sv)
        if batcher is not None:
            return batcher.submit(inputs)
        if self._direct is None:
            with self._lock:
                if self._direct is None:
                    self._direct = ThreadPoolExecutor(4, thread_name_prefix="kf-predict")
        try:
            return self._direct.submit(model.run, inputs)
        except RuntimeError as e:  # the pool was shut down by close()
            raise UnavailableError(f"model '{sv.name}': the model server is shutting down") from e

    def predict(self, name: str, version: int | None, inputs: dict, output_keys: list | None = None) -> dict:
        """Blocking predict (the RPC method): {output name: array}. Without a batcher it runs in the
        caller's thread."""
        with self.use(name, version) as sv:
            model, batcher = self.loaded(sv)
            arrays = model.check_inputs(inputs)
            keys = model.check_output_keys(output_keys)
            out = model.run(arrays) if batcher is None else batcher.submit(arrays).result()
        return {k: out[k] for k in keys}

    # ------------------------------------------------------------- status
    def names(self) -> list[str]:
        with self._lock:
            tracked = {n for n, vs in self._models.items() if vs}
        return sorted(tracked | {n for n in self._names_on_disk() if versions_on_disk(self.base / n)})  # type: ignore[operator]

    def status(self, name: str, version: int | None = None) -> dict:
        """TensorFlow Serving's GetModelStatus document (newest version first).

        Raises:
            NotFoundError: no such model, or no such version.
        """
        check_model_name(name)
        if not self.watching:
            self.poll(only=name, wait=True)
        on_disk = versions_on_disk(self.base / name) if self.base is not None else []
        with self._lock:
            docs = {v: sv.status() for v, sv in self._models.get(name, {}).items()}
        if not docs and not on_disk:
            raise NotFoundError(f"no model named '{name}'; models: {self.names()}")
        wanted = self._settings(name).policy.choose(on_disk)
        for v in wanted:  # on disk, not seen by the watcher yet
            docs.setdefault(v, ServedVersion(name, v, Path()).status())
        if version is not None:
            if version not in docs:
                if version in on_disk:  # not served by the policy
                    return {"model_version_status": [{"version": str(version), "state": END,
                                                      "status": {"error_code": "OK", "error_message": ""}}]}
                raise NotFoundError(f"model '{name}' has no version {version}; versions: {on_disk}")
            return {"model_version_status": [docs[version]]}
        return {"model_version_status": [docs[v] for v in sorted(docs, reverse=True)]}

    def list(self) -> list[dict]:
        """Every model with its versions (newest first) and their states; ``batching`` counts
        batches, requests and rows run per AVAILABLE version that batches (kernelflow's addition)."""
        out = []
        for n in self.names():
            with contextlib.suppress(NotFoundError):
                doc = {"name": n, **self.status(n)}
                with self._lock:
                    batchers = {str(v): sv.batcher for v, sv in self._models.get(n, {}).items()
                                if sv.batcher is not None}
                if batchers:
                    doc["batching"] = {v: {"batches_run": b.batches_run, "requests_run": b.requests_run,
                                           "rows_run": b.rows_run} for v, b in batchers.items()}
                out.append(doc)
        return out
