"""AstroPix 4 readouts and hits: parse, serialise and decode.

The rules implemented here are those of the collaboration's offline decoder
(``astropix_analysis.fmt``), described in the project's FORMAT.md: a readout
record is a 19-byte header followed by the board bytes; the board bytes hold
8-byte hits separated by idle bytes. Two decoding paths give identical hits:

* :meth:`AstroPix4Readout.decode`, one readout at a time, returning
  :class:`AstroPix4Hit` objects (the collaboration's API);
* :func:`decode_batch` / :class:`BatchDecoder`, many records at once, returning
  one numpy structured array (:data:`HIT_DTYPE`) without a Python loop per hit.

Neither path raises on any board bytes: what cannot be decoded is flagged.
"""

from __future__ import annotations

import enum
import logging
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "HIT_DTYPE",
    "HIT_FIELDS",
    "RECORD_HEADER",
    "RECORD_HEADER_SIZE",
    "AbstractAstroPixHit",
    "AbstractAstroPixReadout",
    "AstroPix4Hit",
    "AstroPix4Readout",
    "BatchDecoder",
    "DecodingFlag",
    "MalformedReadoutError",
    "decode_batch",
    "gray_to_binary",
    "binary_to_gray",
    "reverse_bit_order",
    "uid_to_readout_class",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Byte-level constants and helpers
# --------------------------------------------------------------------------

#: The three bytes every readout record starts with.
RECORD_HEADER = b"\xfe\xdc\xba"
#: header (3) + readout_id (4) + timestamp (8) + length (4)
RECORD_HEADER_SIZE = 19
_RECORD_STRUCT = struct.Struct("<3sIQI")

IDLE_BYTE = 0xBC
PADDING_BYTE = 0xFF
HIT_SIZE = 8

#: bytes.translate table that reverses the bit order inside every byte.
_BIT_REVERSE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_BIT_REVERSE_NP = np.frombuffer(_BIT_REVERSE, dtype=np.uint8)

# Byte classes, as tuples indexed by byte value (fast in pure Python).
_IS_START = tuple(0xE0 <= b < 0xFF for b in range(256))
_IS_IDLE = tuple(b in (IDLE_BYTE, PADDING_BYTE) for b in range(256))

CLOCK_CYCLES_PER_US = 20.0
CLOCK_ROLLOVER = 2**17


def reverse_bit_order(data: bytes) -> bytes:
    """Return ``data`` with the bit order reversed inside each byte."""
    return bytes(data).translate(_BIT_REVERSE)


def gray_to_binary(gray: int) -> int:
    """Convert a Gray-coded integer to plain binary."""
    value = gray
    shift = gray >> 1
    while shift:
        value ^= shift
        shift >>= 1
    return value


def binary_to_gray(value: int) -> int:
    """Convert a plain binary integer to its Gray code (inverse of :func:`gray_to_binary`)."""
    return value ^ (value >> 1)


def _gray_table(bits: int) -> np.ndarray:
    codes = np.arange(2**bits, dtype=np.uint32)
    out = codes.copy()
    shift = codes >> 1
    while shift.any():
        out ^= shift
        shift >>= 1
    return out


#: Gray -> binary for every 17-bit timestamp (14 coarse + 3 fine bits).
_GRAY17 = _gray_table(17)
_GRAY17_LIST = _GRAY17.tolist()


class MalformedReadoutError(ValueError):
    """A readout record (FORMAT.md section 1) that cannot be parsed.

    The message says what was wrong and at which byte offset of the record;
    ``reason`` is a short machine-readable key (``"short"``, ``"header"``,
    ``"length"``) used by the listener's counters, ``offset`` the offset.
    """

    def __init__(self, message: str, *, reason: str, offset: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.offset = offset


class DecodingFlag(enum.IntFlag):
    """Per-readout decoding flags (FORMAT.md section 5), one bit each.

    ``UNKNOWN_FATAL_ERROR`` marks a readout the offline decoder could not have
    decoded normally (it would raise, or build a hit from fewer than 8 bytes);
    here such a readout keeps every hit decoded before the problem.
    ``NOT_ALL_BYTES_VISITED`` is kept for numbering compatibility; these rules
    never set it.
    """

    NONE = 0
    ORPHAN_BYTES_MATCHED = 1 << 0
    ORPHAN_BYTES_DROPPED = 1 << 1
    ORPHAN_BYTES_NOT_USED = 1 << 2
    VALID_EXTRA_BYTES = 1 << 3
    INVALID_EXTRA_BYTES = 1 << 4
    INCOMPLETE_HIT_DROPPED = 1 << 5
    NOT_ALL_BYTES_VISITED = 1 << 6
    UNKNOWN_FATAL_ERROR = 1 << 7


#: The flags in bit order, for counters and dashboards.
FLAG_NAMES = tuple(flag.name for flag in DecodingFlag if flag.value)

_MATCHED = int(DecodingFlag.ORPHAN_BYTES_MATCHED)
_DROPPED = int(DecodingFlag.ORPHAN_BYTES_DROPPED)
_NOT_USED = int(DecodingFlag.ORPHAN_BYTES_NOT_USED)
_VALID_EXTRA = int(DecodingFlag.VALID_EXTRA_BYTES)
_INVALID_EXTRA = int(DecodingFlag.INVALID_EXTRA_BYTES)
_INCOMPLETE = int(DecodingFlag.INCOMPLETE_HIT_DROPPED)
_FATAL = int(DecodingFlag.UNKNOWN_FATAL_ERROR)


def _scan(data: bytes, extra_bytes: bytes | None) -> tuple[list[bytes], int, bytes | None]:
    """Run the offline decoder's state machine over ``data``.

    Returns the 8-byte hit words in wire order (bits not yet reversed), the
    decoding flags and the extra bytes to hand to the next readout. Never
    raises; never returns a word shorter than 8 bytes.
    """
    is_start = _IS_START
    is_idle = _IS_IDLE
    n = len(data)
    words: list[bytes] = []
    flags = 0
    extra: bytes | None = None
    cursor = 0
    while cursor < n and is_idle[data[cursor]]:
        cursor += 1
    if cursor < n and not is_start[data[cursor]]:
        p = cursor + 1
        while p < n and not is_start[data[p]]:
            p += 1
        orphan = data[cursor:p].rstrip(b"\xbc")
        if extra_bytes is not None:
            joined = bytes(extra_bytes) + orphan
            if len(joined) == HIT_SIZE:
                words.append(joined)
                flags |= _MATCHED
            else:
                flags |= _DROPPED
        else:
            flags |= _NOT_USED
        if p == n:
            # The offline decoder runs off the end looking for a start byte.
            flags |= _FATAL
        cursor = p
    while True:
        while cursor < n and is_idle[data[cursor]]:
            cursor += 1
        if cursor == n:
            break
        if cursor + HIT_SIZE >= n:
            if is_start[data[cursor]]:
                extra = data[cursor:]
                flags |= _VALID_EXTRA
            else:
                flags |= _INVALID_EXTRA
            break
        if not is_start[data[cursor]]:
            cursor += 1
            while cursor < n and not is_start[data[cursor]]:
                cursor += 1
            if n - cursor < HIT_SIZE:
                # The offline decoder would build a short hit here.
                if cursor < n:
                    extra = data[cursor:]
                    flags |= _VALID_EXTRA
                flags |= _FATAL
                break
        word = data[cursor:cursor + HIT_SIZE]
        for offset in range(1, HIT_SIZE):
            if offset < len(word) and is_start[word[offset]]:
                f = cursor + HIT_SIZE
                while f < n and data[f] == IDLE_BYTE:
                    f += 1
                if f < n and not is_start[data[f]]:
                    flags |= _INCOMPLETE
                    cursor += offset
                    word = data[cursor:cursor + HIT_SIZE]
        if len(word) < HIT_SIZE:
            # Shifting over a truncated hit ran past the end of the data.
            extra = word
            flags |= _VALID_EXTRA | _FATAL
            break
        words.append(word)
        cursor += HIT_SIZE
        while cursor < n and data[cursor] == IDLE_BYTE:
            cursor += 1
    return words, flags, extra


# --------------------------------------------------------------------------
# Hits
# --------------------------------------------------------------------------

#: (name, first bit, width) of the fields packed in the 64-bit hit word,
#: bits numbered from the most significant after the per-byte bit reversal.
_AP4_LAYOUT = (
    ("chip_id", 0, 5),
    ("payload", 5, 3),
    ("row", 8, 5),
    ("column", 13, 5),
    ("ts_neg1", 18, 1),
    ("ts_coarse1", 19, 14),
    ("ts_fine1", 33, 3),
    ("ts_tdc1", 36, 5),
    ("ts_neg2", 41, 1),
    ("ts_coarse2", 42, 14),
    ("ts_fine2", 56, 3),
    ("ts_tdc2", 59, 5),
)
_AP4_SHIFTS = tuple((name, 64 - start - width, (1 << width) - 1) for name, start, width in _AP4_LAYOUT)

#: The numpy layout of one decoded hit (what :func:`decode_batch` returns).
HIT_DTYPE = np.dtype(
    [
        ("chip_id", np.uint8),
        ("payload", np.uint8),
        ("row", np.uint8),
        ("column", np.uint8),
        ("ts_neg1", np.uint8),
        ("ts_coarse1", np.uint16),
        ("ts_fine1", np.uint8),
        ("ts_tdc1", np.uint8),
        ("ts_neg2", np.uint8),
        ("ts_coarse2", np.uint16),
        ("ts_fine2", np.uint8),
        ("ts_tdc2", np.uint8),
        ("ts_dec1", np.uint32),
        ("ts_dec2", np.uint32),
        ("tot_us", np.float64),
        ("readout_id", np.uint32),
        ("timestamp", np.uint64),
        ("decoding_order", np.uint16),
    ]
)
#: Field names of a hit, in the order of :data:`HIT_DTYPE`.
HIT_FIELDS = HIT_DTYPE.names


class AbstractAstroPixHit(ABC):
    """Base class of a hit: a fixed-size group of bits sliced into fields."""

    SIZE: ClassVar[int] = 0
    ATTRIBUTE_NAMES: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def __init__(self, data: bytes, readout_id: int, timestamp: int, decoding_order: int = 0) -> None:
        ...

    def attribute_values(self, attribute_names: Sequence[str] | None = None) -> list[Any]:
        """The values of the named attributes (all of them by default)."""
        names = self.ATTRIBUTE_NAMES if attribute_names is None else attribute_names
        return [getattr(self, name) for name in names]

    def as_dict(self) -> dict[str, Any]:
        """The hit as a ``{field: value}`` dictionary."""
        return dict(zip(self.ATTRIBUTE_NAMES, self.attribute_values()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbstractAstroPixHit):
            return NotImplemented
        return type(self) is type(other) and self.attribute_values() == other.attribute_values()

    def __hash__(self) -> int:
        return hash(tuple(self.attribute_values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"{type(self).__name__}({fields})"


class AstroPix4Hit(AbstractAstroPixHit):
    """One AstroPix 4 hit.

    Parameters
    ----------
    data : bytes
        The 8 bytes of the hit *after* the per-byte bit reversal (as in the
        collaboration's class); use :meth:`from_wire` for bytes as they come
        from the board.
    readout_id, timestamp : int
        Those of the readout the hit came in.
    decoding_order : int
        Index of the hit in its readout's list of decoded hits.
    """

    SIZE = HIT_SIZE
    CLOCK_CYCLES_PER_US = CLOCK_CYCLES_PER_US
    CLOCK_ROLLOVER = CLOCK_ROLLOVER
    ATTRIBUTE_NAMES = HIT_FIELDS

    __slots__ = HIT_FIELDS

    def __init__(self, data: bytes, readout_id: int, timestamp: int, decoding_order: int = 0) -> None:
        if len(data) != HIT_SIZE:
            msg = f"an AstroPix 4 hit is {HIT_SIZE} bytes, got {len(data)}: {bytes(data).hex()}"
            raise ValueError(msg)
        word = int.from_bytes(data, "big")
        self.chip_id = word >> 59
        self.payload = (word >> 56) & 0x7
        self.row = (word >> 51) & 0x1F
        self.column = (word >> 46) & 0x1F
        self.ts_neg1 = (word >> 45) & 0x1
        self.ts_coarse1 = c1 = (word >> 31) & 0x3FFF
        self.ts_fine1 = f1 = (word >> 28) & 0x7
        self.ts_tdc1 = (word >> 23) & 0x1F
        self.ts_neg2 = (word >> 22) & 0x1
        self.ts_coarse2 = c2 = (word >> 8) & 0x3FFF
        self.ts_fine2 = f2 = (word >> 5) & 0x7
        self.ts_tdc2 = word & 0x1F
        self.ts_dec1 = d1 = _GRAY17_LIST[(c1 << 3) + f1]
        d2 = _GRAY17_LIST[(c2 << 3) + f2]
        if d2 < d1:
            d2 += CLOCK_ROLLOVER
        self.ts_dec2 = d2
        self.tot_us = (d2 - d1) / CLOCK_CYCLES_PER_US
        self.readout_id = readout_id
        self.timestamp = timestamp
        self.decoding_order = decoding_order

    @classmethod
    def from_wire(cls, word: bytes, readout_id: int = 0, timestamp: int = 0, decoding_order: int = 0) -> AstroPix4Hit:
        """Build a hit from its 8 bytes as they come from the board."""
        return cls(bytes(word).translate(_BIT_REVERSE), readout_id, timestamp, decoding_order)

    @staticmethod
    def encode(
        *,
        chip_id: int = 0,
        payload: int = 7,
        row: int,
        column: int,
        ts_neg1: int = 0,
        ts_coarse1: int,
        ts_fine1: int,
        ts_tdc1: int = 0,
        ts_neg2: int = 0,
        ts_coarse2: int,
        ts_fine2: int,
        ts_tdc2: int = 0,
    ) -> bytes:
        """Pack field values into the 8 wire bytes of a hit (inverse of decoding).

        The first wire byte is a valid start byte (``e0``..``fe``) only with
        ``payload`` 7 and ``chip_id`` 0..30: chip 31 gives ``ff`` (padding).
        """
        values = locals()
        word = 0
        for name, shift, mask in _AP4_SHIFTS:
            value = int(values[name])
            if not 0 <= value <= mask:
                msg = f"{name}={value} does not fit in its {mask.bit_length()} bits"
                raise ValueError(msg)
            word |= value << shift
        return word.to_bytes(HIT_SIZE, "big").translate(_BIT_REVERSE)

    def __reduce__(self):
        return (_hit_from_values, (type(self), self.attribute_values()))


def _hit_from_values(cls: type, values: list[Any]) -> AbstractAstroPixHit:
    hit = cls.__new__(cls)
    for name, value in zip(cls.ATTRIBUTE_NAMES, values):
        setattr(hit, name, value)
    return hit


# --------------------------------------------------------------------------
# Readouts
# --------------------------------------------------------------------------


class AbstractAstroPixReadout(ABC):
    """A buffer read from the DAQ board, with the id and time the host gave it.

    Trailing ``ff`` padding is stripped at construction. Subclasses set
    ``HIT_CLASS`` and ``_UID`` and implement :meth:`decode`.
    """

    HIT_CLASS: ClassVar[type[AbstractAstroPixHit]]
    _UID: ClassVar[int]
    PADDING_BYTE = bytes([PADDING_BYTE])
    IDLE_BYTE = bytes([IDLE_BYTE])
    HEADER = RECORD_HEADER

    def __init__(self, readout_data: bytes, readout_id: int, timestamp: int | None = None) -> None:
        self.timestamp = time.time_ns() if timestamp is None else int(timestamp)
        self.readout_id = int(readout_id)
        self._readout_data = bytes(readout_data).rstrip(b"\xff")
        self._hits: list[AbstractAstroPixHit] | None = None
        self._extra_bytes: bytes | None = None
        self._status = DecodingFlag.NONE

    @classmethod
    def uid(cls) -> int:
        """The identifier of the readout class stored in .apx headers."""
        return cls._UID

    def data(self) -> bytes:
        """The board bytes, trailing padding stripped."""
        return self._readout_data

    @classmethod
    def from_bytes(cls, record: bytes) -> AbstractAstroPixReadout:
        """Parse one readout record (FORMAT.md section 1).

        Raises
        ------
        MalformedReadoutError
            If the record is short, has a wrong header, or its length field
            does not match its size.
        """
        readout_id, timestamp, data = parse_record(record)
        return cls(data, readout_id, timestamp)

    def to_bytes(self) -> bytes:
        """The readout record: header, id, timestamp, length, data."""
        data = self._readout_data
        return _RECORD_STRUCT.pack(RECORD_HEADER, self.readout_id, self.timestamp, len(data)) + data

    @abstractmethod
    def decode(self, extra_bytes: bytes | None = None) -> list[AbstractAstroPixHit]:
        """Decode the board bytes into hits."""

    def hits(self) -> list[AbstractAstroPixHit]:
        """The hits of the last :meth:`decode` (decoding first if never done)."""
        if self._hits is None:
            self.decode()
        return list(self._hits)

    def extra_bytes(self) -> bytes | None:
        """The start of a hit cut off at the end of the readout, if any."""
        if self._hits is None:
            self.decode()
        return self._extra_bytes

    def decoding_status(self) -> DecodingFlag:
        """The decoding flags raised by the last :meth:`decode`."""
        if self._hits is None:
            self.decode()
        return self._status

    def malformed(self) -> bool:
        """True when the board bytes could not be fully decoded."""
        return bool(self.decoding_status() & DecodingFlag.UNKNOWN_FATAL_ERROR)

    def __len__(self) -> int:
        return len(self._readout_data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbstractAstroPixReadout):
            return NotImplemented
        return (type(self), self.readout_id, self.timestamp, self._readout_data) == (
            type(other),
            other.readout_id,
            other.timestamp,
            other._readout_data,
        )

    __hash__ = None  # mutable decode state: not hashable

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(readout_id={self.readout_id}, timestamp={self.timestamp}, "
            f"{len(self._readout_data)} bytes)"
        )


def parse_record(record: bytes) -> tuple[int, int, bytes]:
    """Split a readout record into ``(readout_id, timestamp, data)``.

    Raises :class:`MalformedReadoutError` naming the problem and its offset.
    """
    size = len(record)
    if size < RECORD_HEADER_SIZE:
        msg = f"readout record of {size} bytes is shorter than its {RECORD_HEADER_SIZE}-byte header (at offset {size})"
        raise MalformedReadoutError(msg, reason="short", offset=size)
    header, readout_id, timestamp, length = _RECORD_STRUCT.unpack_from(record)
    if header != RECORD_HEADER:
        msg = f"readout record starts with {bytes(header).hex()} at offset 0, expected {RECORD_HEADER.hex()}"
        raise MalformedReadoutError(msg, reason="header", offset=0)
    if length != size - RECORD_HEADER_SIZE:
        msg = (
            f"readout record length field at offset 15 says {length} data bytes, "
            f"but {size - RECORD_HEADER_SIZE} follow the header"
        )
        raise MalformedReadoutError(msg, reason="length", offset=15)
    return readout_id, timestamp, bytes(record[RECORD_HEADER_SIZE:])


class AstroPix4Readout(AbstractAstroPixReadout):
    """An AstroPix 4 readout (uid 4000)."""

    HIT_CLASS = AstroPix4Hit
    _UID = 4000

    def decode(self, extra_bytes: bytes | None = None) -> list[AstroPix4Hit]:
        """Decode the board bytes with the offline rules (FORMAT.md section 5).

        Parameters
        ----------
        extra_bytes : bytes, optional
            The previous readout's :meth:`extra_bytes`, to complete a hit split
            across the two readouts.

        Returns
        -------
        list of AstroPix4Hit
            Never raises: a readout that cannot be fully decoded keeps the hits
            found before the problem and gets ``UNKNOWN_FATAL_ERROR``.
        """
        words, flags, extra = _scan(self._readout_data, extra_bytes)
        rid = self.readout_id
        ts = self.timestamp
        rev = _BIT_REVERSE
        self._hits = [AstroPix4Hit(w.translate(rev), rid, ts, i) for i, w in enumerate(words)]
        self._extra_bytes = extra
        self._status = DecodingFlag(flags)
        return self._hits


_READOUT_CLASSES: dict[int, type[AbstractAstroPixReadout]] = {AstroPix4Readout.uid(): AstroPix4Readout}


def uid_to_readout_class(uid: int) -> type[AbstractAstroPixReadout]:
    """The readout class stored in .apx headers as ``readout_uid``."""
    try:
        return _READOUT_CLASSES[int(uid)]
    except (KeyError, TypeError, ValueError):
        msg = f"unknown readout_uid {uid!r}; known: {sorted(_READOUT_CLASSES)}"
        raise ValueError(msg) from None


# --------------------------------------------------------------------------
# Batch decoding
# --------------------------------------------------------------------------


# Byte classes for the batch decoder, one bit each.
_START_CLASS, _IDLE_CLASS, _BC_CLASS = 1, 2, 4
_BYTE_CLASS = np.array(
    [(_START_CLASS if _IS_START[b] else 0) | (_IDLE_CLASS if _IS_IDLE[b] else 0) | (_BC_CLASS if b == IDLE_BYTE else 0)
     for b in range(256)],
    dtype=np.uint8,
)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_HIGH = np.uint64(0x8080808080808080)
_TOP3 = np.uint64(0xE0E0E0E0E0E0E0E0)
_ALL1 = np.uint64(0xFFFFFFFFFFFFFFFF)
_NOT_FIRST = np.uint64(0x00FFFFFFFFFFFFFF)


def _zero_bytes(v: np.ndarray) -> np.ndarray:
    """0x80 in each byte of ``v`` that is zero, 0 elsewhere (exact, no carries)."""
    return ~(((v & _LOW7) + _LOW7) | v | _LOW7)


def _has_inner_start(w: np.ndarray) -> np.ndarray:
    """True where bytes 1..7 of a wire word (uint64, first byte most significant) hold a start byte."""
    top3 = _zero_bytes((w & _TOP3) ^ _TOP3)
    ff = _zero_bytes(w ^ _ALL1)
    return (top3 & ~ff & _NOT_FIRST & _HIGH) != 0


_SWAPS = (
    (np.uint64(1), np.uint64(0x5555555555555555)),
    (np.uint64(2), np.uint64(0x3333333333333333)),
    (np.uint64(4), np.uint64(0x0F0F0F0F0F0F0F0F)),
)


def _reverse_bits_per_byte(w: np.ndarray) -> np.ndarray:
    """Reverse the bit order inside each byte of 64-bit words (byte order kept)."""
    for shift, mask in _SWAPS:
        w = ((w >> shift) & mask) | ((w & mask) << shift)
    return w


def _words_to_hits(w: np.ndarray) -> np.ndarray:
    """Fill a HIT_DTYPE array from 64-bit hit words (bits already reversed).

    The fields are sliced from the two 32-bit halves of the word (32-bit
    arithmetic is cheaper than 64-bit here); see ``_AP4_LAYOUT``.
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
    d1 = _GRAY17[((hi << 4) | (lo >> 28)) & 0x1FFFF]
    d2 = _GRAY17[(lo >> 5) & 0x1FFFF]
    d2 += (d2 < d1) * np.uint32(CLOCK_ROLLOVER)
    out["ts_dec1"] = d1
    out["ts_dec2"] = d2
    out["tot_us"] = (d2.astype(np.float64) - d1) / CLOCK_CYCLES_PER_US
    return out


class BatchDecoder:
    """Decode readout records in batches into one :data:`HIT_DTYPE` array.

    The decoder keeps the last readout's id and extra bytes between calls, so
    a hit split across two readouts is completed whenever the second readout's
    id is the first one's + 1, also across batches. Records that cannot be
    parsed (see :func:`parse_record`) are skipped and counted.

    Readouts made only of idle bytes and well-formed hits (nearly all real
    ones) are decoded with array operations; the few others go through the
    same state machine as :meth:`AstroPix4Readout.decode`, so both paths give
    identical hits.

    Attributes
    ----------
    num_readouts, num_hits, num_recovered, num_malformed_records : int
        Running totals: readouts decoded, hits produced, split hits completed
        across two readouts, records skipped because they could not be parsed.
    flag_counts : numpy.ndarray
        How many readouts raised each :class:`DecodingFlag` bit (index = bit).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the chaining state and zero every counter."""
        self.last_id: int | None = None
        self.last_extra: bytes | None = None
        self.num_readouts = 0
        self.num_hits = 0
        self.num_recovered = 0
        self.num_malformed_records = 0
        self.flag_counts = np.zeros(8, dtype=np.int64)

    def decode(self, records: Sequence[bytes] | Iterable[bytes]) -> np.ndarray:
        """Decode a sequence of readout records; returns the hits in order."""
        if not isinstance(records, (list, tuple)):
            records = list(records)
        if not records:
            return np.zeros(0, dtype=HIT_DTYPE)
        lengths = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
        buf = np.frombuffer(b"".join(records), dtype=np.uint8)
        starts = np.zeros(len(records), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        # --- headers ---------------------------------------------------
        ok = lengths >= RECORD_HEADER_SIZE
        hs = starts[ok]
        # Unaligned little-endian views at every byte offset, read at the fields.
        u4 = np.ndarray(shape=(max(len(buf) - 3, 0),), dtype="<u4", buffer=buf, strides=(1,))
        u8 = np.ndarray(shape=(max(len(buf) - 7, 0),), dtype="<u8", buffer=buf, strides=(1,))
        good_magic = (u4[hs] & 0xFFFFFF) == 0xBADCFE  # fe dc ba
        rid = u4[hs + 3]
        tstamp = u8[hs + 7]
        dlen = u4[hs + 15].astype(np.int64)
        good = good_magic & (dlen == lengths[ok] - RECORD_HEADER_SIZE)
        sel = np.flatnonzero(ok)[good]
        bad = len(records) - len(sel)
        if bad:
            self.num_malformed_records += bad
            logger.debug("decode_batch: skipped %d malformed records", bad)
        if len(sel) == 0:
            return np.zeros(0, dtype=HIT_DTYPE)
        rid = rid[good].astype(np.int64)
        tstamp = tstamp[good]
        d0 = starts[sel] + RECORD_HEADER_SIZE  # data start
        d1 = starts[sel] + lengths[sel]  # data end (before stripping)
        nr = len(sel)
        # --- strip trailing ff: end = 1 + last non-ff byte of the data ----
        size = len(buf)
        itype = np.int32 if size < 2**31 - 16 else np.int64
        d0 = d0.astype(itype)
        d1 = d1.astype(itype)
        end = d1.copy()
        padded = np.flatnonzero((d1 > d0) & (buf[np.maximum(d1 - 1, 0)] == PADDING_BYTE))
        if len(padded):  # rare: the sender strips the padding already
            for i in padded.tolist():
                end[i] = d0[i] + len(buf[d0[i] : d1[i]].tobytes().rstrip(b"\xff"))
        # --- byte classes (with a sentinel past the end) -------------------
        ext = np.r_[buf, np.uint8(0)]
        lookup: dict[str, np.ndarray] = {}
        # Every 8 bytes from every offset as one big-endian 64-bit word (a view).
        wire = np.ndarray(shape=(max(size - HIT_SIZE + 1, 0),), dtype=">u8", buffer=buf, strides=(1,))

        def skip(pos: np.ndarray, limit: np.ndarray, bit: int) -> np.ndarray:
            """First position >= pos whose byte is not of class ``bit``, or >= limit.

            Idle runs are short: step over them with array operations, and
            search a table of positions only for the rare long ones.
            """
            key = bit
            more = ((_BYTE_CLASS[ext[pos]] & bit) != 0) & (pos < limit)
            steps = 0
            while more.any():
                if steps == 16:
                    if key not in lookup:
                        other = (_BYTE_CLASS[buf] & bit) == 0
                        lookup[key] = np.r_[np.flatnonzero(other).astype(itype), itype(size)]
                    table = lookup[key]
                    pos = pos.copy()
                    pos[more] = table[np.searchsorted(table, pos[more])]
                    return np.minimum(pos, limit)
                pos = pos + more
                more = ((_BYTE_CLASS[ext[pos]] & bit) != 0) & (pos < limit)
                steps += 1
            return pos

        # --- walk all readouts in lockstep, one hit per step ----------------
        # A readout leaves the vectorised walk ("bad") as soon as it needs a
        # branch other than "idle bytes, then a hit whose word is followed by
        # more data": orphan bytes, a tail, bytes to drop, a truncated hit.
        # Those readouts are decoded again by the reference state machine.
        bad_r = np.zeros(nr, dtype=bool)
        act = np.arange(nr)
        cur = d0.astype(itype)
        pos_parts: list[np.ndarray] = []
        r_parts: list[np.ndarray] = []
        k_parts: list[np.ndarray] = []
        step = 0
        while len(act):
            ea = end[act]
            c = skip(cur, ea, _IDLE_CLASS)
            live = c < ea
            if not live.all():
                act, c, ea = act[live], c[live], ea[live]
                if not len(act):
                    break
            leave = (c + HIT_SIZE >= ea) | ((_BYTE_CLASS[ext[c]] & _START_CLASS) == 0)
            stay = ~leave
            if leave.any():
                bad_r[act[leave]] = True
                act, c, ea = act[stay], c[stay], ea[stay]
            wv = wire[c].astype(np.uint64)
            inner = _has_inner_start(wv)
            if inner.any():
                f = skip(c + HIT_SIZE, ea, _BC_CLASS)
                trunc = inner & (f < ea) & ((_BYTE_CLASS[ext[f]] & _START_CLASS) == 0)
                if trunc.any():
                    bad_r[act[trunc]] = True
                    keep = ~trunc
                    act, c, wv = act[keep], c[keep], wv[keep]
            pos_parts.append(wv)
            r_parts.append(act)
            k_parts.append(np.full(len(act), step, dtype=np.int64))
            cur = c + HIT_SIZE
            step += 1
        if pos_parts:
            cwords = np.concatenate(pos_parts)
            cr = np.concatenate(r_parts)
            corder = np.concatenate(k_parts)
            good_hit = ~bad_r[cr]
            cwords, cr, corder = _reverse_bits_per_byte(cwords[good_hit]), cr[good_hit], corder[good_hit]
        else:
            cwords = np.zeros(0, dtype=np.uint64)
            cr = np.zeros(0, dtype=np.int64)
            corder = np.zeros(0, dtype=np.int64)
        # --- the others: the reference state machine, chained ------------
        flag_counts = self.flag_counts
        fwords: list[bytes] = []
        fr: list[int] = []
        forder: list[int] = []
        bad_list = np.flatnonzero(bad_r).tolist()
        bad_set = set(bad_list)
        extra_of_previous: bytes | None = None
        raw = buf.tobytes() if bad_list else b""
        rid_list = rid.tolist()
        for i in bad_list:
            prev_id = rid_list[i - 1] if i > 0 else self.last_id
            if i == 0:
                prev_extra = self.last_extra
            elif (i - 1) in bad_set:
                prev_extra = extra_of_previous
            else:
                prev_extra = None
            chained = prev_id is not None and rid_list[i] == prev_id + 1
            words, flags, extra = _scan(raw[d0[i] : end[i]], prev_extra if chained else None)
            extra_of_previous = extra
            for k in range(8):
                if flags >> k & 1:
                    flag_counts[k] += 1
            if flags & _MATCHED:
                self.num_recovered += 1
            fwords.extend(words)
            fr.extend([i] * len(words))
            forder.extend(range(len(words)))
        # chaining state for the next batch
        self.last_id = rid_list[-1]
        self.last_extra = extra_of_previous if (nr - 1) in bad_set else None
        # --- merge ---------------------------------------------------------
        if fwords:
            fw = _reverse_bits_per_byte(np.frombuffer(b"".join(fwords), dtype=">u8").astype(np.uint64))
            words_all = np.concatenate([cwords, fw])
            r_all = np.concatenate([cr, np.asarray(fr, dtype=np.int64)])
            o_all = np.concatenate([corder, np.asarray(forder, dtype=np.int64)])
            order = np.lexsort((o_all, r_all))
            words_all, r_all, o_all = words_all[order], r_all[order], o_all[order]
        else:
            words_all, r_all, o_all = cwords, cr, corder
            if step > 1:
                # The walk lists hits step by step; put them readout by readout
                # (a stable sort keeps each readout's hits in decoding order).
                order = np.argsort(r_all, kind="stable")
                words_all, r_all, o_all = words_all[order], r_all[order], o_all[order]
        hits = _words_to_hits(words_all)
        hits["readout_id"] = rid[r_all]
        hits["timestamp"] = tstamp[r_all]
        hits["decoding_order"] = o_all
        self.num_readouts += nr
        self.num_hits += len(hits)
        return hits


def decode_batch(records: Sequence[bytes] | Iterable[bytes]) -> np.ndarray:
    """Decode readout records (one per datagram, as received) into hits.

    Equivalent to decoding each record with :meth:`AstroPix4Readout.decode`,
    handing each readout the previous one's extra bytes when their ids are
    consecutive, and stacking the hits; records that cannot be parsed are
    skipped. See :class:`BatchDecoder` to keep the chaining state across calls.
    """
    return BatchDecoder().decode(records)


def hits_to_array(hits: Sequence[AbstractAstroPixHit]) -> np.ndarray:
    """Stack hit objects into a :data:`HIT_DTYPE` array."""
    out = np.zeros(len(hits), dtype=HIT_DTYPE)
    if hits:
        rows = [tuple(h.attribute_values(HIT_FIELDS)) for h in hits]
        out[:] = rows
    return out
