"""Typed parameters (issue #15 item 4): a wrong-typed param answers InvalidArgumentError naming
the method, the param, its type and what came; nothing changes; the table's types match the docs."""

from __future__ import annotations

import numpy as np
import pytest

import kernelflow as kf
from kernelflow.runtime_server.methods import Method, MethodTable
from kernelflow.runtime_server.service import RuntimeService


@pytest.fixture
def svc():
    s = RuntimeService()
    g = s.call("graph.open", ["g"])
    assert g["created"]
    yield s
    s.shutdown()


# (method, params, param named, expected type text, what came) -- the kinds issue #15 lists
BAD_CALLS = [
    ("graph.get", ["g", "0"], "since", "int", "string '0'"),
    ("variable.read", ["g", ["w"]], "var", "string", "array of 1"),
    ("variable.read", ["g", {"w": 1}], "var", "string", "map of 1"),
    ("dataset.read", [["d"], "x"], "name", "string", "array of 1"),
    ("dataset.read", ["d", {"x": 1}], "column", "string", "map of 1"),
    ("graph.extend", ["g", 0, {"name": "x"}], "nodes", "array of map", "map of 1"),
    ("graph.extend", ["g", 0, [1, 2]], "nodes", "array of map", "array of 2"),
    ("graph.run", ["g", 0, [], "y", [], []], "fetches", "array of string", "string 'y'"),
    ("graph.run", ["g", 0, [], [1], [], []], "fetches", "array of string", "array of 1"),
    ("graph.run", ["g", 0, [], [], [None], [1]], "feed_names", "array of string", "array of 1"),
    ("tensor.summary", ["g", 0, [], 5, [], []], "tensor", "string", "int 5"),
    ("variable.assign", [1.5, "w", 1.0], "name", "string", "float 1.5"),
    ("graph.open", ["h", "seed"], "seed", "int", "string 'seed'"),
    ("graph.open", ["h", True], "seed", "int", "bool True"),
    ("dataset.split", ["d", "half"], "fraction", "float", "string 'half'"),
    ("job.records", ["j", [0]], "since", "int", "array of 1"),
    ("model.predict", ["m", "1", {}], "version", "int | nil", "string '1'"),
    ("graph.save", ["g", 3], "tag", "string | nil", "int 3"),
    ("dataset.begin", ["d", [1, 2]], "columns", "map", "array of 2"),
]


@pytest.mark.parametrize("method,params,param,expected,came", BAD_CALLS, ids=[f"{c[0]}-{c[2]}" for c in BAD_CALLS])
def test_wrong_typed_param_is_invalid_argument_naming_method_param_and_value(svc, method, params, param, expected,
                                                                              came):
    before = svc.call("graph.list", [])
    with pytest.raises(kf.errors.InvalidArgumentError) as info:
        svc.call(method, params)
    assert str(info.value) == f"{method}: param '{param}' must be {expected}; got {came}"
    assert svc.call("graph.list", []) == before
    assert "h" not in svc.graphs.graphs


def test_every_method_param_has_a_declared_wire_type():
    s = RuntimeService()
    try:
        for m in s.methods.entries():
            names = [p.name for p in m.signature.parameters.values()]
            assert [n for n, _ in m.param_types] == names, m.name
            untyped = [n for n, t in m.param_types if t.check is None]
            # only values that are any msgpack value by design stay untyped
            assert set(untyped) <= {"value", "chunk", "feed_values"}, (m.name, untyped)
    finally:
        s.shutdown()


def test_int_param_accepts_numpy_int_and_float_param_accepts_int(svc):
    assert svc.call("graph.get", ["g", np.int64(0)])["name"] == "g"
    m = Method("t.f", lambda x: x * 2, types={"x": float})
    assert MethodTable([m]).call("t.f", [3]) == 6


def test_types_for_unknown_param_refused_at_table_build():
    with pytest.raises(ValueError, match="unknown params"):
        Method("t.f", lambda x: x, types={"y": int})


def test_dataset_begin_huge_shape_is_resource_exhausted_not_internal(svc):
    # Issue #15 item 5: numpy's "array is too big" ValueError used to surface as InternalError.
    with pytest.raises(kf.errors.ResourceExhaustedError, match=r"dataset 'd': cannot allocate \d+ bytes"):
        svc.call("dataset.begin", ["d", {"x": {"dtype": "<f4", "shape": [2**62]}}])
    assert svc.call("dataset.list", []) == []
