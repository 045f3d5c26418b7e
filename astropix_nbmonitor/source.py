"""A built-in simulated DAQ: streams synthetic AstroPix 4 readouts over UDP.

For the demo, the notebooks and the tests: :class:`SimulatedSource` runs
:class:`~astropix_nbmonitor.sim.AstroPix4Simulator` on a background thread and
sends each readout record as one datagram, at a steady rate, to the address a
monitor listens to.

One source per destination in a process: a new source started on the address
of a running one stops the old one first, so that re-running a notebook cell
never stacks two streams on one monitor (two interleaved streams of readout
ids look like hundreds of thousands of lost and out-of-order readouts).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from .sim import AstroPix4Simulator
from .sock import DEFAULT_PORT, LOCAL_HOST, MulticastSender

__all__ = ["SimulatedSource"]

logger = logging.getLogger(__name__)

# The running source of each destination (group, port) in this process.
_ACTIVE: dict[tuple[str, int], weakref.ReferenceType[SimulatedSource]] = {}
_ACTIVE_LOCK = threading.Lock()


class SimulatedSource:
    """Send simulated AstroPix 4 readouts to ``(group, port)`` on a thread.

    Parameters
    ----------
    group, port
        Where to send (``127.0.0.1`` or a multicast group).
    rate_hz : float
        Readouts per second.
    max_readouts : int, optional
        Stop by itself after sending this many readouts.
    ttl : int
        Multicast TTL (1 keeps the datagrams on this machine).
    seed : int, optional
        Seed of the simulator: the same seed sends the same bytes.
    **sim_kwargs
        Passed to :class:`~astropix_nbmonitor.sim.AstroPix4Simulator`
        (hits per readout, beam spot, faults...).

    Examples
    --------
    >>> src = SimulatedSource(rate_hz=2000, seed=1).start()   # doctest: +SKIP
    >>> src.stop()                                             # doctest: +SKIP
    """

    #: Readouts generated at a time (and sent in one burst at most).
    CHUNK = 256

    def __init__(
        self,
        group: str = LOCAL_HOST,
        port: int = DEFAULT_PORT,
        *,
        rate_hz: float = 1000.0,
        max_readouts: int | None = None,
        ttl: int = 1,
        seed: int | None = None,
        **sim_kwargs: Any,
    ) -> None:
        if rate_hz <= 0:
            msg = f"rate_hz must be > 0, got {rate_hz}"
            raise ValueError(msg)
        self.group = group
        self.port = int(port)
        self.rate_hz = float(rate_hz)
        self.max_readouts = max_readouts
        self.ttl = int(ttl)
        self.simulator = AstroPix4Simulator(seed=seed, **sim_kwargs)
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._key: tuple[str, int] | None = None  # the address claimed by start()

    @property
    def running(self) -> bool:
        """True while the sending thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> SimulatedSource:
        """Start sending on a background thread; returns ``self``. Idempotent.

        A source of this process already sending to the same address is
        stopped first: the new one replaces it.
        """
        if self.running:
            return self
        sender = MulticastSender(self.group, self.port, ttl=self.ttl)  # a bad address fails here
        self._claim_address(sender.group)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(sender,), name="astropix-simulated-source", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> SimulatedSource:
        """Stop sending and wait for the thread to end. Idempotent."""
        self._release_address()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.error("simulated source thread did not stop within %.1f s", timeout)
            self._thread = None
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the source stops by itself (``max_readouts``); True if it did."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def __enter__(self) -> SimulatedSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimulatedSource(group={self.group!r}, port={self.port}, rate_hz={self.rate_hz:g})"

    def _claim_address(self, group: str) -> None:
        """Become the source of ``(group, self.port)``, stopping the one that was."""
        key = (group, self.port)
        self._key = key
        with _ACTIVE_LOCK:
            ref = _ACTIVE.get(key)
            old = ref() if ref is not None else None
            _ACTIVE[key] = weakref.ref(self)
        if old is not None and old is not self:
            logger.info("stopping %r: a new source takes over %s:%d", old, *key)
            old.stop()

    def _release_address(self) -> None:
        """Leave the registry, if this source is the one registered."""
        key = self._key
        if key is None:
            return
        with _ACTIVE_LOCK:
            ref = _ACTIVE.get(key)
            if ref is not None and ref() is self:
                del _ACTIVE[key]

    def _run(self, sender: MulticastSender) -> None:
        pending: list[bytes] = []
        t0 = time.monotonic()
        sent0 = self.sent  # the pace counts from this start, not from the first one
        try:
            while not self._stop.is_set():
                if self.max_readouts is not None and self.sent >= self.max_readouts:
                    break
                due = int((time.monotonic() - t0) * self.rate_hz) - (self.sent - sent0)
                if self.max_readouts is not None:
                    due = min(due, self.max_readouts - self.sent)
                if due <= 0:
                    self._stop.wait(min(0.01, 1.0 / self.rate_hz))
                    continue
                for _ in range(min(due, self.CHUNK)):
                    if not pending:
                        run = self.simulator.generate(self.CHUNK)
                        pending = list(run.records)
                        pending.reverse()
                    sender.send_data(pending.pop())
                    self.sent += 1
        except OSError as exc:
            logger.error("simulated source stopped: cannot send to %s:%d: %s", self.group, self.port, exc)
        finally:
            sender.close()
