"""Shared fixtures of the serving tests: the digits classifier, trained a few steps."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import kernelflow as kf
from tests.support.waiting import wait_for  # noqa: F401  (re-exported for the serving tests)


@dataclass
class Digits:
    g: kf.Graph
    x: kf.Tensor
    probs: kf.Tensor
    cls: kf.Tensor
    X: np.ndarray


def build_digits(rt: kf.Runtime, name: str = "digits", steps: int = 20) -> Digits:
    """A 64 -> 32 -> 10 MLP on sklearn's digits, trained ``steps`` Adam steps."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype("float32")
    g = rt.graph(name)
    x = g.placeholder((None, 64), "float32", name="x")
    labels = g.placeholder((None,), "int64", name="y")
    rng = np.random.default_rng(0)
    w1 = g.variable((rng.standard_normal((64, 32)) * 0.1).astype("float32"), name="w1")
    b1 = g.variable(np.zeros(32, "float32"), name="b1")
    w2 = g.variable((rng.standard_normal((32, 10)) * 0.1).astype("float32"), name="w2")
    b2 = g.variable(np.zeros(10, "float32"), name="b2")
    logits = kf.relu(x @ w1 + b1) @ w2 + b2
    loss = kf.mean(kf.softmax_cross_entropy(logits, labels))
    train = kf.optim.Adam(lr=1e-2).minimize(loss)
    probs = kf.softmax(logits)
    cls = kf.argmax(logits, axis=1)
    for i in range(steps):
        sl = slice((i * 128) % 1536, (i * 128) % 1536 + 128)
        g.run(train, feed={x: X[sl], labels: y[sl].astype("int64")})
    return Digits(g, x, probs, cls, X)


@pytest.fixture
def inproc_state(tmp_path):
    """An in-process runtime with a state dir (so it can export)."""
    rt = kf.connect("inproc", state_dir=tmp_path / "state")
    yield rt
    rt.close()


# ----------------------------------------------------------------- serve-models subprocesses
def http(port: int, method: str, path: str, body: bytes | dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    """(status, JSON body) of one plain HTTP request to 127.0.0.1:port."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else {})


class ModelServer:
    """A ``python -m kernelflow serve-models`` subprocess on a free loopback port."""

    def __init__(self, base, *args: str, env: dict | None = None):
        import os
        import queue
        import re
        import subprocess
        import sys
        import threading

        cmd = [sys.executable, "-m", "kernelflow", "serve-models", "--model-base-path", str(base), "--port", "0",
               "--file-system-poll-wait-seconds", "0.1", *args]
        self.proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        found: queue.Queue = queue.Queue()

        def pump() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                m = re.search(r"on http://127\.0\.0\.1:(\d+)/v1/models", line)
                if m:
                    found.put(int(m.group(1)))
            found.put(None)

        threading.Thread(target=pump, daemon=True).start()
        try:
            self.port = found.get(timeout=120)
        except queue.Empty:
            self.port = None
        if self.port is None:
            self.stop()
            raise RuntimeError(f"serve-models did not start: {''.join(self.lines)}")

    def http(self, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, dict]:
        return http(self.port, method, path, body)

    def states(self, name: str) -> dict[str, str]:
        """{version: state} of model ``name`` ({} when it is unknown)."""
        code, doc = self.http("GET", f"/v1/models/{name}")
        return {s["version"]: s["state"] for s in doc.get("model_version_status", [])} if code == 200 else {}

    def rss_kib(self) -> int:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def drop_version(src, base, name: str, version: int) -> None:
    """Put a copy of version dir ``src`` in as ``base/name/version``, whole (renamed into place)."""
    import os
    import shutil

    (base / name).mkdir(parents=True, exist_ok=True)
    tmp = base / name / f".incoming-{version}"
    shutil.copytree(src, tmp)
    os.replace(tmp, base / name / str(version))


def drop_held_version(src, base, name: str, version: int):
    """Like `drop_version`, but the version's ``signature.json`` is a named pipe: a server loading it
    blocks in LOADING (inside its read of the file) until ``release()`` writes the real contents.

    A real filesystem behaviour holds the load, in this process or in a server subprocess, with no
    test hook in the server. Returns ``release``.
    """
    import os
    import shutil
    import threading

    (base / name).mkdir(parents=True, exist_ok=True)
    tmp = base / name / f".incoming-{version}"
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("signature.json"))
    content = (src / "signature.json").read_bytes()
    os.mkfifo(tmp / "signature.json")
    os.replace(tmp, base / name / str(version))
    fifo = base / name / str(version) / "signature.json"

    def release() -> None:
        def write() -> None:
            with open(fifo, "wb") as f:  # opens once the loader has opened its end
                f.write(content)
        t = threading.Thread(target=write, daemon=True)
        t.start()
        t.join(timeout=60)
        assert not t.is_alive(), f"nobody read {fifo}: the load was not waiting on it"

    return release
