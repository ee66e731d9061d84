"""Hypothesis fuzz of the wire decoder and of every RPC method's parameters (issue #15; bounded
to a few seconds; bench/fuzz.py is the long run): no input gets anything but a decoded value or
a typed error, no method answers InternalError, and a refused call changes nothing."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernelflow.errors import InternalError, KernelflowError
from kernelflow.protocol.codec import MessageReader
from kernelflow.runtime_server.service import RuntimeService

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                    st.text(max_size=12), st.binary(max_size=12),
                    st.sampled_from(["g", "w", "d", "", "latest", "x\ny"]),
                    st.builds(lambda n, dt: np.arange(n).astype(dt), st.integers(0, 5),
                              st.sampled_from(["<f4", "<i8", "|b1"])))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)


@pytest.fixture(scope="module")
def svc():
    s = RuntimeService()
    s.call("graph.open", ["g"])
    s.call("graph.extend", ["g", 0, [{"name": "w", "op": "variable", "inputs": [],
                                      "attrs": {"initial": np.ones(3, "float32")}}]])
    yield s
    s.shutdown()


def _state(s: RuntimeService) -> tuple:
    return (tuple(sorted((x.name, x.graph.version, tuple(sorted((k, np.asarray(v).tobytes())
                                                                for k, v in x.variables.items())))
                         for x in s.graphs.sessions())),
            tuple(sorted(s.datasets.datasets)), tuple(sorted(s.jobs.jobs)))


@SETTINGS
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(1, 50), max_size=8), sliced=st.booleans())
def test_decoder_random_bytes_decode_or_raise_typed(data, cuts, sliced):
    r = MessageReader(max_message_bytes=1 << 16, slice_values=5 if sliced else None)
    pos = 0
    try:
        for c in [*cuts, len(data)]:
            target = r.want_into()
            if target is not None:
                n = min(len(target), len(data) - pos)
                target[:n] = data[pos:pos + n]
                r.filled(n)
            else:
                n = c
                r.feed(data[pos:pos + n])
            pos += n
            list(r.messages())
            while r.paused:
                list(r.messages())
    except KernelflowError as e:
        assert not isinstance(e, InternalError)


@settings(SETTINGS, max_examples=120)
@given(msg=values, flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3))
def test_decoder_mutated_messages_decode_or_raise_typed(msg, flips):
    data = bytearray(msgpack.packb([0, 1, "graph.run", [msg]], default=lambda a: a.tolist()))
    for at, b in flips:
        data[at % len(data)] = b
    r = MessageReader(max_message_bytes=1 << 16)
    try:
        r.feed(bytes(data))
        list(r.messages())
    except KernelflowError as e:
        assert not isinstance(e, InternalError)


@SETTINGS
@given(pick=st.integers(0, 10_000), params=st.lists(values, max_size=9))
def test_every_method_random_params_typed_error_and_no_state_change(svc, pick, params):
    names = [n for n in svc.methods if n != "job.start"]  # a valid random spec would start training
    name = names[pick % len(names)]
    before = _state(svc)
    try:
        svc.call(name, params)
    except InternalError as e:  # an unexpected exception inside the method: a bug
        raise AssertionError(f"{name}{params!r:.300} -> {e}") from e
    except KernelflowError:
        assert _state(svc) == before, f"refused {name}{params!r:.300} changed the state"
    if "g" not in svc.graphs.graphs:  # a random graph.delete may hit the fixture's graph
        svc.call("graph.open", ["g"])
