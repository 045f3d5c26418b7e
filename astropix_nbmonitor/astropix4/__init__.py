"""Everything that knows the AstroPix 4 bit layout.

* :mod:`.layout`: geometry, clocks, byte classes, the hit fields, :data:`HIT_DTYPE`;
* :mod:`.readout`: :class:`AstroPix4Hit`, :class:`AstroPix4Readout` (the
  per-readout path, the collaboration's API);
* :mod:`.batch`: :class:`BatchDecoder` and :func:`decode_batch` (many
  records into one numpy array).

:mod:`astropix_nbmonitor.fmt` holds the chip-agnostic bases these build on,
and re-exports the names below. Another chip is another package beside this
one.
"""

from __future__ import annotations

# The bases first: fmt imports this package's modules at its end, so loading
# fmt completely before them keeps any import order working.
from .. import fmt as _fmt  # noqa: F401
from .batch import BatchDecoder, decode_batch
from .layout import HIT_DTYPE, HIT_FIELDS, NUM_CHIPS, NUM_COLS, NUM_ROWS
from .readout import AstroPix4Hit, AstroPix4Readout, hits_to_array

__all__ = [
    "HIT_DTYPE",
    "HIT_FIELDS",
    "NUM_CHIPS",
    "NUM_COLS",
    "NUM_ROWS",
    "AstroPix4Hit",
    "AstroPix4Readout",
    "BatchDecoder",
    "decode_batch",
    "hits_to_array",
]
