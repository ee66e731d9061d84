"""The runtime server: `RuntimeService` over msgpack-RPC on a tornado TCP (or TLS) socket.

Each connection authenticates with ``auth [token]`` first, then sends requests; they are
answered in order. Service calls run in a thread pool, off the IO loop, so ``info`` and
other clients' requests are answered while a long run is in flight. Bad bytes or a
malformed message get an error response and, when the stream cannot be trusted any more
(garbage, an oversized message), the connection is dropped; the server goes on serving
everyone else.

tornado's TCPServer accepts connections; connection.py serves them (plain TCP from the
asyncio loop's reader/writer callbacks, TLS through tornado's SSLIOStream) and hands each
message to `RuntimeServer._handle`.

Contents: RuntimeServer, tune_malloc.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tornado.iostream import IOStream, SSLIOStream
from tornado.tcpserver import TCPServer

from ...errors import InvalidArgumentError, KernelflowError, UnauthenticatedError
from ...protocol.codec import DEFAULT_MAX_MESSAGE_BYTES
from ...protocol.rpc import Request, error_to_map, parse_message, response
from ..methods import Method
from ..service import PROTOCOL_VERSION, RuntimeService
from .connection import READ_CHUNK_BYTES, ConnectionState, SocketConnection, StreamConnection

log = logging.getLogger("kernelflow.server")

_NOT_INLINE = object()
# A "timed" method (runs, reads, assigns) whose last call of the same shape took less than this
# runs on the IO loop when its graph is idle: a hop through the thread pool costs ~150 us on a
# small machine, more than a small run itself; 2 ms keeps `info` far inside its 50 ms.
INLINE_BUDGET_S = 0.002


def _array_bytes(params: list) -> int:
    # The decoder makes plain lists and ndarrays, so exact type checks suffice.
    n = 0
    for p in params:
        t = type(p)
        if t is np.ndarray:
            n += p.nbytes
        elif t is list:
            for x in p:
                if type(x) is np.ndarray:
                    n += x.nbytes
    return n


class RuntimeServer(TCPServer):
    """Serves one `RuntimeService` to msgpack-RPC clients.

    Args:
        service: the runtime (graphs, variables, runs).
        token: the secret every connection must present with ``auth``.
        max_message_bytes: the largest request accepted (ResourceExhaustedError beyond, and
            the connection is dropped).
        ssl_context: serve TLS with this context.
        workers: threads running service calls.

    Example:
        >>> server = RuntimeServer(RuntimeService(), token="s3cret")
        >>> server.listen(7070, "127.0.0.1")  # inside the running asyncio loop
        >>> await server.stopped.wait()
    """

    def __init__(self, service: RuntimeService, token: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 ssl_context: ssl.SSLContext | None = None, workers: int = 4):
        if not isinstance(token, str) or not token:
            raise InvalidArgumentError("RuntimeServer: token must be a non-empty string")
        if max_message_bytes < 1024:
            raise InvalidArgumentError(f"RuntimeServer: max_message_bytes must be >= 1024; got {max_message_bytes}")
        # The stream's own limit must fit a whole array read straight into numpy memory.
        super().__init__(ssl_options=ssl_context, max_buffer_size=max_message_bytes + (1 << 20))
        self.service = service
        self.max_message_bytes = int(max_message_bytes)
        self._token = token.encode()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kf-compute")
        self._connections: set[ConnectionState] = set()
        self._chunk = bytearray(READ_CHUNK_BYTES)  # SocketConnection's receive scratch buffer
        self._durations: dict[tuple, tuple[float, int]] = {}  # timing key -> (seconds, request array bytes)
        self.stopped = asyncio.Event()

    def bound_port(self) -> int:
        """The TCP port the server listens on (useful after ``listen(0)``)."""
        for sock in self._sockets.values():
            return sock.getsockname()[1]
        raise RuntimeError("RuntimeServer: not listening")

    def shutdown(self) -> None:
        """Stop accepting connections, close the open ones and set `stopped`."""
        self.stop()
        for conn in list(self._connections):
            conn.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()

    # ----------------------------------------------------------------- connections
    def handle_stream(self, stream: IOStream, address: Any) -> Any:
        try:
            stream.set_nodelay(True)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:  # the peer may already be gone
            pass
        log.debug("connection from %s", address)
        if isinstance(stream, SSLIOStream):
            conn: ConnectionState = StreamConnection(self, stream, address)
            self._connections.add(conn)
            return conn.serve()
        # Plain TCP: the IOStream never reads or writes (so it never registers with the
        # loop); its socket is served from loop callbacks, which costs far less per message.
        self._connections.add(SocketConnection(self, stream.socket, address, self._chunk))
        return None

    def connection_closed(self, conn: ConnectionState) -> None:
        self._connections.discard(conn)
        self.service.peer_closed(conn)
        log.debug("connection from %s closed", conn.address)

    def handle_message(self, conn: ConnectionState, msg: Any) -> bool | asyncio.Future:
        """Answer one message: True/False (answered; False ends the connection), or a future
        resolving to that once a call running in the pool has been answered."""
        try:
            parsed = parse_message(msg)
        except KernelflowError as e:
            msgid = getattr(e, "msgid", None)
            log.warning("bad message from %s: %s", conn.address, e)
            self.reply(conn, msgid, error_to_map(e), None)
            return msgid is not None  # a request we could answer keeps the connection
        if type(parsed) is not Request:
            log.debug("ignoring %s from %s", type(parsed).__name__, conn.address)
            return True
        method, params = parsed.method, parsed.params
        if method == "auth":
            return self._auth(conn, parsed)
        if not conn.is_authenticated:
            err = UnauthenticatedError(f"{method}: authenticate first: the first request must be auth [token]")
            self.reply(conn, parsed.msgid, error_to_map(err), None)
            return True
        if method == "server.shutdown":
            log.info("shutdown requested by %s", conn.address)
            self.reply(conn, parsed.msgid, None, True)
            conn.loop.call_soon(self.shutdown)
            return False
        try:
            entry = self.service.methods.lookup(method)
            if entry.policy == "loop":
                result = entry.call(params, conn)
                if method == "info":
                    result = {**result, "max_message_bytes": self.max_message_bytes}
            else:
                result = self._call_inline(entry, params, conn) if entry.policy == "timed" else _NOT_INLINE
                if result is _NOT_INLINE:
                    return self._call_in_pool(conn, entry, parsed)
        except Exception as e:
            self._failed(conn, parsed, e)
            return True
        self.reply(conn, parsed.msgid, None, result)
        return True

    def _call_in_pool(self, conn: ConnectionState, entry: Method, req: Request) -> asyncio.Future:
        loop = conn.loop
        answered = loop.create_future()

        def finish(fut: asyncio.Future) -> None:
            if fut.cancelled():  # the server is shutting down
                answered.set_result(False)
                return
            e = fut.exception()
            if e is not None:
                self._failed(conn, req, e)
            else:
                self.reply(conn, req.msgid, None, fut.result())
            answered.set_result(True)

        loop.run_in_executor(self._pool, self._timed_call, entry, req.params, conn).add_done_callback(finish)
        return answered

    def _failed(self, conn: ConnectionState, req: Request, e: BaseException) -> None:
        level = logging.ERROR if not isinstance(e, KernelflowError) else logging.DEBUG
        log.log(level, "%s from %s failed: %s", req.method, conn.address, e,
                exc_info=e if level == logging.ERROR else None)
        self.reply(conn, req.msgid, error_to_map(e), None)

    def _timed_call(self, entry: Method, params: list, peer: Any = None) -> Any:
        key = entry.timing_key(params) if entry.timing_key is not None else None
        if key is None:
            return entry.call(params, peer)
        t0 = time.perf_counter()
        result = entry.call(params, peer)
        if len(self._durations) > 10_000:  # many one-off signatures: forget them, relearn the hot ones
            self._durations.clear()
        self._durations[key] = (time.perf_counter() - t0, _array_bytes(params))
        return result

    def _call_inline(self, entry: Method, params: list, peer: Any = None) -> Any:
        """Run a call known to be quick on the IO loop if its graph is idle, else `_NOT_INLINE`."""
        key = entry.timing_key(params) if entry.timing_key is not None else None
        last = self._durations.get(key) if key is not None else None
        if last is None or last[0] > INLINE_BUDGET_S:
            return _NOT_INLINE
        nbytes = _array_bytes(params)
        if nbytes > 2 * last[1] + (64 << 10):
            return _NOT_INLINE
        lock = entry.graph_lock(params) if entry.graph_lock is not None else None
        if lock is None or not lock.acquire(blocking=False):
            return _NOT_INLINE  # never wait for another run's lock on the IO loop
        try:
            t0 = time.perf_counter()
            result = entry.call(params, peer)
            self._durations[key] = (time.perf_counter() - t0, nbytes)  # an existing key: the table doesn't grow
            return result
        finally:
            lock.release()

    def _auth(self, conn: ConnectionState, req: Request) -> bool:
        given = req.params[0] if len(req.params) == 1 else None
        ok = isinstance(given, str) and hmac.compare_digest(given.encode(), self._token)
        if not ok:
            log.warning("wrong token from %s; closing the connection", conn.address)
            err = UnauthenticatedError("auth: wrong token; find it in the URL `kernelflow serve` printed or in its "
                                       "runtime file")
            self.reply(conn, req.msgid, error_to_map(err), None)
            return False
        conn.is_authenticated = True
        self.reply(conn, req.msgid, None, {"protocol": PROTOCOL_VERSION, "max_message_bytes": self.max_message_bytes})
        return True

    def reply(self, conn: ConnectionState, msgid: int | None, error: dict | None, result: Any) -> None:
        try:
            frames = response(msgid, error, result)
        except KernelflowError as e:
            log.error("cannot encode the result of request %s: %s", msgid, e)
            frames = response(msgid, error_to_map(e), None)
        conn.send(frames)


def tune_malloc() -> bool:
    """Keep freed heap memory in the process (glibc only); returns whether it applied.

    Compute runs on pool threads, whose glibc arenas otherwise hand large temporaries back to
    the OS after each step and fault them in again on the next (~650 page faults per MLP step,
    ~20% of its time). Arrays up to 32 MiB (glibc's limit for this setting) come from the heap
    and stay mapped. ``KERNELFLOW_MALLOC_TUNING=0`` turns this off.
    """
    import ctypes
    import ctypes.util
    import os
    import sys

    if os.environ.get("KERNELFLOW_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1
    ok = mallopt(m_trim_threshold, 512 << 20) == 1 and ok
    return ok
