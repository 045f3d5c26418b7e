"""The whole-run rate trend: readout and hit rates of a 12-hour run in bounded memory.

:class:`~astropix_nbmonitor.hist.RateHistory` keeps every refresh of the last
few minutes; :class:`RateTrend` keeps the whole run, downsampled. Points are
gathered into buckets of ``stride`` consecutive points each (1 at first); a
bucket keeps the mean time, the mean, minimum and maximum of each rate. When
``max_points`` buckets are full, neighbouring buckets are merged in pairs
(oldest with next oldest, and so on) and ``stride`` doubles, so the whole run
always has between ``max_points / 2`` and ``max_points`` buckets of equal
size, and a short spike survives as a bucket's maximum. A 12-hour run refreshed
every 0.5 s (86,400 points) ends with a stride of 64 (32 s buckets) and 1,350
points.

The newest ``max_points`` points are kept as they were too, so that the last
minutes are shown at full resolution (:meth:`RateTrend.arrays` with a
``span`` they cover).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["RateTrend", "TrendArrays"]

# Columns of a bucket row.
_T_FIRST, _T_LAST, _T_SUM, _N, _R_SUM, _R_MIN, _R_MAX, _H_SUM, _H_MIN, _H_MAX = range(10)


@dataclasses.dataclass(frozen=True)
class TrendArrays:
    """Rates over time, oldest first (all arrays of one length).

    Attributes
    ----------
    t : numpy.ndarray
        Time of each point, ``time.time()`` seconds: the mean time of a bucket's points.
    readout_rate, hit_rate : numpy.ndarray
        Mean rate of the bucket (the unweighted mean of its refresh rates), 1/s.
    readout_min, readout_max, hit_min, hit_max : numpy.ndarray
        Smallest and largest refresh rate in the bucket (equal to the mean for a
        single point).
    """

    t: np.ndarray
    readout_rate: np.ndarray
    hit_rate: np.ndarray
    readout_min: np.ndarray
    readout_max: np.ndarray
    hit_min: np.ndarray
    hit_max: np.ndarray

    def __len__(self) -> int:
        return len(self.t)


class RateTrend:
    """Readout and hit rates of the whole run, at most ``max_points`` points.

    Parameters
    ----------
    max_points : int
        The most points kept for the whole run (at least 2). Memory is fixed:
        ``max_points x 13 x 8`` bytes (208 kB for the default 2000).
    """

    def __init__(self, max_points: int = 2000) -> None:
        if int(max_points) < 2:
            msg = f"max_points must be at least 2, got {max_points!r}"
            raise ValueError(msg)
        self.max_points = int(max_points)
        self._buckets = np.zeros((self.max_points, 10))
        self._recent = np.zeros((self.max_points, 3))
        self.clear()

    def clear(self) -> None:
        """Forget every point (the stride goes back to 1)."""
        self._num_buckets = 0
        self._num_added = 0
        self.stride = 1

    def __len__(self) -> int:
        """Number of points of the whole run now (buckets)."""
        return self._num_buckets

    @property
    def num_added(self) -> int:
        """Points added since construction or the last :meth:`clear`."""
        return self._num_added

    # ------------------------------------------------------------------ add
    def add(self, t: float, readout_rate: float, hit_rate: float) -> None:
        """Add the rates measured at time ``t`` (``time.time()``; increasing from call to call)."""
        t, r, h = float(t), float(readout_rate), float(hit_rate)
        self._recent[self._num_added % self.max_points] = (t, r, h)
        self._num_added += 1
        last = self._num_buckets - 1
        if last >= 0 and self._buckets[last, _N] < self.stride:
            self._merge_point(last, t, r, h)
            return
        if self._num_buckets == self.max_points:
            self._halve()
            last = self._num_buckets - 1
            if self._buckets[last, _N] < self.stride:
                self._merge_point(last, t, r, h)
                return
        self._buckets[self._num_buckets] = (t, t, t, 1, r, r, r, h, h, h)
        self._num_buckets += 1

    def _merge_point(self, i: int, t: float, r: float, h: float) -> None:
        """Add one point to bucket ``i``."""
        b = self._buckets[i]
        b[_T_LAST] = t
        b[_T_SUM] += t
        b[_N] += 1
        b[_R_SUM] += r
        b[_R_MIN] = min(b[_R_MIN], r)
        b[_R_MAX] = max(b[_R_MAX], r)
        b[_H_SUM] += h
        b[_H_MIN] = min(b[_H_MIN], h)
        b[_H_MAX] = max(b[_H_MAX], h)

    def _halve(self) -> None:
        """Merge the buckets in pairs, oldest first, and double the stride."""
        n = self._num_buckets
        pairs = n // 2
        a = self._buckets[0 : 2 * pairs : 2]
        b = self._buckets[1 : 2 * pairs : 2]
        merged = np.empty((pairs, 10))
        merged[:, _T_FIRST] = a[:, _T_FIRST]
        merged[:, _T_LAST] = b[:, _T_LAST]
        for col in (_T_SUM, _N, _R_SUM, _H_SUM):
            merged[:, col] = a[:, col] + b[:, col]
        for col in (_R_MIN, _H_MIN):
            merged[:, col] = np.minimum(a[:, col], b[:, col])
        for col in (_R_MAX, _H_MAX):
            merged[:, col] = np.maximum(a[:, col], b[:, col])
        odd = self._buckets[n - 1].copy() if n % 2 else None
        self._buckets[:pairs] = merged
        self._num_buckets = pairs
        if odd is not None:
            self._buckets[pairs] = odd
            self._num_buckets += 1
        self.stride *= 2

    # ------------------------------------------------------------------ read
    def arrays(self, span: float | None = None) -> TrendArrays:
        """The rates of the whole run (``span`` None), or of the last ``span`` seconds.

        The last ``span`` seconds (counted back from the newest point) come at
        full resolution when the newest ``max_points`` points cover them, else
        from the buckets whose newest point is inside the span.
        """
        if self._num_added == 0:
            empty = np.zeros(0)
            return TrendArrays(empty, empty, empty, empty, empty, empty, empty)
        if span is not None:
            recent = self._recent_points()
            start = recent[-1, 0] - float(span)
            if self._num_added <= self.max_points or recent[0, 0] <= start:
                return self._raw_arrays(recent[recent[:, 0] >= start])
        buckets = self._buckets[: self._num_buckets]
        if span is not None:
            buckets = buckets[buckets[:, _T_LAST] >= start]
        return self._bucket_arrays(buckets)

    def _recent_points(self) -> np.ndarray:
        """The newest points, oldest first: ``(n, 3)`` of time, readout rate, hit rate."""
        if self._num_added <= self.max_points:
            return self._recent[: self._num_added].copy()
        return np.roll(self._recent, -(self._num_added % self.max_points), axis=0)

    @staticmethod
    def _raw_arrays(points: np.ndarray) -> TrendArrays:
        t, r, h = points[:, 0].copy(), points[:, 1].copy(), points[:, 2].copy()
        return TrendArrays(t, r, h, r.copy(), r.copy(), h.copy(), h.copy())

    @staticmethod
    def _bucket_arrays(b: np.ndarray) -> TrendArrays:
        n = b[:, _N]
        return TrendArrays(
            b[:, _T_SUM] / n,
            b[:, _R_SUM] / n,
            b[:, _H_SUM] / n,
            b[:, _R_MIN].copy(),
            b[:, _R_MAX].copy(),
            b[:, _H_MIN].copy(),
            b[:, _H_MAX].copy(),
        )
