"""Axis ticks chosen on the Python side: round values inside a domain and one number format per axis.

bqplot's own ticks are not used: with ``num_ticks`` it spaces them evenly between the domain's
ends (-83, 2652, 5387, ...), and an axis whose scale is swapped keeps the old scale's labels.
The charts set each scale's domain and its axis's ``tick_values`` and ``tick_format`` together.

Contents: linear_ticks, log_ticks, integer_ticks, tick_format, Ticks, ticks_for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)
_LOG_MANTISSAS = ((1.0, 2.0, 5.0), (1.0,))


@dataclass(frozen=True)
class Ticks:
    """Tick values and the d3 format string of an axis (``values`` inside ``[lo, hi]``)."""

    values: tuple[float, ...]
    fmt: str


def _nice_step(span: float, target: int) -> float:
    """The round step (1, 2, 2.5 or 5 times a power of ten) nearest, in log terms, to ``span / target``."""
    raw = span / max(target, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    return min((s * mag for s in _STEPS), key=lambda step: abs(math.log(step / raw)))


def linear_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Multiples of a round step (1, 2, 2.5 or 5 times a power of ten) inside ``[lo, hi]``, about ``target``
    of them (as d3's ``ticks``: the step nearest to an even split)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    step = _nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    # k * step, rounded to the step's decimals: 0.1 * 3 is 0.30000000000000004
    digits = max(0, -math.floor(math.log10(step)) + 2)
    return [round(k * step, digits) for k in range(first, last + 1)]


def integer_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Like `linear_ticks` but with a whole step of at least 1 (counts)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    lo, hi = min(lo, hi), max(lo, hi)
    step = max(1.0, _nice_step(hi - lo, target) if hi > lo else 1.0)
    if step != int(step):  # 2.5 -> 2, 25 stays
        step = float(math.floor(step))
    return [float(k * step) for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Ticks for a log axis over ``[lo, hi]`` (both > 0): powers of ten, with 2 and 5 times them when
    that makes at most ``target + 2`` ticks, every n-th decade when many show; a range within one decade gets
    `linear_ticks` (as d3 does), so an axis always shows at least two labels."""
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
        return []
    lo, hi = min(lo, hi), max(lo, hi)
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in _LOG_MANTISSAS:
        vals = [m * 10.0 ** e for e in range(e0, e1 + 1) for m in mantissas]
        vals = [_round_sig(v) for v in vals if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)]
        if len(vals) <= target + 2:
            break
    else:
        every = math.ceil((e1 - e0 + 1) / target)
        vals = [_round_sig(10.0 ** e) for e in range(e0, e1 + 1) if e % every == 0 and lo <= 10.0 ** e <= hi]
    if len(vals) >= 2:
        return vals
    return linear_ticks(lo, hi, max(3, target - 2))


def _round_sig(v: float) -> float:
    return float(f"{v:.12g}")


def _decimals(values: list[float], limit: int = 12) -> int:
    """Fewest decimals that write every value exactly (0.25 -> 2)."""
    for d in range(limit + 1):
        if all(abs(round(v, d) - v) <= 1e-9 * max(1.0, abs(v)) for v in values):
            return d
    return limit


def tick_format(values: list[float]) -> str:
    """One d3 format string for all ticks of an axis: fixed decimals (the fewest that write every
    tick exactly, thousands grouped), or exponent notation with one mantissa precision when the
    values are very large or very small."""
    nonzero = [abs(v) for v in values if v != 0]
    if not nonzero:
        return ",.0f"
    big, small = max(nonzero), min(nonzero)
    if big >= 1e6 or big < 1e-3 or (small < 1e-3 and big / small > 1e3):
        mant = [v / 10.0 ** math.floor(math.log10(abs(v))) for v in values if v != 0]
        return f".{_decimals(mant, 6)}e"
    return f",.{_decimals(values)}f"


def format_tick(v: float, fmt: str) -> str:
    """What d3 writes for ``v`` with ``fmt`` (the subset `tick_format` makes); for tests and reports."""
    if fmt.endswith("e"):
        d = int(fmt[1:-1])
        mant, _, exp = f"{v:.{d}e}".partition("e")
        return f"{mant}e{int(exp):+d}" if exp else mant  # d3: 1e+6, 2.5e-7
    d = int(fmt[2:-1])
    return f"{v:,.{d}f}".replace("-", "\u2212")  # d3 writes a minus sign


def ticks_for(lo: float, hi: float, *, log: bool = False, integer: bool = False, target: int = 5) -> Ticks:
    """The ticks and format of an axis showing ``[lo, hi]``."""
    if log:
        vals = log_ticks(lo, hi, target + 1)
    elif integer:
        vals = integer_ticks(lo, hi, target)
    else:
        vals = linear_ticks(lo, hi, target)
    return Ticks(tuple(vals), tick_format(vals))


def data_range(arrays: list[np.ndarray], positive: bool = False) -> tuple[float, float] | None:
    """``(min, max)`` of the finite values (only those > 0 with ``positive``) of all arrays, or None."""
    lo, hi = math.inf, -math.inf
    for a in arrays:
        a = np.asarray(a, np.float64).ravel()
        a = a[np.isfinite(a) & (a > 0)] if positive else a[np.isfinite(a)]
        if len(a):
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return (lo, hi) if lo <= hi else None
