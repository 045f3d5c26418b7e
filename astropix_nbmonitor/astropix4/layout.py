"""The AstroPix 4 bit layout: geometry, clocks, byte classes, hit fields.

Every fact about the AstroPix 4 chip that a decoder, a simulator or a plot
needs is written here once (docs/format.md sections 3 and 4): the matrix the
monitor shows, the 20 MHz timestamp clock and its 17-bit roll-over, which
board bytes are idle, padding or the start of a hit, how the 64 bits of a hit
are sliced into fields, and the numpy layout of a decoded hit.

This module depends on numpy and :mod:`astropix_nbmonitor.record` only, so
that anything may import it.
"""

from __future__ import annotations

import numpy as np

from ..record import RECORD_PADDING

__all__ = [
    "BIT_REVERSE",
    "BIT_REVERSE_NP",
    "CHIP_ID_BITS",
    "CLOCK_CYCLES_PER_US",
    "CLOCK_ROLLOVER",
    "ENCODABLE_ROWS",
    "FIELD_MAX",
    "GRAY17",
    "GRAY17_LIST",
    "HIT_DTYPE",
    "HIT_FIELDS",
    "HIT_LAYOUT",
    "HIT_SHIFTS",
    "HIT_SIZE",
    "IDLE_BYTE",
    "IS_IDLE",
    "IS_START",
    "NS_PER_CLOCK_CYCLE",
    "NUM_CHIPS",
    "NUM_COLS",
    "NUM_ROWS",
    "PADDING_BYTE",
    "START_BYTE_MAX",
    "START_BYTE_MIN",
    "TIMESTAMP_BITS",
    "reverse_bit_order",
]

# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------

#: Rows of the pixel matrix the monitor shows.
NUM_ROWS = 35
#: Columns of the pixel matrix the monitor shows.
NUM_COLS = 16
#: Width of the chip_id field of a hit.
CHIP_ID_BITS = 5
#: Chip ids a hit can carry (0..31).
NUM_CHIPS = 2**CHIP_ID_BITS
#: Largest value of the 5-bit row and column fields.
FIELD_MAX = 31
#: Rows the 5-bit row field can carry (rows 32..34 of the matrix cannot be encoded).
ENCODABLE_ROWS = FIELD_MAX + 1

# --------------------------------------------------------------------------
# Clocks (docs/format.md section 4)
# --------------------------------------------------------------------------

#: Timestamp clock cycles per microsecond (a 20 MHz clock).
CLOCK_CYCLES_PER_US = 20.0
#: Nanoseconds per timestamp clock cycle.
NS_PER_CLOCK_CYCLE = round(1000 / CLOCK_CYCLES_PER_US)
#: Bits of a decoded timestamp: 14 coarse + 3 fine.
TIMESTAMP_BITS = 17
#: The timestamp counter rolls over at this value.
CLOCK_ROLLOVER = 2**TIMESTAMP_BITS

# --------------------------------------------------------------------------
# Board bytes (docs/format.md section 3)
# --------------------------------------------------------------------------

#: The idle byte the chip sends between hits.
IDLE_BYTE = 0xBC
#: The padding byte of a board buffer (the one the record framing strips at the end).
PADDING_BYTE = RECORD_PADDING[0]
#: Valid start bytes, the first byte of a hit: 111xxxxx except ff.
START_BYTE_MIN = 0xE0
START_BYTE_MAX = 0xFE
#: Bytes in one hit.
HIT_SIZE = 8

#: Byte classes as tuples indexed by byte value (fast in pure Python loops).
IS_START = tuple(START_BYTE_MIN <= b <= START_BYTE_MAX for b in range(256))
IS_IDLE = tuple(b in (IDLE_BYTE, PADDING_BYTE) for b in range(256))

#: ``bytes.translate`` table that reverses the bit order inside every byte.
BIT_REVERSE = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
#: The same table as a numpy array (index an uint8 array with it).
BIT_REVERSE_NP = np.frombuffer(BIT_REVERSE, dtype=np.uint8)


def reverse_bit_order(data: bytes) -> bytes:
    """Return ``data`` with the bit order reversed inside each byte."""
    return bytes(data).translate(BIT_REVERSE)


def _gray_table(bits: int) -> np.ndarray:
    """Gray code -> binary for every ``bits``-bit code, as an uint32 array."""
    codes = np.arange(2**bits, dtype=np.uint32)
    out = codes.copy()
    shift = codes >> 1
    while shift.any():
        out ^= shift
        shift >>= 1
    return out


#: Gray -> binary for every 17-bit timestamp (14 coarse + 3 fine bits).
GRAY17 = _gray_table(TIMESTAMP_BITS)
#: The same table as a list (fast indexing from Python ints).
GRAY17_LIST = GRAY17.tolist()

# --------------------------------------------------------------------------
# One hit (docs/format.md section 4)
# --------------------------------------------------------------------------

#: (name, first bit, width) of the fields packed in the 64-bit hit word,
#: bits numbered from the most significant after the per-byte bit reversal.
HIT_LAYOUT = (
    ("chip_id", 0, CHIP_ID_BITS),
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
#: (name, right shift, mask) of each field in the 64-bit word.
HIT_SHIFTS = tuple((name, 64 - start - width, (1 << width) - 1) for name, start, width in HIT_LAYOUT)

#: The numpy layout of one decoded hit (what the batch decoder returns).
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


#: The collaboration's order of an AstroPix 4 hit's attributes
#: (``astropix_analysis.fmt.AstroPix4Hit.ATTRIBUTE_NAMES``): the readout's id
#: and timestamp and the decoding order come right after chip_id and payload.
#: (:data:`HIT_FIELDS`, the numpy layout, keeps its own order.)
COLLABORATION_HIT_ORDER = (
    "chip_id", "payload", "readout_id", "timestamp", "decoding_order", "row", "column",
    "ts_neg1", "ts_coarse1", "ts_fine1", "ts_tdc1", "ts_neg2", "ts_coarse2", "ts_fine2", "ts_tdc2",
    "ts_dec1", "ts_dec2", "tot_us",
)  # fmt: skip
