"""Peer processes for bench/rpc.py: bare msgpack echo servers, a raw TCP byte mover, a TF gRPC server.

Each mode listens on loopback, prints one ``READY <address>`` line on stdout and serves until
its stdin reaches end of file (the benchmark holds the other end of that pipe, so a peer
never outlives it, even when the benchmark is killed).

Usage:
    python bench/_rpc_peers.py echo    # msgpack-RPC requests -> [1, msgid, nil, 1.0]; blocking socket
    python bench/_rpc_peers.py aecho   # the same answered from an asyncio event loop (as tornado serves)
    python bench/_rpc_peers.py raw     # 9-byte commands: F/G/E + uint64 length (see RawPeer)
    python bench/_rpc_peers.py tf      # tf.distribute.Server.create_local_server()
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading

RAW_HEADER = struct.Struct("<cQ")  # command, payload length in bytes
RAW_ACK = b"k"


def _exit_on_stdin_eof() -> None:
    def watch() -> None:
        sys.stdin.buffer.read()
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _listen() -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    return srv


def _serve_forever(srv: socket.socket, handle) -> None:
    print(f"READY {srv.getsockname()[1]}", flush=True)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def echo_peer(conn: socket.socket) -> None:
    """The floor of a msgpack request/response: decode a request, answer with a scalar result."""
    import msgpack

    unpacker = msgpack.Unpacker()
    packer = msgpack.Packer()
    while True:
        data = conn.recv(65536)
        if not data:
            return
        unpacker.feed(data)
        for msg in unpacker:
            conn.sendall(packer.pack([1, msg[1], None, 1.0]))


def asyncio_echo_peer() -> None:
    """The same echo served by an asyncio Protocol: the floor of an event-loop server such as tornado."""
    import asyncio

    import msgpack

    class Echo(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.transport = transport
            self.unpacker = msgpack.Unpacker()
            self.packer = msgpack.Packer()

        def data_received(self, data: bytes) -> None:
            self.unpacker.feed(data)
            for msg in self.unpacker:
                self.transport.write(self.packer.pack([1, msg[1], None, 1.0]))

    async def serve() -> None:
        srv = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        print(f"READY {srv.sockets[0].getsockname()[1]}", flush=True)
        await srv.serve_forever()

    asyncio.run(serve())


def _recv_exact_into(conn: socket.socket, view: memoryview) -> bool:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def raw_peer(conn: socket.socket) -> None:
    """Raw loopback TCP, the ceiling for big arrays.

    Commands (a 9-byte header, then the payload where there is one):
      ``F n``: the client sends n bytes; they are received into a fresh ``np.empty``; reply ``k``.
      ``G n``: the peer sends n bytes from a buffer it holds.
      ``E n``: the client sends n bytes (received into a fresh ``np.empty``), the peer sends them back.
    """
    import numpy as np

    held = np.ones(0, np.uint8)
    head = bytearray(RAW_HEADER.size)
    while _recv_exact_into(conn, memoryview(head)):
        cmd, n = RAW_HEADER.unpack(head)
        if cmd == b"G":
            if held.nbytes != n:
                held = np.ones(n, np.uint8)  # touched once, so sends read resident memory
            conn.sendall(memoryview(held))
            continue
        buf = np.empty(n, np.uint8)
        if not _recv_exact_into(conn, memoryview(buf)):
            return
        if cmd == b"F":
            conn.sendall(RAW_ACK)
        elif cmd == b"E":
            conn.sendall(memoryview(buf))
        else:
            return


def tf_peer() -> None:
    """A TensorFlow 1.x gRPC server (one local task); clients open ``Session(target)`` on it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    server = tf.distribute.Server.create_local_server()
    print(f"READY {server.target.decode() if isinstance(server.target, bytes) else server.target}", flush=True)
    threading.Event().wait()


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in ("echo", "aecho", "raw", "tf"):
        raise SystemExit(__doc__)
    _exit_on_stdin_eof()
    if argv[0] == "tf":
        tf_peer()
    elif argv[0] == "aecho":
        asyncio_echo_peer()
    else:
        _serve_forever(_listen(), echo_peer if argv[0] == "echo" else raw_peer)


if __name__ == "__main__":
    main(sys.argv[1:])
