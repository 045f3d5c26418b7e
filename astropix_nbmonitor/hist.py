"""Accumulators of the monitor: hit map, TOT spectrum and rate history.

The histograms are boost-histogram objects, so they speak the UHI protocol
(``values()``, ``variances()``, ``axes``, ``kind``) and can be handed to hist,
mplhep or fitting code as they are. One :class:`HitAccumulator` is filled from
the numpy hit arrays of :func:`astropix_nbmonitor.fmt.decode_batch` (or from
hit objects) by the monitor's processing thread; readers in other threads get
consistent copies through the ``hit_map``/``tot_hist`` properties.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence

import boost_histogram as bh
import numpy as np

from .astropix4.layout import NUM_CHIPS
from .fmt import AbstractAstroPixHit

__all__ = ["HitAccumulator", "RateHistory", "TOT_EDGES", "NUM_CHIPS"]

#: The collaboration's TOT binning: edges ``linspace(0, 500, 100)`` in us.
TOT_EDGES = np.linspace(0.0, 500.0, 100)


#: What the accumulators read of a hit.
FILL_DTYPE = np.dtype([("chip_id", np.uint8), ("row", np.uint8), ("column", np.uint8), ("tot_us", np.float64)])


def hits_as_array(hits: Sequence[AbstractAstroPixHit]) -> np.ndarray:
    """Hit objects as the small structured array the accumulators fill (chip_id, row, column, tot_us).

    Only those four attributes are read, so that any readout class's hits
    (the collaboration's, a duck-typed one) can be histogrammed.
    """
    if not hits:
        return np.zeros(0, dtype=FILL_DTYPE)
    return np.array([tuple(h.attribute_values(("chip_id", "row", "column", "tot_us"))) for h in hits], dtype=FILL_DTYPE)


class HitAccumulator:
    """Per-chip hit map and TOT spectrum of an AstroPix matrix.

    Parameters
    ----------
    num_rows, num_cols : int
        The matrix size; a hit with ``column >= num_cols`` or ``row >= num_rows``
        is counted in :attr:`out_of_matrix` and not filled.
    tot_edges : array_like
        Bin edges of the TOT spectrum, in us; values above the last edge go to
        the overflow bin (shown by the monitor), below the first to underflow; a
        value equal to the last edge is in the last bin, as in the offline
        histograms (docs/format.md section 8).
    """

    def __init__(self, num_rows: int, num_cols: int, *, tot_edges: Sequence[float] = TOT_EDGES) -> None:
        self.num_rows = int(num_rows)
        self.num_cols = int(num_cols)
        edges = np.asarray(tot_edges, dtype=float)
        self._lock = threading.Lock()
        chip = bh.axis.Integer(0, NUM_CHIPS, underflow=False, overflow=False, __dict__={"name": "chip_id", "label": "chip_id"})
        self._maps = bh.Histogram(
            chip,
            bh.axis.Integer(0, self.num_cols, underflow=False, overflow=False, __dict__={"name": "column", "label": "column"}),
            bh.axis.Integer(0, self.num_rows, underflow=False, overflow=False, __dict__={"name": "row", "label": "row"}),
            storage=bh.storage.Int64(),
        )
        if np.allclose(np.diff(edges), edges[1] - edges[0]):
            tot_axis = bh.axis.Regular(len(edges) - 1, edges[0], edges[-1], __dict__={"name": "tot_us", "label": "TOT [us]"})
        else:
            tot_axis = bh.axis.Variable(edges, __dict__={"name": "tot_us", "label": "TOT [us]"})
        self._tots = bh.Histogram(chip, tot_axis, storage=bh.storage.Int64())
        self.tot_edges = edges
        # The offline rule (docs/format.md section 8): the last bin holds its
        # right edge. boost-histogram's bins are all half-open, so a value
        # equal to the last edge is filled just below it.
        self._last_edge = float(edges[-1])
        self._below_last_edge = float(np.nextafter(edges[-1], -np.inf))
        self.out_of_matrix = 0
        self.chips_seen: set[int] = set()

    # ------------------------------------------------------------------ fill
    def fill(self, hits: np.ndarray) -> None:
        """Add a :data:`~astropix_nbmonitor.fmt.HIT_DTYPE` array of hits."""
        if len(hits) == 0:
            return
        chip = hits["chip_id"]
        col = hits["column"]
        row = hits["row"]
        inside = (col < self.num_cols) & (row < self.num_rows)
        n_out = int(len(hits) - np.count_nonzero(inside))
        chips = np.unique(chip)
        with self._lock:
            if n_out:
                self.out_of_matrix += n_out
                self._maps.fill(chip[inside], col[inside], row[inside])
            else:
                self._maps.fill(chip, col, row)
            self._tots.fill(chip, self._offline_binning(hits["tot_us"]))
            if len(chips) > 1 or int(chips[0]) not in self.chips_seen:
                self.chips_seen.update(int(c) for c in chips)

    def _offline_binning(self, tot: np.ndarray) -> np.ndarray:
        """``tot`` with values equal to the last edge moved into the last bin."""
        at_edge = tot == self._last_edge
        if not at_edge.any():
            return tot
        tot = np.array(tot, dtype=np.float64)
        tot[at_edge] = self._below_last_edge
        return tot

    def fill_hits(self, hits: Sequence[AbstractAstroPixHit]) -> None:
        """Add hit objects (as returned by a readout's ``decode()``)."""
        if hits:
            self.fill(hits_as_array(hits))

    def reset(self) -> None:
        """Empty every histogram and counter."""
        with self._lock:
            self._maps.reset()
            self._tots.reset()
            self.out_of_matrix = 0
            self.chips_seen = set()

    # ------------------------------------------------------------------ read
    def hit_map(self, chip: int | None = None) -> bh.Histogram:
        """A copy of the hit map (axes: column, then row), all chips or one."""
        with self._lock:
            if chip is None:
                return self._maps[sum, :, :]
            return self._maps[bh.loc(int(chip)), :, :]

    def tot_hist(self, chip: int | None = None) -> bh.Histogram:
        """A copy of the TOT spectrum in us (with under/overflow), all chips or one."""
        with self._lock:
            if chip is None:
                return self._tots[sum, :]
            return self._tots[bh.loc(int(chip)), :]

    def hit_map_counts(self, chip: int | None = None) -> np.ndarray:
        """Hit counts as a ``(num_rows, num_cols)`` array (rows first, as drawn)."""
        with self._lock:
            view = self._maps.view()
            counts = view.sum(axis=0) if chip is None else view[int(chip)]
            return np.ascontiguousarray(counts.T)

    def tot_counts(self, chip: int | None = None) -> tuple[np.ndarray, int, int]:
        """TOT bin counts, underflow and overflow."""
        with self._lock:
            view = self._tots.view(flow=True)
            counts = view.sum(axis=0) if chip is None else view[int(chip)]
            return counts[1:-1].copy(), int(counts[0]), int(counts[-1])

    def snapshot(self) -> dict[str, object]:
        """Consistent copies of everything, taken under one lock.

        Returns a dict with ``chip_hit_map`` (axes chip_id, column, row),
        ``chip_tot_hist`` (axes chip_id, tot_us), ``out_of_matrix`` and
        ``chips_seen`` (a sorted tuple).
        """
        with self._lock:
            return {
                "chip_hit_map": self._maps.copy(),
                "chip_tot_hist": self._tots.copy(),
                "out_of_matrix": int(self.out_of_matrix),
                "chips_seen": tuple(sorted(self.chips_seen)),
            }

    @property
    def num_filled(self) -> int:
        """Hits inside the matrix filled so far."""
        with self._lock:
            return int(self._maps.sum())


class RateHistory:
    """Readout and hit rates over the last ``span`` seconds, one point a refresh."""

    def __init__(self, span: float = 300.0) -> None:
        self.span = float(span)
        self._points: deque[tuple[float, float, float]] = deque()

    def add(self, readout_rate: float, hit_rate: float, when: float | None = None) -> None:
        """Record the rates measured over the last refresh, at ``when`` (time.time())."""
        now = time.time() if when is None else when
        self._points.append((now, float(readout_rate), float(hit_rate)))
        while self._points and now - self._points[0][0] > self.span:
            self._points.popleft()

    def clear(self) -> None:
        """Forget every point."""
        self._points.clear()

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Times (s, relative to now, <= 0), readout rates and hit rates."""
        if not self._points:
            empty = np.zeros(0)
            return empty, empty, empty
        data = np.array(self._points)
        return data[:, 0] - data[-1, 0], data[:, 1], data[:, 2]

    def __len__(self) -> int:
        return len(self._points)

