"""Names are length-limited (issue #15, the graph-name half of item 10): a name longer than
MAX_NAME_CHARS answers InvalidArgumentError naming the method, the param, the limit and the
length that came, before the method runs: nothing reaches the state dir. Against a real
`kernelflow serve` with a state dir."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.protocol.rpc import MAX_NAME_CHARS
from tests.support.server import ServerProcess

LONG = "n" * (1 << 20)  # 1 MiB: the review used 16 MiB; the limit is what matters


def _files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name != "lock")


@pytest.fixture
def served(tmp_path):
    state = tmp_path / "state"
    srv = ServerProcess(tmp_path, "--state-dir", str(state)).wait_listening()
    try:
        with srv.connect() as rt:
            g = rt.graph("g")
            g.variable(np.ones(3, "float32"), name="w")
            g.sync()
            yield rt, state
    finally:
        srv.stop()


# (method, params, the param that names) -- one of each kind of name
LONG_NAMES = [
    ("graph.open", [LONG], "name"),
    ("graph.get", [LONG, 0], "name"),
    ("graph.save", ["g", LONG], "tag"),
    ("variable.read", ["g", LONG], "var"),
    ("variable.assign", [LONG, "w", 1.0], "name"),
    ("run.cancel", [LONG], "graph"),
    ("dataset.begin", [LONG, {"x": {"dtype": "<f4", "shape": [2]}}], "name"),
    ("dataset.read", ["d", LONG], "column"),
    ("dataset.split", ["d", 0.5, 0, True, ["a", LONG]], "names"),
    ("dataset.put", [LONG, "x", 0, b""], "upload_id"),
    ("job.status", [LONG], "job_id"),
    ("job.delete", [LONG], "job_id"),
    ("model.export", ["g", LONG, {}, {}], "name"),
    ("model.status", [LONG], "name"),
]


@pytest.mark.parametrize("method,params,param", LONG_NAMES, ids=[f"{m}-{p}" for m, _, p in LONG_NAMES])
def test_name_over_the_limit_is_refused_naming_param_limit_and_length(served, method, params, param):
    rt, state = served
    before = _files(state)
    with pytest.raises(kf.errors.InvalidArgumentError) as info:
        rt.call(method, params)
    assert str(info.value) == (f"{method}: param '{param}' is a name of at most {MAX_NAME_CHARS} characters; "
                               f"got one of {len(LONG)} characters")
    assert _files(state) == before
    assert [d["name"] for d in rt.call("graph.list", [])] == ["g"]


def test_name_at_the_limit_is_accepted_and_one_more_is_not(served):
    rt, state = served
    ok = "a" * MAX_NAME_CHARS
    assert rt.call("graph.open", [ok])["created"]
    with pytest.raises(kf.errors.InvalidArgumentError, match=f"got one of {MAX_NAME_CHARS + 1} characters"):
        rt.call("graph.open", [ok + "a"])
    assert sorted(d["name"] for d in rt.call("graph.list", [])) == sorted(["g", ok])


def test_job_spec_names_are_limited_too(served):
    rt, state = served
    before = _files(state)
    spec = {"graph": LONG, "train_op": "t", "data": "d", "feed": {"x": "x"}}
    with pytest.raises(kf.errors.InvalidArgumentError) as info:
        rt.call("job.start", [spec])
    assert str(info.value) == (f"job.start: graph is a name of at most {MAX_NAME_CHARS} characters; got one of "
                               f"{len(LONG)} characters")
    with pytest.raises(kf.errors.InvalidArgumentError, match="job.start: name is a name of at most"):
        rt.call("job.start", [{**spec, "graph": "g", "name": LONG}])
    assert _files(state) == before
    assert rt.call("job.list", []) == []
