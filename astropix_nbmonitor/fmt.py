"""AstroPix readouts and hits: the chip-agnostic bases, flags and decoders.

The rules are those of the collaboration's offline decoder
(``astropix_analysis.fmt``), described in the project's docs/format.md: a
readout record is a 19-byte header followed by the board bytes (the framing
lives in :mod:`astropix_nbmonitor.record`); the board bytes hold hits
separated by idle bytes.

This module holds what does not depend on a chip:

* :class:`AbstractAstroPixHit` and :class:`AbstractAstroPixReadout`, the
  collaboration's base classes;
* :class:`DecodingFlag` and :data:`FLAG_NAMES`;
* :class:`ChainedDecoder`, which decodes any readout class one readout at a
  time, completing hits split across readouts with consecutive ids, and
  :func:`decoder_for`, which picks the fastest decoder for a readout class.

Everything that knows the AstroPix 4 bit layout is in
:mod:`astropix_nbmonitor.astropix4`; its names (:class:`AstroPix4Readout`,
:class:`BatchDecoder`, :data:`HIT_DTYPE`...) are re-exported here, so
``from astropix_nbmonitor.fmt import AstroPix4Readout`` keeps working.
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

from .record import (
    RECORD_HEADER,
    RECORD_HEADER_SIZE,
    RECORD_PADDING,
    RECORD_STRUCT,
    MalformedReadoutError,
    pack_record,
    parse_record,
)

__all__ = [
    "COLLABORATION_HIT_ORDER",
    "FLAG_NAMES",
    "HIT_DTYPE",
    "HIT_FIELDS",
    "NUM_FLAGS",
    "RECORD_HEADER",
    "RECORD_HEADER_SIZE",
    "AbstractAstroPixHit",
    "AbstractAstroPixReadout",
    "AstroPix4Hit",
    "AstroPix4Readout",
    "BatchDecoder",
    "ChainedDecoder",
    "DecodingFlag",
    "MalformedReadoutError",
    "binary_to_gray",
    "decode_batch",
    "decoder_for",
    "gray_to_binary",
    "hits_to_array",
    "parse_record",
    "reverse_bit_order",
    "uid_to_readout_class",
]

logger = logging.getLogger(__name__)

#: Kept for the benchmarks and older callers: the record struct of :mod:`~astropix_nbmonitor.record`.
_RECORD_STRUCT = RECORD_STRUCT


# --------------------------------------------------------------------------
# Gray code
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Decoding flags
# --------------------------------------------------------------------------


class DecodingFlag(enum.IntFlag):
    """Per-readout decoding flags (docs/format.md section 5), one bit each.

    ``UNKNOWN_FATAL_ERROR`` marks a readout the offline decoder could not have
    decoded normally (it would raise, or build a hit from fewer than 8 bytes);
    here such a readout keeps every hit decoded before the problem.
    ``NOT_ALL_BYTES_VISITED`` is kept for numbering compatibility; these rules
    never set it. An empty readout (docs/format.md section 9) raises none.
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
#: Number of flag bits (the length of a decoder's ``flag_counts``).
NUM_FLAGS = len(FLAG_NAMES)

_MATCHED = int(DecodingFlag.ORPHAN_BYTES_MATCHED)


# --------------------------------------------------------------------------
# Hits
# --------------------------------------------------------------------------


class AbstractAstroPixHit(ABC):
    """Base class of a hit: a fixed-size group of bits sliced into fields.

    As in the collaboration's ``astropix_analysis.fmt``: ``ATTRIBUTE_NAMES``
    in the collaboration's order, :meth:`attribute_values`, :meth:`dict`
    (with ``raw_data``), and two hits are equal when their bytes are equal
    (:attr:`raw_data`; the readout id, timestamp and decoding order, which are
    not in the bytes, do not count).

    A subclass sets ``SIZE``, ``ATTRIBUTE_NAMES`` and ``BIT_FIELDS``, the
    ``(name, right shift, mask)`` of every field cut from the hit's bits, from
    which :attr:`raw_data` is rebuilt. A subclass without ``BIT_FIELDS`` is
    compared on all its attribute values.
    """

    SIZE: ClassVar[int] = 0
    ATTRIBUTE_NAMES: ClassVar[tuple[str, ...]] = ()
    BIT_FIELDS: ClassVar[tuple[tuple[str, int, int], ...]] = ()

    @abstractmethod
    def __init__(self, data: bytes, readout_id: int, timestamp: int, decoding_order: int = 0) -> None:
        ...

    @staticmethod
    def gray_to_decimal(gray: int) -> int:
        """Convert a Gray-coded integer to plain binary (the collaboration's name)."""
        return gray_to_binary(gray)

    def attribute_values(self, attribute_names: Sequence[str] | None = None) -> list[Any]:
        """The values of the named attributes (all of them by default)."""
        names = self.ATTRIBUTE_NAMES if attribute_names is None else attribute_names
        return [getattr(self, name) for name in names]

    def as_dict(self) -> dict[str, Any]:
        """The hit as a ``{field: value}`` dictionary, in ``ATTRIBUTE_NAMES`` order."""
        return dict(zip(self.ATTRIBUTE_NAMES, self.attribute_values()))

    def dict(self) -> dict[str, Any]:
        """The collaboration's ``dict()``: :meth:`as_dict` plus ``raw_data`` (the hit's bytes)."""
        out = self.as_dict()
        out["raw_data"] = self.raw_data
        return out

    @property
    def raw_data(self) -> bytes:
        """The hit's ``SIZE`` bytes as its constructor takes them (after the per-byte bit reversal)."""
        word = 0
        for name, shift, _mask in self.BIT_FIELDS:
            word |= int(getattr(self, name)) << shift
        return word.to_bytes(self.SIZE, "big")

    def hex(self) -> str:
        """:attr:`raw_data` as hex digits."""
        return self.raw_data.hex()

    def _identity(self) -> tuple[Any, ...]:
        """What equality compares: the bytes, or every attribute for a class without ``BIT_FIELDS``."""
        if self.BIT_FIELDS:
            return (self.raw_data,)
        return tuple(self.attribute_values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AbstractAstroPixHit):
            return NotImplemented
        return type(self) is type(other) and self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __str__(self) -> str:
        fields = ", ".join(f"{key} = {value}" for key, value in self.dict().items())
        return f"{type(self).__name__}({fields})"

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self.as_dict().items())
        return f"{type(self).__name__}({fields})"


def _hit_from_values(cls: type, values: list[Any]) -> AbstractAstroPixHit:
    """Rebuild a hit from its attribute values (the target of ``__reduce__``)."""
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
    PADDING_BYTE = RECORD_PADDING
    HEADER = RECORD_HEADER

    def __init__(self, readout_data: bytes, readout_id: int, timestamp: int | None = None) -> None:
        self.timestamp = time.time_ns() if timestamp is None else int(timestamp)
        self.readout_id = int(readout_id)
        self._readout_data = bytes(readout_data).rstrip(RECORD_PADDING)
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
        """Parse one readout record (docs/format.md section 1).

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
        return pack_record(self.readout_id, self.timestamp, self._readout_data)

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

    def decoded(self) -> bool:
        """True once :meth:`decode` was called."""
        return self._hits is not None

    def hex(self) -> str:
        """The board bytes as hex digits (two per byte)."""
        return self._readout_data.hex()

    def pretty_print(self, hits: bool = True) -> str:
        """The readout, its bytes, its hits (one line each) and its decoding flags, as text."""
        lines = [str(self), f"Raw: {self._readout_data!r}", f"Hex: {self.hex()}", ""]
        if hits:
            lines.extend(str(hit) for hit in self.hits())
            lines.append("")
        status = self.decoding_status()
        lines.append(f"Decoding flags: {status.name if status else 'none'}")
        return "\n".join(lines)

    def write(self, output_file: Any) -> None:
        """Write the readout's record to an open .apx writer or binary file.

        An :class:`~astropix_nbmonitor.fileio.ApxWriter` (what ``apx_open(path,
        "wb", header)`` returns) gets it through ``write_record``; any other
        object with ``write(bytes)`` gets the record's bytes.
        """
        record = self.to_bytes()
        write_record = getattr(output_file, "write_record", None)
        if write_record is not None:
            write_record(record)
        else:
            output_file.write(record)

    @classmethod
    def from_file(cls, input_file: Any) -> AbstractAstroPixReadout | None:
        """Read the next record from a binary file positioned on one; None at the end.

        A record cut by the end of the file is not a readout: None is
        returned (and logged).

        Raises
        ------
        MalformedReadoutError
            If the bytes there do not start a record.
        """
        head = input_file.read(RECORD_HEADER_SIZE)
        if len(head) < RECORD_HEADER_SIZE:
            if head:
                logger.warning("file ends inside a record header (%d bytes)", len(head))
            return None
        length = RECORD_STRUCT.unpack_from(head)[3] if head[:3] == RECORD_HEADER else 0
        record = head + input_file.read(length)
        if len(record) < RECORD_HEADER_SIZE + length:
            logger.warning("file ends inside a record (%d of %d bytes)", len(record), RECORD_HEADER_SIZE + length)
            return None
        return cls.from_bytes(record)

    def __str__(self) -> str:
        return (
            f"{type(self).__name__}({len(self._readout_data)} bytes, "
            f"readout_id = {self.readout_id}, timestamp = {self.timestamp} ns)"
        )

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


# --------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------


class ChainedDecoder:
    """Decode readouts of any class one at a time, chaining split hits.

    A readout is handed the previous readout's extra bytes when its id is the
    previous id + 1, whether the previous readout was decoded by
    :meth:`decode` or by :meth:`decode_readout`, so a hit split across two
    readouts is completed (docs/format.md section 5). The decoder is
    duck-typed: it uses only ``readout_class.from_bytes(record)`` and, of each
    readout, ``readout_id``, ``decode(extra_bytes)``, ``extra_bytes()`` and
    ``decoding_status()``, so it also decodes the collaboration's own
    ``astropix_analysis`` readout classes.

    Parameters
    ----------
    readout_class : type
        The class that parses the records given to :meth:`decode`.

    Attributes
    ----------
    readout_class : type
        As given.
    num_readouts, num_hits : int
        Readouts decoded and hits they gave.
    num_recovered : int
        Split hits completed across two readouts (readouts that raised
        ORPHAN_BYTES_MATCHED).
    num_empty : int
        Readouts that gave no hit and raised no flag: their data was empty or
        only idle and padding bytes (docs/format.md section 9).
    num_malformed : int
        Records :meth:`decode` skipped because they could not be parsed.
    flag_counts : numpy.ndarray
        ``NUM_FLAGS`` int64 counts: how many readouts raised each
        :class:`DecodingFlag` (index = flag bit).
    last_id : int or None
        Id of the last readout decoded (None after :meth:`reset`).
    last_extra : bytes or None
        That readout's extra bytes, handed to the next one if its id follows.
    """

    def __init__(self, readout_class: type) -> None:
        self.readout_class = readout_class
        self.reset()

    def reset(self) -> None:
        """Forget the chaining state and zero every counter."""
        self.last_id: int | None = None
        self.last_extra: bytes | None = None
        self.num_readouts = 0
        self.num_hits = 0
        self.num_recovered = 0
        self.num_empty = 0
        self.num_malformed = 0
        self.flag_counts = np.zeros(NUM_FLAGS, dtype=np.int64)

    @property
    def num_malformed_records(self) -> int:
        """The former name of :attr:`num_malformed`."""
        return self.num_malformed

    def flag_dict(self) -> dict[str, int]:
        """``{flag name: readouts that raised it}``, in :data:`FLAG_NAMES` order."""
        return {name: int(n) for name, n in zip(FLAG_NAMES, self.flag_counts)}

    def decode(self, records: Sequence[bytes] | Iterable[bytes]) -> list[Any]:
        """Decode readout records in order; returns the hit objects of all of them.

        Records that ``readout_class.from_bytes`` refuses (``ValueError``,
        which :class:`MalformedReadoutError` is, or ``struct.error``) are
        skipped and counted in :attr:`num_malformed`; they do not break the
        chaining of the readouts around them.
        """
        hits: list[Any] = []
        for record in records:
            readout = self._parse(record)
            if readout is not None:
                hits.extend(self.decode_readout(readout))
        return hits

    def decode_readout(self, readout: Any) -> list[Any]:
        """Decode one readout object, chained with the previous readout; count it.

        Returns
        -------
        list
            The readout's hits, as its ``decode`` returns them.
        """
        readout_id = readout.readout_id
        last = self.last_id
        chained = last is not None and readout_id == last + 1
        hits = readout.decode(self.last_extra if chained else None)
        self._count_readout(int(readout.decoding_status()), len(hits))
        self.last_id = readout_id
        self.last_extra = readout.extra_bytes()
        return hits

    def _parse(self, record: bytes) -> Any:
        """The readout of ``record``, or None (counted) if it cannot be parsed."""
        try:
            return self.readout_class.from_bytes(record)
        except (ValueError, struct.error) as exc:
            self.num_malformed += 1
            logger.debug("skipped a malformed record: %s", exc)
            return None

    def _count_readout(self, flags: int, num_hits: int) -> None:
        """Count one decoded readout: its hits, its flags, recovered or empty."""
        self.num_readouts += 1
        self.num_hits += num_hits
        if flags:
            self._count_flags(flags)
        elif not num_hits:
            self.num_empty += 1

    def _count_flags(self, flags: int) -> None:
        """Add one readout's flag bits to :attr:`flag_counts` (and recovered hits)."""
        counts = self.flag_counts
        for bit in range(NUM_FLAGS):
            if flags >> bit & 1:
                counts[bit] += 1
        if flags & _MATCHED:
            self.num_recovered += 1

    def __repr__(self) -> str:
        name = getattr(self.readout_class, "__name__", repr(self.readout_class))
        return (
            f"{type(self).__name__}({name}, {self.num_readouts} readouts, {self.num_hits} hits, "
            f"{self.num_empty} empty, {self.num_malformed} malformed)"
        )


def decoder_for(readout_class: type) -> ChainedDecoder:
    """A new decoder for the records of ``readout_class``.

    A :class:`BatchDecoder` (array operations, a numpy array of hits) for
    :class:`AstroPix4Readout` and its subclasses; a :class:`ChainedDecoder`
    (one readout at a time, a list of hit objects) for any other class. Both
    have the same counters and the same :meth:`~ChainedDecoder.decode_readout`.
    """
    if isinstance(readout_class, type) and issubclass(readout_class, AstroPix4Readout):
        return BatchDecoder(readout_class)
    return ChainedDecoder(readout_class)


# --------------------------------------------------------------------------
# The AstroPix 4 names (imported last: those modules build on the bases above)
# --------------------------------------------------------------------------

# The layout names below were module attributes of fmt before the move and
# stay importable from here (the private ones included) for older callers.
from .astropix4.batch import BatchDecoder, decode_batch  # noqa: E402
from .astropix4.layout import (  # noqa: E402, F401
    BIT_REVERSE as _BIT_REVERSE,
    BIT_REVERSE_NP as _BIT_REVERSE_NP,
    CLOCK_CYCLES_PER_US,
    CLOCK_ROLLOVER,
    HIT_DTYPE,
    HIT_FIELDS,
    HIT_LAYOUT as _AP4_LAYOUT,
    HIT_SIZE,
    IDLE_BYTE,
    IS_IDLE as _IS_IDLE,
    IS_START as _IS_START,
    PADDING_BYTE,
    reverse_bit_order,
)
from .astropix4.layout import COLLABORATION_HIT_ORDER  # noqa: E402
from .astropix4.readout import AstroPix4Hit, AstroPix4Readout, hits_to_array  # noqa: E402

_READOUT_CLASSES: dict[int, type[AbstractAstroPixReadout]] = {AstroPix4Readout.uid(): AstroPix4Readout}


def uid_to_readout_class(uid: int) -> type[AbstractAstroPixReadout]:
    """The readout class stored in .apx headers as ``readout_uid``."""
    try:
        return _READOUT_CLASSES[int(uid)]
    except (KeyError, TypeError, ValueError):
        msg = f"unknown readout_uid {uid!r}; known: {sorted(_READOUT_CLASSES)}"
        raise ValueError(msg) from None
