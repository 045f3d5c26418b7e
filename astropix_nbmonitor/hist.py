"""Accumulators of the monitor: hit map, TOT spectrum and rate history.

The histograms are boost-histogram objects, so they speak the UHI protocol
(``values()``, ``variances()``, ``axes``, ``kind``) and can be handed to hist,
mplhep or fitting code as they are. One :class:`HitAccumulator` is filled from
the numpy hit arrays of :func:`astropix_nbmonitor.fmt.decode_batch` (or from
hit objects) by the monitor's processing thread; readers in other threads get
consistent copies through the ``hit_map``/``tot_hist`` properties.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

import boost_histogram as bh
import numpy as np

from .astropix4.layout import NUM_CHIPS
from .fmt import AbstractAstroPixHit

__all__ = ["BinnedHits", "HitAccumulator", "RateHistory", "TOT_EDGES", "NUM_CHIPS", "bin_hits", "flow_tot_bins", "scalar_tot_binner"]

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


#: The increment of np.add.at into int64 counts (same dtype: numpy's fast path;
#: a Python int takes its slow casting path).
_ONE64 = np.ones(1, dtype=np.int64)


def _element_strides(view: np.ndarray) -> tuple[int, ...]:
    """The strides of a storage view in elements (its flat view, :func:`_flat`, is indexed with them)."""
    _flat(view)
    return tuple(stride // view.itemsize for stride in view.strides)


def _flat(view: np.ndarray) -> np.ndarray:
    """A 1D view of a contiguous storage view, in memory order; RuntimeError if it would be a copy."""
    # As numpy's own int64: boost-histogram's may be the other 64-bit integer
    # type (long long), with which np.add.at leaves its fast path (30 x slower).
    flat = view.ravel(order="K").view(np.int64)
    if flat.size and not np.may_share_memory(flat, view):
        msg = "the histogram storage is not contiguous: it cannot be filled through a flat view"
        raise RuntimeError(msg)
    return flat


class BinnedHits(NamedTuple):
    """A batch of hits reduced once to the indices every accumulator fills.

    Made by :func:`bin_hits`; :meth:`HitAccumulator.fill_binned`, the time
    windows and the per-pixel spectra all fill from it, so a batch's columns,
    rows, chips and TOT are converted and binned once, not once per
    accumulator.
    """

    #: chip_id of each hit (intp).
    chip: np.ndarray
    #: column and row of each hit (intp).
    column: np.ndarray
    row: np.ndarray
    #: ``column * num_rows + row`` of each hit (intp; meaningful where inside).
    cell: np.ndarray
    #: Which hits are inside the matrix; None when all are.
    inside: np.ndarray | None
    #: Flow-inclusive TOT bin of each hit (0 = underflow, bins + 1 = overflow).
    tot_bin: np.ndarray
    #: The distinct chip_ids of the batch, sorted.
    chips: tuple[int, ...]
    #: The matrix (num_rows, num_cols) the cells were computed for.
    shape: tuple[int, int]


def bin_hits(
    hits: np.ndarray, num_rows: int, num_cols: int, tot_bins: Callable[[np.ndarray], np.ndarray]
) -> BinnedHits:
    """Reduce a non-empty hit array (``chip_id``, ``column``, ``row``, ``tot_us``) to a :class:`BinnedHits`.

    ``tot_bins(tot_us)`` gives the flow-inclusive TOT bins (e.g.
    :meth:`~astropix_nbmonitor.windows.WindowedAccumulator.tot_bins`).
    """
    chip = hits["chip_id"].astype(np.intp)
    col = hits["column"].astype(np.intp)
    row = hits["row"].astype(np.intp)
    inside = (col < num_cols) & (row < num_rows)
    if inside.all():
        inside = None
    cell = col * num_rows + row
    first = int(chip[0])
    chips = (first,) if (chip == first).all() else tuple(int(c) for c in np.unique(chip))
    return BinnedHits(chip, col, row, cell, inside, tot_bins(hits["tot_us"]), chips, (int(num_rows), int(num_cols)))


def flow_tot_bins(axis: bh.axis.Axis, last_edge: float, tot: np.ndarray) -> np.ndarray:
    """Flow-inclusive bins of ``tot`` on a TOT axis, a value equal to ``last_edge`` in the last bin.

    The same bins as filling the axis's histogram with the offline rule
    (docs/format.md section 8).
    """
    index = np.asarray(axis.index(tot), dtype=np.intp)
    at_edge = tot == last_edge
    if at_edge.any():
        index[at_edge] = axis.size - 1
    index += 1
    return index


def scalar_tot_binner(axis: bh.axis.Axis, last_edge: float) -> Callable[[float], int]:
    """One TOT value to its flow-inclusive bin, in plain Python: the bins of :func:`flow_tot_bins`.

    For a few hits a call into boost-histogram costs more than the
    arithmetic, the more so on a thread that has just woken (its code and
    data out of the caches). The arithmetic is boost-histogram's own: a
    regular axis computes ``z = (x - lower) / (upper - lower)`` and takes
    ``int(z * bins)`` for ``0 <= z < 1``; a variable axis searches its edges
    (``bisect_right``); NaN goes to overflow. The tests check it against
    :func:`flow_tot_bins` at every edge and next to it.
    """
    size = int(axis.size)
    edges = [float(e) for e in axis.edges]
    lower, upper = edges[0], edges[-1]
    if isinstance(axis, bh.axis.Regular) and not axis.transform:
        delta = upper - lower

        def regular(x: float) -> int:
            if x == last_edge:
                return size
            z = (x - lower) / delta
            if z < 1:
                return int(z * size) + 1 if z >= 0 else 0
            return size + 1

        return regular

    def variable(x: float) -> int:
        if x == last_edge:
            return size
        if x != x or x >= upper:  # NaN or at/after the last edge
            return size + 1
        if x < lower:
            return 0
        return bisect.bisect_right(edges, x)

    return variable


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
        #: Fills and resets so far: a number that moves whenever the counts may have (cheaper than summing them).
        self.generation = 0
        self._tot_axis = tot_axis
        # The storage's layout (boost-histogram's is column-major): element
        # strides of the chip, column and row axes, to index it flat.
        self._map_strides = _element_strides(self._maps.view())
        self._tot_strides = _element_strides(self._tots.view(flow=True))
        self._take_views()

    def _take_views(self) -> None:
        """The flat views of the storage the fills write into (taking a view costs microseconds)."""
        self._flat_maps = _flat(self._maps.view())
        self._flat_tots = _flat(self._tots.view(flow=True))

    # ------------------------------------------------------------------ fill
    def fill(self, hits: np.ndarray) -> None:
        """Add a :data:`~astropix_nbmonitor.fmt.HIT_DTYPE` array of hits."""
        if len(hits) == 0:
            return
        self.fill_binned(bin_hits(hits, self.num_rows, self.num_cols, self.tot_bins))

    def tot_bins(self, tot_us: np.ndarray) -> np.ndarray:
        """Flow-inclusive bins of ``tot_us`` on this accumulator's TOT axis (the offline rule at the last edge)."""
        return flow_tot_bins(self._tot_axis, self._last_edge, tot_us)

    def fill_binned(self, binned: BinnedHits) -> None:
        """Add a batch reduced by :func:`bin_hits` (for this matrix and these TOT edges).

        Counts go straight into the histograms' storage (``np.add.at`` on
        their views): the same counts as filling them hit by hit, without
        boost-histogram's per-call conversions. Hits of a chip_id outside
        the chip axis are left out, as a fill would.
        """
        chip, inside, tot_bin, chips = binned.chip, binned.inside, binned.tot_bin, binned.chips
        n_out = 0 if inside is None else int(len(chip) - np.count_nonzero(inside))
        known = chips[-1] < NUM_CHIPS
        if not known:  # a chip_id the axis has no bin for (hit objects of another readout class)
            valid = chip < NUM_CHIPS
            inside = valid if inside is None else inside & valid
        s_chip, s_col, s_row = self._map_strides
        flat_map = chip * s_chip + binned.column * s_col + binned.row * s_row
        t_chip, t_tot = self._tot_strides
        flat_tot = chip * t_chip + tot_bin * t_tot
        with self._lock:
            self.generation += 1
            maps, tots = self._flat_maps, self._flat_tots
            np.add.at(maps, flat_map if inside is None else flat_map[inside], _ONE64)
            np.add.at(tots, flat_tot if known else flat_tot[chip < NUM_CHIPS], _ONE64)
            if n_out:
                self.out_of_matrix += n_out
            if len(chips) > 1 or chips[0] not in self.chips_seen:
                self.chips_seen.update(chips)

    def _fill_scalar(self, chips: list[int], cols: list[int], rows: list[int], bins: list[int]) -> None:
        """A few hits as lists (flow-inclusive TOT bins): the counts of :meth:`fill_binned`, one hit at a time."""
        maps, tots = self._flat_maps, self._flat_tots
        s_chip, s_col, s_row = self._map_strides
        t_chip, t_tot = self._tot_strides
        num_cols, num_rows = self.num_cols, self.num_rows
        out = 0
        with self._lock:
            self.generation += 1
            for chip, col, row, tot_bin in zip(chips, cols, rows, bins):
                known = chip < NUM_CHIPS
                if col < num_cols and row < num_rows:
                    if known:
                        maps[chip * s_chip + col * s_col + row * s_row] += 1
                else:
                    out += 1
                if known:
                    tots[chip * t_chip + tot_bin * t_tot] += 1
            self.out_of_matrix += out
            seen = self.chips_seen
            for chip in chips:
                if chip not in seen:
                    seen.add(chip)

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
            self.generation += 1
            self._maps.reset()
            self._tots.reset()
            self._take_views()  # reset keeps the storage; taken again all the same
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

