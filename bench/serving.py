"""Serving benchmark (issue #7): REST predict throughput and p50/p99 latency of the digits MLP.

The digits classifier of tests/serving (64 -> 32 -> 10, trained a few Adam steps) is exported
to a temp model base path and served by two real ``kernelflow serve-models`` subprocesses,
one with ``--batching on`` and one with ``--batching off`` (the same code otherwise). The
load comes from ``wrk`` (Debian package ``wrk``: closed loop, N connections each sending the
next request when its answer arrives; a Lua script POSTs row-format bodies of one instance,
cycling through 16 digits), with 1, 8 and 64 concurrent connections. Configurations run
interleaved in rounds (every client count, on then off, then the next round) so drift of the
machine hits all alike; the table gives medians over rounds and the ratios the issue sets
targets for: batching on >= 3x the throughput of batching off at 64 clients, p99 at 8
clients under 20 ms.

Caveat: the load generator runs on the same machine and takes CPU from the server (wrk uses
one thread per 32 connections, at most 2); on a 2-core machine that matters. Without wrk the
script falls back to a client of Python threads (http.client, keep-alive), which costs the
server more CPU still; the header says which one ran.

Usage:
    python bench/serving.py                       # 3 rounds of 5 s per configuration
    python bench/serving.py --rounds 1 --duration 3 --clients 8 64
    python bench/serving.py --timeout-micros 1000 # also batching on with --batch-timeout-micros 1000
    python bench/serving.py --profile             # also the pieces of a predict, and a no-op tornado server
    python bench/serving.py --hidden 1024 1024    # a wider MLP instead of the digits one
    python bench/serving.py --load threads        # Python client threads instead of wrk
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_facts, median, print_facts, print_table  # noqa: E402

TARGET_RATIO_64 = 3.0
TARGET_P99_8_MS = 20.0
N_BODIES = 16
MODEL = "digits"

LUA = r"""
-- Cycle through pre-formatted POST requests; report totals and percentiles as one JSON line.
local bodies = {}
local reqs = {}
local i = 0
init = function(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format("POST", nil, {["Content-Type"] = "application/json"}, line)
    end
  end
  f:close()
end
request = function()
  i = i % #reqs + 1
  return reqs[i]
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.timeout, latency:percentile(50), latency:percentile(99),
    latency.max))
end
"""


# ----------------------------------------------------------------- the model
def export_digits(base_dir: Path, steps: int, hidden: list[int]) -> tuple[np.ndarray, Any]:
    """Train a 64 -> hidden... -> 10 MLP on sklearn's digits ``steps`` Adam steps; export it.

    The default ``hidden=[32]`` is the digits classifier of tests/serving/conftest.py. The
    model goes to ``base_dir/state/models/digits/1``. Returns (the digits inputs, a function
    rows -> reference probabilities from g.run).
    """
    from sklearn.datasets import load_digits

    import kernelflow as kf

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype("float32")
    g = kf.connect("inproc", state_dir=base_dir / "state").graph(MODEL)
    x = g.placeholder((None, 64), "float32", name="x")
    labels = g.placeholder((None,), "int64", name="y")
    rng = np.random.default_rng(0)
    h, width = x, 64
    for i, n in enumerate([*hidden, 10]):
        w = g.variable((rng.standard_normal((width, n)) * np.sqrt(2.0 / width)).astype("float32"), name=f"w{i + 1}")
        h = h @ w + g.variable(np.zeros(n, "float32"), name=f"b{i + 1}")
        if i < len(hidden):
            h = kf.relu(h)
        width = n
    train = kf.optim.Adam(lr=1e-2).minimize(kf.mean(kf.softmax_cross_entropy(h, labels)))
    probs, cls = kf.softmax(h), kf.argmax(h, axis=1)
    for i in range(steps):
        sl = slice((i * 128) % 1536, (i * 128) % 1536 + 128)
        g.run(train, feed={x: X[sl], labels: y[sl].astype("int64")})
    g.export(MODEL, inputs={"image": x}, outputs={"probabilities": probs, "class": cls})

    def reference(rows: np.ndarray) -> np.ndarray:
        return g.run(probs, feed={x: rows})

    return X, reference


# ----------------------------------------------------------------- the servers
class Server:
    """A ``kernelflow serve-models`` subprocess (or ``command``) on a free loopback port."""

    def __init__(self, base: Path, args: list[str], command: list[str] | None = None):
        exe = shutil.which("kernelflow", path=os.path.dirname(sys.executable)) or "kernelflow"
        cmd = command or [exe, "serve-models", "--model-base-path", str(base), "--port", "0", "--log-level", "WARNING"]
        self.proc = subprocess.Popen(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.port = None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while self.port is None and time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"http://[^:/]+:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
        if self.port is None:
            self.stop()
            raise RuntimeError("serve-models did not start:\n" + "".join(lines))
        # Drain its output so a chatty server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/models/{MODEL}:predict"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def post(port: int, body: bytes) -> tuple[int, dict]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", f"/v1/models/{MODEL}:predict", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, json.loads(r.read())
    finally:
        c.close()


def check_answers(server: Server, bodies: list[bytes], X: np.ndarray, reference: Any) -> None:
    """Every body's answer matches g.run on the same row (the benchmark measures right answers)."""
    ref = reference(X[:N_BODIES])
    for i, b in enumerate(bodies):
        status, doc = post(server.port, b)
        if status != 200:
            raise RuntimeError(f"predict answered {status}: {doc}")
        got = np.asarray(doc["predictions"][0]["probabilities"])
        np.testing.assert_allclose(got, ref[i], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------- load generators
def run_wrk(url: str, clients: int, duration: float, body_file: Path, lua_file: Path) -> dict:
    threads = max(1, min(2, clients // 32))
    cmd = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{duration:g}s", "--timeout", "10s",
           "-s", str(lua_file), url, "--", str(body_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    m = re.search(r"WRKJSON (\{.*\})", out.stdout)
    if not m:
        raise RuntimeError(f"wrk gave no summary: {out.stdout}\n{out.stderr}")
    s = json.loads(m.group(1))
    errors = s["status_errors"] + s["connect_errors"] + s["read_errors"] + s["timeouts"]
    return {"rps": s["requests"] / (s["duration_us"] / 1e6), "p50_ms": s["p50_us"] / 1e3,
            "p99_ms": s["p99_us"] / 1e3, "errors": errors, "requests": s["requests"]}


def run_threads(port: int, clients: int, duration: float, bodies: list[bytes]) -> dict:
    """Fallback load: ``clients`` threads, each a keep-alive http.client connection in a closed loop."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.perf_counter() + duration

    def client(k: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            c.request("POST", f"/v1/models/{MODEL}:predict", bodies[i % len(bodies)],
                      {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                errors[k] += 1
            lat[k].append(time.perf_counter() - t0)
            i += 1
        c.close()

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    allat = np.concatenate([np.asarray(x) for x in lat]) if any(lat) else np.zeros(1)
    return {"rps": len(allat) / wall, "p50_ms": float(np.percentile(allat, 50)) * 1e3,
            "p99_ms": float(np.percentile(allat, 99)) * 1e3, "errors": sum(errors), "requests": len(allat)}


# ----------------------------------------------------------------- in-process profile
NOOP_SERVER = """
import asyncio, tornado.web, tornado.httpserver, tornado.netutil
class H(tornado.web.RequestHandler):
    def post(self, *_):
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"predictions": []}')
async def main():
    s = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/v1/models.*", H)]))
    socks = tornado.netutil.bind_sockets(0, "127.0.0.1")
    s.add_sockets(socks)
    print(f"noop on http://127.0.0.1:{socks[0].getsockname()[1]}/", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def profile(base: Path, bodies: list[bytes]) -> None:
    """Time the pieces of one REST predict in this process: JSON, parsing, the run, formatting."""
    from kernelflow.runtime_server.engine.devices import DeviceManager
    from kernelflow.runtime_server.serving.loaded import LoadedModel
    from kernelflow.runtime_server.serving.rest import format_predict, parse_predict

    m = LoadedModel(MODEL, 1, base / MODEL / "1", DeviceManager("cpu"))
    body = bodies[0]

    def timeit(fn: Any, n: int = 2000) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n * 1e6

    doc = json.loads(body)
    inputs, rows = parse_predict(doc, m.inputs)
    out = m.predict(inputs)
    x64 = {"image": np.repeat(inputs["image"], 64, axis=0)}
    pieces = [("json.loads of the body", timeit(lambda: json.loads(body))),
              ("parse_predict (JSON -> arrays)", timeit(lambda: parse_predict(doc, m.inputs))),
              ("run, 1 row", timeit(lambda: m.predict(inputs))),
              ("run, 64 rows, per row", timeit(lambda: m.predict(x64), 500) / 64),
              ("format_predict + json.dumps", timeit(lambda: json.dumps(format_predict(out, rows))))]
    print("\nIn-process cost of the pieces of a one-instance predict (one sample, noisy machine):")
    print_table(["piece", "µs"], [(k, f"{v:,.0f}") for k, v in pieces])


# ----------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="training steps before export")
    ap.add_argument("--hidden", type=int, nargs="+", default=[32],
                    help="hidden layer widths (default 32: the digits MLP of the tests)")
    ap.add_argument("--load", choices=["auto", "wrk", "threads"], default="auto")
    ap.add_argument("--timeout-micros", type=int, default=None,
                    help="also run batching on with this --batch-timeout-micros (the default is 0: batch only what "
                         "is queued)")
    ap.add_argument("--profile", action="store_true",
                    help="also time the pieces of a predict in-process, and a no-op tornado handler under load")
    ap.add_argument("--server-arg", action="append", default=[],
                    help="extra argument for every server (repeatable), e.g. --server-arg=--max-batch-size=32")
    args = ap.parse_args()

    load = args.load if args.load != "auto" else ("wrk" if shutil.which("wrk") else "threads")
    facts = machine_facts()
    if load == "wrk":
        wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1]
        facts["load generator"] = f"wrk ({wrk_version}), on the same machine"
    else:
        facts["load generator"] = "Python threads (http.client), on the same machine"
    facts["model"] = f"64 -> {' -> '.join(map(str, args.hidden))} -> 10 MLP, one instance per request (row format)"
    print_facts(facts)

    modes = {"on": ["--batching", "on"], "off": ["--batching", "off"]}
    if args.timeout_micros is not None:
        t = str(args.timeout_micros)
        modes = {"on": modes["on"], f"on t={t}": ["--batching", "on", "--batch-timeout-micros", t], "off": modes["off"]}
    with tempfile.TemporaryDirectory(prefix="kf-bench-serving-") as tmp:
        tmpd = Path(tmp)
        X, reference = export_digits(tmpd, args.steps, args.hidden)
        base = tmpd / "state" / "models"
        bodies = [json.dumps({"instances": [X[i].tolist()]}).encode() for i in range(N_BODIES)]
        body_file, lua_file = tmpd / "bodies.txt", tmpd / "post.lua"
        body_file.write_bytes(b"\n".join(bodies) + b"\n")
        lua_file.write_text(LUA)
        if args.profile:
            profile(base, bodies)

        servers = {mode: Server(base, a + args.server_arg) for mode, a in modes.items()}
        if args.profile and load == "wrk":
            modes["tornado no-op"] = []
            servers["tornado no-op"] = Server(base, [], command=[sys.executable, "-c", NOOP_SERVER])
        try:
            for mode, s in servers.items():
                if mode != "tornado no-op":
                    check_answers(s, bodies, X, reference)

            def measure(mode: str, c: int, duration: float) -> dict:
                s = servers[mode]
                if load == "wrk":
                    return run_wrk(s.url, c, duration, body_file, lua_file)
                return run_threads(s.port, c, duration, bodies)

            for mode in modes:  # warm-up
                measure(mode, max(args.clients), 1.0)
            results: dict[tuple[str, int], list[dict]] = {(m, c): [] for m in modes for c in args.clients}
            for r in range(args.rounds):
                for c in args.clients:
                    for mode in modes:
                        res = measure(mode, c, args.duration)
                        results[(mode, c)].append(res)
                        print(f"  round {r + 1}/{args.rounds}: {c:>3} clients, {mode:>13}: "
                              f"{res['rps']:8,.0f} req/s  p50 {res['p50_ms']:6.2f} ms  p99 {res['p99_ms']:7.2f} ms"
                              f"  errors {res['errors']}", flush=True)
        finally:
            for s in servers.values():
                s.stop()

    def med(mode: str, c: int, key: str) -> float:
        return median([x[key] for x in results[(mode, c)]])

    print(f"\nREST predict, one instance per request; medians of {args.rounds} rounds of {args.duration:g} s "
          "(p50 / p99 latency in ms):")
    headers = ["clients"]
    for mode in modes:
        headers += [f"{mode} req/s", f"{mode} p50 / p99"]
    headers += [f"{mode} / off" for mode in modes if mode != "off"] + ["errors"]
    rows = []
    for c in args.clients:
        row: list[Any] = [c]
        for mode in modes:
            row += [f"{med(mode, c, 'rps'):,.0f}", f"{med(mode, c, 'p50_ms'):.2f} / {med(mode, c, 'p99_ms'):.2f}"]
        row += [f"{med(mode, c, 'rps') / med('off', c, 'rps'):.2f}x" for mode in modes if mode != "off"]
        row.append(sum(x["errors"] for m in modes for x in results[(m, c)]))
        rows.append(row)
    print_table(headers, rows)

    print("\nTargets:")
    if 64 in args.clients:
        ratio = med("on", 64, "rps") / med("off", 64, "rps")
        print(f"  64 clients, batching on / off throughput: {ratio:.2f}x (target >= {TARGET_RATIO_64:g}x): "
              + ("met" if ratio >= TARGET_RATIO_64 else "MISSED"))
    if 8 in args.clients:
        p99 = med("on", 8, "p99_ms")
        print(f"  8 clients, p99 with batching on: {p99:.2f} ms (target < {TARGET_P99_8_MS:g} ms): "
              + ("met" if p99 < TARGET_P99_8_MS else "MISSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
