"""Sharded datasets (``--shard-datasets``, issue #18): the shard arithmetic in-process, then a real
3-rank world whose followers hold only their shards and whose data-parallel job trains on the
documented batch sequence (checked against a one-rank job fed that sequence)."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.runtime_server.distributed.shards import shard_order, shard_range, shard_rows
from tests.support.models import mlp

from .mpirun import WorldServer, require_mpi


@pytest.mark.parametrize("n,size,bs", [(10, 3, 4), (640, 3, 48), (7, 2, 7), (5, 4, 2)])
def test_an_epoch_of_shards_uses_every_row_once_in_batches_of_the_global_size(n, size, bs):
    shards = [shard_rows(n, r, size) for r in range(size)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    orders = [shard_order(9, 1, r, len(shards[r]), True) for r in range(size)]
    seen = []
    for lo in range(0, n, bs):
        m = min(lo + bs, n) - lo
        parts = [shard_range(lo, m, r, size) for r in range(size)]
        assert sum(b - a for a, b in parts) == m  # the ranks' slices make up the global batch
        for r, (a, b) in enumerate(parts):
            seen.extend(shards[r][orders[r][a:b]].tolist())
    assert sorted(seen) == list(range(n))  # every row once per epoch
    assert all(np.array_equal(shard_order(9, 1, r, len(s), False), np.arange(len(s))) for r, s in enumerate(shards))
    if n > 8:
        assert not np.array_equal(shard_order(9, 1, 0, 50, True), shard_order(9, 2, 0, 50, True))  # per epoch
        assert not np.array_equal(shard_order(9, 1, 0, 50, True), shard_order(9, 1, 1, 50, True))  # per rank


def _expected_sequence(n: int, size: int, bs: int, seed: int, epochs: int) -> np.ndarray:
    """The rows (of the dataset of n rows) a sharded job trains on, batch after batch (shards.py)."""
    out = []
    for epoch in range(epochs):
        shards = [shard_rows(n, r, size) for r in range(size)]
        orders = [np.random.default_rng([seed, epoch, r]).permutation(len(s)) for r, s in enumerate(shards)]
        for lo in range(0, n, bs):
            m = min(lo + bs, n) - lo
            for r in range(size):
                a, b = shard_range(lo, m, r, size)
                out.append(shards[r][orders[r][a:b]])
    return np.concatenate(out)


def test_followers_keep_shards_and_the_job_trains_on_the_sharded_batch_sequence(tmp_path):
    require_mpi()
    rng = np.random.default_rng(12)
    X = rng.standard_normal((640, 64)).astype("float32")
    Y = np.argmax(X @ rng.standard_normal((64, 10)), axis=1).astype("int64")
    srv = WorldServer(tmp_path, 3, "--shard-datasets").wait_listening()
    try:
        rt = srv.connect()
        assert rt.info()["world"]["shard_datasets"] is True
        ds = rt.dataset("sh", {"x": X, "y": Y})
        train, _ = ds.split(0.75, shuffle=False)  # a view: its first 480 rows
        reps = rt.call("world.report", [])
        assert reps[0]["datasets"] == {"sh": 640, "sh.train": 480, "sh.val": 160}
        assert reps[1]["datasets"] == {"sh": 213, "sh.train": 160, "sh.val": 53}  # rows 1, 4, 7, ...
        assert reps[2]["datasets"] == {"sh": 213, "sh.train": 160, "sh.val": 53}
        m = mlp(rt, "sharded")
        job = m.g.fit(m.train, data=train, feed={m.x: "x", m.y: "y"}, batch_size=48, epochs=2, seed=4,
                      metrics={"loss": m.loss}, log_every=5, replicas="all")
        assert job.wait(timeout=120) == "completed", job.error
        got = {n: m.g.run(m.g[n]) for n in ("w1", "b1", "w2", "b2")}
        reps = rt.call("world.report", [])
        sums = [r["graphs"]["sharded"]["variables"] for r in reps]
        assert sums[0] == sums[1] == sums[2]
        m2 = mlp(rt, "sharded-in-order")
        job = m2.g.fit(m2.train, data=train, feed={m2.x: "x", m2.y: "y"}, batch_size=48, epochs=1, shuffle=False,
                       replicas="all")
        assert job.wait(timeout=120) == "completed", job.error
        in_order = m2.g.run(m2.w1)
        rt.close()
    finally:
        srv.stop()
    # the same batches, in the same order, fed to a one-rank job without shuffling
    seq = _expected_sequence(480, 3, 48, 4, 2)
    assert len(seq) == 960 and sorted(seq[:480].tolist()) == list(range(480))
    ref_rt = kf.connect("inproc")
    try:
        r = mlp(ref_rt, "sharded-ref")
        rds = ref_rt.dataset("seq", {"x": X[seq], "y": Y[seq]})
        job = r.g.fit(r.train, data=rds, feed={r.x: "x", r.y: "y"}, batch_size=48, steps=20, shuffle=False)
        assert job.wait(timeout=120) == "completed", job.error
        for n, v in got.items():
            np.testing.assert_allclose(v, r.g.run(r.g[n]), rtol=1e-4, atol=2e-5, err_msg=n)
        # and not what an unsharded job (one permutation of all rows per epoch) trains on
        u = mlp(ref_rt, "unsharded")
        uds = ref_rt.dataset("plain", {"x": X[:480], "y": Y[:480]})
        job = u.g.fit(u.train, data=uds, feed={u.x: "x", u.y: "y"}, batch_size=48, epochs=2, seed=4)
        assert job.wait(timeout=120) == "completed", job.error
        assert np.abs(u.g.run(u.g["w1"]) - got["w1"]).max() > 1e-4
        # unshuffled, position p is row p: the one-rank job's batches
        o = mlp(ref_rt, "in-order")
        job = o.g.fit(o.train, data=uds, feed={o.x: "x", o.y: "y"}, batch_size=48, epochs=1, shuffle=False)
        assert job.wait(timeout=120) == "completed", job.error
        np.testing.assert_allclose(in_order, o.g.run(o.w1), rtol=1e-4, atol=2e-5)
    finally:
        ref_rt.close()


def test_a_restarted_sharded_world_sends_each_follower_its_shard_of_the_state_dir(tmp_path):
    require_mpi()
    state = tmp_path / "state"
    X = np.arange(50 * 3, dtype="float32").reshape(50, 3)
    srv = WorldServer(tmp_path / "a", 2, "--state-dir", str(state)).wait_listening()
    try:
        rt = srv.connect()
        rt.dataset("kept", {"x": X}).split(0.6, seed=3)
        assert rt.call("world.report", [])[1]["datasets"] == {"kept": 50, "kept.train": 30, "kept.val": 20}
        rt.close()
    finally:
        srv.stop()
    srv = WorldServer(tmp_path / "b", 2, "--state-dir", str(state), "--shard-datasets").wait_listening()
    try:
        rt = srv.connect()
        reps = rt.call("world.report", [])
        assert reps[0]["datasets"] == {"kept": 50, "kept.train": 30, "kept.val": 20}
        assert reps[1]["datasets"] == {"kept": 25, "kept.train": 15, "kept.val": 10}  # views sent as their rows
        rt.close()
    finally:
        srv.stop()
