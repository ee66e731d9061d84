"""One client connection of the runtime server: read bytes, decode messages, hand them to the
server, send its answers.

A plain TCP connection is a non-blocking socket driven by the asyncio loop's ``add_reader``
and ``add_writer`` callbacks: a small request is decoded, answered and its response sent
within the one callback that read it (no coroutine, task or future per message), which is
most of a scalar round trip's server time. A TLS connection goes through tornado's
``SSLIOStream`` (it handles the handshake and the records TLS buffers outside the socket).
Both decode with `MessageReader`, so big array payloads are received straight into numpy
memory, and both send memoryviews of big results without copying them.

Requests on one connection are answered in order: while a call runs in the thread pool, or
while a response is still being sent, the connection reads nothing more.

Contents: ConnectionState, SocketConnection, StreamConnection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

from tornado.iostream import IOStream, StreamClosedError

from ...errors import KernelflowError
from ...protocol.codec import MessageReader
from ...protocol.rpc import error_to_map
from ...protocol.rpc import notification as notification_frames

log = logging.getLogger("kernelflow.server")

READ_CHUNK_BYTES = 256 << 10
# Values of an incrementally decoded message decoded per loop callback (~5 ms of Python): a
# message of millions of tiny values is decoded in slices, other clients served in between.
DECODE_SLICE_VALUES = 8192


class ConnectionDelegate(Protocol):
    """What a connection needs from the server that owns it."""

    max_message_bytes: int
    unauth_message_bytes: int
    max_message_elements: int

    def buffered_changed(self, conn: ConnectionState, delta: int) -> None:
        """``conn`` holds ``delta`` more bytes of input not yet decoded into messages.

        Raises:
            ResourceExhaustedError: the server's budget for buffered input is spent.
        """

    def handle_message(self, conn: ConnectionState, msg: Any) -> bool | asyncio.Future:
        """Answer one decoded message: True/False (answered; False ends the connection), or a
        future resolving to that once the answer went out."""

    def reply(self, conn: ConnectionState, msgid: int | None, error: dict | None, result: Any) -> None:
        """Send a response (``msgid`` None: an error about bytes that were no request)."""

    def connection_closed(self, conn: ConnectionState) -> None:
        """The connection is gone (called once)."""


class ConnectionState:
    """What the server knows about one client connection, and how answers reach it.

    It is also the service's *peer*: ``notify(method, params)`` pushes a notification from
    any thread, ``closed`` tells whether the client is gone.
    """

    __slots__ = ("address", "is_authenticated", "loop", "server", "reader", "_held", "__weakref__")

    def __init__(self, server: ConnectionDelegate, address: Any):
        self.server = server
        self.address = address
        self.is_authenticated = False
        self.loop = asyncio.get_running_loop()
        # Until auth, only small messages (the server raises the limit on a good auth).
        self.reader = MessageReader(server.unauth_message_bytes, slice_values=DECODE_SLICE_VALUES,
                                    max_message_elements=server.max_message_elements)
        self._held = 0  # input bytes accounted to the server's budget

    def _account(self) -> None:
        """Tell the server how much undecoded input this connection holds (raises over budget)."""
        held = self.reader.held_bytes
        if held != self._held:
            delta, self._held = held - self._held, held
            self.server.buffered_changed(self, delta)

    def _release(self) -> None:
        if self._held:
            delta, self._held = -self._held, 0
            self.server.buffered_changed(self, delta)

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def send(self, frames: list) -> None:
        """Queue ``frames`` (bytes or memoryviews) for sending, in order; never blocks."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def notify(self, method: str, params: list) -> None:
        """Send a msgpack-RPC notification; safe from any thread (the service's peer interface)."""
        self.loop.call_soon_threadsafe(self._write_notification, method, params)

    def _write_notification(self, method: str, params: list) -> None:
        if self.closed:
            return
        try:
            frames = notification_frames(method, params)
        except KernelflowError as e:
            log.error("cannot encode notification %s: %s", method, e)
            return
        self.send(frames)


class SocketConnection(ConnectionState):
    """A plain TCP connection served from loop callbacks.

    Args:
        server: the delegate whose ``handle_message`` answers each message.
        sock: the accepted socket (made non-blocking here).
        address: the peer's address, for logs.
        chunk: a scratch receive buffer; the server shares one among its connections (the
            loop runs one callback at a time and the bytes are copied out at once).
    """

    __slots__ = ("sock", "_fd", "_chunk", "_view", "_out", "_reading", "_writing", "_busy", "_msgs", "_closing",
                 "_is_closed", "_watching")

    def __init__(self, server: ConnectionDelegate, sock: socket.socket, address: Any, chunk: bytearray):
        super().__init__(server, address)
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._chunk = chunk
        self._view = memoryview(chunk)
        self._out: deque = deque()  # bytes and memoryviews not yet sent
        self._reading = self._writing = False
        self._busy = False  # a call is in the thread pool: handle nothing more until it answers
        self._msgs: Any = None  # the messages() iterator to resume after a pause
        self._closing = False  # close once the output is sent
        self._is_closed = False
        self._watching = False  # watching for the peer's EOF while a call runs
        self._start_reading()

    @property
    def closed(self) -> bool:
        return self._is_closed

    # ----------------------------------------------------------------- reading
    def _start_reading(self) -> None:
        if not self._reading and not self._is_closed:
            self.loop.add_reader(self._fd, self._on_readable)  # replaces an EOF watch
            self._reading = True
            self._watching = False

    def _watch_eof(self) -> None:
        """While a call runs, notice a client that hangs up (it gave up at its deadline or was
        interrupted), so its run is cancelled; pipelined bytes end the watch unread."""
        if not self._is_closed and not self._reading:
            self.loop.add_reader(self._fd, self._on_readable_busy)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self.loop.remove_reader(self._fd)
            self._watching = False

    def _on_readable_busy(self) -> None:
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self._unwatch()
        if not data:
            log.debug("connection %s closed by the peer while its call runs; cancelling it", self.address)
            self.close()  # connection_closed -> the service cancels the peer's runs

    def _stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        reader, sock = self.reader, self.sock
        try:
            while True:
                target = reader.want_into()
                if target is not None:
                    n = sock.recv_into(target)
                    if not n:
                        return self._eof()
                    reader.filled(n)
                    if reader.want_into() is not None:
                        continue  # more of a big payload: read on until the socket is drained
                    self._process(reader.messages())
                else:
                    n = sock.recv_into(self._chunk)
                    if not n:
                        return self._eof()
                    self._process(reader.feed_messages(self._view[:n]))
                if reader.held_bytes or self._held:
                    self._account()
                if not self._reading or (target is None and n < len(self._chunk)):
                    return  # paused, closed, or the socket is (very likely) drained
        except (BlockingIOError, InterruptedError):
            pass
        except KernelflowError as e:  # over the server's input budget
            log.warning("dropping connection %s: %s", self.address, e)
            self.server.reply(self, None, error_to_map(e), None)
            self._close_when_sent()
        except OSError as e:  # reset by the peer
            log.debug("connection %s: %s", self.address, e)
            self.close()
        except Exception:
            log.error("connection %s failed", self.address, exc_info=True)
            self.close()

    def _eof(self) -> None:
        self.close()

    def _resume(self) -> None:
        msgs, self._msgs = self._msgs, None
        self._process(msgs if msgs is not None else self.reader.messages())

    def _process(self, msgs: Iterator[Any]) -> None:
        """Answer the messages ``msgs`` yields; pauses while a call is in the pool or output is pending."""
        handle = self.server.handle_message
        try:
            for msg in msgs:
                r = handle(self, msg)
                if r is True:
                    if self._out:
                        # Send a big answer before reading more, so results don't pile up in memory.
                        self._msgs = msgs
                        self._stop_reading()
                        return
                    continue
                if r is False:
                    self._close_when_sent()
                    return
                self._msgs = msgs
                self._busy = True
                self._stop_reading()
                self._watch_eof()
                r.add_done_callback(self._call_done)
                return
        except KernelflowError as e:
            # The byte stream cannot be resynchronised after bad framing: answer and drop.
            log.warning("dropping connection %s: %s", self.address, e)
            self.server.reply(self, None, error_to_map(e), None)
            self._close_when_sent()
            return
        if self.reader.paused:
            # A slice of a big message is decoded: serve the other connections, then go on.
            self._stop_reading()
            self.loop.call_soon(self._continue_decoding)
            return
        self._start_reading()

    def _continue_decoding(self) -> None:
        if self._is_closed or self._busy or self._msgs is not None or self._out:
            return  # resumed by the call's or the send's completion instead
        try:
            self._process(self.reader.messages())
            self._account()
        except KernelflowError as e:
            log.warning("dropping connection %s: %s", self.address, e)
            self.server.reply(self, None, error_to_map(e), None)
            self._close_when_sent()
        except Exception:
            log.error("connection %s failed", self.address, exc_info=True)
            self.close()

    def _call_done(self, fut: asyncio.Future) -> None:
        self._busy = False
        if self._is_closed:
            return
        self._unwatch()
        try:
            keep = not fut.cancelled() and fut.result()
            if not keep:
                self._close_when_sent()
            elif not self._out:
                self._resume()
            # else: _on_writable resumes once the answer is out
        except Exception:
            log.error("connection %s failed", self.address, exc_info=True)
            self.close()

    # ----------------------------------------------------------------- writing
    def send(self, frames: list) -> None:
        if self._is_closed:
            return
        out = self._out
        if out:
            out.extend(frames)  # behind earlier output; _on_writable sends it
            return
        sock = self.sock
        if len(frames) == 1:  # the usual small answer: one send, nothing queued
            f = frames[0]
            try:
                n = sock.send(f)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                return self._send_failed(e)
            if n == len(f):
                return
            out.append(memoryview(f)[n:] if n else f)
        else:
            out.extend(frames)
        if self._flush():
            self.loop.add_writer(self._fd, self._on_writable)
            self._writing = True

    def _flush(self) -> bool:
        """Send queued output until it is all sent or the socket is full; True if some is left."""
        out, sock = self._out, self.sock
        try:
            while out:
                f = out[0]
                n = sock.send(f)
                if n < len(f):
                    out[0] = memoryview(f)[n:]  # and try again: the peer may have drained some
                else:
                    out.popleft()
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as e:
            self._send_failed(e)
            return False
        return False

    def _send_failed(self, e: OSError) -> None:
        log.debug("client %s left before its answer was sent: %s", self.address, e)
        self.close()

    def _on_writable(self) -> None:
        if self._flush() or self._is_closed:
            return
        self.loop.remove_writer(self._fd)
        self._writing = False
        if self._closing:
            self.close()
        elif not self._busy and not self._reading:
            try:
                self._resume()
            except Exception:
                log.error("connection %s failed", self.address, exc_info=True)
                self.close()

    # ----------------------------------------------------------------- closing
    def _close_when_sent(self) -> None:
        self._stop_reading()
        if self._out:
            self._closing = True
        else:
            self.close()

    def close(self) -> None:
        if self._is_closed:
            return
        self._is_closed = True
        self._stop_reading()
        self._unwatch()
        if self._writing:
            self.loop.remove_writer(self._fd)
            self._writing = False
        self._out.clear()
        self._msgs = None
        self._release()
        try:
            self.sock.close()
        except OSError:
            pass
        self.server.connection_closed(self)


class StreamConnection(ConnectionState):
    """A connection over a tornado IOStream (TLS), served by the `serve` coroutine.

    While a call runs no read is pending; the stream's close callback makes tornado listen for
    the peer anyway (bytes that come are buffered for the next read, and the listening stops
    while any are buffered, as `SocketConnection` stops at pipelined bytes), so a client that
    hangs up (its deadline passed, it was interrupted) is noticed at once and its runs are
    cancelled, as on plain TCP.
    """

    __slots__ = ("stream", "_last_write", "_gone")

    def __init__(self, server: ConnectionDelegate, stream: IOStream, address: Any):
        super().__init__(server, address)
        self.stream = stream
        self._last_write: Any = None
        self._gone = False
        stream.set_close_callback(self._stream_closed)

    def _stream_closed(self) -> None:
        if not self._gone:
            self._gone = True
            log.debug("connection %s closed", self.address)
            self.server.connection_closed(self)  # the service cancels the peer's runs

    @property
    def closed(self) -> bool:
        return self.stream.closed()

    def send(self, frames: list) -> None:
        if self.stream.closed():
            return
        try:
            for f in frames:
                self._last_write = self.stream.write(f)
        except StreamClosedError:
            log.debug("client %s left before its answer was sent", self.address)

    async def _drain(self) -> None:
        w, self._last_write = self._last_write, None
        if w is not None:
            try:
                await w
            except StreamClosedError:
                log.debug("client %s left before its answer was sent", self.address)

    def close(self) -> None:
        self.stream.close()

    async def serve(self) -> None:
        """Read and answer messages until the stream closes or cannot be trusted any more."""
        stream, reader, handle = self.stream, self.reader, self.server.handle_message
        try:
            while not stream.closed():
                target = reader.want_into()
                if reader.paused:
                    await asyncio.sleep(0)  # a slice of a big message is decoded: serve the others
                elif target is not None:
                    await stream.read_into(target)
                    reader.filled(len(target))
                else:
                    reader.feed(await stream.read_bytes(READ_CHUNK_BYTES, partial=True))
                try:
                    self._account()
                    for msg in reader.messages():
                        keep = handle(self, msg)
                        if keep is not True and keep is not False:
                            try:
                                keep = await keep
                            except asyncio.CancelledError:  # the server is shutting down
                                keep = False
                        await self._drain()  # keeps big results from piling up in memory
                        if not keep:
                            return
                except KernelflowError as e:
                    # The byte stream cannot be resynchronised after bad framing: answer and drop.
                    log.warning("dropping connection %s: %s", self.address, e)
                    self.server.reply(self, None, error_to_map(e), None)
                    await self._drain()
                    return
        except StreamClosedError:
            pass
        except Exception:
            log.error("connection %s failed", self.address, exc_info=True)
        finally:
            stream.close()
            self._release()
            self._stream_closed()  # at once (tornado calls it later too: once is all it does)
