"""The readout record: the 19-byte framing around one board buffer, in one place.

A readout record (docs/format.md section 1) is one UDP datagram, or one
record of an .apx file::

    offset  size  field
    0       3     magic       fe dc ba
    3       4     readout_id  uint32, little-endian
    7       8     timestamp   uint64, ns since the Unix epoch
    15      4     length      uint32, number of data bytes that follow
    19      n     data        board bytes

Everything that packs, parses or validates that framing (decoders, the
listener, .apx files, the simulator, the command line) uses the names of this
module, so the layout is written down once.
"""

from __future__ import annotations

import struct

__all__ = [
    "DEFAULT_MAX_DATA_BYTES",
    "LENGTH_OFFSET",
    "MALFORMED_REASONS",
    "RECORD_HEADER",
    "RECORD_HEADER_SIZE",
    "RECORD_MAGIC",
    "RECORD_PADDING",
    "RECORD_STRUCT",
    "MalformedReadoutError",
    "pack_record",
    "parse_record",
    "record_problem",
]

#: The three bytes every readout record starts with.
RECORD_MAGIC = b"\xfe\xdc\xba"
#: The collaboration's name for :data:`RECORD_MAGIC`.
RECORD_HEADER = RECORD_MAGIC
#: magic, readout_id, timestamp, length.
RECORD_STRUCT = struct.Struct("<3sIQI")
#: magic (3) + readout_id (4) + timestamp (8) + length (4).
RECORD_HEADER_SIZE = RECORD_STRUCT.size
#: The board's padding byte: a record's data may end with a run of it, which
#: readers strip (docs/format.md section 1).
RECORD_PADDING = b"\xff"
#: Byte offset of the length field.
LENGTH_OFFSET = RECORD_HEADER_SIZE - 4
#: The largest board buffer a DAQ board sends (bytes of data in one record):
#: a record with more data than this is counted as *oversize* and kept out of
#: the plots (configurable, e.g. ``Listener(max_data_bytes=...)``).
DEFAULT_MAX_DATA_BYTES = 4096
#: Why a record is malformed, as counted by the listener.
MALFORMED_REASONS = ("short", "header", "length", "other")


class MalformedReadoutError(ValueError):
    """A readout record (docs/format.md section 1) that cannot be parsed.

    The message says what was wrong and at which byte offset of the record;
    ``reason`` is a short machine-readable key (``"short"``, ``"header"``,
    ``"length"``) used by the listener's counters, ``offset`` the offset.
    """

    def __init__(self, message: str, *, reason: str, offset: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.offset = offset


def pack_record(readout_id: int, timestamp: int, data: bytes) -> bytes:
    """The record of one board buffer: header, id, timestamp, length, data."""
    return RECORD_STRUCT.pack(RECORD_MAGIC, int(readout_id), int(timestamp), len(data)) + bytes(data)


def record_problem(record: bytes) -> str | None:
    """Why ``record`` is not a well-formed readout record, or None if it is.

    The reason is one of :data:`MALFORMED_REASONS` (never ``"other"``).
    """
    size = len(record)
    if size < RECORD_HEADER_SIZE:
        return "short"
    magic, _, _, length = RECORD_STRUCT.unpack_from(record)
    if magic != RECORD_MAGIC:
        return "header"
    if length != size - RECORD_HEADER_SIZE:
        return "length"
    return None


def parse_record(record: bytes) -> tuple[int, int, bytes]:
    """Split a readout record into ``(readout_id, timestamp, data)``.

    Raises
    ------
    MalformedReadoutError
        Naming the problem (short, wrong magic, length mismatch) and its offset.
    """
    size = len(record)
    if size < RECORD_HEADER_SIZE:
        msg = f"readout record of {size} bytes is shorter than its {RECORD_HEADER_SIZE}-byte header (at offset {size})"
        raise MalformedReadoutError(msg, reason="short", offset=size)
    magic, readout_id, timestamp, length = RECORD_STRUCT.unpack_from(record)
    if magic != RECORD_MAGIC:
        msg = f"readout record starts with {bytes(magic).hex()} at offset 0, expected {RECORD_MAGIC.hex()}"
        raise MalformedReadoutError(msg, reason="header", offset=0)
    if length != size - RECORD_HEADER_SIZE:
        msg = (
            f"readout record length field at offset {LENGTH_OFFSET} says {length} data bytes, "
            f"but {size - RECORD_HEADER_SIZE} follow the header"
        )
        raise MalformedReadoutError(msg, reason="length", offset=LENGTH_OFFSET)
    return readout_id, timestamp, bytes(record[RECORD_HEADER_SIZE:])
