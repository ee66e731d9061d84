"""A real `python -m kernelflow serve` subprocess on loopback, and raw msgpack exchanges with it.

Contents: ROOT, TOKEN, START_TIMEOUT_S, free_port, ServerProcess, raw_exchange.
"""

from __future__ import annotations

import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import kernelflow as kf
from kernelflow.protocol.codec import MessageReader, encode

ROOT = Path(__file__).resolve().parents[2]  # the repository
START_TIMEOUT_S = 30.0
TOKEN = "test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A `python -m kernelflow serve` subprocess on loopback, with its stdout lines queued."""

    def __init__(self, tmp: Path, *args: str, token: str | None = TOKEN, port: int = 0):
        self.runtime_dir = tmp / "runtime"
        env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(self.runtime_dir), "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "kernelflow", "serve", "--port", str(port), *args]
        if token is not None:
            cmd += ["--token", token]
        self.token = token
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True).start()
        self.stdout: list[str] = []
        self.url = ""
        self.port = 0

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line)

    def wait_listening(self) -> ServerProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.url:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError(f"server did not start: {''.join(self.stdout)}{''.join(self.stderr)}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            self.stdout.append(line)
            m = re.search(r"listening on (kfs?://127\.0\.0\.1:(\d+))", line)
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
        # The runtime file line comes right after; read up to it so tests can look at it.
        while not any("runtime file" in s for s in self.stdout):
            self.stdout.append(self.lines.get(timeout=max(0.1, deadline - time.monotonic())))
        return self

    def connect(self, **kw) -> kf.Runtime:
        kw.setdefault("token", self.token)
        kw.setdefault("timeout", 60.0)
        return kf.connect(self.url, **kw)

    def raw(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def raw_exchange(sock: socket.socket, *messages, until_closed: bool = False, n_replies: int | None = None,
                 timeout_s: float = 10.0) -> tuple[list, bool]:
    """Send msgpack messages (or raw bytes) and collect replies; returns (replies, closed)."""
    for m in messages:
        sock.sendall(m if isinstance(m, bytes) else b"".join(bytes(f) for f in encode(m)))
    n_replies = len(messages) if n_replies is None else n_replies
    reader, replies, closed = MessageReader(), [], False
    deadline = time.monotonic() + timeout_s
    while (until_closed and not closed) or (not until_closed and len(replies) < n_replies):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no reply within {timeout_s} s; got {replies}")
        sock.settimeout(left)
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            closed = True
            break
        reader.feed(data)
        replies += list(reader.messages())
    return replies, closed


# ----------------------------------------------------------------- one body, two runtimes
