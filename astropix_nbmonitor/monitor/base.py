"""The collaboration's monitor API as a widget, delegating to a headless engine.

:class:`AbstractMonitor` keeps every name, signature and meaning of
``astropix_analysis.monitor.AbstractMonitor`` (``create_canvas``,
``display_message``, ``_listen``, ``start_listening``, ``start``, ``setup``,
``process_readout``, ``update_display``), but it is an ipywidgets widget and
``start()`` returns at once. Receiving, decoding, accumulating and counting
are done by its :class:`~astropix_nbmonitor.engine.MonitorEngine`
(``mon.engine``); the widget draws: a toolbar, the dashboard (the standard
status lines of :mod:`.board`, then the subclass's messages) and a canvas of
bqplot figures, usually filled by :mod:`.panels`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
import threading
import time
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import bqplot
import ipywidgets as widgets
import numpy as np
from traitlets import Bool, Float, Int, List

from ..engine import MonitorEngine
from ..hist import TOT_EDGES
from ..listener import DEFAULT_BUFFER_BYTES
from ..record import DEFAULT_MAX_DATA_BYTES
from ..sock import DEFAULT_PORT, DEFAULT_RCVBUF, LOCAL_HOST
from ..status import STATUS_TABLE, Status
from . import board, registry
from .liveness import Liveness, ViewTracker, cell_watch, describe_pause, resend_state
from .logbook import LogbookMixin
from .matrix import stack_underlays
from .shift import ShiftMixin
from .tree import walk_widgets

if TYPE_CHECKING:
    from ..engine import EngineState
    from ..fmt import AbstractAstroPixHit, AbstractAstroPixReadout
    from .panels import Panel

__all__ = ["AbstractMonitor"]

logger = logging.getLogger(__name__)

#: Pixels per inch used to turn matplotlib-style figure sizes into CSS sizes.
_DPI = 100


class _MonitorMeta(ABCMeta, type(widgets.VBox)):
    """Metaclass of a widget that is also an abstract base class."""


def _status_traits() -> dict[str, Any]:
    """One read-only traitlet per row of the status table that names one."""
    traits: dict[str, Any] = {}
    for counter in STATUS_TABLE:
        if counter.trait:
            if counter.kind == "count":
                traits[counter.trait] = Int(0, read_only=True, help=counter.label)
            else:
                traits[counter.trait] = Float(0.0, read_only=True, help=counter.label)
    return traits


def _ratio_template(ratios: Sequence[float] | None, n: int) -> str:
    if ratios is None:
        return " ".join(["minmax(0, 1fr)"] * n)
    if len(ratios) != n:
        msg = f"expected {n} ratios, got {len(ratios)}: {list(ratios)}"
        raise ValueError(msg)
    return " ".join(f"minmax(0, {float(r):g}fr)" for r in ratios)


def _close_widget_tree(root: widgets.Widget) -> None:
    """Close ``root`` and every widget reachable from its traits, and from the root's attributes.

    Below the root only traits are followed (children, marks, axes, scales,
    layouts, styles...), so a widget that a child merely refers to in a plain
    attribute is left alone.
    """
    for item in walk_widgets(root, root_attributes=True):
        if item is root:
            widgets.Widget.close(item)  # the root's own close() is what called us
        elif item.comm is not None:
            item.close()


def _hits_of(result: Any) -> int:
    """What a ``process_readout`` returned, as a number of hits."""
    if result is None:
        return 0
    if isinstance(result, (int, np.integer)):
        return int(result)
    return len(result)


class AbstractMonitor(ShiftMixin, LogbookMixin, widgets.VBox, metaclass=_MonitorMeta):
    """Base class of the online monitors: a widget fed by a monitor engine.

    Subclasses write :meth:`process_readout` and :meth:`update_display`, and
    usually call :meth:`create_canvas` in their ``__init__``; see
    :class:`~astropix_nbmonitor.monitor.AstroPix4SimpleMonitor` and
    ``notebooks/custom_monitor.ipynb``.

    Parameters
    ----------
    readout_class : type
        The readout class of the stream, e.g. ``AstroPix4Readout`` (the
        collaboration's own classes work too).
    group : str
        ``127.0.0.1`` (or another local unicast address) to bind to, or a
        multicast group to join.
    port : int
        The UDP port.
    buffer_size, buffer_bytes : int
        Bounds of the listener's buffer, in readouts and in bytes: what
        arrives while it is full is dropped and counted (``dropped_readouts``).
    rcvbuf : int or None
        Socket receive buffer to ask of the kernel (default 16 MiB).
    interface : str or None
        Interface address on which to join a multicast group.
    max_data_bytes : int
        Records with more data bytes than any board buffer (default 4096)
        are counted as oversize and kept out of the plots.
    tot_edges : array_like
        TOT bin edges in us of the engine's TOT spectrum.
    history_seconds : float
        Span of the rate history.
    hub : str or list of str, optional
        Attach to a monitor hub (``astropix-nbmonitor hub``, or another
        notebook's ``mon.publish()``) instead of receiving UDP: the widget
        shows the hub's histograms and counters (several hubs: their sum,
        each hub's counters listed apart), and a subclass's
        ``process_readout`` gets the hub's relayed records. Nothing is bound
        here, so any number of viewers can show one stream.
    token : str, optional
        The hub's command token: with it, Start, Stop and Reset act on the
        hub; without it they are disabled (a read-only viewer).

    Notes
    -----
    Life of a monitor: ``start()`` calls ``setup()``, ``start_listening()``
    (which binds the socket and runs ``_listen()`` on a thread), then starts
    the engine's processing thread and returns ``self``. That thread drains
    the received records in batches, hands each readout to
    ``process_readout`` (through :meth:`process_batch`) and, every
    ``refresh_interval``, updates the traitlets and calls
    ``update_display()``, then sleeps ``update_pause``. ``process_readout``
    and ``update_display`` always run on that one thread, one at a time, so
    subclasses need no locks. ``stop()`` returns within about a second
    whatever the backlog (see :meth:`MonitorEngine.stop`).

    Every counter of :data:`~astropix_nbmonitor.status.STATUS_TABLE` that
    names a traitlet is one here (``num_readouts``, ``num_hits``,
    ``readout_rate``, ``hit_rate``, ``lost_readouts``, ``malformed_packets``,
    ``oversize_records``, ``dropped_readouts``, ``out_of_order``,
    ``daq_restarts``, ``missed_while_stopped``, ``recovered_hits``,
    ``empty_readouts``), updated at every refresh.
    """

    #: True while the threads run.
    running = Bool(False, read_only=True)
    #: A viewer of a hub: False before its first update and after two of the
    #: hub's refresh intervals without one (always True for a local monitor).
    hub_connected = Bool(True, read_only=True)
    #: False while no view of the widget is shown (no page heartbeat for
    #: :data:`~astropix_nbmonitor.monitor.liveness.VIEW_TIMEOUT_S` s): display
    #: updates are paused meanwhile, counting goes on (see :mod:`.liveness`).
    view_shown = Bool(True, read_only=True)
    #: Seconds between two display refreshes.
    refresh_interval = Float(0.5)
    #: While no datagram arrives (nothing counted, nothing changed), a running monitor's periodic
    #: display refreshes come at most this often: its idle CPU is then half of what it was.
    IDLE_REFRESH_S: ClassVar[float] = 1.0
    #: The time window the histogram views show: 0 = the whole run, otherwise
    #: the last ``window`` seconds (at most the engine's ``max_window``; on a
    #: viewer of a hub, the hub's, at the hub's clock of its last state).
    window = Float(0.0)
    #: The latched alarms, oldest first: dicts of name, message, first, last,
    #: count, active, acknowledged (see :mod:`astropix_nbmonitor.alarms`).
    alarms = List(read_only=True)
    #: A viewer of a hub subscribes to the hub's relayed records and hands
    #: them to ``process_readout`` (a view drawing only the hub's histograms
    #: sets this False).
    RELAY_RECORDS = True
    # The counters' traitlets, one per row of the status table that names one.
    locals().update(_status_traits())

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
        max_data_bytes: int = DEFAULT_MAX_DATA_BYTES,
        tot_edges: Sequence[float] = TOT_EDGES,
        history_seconds: float = 180.0,
        hub: str | Sequence[str] | None = None,
        token: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.readout_class = readout_class
        self.hub = hub
        self.publisher: Any = None
        if hub is not None:
            from ..hub import HubEngine  # pyzmq is needed by viewers and hubs only

            self.engine = HubEngine(
                hub, token=token, readout_class=readout_class, records=self.RELAY_RECORDS, process=self._process_records
            )
        else:
            self.engine = MonitorEngine(
                readout_class,
                str(group),
                int(port),
                tot_edges=tot_edges,
                history_seconds=history_seconds,
                process=self._process_records,
                buffer_size=buffer_size,
                buffer_bytes=buffer_bytes,
                rcvbuf=rcvbuf,
                interface=interface,
                max_data_bytes=max_data_bytes,
            )
        if hub is None:
            # Reads catch up (process the listener's buffer on the reader's thread) only when the
            # processing is the engine's own: see MonitorEngine and _engine_processing().
            self.engine.catch_up_on_read = self._engine_processing()
        self.engine.add_refresh_callback(self._on_refresh)
        self.group = self.engine.group
        self._lifecycle_lock = threading.RLock()
        self._messages: dict[tuple[float, float], tuple[str, dict[str, Any]]] = {}
        self._status: Status = self.engine.status()
        #: The status read by the refresh under way (None between refreshes).
        self._refresh_status: Status | None = None
        #: (change_mark, time) of the last periodic refresh done (see _idle_refresh).
        self._idle_mark: tuple[Any, float] | None = None
        self.panels: list[Panel] = []
        self._init_shift(
            int(getattr(self, "NUM_ROWS", getattr(readout_class, "NUM_ROWS", 35))),
            int(getattr(self, "NUM_COLS", getattr(readout_class, "NUM_COLS", 16))),
        )
        self._build_toolbar()
        # Beats to the page, heartbeats from it (monitor/liveness.py).
        self.liveness = Liveness()
        self.liveness.set_refresh_interval(self.refresh_interval)
        self.liveness.on_heartbeat(self._on_heartbeat)
        # One HTML widget per block: a refresh sends the lines that changed; the block that
        # changes at every refresh goes with the liveness element's beat (one message).
        self.dashboard = board.Dashboard(lead=self.liveness)
        self.dashboard.add_class("apx-dashboard")
        self.dashboard.layout.width = "100%"
        self.canvas = widgets.GridBox([])
        self.canvas.add_class("apx-canvas")
        self.figures: list[bqplot.Figure] = []
        self.views = ViewTracker()
        self._paused_at: float | None = None
        cell_watch.register()
        self.add_class("apx-monitor")
        self.children = [self.toolbar, self.dashboard, self.canvas]
        self.observe(self._on_refresh_interval, names="refresh_interval")
        self.observe(self._on_window, names="window")
        self._sync_buttons()
        self._render_dashboard()
        if self.hub is None:
            registry.claim(self, self.group, self.port)
        else:
            self.set_trait("hub_connected", False)

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
        in inches (100 px each): its height is the canvas's height, its width
        the canvas's *largest* width (the canvas shrinks to fit a narrower
        page, so nothing is clipped). Ratios may also come in ``gridspec_kw``.
        Keyword arguments that are ``bqplot.Figure`` traits (``title``,
        ``fig_margin``...) go to every figure; other matplotlib options
        (``sharex``, ``squeeze``...) are accepted and ignored.

        Returns
        -------
        list of bqplot.Figure
            ``nrows * ncols`` empty figures, row by row; add marks and axes to
            them (or give them to panels).
        """
        gridspec_kw = kwargs.pop("gridspec_kw", None) or {}
        height_ratios = height_ratios if height_ratios is not None else gridspec_kw.get("height_ratios")
        width_ratios = width_ratios if width_ratios is not None else gridspec_kw.get("width_ratios")
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
            fig.layout.min_width = "0px"
            fig.layout.min_height = "150px"
            figures.append(fig)
        old_figures = [c for c in self.canvas.children if isinstance(c, bqplot.Figure)]
        old_layers = [c for c in self.canvas.children if not isinstance(c, bqplot.Figure)]
        self.canvas.children = figures
        layout = self.canvas.layout
        with layout.hold_sync():
            layout.grid_template_columns = _ratio_template(width_ratios, ncols)
            layout.grid_template_rows = _ratio_template(height_ratios, nrows)
            layout.width = "100%"
            layout.max_width = f"{int(width * _DPI)}px"
            layout.height = f"{int(height * _DPI)}px"
        for fig in old_figures + old_layers:  # a second create_canvas() replaces the first one's figures
            _close_widget_tree(fig)
        self.figures = figures
        return figures

    def display_message(self, x: float, y: float, text: str, **kwargs: Any) -> None:
        """Write ``text`` on the dashboard at the relative position ``(x, y)``.

        ``x`` and ``y`` go from 0 to 1, with ``y = 1`` at the top (as in
        matplotlib's axes coordinates); a later message at the same position
        replaces the earlier one. Keyword arguments: ``color``, ``fontsize``
        (points), ``fontweight``, and ``html=True`` to pass ``text`` as HTML
        instead of escaping it. The messages come under the standard status
        lines every monitor shows.
        """
        self._messages[(float(x), float(y))] = (str(text), dict(kwargs))
        self._render_dashboard()

    def clear_messages(self) -> None:
        """Remove every dashboard message (the status lines stay)."""
        self._messages.clear()
        self._render_dashboard()

    def _listen(self) -> None:
        """The listening function, run on the listener thread by :meth:`start_listening`.

        It receives datagrams until :meth:`stop`, validating each as a readout
        record and counting what is malformed or lost. Not meant to be called
        directly.
        """
        self.engine.listen()

    def start_listening(self) -> None:
        """Bind the UDP socket and start :meth:`_listen` on a new thread.

        Raises the listener's clear error (e.g. the port is in use) here, in
        the caller's thread.
        """
        self.engine.start_listening(target=self._listen)

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
            if self.engine.running:
                return self
            if not refresh_interval > 0:
                msg = f"refresh_interval must be > 0 s, got {refresh_interval}"
                raise ValueError(msg)
            if self.hub is None:
                registry.claim(self, self.group, self.port)
            self.refresh_interval = float(refresh_interval)
            self.engine.update_pause = max(0.0, float(update_pause))
            self.setup()
            self.start_listening()
            self.engine.start_processing()
            self.set_trait("running", True)
            self._sync_buttons()
            self.liveness.pulse(True)
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
        """Refresh the plots (on the processing thread); the status lines refresh by themselves."""

    # ------------------------------------------------------------------ lifecycle beyond the collaboration's API
    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads and free the port, within about a second whatever the backlog.

        Readouts received but not processed are finished on the processing
        thread for at most half a second, the rest dropped and counted. Safe
        to call twice, and from any thread. Returns None, so that
        ``mon.stop()`` at the end of a cell does not display the widget again.
        """
        with self._lifecycle_lock:
            self.engine.stop(timeout)
            self.set_trait("running", False)
            self._sync_buttons()
            self.liveness.state = "stopped"
            self._sync_traits(self.engine.status())
            self._render_dashboard()

    def close(self) -> None:
        """Stop the monitor (and its publisher) and close the widget and its figures."""
        if "_lifecycle_lock" not in self.__dict__:  # refused in __init__ (a bad argument): nothing was started
            widgets.VBox.close(self)
            return
        self.stop()
        if self.player is not None:
            self.player.stop()
        if self.publisher is not None:
            self.publisher.stop()
        self.engine.close()
        if self.hub is None:
            registry.release(self, self.group, self.port)
        for panel in self.panels:
            for widget in panel.own_widgets():
                _close_widget_tree(widget)
        # Close every widget this monitor holds (figures, marks, scales,
        # buttons, layouts, styles...): ipywidgets keeps each open widget in
        # its registry, and their observers would keep the monitor alive.
        _close_widget_tree(self)

    def reset(self) -> None:
        """Clear every counter and histogram (also a subclass's, by :meth:`reset_histograms`).

        A viewer of a hub resets the hub (it needs the hub's token).
        """
        self.engine.reset(also=self.reset_histograms)
        for panel in self.panels:
            panel.invalidate()
        self.refresh()

    def reset_histograms(self) -> None:
        """Clear the subclass's own accumulators (called by :meth:`reset`, under the engine's lock)."""

    def refresh(self) -> None:
        """Update the counter traitlets and call :meth:`update_display` now.

        The processing thread does this every ``refresh_interval``; call it
        after feeding :meth:`process_batch` by hand (no threads).
        """
        self.engine.refresh()

    def redraw(self) -> None:
        """Redraw now if stopped (a control changed); a running monitor redraws at its next refresh."""
        self._idle_mark = None  # that next refresh is not skipped as idle
        if not self.engine.running:
            self.refresh()

    def replay(self, records: Sequence[bytes]) -> None:
        """Process recorded readout records at once, with no network (a run review).

        The records are checked and counted exactly as live datagrams are
        (malformed, oversize, lost, DAQ restarts), then processed, and the
        display is refreshed. Works on a stopped monitor, e.g. with the
        records of an .apx file.
        """
        self.engine.replay(records)

    @property
    def port(self) -> int:
        """The UDP port (the one actually bound, when created with port 0)."""
        return self.engine.port

    def address(self) -> tuple[str, int]:
        """The UDP address (group, port) the monitor listens to."""
        return self.engine.address()

    @property
    def uptime(self) -> float:
        """Seconds spent running since creation (or the last reset)."""
        return self.engine.uptime

    def status(self) -> Status:
        """Every counter now (the engine's :meth:`~MonitorEngine.status`)."""
        return self.engine.status()

    def state(self) -> EngineState:
        """A consistent copy of the engine's histograms and counters."""
        return self.engine.state()

    @property
    def windows_available(self) -> bool:
        """True when the engine keeps time windows (a local monitor's, or a viewer's from the hub's slices)."""
        return hasattr(self.engine, "windows")

    def view_state(self) -> EngineState:
        """The state the views draw: the histograms of the chosen :attr:`window` (0: the whole run).

        The whole run's histograms are copied again only when the engine's
        ``change_mark()`` moved since the last copy: an idle refresh reuses
        them (with the status and the rates of now).
        """
        if self.window and self.windows_available:
            return self.engine.state(window=self.window)
        engine = self.engine
        if not isinstance(engine, MonitorEngine):  # a hub viewer's engine
            return engine.state()
        mark = engine.change_mark()  # before the copy: a record arriving meanwhile moves the next mark
        cached = getattr(self, "_view_cache", None)
        if cached is not None and cached[0] == mark and cached[1].running == engine.running:
            t, readout_rate, hit_rate = engine.history.arrays()
            status = self._refresh_status if self._refresh_status is not None else engine.status()
            return dataclasses.replace(
                cached[1], time=time.time(), status=status, rates=np.vstack([t, readout_rate, hit_rate])
            )
        state = engine.state()
        self._view_cache = (mark, state)
        return state

    def listener_stats(self):
        """A snapshot of the listener's counters (see :class:`ListenerStats`); None for a viewer of a hub."""
        listener = getattr(self.engine, "listener", None)
        return None if listener is None else listener.stats()

    def publish(self, url: str = "tcp://127.0.0.1:5557", **options: Any):
        """Make this monitor a hub: other notebooks, Voila screens and scripts can attach to ``url``.

        Returns the :class:`~astropix_nbmonitor.hub.HubPublisher` (its
        ``token`` lets a viewer control this monitor). Binding another
        interface than loopback is stated on the dashboard. ``close()`` stops it.
        """
        if self.hub is not None:
            msg = "a viewer of a hub cannot publish; publish from the hub's own monitor"
            raise RuntimeError(msg)
        from ..hub import HubPublisher

        if self.publisher is not None:
            self.publisher.stop()
        self.publisher = HubPublisher(self.engine, url, **options).start()
        self._render_dashboard()
        return self.publisher

    @property
    def error_count(self) -> int:
        """Exceptions caught on the processing path (e.g. in a ``process_readout``); shown on the dashboard."""
        return self.engine.error_count

    @property
    def last_error(self) -> str:
        """The last of those exceptions, as ``"Type: message"`` (``""`` if none)."""
        return self.engine.last_error

    @property
    def flag_counts(self) -> dict[str, int]:
        """How many readouts raised each decoding flag."""
        return self.engine.decoder.flag_dict()

    def decode_readout(self, readout: AbstractAstroPixReadout) -> list[AbstractAstroPixHit]:
        """Decode a readout, completing a hit split across it and the previous one.

        The previous readout's extra bytes are used when the ids are
        consecutive; recovered hits, decoding flags and empty readouts are
        counted.
        """
        return self.engine.decode_readout(readout)

    def process_batch(self, records: list[bytes]) -> None:
        """Process a batch of readout records (on the processing thread).

        The default parses each record and calls :meth:`process_readout`;
        subclasses may override it with a vectorised path giving the same
        result (and then count with :meth:`count_processed`).
        """
        engine = self.engine
        collecting = getattr(engine, "collecting", None)  # a hub viewer's engine fills nothing
        from_bytes, process_readout, count = self.readout_class.from_bytes, self.process_readout, engine.count_processed
        # The hits a process_readout hands to engine.accumulate are filled once
        # for the whole batch (same bins), not readout by readout.
        with collecting() if collecting is not None else contextlib.nullcontext():
            for record in records:
                try:
                    readout = from_bytes(record)
                except ValueError as exc:  # the listener validated it already: not expected
                    engine.note_error(exc)
                    continue
                try:
                    result = process_readout(readout)
                except Exception as exc:
                    engine.note_error(exc)
                    result = None
                count(1, _hits_of(result))

    def count_processed(self, readouts: int, hits: int) -> None:
        """Add to the readout and hit counters (for ``process_batch`` overrides)."""
        self.engine.count_processed(readouts, hits)

    # ------------------------------------------------------------------ panels
    def add_panel(self, panel: Panel) -> Panel:
        """Have ``panel`` updated by :meth:`update_panels`; its controls join the toolbar."""
        self.panels.append(panel)
        children = list(self.canvas.children)
        figure = getattr(panel, "figure", None)
        if getattr(figure, "_apx_underlay", None) is not None and figure in children:
            self.canvas.children = stack_underlays(children)  # the hit map's colour canvas in its figure's cell
        if panel.controls:
            self.toolbar.children = [*self.toolbar.children, *panel.controls]
        return panel

    def update_panels(self, state: EngineState | None = None) -> None:
        """Update every panel from ``state`` (default: the engine's state now)."""
        if not self.panels:
            return
        state = self.view_state() if state is None else state
        for panel in self.panels:
            panel.update(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(group={self.group!r}, port={self.port})"

    # ------------------------------------------------------------------ internals
    def _build_toolbar(self) -> None:
        self.start_button = widgets.Button(description="Start", icon="play", tooltip="Start monitoring")
        self.stop_button = widgets.Button(description="Stop", icon="stop", tooltip="Stop monitoring")
        self.reset_button = widgets.Button(description="Reset", icon="refresh", tooltip="Clear histograms and counters")
        for button, name in ((self.start_button, "start"), (self.stop_button, "stop"), (self.reset_button, "reset")):
            button.add_class(f"apx-{name}")
            button.layout.width = "90px"
        self.start_button.on_click(lambda _: self._on_button("start"))
        self.stop_button.on_click(lambda _: self._on_button("stop"))
        self.reset_button.on_click(lambda _: self._on_button("reset"))
        self.ack_button = widgets.Button(description="Acknowledge", icon="check", tooltip="Acknowledge the latched alarms")
        self.ack_button.add_class("apx-acknowledge")
        self.ack_button.layout.width = "130px"
        self.ack_button.on_click(lambda _: self.acknowledge())
        self.toolbar = widgets.HBox(
            [self.start_button, self.stop_button, self.reset_button, self.ack_button],
            layout=widgets.Layout(align_items="center", flex_flow="row wrap"),
        )
        self.toolbar.add_class("apx-toolbar")

    def _process_records(self, records: list[bytes]) -> None:
        self.process_batch(records)

    def _engine_processing(self) -> bool:
        """True when processing a batch is exactly the engine's own step (``engine.process_records``).

        That is ``AstroPix4SimpleMonitor`` with neither ``process_readout``
        nor ``process_batch`` overridden: then a read may process buffered
        records on its own thread (``MonitorEngine.catch_up``). A user's
        ``process_readout`` or ``process_batch`` runs on the processing
        thread only.
        """
        from .astropix4 import AstroPix4SimpleMonitor  # the subclass whose batch step is the engine's

        cls = type(self)
        return (
            issubclass(cls, AstroPix4SimpleMonitor)
            and cls.process_batch is AstroPix4SimpleMonitor.process_batch
            and cls.process_readout is AstroPix4SimpleMonitor.process_readout
            and cls._process_records is AbstractMonitor._process_records
        )

    def _on_refresh_interval(self, change: dict[str, Any]) -> None:
        self.engine.refresh_interval = float(change["new"])
        self.liveness.set_refresh_interval(float(change["new"]))

    def _on_window(self, change: dict[str, Any]) -> None:
        """A new window: check it, then redraw every panel."""
        seconds = float(change["new"])
        if seconds < 0 or (seconds and self.windows_available and seconds > self.engine.windows.max_seconds):
            limit = self.engine.windows.max_seconds if self.windows_available else 0
            self.set_trait("window", float(change["old"]))
            msg = f"window must be 0 (whole run) or up to {limit:g} s, got {seconds:g}"
            raise ValueError(msg)
        for panel in self.panels:
            panel.invalidate()
        self.redraw()

    def _on_button(self, name: str) -> None:
        """A click: on a local monitor, start/stop/reset it; on a viewer, send the command to the hub."""
        try:
            if self.hub is not None:
                {"start": self.engine.start_hub, "stop": self.engine.stop_hub, "reset": self.reset}[name]()
            elif name == "start":
                self.start(self.refresh_interval, self.engine.update_pause)
            elif name == "stop":
                self.stop()
            else:
                self.reset()
        except Exception as exc:  # shown on the dashboard: a click has no caller to raise to
            self.engine.note_error(exc)
            logger.error("%s on %r failed: %s", name, self, exc)
            self.refresh()

    def _hub_running(self) -> bool:
        """Whether the monitored engine receives: a viewer shows its hub's."""
        if self.hub is None:
            return self.engine.running
        state = self.engine.state()
        return bool(state is not None and state.running)

    def _sync_buttons(self) -> None:
        if self.hub is None:
            running = self.engine.running
            self.start_button.disabled = running
            self.stop_button.disabled = not running
            return
        if not self.engine.has_token:
            why = f"read-only viewer of {self.hub}: give token= (printed by the hub) to control it"
            for button in (self.start_button, self.stop_button, self.reset_button):
                button.disabled = True
                button.tooltip = why
            return
        running = self._hub_running()
        self.start_button.disabled = running
        self.stop_button.disabled = not running
        for button, what in ((self.start_button, "Start"), (self.stop_button, "Stop"), (self.reset_button, "Reset")):
            button.tooltip = f"{what} the hub {self.hub}"

    def _sync_traits(self, status: Status) -> None:
        with self.hold_trait_notifications():
            for counter in STATUS_TABLE:
                if counter.trait:
                    self.set_trait(counter.trait, status[counter.name])

    def _idle_refresh(self, engine: MonitorEngine) -> bool:
        """True for a periodic refresh to skip: the data did not move and the last one is under :attr:`IDLE_REFRESH_S` old.

        Only the engine's own refreshes of a running local monitor are
        skipped (never an explicit :meth:`refresh`, nor the first after a
        control changed, see :meth:`redraw`): with no datagram, no record and
        no reset since the last refresh, the display would change only in its
        clock-driven lines (uptime, rates decaying), which once a second shows.
        """
        if (
            not isinstance(engine, MonitorEngine)
            or not (engine.running and self.running)
            or threading.current_thread() is not getattr(engine, "_process_thread", None)
        ):
            self._idle_mark = None
            return False
        mark, now = engine.change_mark(), time.monotonic()
        last = self._idle_mark
        if last is not None and last[0] == mark and 0.0 <= now - last[1] < self.IDLE_REFRESH_S:
            return True
        self._idle_mark = (mark, now)
        return False

    def _on_refresh(self, engine: MonitorEngine) -> None:
        """The engine's refresh callback: traitlets, then the subclass's display, then the status lines."""
        if self._idle_refresh(engine):
            return
        status = engine.status()
        self._status = status
        self._refresh_status = status  # one status read a refresh (view_state's idle path reuses it)
        try:
            self._refresh_with(engine, status)
        finally:
            self._refresh_status = None

    def _refresh_with(self, engine: MonitorEngine, status: Status) -> None:
        self._sync_traits(status)
        if self.running != engine.running:
            self.set_trait("running", engine.running)
            self._sync_buttons()
        if self.hub is not None:
            self.set_trait("hub_connected", bool(engine.connected))
            self._sync_buttons()
        try:
            self._update_shift_figures()
            self._evaluate_alarms(status, self._hub_running())
        except Exception as exc:
            engine.note_error(exc)
        if not self.views.shown():  # nobody looks: count on, send nothing
            if self.view_shown:
                self._pause_view()
            return
        if not self.view_shown:  # a cell runs: the page may be looking
            self._resume_view("a cell runs")
            return
        self._update_view(status)

    def _update_view(self, status: Status) -> None:
        """Send the display: the subclass's plots, the player controls, the status lines, a beat."""
        engine = self.engine
        try:
            self.update_display()
        except Exception as exc:
            engine.note_error(exc)
            status = engine.status()
            self._status = status
        self._sync_player_controls()
        with self.liveness.hold_sync():  # the changing lines and the beat: one message
            self._render_dashboard(status)
            self.liveness.pulse(bool(engine.running))

    def _on_heartbeat(self) -> None:
        """A view's heartbeat (kernel main thread): a paused display is brought up to date at once."""
        self.views.heartbeat()
        if not self.view_shown:
            self._resume_view("a view is shown again")

    def _pause_view(self) -> None:
        self._paused_at = time.time()
        self.set_trait("view_shown", False)
        logger.info(
            "%r: no view shown for %g s: display updates paused (counting goes on)", self, self.views.timeout
        )

    def _resume_view(self, why: str) -> None:
        """Resume display updates with a full update now (under the engine's processing lock)."""
        lock = getattr(self.engine, "_processing_lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            if self.view_shown:
                return
            began, now = self._paused_at or time.time(), time.time()
            self._paused_at = None
            self.set_trait("view_shown", True)
            note = describe_pause(began, now)
            logger.info("%r: %s: display updates resumed (%s)", self, why, note)
            self.liveness.note = note
            status = self.engine.status()
            self._status = status
            self._sync_buttons()
            self._update_view(status)
            resend_state(self)  # and whatever the page missed before the pause

    def _dashboard_html(self, status: Status | None = None) -> str:
        """The dashboard: (for a viewer, the hub lines), the standard status lines, the messages."""
        status = self.engine.status() if status is None else status
        lines = board.status_html(
            status,
            running=self._hub_running(),
            address=self.address(),
            exposure=self.engine.exposure(),
            last_error=self.engine.last_error,
        )
        if self.hub is not None:
            lines = board.viewer_html(self.engine) + self._viewer_windows_html() + lines
        lines = board.alarms_html(self.alarms) + lines + board.shift_html(
            self.shift_figures, self.masked_pixels, getattr(self, "shown_chip", None)
        )
        if self.publisher is not None:
            lines += board.publisher_html(self.publisher)
        if self.reference is not None:
            lines += self._reference_html()
        return lines + board.messages_html(self._messages)

    def _viewer_windows_html(self) -> str:
        """A viewer whose time windows are not complete yet (no history from the hub): one warning line, else ``""``."""
        engine = self.engine
        if getattr(engine, "windows_synced", True) or not engine.connected:
            return ""
        text = (
            "time windows incomplete: the hub's history has not arrived "
            f"({engine.history_failures} unanswered, {engine.malformed_histories} refused as malformed); "
            "windows hold only the seconds received since"
        )
        return f'<div class="apx-windows-warning" style="color:#c0392b">&#9888; {html.escape(text)}</div>'

    def _render_dashboard(self, status: Status | None = None) -> None:
        text = self._dashboard_html(status)
        if text != self.dashboard.value:
            self.dashboard.value = text
