"""The one RPC method table: every method the runtime answers, with how it may be called.

An entry says which function answers, whether it gets the caller's peer (to push
notifications), and where the TCP server may run it: on the IO loop itself (``loop``: cheap,
no lock, no array work), on the IO loop when its last call of the same shape was quick and
its graph is idle (``timed``), or in the compute pool (``pool``). The parameters a method
takes are checked against the function's signature and its declared types (the annotations,
or an entry's ``types`` where a list's elements matter): a wrong count or a wrong type answers
InvalidArgumentError naming the method, the parameter, what it takes and what came. An
unexpected exception inside a method is a bug of the runtime: it answers InternalError with an
error id and no traceback, and the traceback is logged with that id.

``auth`` and ``server.shutdown`` belong to a connection rather than to the runtime: the TCP
server answers them itself; they are listed here (`TRANSPORT_METHODS`) so that this file names
every method of docs/protocol.md.

Names (graph, variable, dataset, job, model names, checkpoint tags, upload ids: the params
`NAME_PARAMS` lists) are strings of at most `MAX_NAME_CHARS` characters: a longer one answers
InvalidArgumentError naming the param, the limit and the length that came, before the method
runs (nothing reaches the state dir).

Contents: Method, MethodTable, TRANSPORT_METHODS, NAME_PARAMS, Name, ParamType, build_method_table.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import threading
import types as _types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import InternalError, InvalidArgumentError, KernelflowError, NotFoundError, ResourceExhaustedError
from ..protocol.rpc import MAX_NAME_CHARS

if TYPE_CHECKING:
    from .engine.runs import RunRegistry
    from .service import RuntimeService

TRANSPORT_METHODS = ("auth", "server.shutdown")
Policy = Literal["loop", "timed", "pool"]

log = logging.getLogger("kernelflow.server")

NAME_PARAMS = frozenset({"name", "graph", "var", "tag", "job_id", "upload_id", "column"})
"""Params that name something: a ``str`` annotation on one of them means `Name`."""


class Name(str):
    """The annotation of a name param: a string of at most `MAX_NAME_CHARS` characters."""

    __slots__ = ()


class ParamType:
    """A declared parameter type, compiled from an annotation: ``str``, ``int``, ``float``,
    ``bool``, ``list``, ``list[str]``, ``dict``, ``np.ndarray``, ``Any`` and ``X | None``.

    ``int`` takes no bool, ``float`` takes ints too; ``list[X]`` checks every element; `Name`
    is a string of at most `MAX_NAME_CHARS` characters (``max_chars``; its text says ``string``).
    """

    __slots__ = ("check", "text", "max_chars")

    def __init__(self, annotation: Any):
        self.check, self.text = _compile(annotation)
        self.max_chars = MAX_NAME_CHARS if _mentions_name(annotation) else None

    def __repr__(self) -> str:
        return f"ParamType({self.text})"

    def too_long(self, v: Any) -> int | None:
        """The length of a name in ``v`` (a string, or a list's element) over ``max_chars``, else None."""
        if self.max_chars is None:
            return None
        for x in (v if type(v) is list else (v,)):
            if type(x) is str and len(x) > self.max_chars:
                return len(x)
        return None


def _mentions_name(a: Any) -> bool:
    return a is Name or any(_mentions_name(x) for x in typing.get_args(a))


def _as_name(a: Any) -> Any:
    """``str`` -> `Name` in an annotation of a name param (``str | None`` too)."""
    if a is str:
        return Name
    if typing.get_origin(a) in (typing.Union, _types.UnionType) and str in typing.get_args(a):
        return Name | None if set(typing.get_args(a)) == {str, type(None)} else a
    return a


def _compile(a: Any) -> tuple[Callable[[Any], bool] | None, str]:
    """(check or None for anything, the type as docs write it)."""
    if a is Any or a is inspect.Parameter.empty or a is object:
        return None, "any"
    origin = typing.get_origin(a)
    if origin in (typing.Union, _types.UnionType):
        parts = [_compile(x) for x in typing.get_args(a) if x is not type(None)]
        nullable = type(None) in typing.get_args(a)
        checks = [c for c, _ in parts]
        text = " | ".join(t for _, t in parts) + (" | nil" if nullable else "")
        if any(c is None for c in checks):
            return None, text
        return (lambda v: (nullable and v is None) or any(c(v) for c in checks)), text  # type: ignore[misc]
    if origin is list:
        (elem,) = typing.get_args(a) or (Any,)
        ec, et = _compile(elem)
        if ec is None:
            return (lambda v: type(v) is list), "array"
        return (lambda v: type(v) is list and all(map(ec, v))), f"array of {et}"
    if origin is dict or a is dict:
        return (lambda v: type(v) is dict), "map"
    if a is list:
        return (lambda v: type(v) is list), "array"
    if a is Name:
        return (lambda v: type(v) is str and len(v) <= MAX_NAME_CHARS), "string"
    if a is str:
        return (lambda v: type(v) is str), "string"
    if a is bool:
        return (lambda v: type(v) is bool), "bool"
    if a is int:
        return (lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))), "int"
    if a is float:
        return (lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                ), "float"
    if a is np.ndarray:
        return (lambda v: type(v) is np.ndarray), "ndarray"
    raise TypeError(f"method table: no wire type for annotation {a!r}")


def describe_value(v: Any) -> str:
    """What came, for an error message: the wire type and a short repr."""
    t = type(v)
    kind = {str: "string", bytes: "bin", list: "array", dict: "map", bool: "bool", int: "int", float: "float",
            type(None): "nil"}.get(t)
    if kind is None:
        kind = f"ndarray {v.dtype}{list(v.shape)}" if t is np.ndarray else t.__name__
        return kind
    if t in (list, dict):
        return f"{kind} of {len(v)}"
    r = repr(v)
    return f"{kind} {r if len(r) <= 40 else r[:37] + '...'}"


@dataclass(frozen=True)
class Method:
    """One RPC method.

    Attributes:
        name: the wire name (``noun.verb``).
        fn: the function; called with the request's params as positional arguments (and
            ``peer=`` when ``needs_peer``).
        needs_peer: pass the caller's connection (``peer.notify(method, params)``, ``peer.closed``).
        policy: where the TCP server may run it: "loop", "timed" or "pool" (see the module doc).
        timing_key: for "timed": what identifies calls of the same shape (None: not timeable).
        graph_lock: for "timed": the lock the call would wait for (None: run it in the pool).
        types: declared types by parameter name, overriding the annotations (e.g. ``list[str]``
            where the annotation says ``list``).
        runs: track each call as a run in this registry (cancellable; its first param names
            the graph).
    """

    name: str
    fn: Callable[..., Any]
    needs_peer: bool = False
    policy: Policy = "pool"
    timing_key: Callable[[list], tuple | None] | None = None
    graph_lock: Callable[[list], threading.Lock | None] | None = None
    types: dict[str, Any] | None = None
    runs: RunRegistry | None = None
    signature: inspect.Signature = field(init=False, repr=False, compare=False)
    param_types: tuple[tuple[str, ParamType], ...] = field(init=False, repr=False, compare=False)
    arity: tuple[int, float] = field(init=False, repr=False, compare=False)  # (fewest, most) params

    def __post_init__(self) -> None:
        sig = inspect.signature(self.fn)
        if self.needs_peer:
            sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "peer"])
        object.__setattr__(self, "signature", sig)
        try:
            hints = typing.get_type_hints(self.fn)
        except Exception:  # unresolvable annotations: the explicit types (if any) only
            hints = {}
        hints.update(self.types or {})
        unknown = set(self.types or ()) - set(sig.parameters)
        if unknown:
            raise ValueError(f"method table: {self.name}: types for unknown params {sorted(unknown)}")
        for p in sig.parameters.values():
            if p.name in NAME_PARAMS and p.name not in (self.types or {}):
                hints[p.name] = _as_name(hints.get(p.name, Any))
        params = list(sig.parameters.values())
        if any(p.kind is p.KEYWORD_ONLY and p.default is p.empty for p in params):
            raise ValueError(f"method table: {self.name}: a required keyword-only param cannot come over the wire")
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        most = float("inf") if any(p.kind is p.VAR_POSITIONAL for p in params) else len(positional)
        object.__setattr__(self, "arity", (sum(p.default is p.empty for p in positional), most))
        object.__setattr__(self, "param_types", tuple(
            (p.name, ParamType(hints.get(p.name, Any))) for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)))

    def call(self, params: list, peer: Any = None) -> Any:
        """Run the method on ``params`` (a list) for ``peer``.

        Raises:
            InvalidArgumentError: ``params`` is no list, or does not fit the signature.
        """
        if not isinstance(params, (list, tuple)):
            raise InvalidArgumentError(f"{self.name}: params must be an array; got {type(params).__name__}")
        fewest, most = self.arity  # what Signature.bind would check, at a tenth of its cost
        if not fewest <= len(params) <= most:
            raise InvalidArgumentError(f"{self.name}: wrong number of params: it takes {self.describe()}; got "
                                       f"{len(params)}")
        self.check_types(params)
        try:
            if self.runs is not None:
                ctl, prev = self.runs.begin(self.name, params[0] if params and type(params[0]) is str else None, peer)
                try:
                    return self.fn(*params, peer=peer) if self.needs_peer else self.fn(*params)
                finally:
                    self.runs.end(ctl, prev)
            if self.needs_peer:
                return self.fn(*params, peer=peer)
            return self.fn(*params)
        except KernelflowError:
            raise
        except MemoryError as e:
            raise ResourceExhaustedError(f"{self.name}: out of memory: {e}") from e
        except RecursionError as e:
            raise InvalidArgumentError(f"{self.name}: a value nests too deeply: {e}") from e
        except Exception as e:
            raise internal_error(self.name, e) from e

    def check_types(self, params: list | tuple) -> None:
        """InvalidArgumentError naming the first param whose value is not of its declared type."""
        for (pname, ptype), v in zip(self.param_types, params):
            if ptype.check is not None and not ptype.check(v):
                n = ptype.too_long(v)
                if n is not None:
                    raise InvalidArgumentError(f"{self.name}: param '{pname}' is a name of at most {ptype.max_chars} "
                                               f"characters; got one of {n} characters")
                raise InvalidArgumentError(f"{self.name}: param '{pname}' must be {ptype.text}; got "
                                           f"{describe_value(v)}")

    def describe(self) -> str:
        """The parameters as docs/protocol.md writes them: ``[name, since, nodes=...]``."""
        parts = []
        for p in self.signature.parameters.values():
            parts.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}?")
        return "[" + ", ".join(parts) + "]"


def internal_error(where: str, e: BaseException) -> InternalError:
    """An InternalError for an unexpected exception: the client sees an error id and no
    traceback; the log has the traceback under that id."""
    error_id = secrets.token_hex(6)
    log.error("%s: internal error %s: %s: %s", where, error_id, type(e).__name__, e, exc_info=e)
    err = InternalError(f"{where}: internal error (id {error_id}, {type(e).__name__}); the server's log has "
                        f"the details under this id; please report it")
    err.error_id = error_id  # type: ignore[attr-defined]
    return err


class MethodTable:
    """Name -> `Method`, with the dispatch every transport uses."""

    def __init__(self, methods: list[Method]):
        self._methods: dict[str, Method] = {}
        for m in methods:
            if m.name in self._methods or m.name in TRANSPORT_METHODS:
                raise ValueError(f"method table: {m.name!r} is listed twice")
            self._methods[m.name] = m

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def __iter__(self) -> Iterator[str]:
        return iter(self._methods)

    def __len__(self) -> int:
        return len(self._methods)

    def entries(self) -> list[Method]:
        """Every entry, in table order."""
        return list(self._methods.values())

    def get(self, name: Any) -> Method | None:
        return self._methods.get(name) if isinstance(name, str) else None

    def names(self) -> list[str]:
        """Every method a client may call, the transport's own included, sorted."""
        return sorted([*self._methods, *TRANSPORT_METHODS])

    def lookup(self, name: Any) -> Method:
        """The method ``name``, or NotFoundError listing the known ones."""
        m = self.get(name)
        if m is None:
            raise NotFoundError(f"unknown method {name!r}; known: {sorted(self._methods)}")
        return m

    def call(self, name: Any, params: list, peer: Any = None) -> Any:
        """Dispatch one request."""
        return self.lookup(name).call(params, peer)


def _run_key(params: list) -> tuple | None:
    """graph.run [name, since, nodes, fetches, feed_names, feed_values]: same graph, fetches, feeds."""
    if len(params) != 6 or type(params[0]) is not str or params[2]:  # piggy-backed nodes: a new plan
        return None
    fetches, feeds = params[3], params[4]
    if type(fetches) is not list or type(feeds) is not list:
        return None
    for n in fetches:
        if type(n) is not str:
            return None
    for n in feeds:
        if type(n) is not str:
            return None
    return ("graph.run", params[0], tuple(fetches), tuple(feeds))


def _variable_key(method: str) -> Callable[[list], tuple | None]:
    def key(params: list) -> tuple | None:
        if len(params) >= 2 and type(params[0]) is str and type(params[1]) is str:
            return (method, params[0], params[1])
        return None
    return key


def build_method_table(service: RuntimeService) -> MethodTable:
    """Every RPC method of the runtime, in the order docs/protocol.md lists them."""
    g, d, j, mo, su = service.graphs, service.datasets, service.jobs, service.model_methods, service.summaries

    def graph_lock(params: list) -> threading.Lock | None:
        s = g.graphs.get(params[0]) if params and type(params[0]) is str else None
        return s.lock if s is not None else None

    def timed(name: str, fn: Callable[..., Any], key: Callable[[list], tuple | None]) -> Method:
        return Method(name, fn, policy="timed", timing_key=key, graph_lock=graph_lock)

    return MethodTable([
        Method("info", service.info, policy="loop"),
        Method("graph.list", g.graph_list, policy="loop"),
        Method("graph.open", g.graph_open),  # syncs the state dir: off the IO loop (issue #15)
        Method("graph.delete", g.graph_delete),
        Method("graph.extend", g.graph_extend, types={"nodes": list[dict]}),
        Method("graph.get", g.graph_get),
        Method("graph.run", g.graph_run, policy="timed", timing_key=_run_key, graph_lock=graph_lock,
               types={"nodes": list[dict], "fetches": list[str], "feed_names": list[str]}, runs=service.runs),
        timed("variable.read", g.variable_read, _variable_key("variable.read")),
        timed("variable.assign", g.variable_assign, _variable_key("variable.assign")),
        Method("graph.save", g.graph_save),
        Method("graph.checkpoints", g.graph_checkpoints),
        Method("graph.restore", g.graph_restore),
        Method("tensor.summary", su.tensor_summary, types={"nodes": list[dict], "feed_names": list[str]},
               runs=service.runs),
        Method("run.list", service.run_list, policy="loop"),
        Method("run.cancel", service.run_cancel, policy="loop"),
        Method("graph.plan", service.plans.graph_plan),
        Method("dataset.begin", d.begin, needs_peer=True),
        Method("dataset.put", d.put),
        Method("dataset.commit", d.commit),
        Method("dataset.abort", d.abort),
        Method("dataset.info", d.info),
        Method("dataset.list", d.list),
        Method("dataset.delete", d.delete),
        Method("dataset.split", d.split, types={"names": list[Name] | None}),
        Method("dataset.read", d.read),
        Method("job.start", j.start),
        Method("job.list", j.list),
        Method("job.status", j.status),
        Method("job.records", j.records),
        Method("job.pause", j.pause),
        Method("job.resume", j.resume),
        Method("job.stop", j.stop),
        Method("job.delete", j.delete),
        Method("job.subscribe", j.subscribe, needs_peer=True),
        Method("job.unsubscribe", j.unsubscribe, needs_peer=True),
        Method("model.export", mo.export),
        Method("model.list", mo.list),
        Method("model.predict", mo.predict, types={"output_keys": list[str] | None}),
        Method("model.status", mo.status),
        Method("world.report", service.world_report),
    ])
