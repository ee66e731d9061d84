"""Long-run fuzz of the wire decoder and of every RPC method's parameters (issue #15).

Two targets, alternating, in one process (no server, so millions of inputs fit in an hour):

- decoder: random bytes, truncated and bit-flipped valid messages, and msgpack values that are
  not kernelflow's (foreign ext codes, deep nesting, huge declared lengths) go into a
  `MessageReader` in random pieces; anything but a decoded value, ProtocolError or
  ResourceExhaustedError is a crash.
- methods: every method of the table is called with random params (right and wrong arity,
  every msgpack type, hostile names, huge numbers and shapes, small arrays); anything but a
  KernelflowError, and any InternalError (an unexpected exception inside a method), is a
  crash. A refused call must change nothing: graph versions, variable values, datasets, jobs
  and models are compared before and after it.

Usage: ``python bench/fuzz.py --seconds 3600`` prints a table of inputs, crashes and state
changes (and the first few crashes). Not timed: it is a robustness run, not a benchmark.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from typing import Any

import msgpack
import numpy as np

from kernelflow.errors import InternalError, KernelflowError
from kernelflow.protocol.codec import MessageReader, encode
from kernelflow.runtime_server.service import RuntimeService

NAMES = ["g", "d", "x", "w", "", "a" * 300, "../../etc/passwd", "x\ny", "\x00", "ü", "graph.run", "latest"]


def rand_value(rng: random.Random, depth: int = 0) -> Any:
    k = rng.randrange(14 if depth < 3 else 10)
    if k == 0:
        return None
    if k == 1:
        return rng.random() < 0.5
    if k == 2:
        return rng.choice([0, 1, -1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 7, 30])
    if k == 3:
        return rng.choice([0.0, -1.5, 1e308, float("inf"), float("nan"), 0.5])
    if k in (4, 5):
        return rng.choice(NAMES)
    if k == 6:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    if k == 7:
        return np.arange(rng.randrange(6)).astype(rng.choice(["<f4", "<i8", "|b1", "<f8"]))
    if k == 8:
        return np.float32(rng.random())
    if k == 9:
        return [rng.choice([2**62, 3, 0, -1])]
    if k in (10, 11):
        return [rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["name", "op", "inputs", "attrs", "dtype", "shape", "graph", "steps", "data", "feed", "x"]
    return {rng.choice(keys): rand_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def state_of(svc: RuntimeService) -> tuple:
    graphs = tuple(sorted((s.name, s.graph.version, tuple(sorted((k, np.asarray(v).tobytes())
                                                                 for k, v in s.variables.items())))
                          for s in svc.graphs.sessions()))
    datasets = tuple(sorted(svc.datasets.datasets))
    jobs = tuple(sorted(svc.jobs.jobs))
    models = tuple(sorted(m["name"] for m in svc.model_methods.list()))
    return graphs, datasets, jobs, models


def fuzz_method(svc: RuntimeService, rng: random.Random, names: list[str], stats: dict) -> None:
    name = rng.choice(names)
    entry = svc.methods.lookup(name)
    n = len(entry.signature.parameters)
    params = [rand_value(rng) for _ in range(max(0, n + rng.choice([-1, 0, 0, 0, 1])))]
    before = state_of(svc)
    try:
        svc.call(name, params)
    except InternalError as e:
        stats["crashes"] += 1
        stats["examples"].append(f"{name}{params!r:.200}: {e}")
    except KernelflowError:
        if state_of(svc) != before:
            stats["state_changes"] += 1
            stats["examples"].append(f"state changed by refused {name}{params!r:.200}")
    except BaseException as e:  # noqa: BLE001 -- counted as a crash
        stats["crashes"] += 1
        stats["examples"].append(f"{name}{params!r:.200}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
    stats["methods"] += 1


def fuzz_decoder(rng: random.Random, stats: dict) -> None:
    k = rng.randrange(4)
    if k == 0:
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    else:
        msg = [0, rng.randrange(2**32), rng.choice(NAMES), [rand_value(rng) for _ in range(rng.randrange(5))]]
        data = bytearray(b"".join(bytes(f) for f in encode(msg)))
        if k == 1 and data:
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif k == 2:
            data = data[:rng.randrange(len(data) + 1)]
        else:
            data += msgpack.packb(rng.choice([msgpack.ExtType(rng.randrange(128), b"xyz"),
                                              [[[[[[[[[[[]]]]]]]]]]] * 3, {"k": [1] * 50}]))
            data += bytes([rng.choice([0xDD, 0xDF, 0xC6, 0xDB])]) + b"\xff\xff\xff\xf0"  # huge declared lengths
    r = MessageReader(max_message_bytes=1 << 20, slice_values=rng.choice([None, 7, 1000]))
    pos = 0
    try:
        while pos < len(data):
            step = rng.randrange(1, 64)
            target = r.want_into()
            if target is not None:
                n = min(len(target), len(data) - pos)
                target[:n] = data[pos:pos + n]
                r.filled(n)
                pos += n
            else:
                r.feed(data[pos:pos + step])
                pos += step
            for _ in r.messages():
                pass
            while r.paused:
                for _ in r.messages():
                    pass
    except KernelflowError as e:
        if isinstance(e, InternalError):
            stats["crashes"] += 1
            stats["examples"].append(f"decoder {bytes(data)[:80]!r}: {e}")
    except BaseException as e:  # noqa: BLE001 -- counted as a crash
        stats["crashes"] += 1
        stats["examples"].append(f"decoder {bytes(data)[:80]!r}: {type(e).__name__}: {e}")
    stats["decoder"] += 1


def setup(svc: RuntimeService) -> None:
    svc.call("graph.open", ["g"])
    g = svc.graphs.session("g")
    if not g.variables:
        svc.call("graph.extend", ["g", g.graph.version, [
            {"name": "w", "op": "variable", "inputs": [], "attrs": {"initial": np.ones(3, "float32")}}]])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    svc = RuntimeService()
    # job.start could start real training from a valid random spec; it is fuzzed with specs
    # too, but the harness keeps the process single-threaded otherwise.
    names = [n for n in svc.methods if n not in ("job.start",)]
    stats: dict = {"methods": 0, "decoder": 0, "crashes": 0, "state_changes": 0, "examples": []}
    t0 = time.monotonic()
    last = t0
    try:
        while time.monotonic() - t0 < args.seconds:
            if "g" not in svc.graphs.graphs:
                setup(svc)
            for _ in range(50):
                fuzz_decoder(rng, stats)
                fuzz_method(svc, rng, names, stats)
            if time.monotonic() - last > 60:
                last = time.monotonic()
                print(f"{last - t0:8.0f} s  methods {stats['methods']}  decoder {stats['decoder']}  crashes "
                      f"{stats['crashes']}  state changes {stats['state_changes']}", flush=True)
    finally:
        svc.shutdown()
    total = stats["methods"] + stats["decoder"]
    print(f"\n| target | inputs | crashes | state changes |\n|---|---|---|---|\n"
          f"| decoder | {stats['decoder']} | | |\n| methods ({len(names)}) | {stats['methods']} | | "
          f"{stats['state_changes']} |\n| total | {total} | {stats['crashes']} | {stats['state_changes']} |\n"
          f"seconds: {time.monotonic() - t0:.0f}, seed {args.seed}")
    for ex in stats["examples"][:10]:
        print("---", ex, file=sys.stderr)
    return 1 if stats["crashes"] or stats["state_changes"] else 0


if __name__ == "__main__":
    sys.exit(main())
