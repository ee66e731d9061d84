"""msgpack-RPC clients of other ecosystems and hostile names (issue #15 items 6, 7): pynvim's
session drives the server; bin method names are accepted, client notifications ignored; names
with newlines cannot forge a log line."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest

import kernelflow as kf
from tests.support.server import TOKEN, raw_exchange

WAIT_S = 60.0


def test_pynvim_tcp_session_can_auth_and_call_info_and_graph_list(server):
    pytest.importorskip("pynvim")
    from pynvim.msgpack_rpc import tcp_session

    session = tcp_session("127.0.0.1", server.port)
    try:
        assert session.request("auth", TOKEN)["protocol"] == 1
        info = session.request("info")
        assert info["protocol"] == 1 and "graph.list" in info["methods"]
        session.request("graph.open", "from-pynvim")
        names = [g["name"] for g in session.request("graph.list")]
        assert "from-pynvim" in names
    finally:
        session.close()


def test_bin_method_names_accepted_and_client_notifications_ignored(server):
    with server.raw() as s:
        # pynvim's first message on attach: a notification with a bin method name.
        raw = msgpack.packb([2, b"nvim_set_client_info", ["python3-client", {}, "remote", {}, {}]])
        raw += msgpack.packb([2, "some.unknown.notification", []])
        raw += msgpack.packb([0, 1, b"auth", [TOKEN]]) + msgpack.packb([0, 2, b"graph.list", []])
        replies, closed = raw_exchange(s, raw, n_replies=2)
        assert not closed
        assert [r[1] for r in replies] == [1, 2] and all(r[2] is None for r in replies), replies
        replies, closed = raw_exchange(s, msgpack.packb([0, 3, b"\xff\xfe", []]))
        assert replies[0][1] == 3 and replies[0][2]["type"] == "ProtocolError" and not closed


def test_graph_name_with_newline_cannot_forge_a_log_line(server):
    forged = "x\n[2026-01-01 00:00:00,000 kernelflow.server WARNING] FORGED admin logged in"
    with server.connect() as rt:
        g = rt.graph(forged)
        v = g.variable(np.float32(1.0), name="v")
        g.run(kf.print_tensor(v, message="m\r\nFORGED too "))  # logged as "[graph] message..."
    deadline = time.monotonic() + WAIT_S
    while not any("FORGED" in line for line in server.stderr):
        assert time.monotonic() < deadline, "the name never reached the log"
        time.sleep(0.05)
    lines = "".join(server.stderr).splitlines()
    assert not [line for line in lines if "FORGED" in line and not line.startswith("[20")], lines
    assert not [line for line in lines if line.startswith("[2026-01-01")]
    assert any("x\\n[2026-01-01" in line and "m\\r\\nFORGED too" in line for line in lines), lines
