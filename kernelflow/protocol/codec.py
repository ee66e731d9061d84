"""The msgpack codec: the ext type table, zero-copy encoding of ndarrays and a sans-IO
incremental decoder that receives big array payloads straight into numpy memory.

Everything produced here is standard msgpack: an ndarray is ext type 1 whose payload is a
msgpack header ``[dtype_str, shape]`` followed at once by the array's C-order bytes. The
encoder hands back a list of buffers (frames) whose concatenation is the message; a big
array is its own frame, a memoryview of the array, so it reaches the socket uncopied.
The decoder takes received bytes with `MessageReader.feed` and, while a big ext payload is
in flight, offers the destination ``np.empty`` buffer through `MessageReader.want_into`
so the transport can ``recv_into`` it.

Contents: EXT_NDARRAY, EXT_NPSCALAR, EXT_TYPES, encode, decode, MessageReader.
"""

from __future__ import annotations

import re
import secrets
import struct
import threading
from collections.abc import Generator, Iterator
from typing import Any

import msgpack
import numpy as np

from ..errors import InvalidArgumentError, ProtocolError, ResourceExhaustedError

# The ext type table: the only place ext codes are defined (0-127 are application codes).
EXT_NDARRAY = 1  # [dtype_str, shape] header, then C-order bytes; decodes to a writable ndarray
EXT_NPSCALAR = 2  # the same payload with shape []; decodes to a numpy scalar (np.float32(1.5))
EXT_TYPES = {EXT_NDARRAY: "ndarray", EXT_NPSCALAR: "numpy scalar"}

MAX_DEPTH = 64  # nesting of arrays/maps; real messages stay under ~10
MAX_NDIM = 32
DEFAULT_MAX_MESSAGE_BYTES = 4 << 30
INLINE_ARRAY_BYTES = 64 << 10  # smaller arrays are copied into the message; bigger ones are frames
_FAST_PARTIAL_BYTES = 64 << 10  # a partial message above this is decoded incrementally
DEFAULT_MAX_MESSAGE_ELEMENTS = 1 << 22  # values in one incrementally decoded message (a cost bound)
_MAX_HEADER_BYTES = 512
_DTYPE_RE = re.compile(r"[<>|=]?(b1|[iu][1248]|f[248]|c(8|16))")
# Stands in for a big array while msgpack's C packer packs the rest; the per-process nonce
# makes a collision with real data practically impossible and `encode` checks the count.
_PLACEHOLDER_CODE = 127
_NONCE = secrets.token_bytes(16)
_PLACEHOLDER = msgpack.packb(msgpack.ExtType(_PLACEHOLDER_CODE, _NONCE))


# Packed [dtype_str, shape] headers by (dtype, shape): small results repeat the same few.
_HEADERS_OUT: dict[tuple, bytes] = {}
# Decoded headers by their bytes, for the common short form (see _short_header).
_HEADERS_IN: dict[bytes, tuple[np.dtype, tuple, int, int]] = {}
_HEADER_CACHE_SIZE = 4096


def _array_header(arr: np.ndarray) -> bytes:
    key = (arr.dtype, arr.shape)
    head = _HEADERS_OUT.get(key)
    if head is None:
        head = msgpack.packb([arr.dtype.str, list(arr.shape)])
        if len(_HEADERS_OUT) < _HEADER_CACHE_SIZE:
            _HEADERS_OUT[key] = head
    return head


def _check_dtype(dt: np.dtype) -> None:
    if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
        raise InvalidArgumentError(f"encode: arrays of dtype {dt} cannot travel on the wire; use a bool, integer, "
                                   "float or complex dtype")


def _ext_header(code: int, length: int) -> bytes:
    if length > 0xFFFFFFFF:
        raise ResourceExhaustedError(f"encode: an array of {length} bytes is over msgpack's 4 GiB ext limit; "
                                     "split it")
    return b"\xc9" + struct.pack(">Ib", length, code)


def _ext_type(code: int, data: bytes) -> msgpack.ExtType:
    # msgpack.ExtType() re-checks its arguments in Python (~0.3 us); ours are known good.
    return tuple.__new__(msgpack.ExtType, (code, data))


class _Packing(threading.local):
    """A reusable msgpack Packer per thread (making one per call costs ~13 µs), and the
    arrays one `encode` call set aside as frames, in packing order."""

    def __init__(self) -> None:
        self.big: list[np.ndarray] = []
        self.packer = msgpack.Packer(default=self.default, use_bin_type=True)

    def default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            _check_dtype(obj.dtype)
            # Copies only Fortran-order, strided or broadcast arrays (ascontiguousarray would make 0-d 1-d).
            arr = obj if obj.flags.c_contiguous else obj.copy(order="C")
            if arr.nbytes < INLINE_ARRAY_BYTES:
                return _ext_type(EXT_NDARRAY, _array_header(arr) + arr.tobytes())
            self.big.append(arr)
            return _ext_type(_PLACEHOLDER_CODE, _NONCE)
        if isinstance(obj, np.generic):
            _check_dtype(obj.dtype)
            return _ext_type(EXT_NPSCALAR, _array_header(obj) + obj.tobytes())
        if isinstance(obj, msgpack.ExtType):
            raise InvalidArgumentError(f"encode: raw msgpack ExtType({obj.code}) is not a kernelflow value")
        raise InvalidArgumentError(f"encode: cannot send a value of type {type(obj).__name__}; send numbers, "
                                   "strings, bytes, lists, dicts or numpy arrays")


_PACKING = _Packing()


def encode(obj: Any) -> list[bytes | memoryview]:
    """Pack ``obj`` into msgpack frames: concatenated, they are one standard msgpack message.

    Arrays of at least ``INLINE_ARRAY_BYTES`` become three pieces (the bytes before them
    ending with the ext and array headers, a memoryview of the array's memory, the bytes
    after), so a 64 MiB array is never copied into a ``bytes``.

    Raises:
        InvalidArgumentError: for values msgpack cannot carry (objects, object arrays).
        ResourceExhaustedError: for a single array over 4 GiB.
    """
    p = _PACKING
    p.big = big = []
    try:
        data = p.packer.pack(obj)
    except (TypeError, ValueError, OverflowError) as e:
        p.packer.reset()
        if isinstance(e, InvalidArgumentError):
            raise
        raise InvalidArgumentError(f"encode: {e}") from e
    except BaseException:
        p.packer.reset()
        raise
    finally:
        p.big = []
    if not big:
        return [data]
    if data.count(_PLACEHOLDER) != len(big):
        raise ProtocolError("encode: placeholder collision; this should not happen, please report it")
    frames: list[bytes | memoryview] = []
    pos = 0
    for arr in big:
        at = data.index(_PLACEHOLDER, pos)
        header = _array_header(arr)
        frames.append(data[pos:at] + _ext_header(EXT_NDARRAY, len(header) + arr.nbytes) + header)
        frames.append(memoryview(arr).cast("B"))
        pos = at + len(_PLACEHOLDER)
    frames.append(data[pos:])
    return frames


# ----------------------------------------------------------------- decoding helpers
def _short_header(head: bytes | memoryview) -> bytes | None:
    """The header's bytes when it has the usual short form (a fixstr dtype and at most 15
    dims below 128, each a one-byte int), else None."""
    n = len(head)
    if n < 4 or head[0] != 0x92 or not 0xA0 <= head[1] <= 0xBF:
        return None
    p = 2 + (head[1] & 0x1F)
    if p >= n or not 0x90 <= head[p] <= 0x9F:
        return None
    end = p + 1 + (head[p] & 0x0F)
    if end > n:
        return None
    for i in range(p + 1, end):
        if head[i] >= 0x80:
            return None
    return bytes(head[:end])


def _parse_array_header(head: bytes | memoryview, ext_len: int) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, header length) of an ext 1/2 payload, validated against ``ext_len``."""
    key = _short_header(head)
    if key is not None:
        hit = _HEADERS_IN.get(key)
        if hit is not None and hit[2] + hit[3] == ext_len:
            return hit[0], hit[1], hit[2]
    dt, shape, n = _parse_array_header_slow(head, ext_len)
    if key is not None and len(_HEADERS_IN) < _HEADER_CACHE_SIZE:
        _HEADERS_IN[key] = (dt, shape, n, ext_len - n)
    return dt, shape, n


def _parse_array_header_slow(head: bytes | memoryview, ext_len: int) -> tuple[np.dtype, tuple, int]:
    u = msgpack.Unpacker(raw=False, max_buffer_size=_MAX_HEADER_BYTES)
    u.feed(head[:_MAX_HEADER_BYTES])
    try:
        hdr = u.unpack()
    except msgpack.OutOfData:
        raise ProtocolError("ndarray ext: truncated [dtype, shape] header") from None
    except (ValueError, msgpack.UnpackException) as e:
        raise ProtocolError(f"ndarray ext: bad header: {e}") from None
    if not (isinstance(hdr, list) and len(hdr) == 2 and isinstance(hdr[0], str) and isinstance(hdr[1], list)):
        raise ProtocolError(f"ndarray ext: header must be [dtype_str, shape]; got {hdr!r:.80}")
    dtype_str, shape = hdr
    if not _DTYPE_RE.fullmatch(dtype_str):
        raise ProtocolError(f"ndarray ext: unsupported dtype {dtype_str!r}; expected numpy .str of a bool, "
                            "integer, float or complex type (e.g. '<f4')")
    if len(shape) > MAX_NDIM or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"ndarray ext: shape must be at most {MAX_NDIM} non-negative ints; got {shape!r:.80}")
    dt = np.dtype(dtype_str)
    n = u.tell()
    count = 1
    for d in shape:
        count *= d
    if n + count * dt.itemsize != ext_len:
        raise ProtocolError(f"ndarray ext: {dtype_str}{tuple(shape)} needs {count * dt.itemsize} bytes; "
                            f"the ext carries {ext_len - n}")
    return dt, tuple(shape), n


def _ext_hook(code: int, data: bytes) -> Any:
    if code not in (EXT_NDARRAY, EXT_NPSCALAR):
        raise ProtocolError(f"unknown msgpack ext type {code}; known: {EXT_TYPES}")
    dt, shape, n = _parse_array_header(data, len(data))
    count = (len(data) - n) // dt.itemsize
    if code == EXT_NPSCALAR:
        if shape:
            raise ProtocolError(f"numpy scalar ext: shape must be []; got {list(shape)}")
        return np.frombuffer(data, dtype=dt, count=1, offset=n)[0]  # a scalar owns a copy of its value
    return np.frombuffer(data, dtype=dt, count=count, offset=n).reshape(shape).copy()  # writable, like a local array


def check_nesting(obj: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise ProtocolError when ``obj`` nests deeper than ``max_depth`` or holds a foreign ext value."""
    level, depth = [obj], 0
    while level:  # one pass per nesting level, touching containers only
        depth += 1
        nxt = []
        for o in level:
            for x in (o if type(o) is list else o.values() if type(o) is dict else ()):
                t = type(x)
                if t is list or t is dict:
                    nxt.append(x)
                elif t is msgpack.Timestamp:
                    raise ProtocolError("unknown msgpack ext type -1 (timestamp)")
        if nxt and depth >= max_depth:
            raise ProtocolError(f"message nests deeper than {max_depth} levels")
        level = nxt


def _unpacker(max_bytes: int) -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, strict_map_key=True, ext_hook=_ext_hook, max_buffer_size=max_bytes)


def decode(data: bytes | bytearray | memoryview, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Any:
    """Decode exactly one message from ``data`` (a convenience over `MessageReader`)."""
    r = MessageReader(max_message_bytes)
    r.feed(data)
    msgs = list(r.messages())
    if len(msgs) != 1 or r.pending_bytes:
        raise ProtocolError(f"decode: expected one complete message; got {len(msgs)} and "
                            f"{r.pending_bytes} bytes more")
    return msgs[0]


# ----------------------------------------------------------------- incremental reader
_NEED = object()  # yielded by the slow decoder: more bytes are needed
_PAUSE = object()  # yielded by the slow decoder: a slice of values is done (see slice_values)


class MessageReader:
    """Sans-IO decoder of a stream of msgpack messages.

    Complete small messages are decoded by msgpack's C unpacker. A message still incomplete
    after ``_FAST_PARTIAL_BYTES`` is decoded incrementally; when it reaches a big array it
    allocates the ``np.empty`` result and exposes the unfilled part through `want_into`.

    Args:
        max_message_bytes: the largest message accepted; a bigger one raises
            ResourceExhaustedError before its payload is read.
        max_depth: the deepest nesting accepted (ProtocolError beyond).
        slice_values: decode at most this many values of an incremental message per call of
            `messages`, then stop with `paused` set (None: never pause). A server sets it so one
            peer's message of millions of tiny values cannot hold its IO loop: it calls
            `messages` again on the next loop iteration.
        max_message_elements: the most values one incrementally decoded message may hold
            (ResourceExhaustedError beyond); smaller messages are bounded by their bytes.

    Example:
        >>> r = MessageReader()
        >>> while True:
        ...     target = r.want_into()
        ...     if target is not None:
        ...         r.filled(sock.recv_into(target))
        ...     else:
        ...         r.feed(sock.recv(1 << 18))
        ...     for msg in r.messages(): handle(msg)
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_depth: int = MAX_DEPTH,
                 slice_values: int | None = None, max_message_elements: int = DEFAULT_MAX_MESSAGE_ELEMENTS):
        self.max_message_bytes = int(max_message_bytes)
        self.max_depth = int(max_depth)
        self.slice_values = slice_values
        self.max_message_elements = int(max_message_elements)
        self.paused = False  # stopped after slice_values values; call messages() again
        self._budget = slice_values if slice_values is not None else -1
        self._elements = 0  # values of the current incremental message
        self._buf = bytearray()
        self._pos = 0  # slow decoder's read position in _buf
        self._slow: Generator[Any, None, Any] | None = None
        self._target: memoryview | None = None
        self._msg_start = 0  # bytes of the current slow message consumed before _buf (direct fills)

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a decoded message."""
        return len(self._buf)

    @property
    def held_bytes(self) -> int:
        """Memory held for messages not yet complete: buffered bytes plus the part of the current
        message already consumed (arrays allocated for direct reads included)."""
        return len(self._buf) + self._msg_start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (not while `want_into` offers a buffer)."""
        if self._target is not None:
            raise ProtocolError("feed: a direct read is in progress; fill want_into() first")
        self._buf += data

    def want_into(self) -> memoryview | None:
        """The buffer the next received bytes should go into directly, or None."""
        return self._target

    def filled(self, n: int) -> None:
        """``n`` bytes were written at the start of the `want_into` buffer."""
        assert self._target is not None
        self._target = self._target[n:] if n < len(self._target) else None

    def messages(self) -> Iterator[Any]:
        """An iterator over every message complete so far (iterating raises ProtocolError /
        ResourceExhaustedError at a bad one, after the good ones before it)."""
        buf = self._buf
        if self._slow is None and 0 < len(buf) < _FAST_PARTIAL_BYTES and len(buf) <= self.max_message_bytes:
            obj = self._whole(buf)
            if obj is not _NEED:
                buf.clear()
                return iter((obj,))
        return self._messages()

    def feed_messages(self, data: bytes | bytearray | memoryview) -> Iterator[Any]:
        """`feed` then `messages`; when nothing is pending and ``data`` is one whole small
        message (a request or a response, usually), it is decoded without being buffered."""
        if not self._buf and self._slow is None and 0 < len(data) < _FAST_PARTIAL_BYTES and \
                len(data) <= self.max_message_bytes:
            obj = self._whole(data)
            if obj is not _NEED:
                return iter((obj,))
        self.feed(data)
        return self.messages()

    def _whole(self, data: bytes | bytearray | memoryview) -> Any:
        """``data`` decoded as exactly one message in one C call, or _NEED: anything else
        (several messages, a partial one, bad bytes) takes the general path, which reports it."""
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_ext_hook)
            # A message of n bytes nests at most n deep and a timestamp needs a 0xff type
            # byte: a short message without one needs no walk (the walk costs more than the
            # decoding of a typical request).
            if len(data) > self.max_depth or 0xFF in bytes(data):
                check_nesting(obj, self.max_depth)
        except Exception:
            return _NEED
        return obj

    def _messages(self) -> Iterator[Any]:
        self.paused = False
        if self.slice_values is not None:
            self._budget = self.slice_values
        while True:
            if self._slow is None:
                yield from self._fast()
                if not self._buf or len(self._buf) < _FAST_PARTIAL_BYTES:
                    if len(self._buf) > self.max_message_bytes:
                        self._too_big(len(self._buf))
                    return
                self._pos = 0
                self._msg_start = 0
                self._elements = 0
                self._slow = self._decode_message()
            if self._target is not None:
                return
            try:
                step = next(self._slow)
            except StopIteration as stop:
                self._slow = None
                del self._buf[:self._pos]
                self._pos = 0
                self._msg_start = 0
                yield stop.value
                continue
            if step is _PAUSE:
                self.paused = True
                return
            if step is _NEED:
                return

    def _too_big(self, n: int) -> None:
        raise ResourceExhaustedError(f"message of {n} bytes or more is over the limit of {self.max_message_bytes} "
                                     "bytes (--max-message-bytes)")

    def _fast(self) -> Iterator[Any]:
        if not self._buf:
            return
        u = _unpacker(max(len(self._buf), 1))
        u.feed(self._buf)
        pos = 0
        try:
            while True:
                try:
                    obj = u.unpack()
                except msgpack.OutOfData:
                    break
                end = u.tell()
                if end - pos > self.max_message_bytes:
                    self._too_big(end - pos)
                check_nesting(obj, self.max_depth)
                pos = end
                yield obj
        except (ProtocolError, ResourceExhaustedError):
            raise
        except msgpack.StackError:
            raise ProtocolError("message nests deeper than msgpack's stack limit") from None
        except ValueError as e:
            # Every declared length is capped at the buffered size: a complete message cannot
            # exceed it, so this is an incomplete one (left to the incremental decoder).
            if "exceeds max_" not in str(e):
                raise ProtocolError(f"malformed msgpack: {type(e).__name__}: {e}") from None
        except (TypeError, msgpack.UnpackException, RecursionError) as e:
            raise ProtocolError(f"malformed msgpack: {type(e).__name__}: {e}") from None
        finally:
            del self._buf[:pos]

    # -- the incremental decoder: a generator yielding _NEED until its bytes are there
    def _take(self, n: int) -> Generator[Any, None, bytes]:
        if self._msg_start + self._pos + n > self.max_message_bytes:
            self._too_big(self._msg_start + self._pos + n)
        while len(self._buf) - self._pos < n:
            yield _NEED
        b = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n
        return b

    def _decode_message(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._decode(1))
        except (ProtocolError, ResourceExhaustedError):
            raise
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise ProtocolError(f"malformed msgpack: {type(e).__name__}: {e}") from None

    def _decode(self, depth: int) -> Generator[Any, None, Any]:
        self._elements += 1
        if self._elements > self.max_message_elements:
            raise ResourceExhaustedError(f"message of more than {self.max_message_elements} values is over the "
                                         "limit (--max-message-elements)")
        self._budget -= 1
        if self._budget == 0:  # a slice is done: let the caller serve others first
            yield _PAUSE
            self._budget = self.slice_values if self.slice_values is not None else -1
        b = (yield from self._take(1))[0]
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return (yield from self._map(b & 0x0F, depth))
        if 0x90 <= b <= 0x9F:
            return (yield from self._array(b & 0x0F, depth))
        if 0xA0 <= b <= 0xBF:
            return (yield from self._take(b & 0x1F)).decode()
        if b in _FIXED:
            return _FIXED[b]
        if b in _NUMBERS:
            fmt = _NUMBERS[b]
            return struct.unpack(fmt, (yield from self._take(struct.calcsize(fmt))))[0]
        if b in _SIZED:
            kind, size_fmt = _SIZED[b]
            n = struct.unpack(size_fmt, (yield from self._take(struct.calcsize(size_fmt))))[0]
            if kind == "str":
                return (yield from self._take(n)).decode()
            if kind == "bin":
                return (yield from self._take(n))
            if kind == "array":
                return (yield from self._array(n, depth))
            if kind == "map":
                return (yield from self._map(n, depth))
            code = struct.unpack(">b", (yield from self._take(1)))[0]
            return (yield from self._ext(code, n))
        if 0xD4 <= b <= 0xD8:
            code = struct.unpack(">b", (yield from self._take(1)))[0]
            return (yield from self._ext(code, 1 << (b - 0xD4)))
        raise ProtocolError(f"malformed msgpack: byte 0x{b:02x} starts no value")

    def _array(self, n: int, depth: int) -> Generator[Any, None, list]:
        if depth > self.max_depth:
            raise ProtocolError(f"message nests deeper than {self.max_depth} levels")
        out = []
        for _ in range(n):
            out.append((yield from self._decode(depth + 1)))
        return out

    def _map(self, n: int, depth: int) -> Generator[Any, None, dict]:
        if depth > self.max_depth:
            raise ProtocolError(f"message nests deeper than {self.max_depth} levels")
        out = {}
        for _ in range(n):
            k = yield from self._decode(depth + 1)
            if not isinstance(k, (str, bytes)):
                raise ProtocolError(f"map keys must be strings; got {type(k).__name__}")
            out[k] = yield from self._decode(depth + 1)
        return out

    def _ext(self, code: int, n: int) -> Generator[Any, None, Any]:
        if code not in (EXT_NDARRAY, EXT_NPSCALAR):
            raise ProtocolError(f"unknown msgpack ext type {code}; known: {EXT_TYPES}")
        if n < INLINE_ARRAY_BYTES or code != EXT_NDARRAY:
            return _ext_hook(code, (yield from self._take(n)))
        if self._msg_start + self._pos + n > self.max_message_bytes:
            self._too_big(self._msg_start + self._pos + n)
        while len(self._buf) - self._pos < min(n, _MAX_HEADER_BYTES):
            yield _NEED
        dt, shape, hlen = _parse_array_header(memoryview(self._buf)[self._pos:self._pos + _MAX_HEADER_BYTES], n)
        self._pos += hlen
        arr = np.empty(shape, dtype=dt)
        dest = memoryview(arr.reshape(-1)).cast("B")
        have = min(len(self._buf) - self._pos, len(dest))
        dest[:have] = memoryview(self._buf)[self._pos:self._pos + have]
        self._pos += have
        if have < len(dest):
            # Everything buffered is consumed; the rest of the payload goes straight into arr.
            self._msg_start += self._pos + (len(dest) - have)
            del self._buf[:self._pos]
            self._pos = 0
            self._target = dest[have:]
            yield _NEED
        return arr


_FIXED = {0xC0: None, 0xC2: False, 0xC3: True}
_NUMBERS = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
            0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
_SIZED = {0xC4: ("bin", ">B"), 0xC5: ("bin", ">H"), 0xC6: ("bin", ">I"),
          0xC7: ("ext", ">B"), 0xC8: ("ext", ">H"), 0xC9: ("ext", ">I"),
          0xD9: ("str", ">B"), 0xDA: ("str", ">H"), 0xDB: ("str", ">I"),
          0xDC: ("array", ">H"), 0xDD: ("array", ">I"), 0xDE: ("map", ">H"), 0xDF: ("map", ">I")}
