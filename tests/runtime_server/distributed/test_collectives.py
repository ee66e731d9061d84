"""The communicator layer (issue #18): fusion buckets, the one-rank communicator and agreement
checks in-process; the MPI backend, the watchdog and a killed rank under real ``mpiexec``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kernelflow.errors import InvalidArgumentError, UnavailableError
from kernelflow.runtime_server.distributed.comm import LocalCommunicator, check_agreement
from kernelflow.runtime_server.distributed.fusion import GradientReducer, plan_buckets

from .mpirun import require_mpi, run_ranks

PROG = "tests.runtime_server.distributed.prog_collectives"


def test_plan_buckets_groups_by_dtype_up_to_the_threshold():
    specs = [("a", (10,), "float32"), ("b", (5,), "float64"), ("c", (20,), "float32"), ("d", (100,), "float32")]
    buckets = plan_buckets(specs, 128)  # 32 float32 fit in a bucket
    assert [(b.dtype, b.members) for b in buckets] == [("float32", [0, 2]), ("float64", [1]), ("float32", [3])]
    assert buckets[0].offsets == [0, 10] and buckets[0].nbytes == 120
    assert [b.members for b in plan_buckets(specs, 0)] == [[0], [1], [2], [3]]  # fusion off
    assert len(plan_buckets(specs, 1 << 20)) == 2


def test_plan_buckets_rejects_unknown_dims_and_negative_threshold():
    with pytest.raises(InvalidArgumentError, match="gradient 'a' has an unknown dimension"):
        plan_buckets([("a", (None, 3), "float32")], 10)
    with pytest.raises(InvalidArgumentError, match=r"bucket_bytes must be >= 0 \(0: no fusion\); got -1"):
        plan_buckets([("a", (3,), "float32")], -1)


def test_reducer_one_rank_returns_scaled_values_of_each_tensor():
    rng = np.random.default_rng(0)
    specs = [("w", (3, 4), "float32"), ("b", (4,), "float32"), ("s", (), "float64")]
    grads = [rng.standard_normal(s).astype(d) for _, s, d in specs]
    red = GradientReducer(LocalCommunicator(), specs, bucket_bytes=32)
    out = red.reduce(grads, "t", scale=3.0)
    for g, o, (_, s, d) in zip(grads, out, specs):
        assert o.shape == s and o.dtype == d
        np.testing.assert_allclose(o, 3.0 * g.astype(np.float64), rtol=1e-6)
    with pytest.raises(InvalidArgumentError, match="gradient 'b' is float64"):
        red.reduce([grads[0], grads[1].astype("float64"), grads[2]], "t")


def test_round_fills_buckets_in_ready_order_and_starts_them_in_bucket_order():
    specs = [("w1", (64, 32), "float32"), ("b1", (32,), "float32"), ("w2", (32, 10), "float32"),
             ("b2", (10,), "float32")]
    order = [3, 2, 1, 0]  # as a backward pass makes them: last layer first
    red = GradientReducer(LocalCommunicator(), specs, 4096, order=order)
    assert [b.members for b in red.buckets] == [[3, 2, 1], [0]]
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(s).astype(d) for _, s, d in specs]
    events: list = []
    rnd = red.begin("t", scale=2.0, events=events)
    for i in (3, 0):  # bucket 1 complete first: it must wait for bucket 0
        rnd.add(i, grads[i])
    assert events == []
    rnd.add(2, grads[2])
    assert events == []
    rnd.add(1, grads[1])
    assert events == [("start", 0), ("start", 1)]
    for g, o in zip(grads, rnd.finish()):
        np.testing.assert_allclose(o, 2.0 * g.astype(np.float64), rtol=1e-6)
    rnd = red.begin("t")
    rnd.add(3, grads[3])
    with pytest.raises(InvalidArgumentError, match="gradient 'b2' reported twice"):
        rnd.add(3, grads[3])
    with pytest.raises(InvalidArgumentError, match=r"gradients \['w1', 'b1', 'w2'\] were never reported"):
        rnd.finish()
    with pytest.raises(InvalidArgumentError, match=r"order must list each of the 4 gradients once; got \[0, 0, 1, 2\]"):
        GradientReducer(LocalCommunicator(), specs, 4096, order=[0, 0, 1, 2])


def test_broken_communicator_refuses_every_later_call():
    c = LocalCommunicator()
    c.mark_broken("a test")
    with pytest.raises(UnavailableError, match=r"broken \(a test\)"):
        c.allreduce_sum([np.zeros(2)], "x")


def test_check_agreement_one_rank_passes_and_returns_the_facts():
    assert check_agreement(LocalCommunicator(), {"v": 3, "t": ["a"]}, "job") == [{"v": 3, "t": ["a"]}]


@pytest.mark.parametrize("n", [2, 3])
def test_mpi_allreduce_broadcast_gather_and_agreement(tmp_path, n):
    require_mpi()
    p = run_ranks(n, "-m", PROG, str(tmp_path), "ok")
    assert p.returncode == 0, p.stderr
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(n)]
    for r, d in enumerate(res):
        assert d["rank"] == r and d["size"] == n
        assert [x["rank"] for x in d["ranks"]] == list(range(n)) and len({x["pid"] for x in d["ranks"]}) == n
        # fusion off: one bucket per tensor; 4 KiB: the small float32 ones share; 16 MiB: one per dtype
        assert (d["buckets_0"], d["buckets_4096"], d["buckets_16777216"]) == (6, 4, 2)
        for bb in (0, 4096, 16777216):
            assert d[f"maxerr_{bb}"] < 1e-5 * n  # float32 sums against the float64 reference
            assert d[f"dtypes_{bb}"] == ["float32"] * 4 + ["float64", "float32"]
            assert d[f"sig_{bb}"] == res[0][f"sig_{bb}"]
        assert d["bcast"] == [0.0, 1.0, 2.0, 3.0, 4.0]  # root 0's values everywhere
        assert d["gather"] == ["x" * k + f"r{k}" for k in range(n)]
        assert d["allgather"] == [[k, 10 * k] for k in range(n)]
        assert "job x: the ranks disagree: tensors: rank 1 has ['extra'] that rank 0 lacks" in d["agreement"]
        assert d["agree_same"] == n


def test_mpi_gradient_all_reduce_overlaps_the_backward_pass_with_several_buckets(tmp_path):
    require_mpi()
    p = run_ranks(2, "-m", PROG, str(tmp_path), "overlap")
    assert p.returncode == 0, p.stderr
    for r in range(2):
        d = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert d["grad_vars"] == ["w1", "b1", "w2", "b2"]
        # buckets fill in the order the backward pass makes the gradients: b2, w2, b1, then w1 (8 KiB)
        assert d["buckets_4096_1"] == [[3, 2, 1], [0]] and d["buckets_16777216_1"] == [[3, 2, 1, 0]]
        ev = d["events_4096_1"]
        kinds = [e[0] for e in ev]
        last_ready = max(i for i, k in enumerate(kinds) if k == "ready")
        assert [e[1] for e in ev if e[0] == "ready"] == [3, 2, 1, 0]
        assert ev.index(["start", 0]) < last_ready < ev.index(["start", 1]) < kinds.index("done")
        assert d["share_4096_1"] == 0.5
        # one bucket, or overlap off: every all-reduce starts after the last gradient
        assert kinds.count("start") == 2
        assert d["share_16777216_1"] == 0.0 and d["events_16777216_1"][-3:] == [["ready", 0], ["start", 0], ["done"]]
        assert d["events_4096_0"] == [["done"]] and d["share_4096_0"] == 0.0
        for key in ("4096_1", "4096_0", "16777216_1", "16777216_0"):
            assert d[f"maxerr_{key}"] < 1e-5, key  # the row-weighted sum over both ranks (float64 reference)
            assert d[f"fetched_same_{key}"], key


def test_mpi_watchdog_times_out_on_an_absent_rank_and_breaks_the_communicator(tmp_path):
    require_mpi()
    p = run_ranks(2, "-m", PROG, str(tmp_path), "absent")
    assert p.returncode == 0, p.stderr
    d = json.loads((tmp_path / "rank0.json").read_text())
    assert d["error"][0] == "DeadlineExceededError"
    assert "did not answer within 3 s (rank 0 of 2)" in d["error"][1]
    assert d["waited_s"] >= 3.0  # the deadline, not an early give-up
    assert d["after"][0] == "UnavailableError" and "broken" in d["after"][1]
    assert "timed out after 3 s" in d["broken"]


def test_mpi_killed_rank_ends_the_collective_on_the_others_before_the_deadline(tmp_path):
    require_mpi()
    run_ranks(3, "-m", PROG, str(tmp_path), "killed")  # kill -9 of rank 2; the launcher tells ranks 0 and 1
    for r in (0, 1):
        d = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert d["error"][0] == "UnavailableError"
        assert "a rank of the world died (the launcher reported a process failure)" in d["error"][1]
        assert d["waited_s"] < 60.0  # the failure notice ended the wait, not the 60 s watchdog
        assert d["after"][0] == "UnavailableError" and "broken" in d["after"][1]


def test_import_kernelflow_and_a_plain_runtime_never_load_mpi4py():
    import subprocess
    import sys

    code = ("import sys, kernelflow as kf\n"
            "from kernelflow.runtime_server.service import RuntimeService\n"
            "s = RuntimeService(); assert s.info()['world']['size'] == 1\n"
            "rt = kf.connect('inproc'); rt.info()\n"
            "print('mpi4py' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_loop_overlaps_only_with_several_buckets_and_several_ranks(inproc_rt):
    from kernelflow.protocol.jobspec import JobSpec
    from kernelflow.runtime_server.distributed.data_parallel import DataParallelLoop, ReplicaJob
    from kernelflow.runtime_server.training.fit_loop import bind
    from tests.support.models import digits, mlp

    tr, _ = digits(inproc_rt)
    m = mlp(inproc_rt, "ov-rule")
    m.g.sync()
    svc = inproc_rt._transport.service
    spec = JobSpec(graph="ov-rule", train_op=m.train.name, data=tr.name, feed={"x": "x", "y": "y"}, epochs=1,
                   replicas="all")
    b = bind(svc.graphs, svc.datasets, spec)
    for bucket_bytes, buckets in ((4096, 2), (16 << 20, 1)):
        loop = DataParallelLoop(ReplicaJob("j", spec), b, svc.world, None, bucket_bytes)
        loop._plans()
        assert len(loop.reducer.buckets) == buckets
        assert loop.overlap is False  # one rank: nothing to overlap, the plan runs plainly
        assert loop._facts()["buckets"] == loop.reducer.signature()
