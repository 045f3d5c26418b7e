"""The online monitor as a live Jupyter widget.

:class:`AbstractMonitor` keeps the API of the collaboration's
``astropix_analysis.monitor.AbstractMonitor`` (``create_canvas``,
``display_message``, ``_listen``, ``start_listening``, ``start``, ``setup``,
``process_readout``, ``update_display``) with the same meaning, but it is an
ipywidgets widget and ``start()`` returns at once: one thread receives the UDP
datagrams (:class:`~astropix_nbmonitor.listener.Listener`), another drains
them, calls ``process_readout`` (or the batch fast path ``process_batch``) and,
every ``refresh_interval``, ``update_display``. Both threads end on
:meth:`AbstractMonitor.stop` or :meth:`AbstractMonitor.close`.

:class:`AstroPix4SimpleMonitor` is the AstroPix 4 monitor: hit map, TOT
spectrum, rate strip chart and a dashboard of what arrived, was lost or was
malformed.
"""

from __future__ import annotations

import html
import logging
import threading
import time
import weakref
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import Any

import bqplot
import ipywidgets as widgets
import numpy as np
from traitlets import Bool, Float, Int

from .fmt import (
    FLAG_NAMES,
    AbstractAstroPixHit,
    AbstractAstroPixReadout,
    AstroPix4Readout,
    BatchDecoder,
    DecodingFlag,
    parse_record,
)
from .hist import TOT_EDGES, HitAccumulator, RateHistory
from .listener import DEFAULT_BUFFER_BYTES, IdTracker, Listener
from .sock import DEFAULT_PORT, DEFAULT_RCVBUF, LOCAL_HOST, is_multicast

__all__ = ["AbstractMonitor", "AstroPix4SimpleMonitor"]

logger = logging.getLogger(__name__)

#: Pixels per inch used to turn matplotlib-style figure sizes into CSS sizes.
_DPI = 100
#: Seconds without a datagram after which the dashboard warns.
NO_DATA_WARNING_S = 5.0

# One monitor per address in a process: a new one stops the old one, so
# re-running the cell that made a monitor never fails with "address in use"
# nor leaves the old one running. A unicast port admits one receiver only; a
# multicast group admits several, so there the key also holds the monitor's
# class: two different views of one group run side by side, while a re-run
# cell (same class) replaces its old monitor.
_ACTIVE: dict[tuple, weakref.ReferenceType[AbstractMonitor]] = {}
_ACTIVE_LOCK = threading.Lock()


class _MonitorMeta(ABCMeta, type(widgets.VBox)):
    """Metaclass of a widget that is also an abstract base class."""


def _ratio_template(ratios: Sequence[float] | None, n: int) -> str:
    if ratios is None:
        return " ".join(["1fr"] * n)
    if len(ratios) != n:
        msg = f"expected {n} ratios, got {len(ratios)}: {list(ratios)}"
        raise ValueError(msg)
    return " ".join(f"{float(r):g}fr" for r in ratios)


def _close_widget_tree(root: widgets.Widget) -> None:
    """Close ``root`` and every widget reachable from its traits, and from the root's attributes.

    Below the root only traits are followed (children, marks, axes, scales,
    layouts, styles...), so a widget that a child merely refers to in a plain
    attribute is left alone.
    """
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
            continue
        if isinstance(item, dict):
            stack.extend(item.values())
            continue
        if not isinstance(item, widgets.Widget) or id(item) in seen:
            continue
        seen.add(id(item))
        for name in item.trait_names():
            try:
                stack.append(getattr(item, name))
            except Exception:  # noqa: BLE001 - a trait that cannot be read holds no widget to close
                continue
        if item is root:
            stack.extend(vars(item).values())
            widgets.Widget.close(item)  # the root's own close() is what called us
        elif item.comm is not None:
            item.close()


class AbstractMonitor(widgets.VBox, metaclass=_MonitorMeta):
    """Base class of the online monitors: a widget fed by a UDP listener.

    Subclasses write :meth:`process_readout` and :meth:`update_display`, and
    usually call :meth:`create_canvas` in their ``__init__``; see
    :class:`AstroPix4SimpleMonitor` and ``notebooks/custom_monitor.ipynb``.

    Parameters
    ----------
    readout_class : type
        The readout class of the stream, e.g. ``AstroPix4Readout``.
    group : str
        ``127.0.0.1`` (or another local unicast address) to bind to, or a
        multicast group to join.
    port : int
        The UDP port.
    buffer_size, buffer_bytes : int
        Bounds of the listener's buffer, in readouts and in bytes (see
        :class:`~astropix_nbmonitor.listener.Listener`): what arrives while it
        is full is dropped and counted (``dropped_readouts``).
    rcvbuf : int or None
        Socket receive buffer to ask of the kernel (default 16 MiB).
    interface : str or None
        Interface address on which to join a multicast group (default: the
        system's choice).

    Notes
    -----
    Life of a monitor: ``start()`` calls ``setup()``, ``start_listening()``
    (which binds the socket and runs ``_listen()`` on a thread), then starts the
    processing thread and returns ``self``. The processing thread drains the
    listener's buffer, hands each readout to ``process_readout`` (or all of
    them to ``process_batch``), and every ``refresh_interval`` seconds updates
    the traitlets below and calls ``update_display()``, then sleeps
    ``update_pause``. ``process_readout`` and ``update_display`` always run on
    that one thread, so subclasses need no locks. ``stop()`` ends both
    threads, processes what was already received, refreshes once more and
    frees the port; ``start()`` again resumes counting.
    """

    #: True while the threads run.
    running = Bool(False, read_only=True)
    #: Readouts processed since creation (or the last reset).
    num_readouts = Int(0, read_only=True)
    #: Hits decoded, inside the matrix or not.
    num_hits = Int(0, read_only=True)
    #: Readouts per second over the last refresh.
    readout_rate = Float(0.0, read_only=True)
    #: Hits per second over the last refresh.
    hit_rate = Float(0.0, read_only=True)
    #: Readouts missing from the stream (gaps in readout_id).
    lost_readouts = Int(0, read_only=True)
    #: Datagrams that were not valid readout records.
    malformed_packets = Int(0, read_only=True)
    #: Readouts received but dropped because processing fell behind.
    dropped_readouts = Int(0, read_only=True)
    #: Hits split across two readouts and completed.
    recovered_hits = Int(0, read_only=True)
    #: DAQ restarts seen in the readout ids (see :mod:`~astropix_nbmonitor.listener`).
    daq_restarts = Int(0, read_only=True)
    #: Seconds between two display refreshes.
    refresh_interval = Float(0.5)

    #: Most readouts handed to one ``process_batch`` call.
    MAX_BATCH = 50_000
    #: Fewest readouts handed to one ``process_batch`` call when more are waiting.
    MIN_BATCH = 500
    #: The batch size adapts so that one ``process_batch`` call takes about this
    #: long (s): refreshes stay on time however heavy the readouts are.
    BATCH_SECONDS = 0.05

    def __init__(
        self,
        readout_class: type[AbstractAstroPixReadout],
        group: str = LOCAL_HOST,
        port: int = DEFAULT_PORT,
        *,
        buffer_size: int = 200_000,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        rcvbuf: int | None = DEFAULT_RCVBUF,
        interface: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.readout_class = readout_class
        self.update_pause = 0.005
        self._listener = Listener(
            readout_class,
            str(group),
            int(port),
            buffer_size=buffer_size,
            buffer_bytes=buffer_bytes,
            rcvbuf=rcvbuf,
            interface=interface,
        )
        self.group = self._listener.group
        self._stop_event = threading.Event()
        self._lifecycle_lock = threading.RLock()
        self._processing_lock = threading.RLock()
        self._listen_thread: threading.Thread | None = None
        self._process_thread: threading.Thread | None = None
        self._n_readouts = 0
        self._n_hits = 0
        self._last_refresh_counts = (0, 0)
        self._started_at: float | None = None
        self._run_seconds = 0.0
        self._errors = 0
        self._errors_shown = 0
        self._last_error = ""
        self._messages: dict[tuple[float, float], tuple[str, dict[str, Any]]] = {}
        self._decoder = BatchDecoder()
        self._replay_lost = 0
        self._replay_malformed = 0
        self._replay_restarts = 0
        self._replay_ids = IdTracker()  # the listener's id rules, for replayed records
        self._replay_expect = -1

        self.start_button = widgets.Button(description="Start", icon="play", tooltip="Start monitoring")
        self.stop_button = widgets.Button(description="Stop", icon="stop", tooltip="Stop monitoring")
        self.reset_button = widgets.Button(description="Reset", icon="refresh", tooltip="Clear histograms and counters")
        for button, name in ((self.start_button, "start"), (self.stop_button, "stop"), (self.reset_button, "reset")):
            button.add_class(f"apx-{name}")
            button.layout.width = "90px"
        self.start_button.on_click(lambda _: self._start_from_button())
        self.stop_button.on_click(lambda _: self.stop())
        self.reset_button.on_click(lambda _: self.reset())
        self.toolbar = widgets.HBox([self.start_button, self.stop_button, self.reset_button])
        self.toolbar.add_class("apx-toolbar")
        self.dashboard = widgets.HTML(value="")
        self.dashboard.add_class("apx-dashboard")
        self.dashboard.layout.width = "100%"
        self.canvas = widgets.GridBox([])
        self.canvas.add_class("apx-canvas")
        self.figures: list[bqplot.Figure] = []
        self.children = [self.toolbar, self.dashboard, self.canvas]
        self._sync_buttons()
        self._claim_address()

    # ------------------------------------------------------------------ API kept from the collaboration
    def create_canvas(
        self,
        nrows: int = 1,
        ncols: int = 1,
        *,
        height_ratios: Sequence[float] | None = None,
        width_ratios: Sequence[float] | None = None,
        figsize: tuple[float, float] = (9.0, 6.0),
        **kwargs: Any,
    ) -> list[bqplot.Figure]:
        """Build the plotting area: a grid of bqplot figures under the dashboard.

        Takes the layout arguments of matplotlib's ``subplots``; ``figsize`` is
        in inches (100 px each), ratios may also come in ``gridspec_kw``.
        Keyword arguments that are ``bqplot.Figure`` traits (``title``,
        ``fig_margin``...) go to every figure; other matplotlib options
        (``sharex``, ``squeeze``...) are accepted and ignored. The dashboard
        row on top is always there.

        Returns
        -------
        list of bqplot.Figure
            ``nrows * ncols`` empty figures, row by row; add marks and axes to
            them.
        """
        gridspec_kw = kwargs.pop("gridspec_kw", None) or {}
        height_ratios = height_ratios if height_ratios is not None else gridspec_kw.get("height_ratios")
        width_ratios = width_ratios if width_ratios is not None else gridspec_kw.get("width_ratios")
        # matplotlib-only options (sharex, squeeze, subplot_kw...) have no bqplot meaning here.
        figure_traits = set(bqplot.Figure.class_trait_names())
        ignored = sorted(k for k in kwargs if k not in figure_traits)
        if ignored:
            logger.debug("create_canvas: ignoring matplotlib options %s", ignored)
        kwargs = {k: v for k, v in kwargs.items() if k in figure_traits}
        nrows, ncols = int(nrows), int(ncols)
        if nrows < 1 or ncols < 1:
            msg = f"nrows and ncols must be >= 1, got nrows={nrows}, ncols={ncols}"
            raise ValueError(msg)
        width, height = figsize
        fig_kwargs = {"fig_margin": {"top": 30, "bottom": 45, "left": 55, "right": 20}}
        fig_kwargs.update(kwargs)
        figures = []
        for _ in range(nrows * ncols):
            fig = bqplot.Figure(**fig_kwargs)
            fig.layout.width = "auto"
            fig.layout.height = "auto"
            fig.layout.min_height = "150px"
            figures.append(fig)
        old_figures = list(self.canvas.children)
        self.canvas.children = figures
        layout = self.canvas.layout
        with layout.hold_sync():
            layout.grid_template_columns = _ratio_template(width_ratios, ncols)
            layout.grid_template_rows = _ratio_template(height_ratios, nrows)
            layout.width = f"{int(width * _DPI)}px"
            layout.height = f"{int(height * _DPI)}px"
        for fig in old_figures:  # a second create_canvas() replaces the first one's figures
            _close_widget_tree(fig)
        self.figures = figures
        return figures

    def display_message(self, x: float, y: float, text: str, **kwargs: Any) -> None:
        """Write ``text`` on the dashboard at the relative position ``(x, y)``.

        ``x`` and ``y`` go from 0 to 1, with ``y = 1`` at the top (as in
        matplotlib's axes coordinates); a later message at the same position
        replaces the earlier one. Keyword arguments: ``color``, ``fontsize``
        (points), ``fontweight``, and ``html=True`` to pass ``text`` as HTML
        instead of escaping it.
        """
        self._messages[(float(x), float(y))] = (str(text), dict(kwargs))
        self.dashboard.value = self._render_messages()

    def clear_messages(self) -> None:
        """Remove every dashboard message."""
        self._messages.clear()
        self.dashboard.value = ""

    def _render_messages(self) -> str:
        parts = []
        for (x, y), (text, opts) in sorted(self._messages.items(), key=lambda item: (-item[0][1], item[0][0])):
            body = text if opts.get("html") else html.escape(text).replace("\n", "<br>")
            style = [f"left:{100 * x:.1f}%", f"top:{100 * (1 - y):.1f}%", "position:absolute", "white-space:nowrap"]
            if "color" in opts:
                style.append(f"color:{opts['color']}")
            if "fontsize" in opts:
                style.append(f"font-size:{float(opts['fontsize']):g}pt")
            if "fontweight" in opts:
                style.append(f"font-weight:{opts['fontweight']}")
            parts.append(f'<div style="{";".join(style)}">{body}</div>')
        lines = max((t.count("\n") + t.count("<br") + 1 for t, _ in self._messages.values()), default=1)
        if self._errors:
            # Whatever the subclass displays, caught exceptions are shown too.
            error = html.escape(f"errors {self._errors}: {self._last_error}")
            parts.append(
                f'<div class="apx-errors" style="left:0;top:{1.4 * lines:.1f}em;position:absolute;'
                f'white-space:nowrap;color:#c0392b">{error}</div>'
            )
            lines += 1
        self._errors_shown = self._errors
        height = 1.4 * lines + 0.4
        return f'<div class="apx-messages" style="position:relative;line-height:1.4;min-height:{height:.1f}em">{"".join(parts)}</div>'

    def _listen(self) -> None:
        """The listening function, run on the listener thread by :meth:`start_listening`.

        It receives datagrams until :meth:`stop`, validating each as a readout
        record and counting what is malformed or lost. Not meant to be called
        directly.
        """
        try:
            self._listener.run()
        except Exception:  # the listener never raises per datagram; this is a last resort
            logger.exception("listener thread of %r ended on an error", self)

    def start_listening(self) -> None:
        """Bind the UDP socket and start :meth:`_listen` on a new thread.

        Raises the listener's clear error (e.g. the port is in use) here, in
        the caller's thread.
        """
        with self._lifecycle_lock:
            if self._listen_thread is not None and self._listen_thread.is_alive():
                return
            self._listener.open()
            self._listen_thread = threading.Thread(target=self._listen, name="astropix-monitor-listener", daemon=True)
            self._listen_thread.start()

    def start(self, refresh_interval: float = 0.5, update_pause: float = 0.005) -> AbstractMonitor:
        """Start monitoring and return at once (the monitor itself).

        Calls :meth:`setup`, :meth:`start_listening`, then starts the
        processing thread. Starting a running monitor does nothing.

        Parameters
        ----------
        refresh_interval : float
            Seconds between two display refreshes.
        update_pause : float
            Seconds the processing thread sleeps after each refresh.
        """
        with self._lifecycle_lock:
            if self.running:
                return self
            if refresh_interval <= 0:
                msg = f"refresh_interval must be > 0 s, got {refresh_interval}"
                raise ValueError(msg)
            self._claim_address()
            self.refresh_interval = float(refresh_interval)
            self.update_pause = max(0.0, float(update_pause))
            self.setup()
            self._stop_event.clear()
            self.start_listening()
            self._started_at = time.monotonic()
            self._last_refresh_counts = (self._n_readouts, self._n_hits)
            self._process_thread = threading.Thread(target=self._process_loop, name="astropix-monitor-processing", daemon=True)
            self.set_trait("running", True)
            self._process_thread.start()
            self._sync_buttons()
        return self

    def setup(self) -> None:
        """Called by :meth:`start` on every (re)start, before listening.

        Override to (re)initialise what must be fresh on each start; the base
        class does nothing. Histograms and counters are *not* cleared on a
        restart (use :meth:`reset`).
        """

    @abstractmethod
    def process_readout(self, readout: AbstractAstroPixReadout) -> int | Sequence[Any] | None:
        """Process one readout (on the processing thread).

        Return the number of hits it held (or the hits) to have them counted
        in ``num_hits``; :meth:`decode_readout` decodes a readout with the
        previous one's extra bytes.
        """

    @abstractmethod
    def update_display(self) -> None:
        """Refresh the plots and the dashboard (on the processing thread)."""

    # ------------------------------------------------------------------ lifecycle beyond the collaboration's API
    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads, process what was received, refresh, free the port.

        Safe to call twice, and from any thread. Returns None, so that
        ``mon.stop()`` at the end of a cell does not display the widget again.
        """
        with self._lifecycle_lock:
            self._listener.request_stop()
            current = threading.current_thread()
            if self._listen_thread is not None and self._listen_thread is not current:
                self._listen_thread.join(timeout)
            self._stop_event.set()
            if self._process_thread is not None and self._process_thread is not current:
                self._process_thread.join(timeout)
            self._listener.stop()
            leftover = [t for t in (self._listen_thread, self._process_thread) if t is not None and t.is_alive()]
            if leftover:
                logger.error("%r: threads still alive after stop(): %s", self, [t.name for t in leftover])
            self._listen_thread = None
            self._process_thread = None
            if self._started_at is not None:
                self._run_seconds += time.monotonic() - self._started_at
                self._started_at = None
            was_running = self.running
            self.set_trait("running", False)
            self.set_trait("readout_rate", 0.0)
            self.set_trait("hit_rate", 0.0)
            self._sync_buttons()
            if was_running:
                self._refresh_safely(final=True)

    def close(self) -> None:
        """Stop the monitor and close the widget and its figures."""
        self.stop()
        with _ACTIVE_LOCK:
            key = self._registry_key()
            ref = _ACTIVE.get(key)
            if ref is not None and ref() is self:
                del _ACTIVE[key]
        # Close every widget this monitor holds (figures, marks, scales,
        # buttons, layouts, styles...): ipywidgets keeps each open widget in
        # its registry, and their observers would keep the monitor alive.
        _close_widget_tree(self)

    def reset(self) -> None:
        """Clear every counter (and, in subclasses, every histogram)."""
        with self._processing_lock:
            self._listener.reset_counters()
            self._decoder.reset()
            self._n_readouts = 0
            self._n_hits = 0
            self._last_refresh_counts = (0, 0)
            self._errors = 0
            self._last_error = ""
            self._replay_lost = 0
            self._replay_malformed = 0
            self._replay_restarts = 0
            self._replay_ids.reset()
            self._replay_expect = -1
            self._run_seconds = 0.0
            if self._started_at is not None:
                self._started_at = time.monotonic()
            self.reset_histograms()
            self._update_traits(0.0)
        self._refresh_safely()

    def reset_histograms(self) -> None:
        """Clear the subclass's accumulators (called by :meth:`reset`)."""

    def refresh(self) -> None:
        """Update the counter traitlets and call :meth:`update_display` now.

        The processing thread does this every ``refresh_interval``; call it
        after feeding :meth:`process_batch` by hand (no threads).
        """
        self._refresh_safely()

    @property
    def port(self) -> int:
        """The UDP port (the one actually bound, when created with port 0)."""
        return self._listener.port

    def address(self) -> tuple[str, int]:
        """The UDP address (group, port) the monitor listens to."""
        return (self.group, self.port)

    @property
    def uptime(self) -> float:
        """Seconds spent running since creation (or the last reset)."""
        running = time.monotonic() - self._started_at if self._started_at is not None else 0.0
        return self._run_seconds + running

    def listener_stats(self):
        """A snapshot of the listener's counters (see :class:`ListenerStats`)."""
        return self._listener.stats()

    @property
    def error_count(self) -> int:
        """Exceptions caught on the processing path (e.g. in a ``process_readout``); shown on the dashboard."""
        return self._errors

    @property
    def last_error(self) -> str:
        """The last of those exceptions, as ``"Type: message"`` (``""`` if none)."""
        return self._last_error

    @property
    def flag_counts(self) -> dict[str, int]:
        """How many readouts raised each decoding flag."""
        return {name: int(n) for name, n in zip(FLAG_NAMES, self._decoder.flag_counts)}

    def decode_readout(self, readout: AbstractAstroPixReadout) -> list[AbstractAstroPixHit]:
        """Decode a readout, completing a hit split across it and the previous one.

        The previous readout's extra bytes are used when the ids are
        consecutive; recovered hits and decoding flags are counted.
        """
        decoder = self._decoder
        chained = decoder.last_id is not None and readout.readout_id == decoder.last_id + 1
        hits = readout.decode(decoder.last_extra if chained else None)
        status = int(readout.decoding_status())
        if status:
            for bit in range(8):
                if status >> bit & 1:
                    decoder.flag_counts[bit] += 1
            if status & DecodingFlag.ORPHAN_BYTES_MATCHED:
                decoder.num_recovered += 1
        decoder.last_id = readout.readout_id
        decoder.last_extra = readout.extra_bytes()
        decoder.num_readouts += 1
        decoder.num_hits += len(hits)
        return hits

    def process_batch(self, records: list[bytes]) -> None:
        """Process a batch of readout records (on the processing thread).

        The default parses each record and calls :meth:`process_readout`;
        subclasses may override it with a vectorised path giving the same
        result (and then count with :meth:`count_processed`).
        """
        for record in records:
            try:
                readout = self.readout_class.from_bytes(record)
            except ValueError as exc:  # the listener validated it already: not expected
                self._note_error(exc)
                continue
            try:
                result = self.process_readout(readout)
            except Exception as exc:
                self._note_error(exc)
                result = None
            if result is None:
                n_hits = 0
            elif isinstance(result, (int, np.integer)):
                n_hits = int(result)
            else:
                n_hits = len(result)
            self.count_processed(1, n_hits)

    def replay(self, records: Sequence[bytes]) -> None:
        """Process recorded readout records at once, with no network (a run review).

        Records that are not well-formed count as malformed packets, and the
        ids of the others are followed by the listener's rules (gaps are lost
        readouts, ids going back are DAQ restarts), as in a live stream; then
        the display is refreshed. Works on a stopped monitor, e.g. with the
        records of an .apx file.
        """
        good = []
        ids = []
        malformed = 0
        for record in records:
            try:
                ids.append(parse_record(record)[0])
            except ValueError:
                malformed += 1
                continue
            good.append(record)
        with self._processing_lock:
            self._replay_malformed += malformed
            self._replay_expect = self._replay_ids.follow(ids, self._replay_expect)
            lost, _, restarts = self._replay_ids.take()
            self._replay_lost = max(0, self._replay_lost + lost)
            self._replay_restarts += restarts
            self.process_batch(good)
        self.refresh()

    def count_processed(self, readouts: int, hits: int) -> None:
        """Add to the readout and hit counters (for ``process_batch`` overrides)."""
        self._n_readouts += int(readouts)
        self._n_hits += int(hits)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(group={self.group!r}, port={self.port})"

    # ------------------------------------------------------------------ internals
    def _registry_key(self) -> tuple:
        if is_multicast(self.group):
            return (self.group, self.port, type(self).__module__, type(self).__qualname__)
        return (self.group, self.port)

    def _claim_address(self) -> None:
        if self.port == 0:  # an OS-chosen port is nobody else's
            return
        key = self._registry_key()
        with _ACTIVE_LOCK:
            ref = _ACTIVE.get(key)
            old = ref() if ref is not None else None
            _ACTIVE[key] = weakref.ref(self)
        if old is not None and old is not self:
            logger.info("stopping %r: a new monitor takes over %s:%d", old, *key[:2])
            old.stop()

    def _start_from_button(self) -> None:
        try:
            self.start(self.refresh_interval, self.update_pause)
        except Exception as exc:  # shown on the dashboard: a click has no caller to raise to
            self._note_error(exc)
            logger.error("cannot start %r: %s", self, exc)
            self._refresh_safely()

    def _sync_buttons(self) -> None:
        self.start_button.disabled = bool(self.running)
        self.stop_button.disabled = not self.running

    def _note_error(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        if self._errors <= 10 or self._errors % 1000 == 0:
            logger.error("%r: %s (error %d)", self, self._last_error, self._errors, exc_info=exc)

    def _process_loop(self) -> None:
        last = time.monotonic()
        stop = self._stop_event
        listener = self._listener
        limit = min(self.MAX_BATCH, max(self.MIN_BATCH, 5000))
        while True:
            stopping = stop.is_set()
            records = listener.drain(limit)
            if records:
                with self._processing_lock:
                    began = time.perf_counter()
                    try:
                        self.process_batch(records)
                    except Exception as exc:
                        self._note_error(exc)
                    took = time.perf_counter() - began
                if took > 0 and (len(records) == limit or took > self.BATCH_SECONDS):
                    # Size the next batch to take about BATCH_SECONDS (grown
                    # only after a full batch, shrunk after any slow one).
                    limit = int(min(self.MAX_BATCH, max(self.MIN_BATCH, self.BATCH_SECONDS * len(records) / took)))
            elif stopping:
                break
            now = time.monotonic()
            if now - last >= self.refresh_interval:
                self._refresh_safely(now - last)
                last = now
                if self.update_pause:
                    time.sleep(self.update_pause)
            elif not records:
                stop.wait(min(0.005, self.refresh_interval))

    def _update_traits(self, dt: float) -> None:
        stats = self._listener.stats()
        n_r, n_h = self._n_readouts, self._n_hits
        prev_r, prev_h = self._last_refresh_counts
        with self.hold_trait_notifications():
            self.set_trait("num_readouts", n_r)
            self.set_trait("num_hits", n_h)
            if dt > 0:
                self.set_trait("readout_rate", (n_r - prev_r) / dt)
                self.set_trait("hit_rate", (n_h - prev_h) / dt)
            elif dt == 0.0 and n_r == 0:
                self.set_trait("readout_rate", 0.0)
                self.set_trait("hit_rate", 0.0)
            self.set_trait("lost_readouts", int(stats.lost) + self._replay_lost)
            self.set_trait("malformed_packets", int(stats.malformed) + self._replay_malformed)
            self.set_trait("dropped_readouts", int(stats.dropped))
            self.set_trait("recovered_hits", int(self._decoder.num_recovered))
            self.set_trait("daq_restarts", int(stats.restarts) + self._replay_restarts)
        self._last_refresh_counts = (n_r, n_h)

    def _refresh_safely(self, dt: float | None = None, final: bool = False) -> None:
        with self._processing_lock:
            if final:
                # Whatever the listener buffered before it stopped.
                records = self._listener.drain()
                if records:
                    try:
                        self.process_batch(records)
                    except Exception as exc:
                        self._note_error(exc)
            self._update_traits(-1.0 if dt is None else dt)
            try:
                self.update_display()
            except Exception as exc:
                self._note_error(exc)
            if self._errors != self._errors_shown:
                self.dashboard.value = self._render_messages()


class AstroPix4SimpleMonitor(AbstractMonitor):
    """The AstroPix 4 monitor: hit map, TOT spectrum, rates and a dashboard.

    ``AstroPix4SimpleMonitor().start()`` as the last line of a notebook cell
    shows it live. :attr:`hit_map` and :attr:`tot_hist` are boost-histogram
    copies that other cells can read, plot or fit while it runs.

    Parameters
    ----------
    group, port
        The UDP address of the stream (see :class:`AbstractMonitor`).
    tot_edges : array_like
        TOT bin edges in us (default: the collaboration's ``linspace(0, 500, 100)``).
    history_seconds : float
        Span of the rate strip chart.
    """

    NUM_COLS = 16
    NUM_ROWS = 35

    def __init__(
        self,
        group: str = LOCAL_HOST,
        port: int = DEFAULT_PORT,
        *,
        tot_edges: Sequence[float] = TOT_EDGES,
        history_seconds: float = 180.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(AstroPix4Readout, group, port, **kwargs)
        self._acc = HitAccumulator(self.NUM_ROWS, self.NUM_COLS, tot_edges=tot_edges)
        self._history = RateHistory(history_seconds)
        self._shown_chip: int | None = None
        self._last_colors: np.ndarray | None = None
        self._last_tot: np.ndarray | None = None
        self._last_overflow = -1
        self._last_dashboard = ""
        self._build_plots(np.asarray(tot_edges, dtype=float))

    # ------------------------------------------------------------------ data
    @property
    def hit_map(self):
        """Hit counts per pixel of all chips (boost-histogram; axes: column, then row), a copy."""
        return self._acc.hit_map()

    @property
    def tot_hist(self):
        """The TOT spectrum in us of all chips (boost-histogram with under/overflow), a copy."""
        return self._acc.tot_hist()

    def chip_hit_map(self, chip: int):
        """The hit map of one chip_id."""
        return self._acc.hit_map(chip)

    def chip_tot_hist(self, chip: int):
        """The TOT spectrum of one chip_id."""
        return self._acc.tot_hist(chip)

    @property
    def out_of_matrix_hits(self) -> int:
        """Decoded hits whose column (or row) lies outside the 35 x 16 matrix."""
        return self._acc.out_of_matrix

    @property
    def chips_seen(self) -> list[int]:
        """The chip_ids seen so far."""
        return sorted(self._acc.chips_seen)

    def process_readout(self, readout: AbstractAstroPixReadout) -> int:
        """Decode one readout (chaining split hits) and fill the histograms."""
        hits = self.decode_readout(readout)
        self._acc.fill_hits(hits)
        return len(hits)

    def process_batch(self, records: list[bytes]) -> None:
        """Decode a batch with :class:`~astropix_nbmonitor.fmt.BatchDecoder` and fill.

        Same hits as calling :meth:`process_readout` on each record.
        """
        decoder = self._decoder
        before = decoder.num_readouts
        hits = decoder.decode(records)
        self._acc.fill(hits)
        self.count_processed(decoder.num_readouts - before, len(hits))

    def reset_histograms(self) -> None:
        self._acc.reset()
        self._history.clear()
        self._last_colors = None
        self._last_tot = None

    # ------------------------------------------------------------------ display
    def _build_plots(self, tot_edges: np.ndarray) -> None:
        fig_map, fig_tot, fig_rate = self.create_canvas(1, 3, width_ratios=(1.0, 1.35, 1.35), figsize=(13.5, 5.2))
        # Hit map: columns on x, rows on y, row 0 at the top (as the offline hit map).
        col_scale = bqplot.OrdinalScale()
        row_scale = bqplot.OrdinalScale(reverse=True)
        self._color_scale = bqplot.ColorScale(scheme="viridis", min=0.0)
        self._tooltip = bqplot.Tooltip(fields=["row", "column", "color"], labels=["row", "column", "hits"], formats=["", "", ".0f"])
        self.heatmap = bqplot.GridHeatMap(
            row=np.arange(self.NUM_ROWS, dtype=np.float64),
            column=np.arange(self.NUM_COLS, dtype=np.float64),
            color=np.zeros((self.NUM_ROWS, self.NUM_COLS)),
            scales={"row": row_scale, "column": col_scale, "color": self._color_scale},
            stroke="white",
            null_color="#440154",
            tooltip=self._tooltip,
        )
        ticks = list(range(0, self.NUM_ROWS, 5))
        fig_map.axes = [
            bqplot.Axis(scale=col_scale, label="column", tick_values=np.arange(0, self.NUM_COLS, 3)),
            bqplot.Axis(scale=row_scale, side="left", label="row", tick_values=np.array(ticks)),
            bqplot.ColorAxis(scale=self._color_scale, side="right", label="hits", tick_format=".3~s"),
        ]
        fig_map.marks = [self.heatmap]
        fig_map.title = "Hit map"
        fig_map.fig_margin = {"top": 30, "bottom": 45, "left": 45, "right": 70}
        fig_map.add_class("apx-hitmap")
        # TOT spectrum.
        x_tot = bqplot.LinearScale(min=float(tot_edges[0]), max=float(tot_edges[-1]))
        y_tot = bqplot.LinearScale(min=0.0)
        self._tot_centers = 0.5 * (tot_edges[1:] + tot_edges[:-1])
        self.tot_bars = bqplot.Bars(
            x=self._tot_centers,
            y=np.zeros(len(self._tot_centers)),
            scales={"x": x_tot, "y": y_tot},
            padding=0.0,
            colors=["#3b6ea8"],
            stroke="#3b6ea8",
        )
        fig_tot.axes = [
            bqplot.Axis(scale=x_tot, label="TOT [us]"),
            bqplot.Axis(scale=y_tot, side="left", label="hits", tick_format=".3~s"),
        ]
        fig_tot.marks = [self.tot_bars]
        fig_tot.title = "TOT spectrum"
        fig_tot.add_class("apx-tot")
        # Rates strip chart.
        x_rate = bqplot.LinearScale()
        y_rate = bqplot.LinearScale(min=0.0)
        self.rate_lines = bqplot.Lines(
            x=np.zeros(0, dtype=np.float32),
            y=np.zeros((2, 0), dtype=np.float32),
            scales={"x": x_rate, "y": y_rate},
            colors=["#3b6ea8", "#d9822b"],
            labels=["readouts/s", "hits/s"],
            display_legend=True,
        )
        fig_rate.axes = [
            bqplot.Axis(scale=x_rate, label="seconds ago"),
            bqplot.Axis(scale=y_rate, side="left", label="rate [1/s]", tick_format=".3~s"),
        ]
        fig_rate.marks = [self.rate_lines]
        fig_rate.title = "Rates"
        fig_rate.legend_location = "bottom-right"
        fig_rate.add_class("apx-rates")
        # Controls: colour scale and chip selector.
        self.scale_toggle = widgets.ToggleButtons(
            options=["linear", "log"], value="linear", description="hit map scale", style={"description_width": "initial"}
        )
        self.scale_toggle.style.button_width = "60px"
        self.scale_toggle.layout.width = "auto"
        self.scale_toggle.add_class("apx-scale")
        self.scale_toggle.observe(lambda _: self._redraw_now(), names="value")
        self.chip_selector = widgets.Dropdown(options=[("all chips", -1)], value=-1, description="chip_id")
        self.chip_selector.layout.display = "none"
        self.chip_selector.layout.width = "auto"
        self.chip_selector.add_class("apx-chip")
        self.chip_selector.observe(self._on_chip, names="value")
        self.toolbar.children = [*self.toolbar.children, self.scale_toggle, self.chip_selector]

    def _on_chip(self, change: dict[str, Any]) -> None:
        self._shown_chip = None if change["new"] == -1 else int(change["new"])
        self._redraw_now()

    def _redraw_now(self) -> None:
        self._last_colors = None
        self._last_tot = None
        if not self.running:
            self._refresh_safely()

    def update_display(self) -> None:
        """Send the new hit map, TOT spectrum, rates and dashboard to the front end.

        Only what changed since the last refresh is sent.
        """
        chip = self._shown_chip
        counts = self._acc.hit_map_counts(chip).astype(np.float64)
        log = self.scale_toggle.value == "log"
        colors = np.log10(1.0 + counts) if log else counts
        tot, _, overflow = self._acc.tot_counts(chip)
        if self.readout_rate or self.hit_rate or self.running:
            self._history.add(self.readout_rate, self.hit_rate)
        t, r_rate, h_rate = self._history.arrays()
        if self._last_colors is None or not np.array_equal(colors, self._last_colors):
            with self.heatmap.hold_sync():
                self._color_scale.max = float(max(colors.max(), 1.0))
                self._tooltip.labels = ["row", "column", "log10(1+hits)" if log else "hits"]
                self._tooltip.formats = ["", "", ".2f" if log else ".0f"]
                self.figures[0].axes[2].label = "log10(1 + hits)" if log else "hits"
                self.heatmap.color = colors
            self._last_colors = colors
        if self._last_tot is None or not np.array_equal(tot, self._last_tot) or overflow != self._last_overflow:
            self.tot_bars.y = tot.astype(np.float64)
            self.figures[1].title = f"TOT spectrum (overflow > {self._tot_centers[-1] + 0.5 * (self._tot_centers[1] - self._tot_centers[0]):g} us: {overflow})"
            self._last_tot = tot
            self._last_overflow = overflow
        if len(t):
            with self.rate_lines.hold_sync():
                self.rate_lines.x = t.astype(np.float32)
                self.rate_lines.y = np.vstack([r_rate, h_rate]).astype(np.float32)
        chips = self.chips_seen
        if len(chips) > 1:
            options = [("all chips", -1)] + [(f"chip {c}", c) for c in chips]
            if list(self.chip_selector.options) != options:
                self.chip_selector.options = options
            self.chip_selector.layout.display = ""
        text = self._dashboard_html()
        if text != self._last_dashboard:
            self.display_message(0.0, 1.0, text, html=True)
            self._last_dashboard = text

    def _dashboard_html(self) -> str:
        stats = self._listener.stats()
        group, port = self.address()
        state = '<b style="color:#2a7d2a">running</b>' if self.running else '<b style="color:#a33">stopped</b>'
        up = self.uptime
        uptime = f"{int(up // 3600)}:{int(up % 3600 // 60):02d}:{int(up % 60):02d}"
        warn = ""
        if self.running:
            last = stats.last_datagram_time
            if last is None and up > NO_DATA_WARNING_S:
                warn = f"no data received in {up:.0f} s: is the DAQ sending to {group}:{port}?"
            elif last is not None and time.time() - last > NO_DATA_WARNING_S:
                warn = f"no data for {time.time() - last:.0f} s"
        flags = ", ".join(f"{name} {n}" for name, n in self.flag_counts.items() if n) or "none"
        bad = lambda n: f'<b style="color:#c0392b">{n}</b>' if n else f"{n}"  # noqa: E731
        lines = [
            f"Connected to address ({group!r}, {port}), {state}, uptime {uptime}",
            f'<span class="apx-exposure">{html.escape(self._listener.exposure())}</span>',
            f'<span class="apx-num-readouts">{self.num_readouts}</span> readouts '
            f'(<span class="apx-num-hits">{self.num_hits}</span> hits) processed; '
            f"{self.readout_rate:,.1f} readouts/s, {self.hit_rate:,.1f} hits/s",
            f'lost <span class="apx-lost">{bad(self.lost_readouts)}</span>, '
            f'malformed <span class="apx-malformed">{bad(self.malformed_packets)}</span>, '
            f'dropped <span class="apx-dropped">{bad(self.dropped_readouts)}</span>, '
            f"recovered split hits {self.recovered_hits}, out-of-matrix hits {bad(self.out_of_matrix_hits)}, "
            f"DAQ restarts {stats.restarts}, out of order {stats.out_of_order}",
            f"decoding flags: {html.escape(flags)}",
        ]
        if warn:
            lines.append(f'<span class="apx-warning" style="color:#c0392b;font-weight:bold">&#9888; {html.escape(warn)}</span>')
        return "<br>".join(lines)
