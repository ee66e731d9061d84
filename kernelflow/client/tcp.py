"""The TCP transport: msgpack-RPC to a runtime server over a plain blocking socket.

Requests are answered on the caller's thread (send, then read until the response with the
same msgid arrives), which keeps the round trip of a small ``g.run`` close to a bare
socket's. After a quick call, the next one polls for its answer for up to `SPIN_WAIT_S`
before sleeping in ``recv``: waking a sleeping thread costs as much as the rest of a small
call on small machines. Notifications arriving in between are dispatched to the callbacks registered
with `TcpTransport.on_notification`; once one is registered, a background thread also
reads the socket while no call is in flight. A dropped connection raises UnavailableError;
the next call reconnects and re-authenticates by itself, and so does the background thread
(with back-off) while notification handlers are registered, so a live stream resumes without
a call. Callbacks registered with `TcpTransport.on_reconnect` then restore per-connection
server state (job subscriptions live on the connection).

Contents: parse_url, TcpTransport.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    KernelflowError,
    ProtocolError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from ..protocol.codec import DEFAULT_MAX_MESSAGE_BYTES, MessageReader
from ..protocol.rpc import MAX_MSGID, Notification, Response, error_from_map, parse_message, request
from .transport import Transport

log = logging.getLogger("kernelflow.client")

RECV_CHUNK_BYTES = 256 << 10
# After a call answered within this long, the next one polls for its answer this long
# before sleeping in recv (see TcpTransport._spin_receive); 0 turns polling off.
SPIN_WAIT_S = 200e-6
DEFAULT_PORT = 7070
# The notification thread retries a dropped connection after this long, doubling to the max.
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 5.0
BACKGROUND_CONNECT_TIMEOUT_S = 1.0


def parse_url(url: str) -> tuple[bool, str, int, str | None]:
    """``(is_tls, host, port, token)`` of ``kf://host:port[/?token=T]`` or ``kfs://...``.

    Raises:
        InvalidArgumentError: for another scheme or a malformed address.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("kf", "kfs"):
        raise InvalidArgumentError(f"connect: unsupported url {url!r}; expected 'inproc', 'kf://host:port' or "
                                   "'kfs://host:port'")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise InvalidArgumentError(f"connect: bad port in {url!r}: {e}") from None
    if not parts.hostname:
        raise InvalidArgumentError(f"connect: no host in {url!r}")
    token = (parse_qs(parts.query).get("token") or [None])[0]
    return parts.scheme == "kfs", parts.hostname, port, token


def _runtime_file_token(host: str, port: int) -> str | None:
    """The token a local server on ``port`` wrote to its runtime file, if any."""
    from .local import token_for

    return token_for(host, port)


class TcpTransport(Transport):
    """A msgpack-RPC connection to a runtime server.

    Args:
        host: server address.
        port: server port.
        token: the server's token (``auth`` is the first request).
        is_tls: wrap the socket in TLS (``kfs://``).
        ssl_context: the TLS context (default: the system's trust store, hostname checked).
        timeout: seconds to connect, and the deadline of each call (None: calls wait forever).
        max_message_bytes: the largest response accepted.
    """

    def __init__(self, host: str, port: int, token: str | None, *, is_tls: bool = False,
                 ssl_context: ssl.SSLContext | None = None, timeout: float | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.host, self.port = host, int(port)
        self.url = f"{'kfs' if is_tls else 'kf'}://{host if ':' not in host else f'[{host}]'}:{self.port}"
        self._token = token if token is not None else _runtime_file_token(host, self.port)
        if self._token is None:
            raise UnauthenticatedError(f"connect: {self.url} needs a token; pass token=... or add ?token=... "
                                       "(`kernelflow serve` prints the URL with it)")
        self._ssl = (ssl_context or ssl.create_default_context()) if is_tls else None
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.server_max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self._lock = threading.RLock()
        self._sock: socket.socket | None = None
        self._reader = MessageReader(max_message_bytes)
        self._chunk = bytearray(RECV_CHUNK_BYTES)
        self._chunk_view = memoryview(self._chunk)
        self._msgid = 0
        self._responses: dict[int | None, Response] = {}
        self._handlers: dict[str, list[Callable[[list], Any]]] = {}
        self._closed = False
        self._notifier: threading.Thread | None = None
        self._reconnect_hooks: list[Callable[[], Any]] = []
        # () -> (host, port, token) | None: where the server is now, asked when a reconnect finds
        # nobody at the old address (connect_local sets it: a restarted local runtime has a new port)
        self.resolver: Callable[[], tuple[str, int, str | None] | None] | None = None
        self._connected_once = False
        self._connect()

    @classmethod
    def from_url(cls, url: str, *, token: str | None = None, timeout: float | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> TcpTransport:
        """A transport for ``kf://host:port[/?token=T]`` (an explicit ``token`` wins)."""
        is_tls, host, port, url_token = parse_url(url)
        return cls(host, port, token or url_token, is_tls=is_tls, ssl_context=ssl_context, timeout=timeout)

    # ----------------------------------------------------------------- connection
    def _connect(self, connect_timeout: float | None = None) -> None:
        raw = None
        try:
            raw = socket.create_connection((self.host, self.port),
                                           timeout=connect_timeout or self.timeout or 10.0)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock = self._ssl.wrap_socket(raw, server_hostname=self.host) if self._ssl is not None else raw
            sock.settimeout(None)
        except ssl.SSLError as e:
            raw.close()
            raise UnavailableError(f"connect: TLS handshake with {self.url} failed: {e}") from e
        except OSError as e:
            if raw is not None:
                raw.close()
            if self._re_resolve():  # the local runtime came back elsewhere (another port)
                return self._connect(connect_timeout)
            raise UnavailableError(f"connect: cannot reach {self.url}: {e}; is `kernelflow serve` running?") from e
        self._sock = sock
        self._spin_ok = self._ssl is None and SPIN_WAIT_S > 0  # TLS sockets take no recv flags
        self._last_wait_s = 0.0
        self._poll = select.poll()  # cheaper per call than select.select
        self._poll.register(sock, select.POLLIN)
        self._reader = MessageReader(self.max_message_bytes)
        self._responses.clear()
        try:
            info = self._request("auth", [self._token])
        except KernelflowError:
            self._drop()
            raise
        if isinstance(info, dict) and isinstance(info.get("max_message_bytes"), int):
            self.server_max_message_bytes = info["max_message_bytes"]
        if self._connected_once:
            log.info("reconnected to %s", self.url)
            for hook in list(self._reconnect_hooks):
                try:
                    hook()
                except Exception:
                    log.error("reconnect hook failed", exc_info=True)
        self._connected_once = True

    def _re_resolve(self) -> bool:
        """Ask `resolver` (set for the local runtime) where the server is now; True when it moved."""
        if self.resolver is None:
            return False
        try:
            where = self.resolver()
        except Exception:
            log.debug("resolving the local runtime failed", exc_info=True)
            return False
        if where is None or (where[0], int(where[1])) == (self.host, self.port):
            return False
        log.info("the local runtime moved from %s to port %s", self.url, where[1])
        self.host, self.port = where[0], int(where[1])
        self.url = f"kf://{self.host if ':' not in self.host else f'[{self.host}]'}:{self.port}"
        if where[2] is not None:
            self._token = where[2]
        return True

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def _peer_closed(self) -> bool:
        """Read whatever already arrived (notifications, or the server's EOF) without blocking."""
        sock = self._sock
        if sock is None:
            return True
        try:
            while self._poll.poll(0):
                if not self._receive(sock):
                    return True
        except (OSError, ValueError, KernelflowError):
            return True
        return False

    # ----------------------------------------------------------------- calls
    def call(self, method: str, params: list) -> Any:
        # IPython hides frames that set __tracebackhide__: a remote error's traceback ends in the
        # user's code, not in five frames of this transport (issue #14)
        __tracebackhide__ = True  # noqa: F841
        with self._lock:
            if self._closed:
                raise UnavailableError(f"{method}: the connection to {self.url} is closed")
            if self._peer_closed():
                self._drop()
                self._connect()
            return self._request(method, params)

    def call_aside(self, method: str, params: list) -> Any:
        """`call`, or, while another thread's call holds this connection, the same call on a
        short-lived second connection (``run.cancel`` must not wait for the run it cancels)."""
        if self._lock.acquire(blocking=False):
            try:
                return self.call(method, params)
            finally:
                self._lock.release()
        other = TcpTransport(self.host, self.port, self._token, is_tls=self._ssl is not None,
                             ssl_context=self._ssl, timeout=self.timeout or 10.0)
        try:
            return other.call(method, params)
        finally:
            other.close()

    def _request(self, method: str, params: list) -> Any:
        __tracebackhide__ = True  # noqa: F841
        self._msgid = self._msgid + 1 if self._msgid < MAX_MSGID else 1
        msgid = self._msgid
        frames = request(msgid, method, params)
        size = len(frames[0]) if len(frames) == 1 else sum(len(f) for f in frames)
        if size > self.server_max_message_bytes:
            raise ResourceExhaustedError(f"{method}: request of {size} bytes is over the server's limit of "
                                         f"{self.server_max_message_bytes} bytes (kernelflow serve "
                                         "--max-message-bytes)")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        sock = self._sock
        if sock is None:  # a reconnect hook's call lost the new connection again
            raise UnavailableError(f"{method}: connection to {self.url} lost")
        try:
            for f in frames:
                sock.sendall(f)
            t_sent = time.perf_counter()
            if self._spin_ok and self._last_wait_s <= SPIN_WAIT_S:
                self._spin_receive(sock, msgid, t_sent + SPIN_WAIT_S)
            while msgid not in self._responses and None not in self._responses:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DeadlineExceededError(f"{method}: no answer from {self.url} within {self.timeout} s")
                    sock.settimeout(left)
                if not self._receive(sock):
                    raise UnavailableError(f"{method}: {self.url} closed the connection")
        except TimeoutError:
            # Hang up: the server cancels the run this call waits for (issue #15); the next call
            # reconnects.
            self._drop()
            raise DeadlineExceededError(f"{method}: no answer from {self.url} within {self.timeout} s") from None
        except KeyboardInterrupt:
            self._drop()  # an interrupted cell cancels the server-side run it waits on
            raise
        except (ProtocolError, ResourceExhaustedError) as e:
            self._drop()
            raise UnavailableError(f"{method}: bad answer from {self.url}; connection dropped: {e}") from e
        except OSError as e:
            self._drop()
            raise UnavailableError(f"{method}: connection to {self.url} lost: {e}") from e
        except UnavailableError:
            self._drop()
            raise
        finally:
            if deadline is not None and self._sock is not None:
                self._sock.settimeout(None)
        self._last_wait_s = time.perf_counter() - t_sent
        resp = self._responses.pop(msgid, None) or self._responses.pop(None)
        if resp.error is not None:
            if resp.msgid is None:
                self._drop()  # the server gave up on the stream
            raise error_from_map(resp.error)
        return resp.result

    def _spin_receive(self, sock: socket.socket, msgid: int, until: float) -> None:
        """Poll for the answer without sleeping until ``until`` (perf_counter seconds).

        Waking a thread blocked in recv costs ~20 us on small (virtual) machines, as much
        as the rest of a small call; the last call was quick, so this one likely is too.
        """
        responses = self._responses
        while msgid not in responses and None not in responses:
            try:
                if not self._receive(sock, socket.MSG_DONTWAIT):
                    return  # EOF: the blocking loop reports it
            except BlockingIOError:
                if time.perf_counter() >= until:
                    return
                os.sched_yield()  # lets a server sharing this core run (a no-op otherwise)

    def _receive(self, sock: socket.socket, flags: int = 0) -> bool:
        """One recv; decoded responses are stored, notifications dispatched. False on EOF."""
        reader = self._reader
        target = reader.want_into()
        if target is not None:
            n = sock.recv_into(target, 0, flags)
            if not n:
                return False
            reader.filled(n)
            msgs = reader.messages()
        else:
            n = sock.recv_into(self._chunk, 0, flags)
            if not n:
                return False
            msgs = reader.feed_messages(self._chunk_view[:n])
        for msg in msgs:
            parsed = parse_message(msg)
            if isinstance(parsed, Response):
                if parsed.msgid is None or parsed.msgid == self._msgid:
                    self._responses[parsed.msgid] = parsed
                # else: the answer to a call that timed out; dropped
            elif isinstance(parsed, Notification):
                self._dispatch(parsed)
            else:
                raise ProtocolError(f"server sent a request ({parsed.method}); servers only answer and notify")
        return True

    # ----------------------------------------------------------------- notifications
    def on_notification(self, method: str, callback: Callable[[list], Any]) -> None:
        """Call ``callback(params)`` for every notification ``method`` from the server.

        Starts a background thread reading the socket while no call is in flight.
        """
        with self._lock:
            self._handlers.setdefault(method, []).append(callback)
            if self._notifier is None:
                self._notifier = threading.Thread(target=self._notify_loop, name="kf-notify", daemon=True)
                self._notifier.start()

    def on_reconnect(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` after each reconnection, authenticated, before any other call.

        It runs on the reconnecting thread (the notification thread, or the thread of the call
        that found the connection gone) with the connection held, and may make calls.
        """
        with self._lock:
            self._reconnect_hooks.append(callback)

    def _dispatch(self, note: Notification) -> None:
        for cb in list(self._handlers.get(note.method, ())):
            try:
                cb(note.params)
            except Exception:
                log.error("notification handler for %s failed", note.method, exc_info=True)

    def _notify_loop(self) -> None:
        backoff = RECONNECT_MIN_S
        while not self._closed:
            sock = self._sock
            if sock is None:
                # A stream is wanted (a handler is registered), so don't wait for a call to
                # reconnect: a monitor would stay silent until the user ran something.
                time.sleep(backoff)
                if self._reconnect_in_background():
                    backoff = RECONNECT_MIN_S
                else:
                    backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            try:
                ready = select.select([sock], [], [], 0.2)[0]
            except (OSError, ValueError):
                ready = []
            if not ready or not self._lock.acquire(timeout=0.2):
                continue
            try:
                if self._sock is sock and select.select([sock], [], [], 0)[0] and not self._receive(sock):
                    self._drop()
            except (KernelflowError, OSError) as e:
                log.warning("notification reader: %s", e)
                self._drop()
            finally:
                self._lock.release()

    def _reconnect_in_background(self) -> bool:
        if not self._lock.acquire(timeout=0.2):
            return False  # a call is in flight: it reconnects by itself
        try:
            if self._closed or self._sock is not None:
                return True
            # A short connect timeout: user calls wait for this lock while it tries.
            self._connect(connect_timeout=BACKGROUND_CONNECT_TIMEOUT_S)
            return True
        except KernelflowError as e:
            log.debug("background reconnect to %s: %s", self.url, e)
            return False
        finally:
            self._lock.release()
