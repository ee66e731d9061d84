"""RPC benchmark: kernelflow's TCP runtime server beside a bare msgpack socket, raw TCP and TensorFlow 1.x gRPC.

One run on loopback, three parts, one table:

(a) Round trip of fetching a scalar variable: kernelflow over TCP (``g.run(v)`` and a
    ``make_callable`` handle) beside the floor (a bare msgpack request/response between two
    Python processes: the client packs ``[0, msgid, "x", []]``, an echo process answers
    ``[1, msgid, nil, 1.0]``), TensorFlow 1.x over gRPC (a ``tf.distribute.Server`` in
    another process, ``Session(server.target)`` here), TF1's in-process Session and
    kernelflow in-process. Median and p99 of every call, pooled over the rounds.
(b) Moving a 64 MiB float32 array: fetch (``variable.read``, ``g.run(v)``), feed
    (``variable.assign``) and feed+fetch (``g.run(identity(x), feed={x: a})``, both
    directions counted) beside raw loopback TCP between two processes (``sendall`` /
    ``recv_into`` a fresh ``np.empty``) and TF1 over gRPC doing the same.
(c) The MLP training step of bench/train_mlp.py at batch 256 (784-512-512-10, Adam), on the
    in-process runtime and through the TCP server: steps/s and the ratio.

Every part interleaves its contenders round by round (rotating who goes first) and reports
medians, because the machine is small and noisy. GB/s is 1e9 bytes of payload per second.
All peer processes are started at the beginning and killed at the end, whatever happens.

Usage:
    python bench/rpc.py                  # the whole run (about 2 minutes on 2 cores)
    python bench/rpc.py --quick          # fewer rounds, for a smoke test
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _common import Contender, machine_facts, median, print_facts, print_table, run_interleaved  # noqa: E402
from _rpc_peers import RAW_ACK, RAW_HEADER  # noqa: E402
from train_mlp import build_kf_graph, make_batches, make_weights  # noqa: E402

TOKEN = "bench-rpc-token"
START_TIMEOUT_S = 90.0
TARGET_FLOOR_X = 2.0  # kernelflow TCP scalar round trip: median <= 2x the bare msgpack floor
TARGET_RAW_FRACTION = 0.5  # 64 MiB: >= 50% of raw TCP's GB/s
TARGET_MLP_FRACTION = 0.9  # MLP step: TCP >= 0.9x in-process


# --------------------------------------------------------------------------- child processes
class Child:
    """A subprocess whose output goes to a log file; ``ready`` waits for a line matching a pattern.

    Its stdin is a pipe we hold: the bench peers exit when it closes.
    """

    def __init__(self, name: str, cmd: list[str], logdir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log = logdir / f"{name}.log"
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=self._out,
                                     stderr=subprocess.STDOUT, env=env)

    def ready(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.log.read_text(errors="replace"))
            if m:
                return m
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{self.name} did not start (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._out.close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(None)
    return s


class MsgpackFloor:
    """The bare msgpack request/response the way a minimal client does it."""

    def __init__(self, port: int):
        import msgpack

        self.sock = _connect(port)
        self.packer = msgpack.Packer()
        self.unpacker = msgpack.Unpacker()
        self.msgid = 0

    def call(self) -> Any:
        self.msgid += 1
        self.sock.sendall(self.packer.pack([0, self.msgid, "x", []]))
        while True:
            for msg in self.unpacker:
                return msg[3]
            self.unpacker.feed(self.sock.recv(65536))


def _recv_exact_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("raw peer closed the connection")
        got += n


class RawTcp:
    """Raw loopback TCP to the ``raw`` peer: fetch, feed and echo of n bytes (see _rpc_peers.raw_peer)."""

    def __init__(self, port: int):
        self.sock = _connect(port)

    def fetch(self, n: int) -> np.ndarray:
        self.sock.sendall(RAW_HEADER.pack(b"G", n))
        buf = np.empty(n, np.uint8)
        _recv_exact_into(self.sock, memoryview(buf))
        return buf

    def feed(self, a: np.ndarray) -> None:
        self.sock.sendall(RAW_HEADER.pack(b"F", a.nbytes))
        self.sock.sendall(memoryview(a).cast("B"))
        if self.sock.recv(1) != RAW_ACK:
            raise ConnectionError("raw peer did not acknowledge")

    def echo(self, a: np.ndarray) -> np.ndarray:
        self.sock.sendall(RAW_HEADER.pack(b"E", a.nbytes))
        self.sock.sendall(memoryview(a).cast("B"))
        buf = np.empty(a.shape, a.dtype)
        _recv_exact_into(self.sock, memoryview(buf).cast("B"))
        return buf


# --------------------------------------------------------------------------- graphs
@dataclass
class KfGraph:
    graph: Any
    scalar: Any
    x: Any
    ident: Any
    big: Any


def kf_graph(rt: Any, name: str, n_floats: int) -> KfGraph:
    """A scalar variable, a placeholder with its identity and (when n_floats) a big variable."""
    import kernelflow as kf

    g = rt.graph(name)
    s = g.variable(np.float32(1.5), name="s")
    x = g.placeholder((None,), "float32", name="x")
    ident = kf.identity(x, name="ident")
    big = g.variable(np.zeros(n_floats, np.float32), name="big") if n_floats else None
    g.run(s)  # sends the nodes (and the big initial value) now, not inside a timed call
    return KfGraph(g, s, x, ident, big)


@dataclass
class TfGraph:
    sess: Any
    scalar: Any
    x: Any
    ident: Any
    big: Any
    assign_big: Any


def tf_graph(target: str, n_floats: int) -> TfGraph:
    """The same graph in TF1 graph mode, in a Session on ``target`` ('' for in-process)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    graph = tf.Graph()
    with graph.as_default():
        s = v1.Variable(np.float32(1.5), name="s")
        x = v1.placeholder(tf.float32, (None,), name="x")
        ident = tf.identity(x, name="ident")
        big = assign_big = None
        if n_floats:
            big = v1.Variable(tf.zeros([n_floats], tf.float32), name="big")
            assign_big = big.assign(x).op  # run the op only: nothing is fetched back
        init = v1.global_variables_initializer()
    sess = v1.Session(target, graph=graph)
    sess.run(init)
    return TfGraph(sess, s, x, ident, big, assign_big)


def build_mlp(rt: Any, name: str, weights: list) -> Callable[[np.ndarray, np.ndarray], float]:
    """bench/train_mlp.py's kernelflow MLP step (kf.optim.Adam, one callable), on any runtime."""
    m = build_kf_graph(rt, name, weights)
    step = m["g"].make_callable([m["train"], m["loss"]], feed_list=[m["x"], m["y"]])
    return lambda xb, yb: float(step(xb, yb)[1])


# --------------------------------------------------------------------------- timing
@dataclass
class Probe:
    """One contender of (a) or (b): ``fn()`` is one call; results are per-call seconds."""

    name: str
    fn: Callable[[], Any]
    nbytes: int = 0  # payload per call, for GB/s
    ref: str = ""  # the name of the probe it is compared with
    samples: list[float] = field(default_factory=list)
    block: int = 1


def _rotations(probes: list[Probe], rounds: int):
    for r in range(rounds):
        k = r % len(probes)
        yield r, probes[k:] + probes[:k]


def time_latency(probes: list[Probe], rounds: int, block_s: float, warmup_s: float) -> None:
    """Per-call times of small calls, in rounds of ~block_s per probe, the first probe rotating."""
    pc = time.perf_counter
    for p in probes:
        n, t0 = 0, pc()
        while pc() - t0 < warmup_s or n < 20:
            p.fn()
            n += 1
        p.block = max(50, int(block_s * n / (pc() - t0)))
    for _, order in _rotations(probes, rounds):
        for p in order:
            fn, s = p.fn, p.samples
            for _ in range(p.block):
                t0 = pc()
                fn()
                s.append(pc() - t0)


def time_transfer(probes: list[Probe], rounds: int) -> None:
    """One timed call per probe per round (big arrays); gc between calls so no collection lands inside."""
    for p in probes:
        p.fn()
    for _, order in _rotations(probes, rounds):
        for p in order:
            gc.collect()
            t0 = time.perf_counter()
            p.fn()
            p.samples.append(time.perf_counter() - t0)


def _minor_faults_of(pid: int) -> int:
    """A process's minor page faults so far (field 10 of /proc/PID/stat); 0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except OSError:
        return 0


def _us(s: float) -> str:
    return f"{s * 1e6:,.0f} µs"


def _gbs(nbytes: int, s: float) -> str:
    return f"{nbytes / s / 1e9:.2f} GB/s"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --------------------------------------------------------------------------- the run
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=64, help="array size for (b), MiB (default 64)")
    p.add_argument("--latency-rounds", type=int, default=15)
    p.add_argument("--latency-block-s", type=float, default=0.2)
    p.add_argument("--transfer-rounds", type=int, default=15)
    p.add_argument("--mlp-rounds", type=int, default=8)
    p.add_argument("--mlp-batch", type=int, default=256)
    p.add_argument("--server-malloc-tuned", action="store_true",
                   help="start the server with glibc's MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ raised "
                        "(what train_mlp.py --malloc-tuned does in-process)")
    p.add_argument("--quick", action="store_true", help="few rounds: a smoke test, not a measurement")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.latency_rounds, args.latency_block_s, args.transfer_rounds, args.mlp_rounds = 3, 0.05, 2, 2

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up notices out of the table
    t_start = time.monotonic()
    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="kf-bench-rpc-") as tmp:
        logdir = Path(tmp)
        try:
            return _run(args, logdir, children, t_start)
        finally:
            for c in children:
                c.stop()


def _run(args: argparse.Namespace, logdir: Path, children: list[Child], t_start: float) -> int:
    import kernelflow as kf

    log = print if args.verbose else (lambda *a: None)
    py = sys.executable
    peers = str(HERE / "_rpc_peers.py")
    # Start every process first: their imports (TF's especially) overlap.
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(logdir / "runtime"), "PYTHONUNBUFFERED": "1"}
    if args.server_malloc_tuned:
        env.update(MALLOC_MMAP_THRESHOLD_=str(64 << 20), MALLOC_TRIM_THRESHOLD_=str(256 << 20))
    children.append(server := Child("kf-server", [py, "-m", "kernelflow", "serve", "--port", "0", "--token", TOKEN,
                                                  "--log-level", "WARNING"], logdir, env))
    children.append(tf_srv := Child("tf-server", [py, peers, "tf"], logdir))
    children.append(echo := Child("echo", [py, peers, "echo"], logdir))
    children.append(aecho := Child("aecho", [py, peers, "aecho"], logdir))
    children.append(raw := Child("raw", [py, peers, "raw"], logdir))

    n_bytes = args.mib << 20
    n_floats = n_bytes // 4
    url = server.ready(r"listening on (kf://127\.0\.0\.1:\d+)").group(1)
    floor = MsgpackFloor(int(echo.ready(r"READY (\d+)").group(1)))
    afloor = MsgpackFloor(int(aecho.ready(r"READY (\d+)").group(1)))
    raw_tcp = RawTcp(int(raw.ready(r"READY (\d+)").group(1)))
    tf_target = tf_srv.ready(r"READY (grpc://\S+)").group(1)

    tcp = kf.connect(url, token=TOKEN, timeout=120)
    inproc = kf.connect("inproc")
    kt = kf_graph(tcp, "rpc", n_floats)
    ki = kf_graph(inproc, "rpc", 0)
    tg = tf_graph(tf_target, n_floats)
    ti = tf_graph("", 0)
    log(f"set-up {time.monotonic() - t_start:.1f}s; kf {url}, tf {tf_target}")

    # Sanity: every contender fetches the same thing.
    for name, got in [("floor", floor.call()), ("asyncio floor", afloor.call()), ("kf tcp", kt.graph.run(kt.scalar)),
                      ("kf inproc", ki.graph.run(ki.scalar)), ("tf grpc", tg.sess.run(tg.scalar)),
                      ("tf inproc", ti.sess.run(ti.scalar))]:
        assert float(got) in (1.0, 1.5), (name, got)

    # ---------------------------------------------------------------- (a) scalar round trip
    kt_call = kt.graph.make_callable(kt.scalar)
    tg_call = tg.sess.make_callable(tg.scalar)
    lat = [
        Probe("bare msgpack request/response (floor)", floor.call),
        Probe("bare msgpack, asyncio echo server", afloor.call, ref="floor"),
        Probe("kernelflow TCP, g.run(v)", lambda: kt.graph.run(kt.scalar), ref="floor"),
        Probe("kernelflow TCP, make_callable(v)()", kt_call, ref="floor"),
        Probe("kernelflow TCP, rt.info() (no graph work)", tcp.info, ref="floor"),
        Probe("kernelflow in-process, g.run(v)", lambda: ki.graph.run(ki.scalar), ref="floor"),
        Probe("TF1 gRPC Session.run(v) (2 processes)", lambda: tg.sess.run(tg.scalar), ref="floor"),
        Probe("TF1 gRPC Session.make_callable(v)()", tg_call, ref="floor"),
        Probe("TF1 in-process Session.run(v)", lambda: ti.sess.run(ti.scalar), ref="floor"),
    ]
    t0 = time.monotonic()
    time_latency(lat, args.latency_rounds, args.latency_block_s, warmup_s=0.3)
    log(f"(a) {time.monotonic() - t0:.1f}s")

    # ---------------------------------------------------------------- (b) 64 MiB
    a = np.random.default_rng(0).standard_normal(n_floats, dtype=np.float32)
    kt.big.set(a)
    assert np.array_equal(kt.big.value(), a), "kernelflow variable.read returned other values"
    assert np.array_equal(kt.graph.run(kt.ident, feed={kt.x: a}), a), "kernelflow identity returned other values"
    assert np.array_equal(tg.sess.run(tg.ident, feed_dict={tg.x: a}), a)
    assert raw_tcp.echo(a).tobytes()[:4096] == a.tobytes()[:4096]
    mb = f"{args.mib} MiB"
    xfer = [
        Probe(f"fetch {mb}: raw TCP recv_into", lambda: raw_tcp.fetch(n_bytes), n_bytes),
        Probe(f"fetch {mb}: kernelflow TCP variable.read (v.value())", kt.big.value, n_bytes, "fetch"),
        Probe(f"fetch {mb}: kernelflow TCP g.run(v)", lambda: kt.graph.run(kt.big), n_bytes, "fetch"),
        Probe(f"fetch {mb}: TF1 gRPC Session.run(v)", lambda: tg.sess.run(tg.big), n_bytes, "fetch"),
        Probe(f"feed {mb}: raw TCP sendall", lambda: raw_tcp.feed(a), n_bytes),
        Probe(f"feed {mb}: kernelflow TCP variable.assign (v.set(a))", lambda: kt.big.set(a), n_bytes, "feed"),
        Probe(f"feed {mb}: TF1 gRPC Session.run(v.assign(x), feed)",
              lambda: tg.sess.run(tg.assign_big, feed_dict={tg.x: a}), n_bytes, "feed"),
        Probe(f"feed+fetch {mb}: raw TCP echo", lambda: raw_tcp.echo(a), 2 * n_bytes),
        Probe(f"feed+fetch {mb}: kernelflow TCP g.run(identity(x), feed)",
              lambda: kt.graph.run(kt.ident, feed={kt.x: a}), 2 * n_bytes, "echo"),
        Probe(f"feed+fetch {mb}: TF1 gRPC Session.run(identity(x), feed)",
              lambda: tg.sess.run(tg.ident, feed_dict={tg.x: a}), 2 * n_bytes, "echo"),
    ]
    t0 = time.monotonic()
    time_transfer(xfer, args.transfer_rounds)
    log(f"(b) {time.monotonic() - t0:.1f}s")

    # ---------------------------------------------------------------- (c) MLP step
    weights = make_weights()
    batches = make_batches(args.mlp_batch)
    steps = {"in-process": build_mlp(inproc, "mlp", weights), "TCP": build_mlp(tcp, "mlp", weights)}
    # Sanity: the same start on the same batches gives the same losses both ways.
    losses = {k: [s(*batches[i % len(batches)]) for i in range(5)] for k, s in steps.items()}
    assert np.allclose(losses["in-process"], losses["TCP"], rtol=1e-5), losses
    mlp = []
    for k, s in steps.items():
        cycle = itertools.cycle(batches)
        mlp.append(Contender(f"MLP step, batch {args.mlp_batch}: kernelflow {k}", lambda s=s, c=cycle: s(*next(c))))
    t0 = time.monotonic()
    run_interleaved(mlp, rounds=args.mlp_rounds, block_s=0.5, warmup_s=1.0, gap_s=0.2,
                    log=log if args.verbose else None)
    # Minor page faults per step on each side (the TCP server's are its, read from /proc).
    tcp_step, cycle = steps["TCP"], itertools.cycle(batches)
    f0 = _minor_faults_of(server.proc.pid)
    for _ in range(20):
        tcp_step(*next(cycle))
    server_faults = (_minor_faults_of(server.proc.pid) - f0) / 20
    log(f"(c) {time.monotonic() - t0:.1f}s")

    # ---------------------------------------------------------------- the table
    rows, verdicts = [], []
    floor_med = median(lat[0].samples)
    for pr in lat:
        med = median(pr.samples)
        p99 = float(np.percentile(pr.samples, 99))
        ratio = med / floor_med
        target = "-"
        if pr.name.startswith("kernelflow TCP, g.run"):
            target = f"<= {TARGET_FLOOR_X:.1f}x floor: {_verdict(ratio <= TARGET_FLOOR_X)}"
            verdicts.append(ratio <= TARGET_FLOOR_X)
        rows.append(["(a) scalar fetch", pr.name, _us(med), f"p99 {_us(p99)}", f"{ratio:.2f}x floor", target])
    refs = {"fetch": xfer[0], "feed": xfer[4], "echo": xfer[7]}
    for pr in xfer:
        med = median(pr.samples)
        best = min(pr.samples)
        if pr.ref:
            ref = refs[pr.ref]
            frac = median(ref.samples) / med * pr.nbytes / ref.nbytes
            vs = f"{frac:.2f}x raw"
            target = "-"
            if pr.name.split(":")[1].strip().startswith("kernelflow"):
                target = f">= {TARGET_RAW_FRACTION:.2f}x raw: {_verdict(frac >= TARGET_RAW_FRACTION)}"
                verdicts.append(frac >= TARGET_RAW_FRACTION)
        else:
            vs, target = "1.00x raw", "-"
        rows.append(["(b) big array", pr.name, _gbs(pr.nbytes, med), f"best {_gbs(pr.nbytes, best)}", vs, target])
    base = median(mlp[0].rates)
    for c in mlp:
        med = median(c.rates)
        ratio = med / base
        target = "-"
        if c is not mlp[0]:
            target = f">= {TARGET_MLP_FRACTION:.2f}x in-process: {_verdict(ratio >= TARGET_MLP_FRACTION)}"
            verdicts.append(ratio >= TARGET_MLP_FRACTION)
        rows.append(["(c) training", c.name, f"{med:,.1f} steps/s", f"best {max(c.rates):,.1f} steps/s",
                     f"{ratio:.2f}x in-process", target])

    print(f"\n## RPC on loopback: kernelflow TCP server vs bare msgpack, raw TCP and TF1 gRPC  "
          f"(rounds: a {args.latency_rounds}, b {args.transfer_rounds}, c {args.mlp_rounds})")
    print_table(["part", "contender", "median", "spread", "ratio", "target"], rows, align="llrrrl")
    kt_med = median(next(p for p in lat if p.name.startswith("kernelflow TCP, g.run")).samples)
    tg_med = median(next(p for p in lat if p.name.startswith("TF1 gRPC Session.run")).samples)
    print(f"\nkernelflow TCP g.run scalar round trip: {tg_med / kt_med:.1f}x faster than TF1 gRPC Session.run; "
          f"samples per probe in (a): {min(len(p.samples) for p in lat):,}-{max(len(p.samples) for p in lat):,}.")
    print("GB/s counts payload bytes (1e9/s); feed+fetch counts both directions. Ratios in (b) compare GB/s "
          "with the raw TCP row of the same direction.")
    malloc = "malloc tuned" if args.server_malloc_tuned else "default malloc"
    print(f"MLP minor page faults per step: in-process {median(mlp[0].faults):,.0f} (bench process), "
          f"TCP {server_faults:,.0f} (server process; {malloc}).")
    print(f"targets met: {sum(verdicts)}/{len(verdicts)}; wall time {time.monotonic() - t_start:.0f}s\n")
    print_facts(machine_facts())
    return 0


if __name__ == "__main__":
    sys.exit(main())
