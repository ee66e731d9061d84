"""The ndarray codec: round trips, frames, zero-copy paths and refusal of bad bytes."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from kernelflow.errors import InvalidArgumentError, ProtocolError, ResourceExhaustedError
from kernelflow.protocol import codec
from kernelflow.protocol.codec import EXT_NDARRAY, INLINE_ARRAY_BYTES, MessageReader, decode, encode


def _join(frames) -> bytes:
    return b"".join(bytes(f) for f in frames)


def _third_party_hook(code, data):
    """What a plain msgpack client does with ext type 1 (see docs/protocol.md)."""
    assert code == EXT_NDARRAY
    u = msgpack.Unpacker()
    u.feed(data)
    dtype, shape = u.unpack()
    return np.frombuffer(data[u.tell():], dtype=dtype).reshape(shape)


ARRAYS = {
    "0d": lambda: np.array(2.5, "float32"),
    "empty": lambda: np.zeros((0, 3), "float64"),
    "non_contiguous": lambda: np.arange(24, dtype="int32").reshape(4, 6)[:, ::2],
    "fortran": lambda: np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "zero_strided": lambda: np.broadcast_to(np.arange(3, dtype="int64"), (5, 3)),
    "big_endian": lambda: np.arange(6, dtype=">f8").reshape(2, 3),
    "bool": lambda: np.array([[True, False], [False, True]]),
    "float16": lambda: np.array([1.5, -2.25, 65504.0], "float16"),
    "uint8": lambda: np.arange(256, dtype="uint8"),
    "complex64": lambda: np.array([1 + 2j, -3j], "complex64"),
}


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_encode_decode_array_round_trip_keeps_dtype_shape_values(kind):
    a = ARRAYS[kind]()
    frames = encode({"a": a, "rest": [1, "x"]})
    assert len(frames) == 1  # small arrays are inlined
    out = decode(_join(frames))
    got = out["a"]
    assert isinstance(got, np.ndarray)
    assert got.dtype == a.dtype and got.dtype.str == a.dtype.str
    assert got.shape == a.shape
    np.testing.assert_array_equal(got, a)
    assert got.flags.writeable and got.flags.c_contiguous
    assert out["rest"] == [1, "x"]


@pytest.mark.parametrize("kind", list(ARRAYS))
def test_third_party_msgpack_decodes_our_arrays(kind):
    a = ARRAYS[kind]()
    got = msgpack.unpackb(_join(encode([a])), ext_hook=_third_party_hook)[0]
    assert got.dtype == a.dtype and got.shape == a.shape
    np.testing.assert_array_equal(got, a)


def test_numpy_scalar_round_trip_stays_numpy_scalar():
    out = decode(_join(encode([np.float32(1.5), np.int64(-3), np.bool_(True)])))
    assert [type(x) for x in out] == [np.float32, np.int64, np.bool_]
    assert out == [1.5, -3, True]


def test_encode_big_array_is_its_own_uncopied_frame():
    a = np.arange(INLINE_ARRAY_BYTES // 4 * 3, dtype="float32").reshape(3, -1)
    frames = encode([0, 7, "m", [a, "after"]])
    assert len(frames) == 3
    assert isinstance(frames[1], memoryview) and np.shares_memory(np.asarray(frames[1]), a)
    assert len(frames[1]) == a.nbytes
    msg = decode(_join(frames))
    np.testing.assert_array_equal(msg[3][0], a)
    assert msg[3][1] == "after"
    assert msgpack.unpackb(_join(frames), ext_hook=_third_party_hook)[3][0].shape == a.shape


def test_encode_two_big_arrays_gives_five_frames():
    a = np.ones(INLINE_ARRAY_BYTES, "uint8")
    b = np.zeros((INLINE_ARRAY_BYTES // 8, 2), "float64")
    frames = encode({"a": a, "b": b})
    assert len(frames) == 5
    out = decode(_join(frames))
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)


@pytest.mark.parametrize("value", [object(), {1, 2}, np.array([object()]), np.zeros(2, "datetime64[s]")],
                         ids=["object", "set", "object_array", "datetime_array"])
def test_encode_unsupported_value_raises(value):
    with pytest.raises(InvalidArgumentError, match="encode: "):
        encode([value])


def _feed_in_chunks(reader: MessageReader, data: bytes, chunk: int) -> list:
    out, i = [], 0
    while i < len(data):
        target = reader.want_into()
        if target is not None:
            n = min(len(target), chunk, len(data) - i)
            target[:n] = data[i:i + n]
            reader.filled(n)
        else:
            n = min(chunk, len(data) - i)
            reader.feed(data[i:i + n])
        i += n
        out += list(reader.messages())
    return out


@pytest.mark.parametrize("chunk", [1, 1000, 65536, 1 << 20])
def test_reader_stream_of_messages_in_chunks_decodes_each(chunk):
    rng = np.random.default_rng(0)
    big = rng.standard_normal((300, 500)).astype("float32")  # 600 kB: the incremental path
    msgs = [[0, 1, "graph.list", []], [0, 2, "graph.run", ["g", 0, [], ["x"], ["y"], [big]]],
            [2, "note", [{"k": np.arange(3)}]]]
    data = b"".join(_join(encode(m)) for m in msgs)
    if chunk == 1:
        data = _join(encode(msgs[0])) + _join(encode([1, 3, None, big[:40]]))  # keep byte-at-a-time short
        msgs = [msgs[0], [1, 3, None, big[:40]]]
    out = _feed_in_chunks(MessageReader(), data, chunk)
    assert len(out) == len(msgs)
    assert out[0] == msgs[0]
    np.testing.assert_array_equal(out[1][3] if chunk == 1 else out[1][3][5][0], big[:40] if chunk == 1 else big)


def test_reader_big_array_is_received_into_its_final_buffer():
    a = np.arange(1 << 20, dtype="float64")  # 8 MiB
    data = _join(encode([0, 1, "m", [a]]))
    r = MessageReader()
    r.feed(data[:100_000])
    assert list(r.messages()) == []
    target = r.want_into()
    assert target is not None and len(target) == len(data) - 100_000
    n = len(target)
    target[:] = data[100_000:100_000 + n]
    r.filled(n)
    assert r.want_into() is None
    (msg,) = list(r.messages())
    got = msg[3][0]
    assert np.shares_memory(np.frombuffer(target.obj, "uint8"), got)
    np.testing.assert_array_equal(got, a)
    assert r.pending_bytes == 0


def test_decode_unknown_ext_code_raises_protocol_error():
    data = msgpack.packb([msgpack.ExtType(42, b"abc")])
    with pytest.raises(ProtocolError, match="unknown msgpack ext type 42"):
        decode(data)


def test_decode_timestamp_ext_raises_protocol_error():
    with pytest.raises(ProtocolError, match="ext type -1"):
        decode(msgpack.packb([msgpack.Timestamp(1, 0)]))


@pytest.mark.parametrize("header,payload,match", [
    (["|O", [1]], b"\0" * 8, "unsupported dtype '|O'"),
    (["<f4,<i4", [1]], b"\0" * 8, "unsupported dtype"),
    (["<f4", [3]], b"\0" * 8, r"needs 12 bytes; the ext carries 8"),
    (["<f4", [-1]], b"", "non-negative"),
    (["<f4"], b"", r"\[dtype_str, shape\]"),
])
def test_decode_bad_array_header_raises_protocol_error(header, payload, match):
    data = msgpack.packb([msgpack.ExtType(EXT_NDARRAY, msgpack.packb(header) + payload)])
    with pytest.raises(ProtocolError, match=match):
        decode(data)


def test_decode_garbage_raises_protocol_error():
    with pytest.raises(ProtocolError, match="malformed msgpack"):
        decode(b"\xc1\x00\x01")


def test_decode_integer_map_key_raises_protocol_error():
    with pytest.raises(ProtocolError):
        decode(msgpack.packb({1: "a"}))


def _nested(depth: int) -> bytes:
    return b"\x91" * (depth - 1) + b"\x90"


def test_decode_deep_nesting_raises_protocol_error():
    with pytest.raises(ProtocolError, match="deeper than 64"):
        decode(_nested(codec.MAX_DEPTH + 1))
    assert decode(_nested(codec.MAX_DEPTH)) is not None


def test_reader_deep_nesting_on_incremental_path_raises_protocol_error():
    pad = msgpack.packb("x" * 100_000)
    data = b"\x92" + pad + _nested(codec.MAX_DEPTH + 5)
    r = MessageReader()
    r.feed(data[:70_000])
    assert list(r.messages()) == []  # now on the incremental path
    r.feed(data[70_000:])
    with pytest.raises(ProtocolError, match="deeper than"):
        list(r.messages())


def test_reader_oversized_array_raises_before_reading_payload():
    a = np.zeros(1 << 20, "uint8")
    data = _join(encode([0, 1, "m", [a]]))
    r = MessageReader(max_message_bytes=100_000)
    r.feed(data[:70_000])
    with pytest.raises(ResourceExhaustedError, match="over the limit of 100000 bytes"):
        list(r.messages())
    assert r.want_into() is None


def test_reader_oversized_small_message_raises():
    r = MessageReader(max_message_bytes=2000)
    r.feed(msgpack.packb(["x" * 5000]))
    with pytest.raises(ResourceExhaustedError, match="over the limit"):
        list(r.messages())


def test_reader_huge_declared_array_length_waits_without_allocating():
    r = MessageReader()
    r.feed(b"\xdd\xff\xff\xff\xff")  # array32 of 4 billion elements, no elements sent
    assert list(r.messages()) == []
    assert r.pending_bytes == 5


# ----------------------------------------------------------------- issue #15: decoding cost bounds
def test_reader_slices_a_message_of_many_values_and_resumes_to_the_same_value():
    msg = [0, 1, "graph.list", [None, 1, "a", [2.5, {"k": b"v"}]] * 30_000]
    data = msgpack.packb(msg)
    r = MessageReader(slice_values=1000)
    got, pauses = [], 0
    for i in range(0, len(data), 1 << 16):  # arrives in 64 KiB pieces, as from a socket
        r.feed(data[i:i + (1 << 16)])
        got += list(r.messages())
        while r.paused:
            pauses += 1
            got += list(r.messages())
    assert got == [msg] and r.pending_bytes == 0
    assert pauses >= len(msg[3]) * 3 // 1000 // 2  # several slices, not one long call


def test_reader_without_slicing_never_pauses():
    data = msgpack.packb([None] * 200_000)
    r = MessageReader()
    r.feed(data[:100_000])
    assert list(r.messages()) == [] and not r.paused
    r.feed(data[100_000:])
    assert list(r.messages()) == [[None] * 200_000]


def test_reader_refuses_a_message_over_the_value_limit():
    r = MessageReader(max_message_elements=50_000)
    data = msgpack.packb([None] * 100_000)
    r.feed(data[:70_000])  # a partial message over 64 KiB: decoded incrementally, values counted
    with pytest.raises(ResourceExhaustedError, match="more than 50000 values"):
        list(r.messages())
