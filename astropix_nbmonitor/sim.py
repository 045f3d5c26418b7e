"""A deterministic synthetic AstroPix 4 source, with ground truth.

:class:`AstroPix4Simulator` produces readout records (docs/format.md section 1)
whose board bytes look like those of a real AstroPix 4 board: ``bc bc``
before the first hit, a few ``bc`` idle bytes between hits, trailing ``bc``
bytes and, optionally, ``ff`` padding. Hits follow a Gaussian beam spot on
the matrix over a uniform background, plus noisy pixels; their TOT follows a
Landau-like spectrum with a long tail.

Every run comes with its ground truth: the hits a correct decoder (the
offline rules of docs/format.md section 5, chaining extra bytes between readouts
with consecutive ids) must find. Faults can be injected on demand (see
:class:`Faults`) to exercise the difficult paths of a decoder: hits split
across two readouts, ``ff`` padding between hits, lost readouts, hits outside
the matrix, truncated or garbled readouts, empty readouts. Without the
``empty`` fault every readout holds at least one hit (docs/format.md
section 9: a source should not send empty readouts unless asked to).

Everything is drawn from one :class:`numpy.random.Generator`, so a seed fixes
the bytes: the same seed and the same sequence of :meth:`~AstroPix4Simulator.generate`
calls give the same records.

Limits of the model, on purpose:

* The row field of a hit is 5 bits wide, so only rows 0..31 of the 35-row
  matrix can be encoded: the simulator draws rows in 0..31.
* The first wire byte of a hit must be a valid start byte (``e0``..``fe``).
  With payload 7 (the only payload the board sends), chip ids 0..30 give a
  valid start byte; chip id 31 gives ``ff`` (padding) and is refused.
* ``ff`` padding between hits is inserted only after a hit none of whose
  bytes 1..7 is a start byte: after such a hit, the offline rules read a
  following ``ff`` as the sign of a truncated hit (INCOMPLETE_HIT_DROPPED)
  and would shift the hit, so the truth would no longer be the hit sent.
* A hit is split across two readouts only at a cut that the offline rules
  can rejoin (the first part does not end with ``ff``, the second part has no
  start byte, does not start with ``bc``/``ff`` and does not end with ``bc``);
  a hit with no such cut is not split.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
import numpy as np

from .astropix4.layout import (
    BIT_REVERSE_NP,
    CLOCK_CYCLES_PER_US,
    CLOCK_ROLLOVER,
    ENCODABLE_ROWS,
    FIELD_MAX,
    HIT_DTYPE,
    HIT_LAYOUT,
    HIT_SIZE,
    IDLE_BYTE,
    IS_START,
    NS_PER_CLOCK_CYCLE,
    NUM_COLS,
    PADDING_BYTE,
)
from .astropix4.readout import AstroPix4Readout
from .record import pack_record

__all__ = ["AstroPix4Simulator", "Faults", "SimulatedRun", "VALID_CHIP_IDS", "encode_hits"]

logger = logging.getLogger(__name__)

_MAX_TOT_CYCLES = CLOCK_ROLLOVER - 1

#: Chip ids whose hits start with a valid start byte (payload 7).
VALID_CHIP_IDS = tuple(range(31))

_START_BYTE = np.array(IS_START, dtype=bool)
_IDLE = bytes([IDLE_BYTE])
_PAD = bytes([PADDING_BYTE])
#: Idle bytes after a hit: none, one or two.
_GAP = (b"", _IDLE, _IDLE * 2)


def encode_hits(hits: np.ndarray) -> np.ndarray:
    """Encode hit fields into wire bytes, many hits at once.

    The vectorised counterpart of :meth:`AstroPix4Hit.encode
    <astropix_nbmonitor.fmt.AstroPix4Hit.encode>` (the tests check that both
    agree on every simulated hit).

    Parameters
    ----------
    hits : numpy.ndarray
        A structured array with (at least) the twelve raw fields of
        :data:`~astropix_nbmonitor.fmt.HIT_DTYPE` (chip_id .. ts_tdc2).

    Returns
    -------
    numpy.ndarray
        ``(len(hits), 8)`` uint8 array, one row of wire bytes per hit.

    Raises
    ------
    ValueError
        If a field value does not fit in its bits.
    """
    word = np.zeros(len(hits), dtype=np.uint64)
    for name, start, width in HIT_LAYOUT:
        values = np.asarray(hits[name]).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= 1 << width):
            bad = values[(values < 0) | (values >= 1 << width)][0]
            msg = f"{name}={bad} does not fit in its {width} bits"
            raise ValueError(msg)
        word |= values.astype(np.uint64) << np.uint64(64 - start - width)
    raw = word.astype(">u8").view(np.uint8).reshape(-1, HIT_SIZE)
    return BIT_REVERSE_NP[raw]


@dataclass(frozen=True)
class Faults:
    """Per-readout probabilities of the faults the simulator can inject.

    Attributes
    ----------
    split : float
        The readout's last hit is cut in two: the readout ends with its first
        ``k`` bytes, the next readout starts with the other ``8 - k``
        (docs/format.md section 7, VALID_EXTRA_BYTES then ORPHAN_BYTES_MATCHED).
        The recovered hit belongs to the second readout, decoding order 0.
    ff_padding : float
        A run of ``ff`` bytes between two hits (as the board does at high rate).
    trailing_ff : float
        ``ff`` padding left at the end of the record's data (a receiver must
        strip it). Not a fault for the decoder: the hits are unchanged.
    truncated : float
        The readout's data is cut short at a random byte (readout *damaged*).
    garbled : float
        Random bytes overwrite a random span of the data (readout *damaged*).
    skip_ids : float
        Readouts are lost before this one: its id jumps by 2 to 4.
    out_of_matrix : float
        One hit of the readout has a column in 16..31 (outside the matrix).
    empty : float
        The readout holds no hit: its data is a few ``bc`` idle bytes, or
        nothing (an *empty readout*, docs/format.md section 9). Without this
        fault every readout holds at least one hit. The readout right after
        a split hit is never made empty (it carries the second part).
    """

    split: float = 0.0
    ff_padding: float = 0.0
    trailing_ff: float = 0.0
    truncated: float = 0.0
    garbled: float = 0.0
    skip_ids: float = 0.0
    out_of_matrix: float = 0.0
    empty: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= float(value) <= 1.0:
                msg = f"fault probability {f.name}={value!r} is not in [0, 1]"
                raise ValueError(msg)

    @classmethod
    def coerce(cls, faults: Faults | Mapping[str, float] | None) -> Faults:
        """A :class:`Faults` from ``None`` (no faults), a mapping or a Faults."""
        if faults is None:
            return cls()
        if isinstance(faults, cls):
            return faults
        if isinstance(faults, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(faults) - known)
            if unknown:
                msg = f"unknown fault names {unknown}; known: {sorted(known)}"
                raise ValueError(msg)
            return cls(**{k: float(v) for k, v in faults.items()})
        msg = f"faults must be a Faults, a mapping or None, got {faults!r}"
        raise TypeError(msg)


@dataclass
class SimulatedRun:
    """One chunk of simulated readouts and its ground truth.

    Attributes
    ----------
    records : list of bytes
        The readout records (docs/format.md section 1), in order. Ids are
        consecutive, also across :meth:`AstroPix4Simulator.generate` calls,
        except where readouts were lost (``skip_ids``).
    readouts : list of AstroPix4Readout
        The same records, parsed.
    truth : numpy.ndarray
        :data:`~astropix_nbmonitor.fmt.HIT_DTYPE` hits that a correct decoder,
        chaining extra bytes between readouts with consecutive ids, finds, in
        order. A hit split across two readouts is in the second one with
        decoding order 0; a split hit whose second readout was lost is lost.
        Readouts in :attr:`unreliable` have no truth (none of their hits is
        listed): compare decoded hits through :meth:`select_reliable`.
    damaged : set of int
        Ids of readouts whose bytes were truncated or garbled: what a decoder
        finds in them is unknown.
    unreliable : frozenset of int
        ``damaged`` plus the id right after each damaged readout (a damaged
        readout's extra bytes, handed on by chaining, may change the next
        readout's first hit). Readouts further on are unaffected.
    lost : int
        Number of readout ids skipped (readouts lost) in this chunk.
    num_out_of_matrix : int
        Number of hits in ``truth`` with a column outside the matrix (>= 16).
    num_split : int
        Hits split across two readouts that both arrived (the second readout
        may be unreliable).
    empty : frozenset of int
        Ids of the readouts whose data holds nothing but ``bc``/``ff`` bytes:
        those a correct decoder counts as empty (no hit, no flag). They are
        the readouts of the ``empty`` fault, plus any damaged readout whose
        bytes happen to end up so.
    """

    records: list[bytes]
    readouts: list[AstroPix4Readout]
    truth: np.ndarray
    damaged: set[int] = field(default_factory=set)
    unreliable: frozenset[int] = frozenset()
    lost: int = 0
    num_out_of_matrix: int = 0
    num_split: int = 0
    empty: frozenset[int] = frozenset()

    @property
    def num_readouts(self) -> int:
        """Number of records in the run."""
        return len(self.records)

    @property
    def num_empty(self) -> int:
        """Number of empty readouts (see :attr:`empty`)."""
        return len(self.empty)

    def readout_ids(self) -> np.ndarray:
        """The readout ids of the records, in order."""
        return np.array([r.readout_id for r in self.readouts], dtype=np.int64)

    def select_reliable(self, hits: np.ndarray) -> np.ndarray:
        """The decoded ``hits`` that belong to readouts with a known truth.

        Parameters
        ----------
        hits : numpy.ndarray
            Decoded hits (:data:`~astropix_nbmonitor.fmt.HIT_DTYPE`).

        Returns
        -------
        numpy.ndarray
            ``hits`` without those of the :attr:`unreliable` readouts, to be
            compared with :attr:`truth`.
        """
        if not self.unreliable:
            return hits
        bad = np.fromiter(self.unreliable, dtype=np.int64, count=len(self.unreliable))
        return hits[~np.isin(hits["readout_id"].astype(np.int64), bad)]


@dataclass
class _Plan:
    """The random draws of one chunk, made before its bytes are assembled (lists, for speed)."""

    ids: list[int]
    timestamps: list[int]
    jump: list[int]  # readouts lost just before each readout
    lost: int
    hits: np.ndarray  # HIT_DTYPE fields of every hit of the chunk, readout by readout
    first: list[int]  # the hits of readout i are hits[first[i]:first[i + 1]]
    wire: bytes  # their wire bytes, 8 per hit
    inner_start: list[bool]  # a start byte among bytes 1..7 of the hit
    gaps: list[int]  # idle bytes after each hit (index into _GAP)
    want_split: list[bool]
    ff_pad: set[int]
    trailing_ff: set[int]
    truncate: set[int]
    garble: set[int]
    trail_bc: list[int]  # idle bytes at the end of each readout
    empty: set[int]  # readouts made empty by the fault
    empty_bc: list[int]  # idle bytes of an empty readout (0: no data at all)


@dataclass
class _Chunk:
    """What the assembly of a chunk's records found out: the ground truth."""

    carried: list[np.ndarray] = field(default_factory=list)  # split hits completed in this chunk
    src: list[int] = field(default_factory=list)  # index into the chunk's hits, or -1 - index into carried
    rids: list[int] = field(default_factory=list)
    tss: list[int] = field(default_factory=list)
    orders: list[int] = field(default_factory=list)
    damaged: set[int] = field(default_factory=set)
    unreliable: set[int] = field(default_factory=set)
    empty: set[int] = field(default_factory=set)
    num_split: int = 0

    def add(self, j: int, rid: int, ts: int, order: int) -> None:
        """Hit ``j`` of the chunk is found in readout ``rid`` at decoding order ``order``."""
        self.src.append(j)
        self.rids.append(rid)
        self.tss.append(ts)
        self.orders.append(order)

    def add_carried(self, row: np.ndarray, rid: int, ts: int) -> None:
        """A hit split before this chunk's readout ``rid`` is recovered there, first."""
        self.carried.append(row)
        self.add(-len(self.carried), rid, ts, 0)
        self.num_split += 1

    def build_truth(self, hits: np.ndarray) -> np.ndarray:
        """The truth as a HIT_DTYPE array, in the order the hits were added."""
        pool = np.concatenate([hits, *self.carried]) if self.carried else hits
        idx = np.asarray(self.src, dtype=np.int64)
        # -1 - m refers to carried[m], stored after the chunk's own hits.
        idx = np.where(idx < 0, len(hits) + (-1 - idx), idx)
        truth = pool[idx] if len(idx) else np.zeros(0, dtype=HIT_DTYPE)
        truth["readout_id"] = self.rids
        truth["timestamp"] = np.asarray(self.tss, dtype=np.uint64)
        truth["decoding_order"] = self.orders
        return truth


class AstroPix4Simulator:
    """A deterministic synthetic AstroPix 4 readout source.

    Parameters
    ----------
    seed : int, optional
        Seed of the random generator; the same seed gives the same bytes.
    hits_per_readout : float
        Mean number of beam and background hits per readout, at least 1:
        every readout holds one hit plus a Poisson number of mean
        ``hits_per_readout - 1`` (so 1 gives exactly one hit per readout, as
        in the real data at low rate); or the exact number with
        ``fixed_hits=True`` (dense readouts). Empty readouts come only from
        the ``empty`` fault.
    fixed_hits : bool
        Every readout has exactly ``round(hits_per_readout)`` such hits.
    beam_center, beam_sigma : tuple of float
        ``(row, column)`` centre and standard deviations of the Gaussian beam
        spot, in pixels.
    beam_fraction : float
        Fraction of hits in the beam spot; the others are uniform over the
        matrix.
    noisy_pixels : sequence of (row, column)
        Pixels that fire on their own, on top of the beam.
    noisy_rate : float
        Mean number of extra hits per readout from each noisy pixel (Poisson).
    chip_ids : sequence of int
        Chip ids to draw hits from (uniformly); each in 0..30, see
        :data:`VALID_CHIP_IDS`.
    tot_mpv_us, tot_scale_us : float
        Most probable value and width of the Landau-like (Moyal) TOT spectrum.
    tot_tail, tot_tail_us : float
        Fraction of hits with an extra exponential TOT tail, and its mean.
    faults : Faults or mapping, optional
        Per-readout fault probabilities (see :class:`Faults`); none by default.
    start_id : int
        Id of the first readout.
    start_timestamp : int, optional
        Host timestamp (ns since the epoch) of the first readout. Fixed by
        default (2025-07-23) so that runs are reproducible; pass
        ``time.time_ns()`` for a live stream.
    rate_hz : float
        Readouts per second: readout ``i`` has timestamp
        ``start_timestamp + (id - start_id) * 1e9 / rate_hz``.
    """

    #: Default first timestamp (ns): 2025-07-23 07:25:36 UTC.
    DEFAULT_START_TIMESTAMP = 1_753_255_536_000_000_000

    def __init__(
        self,
        *,
        seed: int | None = None,
        hits_per_readout: float = 1.0,
        fixed_hits: bool = False,
        beam_center: tuple[float, float] = (17.0, 8.0),
        beam_sigma: tuple[float, float] = (5.0, 3.0),
        beam_fraction: float = 0.9,
        noisy_pixels: Sequence[tuple[int, int]] = (),
        noisy_rate: float = 0.02,
        chip_ids: Sequence[int] = (0,),
        tot_mpv_us: float = 80.0,
        tot_scale_us: float = 20.0,
        tot_tail: float = 0.02,
        tot_tail_us: float = 400.0,
        faults: Faults | Mapping[str, float] | None = None,
        start_id: int = 0,
        start_timestamp: int | None = None,
        rate_hz: float = 1000.0,
    ) -> None:
        if not hits_per_readout >= 1:
            msg = (
                f"hits_per_readout must be >= 1 (every readout holds a hit; empty readouts come "
                f"from the 'empty' fault), got {hits_per_readout!r}"
            )
            raise ValueError(msg)
        if not 0.0 <= beam_fraction <= 1.0:
            msg = f"beam_fraction must be in [0, 1], got {beam_fraction!r}"
            raise ValueError(msg)
        if len(beam_center) != 2 or len(beam_sigma) != 2 or min(beam_sigma) <= 0:
            msg = f"beam_center and beam_sigma must be (row, column) pairs, sigmas > 0: {beam_center!r}, {beam_sigma!r}"
            raise ValueError(msg)
        if not noisy_rate >= 0:
            msg = f"noisy_rate must be >= 0, got {noisy_rate!r}"
            raise ValueError(msg)
        pixels = [(int(r), int(c)) for r, c in noisy_pixels]
        for r, c in pixels:
            if not (0 <= r < ENCODABLE_ROWS and 0 <= c <= FIELD_MAX):
                msg = f"noisy pixel (row={r}, column={c}) cannot be encoded (rows 0..31, columns 0..31)"
                raise ValueError(msg)
        chips = tuple(int(c) for c in chip_ids)
        if not chips:
            msg = "chip_ids must not be empty"
            raise ValueError(msg)
        for c in chips:
            if c not in VALID_CHIP_IDS:
                msg = f"chip id {c} is not allowed: chip ids 0..30 give a valid start byte, 31 gives ff"
                raise ValueError(msg)
        if not rate_hz > 0:
            msg = f"rate_hz must be > 0, got {rate_hz!r}"
            raise ValueError(msg)
        if not (tot_scale_us > 0 and tot_mpv_us >= 0 and 0 <= tot_tail <= 1 and tot_tail_us > 0):
            msg = (
                f"bad TOT spectrum: tot_mpv_us={tot_mpv_us!r}, tot_scale_us={tot_scale_us!r}, "
                f"tot_tail={tot_tail!r}, tot_tail_us={tot_tail_us!r}"
            )
            raise ValueError(msg)
        if not 0 <= start_id < 2**32:
            msg = f"start_id must be a uint32, got {start_id!r}"
            raise ValueError(msg)
        self.seed = seed
        self.hits_per_readout = float(hits_per_readout)
        self.fixed_hits = bool(fixed_hits)
        self.beam_center = (float(beam_center[0]), float(beam_center[1]))
        self.beam_sigma = (float(beam_sigma[0]), float(beam_sigma[1]))
        self.beam_fraction = float(beam_fraction)
        self.noisy_pixels = tuple(pixels)
        self.noisy_rate = float(noisy_rate)
        self.chip_ids = chips
        self.tot_mpv_us = float(tot_mpv_us)
        self.tot_scale_us = float(tot_scale_us)
        self.tot_tail = float(tot_tail)
        self.tot_tail_us = float(tot_tail_us)
        self.faults = Faults.coerce(faults)
        self.start_id = int(start_id)
        self.start_timestamp = self.DEFAULT_START_TIMESTAMP if start_timestamp is None else int(start_timestamp)
        self.rate_hz = float(rate_hz)
        self._rng = np.random.default_rng(seed)
        # State carried from one generate() call to the next.
        self._next_id = self.start_id
        self._started = False
        self._pending: tuple[bytes, np.ndarray, int] | None = None  # (2nd part, hit row, id it was cut in)
        self._last_damaged_id: int | None = None

    @property
    def next_id(self) -> int:
        """The id the next readout gets (unless readouts are lost before it)."""
        return self._next_id

    # ------------------------------------------------------------------
    # Hit fields
    # ------------------------------------------------------------------

    def _pixels(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of ``n`` beam or background hits."""
        rng = self._rng
        rows = rng.integers(0, ENCODABLE_ROWS, n)
        cols = rng.integers(0, NUM_COLS, n)
        beam = np.flatnonzero(rng.random(n) < self.beam_fraction)
        todo = beam
        for _ in range(100):
            if not len(todo):
                break
            r = np.rint(rng.normal(self.beam_center[0], self.beam_sigma[0], len(todo))).astype(np.int64)
            c = np.rint(rng.normal(self.beam_center[1], self.beam_sigma[1], len(todo))).astype(np.int64)
            inside = (r >= 0) & (r < ENCODABLE_ROWS) & (c >= 0) & (c < NUM_COLS)
            rows[todo[inside]] = r[inside]
            cols[todo[inside]] = c[inside]
            todo = todo[~inside]
        # A beam far outside the matrix: what is left stays uniform.
        return rows, cols

    def _tot_cycles(self, n: int) -> np.ndarray:
        """TOT of ``n`` hits in clock cycles (20 per us)."""
        rng = self._rng
        # Moyal distribution (an approximation of Landau): -ln(Z**2), Z normal.
        z = rng.standard_normal(n)
        moyal = -np.log(np.maximum(z * z, 1e-300))
        tot = self.tot_mpv_us + self.tot_scale_us * moyal
        tail = rng.random(n) < self.tot_tail
        tot[tail] += rng.exponential(self.tot_tail_us, int(tail.sum()))
        cycles = np.rint(tot * CLOCK_CYCLES_PER_US)
        return np.clip(cycles, 1, _MAX_TOT_CYCLES).astype(np.int64)

    def _hit_fields(
        self, counts: np.ndarray, noisy: np.ndarray, timestamps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw the fields of every hit of the chunk, readout by readout.

        ``counts[i]`` beam/background hits and ``noisy[i, p]`` hits of noisy
        pixel ``p`` in readout ``i``; returns a HIT_DTYPE array ordered by
        readout (order inside a readout shuffled), with readout_id and
        timestamp unset, and the index of each hit's readout.
        """
        rng = self._rng
        n_beam = int(counts.sum())
        rows, cols = self._pixels(n_beam)
        owner = np.repeat(np.arange(len(counts)), counts)
        if noisy.size and noisy.sum():
            per_pixel = noisy.sum(axis=0)
            nrows = np.repeat([p[0] for p in self.noisy_pixels], per_pixel)
            ncols = np.repeat([p[1] for p in self.noisy_pixels], per_pixel)
            nowner = np.concatenate([np.repeat(np.arange(len(counts)), noisy[:, p]) for p in range(noisy.shape[1])])
            rows = np.concatenate([rows, nrows])
            cols = np.concatenate([cols, ncols])
            owner = np.concatenate([owner, nowner])
        n = len(owner)
        order = np.lexsort((rng.random(n), owner))
        rows, cols, owner = rows[order], cols[order], owner[order]
        hits = np.zeros(n, dtype=HIT_DTYPE)
        hits["chip_id"] = np.asarray(self.chip_ids)[rng.integers(0, len(self.chip_ids), n)]
        hits["payload"] = 7
        hits["row"] = rows
        hits["column"] = cols
        # Chip clock (20 MHz, 17 bits) at the hit: some time before the readout.
        period_ns = 1e9 / self.rate_hz
        delay_ns = (rng.random(n) * period_ns).astype(np.int64)
        hit_ns = timestamps[owner].astype(np.int64) - delay_ns
        dec1 = (hit_ns // NS_PER_CLOCK_CYCLE) % CLOCK_ROLLOVER
        cycles = self._tot_cycles(n)
        dec2 = (dec1 + cycles) % CLOCK_ROLLOVER
        g1 = dec1 ^ (dec1 >> 1)
        g2 = dec2 ^ (dec2 >> 1)
        hits["ts_coarse1"] = g1 >> 3
        hits["ts_fine1"] = g1 & 7
        hits["ts_coarse2"] = g2 >> 3
        hits["ts_fine2"] = g2 & 7
        hits["ts_neg1"] = rng.integers(0, 2, n)
        hits["ts_neg2"] = rng.integers(0, 2, n)
        tdc = rng.integers(0, 32, (2, n))
        tdc[rng.random((2, n)) < 0.9] = 0
        hits["ts_tdc1"] = tdc[0]
        hits["ts_tdc2"] = tdc[1]
        hits["ts_dec1"] = dec1
        hits["ts_dec2"] = np.where(dec2 < dec1, dec2 + CLOCK_ROLLOVER, dec2)
        hits["tot_us"] = (hits["ts_dec2"].astype(np.float64) - hits["ts_dec1"]) / CLOCK_CYCLES_PER_US
        return hits, owner

    # ------------------------------------------------------------------
    # Readouts
    # ------------------------------------------------------------------

    def _split_point(self, word: bytes) -> int | None:
        """A cut ``k`` (1..7) of a hit word that the offline rules can rejoin."""
        start = _START_BYTE
        options = []
        for k in range(1, 8):
            first, rest = word[:k], word[k:]
            if first[-1] == PADDING_BYTE or rest[0] in (IDLE_BYTE, PADDING_BYTE) or rest[-1] == IDLE_BYTE:
                continue
            if any(start[b] for b in rest):
                continue
            options.append(k)
        if not options:
            return None
        return options[int(self._rng.integers(0, len(options)))]

    def generate(self, n_readouts: int) -> SimulatedRun:
        """Generate the next ``n_readouts`` readout records and their truth.

        Consecutive calls continue the stream: readout ids and timestamps go
        on, and a hit split at the end of one call ends at the start of the
        next one.

        Parameters
        ----------
        n_readouts : int
            Number of records to produce (lost readouts not included).

        Returns
        -------
        SimulatedRun
        """
        n = int(n_readouts)
        if n < 0:
            msg = f"n_readouts must be >= 0, got {n_readouts!r}"
            raise ValueError(msg)
        plan = self._plan(n)
        chunk = _Chunk()
        records = [self._record(i, plan, chunk) for i in range(n)]
        if n:
            self._next_id = plan.ids[-1] + 1
            self._started = True
        return self._run(records, plan, chunk)

    # ------------------------------------------------------------------
    # generate(), step by step
    # ------------------------------------------------------------------

    def _ids_and_timestamps(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Ids (with the jumps of lost readouts) and timestamps of the next ``n`` readouts."""
        rng = self._rng
        jump = np.where(rng.random(n) < self.faults.skip_ids, rng.integers(1, 4, n), 0)
        if not self._started and n:
            jump[0] = 0  # nothing can be lost before the first readout
        ids = self._next_id + np.arange(n, dtype=np.int64) + np.cumsum(jump)
        if n and ids[-1] >= 2**32:
            msg = f"readout id {int(ids[-1])} does not fit in a uint32"
            raise ValueError(msg)
        period_ns = 1e9 / self.rate_hz
        timestamps = self.start_timestamp + np.rint((ids - self.start_id) * period_ns).astype(np.int64)
        return ids, jump, timestamps

    def _hit_counts(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Beam/background hits and noisy-pixel hits of each readout, before faults."""
        rng = self._rng
        if self.fixed_hits:
            counts = np.full(n, int(round(self.hits_per_readout)), dtype=np.int64)
        else:
            counts = 1 + rng.poisson(self.hits_per_readout - 1.0, n).astype(np.int64)
        if self.noisy_pixels and self.noisy_rate > 0:
            noisy = rng.poisson(self.noisy_rate, (n, len(self.noisy_pixels))).astype(np.int64)
        else:
            noisy = np.zeros((n, 0), dtype=np.int64)
        return counts, noisy

    def _plan(self, n: int) -> _Plan:
        """Every random draw of a chunk that can be made before its bytes are assembled."""
        rng = self._rng
        faults = self.faults
        ids, jump, timestamps = self._ids_and_timestamps(n)
        counts, noisy = self._hit_counts(n)
        want_split = rng.random(n) < faults.split
        # The readout after a split carries the second part of the hit: it is
        # never empty, so the offline rules find the orphan bytes there.
        after_split = np.zeros(n, dtype=bool)
        after_split[1:] = want_split[:-1]
        if n and self._pending is not None:
            after_split[0] = True
        empty = (rng.random(n) < faults.empty) & ~after_split
        counts[empty] = 0
        noisy[empty] = 0
        empty_bc = rng.integers(0, 7, n)
        oom = rng.random(n) < faults.out_of_matrix
        ff_pad = rng.random(n) < faults.ff_padding
        trailing_ff = rng.random(n) < faults.trailing_ff
        truncate = rng.random(n) < faults.truncated
        garble = rng.random(n) < faults.garbled
        trail_bc = rng.integers(2, 7, n)
        hits, owner = self._hit_fields(counts, noisy, timestamps)
        totals = np.bincount(owner, minlength=n) if n else np.zeros(0, dtype=np.int64)
        first = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(totals, out=first[1:])
        self._move_out_of_matrix(hits, first, totals, oom)
        words = encode_hits(hits)
        return _Plan(
            ids=ids.tolist(),
            timestamps=timestamps.tolist(),
            jump=jump.tolist(),
            lost=int(jump.sum()),
            hits=hits,
            first=first.tolist(),
            wire=words.tobytes(),
            inner_start=_START_BYTE[words[:, 1:]].any(axis=1).tolist(),
            gaps=rng.integers(0, 3, len(hits)).tolist(),
            want_split=want_split.tolist(),
            ff_pad=set(np.flatnonzero(ff_pad).tolist()),
            trailing_ff=set(np.flatnonzero(trailing_ff).tolist()),
            truncate=set(np.flatnonzero(truncate).tolist()),
            garble=set(np.flatnonzero(garble).tolist()),
            trail_bc=trail_bc.tolist(),
            empty=set(np.flatnonzero(empty).tolist()),
            empty_bc=empty_bc.tolist(),
        )

    def _move_out_of_matrix(self, hits: np.ndarray, first: np.ndarray, totals: np.ndarray, oom: np.ndarray) -> None:
        """Give one hit of each ``out_of_matrix`` readout a column in 16..31."""
        rng = self._rng
        oom_r = np.flatnonzero(oom & (totals > 0))
        if len(oom_r):
            pick = first[oom_r] + (rng.random(len(oom_r)) * totals[oom_r]).astype(np.int64)
            hits["column"][pick] = rng.integers(NUM_COLS, FIELD_MAX + 1, len(pick))

    def _record(self, i: int, plan: _Plan, chunk: _Chunk) -> bytes:
        """The record of readout ``i`` of the chunk; its truth goes to ``chunk``."""
        rid = plan.ids[i]
        ts = plan.timestamps[i]
        parts: list[bytes] = []
        order = self._carried_part(i, plan, chunk, parts)
        if i in plan.empty:
            parts.append(_IDLE * plan.empty_bc[i])
        else:
            self._hit_parts(i, plan, chunk, parts, order)
        if i in plan.trailing_ff:
            parts.append(_PAD * int(self._rng.integers(1, 65)))
        data = self._damaged(i, plan, chunk, b"".join(parts))
        if not data.strip(_IDLE + _PAD):
            chunk.empty.add(rid)
        return pack_record(rid, ts, data)

    def _carried_part(self, i: int, plan: _Plan, chunk: _Chunk, parts: list[bytes]) -> int:
        """Start readout ``i`` with the rest of a hit split in the readout before.

        Returns the decoding order of the readout's first own hit: 1 after a
        recovered split hit, else 0. A split hit whose next readout was lost
        is lost with it.
        """
        pending = self._pending
        if pending is None:
            return 0
        self._pending = None
        rest, row, cut_in = pending
        rid = plan.ids[i]
        if plan.jump[i] or rid != cut_in + 1:
            logger.debug("split hit cut in readout %d lost with the next readout", cut_in)
            return 0
        parts.append(rest)
        chunk.add_carried(row, rid, plan.timestamps[i])
        return 1

    def _hit_parts(self, i: int, plan: _Plan, chunk: _Chunk, parts: list[bytes], order: int) -> None:
        """The bytes of readout ``i``'s own hits, idle bytes around them, the split.

        One pass per hit, inline: this loop is where generate() spends its
        time on dense readouts (1.28 M hits/s on bench_decode's 32-hit
        stream, 2026-12-01).
        """
        rng = self._rng
        rid = plan.ids[i]
        ts = plan.timestamps[i]
        wire = plan.wire
        gaps = plan.gaps
        a, b = plan.first[i], plan.first[i + 1]
        pad_after = self._ff_pad_position(i, plan, a, b)
        parts.append(_IDLE * 2)
        for j in range(a, b):
            word = wire[HIT_SIZE * j : HIT_SIZE * j + HIT_SIZE]
            if j == b - 1:
                k = self._split_point(word) if plan.want_split[i] else None
                if k is not None:
                    parts.append(word[:k])
                    self._pending = (word[k:], plan.hits[j : j + 1].copy(), rid)
                    return
                parts.append(word)
                chunk.add(j, rid, ts, order)
                break
            parts.append(word)
            chunk.add(j, rid, ts, order)
            order += 1
            if j == pad_after:
                g = rng.integers(0, 3, 2).tolist()
                parts.append(_GAP[g[0]] + _PAD * int(rng.integers(1, 9)) + _GAP[g[1]])
            else:
                parts.append(_GAP[gaps[j]])
        parts.append(_IDLE * plan.trail_bc[i])

    def _ff_pad_position(self, i: int, plan: _Plan, a: int, b: int) -> int:
        """The hit of readout ``i`` after which a run of ``ff`` goes, or -1.

        Only after a hit none of whose bytes 1..7 is a start byte (see the
        module's notes), and never after the last hit.
        """
        if i not in plan.ff_pad or b - a < 2:
            return -1
        eligible = [j for j in range(a, b - 1) if not plan.inner_start[j]]
        if not eligible:
            return -1
        return eligible[int(self._rng.integers(0, len(eligible)))]

    def _damaged(self, i: int, plan: _Plan, chunk: _Chunk, data: bytes) -> bytes:
        """Truncate or garble readout ``i``'s data if asked; note which readouts are unreliable."""
        rid = plan.ids[i]
        truncate = i in plan.truncate
        garble = i in plan.garble
        if (truncate or garble) and data:
            data = self._damage(data, truncate, garble)
            chunk.damaged.add(rid)
            chunk.unreliable.update((rid, rid + 1))
        last = self._last_damaged_id
        if last is not None and rid == last + 1:
            chunk.unreliable.add(rid)
        self._last_damaged_id = rid if rid in chunk.damaged else None
        return data

    def _run(self, records: list[bytes], plan: _Plan, chunk: _Chunk) -> SimulatedRun:
        """The chunk's records with their ground truth."""
        truth = chunk.build_truth(plan.hits)
        if chunk.unreliable and len(truth):
            bad = np.fromiter(chunk.unreliable, dtype=np.int64, count=len(chunk.unreliable))
            truth = truth[~np.isin(truth["readout_id"].astype(np.int64), bad)]
        return SimulatedRun(
            records=records,
            readouts=[AstroPix4Readout.from_bytes(r) for r in records],
            truth=truth,
            damaged=chunk.damaged,
            unreliable=frozenset(chunk.unreliable),
            lost=plan.lost,
            num_out_of_matrix=int(np.count_nonzero(truth["column"] >= NUM_COLS)),
            num_split=chunk.num_split,
            empty=frozenset(chunk.empty),
        )

    def _damage(self, data: bytes, truncate: bool, garble: bool) -> bytes:
        rng = self._rng
        buf = bytearray(data)
        if garble:
            span = int(rng.integers(1, min(16, len(buf)) + 1))
            at = int(rng.integers(0, len(buf) - span + 1))
            buf[at : at + span] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
        if truncate:
            del buf[int(rng.integers(0, len(buf))) :]
        return bytes(buf)

    def iter_records(
        self, n_readouts: int | None = None, *, chunk_size: int = 1000, pace: bool = False
    ) -> Iterator[bytes]:
        """Yield readout records one by one, generated in chunks.

        Parameters
        ----------
        n_readouts : int, optional
            How many records to yield; endless when None.
        chunk_size : int
            Records generated per :meth:`generate` call.
        pace : bool
            Sleep so that records come out no faster than ``rate_hz``
            (wall clock), as a live board would deliver them.

        Yields
        ------
        bytes
            One readout record.
        """
        if chunk_size < 1:
            msg = f"chunk_size must be >= 1, got {chunk_size!r}"
            raise ValueError(msg)
        left = n_readouts
        t0 = time.monotonic()
        sent = 0
        period = 1.0 / self.rate_hz
        while left is None or left > 0:
            size = chunk_size if left is None else min(chunk_size, left)
            run = self.generate(size)
            for record in run.records:
                if pace:
                    delay = t0 + sent * period - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                sent += 1
                yield record
            if left is not None:
                left -= size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(seed={self.seed!r}, hits_per_readout={self.hits_per_readout}, "
            f"fixed_hits={self.fixed_hits}, chip_ids={self.chip_ids}, faults={self.faults}, "
            f"next_id={self._next_id}, rate_hz={self.rate_hz})"
        )

