"""Load run (issue #15): many concurrent clients with a mix of calls against one `kernelflow serve`.

Each client (a thread; the clients are spread over several processes so the load generator
is not one GIL) connects, authenticates and loops over a mix: ``info``, ``graph.list``, a
small ``graph.run`` (a 64x64 matmul chain), ``variable.read`` / ``variable.assign`` and
``dataset.read``, each on graphs shared by a few clients. The server's RSS is sampled once a
second. Prints calls, errors, p50/p99 latency per method and the RSS at start, peak and end.

Usage: ``python bench/load.py --clients 200 --seconds 300``. On a loaded machine the latencies
are those of the machine; the run checks errors and bounded memory first.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "load-token-0123456789"


def rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def client_proc(url: str, first: int, n: int, seconds: float, out: mp.Queue) -> None:
    import kernelflow as kf

    results: list[tuple[str, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        rng = np.random.default_rng(i)
        try:
            rt = kf.connect(url, token=TOKEN, timeout=120)
            g = rt.graph(f"load-{os.getpid()}-{i % 5}")
            with lock:  # a graph is shared by the clients of one process; built once
                if "w" not in g:
                    w = g.variable(np.eye(64, dtype="float32"), name="w")
                    kf.sum(w @ w @ w, name="y")
                    g.sync()
            w, y = g["w"], g["y"]
            ds = rt.dataset("load-data") if i else None
        except Exception as e:  # noqa: BLE001 -- counted
            with lock:
                errors.append(f"setup {i}: {type(e).__name__}: {e}")
            return
        mine: list[tuple[str, float]] = []
        while time.monotonic() < stop_at:
            k = rng.integers(6)
            t = time.perf_counter()
            try:
                if k == 0:
                    rt.info()
                    name = "info"
                elif k == 1:
                    rt.graphs()
                    name = "graph.list"
                elif k == 2:
                    g.run(y)
                    name = "graph.run"
                elif k == 3:
                    g.read_variable(w)
                    name = "variable.read"
                elif k == 4:
                    g.write_variable(w, np.eye(64, dtype="float32"))
                    name = "variable.assign"
                else:
                    if ds is not None:
                        ds.read("x", 0, 64)
                    name = "dataset.read"
            except Exception as e:  # noqa: BLE001 -- counted
                with lock:
                    errors.append(f"client {i}: {type(e).__name__}: {e}")
                continue
            mine.append((name, time.perf_counter() - t))
        rt.close()
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=client, args=(first + j,)) for j in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((results, errors))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--procs", type=int, default=8)
    args = p.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    srv = subprocess.Popen([sys.executable, "-m", "kernelflow", "serve", "--port", "0", "--token", TOKEN,
                            "--http-port", "-1", "--log-level", "WARNING"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, text=True)
    url = ""
    while not url:
        line = srv.stdout.readline()
        m = re.search(r"listening on (kf://\S+)", line)
        if m:
            url = m.group(1)
    import kernelflow as kf

    with kf.connect(url, token=TOKEN) as rt:
        rt.dataset("load-data", {"x": np.arange(4096 * 8, dtype="float32").reshape(4096, 8)})
    rss = [rss_mib(srv.pid)]
    q: mp.Queue = mp.Queue()
    per = [args.clients // args.procs + (1 if i < args.clients % args.procs else 0) for i in range(args.procs)]
    procs, first = [], 0
    for n in per:
        procs.append(mp.Process(target=client_proc, args=(url, first, n, args.seconds, q)))
        first += n
    t0 = time.monotonic()
    for pr in procs:
        pr.start()
    results: list[tuple[str, float]] = []
    errors: list[str] = []
    got = 0
    while got < len(procs):
        try:
            r, e = q.get(timeout=1.0)
            results += r
            errors += e
            got += 1
        except Exception:  # queue.Empty: sample the server meanwhile
            rss.append(rss_mib(srv.pid))
    for pr in procs:
        pr.join()
    took = time.monotonic() - t0
    rss.append(rss_mib(srv.pid))
    srv.terminate()
    srv.wait(30)
    print(f"{args.clients} clients in {args.procs} processes for {took:.0f} s: {len(results)} calls "
          f"({len(results) / took:.0f}/s), {len(errors)} errors")
    print("| method | calls | p50 ms | p99 ms |\n|---|---|---|---|")
    for name in sorted({n for n, _ in results}):
        lat = np.array([t for n, t in results if n == name]) * 1e3
        print(f"| {name} | {len(lat)} | {np.percentile(lat, 50):.1f} | {np.percentile(lat, 99):.1f} |")
    lat = np.array([t for _, t in results]) * 1e3
    print(f"| all | {len(lat)} | {np.percentile(lat, 50):.1f} | {np.percentile(lat, 99):.1f} |")
    print(f"server RSS MiB: start {rss[0]:.0f}, peak {max(rss):.0f}, end {rss[-1]:.0f} "
          f"(first half peak {max(rss[:len(rss) // 2 or 1]):.0f}, second half peak {max(rss[len(rss) // 2:]):.0f})")
    for e in errors[:10]:
        print("error:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
