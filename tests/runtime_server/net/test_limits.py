"""Limits that hold before auth and a decoder that cannot stall the IO loop (issue #15 items 2
and 3), against real `kernelflow serve` subprocesses."""

from __future__ import annotations

import socket
import threading
import time

import msgpack
import pytest

from tests.support.server import TOKEN, ServerProcess, raw_exchange

WAIT_S = 60.0  # a deadline for polls, never a speed claim


def _auth(sock: socket.socket) -> None:
    replies, closed = raw_exchange(sock, [0, 0, "auth", [TOKEN]])
    assert replies[0][2] is None and not closed, replies


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(WAIT_S)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("limited"), "--auth-timeout-s", "1", "--max-buffered-input-bytes",
                        str(4 << 20), "--max-message-elements", "100000").wait_listening()
    yield srv
    srv.stop()


def test_big_message_before_auth_refused_and_connection_closed(server):
    with server.raw() as s:
        big = msgpack.packb([0, 1, "info", ["x" * (127 << 10)]])
        replies, closed = raw_exchange(s, big, until_closed=True)
        assert closed
        assert replies[0][1] is None and replies[0][2]["type"] == "ResourceExhaustedError"
        assert "over the limit of 65536 bytes" in replies[0][2]["message"]
    with server.raw() as s:  # after auth the same message is only a wrong call
        _auth(s)
        replies, closed = raw_exchange(s, big)
        assert not closed and replies[0][2]["type"] == "InvalidArgumentError"


def test_connection_without_auth_closed_after_auth_timeout(limited):
    with limited.raw() as s:
        assert _closed_by_server(s)
    with limited.raw() as s:  # an authenticated connection stays open past the timeout
        _auth(s)
        time.sleep(1.5)  # not synchronisation: the idle time being tested
        replies, closed = raw_exchange(s, [0, 1, "graph.list", []])
        assert replies[0][2] is None and not closed


def test_buffered_input_budget_closes_the_connection_that_exceeds_it(limited):
    with limited.raw() as hog, limited.raw() as other:
        _auth(hog)
        _auth(other)
        payload = msgpack.packb([0, 1, "graph.list", [b"x" * (6 << 20)]])
        hog.sendall(payload[: 5 << 20])  # incomplete: the server must hold it
        assert _closed_by_server(hog)
        replies, closed = raw_exchange(other, [0, 2, "graph.list", []])
        assert replies[0][2] is None and not closed


def test_message_with_too_many_values_refused(limited):
    with limited.raw() as s:
        _auth(s)
        replies, closed = raw_exchange(s, msgpack.packb([0, 1, "graph.list", [None] * 200_000]), until_closed=True)
        assert closed and replies[0][2]["type"] == "ResourceExhaustedError"
        assert "more than 100000 values" in replies[0][2]["message"]


def test_other_clients_info_answered_while_a_huge_message_decodes(server):
    """3 million nils take seconds to decode in Python; another client's info must not wait for them.

    Before issue #15 each `info` waited for a whole 256 KiB read of nils to be decoded (~0.4 s
    here), so 100 of them in a row came after the big message's answer; decoded in slices, each
    waits for one slice at most, and all 100 are answered first.
    """
    with server.raw() as big, server.raw() as small:
        _auth(big)
        _auth(small)
        order: list[str] = []

        def read_big() -> None:
            replies, _ = raw_exchange(big, n_replies=1, timeout_s=WAIT_S)
            order.append("big")
            assert replies[0][2]["type"] == "InvalidArgumentError"

        t = threading.Thread(target=read_big)
        t.start()
        big.sendall(msgpack.packb([0, 1, "graph.list", [None] * 3_000_000]))
        for i in range(100):
            replies, _ = raw_exchange(small, [0, 7 + i, "info", []], timeout_s=WAIT_S)
            assert replies[0][2] is None and replies[0][3]["protocol"] == 1
        order.append("100 infos")
        t.join(WAIT_S)
        assert order == ["100 infos", "big"]
