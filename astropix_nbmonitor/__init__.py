"""The AstroPix online monitor as a live Jupyter widget."""

from __future__ import annotations

from .fmt import (
    HIT_DTYPE,
    AbstractAstroPixHit,
    AbstractAstroPixReadout,
    AstroPix4Hit,
    AstroPix4Readout,
    BatchDecoder,
    DecodingFlag,
    MalformedReadoutError,
    decode_batch,
)

__version__ = "0.1.0"

__all__ = [
    "HIT_DTYPE",
    "AbstractAstroPixHit",
    "AbstractAstroPixReadout",
    "AstroPix4Hit",
    "AstroPix4Readout",
    "BatchDecoder",
    "DecodingFlag",
    "MalformedReadoutError",
    "decode_batch",
]
