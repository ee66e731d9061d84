"""The state dir (issue #4): record logs, checkpoints, datasets and jobs on disk, and real
`kernelflow serve --state-dir` subprocesses killed with SIGKILL or stopped with SIGTERM and
started again on the same dir.

Contents: StateDir unit tests, then server tests (ServerProcess from test_server.py).
"""

from __future__ import annotations

import json
import logging
import os
import signal

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.client.local import default_state_dir
from kernelflow.runtime_server.persist.records import LOG_MAGIC, fs_name, read_records
from kernelflow.runtime_server.persist.state import StateDir
from tests.support.server import ServerProcess

WAIT_S = 10.0
VAR_NAMES = ["dense1/b", "dense1/w", "dense2/w", "global_step"]


def _nodes(*names: str) -> list[dict]:
    """Variable node dicts (arrays inside, as on the wire)."""
    return [{"name": n, "op": "variable", "inputs": [],
             "attrs": {"initial": np.full((2, 3), i, "float32"), "trainable": True}} for i, n in enumerate(names)]


# ----------------------------------------------------------------- StateDir: graphs
def test_graph_log_round_trip_keeps_arrays_and_order(tmp_path):
    st = StateDir(tmp_path)
    st.append_graph_nodes("a/b c", 7, 0, [])
    st.append_graph_nodes("a/b c", 7, 0, _nodes("v0", "v1"))
    st.append_graph_nodes("a/b c", 7, 2, _nodes("v2"))
    [(name, seed, nodes)] = StateDir(tmp_path).load_graphs()
    assert (name, seed, [n["name"] for n in nodes]) == ("a/b c", 7, ["v0", "v1", "v2"])
    init = nodes[1]["attrs"]["initial"]
    assert init.dtype == np.float32 and init.shape == (2, 3)
    np.testing.assert_array_equal(init, np.ones((2, 3), "float32"))
    assert (tmp_path / "graphs" / fs_name("a/b c") / "graph.log").read_bytes().startswith(LOG_MAGIC)


@pytest.mark.parametrize("damage", ["torn", "garbage", "bad_crc"])
def test_graph_log_damaged_tail_ignored_then_appends_continue(tmp_path, damage, caplog):
    st = StateDir(tmp_path)
    st.append_graph_nodes("g", 0, 0, _nodes("v0"))
    path = tmp_path / "graphs" / "g" / "graph.log"
    good = path.read_bytes()
    st.append_graph_nodes("g", 0, 1, _nodes("v1"))
    full = path.read_bytes()
    if damage == "torn":  # a crash in the middle of the second append
        path.write_bytes(full[:len(good) + (len(full) - len(good)) // 2])
    elif damage == "garbage":
        path.write_bytes(good + b"\xff\x00garbage" * 5)
    else:
        path.write_bytes(full[:-1] + bytes([full[-1] ^ 0xFF]))
    st2 = StateDir(tmp_path)
    with caplog.at_level(logging.WARNING, "kernelflow.state"):
        [(_, _, nodes)] = st2.load_graphs()
    assert [n["name"] for n in nodes] == ["v0"]
    assert "ignoring the last" in caplog.text
    assert path.read_bytes() == good  # the tail is cut off, so the next append is readable
    st2.append_graph_nodes("g", 0, 1, _nodes("w1"))
    [(_, _, nodes)] = StateDir(tmp_path).load_graphs()
    assert [n["name"] for n in nodes] == ["v0", "w1"]
    payloads, end, size, why = read_records(path)
    assert (len(payloads), end, why) == (3, size, None)


def test_graph_delete_forgets_nodes_and_checkpoints(tmp_path):
    st = StateDir(tmp_path)
    st.append_graph_nodes("g", 0, 0, _nodes("v0"))
    st.write_checkpoint("g", None, {"v0": np.zeros(3, "float32")}, {})
    st.delete_graph("g")
    assert st.load_graphs() == [] and st.list_checkpoints("g") == []
    with pytest.raises(kf.errors.NotFoundError, match="no log to extend"):
        st.append_graph_nodes("g", 0, 1, _nodes("v1"))


def test_graph_that_cannot_be_rebuilt_is_quarantined_and_others_load(tmp_path, caplog):
    from kernelflow.runtime_server.service import RuntimeService

    st = StateDir(tmp_path)
    st.append_graph_nodes("ok", 0, 0, _nodes("v0"))
    st.append_graph_nodes("bad", 0, 0, [{"name": "n", "op": "no_such_op", "inputs": [], "attrs": {}}])
    with caplog.at_level(logging.ERROR, "kernelflow.service"):
        svc = RuntimeService(state_dir=str(tmp_path))
    try:
        assert sorted(svc.graphs.graphs) == ["ok"]
        assert "graph 'bad' cannot be rebuilt" in caplog.text
        [q] = (tmp_path / "quarantine").iterdir()
        assert (q / "graph" / "graph.log").is_file() and not (tmp_path / "graphs" / "bad").exists()
    finally:
        svc.shutdown()


def test_state_dir_lock_refuses_second_holder(tmp_path):
    first = StateDir(tmp_path)
    first.lock()
    held = rf"in use by another kernelflow server \(pid {os.getpid()}\)"
    with pytest.raises(kf.errors.FailedPreconditionError, match=held):
        StateDir(tmp_path).lock(timeout_s=0.2)
    first.close()
    StateDir(tmp_path).lock(timeout_s=0.2)  # released: the next server gets it


def test_lock_sweeps_what_a_killed_server_left_half_written(tmp_path):
    st = StateDir(tmp_path)
    m = st.write_checkpoint("g", None, {"w": np.ones(2, "float32")}, {})
    d = tmp_path / "checkpoints" / "g"
    (d / ".000002-ckpt-000002.safetensors.tmp-1-ab").write_bytes(b"half")
    (d / "000002-ckpt-000002.safetensors").write_bytes(b"renamed, manifest never written")
    StateDir(tmp_path).lock()
    assert sorted(p.name for p in d.iterdir()) == [m["file"], "ckpt-000001.json"]


# ----------------------------------------------------------------- StateDir: checkpoints
def test_checkpoint_tags_numbered_and_keep_last_deletes_oldest(tmp_path):
    st = StateDir(tmp_path)
    for i in range(4):
        m = st.write_checkpoint("g", None, {"w": np.full(3, i, "float32")},
                                {"step": i, "metrics": {"loss": 1.0 / (i + 1)}}, keep_last=2)
    assert m["tag"] == "ckpt-000004" and m["step"] == 3 and m["metrics"] == {"loss": 0.25}
    assert [c["tag"] for c in st.list_checkpoints("g")] == ["ckpt-000003", "ckpt-000004"]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "g").iterdir()) == [
        "000003-ckpt-000003.safetensors", "000004-ckpt-000004.safetensors", "ckpt-000003.json", "ckpt-000004.json"]
    arrays, m = st.read_checkpoint("g", "ckpt-000003")
    np.testing.assert_array_equal(arrays["w"], np.full(3, 2, "float32"))
    with pytest.raises(kf.errors.NotFoundError, match=r"no checkpoint tagged 'ckpt-000001'; tags: \['ckpt-000003'"):
        st.read_checkpoint("g", "ckpt-000001")
    with pytest.raises(kf.errors.InvalidArgumentError, match="keep_last must be a positive integer"):
        st.write_checkpoint("g", None, {}, {}, keep_last=0)
    with pytest.raises(kf.errors.InvalidArgumentError, match="checkpoint tag must be"):
        st.write_checkpoint("g", "../x", {}, {})


def test_checkpoint_strided_bigendian_and_0d_arrays_round_trip_exactly(tmp_path):
    st = StateDir(tmp_path)
    a = np.arange(12, dtype="float64").reshape(3, 4)[:, ::2]  # safetensors alone writes these wrong
    b = np.arange(5, dtype=">i4")
    st.write_checkpoint("g", "t1", {"a": a, "b": b, "s": np.array(7, "int64"), "h": np.ones(2, "float16")}, {})
    arrays, m = st.read_checkpoint("g")
    np.testing.assert_array_equal(arrays["a"], a)
    np.testing.assert_array_equal(arrays["b"], b)
    assert arrays["b"].dtype == np.dtype("<i4") and arrays["s"].shape == () and int(arrays["s"]) == 7
    assert arrays["h"].dtype == np.float16 and m["tag"] == "t1" and m["variables"] == ["a", "b", "h", "s"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_checkpoint_damaged_latest_falls_back_to_previous_with_warning(tmp_path, damage, caplog):
    st = StateDir(tmp_path)
    st.write_checkpoint("g", None, {"w": np.zeros(4, "float32")}, {"step": 1})
    m2 = st.write_checkpoint("g", None, {"w": np.ones(4, "float32")}, {"step": 2})
    path = tmp_path / "checkpoints" / "g" / m2["file"]
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == "truncate" else data[:-1] + b"\x00")
    with caplog.at_level(logging.WARNING, "kernelflow.state"):
        arrays, m = st.read_checkpoint("g", "latest")
    assert (m["tag"], m["step"], m["damaged"]) == ("ckpt-000001", 1, ["ckpt-000002"])
    np.testing.assert_array_equal(arrays["w"], np.zeros(4, "float32"))
    assert "checkpoint ckpt-000002 is damaged" in caplog.text
    with pytest.raises(kf.errors.FailedPreconditionError, match="checkpoint ckpt-000002 is damaged"):
        st.read_checkpoint("g", "ckpt-000002")


def test_checkpoint_skip_if_unchanged_writes_nothing_new(tmp_path):
    st = StateDir(tmp_path)
    m1 = st.write_checkpoint("g", None, {"w": np.ones(3, "float32")}, {})
    again = st.write_checkpoint("g", None, {"w": np.ones(3, "float32")}, {}, skip_if_unchanged=True)
    changed = st.write_checkpoint("g", None, {"w": np.zeros(3, "float32")}, {}, skip_if_unchanged=True)
    assert again["tag"] == m1["tag"] and changed["tag"] == "ckpt-000002"
    assert len(list((tmp_path / "checkpoints" / "g").glob("*.safetensors"))) == 2


# ----------------------------------------------------------------- StateDir: datasets and jobs
def test_dataset_round_trip_replace_and_delete(tmp_path):
    st = StateDir(tmp_path)
    x = np.random.default_rng(0).standard_normal((10, 3)).astype("float32")
    st.write_dataset("digits", {"x": x, "y": np.arange(10)}, {"split": np.arange(5), "note": "a"})
    st.write_dataset("digits", {"x": x[:4], "y": np.arange(4)}, {"note": "b"})
    [(name, arrays, meta)] = StateDir(tmp_path).load_datasets()
    assert name == "digits" and meta == {"note": "b"}
    np.testing.assert_array_equal(arrays["x"], x[:4])
    st.delete_dataset("digits")
    assert st.load_datasets() == []


def test_job_spec_status_and_history_survive_torn_last_record(tmp_path):
    st = StateDir(tmp_path)
    st.write_job("job-1", {"graph": "g", "feed": {"x": "x"}, "perm": np.arange(4)}, {"status": "running"})
    st.append_job_records("job-1", [{"step": 10, "loss": 0.5}, {"step": 20, "loss": 0.25}])
    st.append_job_records("job-1", [{"step": 30, "loss": 0.125}])
    st.write_job("job-1", {"graph": "g", "feed": {"x": "x"}, "perm": np.arange(4)}, {"status": "paused"})
    path = tmp_path / "jobs" / "job-1" / "history.log"
    path.write_bytes(path.read_bytes()[:-3])
    again = StateDir(tmp_path)
    [(job_id, spec, status)] = again.load_jobs()
    seen: list[tuple[int, dict]] = []
    assert again.scan_job_history("job-1", lambda off, r: seen.append((off, r))) == 2
    records = [r for _, r in seen]
    assert (job_id, status, records) == ("job-1", {"status": "paused"}, [{"step": 10, "loss": 0.5},
                                                                         {"step": 20, "loss": 0.25}])
    np.testing.assert_array_equal(spec["perm"], np.arange(4))
    # the torn tail is cut off; records are read back by offset, and appends go on after them
    assert again.read_job_records("job-1", seen[1][0], 1) == [{"step": 20, "loss": 0.25}]
    [off] = again.append_job_records("job-1", [{"step": 40, "loss": 0.0625}])
    assert again.read_job_records("job-1", seen[0][0], 3)[2] == {"step": 40, "loss": 0.0625}
    assert again.read_job_records("job-1", off, 1) == [{"step": 40, "loss": 0.0625}]


def test_default_state_dir_under_jupyter_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("KERNELFLOW_STATE_DIR", raising=False)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    assert default_state_dir() == tmp_path / "data" / "kernelflow" / "state"
    monkeypatch.setenv("KERNELFLOW_STATE_DIR", str(tmp_path / "s"))
    assert default_state_dir() == tmp_path / "s"


def test_save_without_state_dir_is_failed_precondition():
    g = kf.connect("inproc").graph("g")
    g.variable(np.zeros(2, "float32"), name="w")
    with pytest.raises(kf.errors.FailedPreconditionError, match="--state-dir"):
        g.save()
    with pytest.raises(kf.errors.FailedPreconditionError, match="--state-dir"):
        g.restore()
    assert g.checkpoints() == []


# ----------------------------------------------------------------- real servers
@pytest.fixture
def servers(tmp_path):
    """Starts `serve --state-dir tmp/state` processes; kills leftovers at teardown."""
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        srv = ServerProcess(tmp_path, "--state-dir", str(tmp_path / "state")).wait_listening()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait(timeout=WAIT_S)


def _kill9(srv: ServerProcess) -> None:
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(timeout=WAIT_S)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((64, 4)).astype("float32")
    return xb, (xb[:, 0] > 0).astype("int64") + (xb[:, 1] > 1).astype("int64")


def _build_mlp(g) -> tuple:
    x = g.placeholder((None, 4), "float32", name="x")
    y = g.placeholder((None,), "int64", name="y")
    w1 = g.variable(kf.init.glorot_uniform((4, 16), seed=0), name="dense1/w")
    b1 = g.variable(np.zeros(16, "float32"), name="dense1/b")
    w2 = g.variable(kf.init.glorot_uniform((16, 3), seed=1), name="dense2/w")
    loss = kf.mean(kf.softmax_cross_entropy(kf.relu(x @ w1 + b1) @ w2, y), name="loss")
    train = kf.optim.SGD(0.5).minimize(loss, name="train")
    return x, y, loss, train


def _values(g) -> dict[str, np.ndarray]:
    return {n: g[n].value() for n in VAR_NAMES}


def test_save_checkpoints_restore_round_trip_and_keep_last(servers):
    srv = servers()
    with srv.connect(timeout=WAIT_S) as rt:
        g = rt.graph("mlp")
        x, y, loss, train = _build_mlp(g)
        xb, yb = _data()
        g.run(train, feed={x: xb, y: yb})
        saved = _values(g)
        m = g.save(tag="first")
        assert (m["tag"], m["step"], m["variables"]) == ("first", 1, VAR_NAMES)
        for _ in range(3):
            g.run(train, feed={x: xb, y: yb})
        assert not np.array_equal(g["dense1/w"].value(), saved["dense1/w"])
        r = g.restore("first")
        assert (r["tag"], r["step"], sorted(r["restored"])) == ("first", 1, VAR_NAMES)
        for n, v in saved.items():
            np.testing.assert_array_equal(g[n].value(), v)
        for _ in range(3):
            g.run(train, feed={x: xb, y: yb})
            g.save(keep_last=2)
        assert [c["tag"] for c in g.checkpoints()] == ["ckpt-000003", "ckpt-000004"]
        assert [c["step"] for c in g.checkpoints()] == [3, 4]
        with pytest.raises(kf.errors.NotFoundError, match="no checkpoint tagged 'first'"):
            g.restore("first")


def test_truncated_checkpoint_on_disk_restores_previous_with_warning(servers, tmp_path):
    srv = servers()
    with srv.connect(timeout=WAIT_S) as rt:
        g = rt.graph("g")
        w = g.variable(np.zeros(5, "float32"), name="w")
        g.save()
        g.run(w.assign(np.ones(5, "float32")))
        m = g.save()
        path = tmp_path / "state" / "checkpoints" / "g" / m["file"]
        path.write_bytes(path.read_bytes()[:40])
        r = g.restore()
        assert (r["tag"], r["damaged"]) == ("ckpt-000001", ["ckpt-000002"])
        np.testing.assert_array_equal(w.value(), np.zeros(5, "float32"))
    srv.stop()
    assert any("checkpoint ckpt-000002 is damaged" in line for line in srv.stderr)


def test_kill9_then_restart_finds_graphs_versions_and_last_checkpoint(servers):
    srv = servers()
    xb, yb = _data()
    with srv.connect(timeout=WAIT_S) as rt:
        g = rt.graph("mlp", seed=3)
        x, y, loss, train = _build_mlp(g)
        for _ in range(3):
            g.run(train, feed={x: xb, y: yb})
        g.save()
        saved = _values(g)
        g.run(train, feed={x: xb, y: yb})  # after the checkpoint: lost by kill -9
        e = rt.graph("empty")
        names, version, train_name = [t.name for t in g.nodes()], g.version, train.name
    _kill9(srv)

    srv2 = servers()
    with srv2.connect(timeout=WAIT_S) as rt:
        assert sorted(rt.graphs()) == ["empty", "mlp"]
        assert rt.graph("empty").version == e.version == 0
        g = rt.graph("mlp")
        assert ([t.name for t in g.nodes()], g.version, g.seed) == (names, version, 3)
        for n, v in saved.items():
            np.testing.assert_array_equal(g[n].value(), v)
        assert int(g["global_step"].value()) == 3
        # A re-attached client trains on.
        l0 = g.run(g["loss"], feed={g["x"]: xb, g["y"]: yb})
        _, l1 = g.run([g[train_name], g["loss"]], feed={g["x"]: xb, g["y"]: yb})
        assert float(l1) == pytest.approx(float(l0)) and int(g["global_step"].value()) == 4


def test_kill9_right_after_extend_keeps_nodes_and_garbage_tail_tolerated(servers, tmp_path):
    srv = servers()
    with srv.connect(timeout=WAIT_S) as rt:
        g = rt.graph("g")
        a = g.variable(np.arange(3, dtype="float32"), name="a")
        b = g.constant(np.full(3, 2.0, "float32"), name="b")
        g.sync()  # acknowledged: durable from here on, no save needed
        c = kf.multiply(a, b, name="c")
        assert g.sync() == 3
    _kill9(srv)
    with open(tmp_path / "state" / "graphs" / "g" / "graph.log", "ab") as f:
        f.write(b"\x00\x00\x10\x00 half a record that never finished")

    srv2 = servers()
    with srv2.connect(timeout=WAIT_S) as rt:
        g = rt.graph("g")
        assert [t.name for t in g.nodes()] == ["a", "b", "c"]
        np.testing.assert_array_equal(g.run(g["c"]), np.arange(3, dtype="float32") * 2)
        kf.add(g["c"], 1.0, name="d")  # the log takes appends again after the cut tail
        g.sync()
        names = [t.name for t in g.nodes()]
    _kill9(srv2)
    srv3 = servers()
    with srv3.connect(timeout=WAIT_S) as rt:
        assert [t.name for t in rt.graph("g").nodes()] == names == ["a", "b", "c", "const", "d"]
    assert any("ignoring the last" in line for line in srv2.stderr)
    assert c.name == "c" and b.name == "b"


def test_sigterm_checkpoints_everything_and_delete_is_durable(servers, tmp_path):
    srv = servers()
    with srv.connect(timeout=WAIT_S) as rt:
        g = rt.graph("g")
        w = g.variable(np.zeros(4, "float32"), name="w")
        g.save()
        g.run(w.assign(np.full(4, 9.0, "float32")))  # changed after the last save
        h = rt.graph("h")
        h.variable(np.ones(2, "int32"), name="v")
        h.sync()
        rt.delete_graph("h")
    srv.stop()  # SIGTERM
    assert srv.proc.returncode == 0, "".join(srv.stderr)

    srv2 = servers()
    with srv2.connect(timeout=WAIT_S) as rt:
        assert rt.graphs() == ["g"]
        g = rt.graph("g")
        np.testing.assert_array_equal(g["w"].value(), np.full(4, 9.0, "float32"))
        tags = [(c["tag"], c.get("reason")) for c in g.checkpoints()]
        assert tags == [("ckpt-000001", None), ("ckpt-000002", "shutdown")]
    srv2.stop()  # nothing changed: no third checkpoint
    manifests = sorted(p.name for p in (tmp_path / "state" / "checkpoints" / "g").glob("*.json"))
    assert manifests == ["ckpt-000001.json", "ckpt-000002.json"]
    assert json.loads((tmp_path / "state" / "checkpoints" / "g" / "ckpt-000002.json").read_text())["step"] is None

    srv3 = servers()
    with srv3.connect(timeout=WAIT_S) as rt:
        g = rt.graph("g")
        g.run(g["w"].assign(np.full(4, -1.0, "float32")))
        rt.call("server.shutdown", [])  # the RPC stops the server as cleanly as SIGTERM
    assert srv3.proc.wait(timeout=WAIT_S) == 0
    with servers().connect(timeout=WAIT_S) as rt:
        np.testing.assert_array_equal(rt.graph("g")["w"].value(), np.full(4, -1.0, "float32"))


def test_inproc_runtime_with_state_dir_keeps_graph_and_values_across_close(tmp_path):
    rt = kf.connect("inproc", state_dir=tmp_path / "state")
    g = rt.graph("kept")
    v = g.variable(np.array([1.5, -2.0], "float32"), name="v")
    g.run(kf.assign_add(v, np.array([0.25, 0.5], "float32")))
    rt.close()  # checkpoints and releases the dir's lock, as a server's clean exit does
    rt2 = kf.connect("inproc", state_dir=tmp_path / "state")
    try:
        assert rt2.graphs() == ["kept"]
        np.testing.assert_array_equal(rt2.graph("kept").run(rt2.graph("kept")["v"]), [1.75, -1.5])
    finally:
        rt2.close()


def test_connect_state_dir_with_a_server_url_raises_invalid_argument(tmp_path):
    with pytest.raises(kf.errors.InvalidArgumentError, match=r"state_dir is for url='inproc'"):
        kf.connect("kf://127.0.0.1:7070", token="t", state_dir=tmp_path)
