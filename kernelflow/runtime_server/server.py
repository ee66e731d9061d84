"""The runtime server: `RuntimeService` over msgpack-RPC on a tornado TCP (or TLS) socket.

Each connection authenticates with ``auth [token]`` first, then sends requests; they are
answered in order. Service calls run in a thread pool, off the IO loop, so ``info`` and
other clients' requests are answered while a long run is in flight. Bad bytes or a
malformed message get an error response and, when the stream cannot be trusted any more
(garbage, an oversized message), the connection is dropped; the server goes on serving
everyone else.

Contents: ConnectionState, RuntimeServer.
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
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpserver import TCPServer

from ..errors import InvalidArgumentError, KernelflowError, UnauthenticatedError
from ..protocol.codec import DEFAULT_MAX_MESSAGE_BYTES, MessageReader
from ..protocol.rpc import Notification, Request, Response, error_to_map, parse_message, response
from ..protocol.rpc import notification as notification_frames
from .service import PROTOCOL_VERSION, RuntimeService

log = logging.getLogger("kernelflow.server")

READ_CHUNK_BYTES = 256 << 10
_NOT_INLINE = object()
# Methods cheap enough to answer on the IO loop itself (no session lock, no array work).
_INLINE_METHODS = frozenset({"info", "graph.list", "graph.open"})
# A run, read or assign whose last call with the same signature took less than this runs
# on the IO loop when its graph is idle: a hop through the thread pool costs ~150 us on a
# small machine, more than a small run itself; 2 ms keeps `info` far inside its 50 ms.
INLINE_BUDGET_S = 0.002
_TIMED_METHODS = frozenset({"graph.run", "variable.read", "variable.assign"})


def _timing_key(method: str, params: list) -> tuple | None:
    """What identifies "the same call" for the inline decision, or None (always the pool)."""
    if method not in _TIMED_METHODS or not params or not isinstance(params[0], str):
        return None
    if method == "graph.run":
        if len(params) != 6 or params[2]:  # piggy-backed nodes: validation and a new plan
            return None
        fetches, feeds = params[3], params[4]
        if not (isinstance(fetches, list) and isinstance(feeds, list)
                and all(isinstance(n, str) for n in fetches) and all(isinstance(n, str) for n in feeds)):
            return None
        return (method, params[0], tuple(fetches), tuple(feeds))
    return (method, params[0], params[1]) if len(params) >= 2 and isinstance(params[1], str) else None


def _array_bytes(params: list) -> int:
    n = 0
    for p in params:
        if isinstance(p, np.ndarray):
            n += p.nbytes
        elif isinstance(p, list):
            n += sum(x.nbytes for x in p if isinstance(x, np.ndarray))
    return n


class ConnectionState:
    """What the server knows about one client connection."""

    __slots__ = ("address", "is_authenticated", "stream", "loop", "__weakref__")

    def __init__(self, stream: IOStream, address: Any):
        self.stream = stream
        self.address = address
        self.is_authenticated = False
        self.loop = asyncio.get_running_loop()

    @property
    def closed(self) -> bool:
        return self.stream.closed()

    def notify(self, method: str, params: list) -> None:
        """Send a msgpack-RPC notification; safe from any thread (the service's peer interface)."""
        self.loop.call_soon_threadsafe(self._write_notification, method, params)

    def _write_notification(self, method: str, params: list) -> None:
        if self.stream.closed():
            return
        try:
            for f in notification_frames(method, params):
                self.stream.write(f)
        except StreamClosedError:
            pass
        except KernelflowError as e:
            log.error("cannot encode notification %s: %s", method, e)


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
        self._durations: dict[tuple, tuple[float, int]] = {}  # timing key -> (seconds, request array bytes)
        self.stopped = asyncio.Event()
        self.methods = sorted(set(service.methods) | {"auth", "server.shutdown"})

    def bound_port(self) -> int:
        """The TCP port the server listens on (useful after ``listen(0)``)."""
        for sock in self._sockets.values():
            return sock.getsockname()[1]
        raise RuntimeError("RuntimeServer: not listening")

    def shutdown(self) -> None:
        """Stop accepting connections, close the open ones and set `stopped`."""
        self.stop()
        for conn in list(self._connections):
            conn.stream.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.stopped.set()

    # ----------------------------------------------------------------- connections
    async def handle_stream(self, stream: IOStream, address: Any) -> None:
        conn = ConnectionState(stream, address)
        self._connections.add(conn)
        try:
            stream.set_nodelay(True)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:  # the peer may already be gone
            pass
        log.debug("connection from %s", address)
        try:
            await self._serve(conn)
        except StreamClosedError:
            pass
        except Exception:
            log.error("connection %s failed", address, exc_info=True)
        finally:
            self._connections.discard(conn)
            stream.close()
            self.service.peer_closed(conn)
            log.debug("connection from %s closed", address)

    async def _serve(self, conn: ConnectionState) -> None:
        stream = conn.stream
        reader = MessageReader(self.max_message_bytes)
        while not stream.closed():
            target = reader.want_into()
            if target is not None:
                await stream.read_into(target)
                reader.filled(len(target))
            else:
                reader.feed(await stream.read_bytes(READ_CHUNK_BYTES, partial=True))
            try:
                for msg in reader.messages():
                    if not await self._handle(conn, msg):
                        return
            except KernelflowError as e:
                # The byte stream cannot be resynchronised after bad framing: answer and drop.
                log.warning("dropping connection %s: %s", conn.address, e)
                await self._reply(conn, None, error_to_map(e), None)
                return

    async def _handle(self, conn: ConnectionState, msg: Any) -> bool:
        """Answer one message; False ends the connection."""
        try:
            parsed = parse_message(msg)
        except KernelflowError as e:
            msgid = getattr(e, "msgid", None)
            log.warning("bad message from %s: %s", conn.address, e)
            await self._reply(conn, msgid, error_to_map(e), None)
            return msgid is not None  # a request we could answer keeps the connection
        if isinstance(parsed, (Notification, Response)):
            log.debug("ignoring %s from %s", type(parsed).__name__, conn.address)
            return True
        return await self._request(conn, parsed)

    async def _request(self, conn: ConnectionState, req: Request) -> bool:
        method, params = req.method, req.params
        if method == "auth":
            return await self._auth(conn, req)
        if not conn.is_authenticated:
            err = UnauthenticatedError(f"{method}: authenticate first: the first request must be auth [token]")
            await self._reply(conn, req.msgid, error_to_map(err), None)
            return True
        if method == "server.shutdown":
            log.info("shutdown requested by %s", conn.address)
            await self._reply(conn, req.msgid, None, True)
            asyncio.get_running_loop().call_soon(self.shutdown)
            return False
        try:
            if method in _INLINE_METHODS:
                result = self.service.call(method, params, conn)
            else:
                result = self._call_inline(method, params, conn)
                if result is _NOT_INLINE:
                    result = await asyncio.get_running_loop().run_in_executor(self._pool, self._timed_call, method,
                                                                              params, conn)
            if method == "info":
                result = {**result, "methods": self.methods, "max_message_bytes": self.max_message_bytes}
        except Exception as e:
            level = logging.ERROR if not isinstance(e, KernelflowError) else logging.DEBUG
            log.log(level, "%s from %s failed: %s", method, conn.address, e, exc_info=level == logging.ERROR)
            await self._reply(conn, req.msgid, error_to_map(e), None)
            return True
        await self._reply(conn, req.msgid, None, result)
        return True

    def _timed_call(self, method: str, params: list, peer: Any = None) -> Any:
        key = _timing_key(method, params)
        if key is None:
            return self.service.call(method, params, peer)
        t0 = time.perf_counter()
        result = self.service.call(method, params, peer)
        if len(self._durations) > 10_000:  # many one-off signatures: forget them, relearn the hot ones
            self._durations.clear()
        self._durations[key] = (time.perf_counter() - t0, _array_bytes(params))
        return result

    def _call_inline(self, method: str, params: list, peer: Any = None) -> Any:
        """Run a call known to be quick on the IO loop if its graph is idle, else `_NOT_INLINE`."""
        key = _timing_key(method, params)
        last = self._durations.get(key) if key is not None else None
        if last is None or last[0] > INLINE_BUDGET_S or _array_bytes(params) > 2 * last[1] + (64 << 10):
            return _NOT_INLINE
        session = self.service.graphs.get(params[0])
        if session is None or not session.lock.acquire(blocking=False):
            return _NOT_INLINE  # never wait for another run's lock on the IO loop
        try:
            return self._timed_call(method, params, peer)
        finally:
            session.lock.release()

    async def _auth(self, conn: ConnectionState, req: Request) -> bool:
        given = req.params[0] if len(req.params) == 1 else None
        ok = isinstance(given, str) and hmac.compare_digest(given.encode(), self._token)
        if not ok:
            log.warning("wrong token from %s; closing the connection", conn.address)
            err = UnauthenticatedError("auth: wrong token; find it in the URL `kernelflow serve` printed or in its "
                                       "runtime file")
            await self._reply(conn, req.msgid, error_to_map(err), None)
            return False
        conn.is_authenticated = True
        await self._reply(conn, req.msgid, None, {"protocol": PROTOCOL_VERSION,
                                                  "max_message_bytes": self.max_message_bytes})
        return True

    async def _reply(self, conn: ConnectionState, msgid: int | None, error: dict | None, result: Any) -> None:
        try:
            frames = response(msgid, error, result)
        except KernelflowError as e:
            log.error("cannot encode the result of request %s: %s", msgid, e)
            frames = response(msgid, error_to_map(e), None)
        if conn.stream.closed():
            return
        try:
            for f in frames[:-1]:
                conn.stream.write(f)
            # Awaiting the last write keeps big results from piling up in memory.
            await conn.stream.write(frames[-1])
        except StreamClosedError:
            log.debug("client %s left before its answer was sent", conn.address)


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
