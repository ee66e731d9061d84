"""Shared timing helpers for the benchmarks: interleaved rounds, medians, machine facts, tables.

Contents: Contender, run_interleaved, median, tune_malloc, machine_facts, blas_info, print_table.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]


@dataclass
class Contender:
    """One implementation under test: ``step()`` runs one unit of work (a training step)."""

    name: str
    step: Callable[[], Any]
    rates: list[float] = field(default_factory=list)  # units per second, one per round
    faults: list[float] = field(default_factory=list)  # minor page faults per unit, one per round
    block: int = 1  # units per timed block, calibrated during warm-up


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def _time_block(step: Callable[[], Any], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - t0


def run_interleaved(contenders: Sequence[Contender], rounds: int = 10, block_s: float = 0.5,
                    warmup_s: float = 1.0, gap_s: float = 0.2, log: Callable[[str], None] | None = None) -> None:
    """Time every contender in rounds (A B C D, A B C D, ...), filling each one's ``rates``.

    Each contender first warms up for about ``warmup_s`` seconds, which also calibrates its
    block length to about ``block_s`` seconds, so slow and fast contenders get equal wall time
    in each round and drift of the machine (frequency, other load) hits all of them alike.
    A pause of ``gap_s`` before each block lets the previous contender's idle BLAS/OpenMP
    workers, which spin-wait for a while after their last job, go to sleep first.
    """
    for c in contenders:
        n, spent = 1, 0.0
        while spent < warmup_s:
            dt = _time_block(c.step, n)
            spent += dt
            per = dt / n
            n = max(1, min(int(0.25 / per) if per > 0 else n * 2, n * 4))
        c.block = max(1, int(block_s / per))
        if log:
            log(f"  warm-up {c.name}: {1 / per:,.1f}/s, block of {c.block}")
    for r in range(rounds):
        for c in contenders:
            time.sleep(gap_s)
            f0 = _minor_faults()
            dt = _time_block(c.step, c.block)
            c.faults.append((_minor_faults() - f0) / c.block)
            c.rates.append(c.block / dt)
        if log:
            log(f"  round {r + 1}/{rounds}: " + "  ".join(f"{c.name} {c.rates[-1]:,.1f}" for c in contenders))


def median(xs: Sequence[float]) -> float:
    """The median of ``xs`` (NaN when empty)."""
    return statistics.median(xs) if xs else float("nan")


def tune_malloc(trim_bytes: int = 256 << 20, mmap_bytes: int = 64 << 20) -> bool:
    """Make glibc keep freed memory (``mallopt`` trim and mmap thresholds); False if not glibc.

    By default glibc returns the top of the heap to the OS once more than twice the largest
    freed block is free there, so a loop that frees several 1.6 MB temporaries per step gets
    them back as fresh pages (page faults, zeroing) on the next step. Process-wide: it
    applies to every implementation in the run alike.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, trim_bytes)) and bool(libc.mallopt(m_mmap_threshold, mmap_bytes))


def blas_info() -> list[dict]:
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries (kernel, threads, version)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return threadpool_info()


def describe_blas(infos: list[dict] | None = None) -> str:
    """One line per BLAS library: ``openblas 0.3.27 (Haswell, 2 threads)``."""
    infos = blas_info() if infos is None else infos
    parts = []
    for i in infos:
        if i.get("user_api") != "blas":
            continue
        parts.append(f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture') or '?'}, "
                     f"{i.get('num_threads')} threads, {os.path.basename(i.get('filepath', ''))})")
    return "; ".join(parts) or "unknown"


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, str]:
    """CPU, cores, Python, numpy and BLAS, OPENBLAS_* variables, date: the header of every report."""
    import numpy as np

    env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS_")}
    return {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": describe_blas(),
        "OPENBLAS env": ", ".join(f"{k}={v}" for k, v in env.items()) or "not set",
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1, 5, 15 min; other work on the machine)",
    }


def print_facts(facts: dict[str, str]) -> None:
    for k, v in facts.items():
        print(f"{k:>13}: {v}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> None:
    """Print a Markdown table (so it can be pasted into docs/benchmarks.md as it is).

    ``align`` holds one of ``l``/``r`` per column (default: first left, others right).
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)) + " |"

    print(fmt(cells[0]))
    print("|" + "|".join(("-" * (w + 1) + ":") if a == "r" else (":" + "-" * (w + 1))
                         for w, a in zip(widths, align)) + "|")
    for r in cells[1:]:
        print(fmt(r))
