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
a chip. What a time window needs of them (the TOT spectrum of a window with
masked pixels left out) is kept instead as *sparse per-second deltas*:
:meth:`WindowedAccumulator.track_pixels` links a :class:`PixelTots`, and at
every second rollover (once a second, never on the fill path) the change of
its cumulative spectra over the second that ended is stored as the non-zero
``(pixel * bins + bin, count)`` pairs, in a ring over the longest window with
a byte budget (:data:`PIXEL_BUDGET_BYTES`, see :class:`PixelDeltas`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import boost_histogram as bh
import numpy as np

from .astropix4.layout import NUM_CHIPS
from .hist import TOT_EDGES, BinnedHits, bin_hits

__all__ = ["PIXEL_BUDGET_BYTES", "PixelDeltas", "PixelTots", "SecondSlice", "WindowedAccumulator"]

logger = logging.getLogger(__name__)

#: Default byte budget of the per-second per-pixel TOT deltas (:class:`PixelDeltas`).
PIXEL_BUDGET_BYTES = 32 * 1024 * 1024
#: Bytes counted per stored (second, chip) entry on top of its two arrays (the
#: Python objects holding them), so that many tiny entries are budgeted too.
_ENTRY_OVERHEAD = 256

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


@dataclasses.dataclass(frozen=True)
class SecondSlice:
    """What one chip did in one slot of the ring: the unit a hub sends its viewers.

    Attributes
    ----------
    second : int
        The absolute slot number (``floor(time / granularity)``).
    chip : int
        The chip_id.
    maps : numpy.ndarray
        int32 hit counts of the slot, one per pixel (``column * num_rows + row``).
    tots : numpy.ndarray
        int32 TOT counts of the slot, with under- and overflow.
    pixel_index, pixel_count : numpy.ndarray or None
        The slot's per-pixel TOT counts, sparse: flat indices
        ``pixel * (TOT bins + 2) + bin`` (uint16, or uint32 for a matrix too
        large for 16 bits) and their counts (uint32). None when not kept (no
        :class:`PixelTots` linked, or dropped for the byte budget).
    complete : bool
        False for the newest slot, which may still be filling.
    """

    second: int
    chip: int
    maps: np.ndarray
    tots: np.ndarray
    pixel_index: np.ndarray | None = None
    pixel_count: np.ndarray | None = None
    complete: bool = True


class PixelDeltas:
    """Per-second per-pixel TOT counts of the ring's seconds, sparse, within a byte budget.

    Two ways to fill it. Linked to the :class:`PixelTots` an engine fills
    (``source``), :meth:`roll` is called by :class:`WindowedAccumulator` at
    each rollover of its newest slot (once a second, on the first fill of a
    new second; never on the per-batch fill path): the change of the source's
    cumulative spectra since the last rollover, minus a copy kept then, is the
    second that ended; its non-zero ``(pixel * bins + bin)`` indices and
    counts are stored. The second still filling is the source minus that copy,
    read when asked. On a viewer (``totals``), seconds are :meth:`put` as
    received, and each one's counts are added to the viewer's whole-run
    :class:`PixelTots` (a second received again replaces what it added).

    Memory: the copies (the size of the source's spectra, 452,480 bytes a chip
    for the defaults) plus the stored seconds, at most ``budget_bytes``
    (entries counted as their arrays plus 256 bytes each). A second of one
    chip takes 3 bytes per non-zero (pixel, TOT bin) pair while no pair has
    256 counts or more in it (a uint16 index and a uint8 count, see
    :func:`compact_counts`; 4 or 6 bytes above), at most 560 x 101 x 3 =
    169,680 bytes (the defaults); the default 32 MiB budget therefore keeps
    the whole 600 s ring up to about 18,000 distinct (pixel, bin) pairs per
    second (all chips together: a few thousand hits/s always fit, millions
    rarely do). Beyond it, the **oldest seconds are dropped** (never
    the newest): :attr:`dropped_seconds` counts them and :attr:`kept_from` is
    the first second known complete, so a masked window reaching further back
    is reported inexact (``exact`` False from
    :meth:`WindowedAccumulator.masked_tot_counts`, the monitor says "masked
    pixels partly in"), never silently wrong. A second whose per-pixel counts
    disagree with the ring's hit map (the two were not filled with the same
    hits) is counted in :attr:`mismatches` and reported inexact the same way.
    """

    def __init__(self, num_cells: int, nbins_flow: int, budget_bytes: int = PIXEL_BUDGET_BYTES) -> None:
        self.num_cells = int(num_cells)
        self.nbins_flow = int(nbins_flow)
        self.budget_bytes = int(budget_bytes)
        if self.budget_bytes < 0:
            msg = f"budget_bytes must be >= 0, got {budget_bytes!r}"
            raise ValueError(msg)
        self.index_dtype = np.dtype("<u2") if self.num_cells * self.nbins_flow <= 1 << 16 else np.dtype("<u4")
        self.source: PixelTots | None = None
        self.totals: PixelTots | None = None
        self._entries: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self._copies: dict[int, np.ndarray] = {}
        self._mismatched: set[int] = set()
        self.nbytes = 0
        self.kept_from: int | None = None
        self.dropped_seconds = 0
        self.mismatches = 0
        # The selected cells' counts of each stored second, for the last selection read
        # (a mask read at every refresh sums 600 small arrays, not 600 sparse entries).
        self._caches: dict[Any, dict[int, np.ndarray]] = {}  # selection -> second -> counts (4 selections at most)
        self.rolled_head: int | None = None  # the ring's newest slot at the last roll (source mode)

    # ------------------------------------------------------------------ sizes and state
    @property
    def copies_nbytes(self) -> int:
        """Bytes of the copies of the source's spectra."""
        return sum(int(c.nbytes) for c in self._copies.values())

    @property
    def seconds(self) -> tuple[int, ...]:
        """The seconds stored, sorted."""
        return tuple(sorted(self._entries))

    def reset(self) -> None:
        """Forget every second, copy and count."""
        self._entries = {}
        self._copies = {}
        self._mismatched = set()
        self.nbytes = 0
        self.kept_from = None
        self.dropped_seconds = 0
        self.mismatches = 0
        self._caches = {}
        self.rolled_head = None

    def _forget_cached(self, second: int) -> None:
        for cache in self._caches.values():
            cache.pop(second, None)

    def _entry_bytes(self, idx: np.ndarray, cnt: np.ndarray) -> int:
        return int(idx.nbytes + cnt.nbytes) + _ENTRY_OVERHEAD

    def sparse(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The non-zero flat indices (``index_dtype``) and counts (uint32; :meth:`put` stores them compacted) of a flat delta."""
        nz = np.flatnonzero(delta)
        return nz.astype(self.index_dtype), delta[nz].astype("<u4")

    # ------------------------------------------------------------------ storing
    def put(self, second: int, chip: int, idx: np.ndarray, cnt: np.ndarray) -> None:
        """Store (or replace) a second of one chip; add it to :attr:`totals`, then keep the budget."""
        second, chip = int(second), int(chip)
        self._forget_cached(second)
        chips = self._entries.setdefault(second, {})
        old = chips.pop(chip, None)
        if old is not None:
            self.nbytes -= self._entry_bytes(*old)
        if self.totals is not None:
            if old is not None:
                self.totals.add_sparse(chip, old[0], old[1], sign=-1)
            elif self.kept_from is not None and second < self.kept_from:
                self._note_mismatch(second, "a second received again after the budget dropped it")
            self.totals.add_sparse(chip, idx, cnt)
        if len(idx):
            cnt = compact_counts(cnt)
            chips[chip] = (idx, cnt)
            self.nbytes += self._entry_bytes(idx, cnt)
        if not chips:
            del self._entries[second]
        self._keep_budget()

    def _keep_budget(self) -> None:
        """Drop the oldest seconds (never the newest one) until the entries fit the budget."""
        while self.nbytes > self.budget_bytes and len(self._entries) > 1:
            oldest = min(self._entries)
            self._forget_cached(oldest)
            for idx, cnt in self._entries.pop(oldest).values():
                self.nbytes -= self._entry_bytes(idx, cnt)
            self.dropped_seconds += 1
            self.kept_from = oldest + 1 if self.kept_from is None else max(self.kept_from, oldest + 1)
            if _log_limited(self.dropped_seconds):
                logger.warning(
                    "per-pixel TOT of second %d dropped: the %d-byte budget is full (%d seconds dropped so far);"
                    " masked windows reaching before it are marked inexact",
                    oldest, self.budget_bytes, self.dropped_seconds,
                )

    def evict_before(self, second: int) -> None:
        """Forget the seconds before ``second`` (out of every window: not counted as dropped)."""
        for old in [s for s in self._entries if s < second]:
            self._forget_cached(old)
            for idx, cnt in self._entries.pop(old).values():
                self.nbytes -= self._entry_bytes(idx, cnt)
        self._mismatched = {s for s in self._mismatched if s >= second}

    def _note_mismatch(self, second: int, why: str) -> None:
        self.mismatches += 1
        self._mismatched.add(int(second))
        if _log_limited(self.mismatches):
            logger.warning("per-pixel TOT of second %d is inexact: %s (%d so far)", second, why, self.mismatches)

    # ------------------------------------------------------------------ the source (an engine's PixelTots)
    def roll(self, head: int | None, maps_rows: dict[int, np.ndarray], new_head: int | None = None) -> None:
        """The newest slot ``head`` ended: store the source's change since the last roll (window lock held).

        ``maps_rows``: the ring's hit counts of ``head``, per chip, to check
        the per-pixel counts against. ``head`` None (the ring's first fill):
        only the copies are taken. ``new_head``: the slot now filling (what
        the partial counts belong to; :meth:`in_step` checks it).
        """
        src = self.source
        if src is None:
            return
        self.rolled_head = new_head
        with src._lock:
            for chip, arr in src._spectra.items():
                flat = arr.reshape(-1)
                prev = self._copies.get(chip)
                if head is not None:
                    delta = flat if prev is None else flat - prev
                    idx, cnt = self.sparse(delta)
                    if len(idx):
                        self.put(head, chip, idx, cnt)
                    row = maps_rows.get(chip)
                    per_pixel = delta.reshape(self.num_cells, self.nbins_flow).sum(axis=1)
                    if not (np.array_equal(per_pixel, row) if row is not None else not per_pixel.any()):
                        self._note_mismatch(head, f"chip {chip}'s per-pixel spectra and hit map disagree")
                if prev is None:
                    self._copies[chip] = flat.copy()
                else:
                    np.copyto(prev, flat)
            if head is not None:
                for chip, row in maps_rows.items():
                    if chip not in src._spectra and chip < src.num_chips and row.any():
                        self._note_mismatch(head, f"chip {chip} has hits in the hit map and no per-pixel spectra")

    def _partial(self, chip: int) -> np.ndarray | None:
        """The source's change since the last roll, flat (source lock held); None without spectra."""
        arr = self.source._spectra.get(chip) if self.source is not None else None
        if arr is None:
            return None
        prev = self._copies.get(chip)
        flat = arr.reshape(-1)
        return flat.copy() if prev is None else flat - prev

    def entry(self, second: int, chip: int, head: int | None) -> tuple[np.ndarray, np.ndarray] | None:
        """The sparse counts of ``second`` for ``chip``: stored, or the source's partial for ``head`` (locks held)."""
        if self.source is not None and second == head:
            delta = self._partial(chip)
            return None if delta is None else self.sparse(delta)
        return self._entries.get(int(second), {}).get(int(chip))

    def chips_of(self, second: int, head: int | None) -> list[int]:
        if self.source is not None and second == head:
            return list(self.source._spectra)
        return list(self._entries.get(int(second), {}))

    def in_step(self, head: int | None) -> bool:
        """Whether the last roll was at the ring's newest slot ``head`` (source mode; always True otherwise).

        False means the ring moved without a roll (a fill path that does not
        go through ``WindowedAccumulator._advance``): the partial second
        would hold several seconds, so windows are reported inexact.
        """
        return self.source is None or head is None or self.rolled_head == head

    def exact(self, numbers: Iterable[int]) -> bool:
        """Whether every second of ``numbers`` is fully kept (none dropped, none mismatched)."""
        numbers = list(numbers)
        if not numbers:
            return True
        if self.kept_from is not None and min(numbers) < self.kept_from:
            return False
        return not any(n in self._mismatched for n in numbers)

    def window_counts(
        self, numbers: Sequence[int], head: int | None, cells_by_chip: dict[int | None, np.ndarray]
    ) -> tuple[np.ndarray, bool]:
        """Summed TOT counts (flow) of the given cells over ``numbers`` seconds, and whether exact (locks held).

        ``cells_by_chip``: chip -> pixel indices; the key None means those
        cells on every chip.
        """
        out = np.zeros(self.nbins_flow, dtype=np.int64)
        luts: dict[int | None, np.ndarray] = {}
        for chip, cells in cells_by_chip.items():
            lut = np.zeros(self.num_cells, dtype=bool)
            lut[np.asarray(cells, dtype=np.intp)] = True
            luts[chip] = lut
        key = tuple(sorted((-1 if k is None else k, tuple(sorted(set(np.asarray(v).tolist())))) for k, v in cells_by_chip.items()))
        cache = self._caches.pop(key, None)
        if cache is None:
            cache = {}
            while len(self._caches) >= 4:
                del self._caches[next(iter(self._caches))]  # the least recently read selection
        self._caches[key] = cache
        if self.source is not None:
            self.source._lock.acquire()
        try:
            for n in numbers:
                live = self.source is not None and n == head  # the second still filling: never cached
                cached = None if live else cache.get(n)
                if cached is None:
                    cached = self._second_counts(n, head, luts)
                    if not live and n in self._entries:
                        cache[n] = cached
                out += cached
        finally:
            if self.source is not None:
                self.source._lock.release()
        return out, self.exact(numbers)

    def _second_counts(self, n: int, head: int | None, luts: dict[int | None, np.ndarray]) -> np.ndarray:
        """The selected cells' TOT counts of second ``n`` (locks held)."""
        out = np.zeros(self.nbins_flow, dtype=np.int64)
        for chip in self.chips_of(n, head):
            lut = luts.get(chip, luts.get(None))
            if lut is None:
                continue
            found = self.entry(n, chip, head)
            if found is None:
                continue
            idx, cnt = found
            idx = idx.astype(np.intp)
            sel = lut[idx // self.nbins_flow]
            if sel.any():
                out += np.bincount(idx[sel] % self.nbins_flow, weights=cnt[sel], minlength=self.nbins_flow).astype(np.int64)
        return out


def compact_counts(counts: np.ndarray) -> np.ndarray:
    """Non-negative counts in the smallest unsigned type that holds their maximum (uint8, uint16 or uint32).

    A second of per-pixel TOT counts is mostly ones and twos: one byte a
    count instead of four halves what the ring of seconds keeps.
    """
    counts = np.asarray(counts)
    top = int(counts.max()) if len(counts) else 0
    dtype = "|u1" if top < 1 << 8 else "<u2" if top < 1 << 16 else "<u4"
    return counts.astype(dtype, copy=False)


def _log_limited(count: int) -> bool:
    """Whether the ``count``-th occurrence of a repeated problem is logged (the first 5, then every 100th)."""
    return count <= 5 or count % 100 == 0


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
        self._pixels: PixelDeltas | None = None  # per-second per-pixel TOT (track_pixels / receive_pixels)
        self._generation = 0  # +1 at every reset (a hub's viewers see it)

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
        """Move the newest slot to ``number``, clearing the slots passed; the slot to fill.

        At a rollover (``number`` past the newest slot) the per-pixel deltas,
        when tracked, store the second that ended (:meth:`PixelDeltas.roll`):
        the only per-pixel work, once a second.
        """
        head = self._head
        if head is not None and number <= head:
            return head
        pixels = self._pixels
        if pixels is not None:
            rows = {} if head is None else {chip: ring.maps[head % self.num_slots] for chip, ring in self._rings.items()}
            pixels.roll(head, rows, number)
        if head is None or number - head >= self.num_slots:
            for ring in self._rings.values():
                ring.clear(slice(None))
        else:
            passed = (np.arange(head + 1, number + 1)) % self.num_slots
            for ring in self._rings.values():
                ring.clear(passed)
        self._head = number
        if pixels is not None:
            pixels.evict_before(number - self.num_slots + 1)
        return number

    def reset(self) -> None:
        """Forget every hit and every chip (the memory is released); :attr:`generation` goes up."""
        with self._lock:
            self._rings = {}
            self._head = None
            self._generation += 1
            if self._pixels is not None:
                self._pixels.reset()

    # ------------------------------------------------------------------ per-pixel deltas
    def track_pixels(self, pixel_tots: PixelTots, budget_bytes: int = PIXEL_BUDGET_BYTES) -> PixelDeltas:
        """Keep per-second per-pixel TOT counts from ``pixel_tots`` (an engine's), for masked windows.

        ``pixel_tots`` must have this ring's matrix and TOT edges and be
        filled with the same hits, *after* :meth:`fill` of each batch (what
        :meth:`MonitorEngine.accumulate <astropix_nbmonitor.engine.MonitorEngine.accumulate>`
        does); a second where the two disagree is counted
        (:attr:`PixelDeltas.mismatches`) and reported inexact. Returns the
        :class:`PixelDeltas` (its memory and budget: see there).
        """
        self._check_pixels(pixel_tots)
        with self._lock:
            pixels = PixelDeltas(self.num_cols * self.num_rows, self._binner.nbins_flow, budget_bytes)
            pixels.source = pixel_tots
            if self._head is not None:
                pixels.roll(None, {}, self._head)  # from now on: the head is counted from here
            self._pixels = pixels
            return pixels

    def receive_pixels(self, pixel_tots: PixelTots | None = None, budget_bytes: int = PIXEL_BUDGET_BYTES) -> PixelDeltas:
        """Keep the per-pixel TOT counts of the slices :meth:`load` is given (a viewer of a hub).

        Each loaded second's counts are also added to ``pixel_tots`` (the
        viewer's whole-run spectra); a second loaded again replaces them.
        """
        if pixel_tots is not None:
            self._check_pixels(pixel_tots)
        with self._lock:
            pixels = PixelDeltas(self.num_cols * self.num_rows, self._binner.nbins_flow, budget_bytes)
            pixels.totals = pixel_tots
            self._pixels = pixels
            return pixels

    def _check_pixels(self, pixel_tots: PixelTots) -> None:
        if (pixel_tots.num_rows, pixel_tots.num_cols) != (self.num_rows, self.num_cols) or not (
            len(pixel_tots.tot_edges) == len(self.tot_edges) and np.allclose(pixel_tots.tot_edges, self.tot_edges)
        ):
            msg = "the PixelTots must have the window ring's matrix and TOT edges"
            raise ValueError(msg)

    @property
    def pixels(self) -> PixelDeltas | None:
        """The per-second per-pixel TOT counts kept (None: not kept)."""
        return self._pixels

    @property
    def generation(self) -> int:
        """How many times :meth:`reset` ran (a viewer of a hub clears its windows when it changes)."""
        return self._generation

    @property
    def head(self) -> int | None:
        """Absolute number of the newest slot (None before any fill)."""
        with self._lock:
            return self._head

    def _window_numbers(self, seconds: float, now: float | None) -> list[int]:
        """Absolute slot numbers of the filled slots inside the last ``seconds`` (lock held)."""
        count = self._slot_count(seconds)
        if self._head is None:
            return []
        newest = self._slot_number(time.time() if now is None else float(now))
        oldest = max(newest - count + 1, self._head - self.num_slots + 1)
        return list(range(oldest, min(newest, self._head) + 1))

    def masked_tot_counts(
        self,
        seconds: float,
        pixels: Iterable[tuple[int, int, int]],
        chip: int | None = None,
        now: float | None = None,
    ) -> tuple[np.ndarray, bool]:
        """TOT counts (with under/overflow) of ``(chip_id, column, row)`` pixels over the last ``seconds``.

        Only the pixels of ``chip`` (None: each pixel on its own chip, for
        the all-chips spectrum), so that :meth:`tot_hist` minus these counts
        is the window's spectrum with those pixels left out, whenever they
        were masked. Returns ``(counts, exact)``: ``exact`` is False when a
        second of the window lost its per-pixel counts (the byte budget, see
        :class:`PixelDeltas`) or they disagreed with the hit map, or when no
        per-pixel counts are kept (counts all zero then, unless no pixel).
        """
        cells: dict[int | None, list[int]] = {}
        for k, c, r in pixels:
            if chip is None or int(k) == int(chip):
                c, r = _check_pixel(c, r, self.num_cols, self.num_rows)
                cells.setdefault(int(k), []).append(c * self.num_rows + r)
        return self._pixel_window(seconds, {k: np.asarray(v) for k, v in cells.items()}, now)

    def pixel_tot_counts(
        self, seconds: float, column: int, row: int, chip_id: int | None = None, now: float | None = None
    ) -> tuple[np.ndarray, bool]:
        """TOT counts (with under/overflow) of one pixel over the last ``seconds`` (chip None: all chips), and exact."""
        column, row = _check_pixel(column, row, self.num_cols, self.num_rows)
        key = None if chip_id is None else _check_chip(chip_id)
        return self._pixel_window(seconds, {key: np.asarray([column * self.num_rows + row])}, now)

    def pixel_tot_hist(
        self, seconds: float, column: int, row: int, chip_id: int | None = None, now: float | None = None
    ) -> bh.Histogram:
        """:meth:`pixel_tot_counts` as a TOT histogram (the axes of :meth:`tot_hist`)."""
        counts, _ = self.pixel_tot_counts(seconds, column, row, chip_id, now)
        return _tot_histogram(_tot_axis(self.tot_edges), counts)

    def _pixel_window(
        self, seconds: float, cells: dict[int | None, np.ndarray], now: float | None
    ) -> tuple[np.ndarray, bool]:
        with self._lock:
            numbers = self._window_numbers(seconds, now)
            if not cells:
                return np.zeros(self._binner.nbins_flow, dtype=np.int64), True
            if self._pixels is None:
                return np.zeros(self._binner.nbins_flow, dtype=np.int64), False
            counts, exact = self._pixels.window_counts(numbers, self._head, cells)
            if not self._pixels.in_step(self._head):
                self._pixels._note_mismatch(self._head, "the ring moved on without a rollover of the per-pixel counts")
                exact = False
            return counts, exact

    # ------------------------------------------------------------------ slices (a hub and its viewers)
    def export(self, after: int | None = None) -> list[SecondSlice]:
        """The slots newer than ``after`` (None: the whole ring), oldest first, one slice per chip with hits.

        Slots with no hit are left out. The newest slot is ``complete=False``
        (it may still fill: a hub sends it again). With per-pixel counts
        tracked, each slice holds its second's sparse per-pixel TOT counts
        (None for a second the budget dropped). A copy: the ring is not held.
        """
        out: list[SecondSlice] = []
        with self._lock:
            head = self._head
            if head is None:
                return out
            first = head - self.num_slots + 1 if after is None else max(int(after) + 1, head - self.num_slots + 1)
            pixels = self._pixels
            if pixels is not None and pixels.source is not None:
                pixels.source._lock.acquire()
            try:
                for n in range(first, head + 1):
                    slot = n % self.num_slots
                    for chip in sorted(self._rings):
                        ring = self._rings[chip]
                        tots = ring.tots[slot]
                        if not tots.any():
                            continue
                        idx = cnt = None
                        if pixels is not None and pixels.exact([n]) and pixels.in_step(head):
                            found = pixels.entry(n, chip, head)
                            idx, cnt = found if found is not None else (
                                np.zeros(0, pixels.index_dtype), np.zeros(0, "<u4"))
                        out.append(SecondSlice(n, chip, ring.maps[slot].copy(), tots.copy(), idx, cnt, n < head))
            finally:
                if pixels is not None and pixels.source is not None:
                    pixels.source._lock.release()
        return out

    def advance_to(self, number: int) -> None:
        """Move the newest slot to ``number`` (a viewer following its hub's ring; never backwards)."""
        with self._lock:
            self._advance(int(number))

    def load(self, slices: Iterable[SecondSlice], *, add_to_totals: bool = True) -> int:
        """Set slots from slices (a viewer of a hub): each replaces its (second, chip); returns how many were taken.

        Slices older than the ring are ignored. Per-pixel counts go to the
        :class:`PixelDeltas` of :meth:`receive_pixels`, and (``add_to_totals``)
        to its whole-run spectra; ``add_to_totals=False`` for a history whose
        whole-run spectra already hold them.
        """
        taken = 0
        with self._lock:
            pixels = self._pixels
            totals = None if pixels is None else pixels.totals
            if pixels is not None and not add_to_totals:
                pixels.totals = None
            try:
                for sl in slices:
                    number = int(sl.second)
                    if self._head is None or number > self._head:
                        self._advance(number)
                    if number <= self._head - self.num_slots:
                        continue
                    chip = _check_chip(sl.chip)
                    ring = self._ring(chip)
                    slot = number % self.num_slots
                    ring.maps[slot] = sl.maps
                    ring.tots[slot] = sl.tots
                    taken += 1
                    if pixels is None:
                        continue
                    if sl.pixel_index is None or sl.pixel_count is None:
                        pixels._note_mismatch(number, "the hub did not keep this second's per-pixel counts")
                        continue
                    pixels.put(number, chip, sl.pixel_index, sl.pixel_count)
            finally:
                if pixels is not None:
                    pixels.totals = totals
        return taken

    @property
    def pixel_nbytes(self) -> int:
        """Bytes of the per-pixel deltas: stored seconds plus the copies of the source's spectra."""
        with self._lock:
            return 0 if self._pixels is None else self._pixels.nbytes + self._pixels.copies_nbytes

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

    @property
    def flat_size(self) -> int:
        """Elements of one chip's spectra, flat (``num_cols x num_rows x (TOT bins + 2)``)."""
        return self.num_cols * self.num_rows * self._binner.nbins_flow

    def add_sparse(self, chip: int, index: np.ndarray, count: np.ndarray, sign: int = 1) -> None:
        """Add (``sign`` -1: take away) counts at flat indices ``pixel * (bins + 2) + bin`` of one chip.

        ``index`` must be unique and below :attr:`flat_size` (ValueError
        otherwise); a chip beyond ``num_chips`` is ignored. For a viewer of a
        hub, whose spectra come from the hub's per-second counts.
        """
        chip = int(chip)
        index = np.asarray(index).astype(np.intp, copy=False)
        if len(index) and (index.min() < 0 or index.max() >= self.flat_size):
            msg = f"flat indices must be in 0..{self.flat_size - 1}"
            raise ValueError(msg)
        if not 0 <= chip < self.num_chips:
            return
        values = np.asarray(count).astype(np.int64)
        with self._lock:
            flat = self._chip(chip).reshape(-1)
            if sign < 0:
                flat[index] -= values
            else:
                flat[index] += values

    def export_sparse(self) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Every chip's spectra as ``(chip, flat indices, counts)`` of the non-zero entries (a copy)."""
        dtype = np.dtype("<u2") if self.flat_size <= 1 << 16 else np.dtype("<u4")
        out = []
        with self._lock:
            for chip in sorted(self._spectra):
                flat = self._spectra[chip].reshape(-1)
                nz = np.flatnonzero(flat)
                out.append((chip, nz.astype(dtype), flat[nz].astype("<i8")))
        return out

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
