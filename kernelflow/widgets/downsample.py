"""Numbers behind the training monitor's charts: min/max-preserving downsampling, TensorBoard's
debiased EMA smoothing, the "ignore outliers" y range and percentiles of a histogram.

All of them work on growing series without recomputing the whole history per redraw:
`MinMaxDownsampler` keeps its buckets between calls and `Ema` continues from its state.

Contents: MinMaxDownsampler, Ema, debiased_ema, outlier_range, histogram_percentiles, GrowingArray.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

MAX_POINTS = 2000
# TensorBoard's distribution view: the percentiles of its bands (basis points / 100)
BAND_PERCENTILES = (0.0, 6.68, 15.87, 30.85, 50.0, 69.15, 84.13, 93.32, 100.0)


class GrowingArray:
    """A 1-d numpy array that appends in amortised O(1) (capacity doubles)."""

    def __init__(self, dtype: str | np.dtype = "float64"):
        self._buf = np.empty(64, dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        values = np.asarray(values, self._buf.dtype)
        need = self.n + len(values)
        if need > len(self._buf):
            buf = np.empty(max(need, 2 * len(self._buf)), self._buf.dtype)
            buf[:self.n] = self._buf[:self.n]
            self._buf = buf
        self._buf[self.n:need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        """The values so far (a view: valid until the next `extend`)."""
        return self._buf[:self.n]

    def __len__(self) -> int:
        return self.n


class MinMaxDownsampler:
    """Indices of at most ``max_points`` points of a growing series that keep, in every bucket of
    consecutive points, the smallest and the largest value (so spikes stay visible).

    Buckets hold ``width`` points (a power of two); finished buckets are kept between calls, and
    when there are too many, neighbours merge and ``width`` doubles, so each call costs
    O(new points + buckets), not O(history). Non-finite values never win a bucket unless the
    whole bucket is non-finite.
    """

    def __init__(self, max_points: int = MAX_POINTS):
        if max_points < 8:
            raise ValueError(f"MinMaxDownsampler: max_points must be >= 8; got {max_points}")
        self.max_points = max_points
        self.max_buckets = (max_points - 3) // 2   # 2 per bucket + the tail's min, max and last point
        self.width = 1
        self.done = 0                              # points covered by finished buckets
        self._lo = np.empty(0, np.int64)
        self._hi = np.empty(0, np.int64)

    def reset(self) -> None:
        self.width, self.done = 1, 0
        self._lo = np.empty(0, np.int64)
        self._hi = np.empty(0, np.int64)

    def indices(self, values: np.ndarray) -> np.ndarray:
        """Sorted indices into ``values`` (the whole series so far, which only grows) to draw."""
        n = len(values)
        if n < self.done:
            self.reset()
        if n <= self.max_points:
            self._bucket(values)  # keep the buckets current so the step past max_points is cheap
            return np.arange(n, dtype=np.int64)
        self._bucket(values)
        tail = values[self.done:]
        extra = [self._lo, self._hi, np.array([0, n - 1], np.int64)]
        if len(tail):
            lo, hi = _arg_minmax(tail[None, :])
            extra.append(np.array([self.done + lo[0], self.done + hi[0]], np.int64))
        return np.unique(np.concatenate(extra))

    def _bucket(self, values: np.ndarray) -> None:
        m = (len(values) - self.done) // self.width
        if m:
            block = values[self.done:self.done + m * self.width].reshape(m, self.width)
            lo, hi = _arg_minmax(block)
            base = self.done + np.arange(m, dtype=np.int64) * self.width
            self._lo = np.concatenate([self._lo, base + lo])
            self._hi = np.concatenate([self._hi, base + hi])
            self.done += m * self.width
        while len(self._lo) > self.max_buckets:
            if len(self._lo) % 2:  # an odd last bucket goes back to the tail
                self._lo, self._hi = self._lo[:-1], self._hi[:-1]
                self.done -= self.width
            lo2, hi2 = self._lo.reshape(-1, 2), self._hi.reshape(-1, 2)
            v_lo = _for_min(values[lo2])
            v_hi = _for_max(values[hi2])
            self._lo = lo2[np.arange(len(lo2)), np.argmin(v_lo, axis=1)]
            self._hi = hi2[np.arange(len(hi2)), np.argmax(v_hi, axis=1)]
            self.width *= 2


def _for_min(v: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(v), v, np.inf)


def _for_max(v: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(v), v, -np.inf)


def _arg_minmax(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if np.isfinite(block).all():
        return np.argmin(block, axis=1), np.argmax(block, axis=1)
    return np.argmin(_for_min(block), axis=1), np.argmax(_for_max(block), axis=1)


def debiased_ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's scalar smoothing: ``last = last*w + (1-w)*v`` over the finite values, divided
    by ``1 - w**k`` (k: finite values so far) so the start is not pulled towards 0; non-finite
    values are shown as they are and do not move the average."""
    e = Ema(weight)
    return e.extend(np.asarray(values, np.float64))


class Ema:
    """`debiased_ema` that continues where the previous `extend` stopped."""

    def __init__(self, weight: float):
        if not 0.0 <= weight < 1.0:
            raise ValueError(f"Ema: weight must be in [0, 1); got {weight}")
        self.weight = float(weight)
        self.last = 0.0
        self.count = 0

    def extend(self, values: np.ndarray) -> np.ndarray:
        """Smoothed values of the next ``values`` (float64)."""
        w = self.weight
        out = np.array(values, np.float64, copy=True)
        finite = np.isfinite(out)
        v = out[finite] if not finite.all() else out
        if len(v) == 0:
            return out
        if w == 0.0:
            last = v
        else:
            last, _ = lfilter([1.0 - w], [1.0, -w], v, zi=[w * self.last])
        k = self.count + np.arange(1, len(v) + 1)
        smoothed = last / (1.0 - w ** k)
        self.last, self.count = float(last[-1]), self.count + len(v)
        if v is out:
            return smoothed
        out[finite] = smoothed
        return out


def outlier_range(values: np.ndarray, lo_q: float = 0.05, hi_q: float = 0.95,
                  pad: float = 0.1) -> tuple[float, float] | None:
    """A y range from the 5th to the 95th percentile of the finite ``values``, padded by 10%
    (TensorBoard's "ignore outliers in chart scaling"); None without finite values."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return None
    lo, hi = np.quantile(v, [lo_q, hi_q])
    span = hi - lo
    if span <= 0:
        span = abs(hi) * 0.1 or 1.0
    return float(lo - pad * span), float(hi + pad * span)


def histogram_percentiles(edges: np.ndarray, counts: np.ndarray,
                          percentiles: tuple[float, ...] = BAND_PERCENTILES) -> np.ndarray:
    """Percentiles of the values a histogram counts, interpolated linearly inside bins.

    Args:
        edges: (bins + 1,) bin edges.
        counts: (bins,) counts.
        percentiles: in [0, 100].

    Returns:
        (len(percentiles),) float64; NaN for an empty histogram.
    """
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    if total <= 0:
        return np.full(len(percentiles), np.nan)
    cdf = np.concatenate([[0.0], np.cumsum(counts)])
    # keep only edges that bound a non-empty bin, so percentile 0 / 100 are the first / last
    # non-empty bin's outer edges rather than the histogram's range
    rise = np.diff(cdf) > 0
    keep = np.concatenate([rise, [False]]) | np.concatenate([[False], rise])
    return np.interp(np.asarray(percentiles) / 100.0 * total, cdf[keep], np.asarray(edges, np.float64)[keep])
