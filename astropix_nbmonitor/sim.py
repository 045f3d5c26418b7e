"""A deterministic synthetic AstroPix 4 source, with ground truth.

:class:`AstroPix4Simulator` produces readout records (FORMAT.md section 1)
whose board bytes look like those of a real AstroPix 4 board: ``bc bc``
before the first hit, a few ``bc`` idle bytes between hits, trailing ``bc``
bytes and, optionally, ``ff`` padding. Hits follow a Gaussian beam spot on
the matrix over a uniform background, plus noisy pixels; their TOT follows a
Landau-like spectrum with a long tail.

Every run comes with its ground truth: the hits a correct decoder (the
offline rules of FORMAT.md section 5, chaining extra bytes between readouts
with consecutive ids) must find. Faults can be injected on demand (see
:class:`Faults`) to exercise the difficult paths of a decoder: hits split
across two readouts, ``ff`` padding between hits, lost readouts, hits outside
the matrix, truncated or garbled readouts.

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
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
import numpy as np

from .fmt import _AP4_LAYOUT, _BIT_REVERSE_NP, _IS_START, _RECORD_STRUCT, HIT_DTYPE, RECORD_HEADER, AstroPix4Readout

__all__ = ["AstroPix4Simulator", "Faults", "SimulatedRun", "VALID_CHIP_IDS", "encode_hits"]

logger = logging.getLogger(__name__)

#: The matrix the monitor shows (rows x columns).
_NUM_ROWS = 35
_NUM_COLS = 16
#: Rows that the 5-bit row field can carry.
_ENCODABLE_ROWS = 32
_FIELD_MAX = 31

_CYCLES_PER_US = 20
_ROLLOVER = 2**17
_NS_PER_CYCLE = 50

_IDLE = 0xBC
_PAD = 0xFF
_MAX_TOT_CYCLES = _ROLLOVER - 1

#: Chip ids whose hits start with a valid start byte (payload 7).
VALID_CHIP_IDS = tuple(range(31))

_RECORD = _RECORD_STRUCT
_RECORD_MAGIC = RECORD_HEADER
# The hit layout and byte tables are the decoder's own (FORMAT.md section 4).
_LAYOUT = _AP4_LAYOUT
_FLIP_BITS = _BIT_REVERSE_NP
_START_BYTE = np.array(_IS_START, dtype=bool)

_GAP = (b"", b"\xbc", b"\xbc\xbc")


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
    for name, start, width in _LAYOUT:
        values = np.asarray(hits[name]).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= 1 << width):
            bad = values[(values < 0) | (values >= 1 << width)][0]
            msg = f"{name}={bad} does not fit in its {width} bits"
            raise ValueError(msg)
        word |= values.astype(np.uint64) << np.uint64(64 - start - width)
    raw = word.astype(">u8").view(np.uint8).reshape(-1, 8)
    return _FLIP_BITS[raw]


@dataclass(frozen=True)
class Faults:
    """Per-readout probabilities of the faults the simulator can inject.

    Attributes
    ----------
    split : float
        The readout's last hit is cut in two: the readout ends with its first
        ``k`` bytes, the next readout starts with the other ``8 - k``
        (FORMAT.md section 7, VALID_EXTRA_BYTES then ORPHAN_BYTES_MATCHED).
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
    """

    split: float = 0.0
    ff_padding: float = 0.0
    trailing_ff: float = 0.0
    truncated: float = 0.0
    garbled: float = 0.0
    skip_ids: float = 0.0
    out_of_matrix: float = 0.0

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
        The readout records (FORMAT.md section 1), in order. Ids are
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
    """

    records: list[bytes]
    readouts: list[AstroPix4Readout]
    truth: np.ndarray
    damaged: set[int] = field(default_factory=set)
    unreliable: frozenset[int] = frozenset()
    lost: int = 0
    num_out_of_matrix: int = 0
    num_split: int = 0

    @property
    def num_readouts(self) -> int:
        """Number of records in the run."""
        return len(self.records)

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


class AstroPix4Simulator:
    """A deterministic synthetic AstroPix 4 readout source.

    Parameters
    ----------
    seed : int, optional
        Seed of the random generator; the same seed gives the same bytes.
    hits_per_readout : float
        Mean number of beam and background hits per readout (Poisson), or the
        exact number with ``fixed_hits=True`` (dense readouts).
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
        if not hits_per_readout >= 0:
            msg = f"hits_per_readout must be >= 0, got {hits_per_readout!r}"
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
            if not (0 <= r < _ENCODABLE_ROWS and 0 <= c <= _FIELD_MAX):
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
        rows = rng.integers(0, _ENCODABLE_ROWS, n)
        cols = rng.integers(0, _NUM_COLS, n)
        beam = np.flatnonzero(rng.random(n) < self.beam_fraction)
        todo = beam
        for _ in range(100):
            if not len(todo):
                break
            r = np.rint(rng.normal(self.beam_center[0], self.beam_sigma[0], len(todo))).astype(np.int64)
            c = np.rint(rng.normal(self.beam_center[1], self.beam_sigma[1], len(todo))).astype(np.int64)
            inside = (r >= 0) & (r < _ENCODABLE_ROWS) & (c >= 0) & (c < _NUM_COLS)
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
        cycles = np.rint(tot * _CYCLES_PER_US)
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
        dec1 = (hit_ns // _NS_PER_CYCLE) % _ROLLOVER
        cycles = self._tot_cycles(n)
        dec2 = (dec1 + cycles) % _ROLLOVER
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
        hits["ts_dec2"] = np.where(dec2 < dec1, dec2 + _ROLLOVER, dec2)
        hits["tot_us"] = (hits["ts_dec2"].astype(np.float64) - hits["ts_dec1"]) / float(_CYCLES_PER_US)
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
            if first[-1] == _PAD or rest[0] in (_IDLE, _PAD) or rest[-1] == _IDLE:
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
        rng = self._rng
        faults = self.faults
        # --- ids and timestamps -------------------------------------------
        jump = np.where(rng.random(n) < faults.skip_ids, rng.integers(1, 4, n), 0)
        if not self._started and n:
            jump[0] = 0  # nothing can be lost before the first readout
        ids = self._next_id + np.arange(n, dtype=np.int64) + np.cumsum(jump)
        if n and ids[-1] >= 2**32:
            msg = f"readout id {int(ids[-1])} does not fit in a uint32"
            raise ValueError(msg)
        period_ns = 1e9 / self.rate_hz
        timestamps = self.start_timestamp + np.rint((ids - self.start_id) * period_ns).astype(np.int64)
        # --- how many hits, which readouts carry which fault ----------------
        if self.fixed_hits:
            counts = np.full(n, int(round(self.hits_per_readout)), dtype=np.int64)
        else:
            counts = rng.poisson(self.hits_per_readout, n).astype(np.int64)
        if self.noisy_pixels and self.noisy_rate > 0:
            noisy = rng.poisson(self.noisy_rate, (n, len(self.noisy_pixels))).astype(np.int64)
        else:
            noisy = np.zeros((n, 0), dtype=np.int64)
        want_split = rng.random(n) < faults.split
        # The readout after a split gets at least one hit of its own, so that
        # the offline rules find a start byte after the orphan bytes.
        after_split = np.zeros(n, dtype=bool)
        after_split[1:] = want_split[:-1]
        if n and self._pending is not None:
            after_split[0] = True
        counts = np.where(after_split & (counts + noisy.sum(axis=1) == 0), 1, counts)
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
        # One hit of each out-of-matrix readout gets a column in 16..31.
        oom_r = np.flatnonzero(oom & (totals > 0))
        if len(oom_r):
            pick = first[oom_r] + (rng.random(len(oom_r)) * totals[oom_r]).astype(np.int64)
            hits["column"][pick] = rng.integers(_NUM_COLS, _FIELD_MAX + 1, len(pick))
        words = encode_hits(hits)
        inner_start = _START_BYTE[words[:, 1:]].any(axis=1).tolist()
        wire = words.tobytes()
        gaps = rng.integers(0, 3, len(hits)).tolist()
        # --- assemble the records ---------------------------------------------
        ids_l = ids.tolist()
        ts_l = timestamps.tolist()
        jump_l = jump.tolist()
        first_l = first.tolist()
        want_split_l = want_split.tolist()
        ff_pad_l = np.flatnonzero(ff_pad).tolist()
        ff_pad_set = set(ff_pad_l)
        trailing_set = set(np.flatnonzero(trailing_ff).tolist())
        damage_set = set(np.flatnonzero(truncate | garble).tolist())
        trail_l = trail_bc.tolist()
        pack = _RECORD.pack
        records: list[bytes] = []
        truth_rows: list[np.ndarray] = []  # pending hits carried into this chunk
        truth_src: list[int] = []  # index into hits, or -1 - index into truth_rows
        truth_rid: list[int] = []
        truth_ts: list[int] = []
        truth_order: list[int] = []
        damaged: set[int] = set()
        unreliable: set[int] = set()
        num_split = 0
        pending = self._pending
        last_damaged = self._last_damaged_id
        for i in range(n):
            rid = ids_l[i]
            ts = ts_l[i]
            parts: list[bytes] = []
            order = 0
            if pending is not None:
                rest, row, cut_in = pending
                pending = None
                if jump_l[i] == 0 and rid == cut_in + 1:
                    parts.append(rest)
                    truth_rows.append(row)
                    truth_src.append(-len(truth_rows))
                    truth_rid.append(rid)
                    truth_ts.append(ts)
                    truth_order.append(0)
                    order = 1
                    num_split += 1
                else:
                    logger.debug("split hit cut in readout %d lost with the next readout", cut_in)
            parts.append(b"\xbc\xbc")
            a = first_l[i]
            b = first_l[i + 1]
            pad_after = -1
            if i in ff_pad_set and b - a >= 2:
                eligible = [j for j in range(a, b - 1) if not inner_start[j]]
                if eligible:
                    pad_after = eligible[int(rng.integers(0, len(eligible)))]
            for j in range(a, b):
                word = wire[8 * j : 8 * j + 8]
                if j == b - 1:
                    k = self._split_point(word) if want_split_l[i] else None
                    if k is not None:
                        parts.append(word[:k])
                        pending = (word[k:], hits[j : j + 1].copy(), rid)
                    else:
                        parts.append(word)
                        parts.append(b"\xbc" * trail_l[i])
                        self._add_truth(truth_src, truth_rid, truth_ts, truth_order, j, rid, ts, order)
                    break
                parts.append(word)
                self._add_truth(truth_src, truth_rid, truth_ts, truth_order, j, rid, ts, order)
                order += 1
                if j == pad_after:
                    g = rng.integers(0, 3, 2).tolist()
                    parts.append(_GAP[g[0]] + b"\xff" * int(rng.integers(1, 9)) + _GAP[g[1]])
                else:
                    parts.append(_GAP[gaps[j]])
            else:
                parts.append(b"\xbc" * trail_l[i])
            if i in trailing_set:
                parts.append(b"\xff" * int(rng.integers(1, 65)))
            data = b"".join(parts)
            if i in damage_set and data:
                data = self._damage(data, bool(truncate[i]), bool(garble[i]))
                damaged.add(rid)
                unreliable.update((rid, rid + 1))
            if last_damaged is not None and rid == last_damaged + 1:
                unreliable.add(rid)
            last_damaged = rid if rid in damaged else None
            records.append(pack(_RECORD_MAGIC, rid, ts, len(data)) + data)
        # --- carry state on -------------------------------------------------
        if n:
            self._next_id = ids_l[-1] + 1
            self._started = True
            self._last_damaged_id = last_damaged
            self._pending = pending
        truth = self._build_truth(hits, truth_rows, truth_src, truth_rid, truth_ts, truth_order)
        if unreliable and len(truth):
            bad = np.fromiter(unreliable, dtype=np.int64, count=len(unreliable))
            truth = truth[~np.isin(truth["readout_id"].astype(np.int64), bad)]
        readouts = [AstroPix4Readout.from_bytes(r) for r in records]
        lost = int(jump.sum())
        return SimulatedRun(
            records=records,
            readouts=readouts,
            truth=truth,
            damaged=damaged,
            unreliable=frozenset(unreliable),
            lost=lost,
            num_out_of_matrix=int(np.count_nonzero(truth["column"] >= _NUM_COLS)),
            num_split=num_split,
        )

    @staticmethod
    def _add_truth(
        src: list[int], rids: list[int], tss: list[int], orders: list[int], j: int, rid: int, ts: int, order: int
    ) -> None:
        src.append(j)
        rids.append(rid)
        tss.append(ts)
        orders.append(order)

    @staticmethod
    def _build_truth(
        hits: np.ndarray,
        carried: list[np.ndarray],
        src: list[int],
        rids: list[int],
        tss: list[int],
        orders: list[int],
    ) -> np.ndarray:
        pool = np.concatenate([hits, *carried]) if carried else hits
        idx = np.asarray(src, dtype=np.int64)
        # -1 - m refers to carried[m], stored after the chunk's own hits.
        idx = np.where(idx < 0, len(hits) + (-1 - idx), idx)
        truth = pool[idx] if len(idx) else np.zeros(0, dtype=HIT_DTYPE)
        truth["readout_id"] = rids
        truth["timestamp"] = np.asarray(tss, dtype=np.uint64)
        truth["decoding_order"] = orders
        return truth

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

