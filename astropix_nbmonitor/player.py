"""Replay a recorded run through a monitor's engine at any speed.

:class:`Player` plays the records of an .apx or .log file (or a list of
records) through :meth:`MonitorEngine.replay
<astropix_nbmonitor.engine.MonitorEngine.replay>` in small chunks, on a
thread of its own, paced by the records' timestamps divided by ``speed``
(10 plays a run ten times faster), or at ``rate_hz`` readouts per second
(times ``speed``) when the timestamps are all 0, as in files converted from
a .log::

    player = Player(engine, "run.apx", speed=10).start()
    player.pause(); player.seek(5000); player.resume()
    player.speed = 2.0           # settable while playing
    player.wait(); player.stop()

The records go through the engine's checks and counters exactly as a live
stream's datagrams, so the counters, histograms and refresh callbacks are
those of the same run received live. Consequences of that:

* seeking back does **not** rewind the histograms: the records from the new
  position are processed again, on top of what was shown, and the readout
  ids going back count as a DAQ restart or out-of-order readouts, as they
  would live (``engine.reset()`` first for a fresh view);
* seeking forward skips readouts, which count as lost readouts (a gap in the
  ids), as they would live;
* the rates are computed by a *running* engine's refreshes; on a stopped
  engine they stay 0 (the counters and histograms still fill).

Timestamps that go back (a DAQ restart inside the file) do not make the
player wait: the schedule never goes back in time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .record import RECORD_HEADER_SIZE, RECORD_STRUCT

__all__ = ["Player", "load_records", "schedule"]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


def load_records(source: PathLike | Sequence[bytes]) -> tuple[list[bytes], dict[str, Any] | None, Path | None]:
    """The records, header and path of a source: an .apx or .log file, or a list of records."""
    if isinstance(source, (str, os.PathLike)):
        from .fileio import apx_open

        path = Path(source)
        with apx_open(path) as reader:
            records = list(reader.records())
            header = dict(reader.header)
        return records, header, path
    return [bytes(r) for r in source], None, None


def _timestamp(record: bytes) -> int:
    """The timestamp of a record (0 for one too short to hold it)."""
    if len(record) < RECORD_HEADER_SIZE:
        return 0
    return int(RECORD_STRUCT.unpack_from(record)[2])


def schedule(records: Sequence[bytes], rate_hz: float) -> np.ndarray:
    """When each record is due, in seconds of run time from the first one.

    From the timestamps (ns), made non-decreasing; at ``rate_hz`` records per
    second when every timestamp is 0 (a converted .log) or there is one record.
    """
    if not rate_hz > 0:
        msg = f"rate_hz must be > 0, got {rate_hz!r}"
        raise ValueError(msg)
    n = len(records)
    stamps = [_timestamp(r) for r in records]
    nonzero = [t for t in stamps if t]
    if n < 2 or not nonzero:
        return np.arange(n, dtype=np.float64) / float(rate_hz)
    first = nonzero[0]
    # Differences in integer ns first: float64 cannot hold ns since the epoch exactly.
    offsets = np.array([max(t - first, 0) for t in stamps], dtype=np.float64) / 1e9
    offsets = np.maximum.accumulate(offsets)
    return offsets


class Player:
    """Play recorded records through an engine, paced by their timestamps.

    Parameters
    ----------
    engine : MonitorEngine
        The engine to feed (``engine.replay(chunk)``); a monitor's ``engine``.
    source : str, os.PathLike or sequence of bytes
        An .apx or .log file, or readout records.
    speed : float
        Run seconds played per wall-clock second (> 0).
    rate_hz : float
        Readouts per second of run time when the timestamps are all 0.

    Attributes
    ----------
    engine : MonitorEngine
    records : list of bytes
    header : dict or None
        The file's header (None for a list of records).
    path : pathlib.Path or None
    duration : float
        The run's span in run seconds (last record's due time).
    """

    #: Longest wait between two chunks (s): controls are seen within this.
    TICK_S = 0.05
    #: Most records handed to one ``replay`` call.
    MAX_CHUNK = 5000

    def __init__(self, engine: Any, source: PathLike | Sequence[bytes], *, speed: float = 1.0,
                 rate_hz: float = 1000.0) -> None:
        self.engine = engine
        self.records, self.header, self.path = load_records(source)
        self.rate_hz = float(rate_hz)
        self._due = schedule(self.records, self.rate_hz)
        self._speed = self._check_speed(speed)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._playing = False
        self._finished = not self.records
        self._position = 0
        self._clock = 0.0

    # ------------------------------------------------------------------ state
    @property
    def total(self) -> int:
        """Number of records."""
        return len(self.records)

    @property
    def position(self) -> int:
        """Index of the next record to play (``total`` at the end)."""
        return self._position

    @property
    def playing(self) -> bool:
        """True while records are being played (started, not paused, not finished)."""
        return self._playing and self._thread is not None and self._thread.is_alive()

    @property
    def finished(self) -> bool:
        """True once every record was played (until a :meth:`seek` back)."""
        return self._finished

    @property
    def duration(self) -> float:
        """The run's span in run seconds."""
        return float(self._due[-1]) if len(self._due) else 0.0

    @property
    def speed(self) -> float:
        """Run seconds per wall-clock second; settable while playing."""
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        with self._lock:
            self._speed = self._check_speed(value)
        self._wake.set()

    @staticmethod
    def _check_speed(value: float) -> float:
        value = float(value)
        if not value > 0 or value == float("inf"):
            msg = f"speed must be a positive number, got {value!r}"
            raise ValueError(msg)
        return value

    # ------------------------------------------------------------------ controls
    def start(self) -> Player:
        """Play from :attr:`position` on a new thread; returns the player at once (safe twice)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._playing = True
                self._wake.set()
                return self
            if self._finished:
                return self
            self._stop.clear()
            self._playing = True
            self._thread = threading.Thread(target=self._run, name="astropix-player", daemon=True)
            self._thread.start()
        return self

    def pause(self) -> None:
        """Stop advancing; the thread waits (the position stays)."""
        self._playing = False
        self._wake.set()

    def resume(self) -> None:
        """Go on from :attr:`position` (starts the thread if it is not running)."""
        self.start()

    def seek(self, readout_index: int) -> None:
        """Continue from record ``readout_index`` (clamped to ``0..total``).

        The histograms are not rewound (see the module's text); a seek back
        after the end makes the player unfinished again, to be resumed.
        """
        index = min(max(int(readout_index), 0), self.total)
        with self._lock:
            self._position = index
            self._clock = float(self._due[index]) if index < self.total else self.duration
            self._finished = index >= self.total
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread (the position stays; :meth:`start` goes on from it). Safe twice."""
        self._stop.set()
        self._playing = False
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.error("%r: the player thread did not end within %s s", self, timeout)
        self._thread = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the thread ends (the end of the records, or :meth:`stop`); True if it ended."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self) -> None:
        """The same as :meth:`stop`."""
        self.stop()

    def __enter__(self) -> Player:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        last = time.monotonic()
        shown = (last, self._clock)  # wall time and run clock of the last refresh
        try:
            while not self._stop.is_set():
                if not self._playing:
                    self._sleep(self.TICK_S)
                    last = time.monotonic()
                    continue
                now = time.monotonic()
                chunk = self._take(now - last)
                last = now
                if chunk:
                    self.engine.replay(chunk, refresh=False)
                if now - shown[0] >= self._refresh_interval():
                    shown = self._refresh(now, shown)
                if self._at_end():
                    break
                self._sleep(self._wait_for_next())
        except Exception:  # the engine counts its own errors; this is a last resort
            logger.exception("%r: the player thread ended on an error", self)
        finally:
            self._playing = False
            self._refresh(time.monotonic(), shown)

    def _refresh_interval(self) -> float:
        return float(getattr(self.engine, "refresh_interval", 0.5))

    def _refresh(self, now: float, shown: tuple[float, float]) -> tuple[float, float]:
        """Refresh the engine at its own pace, its rates over the run clock (as a live stream's)."""
        clock = self._clock
        self.engine.refresh(clock - shown[1], paced=True)
        return (now, clock)

    def _take(self, elapsed: float) -> list[bytes]:
        """Advance the run clock by ``elapsed`` wall seconds; the records now due."""
        with self._lock:
            self._clock += elapsed * self._speed
            start = self._position
            stop = int(np.searchsorted(self._due, self._clock, side="right"))
            stop = min(max(stop, start), start + self.MAX_CHUNK, self.total)
            self._position = stop
            return self.records[start:stop]

    def _at_end(self) -> bool:
        with self._lock:
            if self._position >= self.total:
                self._finished = True
                return True
            return False

    def _wait_for_next(self) -> float:
        """Wall seconds until the next record is due (at most :attr:`TICK_S`)."""
        with self._lock:
            if self._position >= self.total:
                return 0.0
            ahead = (float(self._due[self._position]) - self._clock) / self._speed
        return min(self.TICK_S, max(ahead, 0.0))

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self._wake.wait(seconds):
            self._wake.clear()

    def __repr__(self) -> str:
        what = str(self.path) if self.path is not None else f"{self.total} records"
        return f"Player({what}, position={self._position}/{self.total}, speed={self._speed})"
