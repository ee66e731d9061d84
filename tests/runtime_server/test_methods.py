"""The one RPC method table: it names every method of docs/protocol.md, and it checks arity by signature."""

from __future__ import annotations

import logging
import os
import pathlib
import re

import pytest

import kernelflow as kf
from kernelflow.protocol.rpc import error_to_map
from kernelflow.runtime_server.methods import TRANSPORT_METHODS, Method, MethodTable
from kernelflow.runtime_server.service import RuntimeService

PROTOCOL_MD = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_method_table_names_every_documented_method_once():
    documented = set(re.findall(r"^\| `([a-z]+(?:\.[a-z_]+)?)` \| `\[", PROTOCOL_MD.read_text(), re.M))
    svc = RuntimeService()
    try:
        names = svc.methods.names()
        assert len(names) == len(set(names))
        assert set(names) == documented, (sorted(set(names) - documented), sorted(documented - set(names)))
        assert set(TRANSPORT_METHODS) <= set(names)
        assert svc.info()["methods"] == names
    finally:
        svc.shutdown()


def test_method_wrong_param_count_names_method_and_params():
    svc = RuntimeService()
    try:
        with pytest.raises(kf.errors.InvalidArgumentError, match=r"graph.open: wrong number of params: it takes "
                                                                 r"\[name, seed\?\]; got 3"):
            svc.call("graph.open", ["g", 1, 2])
        with pytest.raises(kf.errors.InvalidArgumentError, match=r"graph.open: params must be an array; got dict"):
            svc.call("graph.open", {"name": "g"})
        with pytest.raises(kf.errors.NotFoundError, match=r"unknown method 'graph.opn'"):
            svc.call("graph.opn", [])
        assert svc.graphs.graphs == {}  # nothing was created by the refused calls
    finally:
        svc.shutdown()


def test_method_type_error_inside_method_is_internal_with_id_and_no_traceback(caplog):
    def buggy(a):
        return None + a  # a bug in the method itself, not in the caller's params

    table = MethodTable([Method("test.buggy", buggy)])
    with caplog.at_level(logging.ERROR, logger="kernelflow.server"):
        with pytest.raises(kf.errors.InternalError, match=r"test.buggy: internal error \(id [0-9a-f]{12}, "
                                                          r"TypeError\)") as info:
            table.call("test.buggy", [1])
    err = info.value
    assert isinstance(err.__cause__, TypeError)
    wire = error_to_map(err)
    assert wire["error_id"] == err.error_id and "traceback" not in wire and "NoneType" not in wire["message"]
    logged = [r for r in caplog.records if err.error_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info[0] is TypeError  # the log keeps the traceback, under the id
    with pytest.raises(kf.errors.InvalidArgumentError, match="test.buggy: wrong number of params"):
        table.call("test.buggy", [1, 2])


def test_method_table_refuses_a_name_twice():
    with pytest.raises(ValueError, match="listed twice"):
        MethodTable([Method("a.b", lambda: 1), Method("a.b", lambda: 2)])
    with pytest.raises(ValueError, match="listed twice"):
        MethodTable([Method("auth", lambda: 1)])


def test_method_peer_argument_not_counted_as_param():
    seen = []

    def sub(x, *, peer):
        seen.append((x, peer))
        return x

    m = Method("t.sub", sub, needs_peer=True)
    assert m.describe() == "[x]"
    assert m.call([3], peer="P") == 3
    assert seen == [(3, "P")]


def _state_files(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of every file in the state dir, its trash left out: the runtime empties the
    trash on a thread of its own, so a walk into it races the deletes (os.walk skips what vanished)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "trash"]
        for f in filenames:
            if f == "lock":
                continue
            p = pathlib.Path(dirpath, f)
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_no_call_the_io_loop_may_run_inline_writes_the_state_dir(tmp_path):
    """Issue #15 item 10: ``graph.open`` ran on the IO loop, its disk syncs (16 MiB for a 16 MiB
    name) stalling every client. A call the TCP server may answer on the loop (policy ``loop``, or
    ``timed`` with a timing key) must not write the state dir; the calls of a session that do
    write it are found by looking at the dir around each call."""
    import numpy as np

    state = tmp_path / "state"
    svc = RuntimeService(state_dir=str(state))
    node = {"name": "w", "op": "variable", "inputs": [], "attrs": {"initial": np.ones(3, "float32")}}
    calls = [("info", []), ("graph.list", []), ("graph.open", ["fresh"]), ("graph.open", ["fresh"]),
             ("graph.extend", ["fresh", 0, [node]]), ("graph.get", ["fresh", 0]),
             ("variable.assign", ["fresh", "w", np.full(3, 2.0, "float32")]), ("variable.read", ["fresh", "w"]),
             ("graph.save", ["fresh"]), ("graph.checkpoints", ["fresh"]), ("run.list", []),
             ("run.cancel", ["fresh"]), ("dataset.begin", ["d", {"x": {"dtype": "<f4", "shape": [4]}}]),
             ("dataset.put", [None, "x", 0, np.arange(4, dtype="float32")]), ("dataset.commit", [None]),
             ("dataset.list", []), ("dataset.delete", ["d"]), ("graph.delete", ["fresh"])]
    writers, inline = set(), set()
    upload = None
    try:
        for name, params in calls:
            params = [upload if p is None else p for p in params]
            m = svc.methods.lookup(name)
            if m.policy == "loop" or (m.policy == "timed" and m.timing_key(params) is not None):
                inline.add(name)
            before = _state_files(state)
            out = svc.call(name, params)
            if name == "dataset.begin":
                upload = out["upload"]
            if _state_files(state) != before:
                writers.add(name)
        assert {"graph.open", "graph.extend", "graph.save", "dataset.commit", "graph.delete"} <= writers
        assert {"info", "graph.list", "run.list", "run.cancel", "variable.read"} <= inline
        assert not writers & inline, sorted(writers & inline)
    finally:
        svc.shutdown()
