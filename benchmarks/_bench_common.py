"""Pieces shared by the benchmarks: a paced simulated stream with markers, and /proc readers.

Not a benchmark itself. The benchmarks import it after putting this folder
on ``sys.path``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable

from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.sock import MulticastSender

_TICK = os.sysconf("SC_CLK_TCK")


class PacedSender(threading.Thread):
    """Send ``stream``'s readouts to 127.0.0.1:``port`` at ``rate`` readouts/s, ids renumbered consecutively.

    Bursts every 10 ms, readouts generated ``chunk`` at a time. :meth:`mark`
    slips one record into the stream, before the next burst (renumbered as
    well, so that the ids stay consecutive), and returns its send time.
    """

    def __init__(
        self,
        port: int,
        rate: float,
        stream: AstroPix4Simulator,
        *,
        chunk: int,
        clock: Callable[[], float] = time.monotonic,
        name: str = "bench-sender",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.port, self.rate = port, rate
        self.stop_event = threading.Event()
        self._stream = stream
        self._chunk = chunk
        self._clock = clock
        self._marks: queue.Queue[tuple[bytes, queue.Queue[float]]] = queue.Queue()
        self._next_id = 0
        self.sent = 0

    def _renumber(self, record: bytes) -> bytes:
        out = record[:3] + self._next_id.to_bytes(4, "little") + record[7:]
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return out

    def mark(self, record: bytes, timeout: float = 5.0) -> float:
        """Send ``record`` before the next burst; return ``clock()`` taken just before its send.

        Raises :class:`queue.Empty` when it was not sent within ``timeout`` s.
        """
        answer: queue.Queue[float] = queue.Queue()
        self._marks.put((record, answer))
        return answer.get(timeout=timeout)

    def run(self) -> None:
        period = 0.01
        per_burst = max(1, int(self.rate * period))
        pending: list[bytes] = []
        t0 = time.monotonic()
        with MulticastSender("127.0.0.1", self.port, ttl=1) as sender:
            while not self.stop_event.is_set():
                while not self._marks.empty():
                    record, answer = self._marks.get_nowait()
                    record = self._renumber(record)
                    sent_at = self._clock()
                    sender.send_data(record)
                    answer.put(sent_at)
                if len(pending) < per_burst:
                    pending.extend(self._stream.generate(self._chunk).records)
                burst, pending = pending[:per_burst], pending[per_burst:]
                sender.send_records([self._renumber(r) for r in burst])
                self.sent += len(burst)
                delay = t0 + self.sent / self.rate - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(min(delay, period))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``VmRSS`` of ``/proc/PID/status``; NaN if absent)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")
