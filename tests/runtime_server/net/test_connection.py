"""The server's connection layer against a real server subprocess: pipelined requests are
answered in order whichever path they take (on the IO loop or in the pool), a request may
arrive one byte at a time, a big answer the client is slow to read holds back the next
ones without losing them, and a client leaving with a big answer unsent harms no one.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from kernelflow.protocol.codec import MessageReader, encode
from tests.support.server import TOKEN, ServerProcess, raw_exchange

BIG_FLOATS = 4 << 20  # 16 MiB of float32: far more than a loopback socket buffer holds


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("conn")).wait_listening()
    with srv.connect() as rt:
        g = rt.graph("conn")
        s = g.variable(np.float32(1.5), name="s")
        g.variable(np.arange(BIG_FLOATS, dtype="float32"), name="big")
        doubled = s * 2.0
        g.run(doubled)
        srv.graph_version, srv.doubled = g.version, doubled.name
    yield srv
    srv.stop()


def _bytes(msg) -> bytes:
    return b"".join(bytes(f) for f in encode(msg))


def _authed(server: ServerProcess) -> socket.socket:
    s = server.raw()
    replies, _ = raw_exchange(s, [0, 0, "auth", [TOKEN]])
    assert replies[0][2] is None
    return s


def test_pipelined_requests_in_one_send_answered_in_order(server):
    # info, graph.list and the learned-quick runs are answered on the IO loop; the unknown
    # method and graph.extend go through the thread pool.
    run = ["conn", server.graph_version, [], [server.doubled], [], []]
    msgs = [[0, 1, "info", []], [0, 2, "graph.run", run], [0, 3, "variable.read", ["conn", "s"]],
            [0, 4, "graph.run", run], [0, 5, "no.such.method", []],
            [0, 6, "graph.extend", ["conn", server.graph_version, []]], [0, 7, "graph.list", []]]
    with _authed(server) as s:
        replies, closed = raw_exchange(s, b"".join(_bytes(m) for m in msgs), n_replies=len(msgs))
    assert not closed
    assert [r[1] for r in replies] == [1, 2, 3, 4, 5, 6, 7]
    assert replies[0][3]["protocol"] == 1
    assert replies[1][3] == [np.float32(3.0)] and replies[3][3] == [np.float32(3.0)]
    assert replies[2][3] == np.float32(1.5)
    assert replies[4][2]["type"] == "NotFoundError"
    assert replies[5][2] is None and replies[5][3] == server.graph_version
    assert "conn" in [d["name"] for d in replies[6][3]]


def test_request_arriving_one_byte_at_a_time_is_answered(server):
    with _authed(server) as s:
        for b in _bytes([0, 9, "variable.read", ["conn", "s"]]):
            s.sendall(bytes([b]))
            time.sleep(0.001)
        replies, _ = raw_exchange(s, n_replies=1)
    assert replies == [[1, 9, None, np.float32(1.5)]]


def test_big_answer_read_slowly_then_next_answers_follow_in_order(server):
    with _authed(server) as s:
        s.sendall(_bytes([0, 1, "variable.read", ["conn", "big"]]) + _bytes([0, 2, "info", []])
                  + _bytes([0, 3, "variable.read", ["conn", "s"]]))
        time.sleep(0.3)  # the server fills the socket and must wait for us
        reader, replies = MessageReader(), []
        s.settimeout(30)
        while len(replies) < 3:
            target = reader.want_into()
            if target is not None:
                n = s.recv_into(target, min(len(target), 1 << 16))  # small reads: a slow client
                assert n, "server closed the connection"
                reader.filled(n)
            else:
                data = s.recv(1 << 16)
                assert data, "server closed the connection"
                reader.feed(data)
            replies += list(reader.messages())
    assert [r[1] for r in replies] == [1, 2, 3]
    np.testing.assert_array_equal(replies[0][3], np.arange(BIG_FLOATS, dtype="float32"))
    assert replies[1][3]["protocol"] == 1 and replies[2][3] == np.float32(1.5)


def test_client_leaving_with_big_answer_unsent_harms_no_one(server):
    for _ in range(3):
        with _authed(server) as s:
            s.sendall(_bytes([0, 1, "variable.read", ["conn", "big"]]))
            time.sleep(0.05)
        # closed without reading: the server's send fails and only this connection goes
    with server.connect() as rt:
        g = rt.graph("conn")
        assert g["s"].value() == np.float32(1.5)
        assert g["big"].value()[-1] == BIG_FLOATS - 1
    assert server.proc.poll() is None


def test_many_small_calls_on_one_connection_stay_in_step(server):
    with server.connect() as rt:
        g = rt.graph("conn")
        s = g["s"]
        doubled = g[server.doubled]
        for i in range(300):
            assert g.run(doubled) == np.float32(3.0)
            if i % 50 == 0:
                assert rt.info()["protocol"] == 1
        assert s.value() == np.float32(1.5)


def test_request_and_answer_with_several_big_arrays_round_trip(server):
    # Several big arrays make several frames each way (gather writes, partial sends).
    rng = np.random.default_rng(1)
    a = rng.standard_normal(300_000).astype("float32")
    b = rng.integers(0, 1 << 40, size=(700, 300)).astype("int64")
    c = np.arange(5, dtype="int16")
    with server.connect() as rt:
        g = rt.graph("frames")
        xa = g.placeholder((None,), "float32", name="xa")
        xb = g.placeholder((None, 300), "int64", name="xb")
        xc = g.placeholder((None,), "int16", name="xc")
        outs = g.run({"a": xa * 1.0, "b": xb, "c": xc, "a2": xa}, feed={xa: a, xb: b, xc: c})
    np.testing.assert_array_equal(outs["a"], a)
    np.testing.assert_array_equal(outs["a2"], a)
    np.testing.assert_array_equal(outs["b"], b)
    np.testing.assert_array_equal(outs["c"], c)
    assert outs["b"].dtype == np.int64 and outs["c"].dtype == np.int16
