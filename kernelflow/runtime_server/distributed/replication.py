"""Replicated commands: rank 0 executes a mutating RPC method, then sends the followers a command
that makes their services do the same, in the same order.

Replication is at the level of the service's methods. Rank 0 wraps the mutating methods of its
method table (`REPLICATED`); each wrapper runs the method under one order lock and, if it
succeeded, sends a command derived from (method, params, result): mostly the same call, but
``dataset.commit`` becomes ``dataset.install`` with the arrays (an upload's id means nothing
on a follower) and ``graph.restore`` becomes ``graph.set_variables`` (followers hold no state
dir). With ``--shard-datasets``, ``dataset.commit`` and ``dataset.split`` send each follower
its own shard of the new dataset(s) instead (`PerRank`, shards.py). A ``graph.run`` is
replicated only when its plan writes a variable or draws random numbers; pure reads run on
rank 0 alone. Failed calls are not sent (they fail the same way).

The stream is point-to-point on its own communicator: one message per command per follower,
msgpack with arrays as ext values (never pickle), sent with ``Isend`` and waited for under
the watchdog, so a dead follower is marked lost instead of hanging rank 0. Followers answer
only ``world.report`` (variable checksums, divergences), on a reply tag.

Contents: REPLICATED, PerRank, Leader, install_replication, encode_command, decode_command.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import DeadlineExceededError, FailedPreconditionError, UnavailableError
from ...graph.ops.control_flow import case_op, loop_grad_op, scan_op, while_op
from ...graph.ops.state import print_op, read_variable_op, variable_op
from ...protocol.codec import decode, encode
from ..engine.devices import to_host
from .comm import wait_all
from .shards import shard_commands
from .world import World

log = logging.getLogger("kernelflow.distributed")

TAG_COMMAND = 11
TAG_REPLY = 12
HEARTBEAT_S = 2.0
PROBE_S = 3.0   # how long a live follower may take to answer a probe after a failed collective
_PURE_STATEFUL = frozenset({variable_op, read_variable_op, print_op})
# Ops that run sub-graphs: what their bodies do is not on the op, so a run holding one is replicated.
_SUBGRAPH_OPS = frozenset({case_op, while_op, scan_op, loop_grad_op})


def encode_command(cmd: list) -> bytes:
    """One command as msgpack bytes (arrays as ext type 1)."""
    return b"".join(bytes(f) for f in encode(cmd))


def decode_command(data: bytes | bytearray | memoryview) -> list:
    cmd = decode(data)
    if not isinstance(cmd, list) or not cmd or not isinstance(cmd[0], str):
        raise ValueError(f"a command is [name, ...]; got {type(cmd).__name__}")
    return cmd


def plan_mutates(plan: Any) -> bool:
    """True when running ``plan`` changes state: a variable written or an RNG advanced."""
    return any(n.op.mutates or n.op in _SUBGRAPH_OPS or (n.op.stateful and n.op not in _PURE_STATEFUL)
               for n in plan.step_nodes)


@dataclasses.dataclass
class PerRank:
    """Commands that differ per follower: ``build(rank)`` gives the commands rank ``rank`` gets."""

    name: str
    build: Callable[[int], list[list]]


class Leader:
    """Rank 0's end of the command stream.

    Args:
        world: the world (rank 0).
        timeout_s: how long one command may take to reach a follower before it is marked lost.
    """

    def __init__(self, world: World, timeout_s: float):
        from mpi4py import MPI

        self.MPI = MPI
        self.world = world
        self.comm = world.control
        self.timeout_s = timeout_s
        self.order_lock = threading.RLock()     # execute-then-send of mutating methods, in one order
        self._send_lock = threading.Lock()
        self._report_lock = threading.Lock()
        self._seq = itertools.count(1)
        self._qid = itertools.count(1)
        self.sent = 0
        self.last_send = time.monotonic()
        self.active_graphs: dict[str, str] = {}  # graph -> id of the data-parallel job running on it
        self._closed = threading.Event()
        self._hb = threading.Thread(target=self._heartbeat, name="kf-world-heartbeat", daemon=True)
        self._hb.start()

    def followers(self) -> list[int]:
        return [r for r in range(1, self.world.size) if r not in self.world.lost]

    def send(self, cmd: list) -> None:
        """Send ``cmd`` to every live follower (in the order of calls); followers that do not take
        it within the timeout are marked lost."""
        data = encode_command(cmd)
        with self._send_lock:
            self._send_locked(data, cmd[0])

    def send_each(self, cmds: PerRank) -> None:
        """Send each live follower its own commands (`PerRank`), in the order of calls; as `send`."""
        with self._send_lock:
            per_rank = {r: [encode_command(c) for c in cmds.build(r)] for r in self.followers()}
            for k in range(max((len(v) for v in per_rank.values()), default=0)):
                self._send_locked({r: v[k] for r, v in per_rank.items() if k < len(v)}, cmds.name)

    def _send_locked(self, data: bytes | dict[int, bytes], name: str) -> None:
        pending = []
        for r in self.followers():
            msg = data.get(r) if isinstance(data, dict) else data
            if msg is None:
                continue
            try:
                pending.append((r, self.comm.Isend(msg, dest=r, tag=TAG_COMMAND)))
            except self.MPI.Exception as e:
                self._lose(r, f"sending {name}: {e}")
        deadline = time.monotonic() + self.timeout_s
        while pending:
            still = []
            for r, req in pending:
                try:
                    if not req.Test():
                        still.append((r, req))
                except self.MPI.Exception as e:
                    self._lose(r, f"sending {name}: {e}")
            pending = still
            if pending and time.monotonic() > deadline:
                for r, _ in pending:
                    self._lose(r, f"command {name} not taken within {self.timeout_s:g} s")
                break
            if pending:
                time.sleep(0.0005)
        self.sent += 1
        self.last_send = time.monotonic()

    def _lose(self, r: int, why: str) -> None:
        if r not in self.world.lost:
            log.error("world: rank %d lost (%s); data-parallel jobs are refused until the world restarts", r, why)
            self.world.lost.add(r)

    def _heartbeat(self) -> None:
        while not self._closed.wait(HEARTBEAT_S / 2):
            if time.monotonic() - self.last_send >= HEARTBEAT_S:
                try:
                    self.send(["world.heartbeat"])
                except Exception:
                    log.error("world: heartbeat failed", exc_info=True)

    def report(self, timeout_s: float | None = None) -> list[dict]:
        """Every rank's ``world.report`` (rank 0's own is added by the caller); a rank silent for
        ``timeout_s`` (default: the command timeout) is marked lost and its entry is
        ``{"rank": r, "error": ...}``."""
        with self._report_lock:  # one report at a time: replies are matched to it by order of arrival
            return self._report_locked(timeout_s)

    def _report_locked(self, timeout_s: float | None) -> list[dict]:
        qid = next(self._qid)
        ranks = self.followers()
        self.send(["world.report", qid])
        out: dict[int, dict] = {}
        limit = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        status = self.MPI.Status()
        while len(out) < len(ranks):
            for r in ranks:
                if r in out:
                    continue
                msg = self.comm.Improbe(source=r, tag=TAG_REPLY, status=status)
                if msg is None:
                    continue
                buf = bytearray(status.Get_count(self.MPI.BYTE))
                msg.Recv(buf)
                rep = decode(buf)
                if isinstance(rep, dict) and rep.get("qid") == qid:
                    out[r] = rep
            if len(out) < len(ranks):
                if time.monotonic() > deadline:
                    for r in ranks:
                        if r not in out:
                            self._lose(r, f"no answer to world.report within {limit:g} s")
                            out[r] = {"rank": r, "error": "no answer (lost)"}
                    break
                time.sleep(0.001)
        for r in range(1, self.world.size):
            out.setdefault(r, {"rank": r, "error": "lost"})
        return [out[r] for r in sorted(out)]

    def find_lost(self, timeout_s: float = PROBE_S) -> None:
        """After a failed collective: ask every follower for a report; the silent ones are marked lost
        (on a thread of its own, so the job ends at once)."""
        def probe() -> None:
            try:
                self.report(timeout_s)
            except Exception:
                log.error("world: probing the ranks failed", exc_info=True)

        threading.Thread(target=probe, name="kf-world-probe", daemon=True).start()

    def close(self) -> None:
        """Tell the followers to shut down; stop the heartbeat."""
        self._closed.set()
        try:
            self.send(["world.shutdown"])
        except Exception:
            log.error("world: cannot tell the followers to stop", exc_info=True)


# ----------------------------------------------------------------- what rank 0 replicates
def _same(method: str) -> Callable[[Any, list, Any], list | None]:
    return lambda service, params, result: [method, *params]


def _restore(service: Any, params: list, result: Any) -> list:
    s = service.graphs.session(params[0])
    return ["graph.set_variables", s.name, s.snapshot_variables()]


def _commit(service: Any, params: list, result: Any) -> list | PerRank:
    ds = service.datasets.get(result["name"])
    if service.world.shard_datasets:
        return PerRank("dataset.install", lambda r: shard_commands(ds, r, service.world.size))
    return ["dataset.install", ds.name, {c: np.ascontiguousarray(to_host(a)) for c, a in ds.columns.items()},
            {"fingerprint": ds.meta.get("fingerprint"), "created": ds.meta.get("created")}]


def _split(service: Any, params: list, result: Any) -> list | PerRank:
    if not service.world.shard_datasets:
        return ["dataset.split", *params]
    parts = [service.datasets.get(info["name"]) for info in result]
    return PerRank("dataset.install", lambda r: [c for ds in parts for c in shard_commands(ds, r, service.world.size)])


def _run(service: Any, params: list, result: Any) -> list | None:
    name, since, nodes, fetches, feed_names, feed_values = (list(params) + [None] * 6)[:6]
    s = service.graphs.session(name)
    with s.lock:
        mutates = plan_mutates(s.plan(fetches, feed_names))
    if mutates:
        return ["graph.run", name, since, nodes, fetches, feed_names, feed_values]
    if nodes:
        return ["graph.extend", name, since, nodes]
    return None


# method -> (command builder, graph whose data-parallel job forbids it: the position of the graph param or None)
REPLICATED: dict[str, tuple[Callable[[Any, list, Any], list | PerRank | None], int | None]] = {
    "graph.open": (_same("graph.open"), None),
    "graph.extend": (_same("graph.extend"), None),
    "graph.delete": (_same("graph.delete"), 0),
    "graph.run": (_run, None),
    "variable.assign": (_same("variable.assign"), 0),
    "graph.restore": (_restore, 0),
    "dataset.commit": (_commit, None),
    "dataset.split": (_split, None),
    "dataset.delete": (_same("dataset.delete"), None),
}


def install_replication(service: Any, leader: Leader) -> None:
    """Give rank 0's service a method table whose mutating methods also reach the followers.

    Wrapped methods run in the compute pool (never on the IO loop): they may wait for MPI.
    """
    from ..methods import MethodTable

    entries = []
    for m in service.methods.entries():
        rule = REPLICATED.get(m.name)
        if rule is not None:
            m = dataclasses.replace(m, fn=_wrap(m.name, m.fn, rule[0], rule[1], service, leader), policy="pool")
        entries.append(m)
    service.methods = MethodTable(entries)


def _wrap(method: str, fn: Callable[..., Any], build: Callable[[Any, list, Any], list | PerRank | None],
          guard_pos: int | None, service: Any, leader: Leader) -> Callable[..., Any]:
    def replicated(*params: Any, **kw: Any) -> Any:
        with leader.order_lock:
            if method == "graph.run" and params:
                _refuse_during_job(leader, params[0], method, service, params)
            elif guard_pos is not None and len(params) > guard_pos:
                _refuse_during_job(leader, params[guard_pos], method, service, None)
            result = fn(*params, **kw)
            try:
                cmd = build(service, list(params), result)
                if isinstance(cmd, PerRank):
                    leader.send_each(cmd)
                elif cmd is not None:
                    leader.send(cmd)
            except (DeadlineExceededError, UnavailableError):
                log.error("world: %s could not be replicated", method, exc_info=True)
            return result

    return functools.wraps(fn)(replicated)  # keeps the signature the method table checks params against


def _refuse_during_job(leader: Leader, graph: Any, method: str, service: Any, run_params: tuple | None) -> None:
    job = leader.active_graphs.get(graph) if isinstance(graph, str) else None
    if job is None:
        return
    if run_params is not None:  # a graph.run that only reads may go between two steps
        try:
            s = service.graphs.session(graph)
            with s.lock:
                if not plan_mutates(s.plan(run_params[3], run_params[4])):
                    return
        except Exception:
            return  # let the method itself report a bad run
    raise FailedPreconditionError(f"{method}: graph '{graph}' is being trained by data-parallel job {job} on every "
                                  "rank; a change now would reach the ranks at different steps. Pause or stop the "
                                  "job first (reads are fine)")


def ensure_delivery(world: World, what: str) -> None:
    """Raise when the world is broken (a job needs every rank)."""
    why = world.broken()
    if why:
        raise UnavailableError(f"{what}: the world is broken ({why}); restart it (mpiexec ... kernelflow serve "
                               "--distributed) to run data-parallel jobs again")


__all__ = ["REPLICATED", "PerRank", "Leader", "install_replication", "encode_command", "decode_command", "plan_mutates",
           "ensure_delivery", "wait_all"]
