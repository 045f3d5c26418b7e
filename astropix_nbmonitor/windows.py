"""Sliding time windows and per-pixel TOT spectra: what a shift looks at now.

:class:`WindowedAccumulator` keeps a ring of per-second histograms (hit map
and TOT spectrum of every chip seen) over the last ``max_seconds`` seconds, so
that the monitor can show the last 10 s, 60 s or 10 min instead of the whole
run. :class:`PixelTots` keeps one TOT spectrum per pixel over the whole run,
for the drill-down panel of a selected pixel. Both are filled with the
:data:`~astropix_nbmonitor.fmt.HIT_DTYPE` arrays the engine already gives
:class:`~astropix_nbmonitor.hist.HitAccumulator`, and both return
boost-histograms with the same axes and metadata as that accumulator
(``column``/``row`` integer axes; the ``tot_us`` axis of the same edges, with
under- and overflow, and the offline rule that a TOT equal to the last edge
is in the last bin: docs/format.md section 8).

Memory is fixed by the constructor's arguments and the chips seen (storage of
a chip is allocated the first time one of its hits arrives, at most
:data:`~astropix_nbmonitor.astropix4.layout.NUM_CHIPS` chips), never by the
length of the run. Per-pixel TOT spectra are kept for the whole run only, not
per second: a 600 s ring of them would take 600 x 560 x 101 x 4 bytes = 136 MB
a chip.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

import boost_histogram as bh
import numpy as np

from .astropix4.layout import NUM_CHIPS
from .hist import TOT_EDGES, BinnedHits, bin_hits

__all__ = ["PixelTots", "WindowedAccumulator"]

#: The increment of the int32 ring's np.add.at (same dtype: its fast path).
_ONE32 = np.ones(1, dtype=np.int32)
#: The same for the int64 per-pixel spectra.
_ONE64 = np.ones(1, dtype=np.int64)


# ---------------------------------------------------------------------------
# Axes and binning shared with hist.HitAccumulator (same names, labels, edges)
# ---------------------------------------------------------------------------


def _integer_axis(size: int, name: str) -> bh.axis.Integer:
    """An integer axis 0..size-1 without flow bins, named like HitAccumulator's."""
    return bh.axis.Integer(0, int(size), underflow=False, overflow=False, __dict__={"name": name, "label": name})


def _tot_axis(edges: np.ndarray) -> bh.axis.Axis:
    """The ``tot_us`` axis of HitAccumulator for these edges (regular when evenly spaced)."""
    meta = {"name": "tot_us", "label": "TOT [us]"}
    if np.allclose(np.diff(edges), edges[1] - edges[0]):
        return bh.axis.Regular(len(edges) - 1, edges[0], edges[-1], __dict__=meta)
    return bh.axis.Variable(edges, __dict__=meta)


def _check_edges(tot_edges: Sequence[float]) -> np.ndarray:
    """``tot_edges`` as a float array of at least two increasing edges."""
    edges = np.asarray(tot_edges, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0):
        msg = f"tot_edges must be at least two increasing edges, got {tot_edges!r}"
        raise ValueError(msg)
    return edges


class _TotBinner:
    """TOT values to flow-inclusive bin numbers (0 = underflow, size + 1 = overflow).

    Uses the boost-histogram axis itself, so the bins are exactly those of
    HitAccumulator's histograms, plus the offline rule: a TOT equal to the last
    edge is in the last bin (docs/format.md section 8).
    """

    def __init__(self, edges: np.ndarray) -> None:
        self.axis = _tot_axis(edges)
        self.size = int(self.axis.size)
        self.nbins_flow = self.size + 2
        self._last_edge = float(edges[-1])

    def __call__(self, tot: np.ndarray) -> np.ndarray:
        index = np.asarray(self.axis.index(tot), dtype=np.intp)
        at_edge = tot == self._last_edge
        if at_edge.any():
            index[at_edge] = self.size - 1
        index += 1
        return index


def _tot_histogram(axis: bh.axis.Axis, counts_flow: np.ndarray) -> bh.Histogram:
    """A 1D Int64 TOT histogram holding ``counts_flow`` (underflow first, overflow last)."""
    h = bh.Histogram(axis, storage=bh.storage.Int64())
    h.view(flow=True)[...] = counts_flow
    return h


def _check_pixel(column: int, row: int, num_cols: int, num_rows: int) -> tuple[int, int]:
    """``(column, row)`` as ints, or ValueError when outside the matrix."""
    column, row = int(column), int(row)
    if not (0 <= column < num_cols and 0 <= row < num_rows):
        msg = f"pixel (column={column}, row={row}) is outside the {num_cols} x {num_rows} matrix"
        raise ValueError(msg)
    return column, row


def _check_chip(chip: int) -> int:
    """``chip`` as an int in 0..NUM_CHIPS-1, or ValueError."""
    chip = int(chip)
    if not 0 <= chip < NUM_CHIPS:
        msg = f"chip_id must be in 0..{NUM_CHIPS - 1}, got {chip}"
        raise ValueError(msg)
    return chip


def _given(tot_bins: np.ndarray):
    """A binner that returns bins already computed (a fill's ``tot_bins=``)."""
    return lambda _tot: tot_bins


def _check_shape(binned: BinnedHits, num_rows: int, num_cols: int) -> None:
    """ValueError when a reduced batch was made for another matrix."""
    if binned.shape != (num_rows, num_cols):
        msg = f"hits binned for a {binned.shape} matrix, this one is {(num_rows, num_cols)} (rows, columns)"
        raise ValueError(msg)


def _chip_groups(chip: np.ndarray) -> list[tuple[int, np.ndarray | None]]:
    """``[(chip_id, selection)]`` of a batch; selection None when every hit has that chip."""
    first = int(chip[0])
    if np.all(chip == first):
        return [(first, None)]
    return [(int(c), chip == c) for c in np.unique(chip)]


# ---------------------------------------------------------------------------
# The ring of per-second histograms
# ---------------------------------------------------------------------------


class _ChipRing:
    """One chip's ring: per-slot hit counts per pixel and TOT counts (int32)."""

    def __init__(self, num_slots: int, num_cells: int, num_tot_bins: int) -> None:
        self.maps = np.zeros((num_slots, num_cells), dtype=np.int32)
        self.tots = np.zeros((num_slots, num_tot_bins), dtype=np.int32)

    def clear(self, slots: np.ndarray | slice) -> None:
        self.maps[slots] = 0
        self.tots[slots] = 0

    @property
    def nbytes(self) -> int:
        return int(self.maps.nbytes + self.tots.nbytes)


class WindowedAccumulator:
    """Hit maps and TOT spectra of the last N seconds, from a ring of per-second slots.

    Each slot holds ``granularity`` seconds (1 s by default) of every chip
    seen: the hit count of every pixel and the TOT spectrum with under- and
    overflow, as int32. :meth:`fill` adds a batch to the slot of its arrival
    time, first clearing the slots of the seconds that passed since the last
    fill (a jump longer than the ring clears them all); a clock that steps
    back counts into the newest slot. A window of the last N seconds is the
    sum of the newest ``ceil(N / granularity)`` slots (up to the read time
    ``now``; seconds with no fill count as empty).

    Like :class:`~astropix_nbmonitor.hist.HitAccumulator`, the hit map holds
    the hits inside the matrix and the TOT spectrum every hit (out-of-matrix
    hits included), so a window as long as the run equals the cumulative
    histograms.

    Memory is fixed: ``max_seconds / granularity x (num_cols x num_rows +
    TOT bins + 2) x 4`` bytes per chip seen, allocated at the chip's first hit.
    For the defaults (600 s, 1 s, 16 x 35 pixels, 99 TOT bins) that is
    600 x (560 + 101) x 4 = 1,586,400 bytes (1.6 MB) a chip, at most 32 chips
    (50.8 MB). :attr:`nbytes` says what is allocated.

    Parameters
    ----------
    num_rows, num_cols : int
        The matrix size (hits outside it are left out of the hit map).
    tot_edges : array_like
        TOT bin edges in us (the engine's, default ``linspace(0, 500, 100)``).
    max_seconds : float
        The longest window, in seconds (the length of the ring).
    granularity : float
        Seconds per slot.

    Notes
    -----
    Thread-safe: one lock guards fills, reads and :meth:`reset`. The engine
    fills it on the processing thread next to the cumulative accumulator;
    cells read it from the kernel's thread.
    """

    def __init__(
        self,
        num_rows: int,
        num_cols: int,
        *,
        tot_edges: Sequence[float] = TOT_EDGES,
        max_seconds: float = 600.0,
        granularity: float = 1.0,
    ) -> None:
        if not granularity > 0:
            msg = f"granularity must be > 0 seconds, got {granularity!r}"
            raise ValueError(msg)
        if not max_seconds >= granularity:
            msg = f"max_seconds must be at least one granularity ({granularity} s), got {max_seconds!r}"
            raise ValueError(msg)
        self.num_rows = int(num_rows)
        self.num_cols = int(num_cols)
        self.tot_edges = _check_edges(tot_edges)
        self.max_seconds = float(max_seconds)
        self.granularity = float(granularity)
        self.num_slots = math.ceil(self.max_seconds / self.granularity - 1e-9)
        self._binner = _TotBinner(self.tot_edges)
        self._lock = threading.Lock()
        self._rings: dict[int, _ChipRing] = {}
        self._head: int | None = None  # absolute slot number of the newest slot

    # ------------------------------------------------------------------ sizes
    @property
    def bytes_per_chip(self) -> int:
        """Bytes of one chip's ring (allocated when the chip's first hit arrives)."""
        return self.num_slots * (self.num_cols * self.num_rows + self._binner.nbins_flow) * 4

    @property
    def nbytes(self) -> int:
        """Bytes allocated now (one ring per chip seen)."""
        with self._lock:
            return sum(ring.nbytes for ring in self._rings.values())

    @property
    def chips_seen(self) -> tuple[int, ...]:
        """Chip ids with a ring, sorted (seen since construction or the last reset)."""
        with self._lock:
            return tuple(sorted(self._rings))

    # ------------------------------------------------------------------ fill
    def tot_bins(self, tot_us: np.ndarray) -> np.ndarray:
        """Flow-inclusive TOT bin numbers of ``tot_us`` (0 = underflow), for :meth:`fill`'s ``tot_bins``."""
        return self._binner(tot_us)

    def fill(self, hits: np.ndarray, now: float | None = None, *, tot_bins: np.ndarray | None = None) -> None:
        """Add a :data:`~astropix_nbmonitor.fmt.HIT_DTYPE` array of hits arrived at ``now``.

        Parameters
        ----------
        hits : numpy.ndarray
            Structured array with at least ``chip_id``, ``column``, ``row`` and
            ``tot_us``.
        now : float, optional
            Arrival time, ``time.time()`` by default (tests inject a clock).
        tot_bins : numpy.ndarray, optional
            :meth:`tot_bins` of the hits' ``tot_us``, when the caller has them
            already (the engine bins once for this and :class:`PixelTots`).
        """
        now = time.time() if now is None else float(now)
        if len(hits) == 0:
            with self._lock:
                self._advance(self._slot_number(now))
            return
        binner = self._binner if tot_bins is None else _given(tot_bins)
        self._fill_binned(bin_hits(hits, self.num_rows, self.num_cols, binner), now)

    def _fill_binned(self, binned: BinnedHits, now: float) -> None:
        """Add a batch reduced by :func:`~astropix_nbmonitor.hist.bin_hits` (this matrix, these edges) at ``now``.

        The engine reduces each batch once for the cumulative histograms, this
        ring and :class:`PixelTots`; :meth:`fill` does it for its own caller.
        """
        _check_shape(binned, self.num_rows, self.num_cols)
        chip, cell, inside, tot_bin, chips = binned.chip, binned.cell, binned.inside, binned.tot_bin, binned.chips
        with self._lock:
            slot = self._advance(self._slot_number(now)) % self.num_slots
            if len(chips) == 1:
                ring = self._ring(chips[0])
                # An int32 one: with a Python int, np.add.at on int32 takes its slow
                # casting path (35 ns a hit instead of under 1 ns, numpy 2.4).
                np.add.at(ring.maps[slot], cell if inside is None else cell[inside], _ONE32)
                np.add.at(ring.tots[slot], tot_bin, _ONE32)
                return
            for c in chips:
                ring = self._ring(c)
                sel = chip == c
                np.add.at(ring.maps[slot], cell[sel if inside is None else sel & inside], _ONE32)
                np.add.at(ring.tots[slot], tot_bin[sel], _ONE32)

    def _fill_scalar(self, chips: list[int], cols: list[int], rows: list[int], bins: list[int], now: float) -> None:
        """A few hits as lists (flow-inclusive TOT bins) at ``now``: the counts of :meth:`_fill_binned`, one at a time."""
        num_cols, num_rows = self.num_cols, self.num_rows
        with self._lock:
            slot = self._advance(self._slot_number(now)) % self.num_slots
            for chip, col, row, tot_bin in zip(chips, cols, rows, bins):
                ring = self._ring(chip)
                if col < num_cols and row < num_rows:
                    ring.maps[slot, col * num_rows + row] += 1
                ring.tots[slot, tot_bin] += 1

    def _cells(self, hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat pixel index ``column * num_rows + row`` of each hit, and which are inside."""
        col = hits["column"].astype(np.intp)
        row = hits["row"].astype(np.intp)
        inside = (col < self.num_cols) & (row < self.num_rows)
        return col * self.num_rows + row, inside

    def _ring(self, chip: int) -> _ChipRing:
        """The ring of ``chip``, allocated at its first hit."""
        ring = self._rings.get(chip)
        if ring is None:
            ring = _ChipRing(self.num_slots, self.num_cols * self.num_rows, self._binner.nbins_flow)
            self._rings[chip] = ring
        return ring

    def _slot_number(self, now: float) -> int:
        """Absolute slot number of time ``now``."""
        return math.floor(now / self.granularity)

    def _advance(self, number: int) -> int:
        """Move the newest slot to ``number``, clearing the slots passed; the slot to fill."""
        head = self._head
        if head is None or number - head >= self.num_slots:
            for ring in self._rings.values():
                ring.clear(slice(None))
            self._head = number
            return number
        if number <= head:
            return head
        passed = (np.arange(head + 1, number + 1)) % self.num_slots
        for ring in self._rings.values():
            ring.clear(passed)
        self._head = number
        return number

    def reset(self) -> None:
        """Forget every hit and every chip (the memory is released)."""
        with self._lock:
            self._rings = {}
            self._head = None

    # ------------------------------------------------------------------ read
    def _window_slots(self, seconds: float, now: float | None) -> np.ndarray:
        """Ring indices of the filled slots inside the last ``seconds`` before ``now``."""
        count = self._slot_count(seconds)
        if self._head is None:
            return np.zeros(0, dtype=np.intp)
        newest = self._slot_number(time.time() if now is None else float(now))
        oldest = max(newest - count + 1, self._head - self.num_slots + 1)
        newest = min(newest, self._head)
        return np.arange(oldest, newest + 1) % self.num_slots

    def _slot_count(self, seconds: float) -> int:
        """Slots in a window of ``seconds``; ValueError outside (0, max_seconds]."""
        if not 0 < seconds <= self.max_seconds:
            msg = f"a window must be longer than 0 s and at most max_seconds={self.max_seconds:g} s, got {seconds!r}"
            raise ValueError(msg)
        return math.ceil(seconds / self.granularity - 1e-9)

    def counts(self, seconds: float, now: float | None = None) -> np.ndarray:
        """Hit counts of the last ``seconds``: int64 array ``(NUM_CHIPS, num_cols, num_rows)``.

        The layout of ``HitAccumulator``'s chip hit map values (chip, column,
        row), ready for :func:`~astropix_nbmonitor.noisy.find_noisy`.
        """
        out = np.zeros((NUM_CHIPS, self.num_cols, self.num_rows), dtype=np.int64)
        with self._lock:
            slots = self._window_slots(seconds, now)
            for chip, ring in self._rings.items():
                out[chip] = ring.maps[slots].sum(axis=0, dtype=np.int64).reshape(self.num_cols, self.num_rows)
        return out

    def hit_map(self, seconds: float, chip: int | None = None, now: float | None = None) -> bh.Histogram:
        """The hit map of the last ``seconds`` (axes column, row), all chips or one.

        Raises ValueError when ``seconds`` is not in ``(0, max_seconds]``.
        """
        chips = None if chip is None else [_check_chip(chip)]
        with self._lock:
            slots = self._window_slots(seconds, now)
            flat = self._sum_slots(slots, chips, maps=True)
        h = bh.Histogram(
            _integer_axis(self.num_cols, "column"), _integer_axis(self.num_rows, "row"), storage=bh.storage.Int64()
        )
        h.view()[...] = flat.reshape(self.num_cols, self.num_rows)
        return h

    def tot_hist(self, seconds: float, chip: int | None = None, now: float | None = None) -> bh.Histogram:
        """The TOT spectrum of the last ``seconds`` (us, with under/overflow), all chips or one."""
        chips = None if chip is None else [_check_chip(chip)]
        with self._lock:
            slots = self._window_slots(seconds, now)
            flow = self._sum_slots(slots, chips, maps=False)
        return _tot_histogram(_tot_axis(self.tot_edges), flow)

    def _sum_slots(self, slots: np.ndarray, chips: list[int] | None, *, maps: bool) -> np.ndarray:
        """Sum of ``slots`` over ``chips`` (None: all) of the maps or the TOT rings (lock held)."""
        width = self.num_cols * self.num_rows if maps else self._binner.nbins_flow
        total = np.zeros(width, dtype=np.int64)
        for chip in self._rings if chips is None else chips:
            ring = self._rings.get(chip)
            if ring is not None:
                total += (ring.maps if maps else ring.tots)[slots].sum(axis=0, dtype=np.int64)
        return total

    def pixel_rate(
        self, column: int, row: int, chip_id: int | None = None, seconds: float = 60.0, now: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hit rate of one pixel in each slot of the last ``seconds``.

        Returns
        -------
        times : numpy.ndarray
            Start of each slot in seconds relative to ``now`` (<= 0), oldest first.
        rates : numpy.ndarray
            Hits per second of the pixel in that slot (``chip_id`` None: all chips);
            slots older than the ring or never filled are 0.
        """
        column, row = _check_pixel(column, row, self.num_cols, self.num_rows)
        chips = None if chip_id is None else [_check_chip(chip_id)]
        count = self._slot_count(seconds)
        now = time.time() if now is None else float(now)
        newest = self._slot_number(now)
        numbers = np.arange(newest - count + 1, newest + 1)
        hits = np.zeros(count, dtype=np.int64)
        with self._lock:
            if self._head is not None:
                valid = (numbers <= self._head) & (numbers > self._head - self.num_slots)
                slots = numbers[valid] % self.num_slots
                cell = column * self.num_rows + row
                for chip in self._rings if chips is None else chips:
                    ring = self._rings.get(chip)
                    if ring is not None:
                        hits[valid] += ring.maps[slots, cell]
        return numbers * self.granularity - now, hits / self.granularity


# ---------------------------------------------------------------------------
# Per-pixel TOT spectra (whole run)
# ---------------------------------------------------------------------------


class PixelTots:
    """The TOT spectrum of every pixel over the whole run, for the drill-down panel.

    One int64 array ``(num_cols x num_rows, TOT bins + 2)`` per chip seen,
    allocated at the chip's first hit: 16 x 35 x 101 x 8 = 452,480 bytes a chip
    for the defaults, at most 32 chips (14.5 MB). Only hits inside the matrix
    are kept (a pixel has a column and a row).

    Parameters
    ----------
    num_rows, num_cols : int
        The matrix size.
    num_chips : int
        Chip ids accepted are ``0..num_chips-1``; a hit of another chip is ignored
        (and counted in :attr:`ignored`).
    tot_edges : array_like
        TOT bin edges in us, as the engine's accumulator.
    """

    def __init__(
        self, num_rows: int, num_cols: int, num_chips: int = NUM_CHIPS, tot_edges: Sequence[float] = TOT_EDGES
    ) -> None:
        self.num_rows = int(num_rows)
        self.num_cols = int(num_cols)
        self.num_chips = int(num_chips)
        self.tot_edges = _check_edges(tot_edges)
        self._binner = _TotBinner(self.tot_edges)
        self._lock = threading.Lock()
        self._spectra: dict[int, np.ndarray] = {}
        self.ignored = 0

    @property
    def bytes_per_chip(self) -> int:
        """Bytes of one chip's spectra."""
        return self.num_cols * self.num_rows * self._binner.nbins_flow * 8

    @property
    def nbytes(self) -> int:
        """Bytes allocated now."""
        with self._lock:
            return sum(arr.nbytes for arr in self._spectra.values())

    @property
    def chips_seen(self) -> tuple[int, ...]:
        """Chip ids with spectra, sorted."""
        with self._lock:
            return tuple(sorted(self._spectra))

    def fill(self, hits: np.ndarray, *, tot_bins: np.ndarray | None = None) -> None:
        """Add a :data:`~astropix_nbmonitor.fmt.HIT_DTYPE` array of hits.

        ``tot_bins``: the flow-inclusive TOT bin numbers of the hits
        (:meth:`WindowedAccumulator.tot_bins` of the same edges), when the
        caller has them already.
        """
        if len(hits) == 0:
            return
        binner = self._binner if tot_bins is None else _given(tot_bins)
        self._fill_binned(bin_hits(hits, self.num_rows, self.num_cols, binner))

    def _fill_binned(self, binned: BinnedHits) -> None:
        """Add a batch reduced by :func:`~astropix_nbmonitor.hist.bin_hits` (this matrix, these edges)."""
        _check_shape(binned, self.num_rows, self.num_cols)
        chip, cell, inside, tot_bin, chips = binned.chip, binned.cell, binned.inside, binned.tot_bin, binned.chips
        nbins = self._binner.nbins_flow
        flat = cell * nbins + tot_bin
        ignored = 0
        if inside is not None or chips[-1] >= self.num_chips:
            keep = chip < self.num_chips
            if inside is not None:
                ignored = int(np.count_nonzero(inside & ~keep))
                keep &= inside
            else:
                ignored = int(len(chip) - np.count_nonzero(keep))
            flat, chip = flat[keep], chip[keep]
            if len(chip) == 0:
                self.ignored += ignored
                return
            chips = (int(chip[0]),) if len(chips) == 1 else tuple(int(c) for c in np.unique(chip))
        with self._lock:
            self.ignored += ignored
            if len(chips) == 1:
                np.add.at(self._chip(chips[0]).reshape(-1), flat, _ONE64)
                return
            for c in chips:
                np.add.at(self._chip(c).reshape(-1), flat[chip == c], _ONE64)

    def _fill_scalar(self, chips: list[int], cols: list[int], rows: list[int], bins: list[int]) -> None:
        """A few hits as lists (flow-inclusive TOT bins): the counts of :meth:`_fill_binned`, one at a time."""
        num_cols, num_rows, num_chips = self.num_cols, self.num_rows, self.num_chips
        with self._lock:
            for chip, col, row, tot_bin in zip(chips, cols, rows, bins):
                if col < num_cols and row < num_rows:
                    if chip < num_chips:
                        self._chip(chip)[col * num_rows + row, tot_bin] += 1
                    else:
                        self.ignored += 1

    def _chip(self, chip: int) -> np.ndarray:
        """The spectra of ``chip``, allocated at its first hit (lock held)."""
        arr = self._spectra.get(chip)
        if arr is None:
            arr = np.zeros((self.num_cols * self.num_rows, self._binner.nbins_flow), dtype=np.int64)
            self._spectra[chip] = arr
        return arr

    def reset(self) -> None:
        """Forget every spectrum (the memory is released)."""
        with self._lock:
            self._spectra = {}
            self.ignored = 0

    def pixel_counts(self, column: int, row: int, chip_id: int | None = None) -> np.ndarray:
        """TOT counts of one pixel with under/overflow (``chip_id`` None: summed over chips)."""
        column, row = _check_pixel(column, row, self.num_cols, self.num_rows)
        cell = column * self.num_rows + row
        out = np.zeros(self._binner.nbins_flow, dtype=np.int64)
        with self._lock:
            if chip_id is None:
                for arr in self._spectra.values():
                    out += arr[cell]
            else:
                arr = self._spectra.get(_check_chip(chip_id))
                if arr is not None:
                    out += arr[cell]
        return out

    def pixel_tot_hist(self, column: int, row: int, chip_id: int | None = None) -> bh.Histogram:
        """The TOT spectrum of pixel (column, row) of one chip, or summed over chips (None)."""
        return _tot_histogram(_tot_axis(self.tot_edges), self.pixel_counts(column, row, chip_id))

    def sum_pixels(self, pixels: Sequence[tuple[int, int, int]] | set[tuple[int, int, int]]) -> np.ndarray:
        """Summed TOT counts (with under/overflow) of ``(chip_id, column, row)`` pixels."""
        out = np.zeros(self._binner.nbins_flow, dtype=np.int64)
        for chip, column, row in pixels:
            out += self.pixel_counts(column, row, chip)
        return out
