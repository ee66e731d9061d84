"""The codec's and the RPC parser's fast paths give the same results and the same refusals
as the general paths: one-message decoding, cached array headers, the request/response
shortcut of parse_message."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from kernelflow.errors import ProtocolError, ResourceExhaustedError
from kernelflow.protocol import codec
from kernelflow.protocol.codec import EXT_NDARRAY, EXT_NPSCALAR, MessageReader, decode, encode
from kernelflow.protocol.rpc import Request, Response, parse_message, request, response


def _join(frames) -> bytes:
    return b"".join(bytes(f) for f in frames)


def test_feed_messages_one_whole_message_decoded_without_buffering():
    r = MessageReader()
    msgs = list(r.feed_messages(_join(request(7, "graph.run", ["g", 3, [], ["v:0"], [], []]))))
    assert msgs == [[0, 7, "graph.run", ["g", 3, [], ["v:0"], [], []]]]
    assert r.pending_bytes == 0


def test_feed_messages_two_messages_in_one_read_both_in_order():
    r = MessageReader()
    data = _join(request(1, "info", [])) + _join(request(2, "graph.list", []))
    assert [m[1] for m in r.feed_messages(data)] == [1, 2]
    assert r.pending_bytes == 0


def test_feed_messages_message_and_a_half_keeps_the_rest():
    r = MessageReader()
    first, second = _join(request(1, "info", [])), _join(response(2, None, np.arange(5, dtype="int16")))
    assert list(r.feed_messages(first + second[:4])) == [[0, 1, "info", []]]
    assert r.pending_bytes == 4
    (msg,) = list(r.feed_messages(second[4:]))
    assert msg[:3] == [1, 2, None]
    np.testing.assert_array_equal(msg[3], np.arange(5, dtype="int16"))
    assert msg[3].dtype == np.int16 and msg[3].flags.writeable
    assert r.pending_bytes == 0


def test_feed_messages_garbage_raises_protocol_error_when_iterated():
    r = MessageReader()
    msgs = r.feed_messages(b"\xc1\x00\x01")  # calling never raises; iterating reports the bad bytes
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        list(msgs)


def test_feed_messages_good_then_bad_yields_good_first():
    r = MessageReader()
    it = r.feed_messages(_join(request(1, "info", [])) + b"\xc1")
    assert next(it) == [0, 1, "info", []]
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        next(it)


def test_feed_messages_deep_nesting_refused_on_fast_path():
    deep: list = []
    for _ in range(codec.MAX_DEPTH + 5):
        deep = [deep]
    r = MessageReader()
    with pytest.raises(ProtocolError, match="nests deeper"):
        list(r.feed_messages(msgpack.packb(deep)))


def test_feed_messages_short_deep_message_refused_with_small_max_depth():
    r = MessageReader(max_depth=3)
    with pytest.raises(ProtocolError, match="nests deeper than 3"):
        list(r.feed_messages(msgpack.packb([[[[1]]]])))
    assert list(MessageReader(max_depth=3).feed_messages(msgpack.packb([[[1]]]))) == [[[[1]]]]


def test_feed_messages_short_message_with_timestamp_refused():
    msg = msgpack.packb([0, 1, "x", [msgpack.Timestamp(1, 0)]], datetime=False)
    with pytest.raises(ProtocolError, match="timestamp"):
        list(MessageReader().feed_messages(msg))


def test_feed_messages_over_limit_raises_resource_exhausted():
    r = MessageReader(max_message_bytes=100)
    with pytest.raises(ResourceExhaustedError, match="over the limit of 100"):
        list(r.feed_messages(msgpack.packb(["x" * 200])))


def test_cached_array_header_still_checks_payload_length():
    good = np.arange(3, dtype="<f4")
    np.testing.assert_array_equal(decode(_join(encode(good))), good)  # caches the ["<f4", [3]] header
    bad = msgpack.packb(msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f4", [3]]) + b"\0" * 8))
    with pytest.raises(ProtocolError, match=r"needs 12 bytes; the ext carries 8"):
        decode(bad)


def test_numpy_scalar_header_with_shape_refused_after_cache():
    decode(_join(encode(np.float32(1.0))))
    bad = msgpack.packb(msgpack.ExtType(EXT_NPSCALAR, msgpack.packb(["<f4", [1]]) + b"\0" * 4))
    with pytest.raises(ProtocolError, match=r"shape must be \[\]"):
        decode(bad)


# (np.float64 is a Python float subclass: msgpack packs it as a plain float, never as this ext.)
@pytest.mark.parametrize("value", [np.float32(1.5), np.int64(-7), np.uint8(200), np.bool_(True), np.complex64(1 - 2j),
                                   np.float16(0.5)])
def test_numpy_scalars_round_trip_exact_type_and_value(value):
    for _ in range(2):  # the second time through the header caches
        out = decode(_join(encode(value)))
        assert type(out) is type(value) and out == value


def test_same_shape_different_dtypes_keep_their_own_headers():
    a, b = np.arange(4, dtype="int32"), np.arange(4, dtype=">f8")
    for _ in range(2):
        out_a, out_b = decode(_join(encode([a, b])))
        assert out_a.dtype == np.dtype("int32") and out_b.dtype == np.dtype(">f8")
        np.testing.assert_array_equal(out_a, a)
        np.testing.assert_array_equal(out_b, b)


def test_array_with_big_dims_uses_general_header_path():
    arr = np.zeros((300, 2), "uint8")  # a dim >= 128 is not a one-byte int in the header
    assert codec._short_header(codec._array_header(arr)) is None
    np.testing.assert_array_equal(decode(_join(encode(arr))), arr)


def test_parse_message_fast_path_builds_request_and_response():
    assert parse_message([0, 3, "info", []]) == Request(3, "info", [])
    assert parse_message([1, 3, None, 1.5]) == Response(3, None, 1.5)
    assert parse_message([1, None, {"type": "ProtocolError"}, None]) == Response(None, {"type": "ProtocolError"}, None)


@pytest.mark.parametrize("msg,match", [
    ([True, 1, "info", []], "not a msgpack-RPC message"),
    ([0, True, "info", []], "msgid must be an unsigned 32-bit int"),
    ([0, 1 << 32, "info", []], "msgid must be an unsigned 32-bit int"),
    ([0, -1, "info", []], "msgid must be an unsigned 32-bit int"),
    ([1, -1, None, None], "response msgid must be an unsigned 32-bit int"),
])
def test_parse_message_fast_path_refuses_what_general_path_refuses(msg, match):
    with pytest.raises(ProtocolError, match=match):
        parse_message(msg)
