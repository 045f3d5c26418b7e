"""The AstroPix online monitor as a live Jupyter widget.

The package's layout says where each job lives: ``record`` (the readout
framing), ``fmt`` and ``astropix4`` (decoding), ``sock`` and ``listener``
(receiving), ``hist`` (accumulating), ``status`` (counting), ``engine`` (the
headless monitor: threads, accumulators, status, state), ``monitor`` (the
widget views: panels, dashboard), ``fileio`` and ``sim`` (files and the
simulator), ``cli`` and ``app`` (the command line). Importing the package
imports no widget library: the widget classes load on first use.
"""

from __future__ import annotations

from typing import Any

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

from .engine import EngineState, MonitorEngine
from .fileio import ApxFormatError, ApxTruncatedWarning, FileHeader, apx_open
from .histio import SavedRun, load
from .listener import Listener, ListenerStats
from .sim import AstroPix4Simulator
from .status import Status
from .sock import (
    DEFAULT_GROUP,
    DEFAULT_PORT,
    LOCAL_HOST,
    AddressInUseError,
    InvalidAddressError,
    MulticastReceiver,
    MulticastSender,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PORT",
    "HIT_DTYPE",
    "LOCAL_HOST",
    "AddressInUseError",
    "ApxFormatError",
    "ApxTruncatedWarning",
    "AstroPix4Simulator",
    "InvalidAddressError",
    "Listener",
    "ListenerStats",
    "MulticastReceiver",
    "MulticastSender",
    "apx_open",
    "load",
    "AbstractAstroPixHit",
    "AbstractAstroPixReadout",
    "AbstractMonitor",
    "AstroPix4Hit",
    "AstroPix4Readout",
    "AstroPix4SimpleMonitor",
    "BatchDecoder",
    "DecodingFlag",
    "EngineState",
    "FileHeader",
    "SavedRun",
    "MalformedReadoutError",
    "MonitorEngine",
    "Status",
    "SimulatedSource",
    "decode_batch",
]

# The widget classes pull in ipywidgets and bqplot: import them on first use,
# so that the command-line tools start fast.
_LAZY = {
    "AbstractMonitor": "monitor",
    "AstroPix4SimpleMonitor": "monitor",
    "SimulatedSource": "source",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
