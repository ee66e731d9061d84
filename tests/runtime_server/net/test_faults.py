"""Bad input against a real server subprocess: each fault gets a typed error or a dropped
connection, and afterwards another client still works and every graph and variable is as
it was.
"""

from __future__ import annotations

import socket
import threading

import msgpack
import numpy as np
import pytest

import kernelflow as kf
from kernelflow.protocol.codec import encode
from tests.support.server import TOKEN, ServerProcess, raw_exchange

MAX_MESSAGE_BYTES = 4 << 20
W0 = np.arange(12, dtype="float32").reshape(3, 4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("faults"), "--max-message-bytes",
                        str(MAX_MESSAGE_BYTES)).wait_listening()
    with srv.connect() as rt:
        g = rt.graph("keep")
        x = g.placeholder((None, 3), "float32", name="x")
        w = g.variable(W0, name="w")
        g.run(x @ w, feed={x: np.ones((2, 3), "float32")})  # sends the nodes
    yield srv
    srv.stop()


def _snapshot(srv: ServerProcess) -> tuple:
    with srv.connect() as rt:
        listing = [d for d in rt.call("graph.list", []) if d["name"] == "keep"]
        g = rt.graph("keep")
        return listing, g.version, g["w"].value().tobytes()


@pytest.fixture
def unchanged(server):
    """Asserts after the test that a fresh client works and the server state is the same."""
    before = _snapshot(server)
    yield
    assert server.proc.poll() is None, "the server died"
    after = _snapshot(server)
    assert after == before
    with server.connect() as rt:
        g = rt.graph("keep")
        out = g.run(g["matmul"], feed={g["x"]: np.ones((1, 3), "float32")})
        np.testing.assert_array_equal(out, np.ones((1, 3), "float32") @ W0)


def _auth(s: socket.socket) -> None:
    replies, _ = raw_exchange(s, [0, 0, "auth", [TOKEN]])
    assert replies == [[1, 0, None, {"protocol": 1, "max_message_bytes": MAX_MESSAGE_BYTES}]]


def test_garbage_bytes_get_protocol_error_and_drop(server, unchanged):
    with server.raw() as s:
        replies, closed = raw_exchange(s, b"\xc1\xc1\xff\x00garbage", until_closed=True)
    assert closed
    assert len(replies) == 1 and replies[0][:2] == [1, None]
    assert replies[0][2]["type"] == "ProtocolError" and "malformed msgpack" in replies[0][2]["message"]


def test_garbage_after_auth_drops_only_that_connection(server, unchanged):
    with server.raw() as s, server.connect() as other:
        _auth(s)
        _, closed = raw_exchange(s, b"\xc1" * 10, until_closed=True)
        assert closed
        assert other.graphs()  # the other connection is untouched


def test_truncated_frame_then_disconnect(server, unchanged):
    with server.raw() as s:
        _auth(s)
        frame = b"".join(bytes(f) for f in encode([0, 1, "variable.assign", ["keep", "w", np.zeros((3, 4), "f4")]]))
        s.sendall(frame[: len(frame) // 2])


def test_truncated_big_frame_then_disconnect(server, unchanged):
    with server.raw() as s:
        _auth(s)
        frame = b"".join(bytes(f) for f in encode([0, 1, "variable.assign", ["keep", "w", np.zeros(1 << 18, "f4")]]))
        s.sendall(frame[: len(frame) - 1000])  # stops inside the array payload being received directly


@pytest.mark.parametrize("msg", [{"not": "an array"}, "text", 42, [], [9, 1, "info", []], [0, "id", "info", []],
                                 [0, 1, "info"]], ids=["map", "str", "int", "empty", "type9", "str_msgid", "short"])
def test_wrong_shape_message_gets_protocol_error_and_drop(server, unchanged, msg):
    with server.raw() as s:
        _auth(s)
        replies, closed = raw_exchange(s, msg, until_closed=True)
    assert closed
    assert [r[2]["type"] for r in replies] == ["ProtocolError"]


def test_bad_method_type_with_msgid_answered_and_connection_kept(server, unchanged):
    with server.raw() as s:
        _auth(s)
        replies, closed = raw_exchange(s, [0, 5, 17, []], [0, 6, "graph.run", {"a": 1}], [0, 7, "graph.list", []])
    assert not closed
    assert [(r[1], r[2] and r[2]["type"]) for r in replies] == [(5, "ProtocolError"), (6, "InvalidArgumentError"),
                                                                 (7, None)]


def test_unknown_method_not_found(server, unchanged):
    with server.connect() as rt:
        with pytest.raises(kf.errors.NotFoundError, match="unknown method 'graph.frobnicate'"):
            rt.call("graph.frobnicate", [])
        assert "keep" in rt.graphs()


def test_wrong_param_count_invalid_argument(server, unchanged):
    with server.connect() as rt:
        with pytest.raises(kf.errors.InvalidArgumentError, match="graph.get: wrong number of params"):
            rt.call("graph.get", ["keep", 0, 1, 2])


def test_call_before_auth_and_wrong_token(server, unchanged):
    with server.raw() as s:
        replies, closed = raw_exchange(s, [0, 1, "variable.assign", ["keep", "w", np.zeros((3, 4), "f4")]],
                                       [0, 2, "auth", ["wrong"]], until_closed=True)
    assert closed
    assert [r[2]["type"] for r in replies] == ["UnauthenticatedError", "UnauthenticatedError"]


def test_auth_with_non_string_token_refused(server, unchanged):
    with server.raw() as s:
        replies, closed = raw_exchange(s, [0, 1, "auth", [{"token": TOKEN}]], until_closed=True)
    assert closed and replies[0][2]["type"] == "UnauthenticatedError"


def test_oversized_message_resource_exhausted_and_drop(server, unchanged):
    with server.raw() as s:
        _auth(s)
        big = np.zeros(MAX_MESSAGE_BYTES // 4 + 1000, "float32")
        head = b"".join(bytes(f) for f in encode([0, 1, "variable.assign", ["keep", "w", big]]))[:200_000]
        replies, closed = raw_exchange(s, head, until_closed=True)
    assert closed
    assert replies[0][2]["type"] == "ResourceExhaustedError"
    assert f"over the limit of {MAX_MESSAGE_BYTES} bytes" in replies[0][2]["message"]


def test_oversized_string_message_resource_exhausted(server, unchanged):
    with server.raw() as s:
        _auth(s)
        msg = msgpack.packb([0, 1, "graph.open", ["x" * (MAX_MESSAGE_BYTES + 10)]])
        try:
            s.sendall(msg)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may hang up before everything is sent
        replies, closed = raw_exchange(s, until_closed=True)
    assert closed
    assert replies and replies[0][2]["type"] == "ResourceExhaustedError"


def test_client_refuses_request_over_server_limit(server, unchanged):
    with server.connect() as rt:
        g = rt.graph("keep")
        with pytest.raises(kf.errors.ResourceExhaustedError, match="over the server's limit"):
            g.run(g["x"] * 1.0, feed={g["x"]: np.zeros((MAX_MESSAGE_BYTES // 12 + 1, 3), "float32")})
        assert rt.graphs()


@pytest.mark.parametrize("pad", [0, 200_000], ids=["small", "incremental"])
def test_deeply_nested_message_protocol_error(server, unchanged, pad):
    with server.raw() as s:
        _auth(s)
        nested = b"\x91" * 5000 + b"\x90"
        msg = b"\x94\x00\x01\xaagraph.list\x92" + msgpack.packb("p" * pad) + nested
        replies, closed = raw_exchange(s, msg, until_closed=True)
    assert closed
    assert replies[0][2]["type"] == "ProtocolError" and "nest" in replies[0][2]["message"]


def test_unknown_ext_type_protocol_error(server, unchanged):
    with server.raw() as s:
        _auth(s)
        replies, closed = raw_exchange(s, msgpack.packb([0, 1, "graph.list", [msgpack.ExtType(99, b"x")]]),
                                       until_closed=True)
    assert closed and "unknown msgpack ext type 99" in replies[0][2]["message"]


def test_object_dtype_array_header_protocol_error(server, unchanged):
    with server.raw() as s:
        _auth(s)
        ext = msgpack.ExtType(1, msgpack.packb(["|O", [1]]) + b"\0" * 8)
        replies, closed = raw_exchange(s, msgpack.packb([0, 1, "variable.assign", ["keep", "w", ext]]),
                                       until_closed=True)
    assert closed and "unsupported dtype '|O'" in replies[0][2]["message"]


def test_wrong_feed_dtype_and_shape(server, unchanged):
    with server.connect() as rt:
        g = rt.graph("keep")
        x = g["x"]
        with pytest.raises(kf.errors.InvalidArgumentError, match=r"feed for 'x': expected dtype float32; got float64"):
            g.run(g["matmul"], feed={x: np.ones((2, 3), "float64")})
        with pytest.raises(kf.errors.InvalidArgumentError, match=r"feed for 'x': expected shape") as info:
            g.run(g["matmul"], feed={x: np.ones((2, 5), "float32")})
        assert info.value.node == "x"


def test_wrong_variable_assign_shape(server, unchanged):
    with server.connect() as rt:
        with pytest.raises(kf.errors.InvalidArgumentError, match=r"variable.assign: 'w' is float32\(3, 4\)"):
            rt.call("variable.assign", ["keep", "w", np.zeros((4, 3), "float32")])


@pytest.mark.parametrize("node,err,match", [
    ({"name": "bad", "op": "expp", "inputs": ["w"], "attrs": {}}, kf.errors.KernelflowError, "expp"),
    ({"name": "bad", "op": "add", "inputs": ["w", "nowhere"], "attrs": {}}, kf.errors.InvalidArgumentError,
     "dangling input or cycle"),
    ({"name": "bad", "op": "add", "inputs": ["w", "bad"], "attrs": {}}, kf.errors.InvalidArgumentError,
     "dangling input or cycle"),
    ({"name": "bad", "op": "matmul", "inputs": ["w", "w"], "attrs": {}}, kf.errors.ShapeError,
     "matmul: inner dimensions"),
    ("not a map", kf.errors.InvalidArgumentError, "must be a map"),
], ids=["unknown_op", "dangling", "cycle", "shape", "not_a_map"])
def test_graph_extend_bad_node_rejects_batch(server, unchanged, node, err, match):
    with server.connect() as rt:
        version = rt.graph("keep").version
        good = {"name": "fine", "op": "add", "inputs": ["w", "w"], "attrs": {}}
        with pytest.raises(err, match=match):
            rt.call("graph.extend", ["keep", version, [good, node]])
        assert "fine" not in rt.graph("keep")


def test_kernel_error_at_run_time_typed(server, unchanged):
    with server.connect() as rt:
        g = rt.graph("kernel-error")
        x = g.placeholder((None,), "float32", name="x")
        y = kf.reshape(x, (3,))
        with pytest.raises(kf.errors.KernelflowError) as info:
            g.run(y, feed={x: np.ones(4, "float32")})
        assert "reshape" in str(info.value)


def test_client_disconnect_mid_run(server, unchanged):
    with server.connect() as rt:
        g = rt.graph("mid-run")
        w = g.variable(np.ones((800, 800), "float32") / 800, name="w")
        y = w
        for _ in range(40):
            y = y @ w
        total = kf.sum(y)
        g.sync()
        version = g.version
    with server.raw() as s:
        _auth(s)
        s.sendall(b"".join(bytes(f) for f in encode([0, 1, "graph.run", ["mid-run", version, [], [total.name], [],
                                                                             []]])))
    # The run is still going on the server; others are served meanwhile and after.
    with server.connect() as rt:
        assert "mid-run" in rt.graphs()
        g = rt.graph("mid-run")
        assert g.run(g[total.name]) == pytest.approx(800.0, rel=1e-4)


def test_many_clients_at_once(server, unchanged):
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with server.connect() as rt:
                g = rt.graph(f"par-{i}")
                v = g.variable(np.full(4, float(i), "float64"), name=f"v{i}")
                for _ in range(20):
                    np.testing.assert_array_equal(g.run(v * 2.0), np.full(4, 2.0 * i))
        except BaseException as e:  # collected and re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
