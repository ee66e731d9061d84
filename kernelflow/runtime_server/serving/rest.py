"""TensorFlow Serving's REST API over a `ModelManager`, as a tornado.web Application.

Routes (TF Serving's documented JSON field names):
``GET /v1/models`` (kernelflow's addition: every model and its versions),
``GET /v1/models/{name}[/versions/{v}]`` (model status),
``GET /v1/models/{name}[/versions/{v}]/metadata`` (signature),
``POST /v1/models/{name}[/versions/{v}]:predict`` (row ``instances`` or columnar ``inputs``),
``POST /v1/models/{name}[/versions/{v}]:classify`` (``examples``; see `class_outputs`).
Errors are ``{"error": "..."}`` with TF Serving's status for the error's code (`HTTP_STATUS`):
400 (bad input; also FAILED_PRECONDITION, as TF Serving), 404 (no such model or version), 413
(body too big), 500 (internal) or 503 (version loading or unloaded, batch queue full).
Predicts are batched by the version's Batcher or run in a thread pool; the IO loop only
awaits them. A manager that does not watch looks at the disk (and may load) on each lookup:
those lookups run in a thread pool too.

Contents: parse_predict, format_predict, class_outputs, parse_classify, make_app, listen_rest.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import numpy as np
import tornado.httpserver
import tornado.netutil
import tornado.web

from ... import errors
from ...errors import InvalidArgumentError, KernelflowError, NotFoundError
from ...protocol.model_dir import check_model_name
from .manager import ModelManager

log = logging.getLogger("kernelflow.rest")

DEFAULT_MAX_BODY_BYTES = 64 << 20
_PATH_RE = re.compile(r"^/v1/models/(?P<name>[^/:]*)(?:/versions/(?P<version>[^/:]*))?"
                      r"(?:(?P<metadata>/metadata)|:(?P<verb>[A-Za-z]+))?/?$")
# TensorFlow Serving's HTTP status per error code (model_servers/http_server.cc, ToHTTPStatusCode);
# looked up along the exception's class hierarchy, so ShapeError is InvalidArgumentError's 400.
HTTP_STATUS = {errors.InvalidArgumentError: 400, errors.FailedPreconditionError: 400, errors.NotFoundError: 404,
               errors.AlreadyExistsError: 409, errors.PermissionDeniedError: 403, errors.UnauthenticatedError: 401,
               errors.ResourceExhaustedError: 429, errors.CancelledError: 499, errors.DeadlineExceededError: 504,
               errors.UnavailableError: 503, errors.InternalError: 500}


def http_status(e: KernelflowError) -> int:
    """TF Serving's HTTP status for ``e`` (`HTTP_STATUS`; 500 for a code it does not list)."""
    return next((HTTP_STATUS[c] for c in type(e).__mro__ if c in HTTP_STATUS), 500)


_DT = {"float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int8": "DT_INT8", "int16": "DT_INT16",
       "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8", "uint16": "DT_UINT16", "uint32": "DT_UINT32",
       "uint64": "DT_UINT64", "bool": "DT_BOOL", "complex64": "DT_COMPLEX64", "complex128": "DT_COMPLEX128"}


def _tensor_info(spec: dict) -> dict:
    shape = spec.get("shape")
    dims = [{"size": str(-1 if d is None else d), "name": ""} for d in (shape or [])]
    return {"dtype": _DT.get(spec["dtype"], "DT_INVALID"),
            "tensor_shape": {"dim": dims, "unknown_rank": shape is None}, "name": spec["name"]}


def _to_json(a: np.ndarray) -> Any:
    return a.tolist()


def _decode_b64(v: Any) -> Any:
    """Replace ``{"b64": s}`` leaves by lists of bytes (uint8), decoded strictly."""
    if isinstance(v, dict):
        if set(v) == {"b64"} and isinstance(v["b64"], str):
            try:
                return list(base64.b64decode(v["b64"], validate=True))
            except ValueError as e:
                raise InvalidArgumentError(f"bad base64 value: {e}") from e
        raise InvalidArgumentError(f"a value may be a number, a list or {{\"b64\": ...}}; got a map with keys "
                                   f"{sorted(v)}")
    if isinstance(v, list):
        return [_decode_b64(x) for x in v]
    return v


def _array(value: Any, spec: dict, what: str) -> np.ndarray:
    """A JSON value as an array of the input's dtype; ragged or non-numeric values are errors."""
    value = _decode_b64(value)
    try:
        arr = np.array(value)
    except ValueError as e:  # numpy >= 1.24 refuses ragged nested lists
        raise InvalidArgumentError(f"{what}: ragged or malformed values: {e}") from e
    if arr.dtype == object:
        raise InvalidArgumentError(f"{what}: ragged values (rows of different lengths)")
    dtype = np.dtype(spec["dtype"])
    if arr.size and arr.dtype.kind not in "biuf":
        raise InvalidArgumentError(f"{what}: expected {spec['dtype']} numbers; got {arr.dtype.kind!r} values "
                                   f"such as {arr.flat[0]!r}")
    if arr.size and dtype.kind in "iub" and arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
        raise InvalidArgumentError(f"{what}: expected {spec['dtype']} values; got fractional numbers")
    shape = spec.get("shape")
    if shape is not None and (arr.ndim != len(shape)
                              or any(d is not None and d != a for d, a in zip(shape, arr.shape))):
        shown = "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"
        raise InvalidArgumentError(f"{what}: expected shape {shown}; got {arr.shape}")
    return arr.astype(dtype)


def parse_predict(body: dict, inputs: dict[str, dict]) -> tuple[dict[str, np.ndarray], bool]:
    """A predict request's inputs as arrays; also whether it used the row (``instances``) format.

    Raises:
        InvalidArgumentError: neither or both formats, wrong input names, ragged, wrong dtype/shape.
    """
    if not isinstance(body, dict):
        raise InvalidArgumentError("the request body must be a JSON object with \"instances\" or \"inputs\"")
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows == has_cols:
        raise InvalidArgumentError("give exactly one of \"instances\" (row format) or \"inputs\" (columnar format)")
    names = list(inputs)
    if has_rows:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise InvalidArgumentError("\"instances\" must be a non-empty list")
        named = all(isinstance(r, dict) and "b64" not in r for r in rows)
        if named:
            cols: dict[str, list] = {}
            for i, r in enumerate(rows):
                if set(r) != set(names):
                    raise InvalidArgumentError(f"instance {i} has inputs {sorted(r)}; the model takes {sorted(names)}")
                for k in names:
                    cols.setdefault(k, []).append(r[k])
        elif len(names) == 1:
            cols = {names[0]: rows}
        else:
            raise InvalidArgumentError(f"the model takes several inputs {sorted(names)}: each instance must be an "
                                       "object naming them")
    else:
        cols = body["inputs"]
        if not isinstance(cols, dict) or set(cols) == {"b64"}:  # one input's value, unnamed
            if len(names) != 1:
                raise InvalidArgumentError(f"\"inputs\" must be an object naming the inputs {sorted(names)}")
            cols = {names[0]: cols}
        if set(cols) != set(names):
            raise InvalidArgumentError(f"\"inputs\" names {sorted(cols)}; the model takes {sorted(names)}")
    return {k: _array(v, inputs[k], f"input '{k}'") for k, v in cols.items()}, has_rows


def format_predict(out: dict[str, np.ndarray], rows: bool) -> dict:
    """TF Serving's answer: ``predictions`` (row) or ``outputs`` (columnar); one output is unwrapped."""
    if rows:
        if len(out) == 1:
            return {"predictions": _to_json(next(iter(out.values())))}
        n = min(len(a) for a in out.values())
        cols = {k: _to_json(a) for k, a in out.items()}
        return {"predictions": [{k: cols[k][i] for k in cols} for i in range(n)]}
    if len(out) == 1:
        return {"outputs": _to_json(next(iter(out.values())))}
    return {"outputs": {k: _to_json(a) for k, a in out.items()}}


def class_outputs(outputs: dict[str, dict]) -> tuple[str, str | None] | None:
    """The (scores output, classes output or None) a classify answer is built from, or None.

    A signature has class outputs when it has a float output ``scores`` of shape (None, K)
    (with ``classes``, an integer output of the same shape, as the labels: TensorFlow's
    classification signature), or else a float output ``probabilities`` of shape (None, K)
    (labels "0".."K-1").
    """
    def is_2d(spec: dict | None, kinds: str) -> bool:
        return bool(spec and spec.get("shape") and len(spec["shape"]) == 2 and np.dtype(spec["dtype"]).kind in kinds)

    for key in ("scores", "probabilities"):
        if is_2d(outputs.get(key), "f"):
            labels = outputs.get("classes")
            if key == "scores" and is_2d(labels, "iu") and labels["shape"][1] == outputs[key]["shape"][1]:
                return key, "classes"
            return key, None
    return None


def parse_classify(body: Any, inputs: dict[str, dict]) -> dict[str, np.ndarray]:
    """A classify request (``examples``, optional ``context``) as input arrays.

    Each example maps input names to a value or a (flat or nested) list; a flat list is
    reshaped to the input's per-example shape. ``context`` features are added to every example.
    """
    if not isinstance(body, dict) or not isinstance(body.get("examples"), list) or not body["examples"]:
        raise InvalidArgumentError("a classify body must be a JSON object with a non-empty list \"examples\"")
    context = body.get("context", {})
    if not isinstance(context, dict):
        raise InvalidArgumentError("\"context\" must be an object of feature name -> value")
    cols: dict[str, list] = {k: [] for k in inputs}
    for i, ex in enumerate(body["examples"]):
        if not isinstance(ex, dict):
            raise InvalidArgumentError(f"example {i} must be an object of feature name -> value")
        both = sorted(set(ex) & set(context))
        if both:
            raise InvalidArgumentError(f"example {i} repeats context features {both}")
        ex = {**context, **ex}
        if set(ex) != set(inputs):
            raise InvalidArgumentError(f"example {i} has features {sorted(ex)}; the model takes {sorted(inputs)}")
        for k, spec in inputs.items():
            v = _decode_b64(ex[k])
            row = (spec.get("shape") or [None])[1:]
            if isinstance(v, list) and row and None not in row and not any(isinstance(x, list) for x in v):
                if len(v) != int(np.prod(row)):
                    raise InvalidArgumentError(f"example {i}, feature '{k}': expected {int(np.prod(row))} values "
                                               f"(shape {tuple(row)}); got {len(v)}")
                v = np.reshape(np.array(v), row).tolist()
            cols[k].append(v)
    return {k: _array(v, inputs[k], f"feature '{k}'") for k, v in cols.items()}


def format_classify(out: dict[str, np.ndarray], scores: str, classes: str | None) -> dict:
    """TF Serving's classify answer: ``{"result": [[[label, score], ...] per example]}``."""
    s = out[scores]
    labels = out[classes].astype(str).tolist() if classes else [[str(j) for j in range(s.shape[1])]] * len(s)
    return {"result": [[[lab, float(sc)] for lab, sc in zip(ls, row)] for ls, row in zip(labels, s.tolist())]}


class _ModelsHandler(tornado.web.RequestHandler):
    def initialize(self, manager: ModelManager, pool: ThreadPoolExecutor, max_body_bytes: int) -> None:
        self.manager, self.pool, self.max_body_bytes = manager, pool, max_body_bytes

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")

    def _send(self, doc: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(doc, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(json.dumps({"error": self._reason}))

    def _route(self) -> tuple[str | None, int | None, bool, str | None]:
        m = _PATH_RE.match(self.request.path)  # match first, then unquote: an escaped '/' stays in the name
        if self.request.path.rstrip("/") == "/v1/models":
            return None, None, False, None
        if m is None:
            raise NotFoundError(f"no such route {self.request.path!r}; see /v1/models/<name>[/versions/<v>]"
                                "[/metadata|:predict]")
        name = check_model_name(unquote(m.group("name")))
        v = m.group("version") and unquote(m.group("version"))
        if v is not None and not v.isdigit():
            raise InvalidArgumentError(f"version must be a positive integer; got {v!r}")
        return name, (int(v) if v is not None else None), bool(m.group("metadata")), m.group("verb")

    async def _guard(self, coro: Any) -> None:
        try:
            await coro
        except KernelflowError as e:  # 503: loading, or the batch queue is full: retry later
            status = http_status(e)
            if status >= 500 and status != 503:
                log.error("REST %s %s failed", self.request.method, self.request.path, exc_info=True)
            self._send({"error": getattr(e, "message", None) or str(e)}, status)
        except Exception as e:  # the server goes on; the client hears what failed
            log.error("REST %s %s failed", self.request.method, self.request.path, exc_info=True)
            self._send({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    async def get(self, *_: Any) -> None:
        await self._guard(self._get())

    async def post(self, *_: Any) -> None:
        await self._guard(self._post())

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` where it may touch the disk (a manager that does not watch loads on request)."""
        if self.manager.watching:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _acquire(self, name: str, version: int | None) -> Any:
        """The served version, held until ``manager.release``; looked up (and polled) in the pool."""
        return await self._blocking(self.manager.acquire, name, version)

    async def _get(self) -> None:
        name, version, metadata, verb = self._route()
        if name is None:
            self._send({"models": await self._blocking(self.manager.list)})
            return
        if verb is not None:
            raise NotFoundError(f"use POST for :{verb}")
        if not metadata:
            self._send(await self._blocking(self.manager.status, name, version))
            return
        sv = await self._acquire(name, version)
        try:
            m = self.manager.loaded(sv)[0]
            sig = m.signature
            self._send({"model_spec": {"name": name, "signature_name": "", "version": str(m.version)},
                        "metadata": {"signature_def": {"signature_def": {sig["signature_name"]: {
                            "inputs": {k: _tensor_info(s) for k, s in m.inputs.items()},
                            "outputs": {k: _tensor_info(s) for k, s in m.outputs.items()},
                            "method_name": sig["method_name"]}}}}})
        finally:
            self.manager.release(sv)

    async def _post(self) -> None:
        name, version, metadata, verb = self._route()
        if name is None or metadata or verb not in ("predict", "classify"):
            raise NotFoundError(f"no POST route {self.request.path!r}; use /v1/models/<name>[/versions/<v>]"
                                ":predict or :classify")
        if len(self.request.body) > self.max_body_bytes:
            self._send({"error": f"request body of {len(self.request.body)} bytes is over the limit of "
                                 f"{self.max_body_bytes}"}, 413)
            return
        try:
            body = json.loads(self.request.body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgumentError(f"malformed JSON: {e}") from e
        sv = await self._acquire(name, version)
        try:
            m = self.manager.loaded(sv)[0]
            sig_name = body.get("signature_name") if isinstance(body, dict) else None
            if sig_name not in (None, "", m.signature["signature_name"]):
                raise InvalidArgumentError(f"model '{name}' has no signature {sig_name!r}; it has "
                                           f"'{m.signature['signature_name']}'")
            if verb == "classify":
                cls = class_outputs(m.outputs)
                if cls is None:
                    raise InvalidArgumentError(
                        f"model '{name}' has no class outputs: :classify needs a float output 'scores' or "
                        f"'probabilities' of shape (None, K); its outputs are "
                        f"{ {k: s.get('shape') for k, s in m.outputs.items()} }")
                if isinstance(body, dict) and "instances" in body and "examples" not in body:
                    inputs = parse_predict(body, m.inputs)[0]  # predict's row format, as a convenience
                else:
                    inputs = parse_classify(body, m.inputs)
                inputs = m.check_inputs(inputs)
                out = await asyncio.wrap_future(self.manager.submit(sv, inputs))
                self._send(format_classify(out, *cls))
                return
            inputs, rows = parse_predict(body, m.inputs)
            out = await asyncio.wrap_future(self.manager.submit(sv, m.check_inputs(inputs)))
        finally:
            self.manager.release(sv)
        self._send(format_predict(out, rows))


def make_app(manager: ModelManager, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
             pool: ThreadPoolExecutor | None = None) -> tornado.web.Application:
    """The REST Application serving ``manager``'s models.

    Args:
        manager: the models to serve.
        max_body_bytes: larger predict bodies get 413.
        pool: threads for lookups that may load a model (a manager that does not watch; default 4).
    """
    pool = pool or ThreadPoolExecutor(4, thread_name_prefix="kf-rest")
    kw = {"manager": manager, "pool": pool, "max_body_bytes": max_body_bytes}
    return tornado.web.Application([(r"/v1/models.*", _ModelsHandler, kw)])


def listen_rest(manager: ModelManager, port: int, host: str = "127.0.0.1",
                max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> tuple[tornado.httpserver.HTTPServer, int]:
    """Start serving REST on the running IO loop; returns (server, bound port).

    Bodies up to twice the limit are read and answered 413 with a JSON error; larger ones are
    refused by tornado while reading (400, empty body) so they are never held in memory.
    """
    server = tornado.httpserver.HTTPServer(make_app(manager, max_body_bytes), max_body_size=2 * max_body_bytes)
    sockets = tornado.netutil.bind_sockets(port, host)
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]
