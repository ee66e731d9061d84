"""Resident datasets (issue #4): chunked upload, info/list/re-attach/delete, splits as views
without copies, refusals (lengths, dtypes, names), persistence across a server restart.

In-process runtimes for the unit tests; real `kernelflow serve` subprocesses for the wire
and the state dir.
"""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from tests.support.server import ServerProcess


def _arrays(n: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 3)).astype("float32"), "y": rng.integers(0, 5, n),
            "id": np.arange(n, dtype=np.int64)}


def _counting(rt: kf.Runtime) -> dict[str, int]:
    """Count the calls of each method going through ``rt``."""
    counts: dict[str, int] = {}
    call = rt.call

    def counted(method, params):
        counts[method] = counts.get(method, 0) + 1
        return call(method, params)

    rt.call = counted
    return counts


def _store(rt: kf.Runtime):
    return rt._transport.service.datasets


# ----------------------------------------------------------------- upload, info, list, re-attach
def test_dataset_upload_info_list_reattach_delete_inproc():
    rt = kf.connect("inproc")
    a = _arrays()
    ds = rt.dataset("toy", a)
    info = ds.info()
    assert info["length"] == 100 and info["device"] == "cpu" and info["view_of"] is None
    assert info["arrays"]["x"] == {"dtype": "<f4", "shape": [100, 3], "bytes": 1200}
    assert info["arrays"]["y"]["dtype"] == np.dtype(np.int64).str
    assert info["bytes"] == 1200 + 800 + 800
    assert len(ds) == 100 and ds.arrays == ["x", "y", "id"]
    assert [d["name"] for d in rt.datasets()] == ["toy"]
    again = rt.dataset("toy")
    np.testing.assert_array_equal(again.read("x"), a["x"])
    np.testing.assert_array_equal(again.read("y", 10, 20), a["y"][10:20])
    assert again.read("x").dtype == np.float32
    assert ds.delete() == ["toy"]
    assert rt.datasets() == []
    with pytest.raises(NotFoundError, match="no dataset named 'toy'"):
        rt.dataset("toy")


def test_dataset_upload_is_chunked_and_copied_into_resident_arrays():
    rt = kf.connect("inproc")
    a = _arrays(1000)
    counts = _counting(rt)
    ds = rt.dataset("chunks", a, chunk_bytes=1200)  # 100 rows of x, 150 rows of y and id per chunk
    assert counts["dataset.put"] == 10 + 7 + 7
    assert counts["dataset.begin"] == 1 and counts["dataset.commit"] == 1
    for c in a:
        np.testing.assert_array_equal(ds.read(c), a[c])
    stored = _store(rt).datasets["chunks"].columns["x"]
    assert not np.shares_memory(stored, a["x"])  # the runtime owns its copy
    a["x"][:] = 0
    assert float(np.abs(ds.read("x")).sum()) > 0


def test_dataset_non_contiguous_and_big_endian_arrays_upload_as_native():
    rt = kf.connect("inproc")
    base = np.arange(60, dtype=">f4").reshape(20, 3)
    ds = rt.dataset("odd", {"x": base[:, ::2], "t": np.asfortranarray(base)}, chunk_bytes=24)
    np.testing.assert_array_equal(ds.read("x"), base[:, ::2].astype("float32"))
    np.testing.assert_array_equal(ds.read("t"), base.astype("float32"))
    assert ds.info()["arrays"]["x"]["dtype"] == "<f4"


def test_dataset_progress_bar_shown_when_asked(capsys):
    rt = kf.connect("inproc")
    rt.dataset("bar", _arrays(200), chunk_bytes=400, progress=True)
    assert "upload bar" in capsys.readouterr().err


def test_dataset_same_contents_reattach_without_upload_other_contents_refused_overwrite_replaces():
    rt = kf.connect("inproc")
    a = _arrays()
    rt.dataset("d", a)
    rt.dataset("d").split(0.5)
    counts = _counting(rt)
    same = rt.dataset("d", {k: v.copy() for k, v in a.items()})
    assert counts.get("dataset.put", 0) == 0 and len(same) == 100
    b = _arrays(100, seed=1)
    with pytest.raises(AlreadyExistsError, match=r"dataset 'd' exists with other contents; pass overwrite=True"):
        rt.dataset("d", b)
    replaced = rt.dataset("d", b, overwrite=True)
    np.testing.assert_array_equal(replaced.read("x"), b["x"])
    assert [d["name"] for d in rt.datasets()] == ["d"]  # the splits of the old contents went with it


# ----------------------------------------------------------------- refusals
def test_dataset_arrays_of_different_lengths_refused_naming_them():
    rt = kf.connect("inproc")
    with pytest.raises(InvalidArgumentError,
                       match=r"dataset 'bad': arrays must agree on their first dimension .*got x: 10, y: 9"):
        rt.dataset("bad", {"x": np.zeros((10, 2), "float32"), "y": np.zeros(9, "int64")})
    assert rt.datasets() == []
    assert _store(rt)._uploads == {}


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.array(["a", "b"], dtype=object)}, r"array 'x' has dtype '\|O'; only bool, integer, float"),
    ({"x": np.array(["ab", "cd"])}, r"array 'x' has dtype '<U2'"),
    ({"x": np.float32(3)}, r"array 'x' is a scalar"),
    ({"bad name": np.zeros(3)}, r"array name must be letters, digits"),
])
def test_dataset_bad_arrays_refused(arrays, match):
    rt = kf.connect("inproc")
    with pytest.raises(InvalidArgumentError, match=match):
        rt.dataset("d", arrays)


def test_dataset_bad_name_refused():
    rt = kf.connect("inproc")
    with pytest.raises(InvalidArgumentError, match=r"dataset: name must be letters"):
        rt.dataset("../etc", {"x": np.zeros(3)})


def test_dataset_put_wrong_dtype_or_rows_refused_and_commit_needs_every_row():
    rt = kf.connect("inproc")
    up = rt.call("dataset.begin", ["p", {"x": {"dtype": "<f4", "shape": [4, 2]}}, {}])["upload"]
    with pytest.raises(InvalidArgumentError, match=r"chunk of 'x' is <f8\[2, 2\]; expected <f4\[n, 2\]"):
        rt.call("dataset.put", [up, "x", 0, np.zeros((2, 2))])
    with pytest.raises(InvalidArgumentError, match=r"chunk rows 3:5 of 'x' are outside 0:4"):
        rt.call("dataset.put", [up, "x", 3, np.zeros((2, 2), "float32")])
    rt.call("dataset.put", [up, "x", 0, np.ones((2, 2), "float32")])
    with pytest.raises(kf.errors.FailedPreconditionError, match=r"upload incomplete; 4 rows expected .*x: 2"):
        rt.call("dataset.commit", [up])
    rt.call("dataset.put", [up, "x", 2, np.ones((2, 2), "float32")])
    assert rt.call("dataset.commit", [up])["length"] == 4


def test_dataset_upload_dropped_when_its_connection_closes():
    rt = kf.connect("inproc")
    store = _store(rt)
    rt.call("dataset.begin", ["gone", {"x": {"dtype": "<f4", "shape": [4]}}, {}])
    assert len(store._uploads) == 1
    rt.close()
    assert store._uploads == {}


# ----------------------------------------------------------------- splits
def test_dataset_split_is_a_view_without_copy():
    rt = kf.connect("inproc")
    a = _arrays(1000)
    ds = rt.dataset("all", a)
    train, val = ds.split(0.9, seed=0)
    assert (len(train), len(val)) == (900, 100)
    assert train.name == "all.train" and val.name == "all.val"
    store = _store(rt)
    for part in ("all.train", "all.val"):
        for c in a:
            assert store.datasets[part].columns[c] is store.datasets["all"].columns[c]
    ti = train.info()
    assert ti["view_of"] == "all" and ti["bytes"] == 900 * 8  # its index only
    assert ti["arrays"]["x"]["shape"] == [900, 3]
    ids_t, ids_v = train.read("id"), val.read("id")
    assert len(set(ids_t) | set(ids_v)) == 1000 and not set(ids_t) & set(ids_v)
    assert list(ids_t[:20]) != list(range(20))  # shuffled
    np.testing.assert_array_equal(train.read("x"), a["x"][ids_t])
    np.testing.assert_array_equal(val.read("y", 5, 9), a["y"][ids_v[5:9]])


def test_dataset_split_same_seed_same_rows_and_unshuffled_keeps_order():
    rt = kf.connect("inproc")
    ds = rt.dataset("s", _arrays(50))
    a1, _ = ds.split(0.6, seed=3, names=("a1", "b1"))
    a2, _ = ds.split(0.6, seed=3, names=("a2", "b2"))
    np.testing.assert_array_equal(a1.read("id"), a2.read("id"))
    head, tail = ds.split(0.6, shuffle=False, names=("head", "tail"))
    np.testing.assert_array_equal(head.read("id"), np.arange(30))
    np.testing.assert_array_equal(tail.read("id"), np.arange(30, 50))


def test_dataset_split_of_split_indexes_the_root_and_delete_cascades():
    rt = kf.connect("inproc")
    ds = rt.dataset("r", _arrays(100))
    train, _ = ds.split(0.8, seed=0)
    t2, v2 = train.split(0.5, seed=1)
    assert t2.info()["view_of"] == "r" and len(t2) == 40 and len(v2) == 40
    assert set(t2.read("id")) | set(v2.read("id")) == set(train.read("id"))
    assert sorted(ds.delete()) == sorted(["r", "r.train", "r.val", "r.train.train", "r.train.val"])
    assert rt.datasets() == []


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, 0.001])
def test_dataset_split_fraction_leaving_a_side_empty_refused(fraction):
    rt = kf.connect("inproc")
    ds = rt.dataset("f", _arrays(100))
    with pytest.raises(InvalidArgumentError, match=r"dataset.split: fraction must be in \(0, 1\)"):
        ds.split(fraction)


def test_dataset_split_name_of_an_uploaded_dataset_refused():
    rt = kf.connect("inproc")
    ds = rt.dataset("u", _arrays(10))
    rt.dataset("taken", _arrays(10))
    with pytest.raises(AlreadyExistsError, match="'taken' is an uploaded dataset"):
        ds.split(0.5, names=("taken", "other"))


# ----------------------------------------------------------------- over TCP, and the state dir
def test_dataset_chunked_upload_over_tcp_and_reattach_from_second_client(tmp_path):
    srv = ServerProcess(tmp_path).wait_listening()
    try:
        rt = srv.connect()
        big = np.random.default_rng(0).standard_normal((20_000, 128)).astype("float32")  # 10 MiB
        counts = _counting(rt)
        ds = rt.dataset("big", {"x": big, "y": np.arange(20_000)}, chunk_bytes=1 << 20)
        assert counts["dataset.put"] == 10 + 1
        with srv.connect() as rt2:
            again = rt2.dataset("big")
            np.testing.assert_array_equal(again.read("x", 19_990), big[19_990:])
            assert again.info()["bytes"] == big.nbytes + 20_000 * 8
        np.testing.assert_array_equal(ds.read("x"), big)
        rt.close()
    finally:
        srv.stop()


def test_dataset_and_splits_survive_kill9_with_state_dir(tmp_path):
    state = tmp_path / "state"
    srv = ServerProcess(tmp_path / "a", "--state-dir", str(state)).wait_listening()
    a = _arrays(300)
    try:
        with srv.connect() as rt:
            train, val = rt.dataset("keep", a).split(0.7, seed=5)
            ids = train.read("id")
    finally:
        srv.proc.kill()
        srv.proc.wait(timeout=10)
    srv = ServerProcess(tmp_path / "b", "--state-dir", str(state)).wait_listening()
    try:
        with srv.connect() as rt:
            assert [d["name"] for d in rt.datasets()] == ["keep", "keep.train", "keep.val"]
            np.testing.assert_array_equal(rt.dataset("keep").read("x"), a["x"])
            back = rt.dataset("keep.train")
            assert back.info()["view_of"] == "keep"
            np.testing.assert_array_equal(back.read("id"), ids)
            np.testing.assert_array_equal(back.read("x"), a["x"][ids])
    finally:
        srv.stop()


@pytest.mark.gpu
def test_dataset_resident_on_gpu_when_runtime_default_is_gpu():
    cupy = pytest.importorskip("cupy")
    try:
        rt = kf.connect("inproc", device="gpu:0")
    except kf.errors.FailedPreconditionError:
        pytest.skip("no CUDA GPU")
    a = _arrays(64)
    ds = rt.dataset("g", a)
    assert ds.info()["device"] == "gpu:0"
    assert isinstance(_store(rt).datasets["g"].columns["x"], cupy.ndarray)
    train, _ = ds.split(0.5)
    np.testing.assert_array_equal(train.read("x"), a["x"][train.read("id")])
