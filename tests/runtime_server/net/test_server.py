"""The runtime server against real `python -m kernelflow serve` subprocesses: auth, the
runtime file, TLS, reconnects, notifications, and one training body run both in-process
and over TCP.

Contents: ServerProcess (also used by test_faults.py), the tests.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest

import kernelflow as kf
from kernelflow.client.tcp import TcpTransport
from kernelflow.protocol.codec import MessageReader
from tests.support.certs import self_signed_cert
from tests.support.server import ROOT, START_TIMEOUT_S, TOKEN, ServerProcess, free_port, raw_exchange  # noqa: F401


def _train_mlp(rt: kf.Runtime, name: str) -> list[float]:
    g = rt.graph(name)
    x = g.placeholder((None, 4), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    w1 = g.variable(kf.init.glorot_uniform((4, 16), seed=0), name="dense1/w")
    b1 = g.variable(np.zeros(16, "float32"), name="dense1/b")
    w2 = g.variable(kf.init.glorot_uniform((16, 3), seed=1), name="dense2/w")
    loss = kf.mean(kf.softmax_cross_entropy(kf.relu(x @ w1 + b1) @ w2, y))
    params = [w1, b1, w2]
    steps = [v.assign_sub(0.5 * gr) for v, gr in zip(params, kf.gradients(loss, params))]
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((128, 4)).astype("float32")
    yb = (xb[:, 0] > 0).astype("int64") + (xb[:, 1] > 1).astype("int64")
    step = g.make_callable([steps, loss], feed_list=[x, y])
    return [float(step(xb, yb)[1]) for _ in range(30)]


@pytest.mark.parametrize("where", ["inproc", "server"])
def test_training_body_same_result_inproc_and_server_then_reattach(where, request):
    if where == "inproc":
        rt = kf.connect("inproc")
        second = lambda: rt  # an in-process runtime lives in its connection
    else:
        srv = request.getfixturevalue("server")
        rt = srv.connect()
        second = srv.connect
    losses = _train_mlp(rt, f"mlp-{where}")
    assert losses[-1] < 0.5 * losses[0]
    w_trained = rt.graph(f"mlp-{where}")["dense1/w"].value()
    rt2 = second()
    if rt2 is not rt:
        rt.close()
    g2 = rt2.graph(f"mlp-{where}")
    assert sorted(v.name for v in g2.variables()) == ["dense1/b", "dense1/w", "dense2/w"]
    np.testing.assert_array_equal(g2["dense1/w"].value(), w_trained)
    assert g2["dense1/w"].value().dtype == np.float32
    # The re-attached graph keeps training from where the first connection left it.
    x, y = g2["x"], g2["y"]
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((128, 4)).astype("float32")
    yb = (xb[:, 0] > 0).astype("int64") + (xb[:, 1] > 1).astype("int64")
    loss = g2.run(g2["mean"], feed={x: xb, y: yb})
    assert float(loss) <= losses[-1] + 1e-6
    rt2.close()


def test_training_loss_trajectory_matches_inproc_exactly(server):
    local = _train_mlp(kf.connect("inproc"), "same")
    with server.connect() as rt:
        remote = _train_mlp(rt, "same-remote")
    np.testing.assert_array_equal(np.float32(local), np.float32(remote))


# ----------------------------------------------------------------- values over the wire
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "int32", "int64", "bool", "uint8"])
def test_variable_read_assign_round_trip_dtypes(remote, dtype):
    g = remote.graph(f"vars-{dtype}")
    init = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    v = g.variable(init, name="v")
    np.testing.assert_array_equal(v.value(), init)
    new = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    v.set(new)
    got = v.value()
    assert got.dtype == np.dtype(dtype) and got.shape == (3, 4)
    np.testing.assert_array_equal(got, new)


def test_big_feed_and_fetch_round_trip_64mib(remote):
    g = remote.graph("big")
    x = g.placeholder((None,), "float32", name="x")
    y = x * 2.0
    a = np.random.default_rng(0).standard_normal(16 << 20).astype("float32")
    out = g.run(y, feed={x: a})
    assert out.shape == a.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, a * 2.0)


def test_fetch_structure_and_scalars_like_inproc(remote):
    g = remote.graph("structure")
    a = g.variable(np.float32(2.0), name="a")
    out = g.run({"a": a, "pair": (a * 2.0, [a + 1.0])})
    assert out["a"] == 2.0 and out["pair"][0] == 4.0 and out["pair"][1][0] == 3.0
    assert isinstance(out["pair"], tuple) and out["a"].dtype == np.float32


def test_info_lists_methods_and_protocol(remote):
    info = remote.info()
    assert info["protocol"] == 1
    for m in ["auth", "info", "graph.list", "graph.open", "graph.delete", "graph.extend", "graph.get", "graph.run",
              "variable.read", "variable.assign", "server.shutdown"]:
        assert m in info["methods"]
    assert info["max_message_bytes"] == 4 << 30


def test_info_answered_many_times_during_one_long_run(server):
    with server.connect() as rt:
        g = rt.graph("slow")
        w = g.variable(np.random.default_rng(0).standard_normal((1000, 1000)).astype("float32") / 40, name="w")
        y = w
        for _ in range(40):
            y = y @ w
        slow = kf.sum(y)
        g.sync()
        done = threading.Event()
        t0 = time.monotonic()
        worker = threading.Thread(target=lambda: (g.run(slow), done.set()), daemon=True)
        worker.start()
        lat = []
        with server.connect() as other:
            while not done.is_set() and time.monotonic() - t0 < 60:
                t = time.perf_counter()
                other.info()
                lat.append(time.perf_counter() - t)
        worker.join(timeout=60)
        assert done.is_set()
        # Answered while the run was in flight (ordering, not speed: bench/rpc.py times it).
        assert len(lat) >= 3, f"the run finished too fast to see ({time.monotonic() - t0:.3f} s)"


# ----------------------------------------------------------------- auth and the runtime file
def test_call_before_auth_is_unauthenticated(server):
    with server.raw() as s:
        replies, closed = raw_exchange(s, [0, 1, "graph.list", []], [0, 2, "info", []])
    assert [r[2]["type"] for r in replies] == ["UnauthenticatedError", "UnauthenticatedError"]
    assert replies[0][:2] == [1, 1] and replies[1][:2] == [1, 2]
    assert "auth" in replies[0][2]["message"] and not closed


def test_wrong_token_is_refused_and_logged(server):
    with pytest.raises(kf.errors.UnauthenticatedError, match="wrong token"):
        server.connect(token="nope")
    deadline = time.monotonic() + 10
    while not any("wrong token" in line for line in server.stderr) and time.monotonic() < deadline:
        time.sleep(0.05)  # the log line is written by another process; poll it with a deadline
    assert any("wrong token" in line for line in server.stderr)


def test_token_from_url_query_works(server):
    with kf.connect(f"{server.url}/?token={TOKEN}", timeout=30) as rt:
        assert rt.info()["protocol"] == 1


def test_generated_token_printed_and_runtime_file_0600(tmp_path):
    srv = ServerProcess(tmp_path, token=None).wait_listening()
    try:
        line = next(s for s in srv.stdout if "kf.connect(" in s)
        url = re.search(r'kf\.connect\("([^"]+)"\)', line).group(1)
        token = re.search(r"token=([\w\-]+)", url).group(1)
        assert len(token) >= 32
        path = srv.runtime_dir / f"kernelflow-{srv.proc.pid}.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        info = json.loads(path.read_text())
        assert info["port"] == srv.port and info["pid"] == srv.proc.pid and info["token"] == token
        assert info["url"] == srv.url
        with kf.connect(url, timeout=30) as rt:
            assert rt.graphs() == []
            rt.call("server.shutdown", [])
        assert srv.proc.wait(timeout=30) == 0
        assert not path.exists()
    finally:
        srv.stop()


def test_non_loopback_host_without_tls_refused(tmp_path):
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "kernelflow", "serve", "--host", "0.0.0.0", "--port", "0"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "without TLS" in p.stderr and "--allow-insecure" in p.stderr


def test_tls_server_withself_signed_cert(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    srv = ServerProcess(tmp_path, "--certfile", str(cert), "--keyfile", str(key)).wait_listening()
    try:
        assert srv.url.startswith("kfs://")
        ctx = ssl.create_default_context(cafile=str(cert))
        with srv.connect(ssl_context=ctx) as rt:
            g = rt.graph("tls")
            a = np.arange(1 << 18, dtype="float64")  # 2 MiB: the direct-receive path under TLS
            v = g.variable(a, name="v")
            np.testing.assert_array_equal(g.run(v * 1.0), a)
        with pytest.raises(kf.errors.UnavailableError, match="TLS handshake"):
            srv.connect()  # the system trust store does not know the self-signed cert
    finally:
        srv.stop()


# ----------------------------------------------------------------- reconnects
def test_server_restart_unavailable_then_reconnects(tmp_path):
    port = free_port()
    srv = ServerProcess(tmp_path, port=port).wait_listening()
    rt = srv.connect()
    try:
        assert rt.graphs() == []
        srv.stop()
        with pytest.raises(kf.errors.UnavailableError):
            rt.graphs()
        srv = ServerProcess(tmp_path, port=port).wait_listening()
        assert rt.graph("again").version == 0  # the client reconnected and re-authenticated by itself
        assert rt.graphs() == ["again"]
    finally:
        rt.close()
        srv.stop()


def test_dropped_connection_with_handlers_reconnects_in_background_and_runs_hooks(server):
    rt = server.connect()
    t = rt._transport
    reconnected = threading.Event()
    seen_graphs: list = []

    def hook():
        seen_graphs.append(t.call("graph.list", []))  # hooks may call: the connection is theirs
        reconnected.set()

    try:
        rt.graph("bg-reconnect")
        t.on_notification("nothing.ever", lambda params: None)  # starts the notification thread
        t.on_reconnect(hook)
        t._sock.shutdown(socket.SHUT_RDWR)  # the network drops the connection; no call follows
        assert reconnected.wait(10), "the notification thread did not reconnect by itself"
        assert any(g["name"] == "bg-reconnect" for g in seen_graphs[0])
        assert rt.graphs().count("bg-reconnect") == 1
    finally:
        rt.close()


def test_closed_runtime_raises_unavailable(server):
    rt = server.connect()
    rt.close()
    with pytest.raises(kf.errors.UnavailableError, match="closed"):
        rt.graphs()


def test_connect_to_nothing_raises_unavailable():
    with pytest.raises(kf.errors.UnavailableError, match="cannot reach"):
        kf.connect(f"kf://127.0.0.1:{free_port()}", token="x", timeout=5)


def test_connect_bad_url_raises_invalid_argument():
    with pytest.raises(kf.errors.InvalidArgumentError, match="unsupported url"):
        kf.connect("http://127.0.0.1:7070")


def test_call_deadline_exceeded_then_connection_still_usable(server):
    with server.connect(timeout=60.0) as rt:
        g = rt.graph("deadline")
        w = g.variable(np.ones((800, 800), "float32") / 800, name="w")
        y = w
        for _ in range(60):
            y = y @ w
        total = kf.sum(y)
        g.sync()  # the graph is on the server: only the run below has the short deadline
        rt._transport.timeout = 0.05
        with pytest.raises(kf.errors.DeadlineExceededError, match="within 0.05 s"):
            g.run(total)
        rt._transport.timeout = 60.0
        assert g.run(kf.sum(w)) == pytest.approx(800.0)  # the late answer to the timed-out run is skipped


# ----------------------------------------------------------------- notifications
def _fake_server(script):
    """A one-connection msgpack-RPC server on loopback running ``script(conn, reader)``."""
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve():
        conn, _ = lsock.accept()
        with conn:
            script(conn)
        lsock.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return port, t


def _recv_request(conn, reader):
    while True:
        for m in reader.messages():
            return m
        conn.settimeout(10)
        data = conn.recv(65536)
        if not data:
            return None
        reader.feed(data)


def test_notifications_between_responses_and_while_idle_reach_callbacks():
    idle_sent = threading.Event()

    def script(conn):
        reader = MessageReader()
        auth = _recv_request(conn, reader)
        conn.sendall(msgpack.packb([1, auth[1], None, {"protocol": 1}]))
        req = _recv_request(conn, reader)
        conn.sendall(msgpack.packb([2, "job.progress", [{"step": 1}]]) + msgpack.packb([1, req[1], None, "ok"]))
        conn.sendall(msgpack.packb([2, "job.progress", [{"step": 2}]]))
        idle_sent.set()
        _recv_request(conn, reader)  # wait for the client to go away

    port, thread = _fake_server(script)
    t = TcpTransport("127.0.0.1", port, "tok", timeout=10)
    got: queue.Queue = queue.Queue()
    t.on_notification("job.progress", lambda params: got.put(params[0]["step"]))
    assert t.call("anything", []) == "ok"
    assert got.get(timeout=10) == 1
    assert idle_sent.wait(10)
    assert got.get(timeout=10) == 2  # delivered by the background reader, no call in flight
    t.close()
    thread.join(timeout=10)


def test_response_error_map_becomes_typed_exception_with_node_and_source():
    def script(conn):
        reader = MessageReader()
        auth = _recv_request(conn, reader)
        conn.sendall(msgpack.packb([1, auth[1], None, {}]))
        req = _recv_request(conn, reader)
        conn.sendall(msgpack.packb([1, req[1], {"type": "ShapeError", "message": "matmul: inner dimensions must "
                                                "match", "node": "dense1/MatMul", "source": "nb.py:3"}, None]))
        _recv_request(conn, reader)

    port, thread = _fake_server(script)
    t = TcpTransport("127.0.0.1", port, "tok", timeout=10)
    with pytest.raises(kf.errors.ShapeError, match="inner dimensions") as info:
        t.call("graph.run", [])
    assert info.value.node == "dense1/MatMul" and info.value.source == "nb.py:3"
    t.close()
    thread.join(timeout=10)


def test_quick_run_waiting_for_busy_graph_does_not_block_info(server):
    # A quick run on a graph is learned as "inline"; while a long run holds that graph, the
    # quick one must wait in the thread pool, not on the IO loop.
    with server.connect() as rt, server.connect() as rt2, server.connect() as rt3:
        g = rt.graph("busy")
        w = g.variable(np.random.default_rng(0).standard_normal((1000, 1000)).astype("float32") / 40, name="w")
        y = w
        for _ in range(40):
            y = y @ w
        slow, quick = kf.sum(y), kf.sum(w)
        g.sync()
        g2 = rt2.graph("busy")
        for _ in range(5):
            g2.run(g2[quick.name])
        done = threading.Event()
        worker = threading.Thread(target=lambda: (g.run(slow), done.set()), daemon=True)
        worker.start()
        quick_result: queue.Queue = queue.Queue()
        t_quick = threading.Thread(target=lambda: quick_result.put(g2.run(g2[quick.name])), daemon=True)
        t_quick.start()
        lat = []
        t0 = time.monotonic()
        while not done.is_set() and time.monotonic() - t0 < 60:
            t = time.perf_counter()
            rt3.info()
            lat.append(time.perf_counter() - t)
        worker.join(timeout=60)
        t_quick.join(timeout=60)
        assert quick_result.get(timeout=1) == pytest.approx(float(g.run(quick)), rel=1e-5)
        assert len(lat) >= 3, f"info answered only {len(lat)} times while the run was in flight"


def test_cli_status_lists_server_and_stop_shuts_it_down(tmp_path):
    srv = ServerProcess(tmp_path, token=None).wait_listening()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(srv.runtime_dir)}
    try:
        st = subprocess.run([sys.executable, "-m", "kernelflow", "status"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
        assert st.returncode == 0 and f"{srv.url}  pid {srv.proc.pid}" in st.stdout
        sp = subprocess.run([sys.executable, "-m", "kernelflow", "stop", "--url", srv.url], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
        assert sp.returncode == 0 and f"stopped {srv.url}" in sp.stdout
        assert srv.proc.wait(timeout=30) == 0
        st = subprocess.run([sys.executable, "-m", "kernelflow", "status"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
        assert st.returncode == 1 and "no kernelflow runtime server is running" in st.stdout
    finally:
        srv.stop()
