"""The one RPC method table: every method the runtime answers, with how it may be called.

An entry says which function answers, whether it gets the caller's peer (to push
notifications), and where the TCP server may run it: on the IO loop itself (``loop``: cheap,
no lock, no array work), on the IO loop when its last call of the same shape was quick and
its graph is idle (``timed``), or in the compute pool (``pool``). The parameters a method
takes are checked by binding them to the function's signature, so a wrong count answers
InvalidArgumentError naming the method and what it takes, while a TypeError raised inside a
method stays an internal error.

``auth`` and ``server.shutdown`` belong to a connection rather than to the runtime: the TCP
server answers them itself; they are listed here (`TRANSPORT_METHODS`) so that this file names
every method of docs/protocol.md.

Contents: Method, MethodTable, TRANSPORT_METHODS, build_method_table.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..errors import InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from .service import RuntimeService

TRANSPORT_METHODS = ("auth", "server.shutdown")
Policy = Literal["loop", "timed", "pool"]


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
    """

    name: str
    fn: Callable[..., Any]
    needs_peer: bool = False
    policy: Policy = "pool"
    timing_key: Callable[[list], tuple | None] | None = None
    graph_lock: Callable[[list], threading.Lock | None] | None = None
    signature: inspect.Signature = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sig = inspect.signature(self.fn)
        if self.needs_peer:
            sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "peer"])
        object.__setattr__(self, "signature", sig)

    def call(self, params: list, peer: Any = None) -> Any:
        """Run the method on ``params`` (a list) for ``peer``.

        Raises:
            InvalidArgumentError: ``params`` is no list, or does not fit the signature.
        """
        if not isinstance(params, (list, tuple)):
            raise InvalidArgumentError(f"{self.name}: params must be an array; got {type(params).__name__}")
        try:
            self.signature.bind(*params)
        except TypeError:
            raise InvalidArgumentError(f"{self.name}: wrong number of params: it takes {self.describe()}; got "
                                       f"{len(params)}") from None
        if self.needs_peer:
            return self.fn(*params, peer=peer)
        return self.fn(*params)

    def describe(self) -> str:
        """The parameters as docs/protocol.md writes them: ``[name, since, nodes=...]``."""
        parts = []
        for p in self.signature.parameters.values():
            parts.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}?")
        return "[" + ", ".join(parts) + "]"


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
        Method("graph.open", g.graph_open, policy="loop"),
        Method("graph.delete", g.graph_delete),
        Method("graph.extend", g.graph_extend),
        Method("graph.get", g.graph_get),
        timed("graph.run", g.graph_run, _run_key),
        timed("variable.read", g.variable_read, _variable_key("variable.read")),
        timed("variable.assign", g.variable_assign, _variable_key("variable.assign")),
        Method("graph.save", g.graph_save),
        Method("graph.checkpoints", g.graph_checkpoints),
        Method("graph.restore", g.graph_restore),
        Method("tensor.summary", su.tensor_summary),
        Method("graph.plan", service.plans.graph_plan),
        Method("dataset.begin", d.begin, needs_peer=True),
        Method("dataset.put", d.put),
        Method("dataset.commit", d.commit),
        Method("dataset.abort", d.abort),
        Method("dataset.info", d.info),
        Method("dataset.list", d.list),
        Method("dataset.delete", d.delete),
        Method("dataset.split", d.split),
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
        Method("model.predict", mo.predict),
        Method("model.status", mo.status),
        Method("world.report", service.world_report),
    ])
