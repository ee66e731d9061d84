"""The one RPC method table: it names every method of docs/protocol.md, and it checks arity by signature."""

from __future__ import annotations

import pathlib
import re

import pytest

import kernelflow as kf
from kernelflow.runtime_server.methods import TRANSPORT_METHODS, Method, MethodTable
from kernelflow.runtime_server.service import RuntimeService

PROTOCOL_MD = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_method_table_names_every_documented_method_once():
    documented = set(re.findall(r"^\| `([a-z]+(?:\.[a-z_]+)?)` \| `\[", PROTOCOL_MD.read_text(), re.M))
    svc = RuntimeService()
    try:
        names = svc.methods.names()
        assert len(names) == len(set(names))
        assert set(names) == documented, (sorted(set(names) - documented), sorted(documented - set(names)))
        assert set(TRANSPORT_METHODS) <= set(names)
        assert svc.info()["methods"] == names
    finally:
        svc.shutdown()


def test_method_wrong_param_count_names_method_and_params():
    svc = RuntimeService()
    try:
        with pytest.raises(kf.errors.InvalidArgumentError, match=r"graph.open: wrong number of params: it takes "
                                                                 r"\[name, seed\?\]; got 3"):
            svc.call("graph.open", ["g", 1, 2])
        with pytest.raises(kf.errors.InvalidArgumentError, match=r"graph.open: params must be an array; got dict"):
            svc.call("graph.open", {"name": "g"})
        with pytest.raises(kf.errors.NotFoundError, match=r"unknown method 'graph.opn'"):
            svc.call("graph.opn", [])
        assert svc.graphs.graphs == {}  # nothing was created by the refused calls
    finally:
        svc.shutdown()


def test_method_type_error_inside_method_is_not_an_argument_error():
    def buggy(a):
        return None + a  # a bug in the method itself, not in the caller's params

    table = MethodTable([Method("test.buggy", buggy)])
    with pytest.raises(TypeError):
        table.call("test.buggy", [1])
    with pytest.raises(kf.errors.InvalidArgumentError, match="test.buggy: wrong number of params"):
        table.call("test.buggy", [1, 2])


def test_method_table_refuses_a_name_twice():
    with pytest.raises(ValueError, match="listed twice"):
        MethodTable([Method("a.b", lambda: 1), Method("a.b", lambda: 2)])
    with pytest.raises(ValueError, match="listed twice"):
        MethodTable([Method("auth", lambda: 1)])


def test_method_peer_argument_not_counted_as_param():
    seen = []

    def sub(x, *, peer):
        seen.append((x, peer))
        return x

    m = Method("t.sub", sub, needs_peer=True)
    assert m.describe() == "[x]"
    assert m.call([3], peer="P") == 3
    assert seen == [(3, "P")]
