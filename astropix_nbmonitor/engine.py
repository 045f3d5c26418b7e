"""The headless monitor engine: receive, decode, accumulate, count.

:class:`MonitorEngine` owns what a monitor does with no screen: a
:class:`~astropix_nbmonitor.listener.Listener` thread that receives the UDP
datagrams and checks their framing, a processing thread that decodes the
records in batches (chaining hits split across readouts) and fills the
histograms, and the counters. Views read it, never reach into it:

* :meth:`MonitorEngine.status` - one table of counters
  (:class:`~astropix_nbmonitor.status.Status`), the single source of the
  traitlets, the dashboard, the ``watch`` command and the hub;
* :meth:`MonitorEngine.state` - a consistent copy of every histogram and of
  the status, with a sequence number and the wall time it was taken.

Importing this module imports no widget library: it runs in a terminal
(``astropix-nbmonitor watch``), in a hub process or under a notebook widget
(:class:`~astropix_nbmonitor.monitor.AbstractMonitor`, whose ``engine`` it is).

Threads. The listener thread only receives. The processing thread drains the
listener's buffer in batches sized to take about :attr:`MonitorEngine.BATCH_SECONDS`
each, and every ``refresh_interval`` computes the rates and calls the refresh
callbacks (a widget's ``update_display``). Processing, refreshes,
:meth:`~MonitorEngine.reset`, :meth:`~MonitorEngine.replay` and
:meth:`~MonitorEngine.state` are serialised by one lock, so callbacks need no
locks of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import boost_histogram as bh
import numpy as np

from .astropix4.layout import NUM_COLS, NUM_ROWS
from .astropix4.batch import BatchDecoder
from .fmt import AbstractAstroPixReadout, AstroPix4Readout, ChainedDecoder, decoder_for
from .hist import FILL_DTYPE, TOT_EDGES, HitAccumulator, RateHistory, bin_hits, hits_as_array, scalar_tot_binner
from .listener import DEFAULT_COALESCE_S, Listener
from .sock import DEFAULT_PORT, LOCAL_HOST
from .status import Status, StatusSources
from .trend import RateTrend
from .windows import PixelTots, WindowedAccumulator

__all__ = ["EngineState", "MonitorEngine"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EngineState:
    """A consistent copy of a monitor's histograms and counters.

    Attributes
    ----------
    seq : int
        Sequence number of the copy (1 for the first :meth:`MonitorEngine.state`).
    time : float
        ``time.time()`` when it was taken.
    status : Status
        The counters.
    histograms : dict of str to boost_histogram.Histogram
        ``hit_map`` (axes column, row) and ``tot_hist`` (TOT in us, with
        under/overflow) of all chips; ``chip_hit_map`` (axes chip_id, column,
        row) and ``chip_tot_hist`` (axes chip_id, tot_us) per chip.
    chips : tuple of int
        The chip_ids seen.
    rates : numpy.ndarray
        Rate history, shape ``(3, n)``: seconds relative to the last point
        (<= 0), readouts/s, hits/s.
    running : bool
        Whether the engine was running.
    window : float
        0 when the histograms are the whole run's, else the seconds of the
        window they hold (:meth:`MonitorEngine.state` with ``window=``).
    """

    seq: int
    time: float
    status: Status
    histograms: dict[str, bh.Histogram]
    chips: tuple[int, ...]
    rates: np.ndarray
    running: bool
    #: Not a field (subclasses add fields of their own): set by :meth:`MonitorEngine.state`.
    window: ClassVar[float] = 0.0
    #: The engine's clock when the window's histograms were read (None: whole run).
    window_now: ClassVar[float | None] = None

    @property
    def hit_map(self) -> bh.Histogram:
        """Hit counts per pixel of all chips (axes: column, then row)."""
        return self.histograms["hit_map"]

    @property
    def tot_hist(self) -> bh.Histogram:
        """The TOT spectrum of all chips, in us."""
        return self.histograms["tot_hist"]

    def chip_hit_map(self, chip: int | None = None) -> bh.Histogram:
        """The hit map of one chip_id (all chips for None)."""
        if chip is None:
            return self.hit_map
        return self.histograms["chip_hit_map"][bh.loc(int(chip)), :, :]

    def chip_tot_hist(self, chip: int | None = None) -> bh.Histogram:
        """The TOT spectrum of one chip_id (all chips for None)."""
        if chip is None:
            return self.tot_hist
        return self.histograms["chip_tot_hist"][bh.loc(int(chip)), :]

    def hit_counts(self, chip: int | None = None) -> np.ndarray:
        """Hit counts as a ``(rows, columns)`` float64 array (rows first, as drawn)."""
        view = self.histograms["chip_hit_map"].view()
        counts = view.sum(axis=0) if chip is None else view[int(chip)]
        return np.ascontiguousarray(counts.T, dtype=np.float64)

    def tot_counts(self, chip: int | None = None) -> tuple[np.ndarray, int, int]:
        """TOT bin counts (float64), underflow and overflow."""
        view = self.histograms["chip_tot_hist"].view(flow=True)
        counts = view.sum(axis=0) if chip is None else view[int(chip)]
        return counts[1:-1].astype(np.float64), int(counts[0]), int(counts[-1])

    @property
    def tot_edges(self) -> np.ndarray:
        """The TOT bin edges, in us."""
        return np.asarray(self.histograms["tot_hist"].axes[0].edges)


def _concatenated(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Hit arrays joined into as few as possible (one per dtype; the fields the accumulators read)."""
    if len(arrays) <= 1:
        return arrays
    if all(a.dtype == arrays[0].dtype for a in arrays):
        return [np.concatenate(arrays)]
    out = np.empty(sum(len(a) for a in arrays), dtype=FILL_DTYPE)
    at = 0
    for a in arrays:
        for name in FILL_DTYPE.names:
            out[name][at : at + len(a)] = a[name]
        at += len(a)
    return [out]


class MonitorEngine:
    """Receive a readout stream, decode it, histogram it and count everything.

    Read-time catch-up. When the engine does its own processing (no
    ``process`` hook, or one declared equivalent with
    :attr:`catch_up_on_read`, as ``AstroPix4SimpleMonitor`` does when neither
    ``process_readout`` nor ``process_batch`` is overridden) and no records
    callback is registered (:meth:`add_records_callback`: a hub publisher's
    relay, whose sockets belong to the processing thread), every reader of
    the data (:meth:`hit_map`, :meth:`tot_hist`, :meth:`state`,
    :meth:`status`, :meth:`refresh`, the ``*_window`` readers,
    :meth:`pixel_tot_hist`, :meth:`window_slices`, :attr:`num_readouts`,
    :attr:`num_hits`, :attr:`chips_seen`, :attr:`out_of_matrix`) first calls
    :meth:`catch_up`: it takes what waits in the socket
    (:meth:`Listener.receive_now`), then, under the processing lock, drains
    the listener's buffer and processes it on the caller's thread. What a
    read returns then includes every datagram that reached the socket
    before the call, so neither thread need hurry: after a drain that
    emptied the buffer the processing thread waits up to
    :attr:`PROCESS_DELAY` (or until :attr:`PROCESS_RECORDS` are buffered,
    the refresh is due, or a stop), and, unless a ``coalesce`` was given,
    the listener pauses :attr:`CATCH_UP_COALESCE` between small bursts
    (bounded by its socket buffer); a slow stream is processed in about 12
    batches a second (the refreshes included) rather than a few hundred.
    The processing thread drains and processes under the same lock, so
    records are processed in the order received whichever thread processes
    them (hits split across two readouts are chained). Otherwise (a user's processing, or a records
    callback) nothing is processed off the processing thread, which
    processes each burst as it comes, as before (4 ms listener pauses).

    Parameters
    ----------
    readout_class : type
        The readout class of the stream (default AstroPix 4). AstroPix 4
        records are decoded in batches; any other class (the collaboration's
        own included) one readout at a time through its ``from_bytes`` and
        ``decode``.
    group : str
        ``127.0.0.1`` (or another local unicast address) or a multicast group.
    port : int
        The UDP port (0: the system chooses).
    refresh_interval : float
        Seconds between two refreshes (rates, rate history, callbacks).
    update_pause : float
        Seconds the processing thread sleeps after each refresh.
    num_rows, num_cols : int or None
        The matrix of the histograms (default: the readout class's
        ``NUM_ROWS``/``NUM_COLS``, else AstroPix 4's 35 x 16).
    tot_edges : array_like
        TOT bin edges in us (default the collaboration's ``linspace(0, 500, 100)``).
    history_seconds : float
        Span of the rate history (the whole run's rates are kept downsampled
        in :attr:`trend`).
    max_window : float
        The longest time window (s) :meth:`state` and :attr:`windows` give:
        the length of the ring of per-second histograms.
    process : callable or None
        ``process(records)`` replaces the default decode-and-fill step (a
        widget whose ``process_readout`` a user wrote); it reports what it
        did with :meth:`count_processed`.
    **listener_options
        Passed to :class:`~astropix_nbmonitor.listener.Listener`
        (``buffer_size``, ``buffer_bytes``, ``rcvbuf``, ``interface``,
        ``batch_receive``, ``max_data_bytes``, ``coalesce``, ``timeout``...).
    """

    #: Most readouts handed to one processing step.
    MAX_BATCH = 50_000
    #: Points of the whole-run rate trend (:class:`~astropix_nbmonitor.trend.RateTrend`).
    TREND_POINTS = 1000
    #: Fewest readouts handed to one processing step (1: a slow per-readout
    #: ``process_readout`` still lets refreshes happen on time).
    MIN_BATCH = 1
    #: The first batch after a start (the size then adapts).
    FIRST_BATCH = 64
    #: The batch size adapts so that one processing step takes about this long (s).
    BATCH_SECONDS = 0.05
    #: Batches of at most this many records are decoded readout by readout
    #: (see :meth:`process_records`).
    SMALL_RECORDS = 12
    #: At most this many hits are filled one by one rather than with array
    #: operations (see :meth:`accumulate`).
    SMALL_FILL = 24
    #: Inside :meth:`collecting`, the hits kept are filled whenever they reach
    #: this many (a batch of dense readouts would otherwise keep hundreds of
    #: thousands of hit objects alive, which slows the garbage collector).
    COLLECT_HITS = 4096
    #: After a stop is asked, the processing thread goes on with the backlog
    #: for at most this long (s); what is left is dropped and counted.
    STOP_GRACE_S = 0.5
    #: With read-time catch-up (see the class), when a drain emptied the
    #: buffer the processing thread lets records gather this long (s) before
    #: it processes them, unless :attr:`PROCESS_RECORDS` gathered first or
    #: the refresh is due: a slow stream is processed in about 10 batches a
    #: second. Readers do not wait for it: they catch up.
    PROCESS_DELAY = 0.1
    #: ... or until this many records are buffered.
    PROCESS_RECORDS = 2000
    #: Most records one read processes on the caller's thread (a larger
    #: backlog is the processing thread's, which is then busy on it).
    CATCH_UP_MAX = 20_000
    #: The listener's coalescing pause (s) while reads catch up and no
    #: ``coalesce`` was given: reads also take what waits in the socket
    #: (:meth:`Listener.receive_now`), so a longer pause costs them nothing.
    #: Bounded so that the socket buffer granted holds half of what
    #: :attr:`CATCH_UP_PAUSE_RATE` readouts/s send meanwhile, and never below
    #: the listener's default.
    CATCH_UP_COALESCE = 0.05
    #: The stream rate (readouts/s) the long pause is sized for (see above).
    CATCH_UP_PAUSE_RATE = 300_000

    def __init__(
        self,
        readout_class: type[AbstractAstroPixReadout] = AstroPix4Readout,
        group: str = LOCAL_HOST,
        port: int = DEFAULT_PORT,
        *,
        refresh_interval: float = 0.5,
        update_pause: float = 0.005,
        num_rows: int | None = None,
        num_cols: int | None = None,
        tot_edges: Sequence[float] = TOT_EDGES,
        history_seconds: float = 180.0,
        max_window: float = 600.0,
        process: Callable[[list[bytes]], Any] | None = None,
        **listener_options: Any,
    ) -> None:
        self.readout_class = readout_class
        # No coalesce given: the engine sets the listener's pause (longer while reads catch up).
        self._auto_coalesce = "coalesce" not in listener_options
        self.listener = Listener(readout_class, str(group), int(port), **listener_options)
        self._coalesce_set = self.listener.coalesce  # the pause the engine set last
        self._long_pause: float | None = None  # CATCH_UP_COALESCE bounded by this socket's buffer
        self.decoder = decoder_for(readout_class)
        self.num_rows = int(num_rows if num_rows is not None else getattr(readout_class, "NUM_ROWS", NUM_ROWS))
        self.num_cols = int(num_cols if num_cols is not None else getattr(readout_class, "NUM_COLS", NUM_COLS))
        self.accumulator = HitAccumulator(self.num_rows, self.num_cols, tot_edges=tot_edges)
        # The TOT bin of one hit in plain Python (the small batches' fill), the same bins as the arrays'.
        self._scalar_tot_bin = scalar_tot_binner(self.accumulator._tot_axis, self.accumulator._last_edge)
        self.history = RateHistory(history_seconds)
        #: The wall clock of the time windows and the trend (tests inject a fake one).
        self.clock: Callable[[], float] = time.time
        #: Hit maps and TOT spectra of the last seconds (a ring of per-second slots).
        self.windows = WindowedAccumulator(self.num_rows, self.num_cols, tot_edges=tot_edges, max_seconds=max_window)
        #: The TOT spectrum of every pixel over the whole run (drill-down, masks).
        self.pixel_tots = PixelTots(self.num_rows, self.num_cols, tot_edges=tot_edges)
        # Per-second per-pixel TOT counts, taken at each second's rollover, for masked windows.
        self.windows.track_pixels(self.pixel_tots)
        #: The whole run's readout and hit rates, downsampled to a bounded number of points.
        self.trend = RateTrend(self.TREND_POINTS)
        self.refresh_interval = self._check_interval(refresh_interval)
        self.update_pause = max(0.0, float(update_pause))
        self._process_hook = process
        #: Whether reads may process buffered records on the caller's thread
        #: (see the class): True by default when there is no ``process``
        #: hook; a hook's owner sets it when its hook is the engine's own
        #: processing (thread-safe under the processing lock). Records
        #: callbacks turn it off whatever this says.
        self.catch_up_on_read = process is None
        self._refresh_callbacks: list[Callable[[MonitorEngine], None]] = []
        self._records_callbacks: list[Callable[[list[bytes]], None]] = []
        self._lifecycle_lock = threading.RLock()
        self._processing_lock = threading.RLock()
        self._stop_event = threading.Event()
        self._listen_thread: threading.Thread | None = None
        self._process_thread: threading.Thread | None = None
        self._running = False
        self._started_at: float | None = None
        self._run_seconds = 0.0
        self._readouts = 0
        self._hits = 0
        self._last_counts = (0, 0)
        self._rates = (0.0, 0.0)
        self._errors = 0
        self._last_error = ""
        self._seq = 0
        #: Turns of the processing loop since creation (it sleeps while idle:
        #: about two a refresh then, one more a burst of records).
        self.process_wakeups = 0
        self._pending: list[tuple[Any, float | None]] | None = None  # see collecting()
        self._pending_hits = 0
        self._pending_began = 0.0
        self._trend_last: float | None = None  # the clock of the trend's last point
        self._batches = 0  # batches processed (change_mark)
        #: Calls of :meth:`catch_up` that processed records (on a reader's thread or the processing thread's).
        self.catch_ups = 0
        self._resets = 0

    # ------------------------------------------------------------------ identity
    @property
    def group(self) -> str:
        """The address listened to."""
        return self.listener.group

    @property
    def port(self) -> int:
        """The UDP port (the one bound, when created with port 0)."""
        return self.listener.port

    def address(self) -> tuple[str, int]:
        """``(group, port)``."""
        return (self.group, self.port)

    def exposure(self) -> str:
        """Who can send to this engine, in words (loopback only, a multicast group...)."""
        return self.listener.exposure()

    @property
    def running(self) -> bool:
        """True while the processing thread runs."""
        return self._running

    def __repr__(self) -> str:
        return f"MonitorEngine({self.readout_class.__name__}, group={self.group!r}, port={self.port})"

    # ------------------------------------------------------------------ lifecycle
    def add_refresh_callback(self, callback: Callable[[MonitorEngine], None]) -> None:
        """Call ``callback(engine)`` at every refresh, on the processing thread."""
        self._refresh_callbacks.append(callback)

    def add_records_callback(self, callback: Callable[[list[bytes]], None]) -> None:
        """Call ``callback(records)`` with every batch of accepted records, on the processing thread.

        The records are those processed (live or replayed), in order, after
        the listener's checks; a hub relays them this way. The callback must
        be quick (hand the batch on, do not process it there).
        """
        self._records_callbacks.append(callback)

    def start(self, refresh_interval: float | None = None, update_pause: float | None = None) -> MonitorEngine:
        """Bind the socket, start both threads and return at once (the engine itself).

        Raises the listener's clear error (e.g.
        :class:`~astropix_nbmonitor.sock.AddressInUseError`) in the caller's
        thread. Starting a running engine does nothing.
        """
        with self._lifecycle_lock:
            if self._running:
                return self
            if refresh_interval is not None:
                self.refresh_interval = self._check_interval(refresh_interval)
            if update_pause is not None:
                self.update_pause = max(0.0, float(update_pause))
            self.start_listening()
            self.start_processing()
        return self

    def start_listening(self, target: Callable[[], None] | None = None) -> None:
        """Bind the socket and run the listener (or ``target``) on a new thread."""
        with self._lifecycle_lock:
            if self._listen_thread is not None and self._listen_thread.is_alive():
                return
            self.listener.open()
            self._long_pause = None  # the socket (and its buffer) may be new
            self._listen_thread = threading.Thread(
                target=target or self.listen, name="astropix-monitor-listener", daemon=True
            )
            self._listen_thread.start()

    def listen(self) -> None:
        """Receive datagrams until :meth:`stop` (the listener thread's body)."""
        try:
            self.listener.run()
        except Exception:  # the listener never raises per datagram; this is a last resort
            logger.exception("listener thread of %r ended on an error", self)

    def start_processing(self) -> None:
        """Start the processing thread (after :meth:`start_listening`)."""
        with self._lifecycle_lock:
            if self._running:
                return
            self._stop_event.clear()
            self._started_at = time.monotonic()
            self._last_counts = (self._readouts, self._hits)
            self._process_thread = threading.Thread(
                target=self._process_loop, name="astropix-monitor-processing", daemon=True
            )
            self._running = True
            self._process_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and free the port; returns within about a second.

        Readouts received but not processed yet are processed on the
        processing thread for at most :attr:`STOP_GRACE_S`; what is left then
        is dropped and counted (``dropped``). Safe to call twice, from any
        thread.
        """
        with self._lifecycle_lock:
            current = threading.current_thread()
            self.listener.request_stop()
            if self._listen_thread is not None and self._listen_thread is not current:
                self._listen_thread.join(timeout)
            self._stop_event.set()
            self.listener.wake()  # a processing thread waiting for records returns at once
            if self._process_thread is not None and self._process_thread is not current:
                self._process_thread.join(self.STOP_GRACE_S + timeout)
            self.listener.stop()
            leftover = [t.name for t in (self._listen_thread, self._process_thread) if t is not None and t.is_alive()]
            if leftover and current not in (self._listen_thread, self._process_thread):
                logger.error("%r: threads still alive after stop(): %s", self, leftover)
            self._listen_thread = None
            self._process_thread = None
            self._running = False
            if self._started_at is not None:
                self._run_seconds += time.monotonic() - self._started_at
                self._started_at = None
            self._rates = (0.0, 0.0)

    def close(self) -> None:
        """Stop and forget the callbacks."""
        self.stop()
        self._refresh_callbacks.clear()
        self._records_callbacks.clear()

    # ------------------------------------------------------------------ data in
    def reset(self, also: Callable[[], None] | None = None) -> None:
        """Clear every histogram and counter (the engine keeps running).

        ``also()``, if given, runs under the same lock (a view clearing its own
        accumulators).
        """
        with self._processing_lock:
            self._resets += 1
            if also is not None:
                also()
            self.listener.reset_counters()
            self.decoder.reset()
            self.accumulator.reset()
            self.windows.reset()
            self.pixel_tots.reset()
            self.history.clear()
            self.trend.clear()
            self._trend_last = None
            self._readouts = 0
            self._hits = 0
            self._last_counts = (0, 0)
            self._rates = (0.0, 0.0)
            self._errors = 0
            self._last_error = ""
            self._run_seconds = 0.0
            if self._started_at is not None:
                self._started_at = time.monotonic()

    def replay(self, records: Sequence[bytes], *, refresh: bool = True) -> None:
        """Process recorded readout records at once, with no network (a run review).

        The records go through the listener's checks and counting exactly as
        datagrams do (:meth:`Listener.ingest`): malformed and oversize records
        are counted and left out, gaps in the ids are lost readouts, ids going
        back are DAQ restarts. Then they are processed and a refresh follows.
        Works on a stopped engine. ``refresh=False`` leaves the refresh to
        the caller (a player refreshes at the engine's pace, with the run's
        own clock for the rates).
        """
        with self._processing_lock:
            accepted = self.listener.ingest(records)
            self._process(accepted)
        if refresh:
            self.refresh()

    def process_records(self, records: Sequence[bytes]) -> None:
        """Decode records (chaining split hits) and fill the histograms: the default step.

        A batch of at most :attr:`SMALL_RECORDS` records (a slow stream) is
        decoded readout by readout (:meth:`ChainedDecoder.decode`, the same
        hits and counters as the batch decoder, which the tests check) and
        filled hit by hit: cheaper than the array operations' fixed cost.
        A decoder whose ``decode`` is overridden always gets the batch.
        """
        decoder = self.decoder
        before = decoder.num_readouts
        if len(records) <= self.SMALL_RECORDS and type(decoder).decode is BatchDecoder.decode:  # (not overridden)
            hits = ChainedDecoder.decode(decoder, records)
            self._fill_hit_objects(hits)
        else:
            hits = decoder.decode(records)
            self.accumulate(hits)
        self.count_processed(decoder.num_readouts - before, len(hits))

    def decode_readout(self, readout: AbstractAstroPixReadout) -> list[Any]:
        """Decode one readout, completing a hit split across it and the previous one.

        Chains when the ids are consecutive; recovered hits, flags and empty
        readouts are counted by the decoder.
        """
        return self.decoder.decode_readout(readout)

    def accumulate(self, hits: Any, now: float | None = None) -> None:
        """Fill the histograms with hits: a ``HIT_DTYPE`` array or hit objects.

        The cumulative histograms, the time windows (at ``now``, default
        :attr:`clock`) and the per-pixel TOT spectra get the same hits: the
        batch's cells and TOT bins are computed once for all three.

        Inside :meth:`collecting` (the per-readout path of a monitor's
        ``process_batch``), the hits are kept and filled together when the
        batch ends, with the clock read once for the batch as the batch path
        does.
        """
        pending = self._pending
        if pending is not None:
            pending.append((hits, now))
            self._pending_hits += len(hits)
            if self._pending_hits >= self.COLLECT_HITS:  # bounded: many live hit objects slow the garbage collector
                self._pending, self._pending_hits = None, 0
                try:
                    self._fill_collected(pending, self._pending_began)
                finally:
                    pending.clear()
                    self._pending = pending
            return
        if not isinstance(hits, np.ndarray):
            hits = hits_as_array(list(hits))
        if len(hits) == 0:
            return
        if len(hits) <= self.SMALL_FILL:
            self._fill_small(hits, now)
            return
        binned = bin_hits(hits, self.num_rows, self.num_cols, self.windows.tot_bins)
        self.accumulator.fill_binned(binned)
        self.windows._fill_binned(binned, self.clock() if now is None else now)
        self.pixel_tots._fill_binned(binned)

    def _fill_small(self, hits: np.ndarray, now: float | None) -> None:
        """A few hits: filled one by one into the three accumulators, the same bins as the array path.

        Below :attr:`SMALL_FILL` hits, a dozen array operations cost more
        than a loop over the hits (what a slow stream's batches hold), the
        more so on a thread just woken, whose caches other work has emptied.
        """
        self._fill_lists(hits["chip_id"].tolist(), hits["column"].tolist(), hits["row"].tolist(),
                         hits["tot_us"].tolist(), now)

    def _fill_hit_objects(self, hits: list[Any]) -> None:
        """The AstroPix 4 hit objects of :meth:`process_records`' small path, filled like :meth:`accumulate`."""
        if self._pending is not None or len(hits) > self.SMALL_FILL:
            self.accumulate(hits)
        elif hits:
            self._fill_lists([h.chip_id for h in hits], [h.column for h in hits], [h.row for h in hits],
                             [h.tot_us for h in hits], None)

    def _fill_lists(self, chips: list[int], cols: list[int], rows: list[int], tots: list[float], now: float | None) -> None:
        to_bin = self._scalar_tot_bin
        bins = [to_bin(t) for t in tots]
        self.accumulator._fill_scalar(chips, cols, rows, bins)
        self.windows._fill_scalar(chips, cols, rows, bins, self.clock() if now is None else now)
        self.pixel_tots._fill_scalar(chips, cols, rows, bins)

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        """Within this block, :meth:`accumulate` collects hits; they are filled at its end, in one go.

        For a ``process_batch`` that calls a user's ``process_readout`` per
        readout: a readout's few hits would otherwise be filled one readout at
        a time into four accumulators, at a fixed cost each. Every hit ends up
        in the same bins (hits with an explicit ``now`` at that time, the
        others at the clock read when the block began), every
        :attr:`COLLECT_HITS` hits and at the end. Nested blocks collect into
        the outermost. The hits are filled even if the block raises.
        """
        if self._pending is not None:
            yield
            return
        pending: list[tuple[Any, float | None]] = []
        self._pending, self._pending_hits = pending, 0
        began = self._pending_began = self.clock()
        try:
            yield
        finally:
            self._pending = None
            self._fill_collected(pending, began)

    def _fill_collected(self, pending: list[tuple[Any, float | None]], began: float) -> None:
        """Fill what :meth:`collecting` kept: hit objects together, arrays together, per arrival time."""
        groups: dict[float, tuple[list[Any], list[np.ndarray]]] = {}
        for hits, now in pending:
            objects, arrays = groups.setdefault(began if now is None else float(now), ([], []))
            if isinstance(hits, np.ndarray):
                if len(hits):
                    arrays.append(hits)
            elif hits:
                objects.extend(hits)
        for now, (objects, arrays) in groups.items():
            if objects:
                self.accumulate(hits_as_array(objects), now)
            for array in _concatenated(arrays):
                self.accumulate(array, now)

    def count_processed(self, readouts: int, hits: int) -> None:
        """Add to the readout and hit counters."""
        self._readouts += int(readouts)
        self._hits += int(hits)

    def note_error(self, exc: BaseException) -> None:
        """Count an exception caught on the processing path (logged, rate-limited)."""
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._errors <= 10 or self._errors % 1000 == 0:
            logger.error("%r: %s (error %d)", self, self._last_error, self._errors, exc_info=exc)

    # ------------------------------------------------------------------ data out
    def catch_up(self) -> int:
        """Process now, on the calling thread, what the listener has buffered; return how many records.

        Every reader of the data calls it first (see the class): does nothing
        (returns 0) when the buffer is empty or when processing off the
        processing thread is not safe (:meth:`catches_up` is False). At most
        :attr:`CATCH_UP_MAX` records (a larger backlog is left to the
        processing thread). Drain and processing happen under the processing
        lock, as on the processing thread, so no record overtakes another.
        """
        if not self.catches_up():
            return 0
        listener = self.listener
        listener.receive_now()  # what waits in the socket during the listener's coalescing pause
        if not listener.pending():
            return 0
        with self._processing_lock:
            records = self.listener.drain(self.CATCH_UP_MAX)
            self._process(records)
        self.catch_ups += 1
        return len(records)

    def catches_up(self) -> bool:
        """Whether reads process the buffered records on their own thread now (see the class)."""
        return bool(self.catch_up_on_read) and not self._records_callbacks

    @property
    def num_readouts(self) -> int:
        """Readouts processed since creation or the last reset (after :meth:`catch_up`)."""
        self.catch_up()
        return self._readouts

    @property
    def num_hits(self) -> int:
        """Hits counted since creation or the last reset (after :meth:`catch_up`)."""
        self.catch_up()
        return self._hits

    @property
    def rates(self) -> tuple[float, float]:
        """Readouts/s and hits/s over the last refresh."""
        return self._rates

    @property
    def uptime(self) -> float:
        """Seconds spent running since creation or the last reset."""
        running = time.monotonic() - self._started_at if self._started_at is not None else 0.0
        return self._run_seconds + running

    @property
    def error_count(self) -> int:
        """Exceptions caught on the processing path."""
        return self._errors

    @property
    def last_error(self) -> str:
        """The last of them, as ``"Type: message"`` (``""`` if none)."""
        return self._last_error

    def hit_map(self, chip: int | None = None) -> bh.Histogram:
        """A copy of the hit map (axes column, row) of all chips, or of one chip_id."""
        self.catch_up()
        return self.accumulator.hit_map(chip)

    def tot_hist(self, chip: int | None = None) -> bh.Histogram:
        """A copy of the TOT spectrum (us, with under/overflow) of all chips, or of one chip_id."""
        self.catch_up()
        return self.accumulator.tot_hist(chip)

    @property
    def chips_seen(self) -> list[int]:
        """The chip_ids seen so far."""
        self.catch_up()
        return sorted(self.accumulator.chips_seen)

    @property
    def out_of_matrix(self) -> int:
        """Decoded hits outside the matrix."""
        self.catch_up()
        return int(self.accumulator.out_of_matrix)

    def status(self) -> Status:
        """Every counter, read now (see :data:`~astropix_nbmonitor.status.STATUS_TABLE`)."""
        self.catch_up()
        readout_rate, hit_rate = self._rates
        sources = StatusSources(
            listener=self.listener.stats(),
            decoder=self.decoder,
            readouts=self._readouts,
            hits=self._hits,
            readout_rate=readout_rate,
            hit_rate=hit_rate,
            out_of_matrix=self.accumulator.out_of_matrix,
            errors=self._errors,
            uptime=self.uptime,
        )
        return Status.read(sources)

    def state(self, window: float | None = None) -> EngineState:
        """A consistent copy of every histogram and of :meth:`status`.

        Parameters
        ----------
        window : float, optional
            None or 0: the histograms of the whole run. Seconds (up to
            ``max_window``): ``hit_map``, ``tot_hist``, ``chip_hit_map`` and
            ``chip_tot_hist`` are those of the last ``window`` seconds (1 s
            granularity); the status and the rates stay the run's.
        """
        window = float(window or 0.0)
        window_now = None
        with self._processing_lock:
            self.catch_up()
            snap = self.accumulator.snapshot()
            if window:
                window_now = self._window_into(snap, window)
            status = self.status()
            t, readout_rate, hit_rate = self.history.arrays()
            self._seq += 1
            seq = self._seq
        chip_maps = snap["chip_hit_map"]
        chip_tots = snap["chip_tot_hist"]
        histograms = {
            "hit_map": chip_maps[sum, :, :],
            "tot_hist": chip_tots[sum, :],
            "chip_hit_map": chip_maps,
            "chip_tot_hist": chip_tots,
        }
        state = EngineState(
            seq=seq,
            time=time.time(),
            status=status,
            histograms=histograms,
            chips=snap["chips_seen"],
            rates=np.vstack([t, readout_rate, hit_rate]),
            running=self._running,
        )
        if window:
            object.__setattr__(state, "window", window)  # frozen: the window is set once, here
            object.__setattr__(state, "window_now", window_now)
        return state

    def _window_into(self, snap: dict[str, Any], window: float) -> float:
        """Replace the snapshot's chip histograms by those of the last ``window`` seconds (lock held); the clock read."""
        now = self.clock()
        maps = snap["chip_hit_map"]
        maps.view()[...] = self.windows.counts(window, now)
        tots = snap["chip_tot_hist"]
        flow = tots.view(flow=True)
        flow[...] = 0
        for chip in self.windows.chips_seen:
            flow[chip] = self.windows.tot_hist(window, chip, now).values(flow=True)
        return now

    def hit_map_window(self, seconds: float, chip: int | None = None) -> bh.Histogram:
        """The hit map (axes column, row) of the last ``seconds``, all chips or one chip_id."""
        self.catch_up()
        return self.windows.hit_map(seconds, chip, self.clock())

    def tot_hist_window(self, seconds: float, chip: int | None = None) -> bh.Histogram:
        """The TOT spectrum (us, with under/overflow) of the last ``seconds``, all chips or one chip_id."""
        self.catch_up()
        return self.windows.tot_hist(seconds, chip, self.clock())

    def masked_tot_window(
        self, seconds: float, pixels: Any, chip: int | None = None, now: float | None = None
    ) -> tuple[np.ndarray, bool]:
        """TOT counts (with under/overflow) of ``(chip_id, column, row)`` pixels in the last ``seconds``.

        What a time window's displayed TOT spectrum leaves out for masked
        pixels, also hits that arrived before they were masked (see
        :meth:`WindowedAccumulator.masked_tot_counts`); ``now`` defaults to
        :attr:`clock` (give a state's ``window_now`` to match its histograms).
        Returns ``(counts, exact)``.
        """
        with self._processing_lock:
            self.catch_up()
            return self.windows.masked_tot_counts(seconds, list(pixels), chip, self.clock() if now is None else now)

    def pixel_tot_hist(self, column: int, row: int, chip_id: int | None = None, seconds: float | None = None) -> bh.Histogram:
        """The TOT spectrum of pixel (column, row) of ``chip_id`` (None: summed over chips).

        ``seconds`` None or 0: the whole run; else the last ``seconds`` (from
        the per-second per-pixel counts; see :meth:`masked_tot_window` for
        when they are inexact).
        """
        self.catch_up()
        if not seconds:
            return self.pixel_tots.pixel_tot_hist(column, row, chip_id)
        with self._processing_lock:
            return self.windows.pixel_tot_hist(seconds, column, row, chip_id, self.clock())

    def window_slices(self, after: int | None = None, *, totals: bool = False) -> dict[str, Any]:
        """The time windows' slots newer than ``after`` (None: all), for a hub to send its viewers.

        ``{"slices": [SecondSlice...], "head", "now", "generation"}``, read
        under the processing lock (a consistent copy); with ``totals`` also
        ``"pixel_totals"``: the whole run's per-pixel spectra
        (:meth:`PixelTots.export_sparse`), which hold every slice's counts.
        """
        with self._processing_lock:
            self.catch_up()
            out: dict[str, Any] = {
                "slices": self.windows.export(after),
                "head": self.windows.head,
                "now": float(self.clock()),
                "generation": self.windows.generation,
            }
            if totals:
                out["pixel_totals"] = self.pixel_tots.export_sparse()
            return out

    def refresh(self, dt: float | None = None, *, paced: bool = False) -> None:
        """Update the rates (over ``dt`` seconds) and call the refresh callbacks now.

        ``paced=True``: the records came from a player, ``dt`` seconds of the
        run's own clock ago; the rates are computed over them even though
        the engine itself is not receiving.
        """
        with self._processing_lock:
            self.catch_up()
            self._update_rates(dt, paced=paced)
            for callback in list(self._refresh_callbacks):
                try:
                    callback(self)
                except Exception as exc:
                    self.note_error(exc)

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _check_interval(value: float) -> float:
        if not value > 0:
            msg = f"refresh_interval must be > 0 s, got {value}"
            raise ValueError(msg)
        return float(value)

    def _update_rates(self, dt: float | None, *, paced: bool = False) -> None:
        counts = (self._readouts, self._hits)
        if dt is not None and dt > 0 and (self._running or paced):
            prev_r, prev_h = self._last_counts
            self._rates = ((counts[0] - prev_r) / dt, (counts[1] - prev_h) / dt)
            self.history.add(*self._rates)
            now = self.clock()
            if self._trend_last is None or now > self._trend_last:  # the trend's times increase (a frozen clock)
                self.trend.add(now, *self._rates)
                self._trend_last = now
        elif not self._running and not paced:
            self._rates = (0.0, 0.0)
        self._last_counts = counts

    def change_mark(self) -> tuple[int, ...]:
        """A value that changes whenever the histograms or counters may have: compare two to skip work.

        Equal marks mean no record was processed, no datagram received and
        no reset done in between, so the histograms and the counters (rates
        and uptime aside, which follow the clock) are as they were: a
        refresh may reuse what it drew (e.g. a view skipping an unchanged
        ``state()`` copy).
        """
        # The counters and the hits filled too: records fed by hand (a process_batch called directly) move it.
        return (self._resets, self._batches, self.listener._datagrams, self._readouts, self._hits,
                self.accumulator.generation, int(self.accumulator.out_of_matrix))

    def _process(self, records: list[bytes]) -> None:
        if not records:
            return
        self._batches += 1
        for callback in self._records_callbacks:
            try:
                callback(records)
            except Exception as exc:
                self.note_error(exc)
        try:
            if self._process_hook is not None:
                self._process_hook(records)
            else:
                self.process_records(records)
        except Exception as exc:
            self.note_error(exc)

    def _drain_and_process(self, limit: int) -> tuple[int, float]:
        """Drain at most ``limit`` records and process them, both under the processing lock; (count, seconds).

        Together, so that a :meth:`catch_up` on another thread cannot process
        records received later before these (split hits chain in order).
        """
        with self._processing_lock:
            if self.catches_up():
                self.listener.receive_now()  # what waits in the socket during the listener's (long) pause
            records = self.listener.drain(limit)
            if not records:
                return 0, 0.0
            began = time.perf_counter()
            self._process(records)
            return len(records), time.perf_counter() - began

    def _next_limit(self, limit: int, n: int, took: float) -> int:
        """Size the next batch to take about BATCH_SECONDS.

        Shrunk at once after a slow batch; grown after a full one, by at most
        4 times a step, so that one batch of an unknown (maybe slow) step
        never holds the thread for long.
        """
        if took > 0 and (n == limit or took > self.BATCH_SECONDS):
            target = self.BATCH_SECONDS * n / took
            return int(min(self.MAX_BATCH, 4 * limit, max(self.MIN_BATCH, target)))
        return limit

    def _process_loop(self) -> None:
        """The processing thread: drain and process, refresh on time, sleep while there is nothing to do.

        It never polls: when a drain left the listener's buffer empty it
        blocks in :meth:`Listener.wait_for_records` until the listener buffers
        the next burst, the next refresh is due, or :meth:`stop` wakes it.
        When reads catch up (:meth:`catches_up`), it then lets records gather
        for :attr:`PROCESS_DELAY` more (or until :attr:`PROCESS_RECORDS`):
        a slow stream is processed in about 10 batches a second. Otherwise
        the listener's coalescing pause (``coalesce``, 4 ms by default) makes
        the bursts of a slow stream hold several readouts, so a batch is
        rarely one readout. :attr:`process_wakeups` counts the loop's turns.
        """
        last = time.monotonic()
        limit = self.FIRST_BATCH
        listener = self.listener
        stop = self._stop_event
        try:
            while not stop.is_set():
                self.process_wakeups += 1
                n, took = self._drain_and_process(limit)
                if n:
                    limit = self._next_limit(limit, n, took)
                now = time.monotonic()
                if now - last >= self.refresh_interval:
                    self.refresh(now - last)
                    last = now
                    if self.update_pause:
                        stop.wait(self.update_pause)
                elif n < limit:  # the buffer is empty: sleep until records, the refresh or stop
                    self._wait_for_work(last + self.refresh_interval, idle=not n)
            self._finish_backlog(limit)
        finally:
            self._running = False
            self.refresh(time.monotonic() - last)

    def _coalesce_for(self, catching_up: bool) -> float:
        """The listener's coalescing pause: :attr:`CATCH_UP_COALESCE` bounded by the socket buffer, else the default."""
        if not catching_up:
            return DEFAULT_COALESCE_S
        if self._long_pause is None:
            holds = self.listener.granted_datagrams() / 2 / self.CATCH_UP_PAUSE_RATE
            self._long_pause = max(DEFAULT_COALESCE_S, min(self.CATCH_UP_COALESCE, holds))
        return self._long_pause

    def _wait_for_work(self, refresh_due: float, *, idle: bool) -> None:
        """Sleep until there is something to process (see :meth:`_process_loop`), at most until ``refresh_due``.

        ``idle``: the last drain found nothing.
        """
        listener = self.listener
        catching_up = self.catches_up()
        if self._auto_coalesce:
            if listener.coalesce != self._coalesce_set:  # a user set it (e.g. 0 before start()): theirs from now on
                self._auto_coalesce = False
            else:
                listener.coalesce = self._coalesce_set = self._coalesce_for(catching_up)
        if not catching_up:
            listener.wait_for_records(refresh_due - time.monotonic())
            return
        if idle and not listener.pending():
            if not listener.wait_for_records(refresh_due - time.monotonic()) or self._stop_event.is_set():
                return  # the refresh is due, or woken by stop()
        delay = min(self.PROCESS_DELAY, refresh_due - time.monotonic())
        if delay > 0:
            listener.wait_for_records(delay, min_records=self.PROCESS_RECORDS)

    def _finish_backlog(self, limit: int) -> None:
        """Process what was received before the stop, for at most STOP_GRACE_S; drop the rest."""
        deadline = time.monotonic() + self.STOP_GRACE_S
        while time.monotonic() < deadline:
            n, took = self._drain_and_process(limit)
            if not n:
                return
            limit = self._next_limit(limit, n, took)
        dropped = self.listener.discard_buffer()
        if dropped:
            logger.warning("%r: stopped with %d readouts not processed; counted as dropped", self, dropped)
