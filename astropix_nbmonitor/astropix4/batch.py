"""AstroPix 4 batch decoding: many readout records into one numpy array of hits.

:class:`BatchDecoder` gives exactly the hits of the per-readout path
(:meth:`AstroPix4Readout.decode <astropix_nbmonitor.astropix4.readout.AstroPix4Readout.decode>`,
chained between readouts with consecutive ids) without a Python loop per hit.
A batch goes through these steps:

1. :func:`_frame`: join the records into one byte buffer;
2. :func:`_parse_headers`: read every header at once, drop malformed records;
3. :func:`_data_bounds`: where each readout's data starts and ends (trailing
   ``ff`` stripped);
4. :func:`_walk`: all readouts in lockstep, one hit per step, with array
   operations, for as long as a readout holds only idle bytes and
   well-formed hits (nearly all real readouts do);
5. :meth:`BatchDecoder._rescan`: the readouts the walk gave up on, through
   the reference state machine (:func:`~astropix_nbmonitor.astropix4.readout.scan`),
   chained; their flags are counted;
6. :func:`_merge`: both sets of hit words, readout by readout;
7. :func:`_words_to_hits`: the fields of every hit, then its readout's id,
   timestamp and decoding order;
8. :meth:`BatchDecoder._count_batch`: readouts, hits, empty readouts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np

from ..fmt import ChainedDecoder
from ..record import RECORD_HEADER_SIZE, RECORD_MAGIC
from .layout import (
    CLOCK_CYCLES_PER_US,
    CLOCK_ROLLOVER,
    GRAY17,
    HIT_DTYPE,
    HIT_SIZE,
    IDLE_BYTE,
    IS_IDLE,
    IS_START,
    PADDING_BYTE,
)
from .readout import AstroPix4Readout, scan

__all__ = ["BatchDecoder", "decode_batch"]

logger = logging.getLogger(__name__)

# Byte classes for the batch decoder, one bit each.
_START_CLASS, _IDLE_CLASS, _BC_CLASS = 1, 2, 4
_BYTE_CLASS = np.array(
    [(_START_CLASS if IS_START[b] else 0) | (_IDLE_CLASS if IS_IDLE[b] else 0) | (_BC_CLASS if b == IDLE_BYTE else 0)
     for b in range(256)],
    dtype=np.uint8,
)
#: The record magic read as the low 3 bytes of a little-endian uint32.
_MAGIC_U24 = int.from_bytes(RECORD_MAGIC, "little")
_PADDING_BYTES = bytes([PADDING_BYTE])
#: After this many one-byte steps over an idle run, jump with a table instead.
_SHORT_RUN = 16

_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_TOP3 = np.uint64(0xE0E0E0E0E0E0E0E0)
_ALL1 = np.uint64(0xFFFFFFFFFFFFFFFF)
_NOT_FIRST = np.uint64(0x00FFFFFFFFFFFFFF)
_SWAPS = (
    (np.uint64(1), np.uint64(0x5555555555555555)),
    (np.uint64(2), np.uint64(0x3333333333333333)),
    (np.uint64(4), np.uint64(0x0F0F0F0F0F0F0F0F)),
)


# --------------------------------------------------------------------------
# Word helpers
# --------------------------------------------------------------------------


def _zero_bytes(v: np.ndarray) -> np.ndarray:
    """0x80 in each byte of ``v`` that is zero, 0 elsewhere (exact, no carries)."""
    return ~(((v & _LOW7) + _LOW7) | v | _LOW7)


def _has_inner_start(w: np.ndarray) -> np.ndarray:
    """True where bytes 1..7 of a wire word (uint64, first byte most significant) hold a start byte."""
    top3 = _zero_bytes((w & _TOP3) ^ _TOP3)
    ff = _zero_bytes(w ^ _ALL1)
    return (top3 & ~ff & _NOT_FIRST & _HIGH) != 0


def _reverse_bits_per_byte(w: np.ndarray) -> np.ndarray:
    """Reverse the bit order inside each byte of 64-bit words (byte order kept)."""
    for shift, mask in _SWAPS:
        w = ((w >> shift) & mask) | ((w & mask) << shift)
    return w


def _words_to_hits(w: np.ndarray) -> np.ndarray:
    """Fill a HIT_DTYPE array from 64-bit hit words (bits already reversed).

    The fields are sliced from the two 32-bit halves of the word (32-bit
    arithmetic is cheaper than 64-bit here): the shifts and masks are those
    of ``layout.HIT_LAYOUT``, written out. readout_id, timestamp and
    decoding_order are left for the caller.
    """
    n = len(w)
    out = np.empty(n, dtype=HIT_DTYPE)  # every field is written below or by the caller
    if n == 0:
        return out
    hi = (w >> np.uint64(32)).astype(np.uint32)
    lo = w.astype(np.uint32)
    out["chip_id"] = hi >> 27
    out["payload"] = (hi >> 24) & 0x7
    out["row"] = (hi >> 19) & 0x1F
    out["column"] = (hi >> 14) & 0x1F
    out["ts_neg1"] = (hi >> 13) & 0x1
    out["ts_coarse1"] = ((hi << 1) | (lo >> 31)) & 0x3FFF
    out["ts_fine1"] = (lo >> 28) & 0x7
    out["ts_tdc1"] = (lo >> 23) & 0x1F
    out["ts_neg2"] = (lo >> 22) & 0x1
    out["ts_coarse2"] = (lo >> 8) & 0x3FFF
    out["ts_fine2"] = (lo >> 5) & 0x7
    out["ts_tdc2"] = lo & 0x1F
    # (coarse << 3) + fine is the 17 bits just above each 5-bit tdc field.
    d1 = GRAY17[((hi << 4) | (lo >> 28)) & 0x1FFFF]
    d2 = GRAY17[(lo >> 5) & 0x1FFFF]
    d2 += (d2 < d1) * np.uint32(CLOCK_ROLLOVER)
    out["ts_dec1"] = d1
    out["ts_dec2"] = d2
    out["tot_us"] = (d2.astype(np.float64) - d1) / CLOCK_CYCLES_PER_US
    return out


# --------------------------------------------------------------------------
# The steps of a batch
# --------------------------------------------------------------------------


class _Frames(NamedTuple):
    """The well-formed records of a batch, located in one byte buffer."""

    buf: np.ndarray  # every record, back to back (uint8)
    rid: np.ndarray  # readout ids (int64), one per well-formed record
    tstamp: np.ndarray  # their timestamps (uint64)
    d0: np.ndarray  # where each readout's data starts in buf
    end: np.ndarray  # where it ends, trailing ff stripped


class _Words(NamedTuple):
    """Hit words (uint64, bits reversed) with their readout index and decoding order."""

    words: np.ndarray
    readout: np.ndarray
    order: np.ndarray


def _empty_words() -> _Words:
    return _Words(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def _frame(records: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join the records: the buffer, each record's start in it, and its length."""
    lengths = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
    buf = np.frombuffer(b"".join(records), dtype=np.uint8)
    starts = np.zeros(len(records), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return buf, starts, lengths


def _parse_headers(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read every record header at once.

    Returns the indices of the well-formed records (right magic, length field
    equal to the data that follows), their ids and their timestamps.
    """
    ok = lengths >= RECORD_HEADER_SIZE
    hs = starts[ok]
    # Unaligned little-endian views at every byte offset, read at the fields.
    u4 = np.ndarray(shape=(max(len(buf) - 3, 0),), dtype="<u4", buffer=buf, strides=(1,))
    u8 = np.ndarray(shape=(max(len(buf) - 7, 0),), dtype="<u8", buffer=buf, strides=(1,))
    good_magic = (u4[hs] & 0xFFFFFF) == _MAGIC_U24
    rid = u4[hs + 3]
    tstamp = u8[hs + 7]
    dlen = u4[hs + 15].astype(np.int64)
    good = good_magic & (dlen == lengths[ok] - RECORD_HEADER_SIZE)
    sel = np.flatnonzero(ok)[good]
    return sel, rid[good].astype(np.int64), tstamp[good]


def _data_bounds(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, sel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (trailing ``ff`` stripped) of the data of the selected records.

    Positions are int32 when the buffer allows it (cheaper to index with).
    """
    itype = np.int32 if len(buf) < 2**31 - 16 else np.int64
    d0 = (starts[sel] + RECORD_HEADER_SIZE).astype(itype)
    d1 = (starts[sel] + lengths[sel]).astype(itype)
    end = d1.copy()
    padded = np.flatnonzero((d1 > d0) & (buf[np.maximum(d1 - 1, 0)] == PADDING_BYTE))
    for i in padded.tolist():  # rare: the sender strips the padding already
        end[i] = d0[i] + len(buf[d0[i] : d1[i]].tobytes().rstrip(_PADDING_BYTES))
    return d0, end


class _Skipper:
    """Step positions over runs of one byte class, many positions at once."""

    def __init__(self, buf: np.ndarray, itype: type) -> None:
        self.buf = buf
        self.ext = np.r_[buf, np.uint8(0)]  # a sentinel past the end
        self.itype = itype
        self.tables: dict[int, np.ndarray] = {}

    def skip(self, pos: np.ndarray, limit: np.ndarray, bit: int) -> np.ndarray:
        """First position >= pos whose byte is not of class ``bit``, or >= limit.

        Idle runs are short: step over them with array operations, and
        search a table of positions only for the rare long ones.
        """
        ext = self.ext
        more = ((_BYTE_CLASS[ext[pos]] & bit) != 0) & (pos < limit)
        steps = 0
        while more.any():
            if steps == _SHORT_RUN:
                table = self._table(bit)
                pos = pos.copy()
                pos[more] = table[np.searchsorted(table, pos[more])]
                return np.minimum(pos, limit)
            pos = pos + more
            more = ((_BYTE_CLASS[ext[pos]] & bit) != 0) & (pos < limit)
            steps += 1
        return pos

    def _table(self, bit: int) -> np.ndarray:
        """Sorted positions of the bytes not of class ``bit``, then the buffer size."""
        if bit not in self.tables:
            other = (_BYTE_CLASS[self.buf] & bit) == 0
            self.tables[bit] = np.r_[np.flatnonzero(other).astype(self.itype), self.itype(len(self.buf))]
        return self.tables[bit]


def _walk(frames: _Frames) -> tuple[_Words, np.ndarray, int]:
    """Walk all readouts in lockstep, one hit per step.

    A readout leaves the walk (is marked in the returned ``bad`` mask) as
    soon as it needs a branch other than "idle bytes, then a hit whose word
    is followed by more data": orphan bytes, a tail, bytes to drop, a
    truncated hit. None of the hits of such a readout is kept here: the
    caller decodes it again with the reference state machine.

    Returns the hit words of the other readouts (in walk order: step by
    step), the ``bad`` mask and the number of steps.

    The loop is one step per hit *position*, not per hit, over arrays of all
    the readouts still walking; it stays inline (each iteration is already a
    handful of array operations).
    """
    buf, _, _, d0, end = frames
    skipper = _Skipper(buf, d0.dtype.type)
    ext = skipper.ext
    # Every 8 bytes from every offset as one big-endian 64-bit word (a view).
    wire = np.ndarray(shape=(max(len(buf) - HIT_SIZE + 1, 0),), dtype=">u8", buffer=buf, strides=(1,))
    nr = len(d0)
    bad = np.zeros(nr, dtype=bool)
    act = np.arange(nr)
    cur = d0
    word_parts: list[np.ndarray] = []
    readout_parts: list[np.ndarray] = []
    order_parts: list[np.ndarray] = []
    step = 0
    while len(act):
        ea = end[act]
        c = skipper.skip(cur, ea, _IDLE_CLASS)
        live = c < ea
        if not live.all():
            act, c, ea = act[live], c[live], ea[live]
            if not len(act):
                break
        leave = (c + HIT_SIZE >= ea) | ((_BYTE_CLASS[ext[c]] & _START_CLASS) == 0)
        if leave.any():
            bad[act[leave]] = True
            stay = ~leave
            act, c, ea = act[stay], c[stay], ea[stay]
        wv = wire[c].astype(np.uint64)
        inner = _has_inner_start(wv)
        if inner.any():
            f = skipper.skip(c + HIT_SIZE, ea, _BC_CLASS)
            trunc = inner & (f < ea) & ((_BYTE_CLASS[ext[f]] & _START_CLASS) == 0)
            if trunc.any():
                bad[act[trunc]] = True
                keep = ~trunc
                act, c, wv = act[keep], c[keep], wv[keep]
        word_parts.append(wv)
        readout_parts.append(act)
        order_parts.append(np.full(len(act), step, dtype=np.int64))
        cur = c + HIT_SIZE
        step += 1
    if not word_parts:
        return _empty_words(), bad, step
    cr = np.concatenate(readout_parts)
    good = ~bad[cr]
    words = _reverse_bits_per_byte(np.concatenate(word_parts)[good])
    return _Words(words, cr[good], np.concatenate(order_parts)[good]), bad, step


def _merge(walked: _Words, rescanned: _Words, steps: int) -> _Words:
    """All hit words readout by readout, each readout's in decoding order."""
    if len(rescanned.words):
        words = np.concatenate([walked.words, rescanned.words])
        readout = np.concatenate([walked.readout, rescanned.readout])
        order = np.concatenate([walked.order, rescanned.order])
        idx = np.lexsort((order, readout))
        return _Words(words[idx], readout[idx], order[idx])
    if steps > 1:
        # The walk lists hits step by step; put them readout by readout
        # (a stable sort keeps each readout's hits in decoding order).
        idx = np.argsort(walked.readout, kind="stable")
        return _Words(walked.words[idx], walked.readout[idx], walked.order[idx])
    return walked


# --------------------------------------------------------------------------
# The decoder
# --------------------------------------------------------------------------


class BatchDecoder(ChainedDecoder):
    """Decode AstroPix 4 readout records in batches into one :data:`HIT_DTYPE` array.

    The decoder keeps the last readout's id and extra bytes between calls, so
    a hit split across two readouts is completed whenever the second readout's
    id is the first one's + 1, also across batches and across calls of
    :meth:`decode` and :meth:`~ChainedDecoder.decode_readout` (inherited: one
    readout object at a time, hit objects). Records that cannot be parsed
    (see :func:`~astropix_nbmonitor.record.parse_record`) are skipped and
    counted.

    Readouts made only of idle bytes and well-formed hits (nearly all real
    ones) are decoded with array operations; the few others go through the
    same state machine as :meth:`AstroPix4Readout.decode`, so both paths give
    identical hits and counters.

    Parameters
    ----------
    readout_class : type
        :class:`AstroPix4Readout` or a subclass: what
        :meth:`~ChainedDecoder.decode_readout` expects (the batch path always
        applies the AstroPix 4 rules).

    Attributes
    ----------
    num_readouts, num_hits, num_recovered, num_empty, num_malformed : int
        Running totals: readouts decoded, hits produced, split hits completed
        across two readouts, readouts with no hit and no flag, records skipped
        because they could not be parsed (see :class:`ChainedDecoder`).
    flag_counts : numpy.ndarray
        How many readouts raised each :class:`DecodingFlag` bit (index = bit).
    last_id, last_extra
        The chaining state: the last readout's id and extra bytes.
    """

    #: Batches of at most this many readouts skip the array walk and go
    #: through the reference state machine alone (step 5 for every readout):
    #: the same hits and counters, at a quarter of the walk's fixed cost for a
    #: few readouts (the monitor's batches at a low rate). Measured crossover
    #: about 70 readouts, for 1-hit and 32-hit readouts alike.
    SMALL_BATCH = 48

    def __init__(self, readout_class: type[AstroPix4Readout] = AstroPix4Readout) -> None:
        super().__init__(readout_class)

    def decode(self, records: Sequence[bytes] | Iterable[bytes]) -> np.ndarray:
        """Decode a sequence of readout records; returns the hits in order."""
        if not isinstance(records, (list, tuple)):
            records = list(records)
        frames = self._frames(records)
        if frames is None:
            return np.zeros(0, dtype=HIT_DTYPE)
        if len(frames.rid) > self.SMALL_BATCH:
            walked, bad, steps = _walk(frames)
        else:  # a few readouts: the state machine alone is cheaper than the walk's fixed cost
            walked, bad, steps = _empty_words(), np.ones(len(frames.rid), dtype=bool), 0
        rescanned, flagged = self._rescan(frames, bad)
        merged = _merge(walked, rescanned, steps)
        hits = _words_to_hits(merged.words)
        hits["readout_id"] = frames.rid[merged.readout]
        hits["timestamp"] = frames.tstamp[merged.readout]
        hits["decoding_order"] = merged.order
        self._count_batch(len(frames.rid), merged.readout, flagged)
        return hits

    def _frames(self, records: Sequence[bytes]) -> _Frames | None:
        """Steps 1-3: the well-formed records located in one buffer (None if none)."""
        if not records:
            return None
        buf, starts, lengths = _frame(records)
        sel, rid, tstamp = _parse_headers(buf, starts, lengths)
        bad = len(records) - len(sel)
        if bad:
            self.num_malformed += bad
            logger.debug("decode_batch: skipped %d malformed records", bad)
        if not len(sel):
            return None
        d0, end = _data_bounds(buf, starts, lengths, sel)
        return _Frames(buf, rid, tstamp, d0, end)

    def _rescan(self, frames: _Frames, bad: np.ndarray) -> tuple[_Words, np.ndarray]:
        """Step 5: the readouts the walk left, through the reference state machine.

        Each is chained with the readout before it (the previous batch's last
        readout for the first one); their flags and recovered hits are
        counted, and the chaining state is carried to the next batch.
        Returns their hit words and the indices of the readouts that raised
        a flag.
        """
        bad_list = np.flatnonzero(bad).tolist()
        rid_list = frames.rid.tolist()
        nr = len(rid_list)
        words: list[bytes] = []
        readout: list[int] = []
        order: list[int] = []
        flagged: list[int] = []
        extra: bytes | None = None  # of the last rescanned readout
        previous = -2  # index of the last rescanned readout
        raw = frames.buf.tobytes() if bad_list else b""
        d0, end = frames.d0, frames.end
        for i in bad_list:
            prev_id = rid_list[i - 1] if i > 0 else self.last_id
            if i == 0:
                prev_extra = self.last_extra
            else:
                prev_extra = extra if previous == i - 1 else None  # a walked readout has no extra bytes
            chained = prev_id is not None and rid_list[i] == prev_id + 1
            found, flags, extra = scan(raw[d0[i] : end[i]], prev_extra if chained else None)
            previous = i
            if flags:
                self._count_flags(flags)
                flagged.append(i)
            words.extend(found)
            readout.extend([i] * len(found))
            order.extend(range(len(found)))
        self.last_id = rid_list[-1]
        self.last_extra = extra if previous == nr - 1 else None
        if not words:
            return _empty_words(), np.asarray(flagged, dtype=np.int64)
        w = _reverse_bits_per_byte(np.frombuffer(b"".join(words), dtype=">u8").astype(np.uint64))
        rescanned = _Words(w, np.asarray(readout, dtype=np.int64), np.asarray(order, dtype=np.int64))
        return rescanned, np.asarray(flagged, dtype=np.int64)

    def _count_batch(self, num_readouts: int, hit_readout: np.ndarray, flagged: np.ndarray) -> None:
        """Step 8: count the batch's readouts, hits and empty readouts.

        A readout is empty when it gave no hit and raised no flag, exactly as
        on the per-readout path (:meth:`ChainedDecoder._count_readout`).
        """
        has_hits = np.zeros(num_readouts, dtype=bool)
        has_hits[hit_readout] = True
        has_hits[flagged] = True
        self.num_readouts += num_readouts
        self.num_hits += len(hit_readout)
        self.num_empty += num_readouts - int(np.count_nonzero(has_hits))


def decode_batch(records: Sequence[bytes] | Iterable[bytes]) -> np.ndarray:
    """Decode readout records (one per datagram, as received) into hits.

    Equivalent to decoding each record with :meth:`AstroPix4Readout.decode`,
    handing each readout the previous one's extra bytes when their ids are
    consecutive, and stacking the hits; records that cannot be parsed are
    skipped. See :class:`BatchDecoder` to keep the chaining state across calls.
    """
    return BatchDecoder().decode(records)
