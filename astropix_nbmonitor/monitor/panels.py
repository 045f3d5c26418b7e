"""Plots as panels: each builds its bqplot marks once and updates them from a state.

A :class:`Panel` owns one ``bqplot.Figure`` of a monitor's canvas. Its
:meth:`~Panel.build` makes the marks, axes and any toolbar controls once;
its :meth:`~Panel.update` takes an
:class:`~astropix_nbmonitor.engine.EngineState` and sends only what changed.
A new plot is one panel class (see ``notebooks/custom_monitor.ipynb``)::

    class ColumnProfile(Panel):
        title = "Hits per column"

        def build(self):
            x, y = bqplot.OrdinalScale(), bqplot.LinearScale(min=0.0)
            self.bars = bqplot.Bars(x=np.arange(16.0), y=np.zeros(16), scales={"x": x, "y": y})
            self.figure.marks = [self.bars]
            self.figure.axes = [bqplot.Axis(scale=x, label="column"),
                                bqplot.Axis(scale=y, label="hits")]

        def update(self, state):
            self.bars.y = state.hit_counts(self.chip).sum(axis=0)

The chip a panel shows (``self.chip``: None for all chips) and other view
options come from its monitor.
"""

from __future__ import annotations

import math
import re
import time
from typing import TYPE_CHECKING, Any

import bqplot
import ipywidgets as widgets
import numpy as np

from ..astropix4.layout import NUM_COLS, NUM_ROWS
from ..hist import TOT_EDGES
from .matrix import MatrixCanvas

if TYPE_CHECKING:
    from ..engine import EngineState

__all__ = [
    "HitMapPanel", "Panel", "PixelPanel", "RatePanel", "TotPanel",
    "compact_counts", "integer_ticks", "nice_ceiling", "set_if_changed",
]

_BLUE = "#3b6ea8"
_RED = "#e0312b"
#: The neutral colour of masked pixels (and of pixels with no reference hit in the ratio view).
NULL_COLOR = "#c8c8c8"
_ORANGE = "#d9822b"
#: A fill that is painted (it catches the mouse) but shows nothing.
_CLEAR = "rgba(0, 0, 0, 0)"


def window_suffix(state: Any) -> str:
    """`` (last N s)`` for a state of a time window, ``""`` for the whole run."""
    window = float(getattr(state, "window", 0.0) or 0.0)
    return f" (last {window:g} s)" if window else ""


def integer_ticks(top: float, n: int = 5) -> np.ndarray:
    """About ``n`` round integer ticks from 0 to at least ``top`` (never fractions).

    A colour bar of counts then never shows ``100m`` on an empty map.
    """
    top = max(float(top), 1.0)
    raw = top / max(n - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(1.0, step)
    return np.arange(0.0, top + 0.5 * step, step)


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 1.5, 2, 3, 4, 5, 6, 8 x 10^k that is at least ``value`` (at least 1).

    A scale's maximum set to it changes only when the data cross one of these
    steps, not at every refresh (each change is a message to the page).
    """
    value = max(float(value), 1.0)
    magnitude = 10 ** math.floor(math.log10(value))
    for m in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
        if m * magnitude >= value * (1 - 1e-12):
            return m * magnitude
    return 10.0 * magnitude


#: Numbers in a title (digits with their separators): what :meth:`Panel.set_title` may hold back.
_NUMBERS = re.compile(r"\d[\d,.]*")


def set_if_changed(widget: Any, name: str, value: Any) -> bool:
    """Set trait ``name`` of ``widget`` to ``value`` unless it holds an equal value already; True when set.

    Arrays are compared by dtype, shape and values, so that an equal array is
    not sent to the page again.
    """
    old = getattr(widget, name)
    if isinstance(value, np.ndarray) or isinstance(old, np.ndarray):
        if (
            isinstance(value, np.ndarray)
            and isinstance(old, np.ndarray)
            and old.dtype == value.dtype
            and old.shape == value.shape
            and np.array_equal(old, value, equal_nan=value.dtype.kind == "f")
        ):
            return False
    elif old == value:
        return False
    setattr(widget, name, value)
    return True


def step_y(counts: np.ndarray) -> np.ndarray:
    """The y of a histogram drawn as steps over its edges (``step-after``): the counts, the last one twice, float32."""
    counts = np.asarray(counts, dtype=np.float32)
    return np.concatenate([counts, counts[-1:]]) if counts.size else np.zeros(1, dtype=np.float32)


def spectrum_mark(edges: np.ndarray, scales: dict[str, Any], color: str) -> bqplot.Lines:
    """A histogram over ``edges`` as a filled step line: one SVG path, whatever the bins.

    bqplot's ``Bars`` leaves an empty ``<g>`` in the page at every redraw (the
    group of its old zero line): a spectrum updated twice a second would add
    7,000 nodes an hour. A ``Lines`` mark redraws its path in place. x is
    each bin's low edge and the last edge; y the counts with the last one
    repeated (see :func:`step_y`), float32.
    """
    return bqplot.Lines(
        x=np.asarray(edges, dtype=np.float32),
        y=step_y(np.zeros(len(edges) - 1)),
        scales=scales,
        colors=[color],
        stroke_width=1,
        interpolation="step-after",
        fill="bottom",
        fill_colors=[color],
        fill_opacities=[0.85],
    )


def monitor_of(panel: Panel) -> Any:
    """The monitor of a panel (None for a panel drawn alone)."""
    return panel.monitor


class Panel:
    """One plot of a monitor: a figure, its marks, and how to update them.

    Parameters
    ----------
    figure : bqplot.Figure
        The figure to draw in (one cell of :meth:`AbstractMonitor.create_canvas`).
    monitor : AbstractMonitor or None
        The monitor it belongs to (gives the chip shown).

    Subclasses set :attr:`title` and :attr:`width` (relative width on the
    canvas) and write :meth:`build` and :meth:`update`; :attr:`controls` are
    widgets the monitor adds to its toolbar.
    """

    #: Figure title.
    title: str = ""
    #: Relative width of the panel on the canvas.
    width: float = 1.0
    #: CSS class of the figure (for styling and browser tests).
    css_class: str = ""
    #: Seconds between two redraws at the least (0: every refresh). Each redraw of a bqplot mark
    #: costs the browser several ms of main-thread time; a panel whose picture changes slowly
    #: (a spectrum filling up, a strip chart of 3 s buckets) is redrawn less often. A control
    #: change (:meth:`invalidate`) redraws at the next refresh.
    min_interval: float = 0.0

    def __init__(self, figure: bqplot.Figure, monitor: Any = None) -> None:
        self.figure = figure
        self.monitor = monitor
        self.controls: list[widgets.Widget] = []
        if self.title:
            figure.title = self.title
        # Titles must fit a narrow panel (a 1280 px page with a side bar open).
        figure.title_style = {"font-size": "14px"}
        if self.css_class:
            figure.add_class(self.css_class)
        self.build()

    @property
    def chip(self) -> int | None:
        """The chip_id shown (None: all chips)."""
        return getattr(self.monitor, "shown_chip", None)

    def build(self) -> None:
        """Make the marks and axes (once)."""
        raise NotImplementedError

    def update(self, state: EngineState) -> None:
        """Send what changed in ``state`` to the marks."""
        raise NotImplementedError

    def invalidate(self) -> None:
        """Forget what was sent, so that the next :meth:`update` resends everything."""

    def due(self, forced: bool = False) -> bool:
        """True when :attr:`min_interval` has passed since the last redraw (or ``forced``); then counts a redraw now.

        A monitor that is not running is always due: its refreshes are explicit
        (stop, replay, a control), and the last picture must be complete. Time
        is the engine's clock (the run's wall clock, injectable in tests).
        """
        engine = getattr(self.monitor, "engine", None)
        now = float(getattr(engine, "clock", time.time)())
        last = getattr(self, "_drawn_at", None)
        forced = forced or not getattr(engine, "running", True)
        if not forced and last is not None and 0.0 <= now - last < self.min_interval:
            return False
        self._drawn_at = now
        return True

    def own_widgets(self) -> list[widgets.Widget]:
        """Widgets of the panel that its figure and controls may not hold (closed with the monitor)."""
        return []

    #: Seconds between two title changes of a running panel that only its numbers make (0: at
    #: once). bqplot's Figure lays itself out again, axes and marks, at every title change.
    title_interval: float = 0.0

    def set_title(self, title: str) -> bool:
        """Show ``title``; True when it was sent.

        A change of the numbers alone (an overflow count, a rate) waits until
        :attr:`title_interval` has passed since the last title while the
        monitor runs; a change of the words (a time window chosen, "no data"
        turning into a rate, a note on masked pixels) and any title of a
        stopped monitor go at once.
        """
        shown = self.shown_title
        if shown == title:
            return False
        engine = getattr(self.monitor, "engine", None)
        now = float(getattr(engine, "clock", time.time)())
        last = getattr(self, "_titled_at", None)
        numbers_only = _NUMBERS.sub("#", title) == _NUMBERS.sub("#", shown)
        if (
            self.title_interval
            and numbers_only
            and getattr(engine, "running", False)
            and last is not None
            and 0.0 <= now - last < self.title_interval
        ):
            return False
        self._put_title(title)
        self._titled_at = now
        return True

    @property
    def shown_title(self) -> str:
        """The panel's title as the page shows it."""
        return self.figure.title or ""

    def _put_title(self, title: str) -> None:
        self.figure.title = title

    def redraw(self) -> None:
        """Ask the monitor for a refresh now (after a control changed)."""
        self.invalidate()
        if self.monitor is not None:
            self.monitor.redraw()


def compact_counts(counts: np.ndarray) -> np.ndarray:
    """Hit counts as the smallest array the front end reads: uint8, uint16 or uint32, float32 with NaN or fractions.

    A 35 x 16 map of counts under 65,536 is 1,120 bytes on the websocket
    (float64: 4,480); bqplot's front end reads every one of these types.
    """
    counts = np.asarray(counts)
    if counts.dtype.kind in "ui" or (np.isfinite(counts).all() and np.array_equal(counts, np.round(counts))):
        top = float(counts.max()) if counts.size else 0.0
        if counts.size == 0 or float(counts.min()) >= 0:
            for dtype in (np.uint8, np.uint16, np.uint32):
                if top <= np.iinfo(dtype).max:
                    return counts.astype(dtype)
    return counts.astype(np.float32)


class HitMapPanel(Panel):
    """Hits per pixel: columns on x, rows on y with row 0 at the top, as offline.

    The colours are a :class:`~astropix_nbmonitor.monitor.matrix.MatrixCanvas`
    (:attr:`heatmap`): one canvas pixel a cell under the figure's transparent
    plot area, one byte a cell sent a refresh; its ``color`` holds the values
    drawn, rows first, as a ``bqplot.HeatMap``'s did. bqplot's own HeatMap
    costs the page a PNG encoding and decoding of the whole plot at every
    refresh, a ``GridHeatMap`` one SVG element per pixel (see
    ``benchmarks/bench_marks.py``). The canvas also catches the clicks and
    hovers over the plot area and names their cell to the kernel (a click
    selects the pixel, a hover gets the cell's counts back as its hint,
    :meth:`tooltip_text`): no layer of one SVG element a cell, which the page
    would lay out and composite again at every change of the figure. Masked
    pixels are painted by a bqplot HeatMap (:attr:`mask_layer`, sent only when the mask
    changes), noisy pixels and the selected pixel by Scatter markers.
    """

    title = "Hit map"
    width = 1.0
    css_class = "apx-hitmap"
    #: Whether the panel adds its scale and reference toggles to the toolbar (a chip map of a layout follows the main map's).
    OWN_CONTROLS = True

    def build(self) -> None:
        monitor = self.monitor
        num_rows = int(getattr(monitor, "NUM_ROWS", NUM_ROWS))
        num_cols = int(getattr(monitor, "NUM_COLS", NUM_COLS))
        self.shape = (num_rows, num_cols)
        # Cells centred on whole numbers: column c spans c - 0.5 .. c + 0.5; row 0 at the top.
        self.col_scale = col_scale = bqplot.LinearScale(min=-0.5, max=num_cols - 0.5)
        self.row_scale = row_scale = bqplot.LinearScale(min=-0.5, max=num_rows - 0.5, reverse=True)
        # min/max set from the start: an empty (or never started) map is
        # drawn in the lowest colour, not in the middle of an undefined scale.
        self.color_scale = bqplot.ColorScale(scheme="viridis", min=0.0, max=1.0)
        # The colours: a canvas under the figure's plot area, one byte a cell a refresh (monitor/matrix.py).
        self.heatmap = MatrixCanvas(num_rows, num_cols, null_color=NULL_COLOR)
        self.heatmap.follow(self.figure)
        # Noisy pixels: red markers on the same scales.
        self.noisy_markers = bqplot.Scatter(
            x=np.zeros(0), y=np.zeros(0), scales={"x": col_scale, "y": row_scale},
            marker="square", colors=[_RED], fill=False, stroke=_RED, stroke_width=2.5, default_size=180,
        )
        self._noisy_sent: tuple[tuple[int, int], ...] | None = None
        # The selected pixel (drill-down): a click selects, this marker shows it.
        self.selected_marker = bqplot.Scatter(
            x=np.zeros(0), y=np.zeros(0), scales={"x": col_scale, "y": row_scale},
            marker="square", colors=["white"], fill=False, stroke="white", stroke_width=3.0, default_size=260,
        )
        self._selected_sent: tuple[int, int] | None = None
        self.color_axis = bqplot.ColorAxis(
            scale=self.color_scale, side="right", label="hits", tick_format="~s", tick_values=integer_ticks(1.0)
        )
        # Clicks and hovers: the colour canvas names the cell under the mouse (no layer of SVG cells).
        self.heatmap.on_cell(self._on_cell)
        self.figure.axes = [
            bqplot.Axis(scale=col_scale, label="column", tick_values=np.arange(0, num_cols, 3, dtype=np.float64), grid_lines="none"),
            bqplot.Axis(scale=row_scale, side="left", label="row", tick_values=np.arange(0, num_rows, 5, dtype=np.float64), grid_lines="none"),
            self.color_axis,
        ]
        self.figure.fig_margin = {"top": 30, "bottom": 45, "left": 45, "right": 80}
        # Masked pixels: a layer on top painting them in the neutral colour, every other cell transparent.
        self.mask_layer = bqplot.HeatMap(
            x=np.arange(num_cols, dtype=np.float32),
            y=np.arange(num_rows, dtype=np.float32),
            color=np.zeros((num_rows, num_cols), dtype=np.uint8),
            scales={"x": col_scale, "y": row_scale, "color": bqplot.ColorScale(min=0.0, max=1.0, colors=[_CLEAR, NULL_COLOR])},
            null_color=_CLEAR,
        )
        self._mask_sent: frozenset[tuple[int, int]] | None = None
        self._last: tuple[Any, ...] | None = None
        #: What the map shows now, for the tooltip: (counts [row, column] with NaN when masked, ratio or None).
        self._shown: tuple[np.ndarray, np.ndarray | None] = (np.zeros(self.shape), None)
        self.figure.marks = []
        if self.OWN_CONTROLS:
            self._build_controls()

    def _on_cell(self, event: str, column: int, row: int) -> None:
        """A click on a cell selects (or deselects) its pixel; a hover answers with the cell's counts as shown now."""
        if event == "click":
            if self.monitor is not None:
                self.click(column, row)
        else:
            self.heatmap.hint = {"row": row, "column": column, "text": self.tooltip_text(column, row)}

    def _build_controls(self) -> None:
        self.scale_label = widgets.Label("hit map scale")
        self.scale_toggle = widgets.ToggleButtons(options=["linear", "log"], value="linear")
        self.scale_toggle.style.button_width = "60px"
        self.scale_toggle.observe(lambda _: self.redraw(), names="value")
        box = widgets.HBox([self.scale_label, self.scale_toggle], layout=widgets.Layout(align_items="center", width="auto"))
        box.add_class("apx-scale")
        # With a reference run: this run's map, or this run over the reference (each normalised).
        self.view_toggle = widgets.ToggleButtons(options=["this run", "over reference"], value="this run")
        self.view_toggle.style.button_width = "110px"
        self.view_toggle.observe(lambda _: self.redraw(), names="value")
        self.view_box = widgets.HBox([widgets.Label("hit map"), self.view_toggle], layout=widgets.Layout(align_items="center", display="none"))
        self.view_box.add_class("apx-map-view")
        self.controls = [box, self.view_box]

    def own_widgets(self) -> list[widgets.Widget]:
        return [self.heatmap, self.mask_layer, self.noisy_markers, self.selected_marker]

    def click(self, column: int, row: int) -> None:
        """What a click on (column, row) does: the monitor's :meth:`click_pixel`."""
        self.monitor.click_pixel(column, row)

    def tooltip_text(self, column: int, row: int) -> str:
        """The tooltip of pixel (column, row): row, column, hits (and the ratio, masked)."""
        counts, ratio = self._shown
        if not (0 <= row < counts.shape[0] and 0 <= column < counts.shape[1]):
            return ""
        where = f"row {row}, column {column}" + ("" if self.chip is None else f", chip {self.chip}")
        value = counts[row, column]
        if not np.isfinite(value):
            return f"{where}: masked"
        text = f"{where}: {int(value):,} hits"
        if ratio is not None:
            r = ratio[row, column]
            text += f", {r:.2f} of the reference" if np.isfinite(r) else ", no reference hit"
        return text

    def selected_cell(self) -> tuple[int, int] | None:
        """The selected pixel drawn on this map, ``(column, row)``, or None."""
        pixel = getattr(self.monitor, "selected_pixel", None)
        return None if pixel is None else (int(pixel[0]), int(pixel[1]))

    def _update_selected(self) -> bool:
        """Move the selection marker to the selected pixel; True when it changed."""
        pixel = self.selected_cell()
        if pixel == self._selected_sent:
            return False
        with self.selected_marker.hold_sync():
            self.selected_marker.x = np.array([] if pixel is None else [pixel[0]], dtype=np.float64)
            self.selected_marker.y = np.array([] if pixel is None else [pixel[1]], dtype=np.float64)
        self._selected_sent = pixel
        return True

    def masked(self, counts: np.ndarray) -> np.ndarray:
        """``counts`` (rows first) with the monitor's masked pixels of the chip shown set to NaN."""
        mask = getattr(self.monitor, "mask", None)
        if mask is None or not len(mask):
            return counts
        return mask.apply(counts, self.chip, rows_first=True)

    def noisy_cells(self) -> tuple[tuple[int, int], ...]:
        """(column, row) of the noisy pixels of the chip shown, found at the last refresh."""
        figures = getattr(self.monitor, "shift_figures", None)
        if figures is None:
            return ()
        chip = self.chip
        return tuple(sorted({(p.column, p.row) for p in figures.noisy if chip is None or p.chip_id == chip}))

    def overlay_marks(self) -> list[bqplot.Mark]:
        """The marks drawn over the map: masked pixels, noisy pixels' markers, the selected pixel's (when there are any)."""
        marks = [self.mask_layer] if self._mask_sent else []
        marks += [self.noisy_markers] if self._noisy_sent else []
        return marks + ([self.selected_marker] if self._selected_sent is not None else [])

    def _update_mask_layer(self) -> bool:
        """Paint the masked pixels of the chip shown; True when they changed."""
        mask = getattr(self.monitor, "mask", None)
        cells = frozenset() if mask is None else frozenset(mask.chip_pixels(self.chip))
        if cells == self._mask_sent:
            return False
        color = np.zeros(self.shape, dtype=np.uint8)
        for column, row in cells:
            if 0 <= row < self.shape[0] and 0 <= column < self.shape[1]:
                color[row, column] = 1
        self.mask_layer.color = color
        self._mask_sent = cells
        return True

    def _update_markers(self) -> None:
        cells = self.noisy_cells()
        if cells == self._noisy_sent:
            return
        with self.noisy_markers.hold_sync():
            self.noisy_markers.x = np.array([c for c, _ in cells], dtype=np.float64)
            self.noisy_markers.y = np.array([r for _, r in cells], dtype=np.float64)
        self._noisy_sent = cells
        self._last = None  # the marks list changes with them

    @property
    def log(self) -> bool:
        """True when the colour scale is logarithmic."""
        return self.scale_toggle.value == "log"

    def invalidate(self) -> None:
        self._last = None
        self._noisy_sent = None
        self._mask_sent = None
        self._selected_sent = (-1, -1)

    def colors(self, counts: np.ndarray) -> np.ndarray:
        """The colour values sent for hit ``counts``: the counts (as small an array as they fit), or log10(1 + counts) in log mode."""
        return np.log10(1.0 + counts).astype(np.float32) if self.log else compact_counts(counts)

    @property
    def ratio(self) -> bool:
        """True when the map shows this run over the reference."""
        return getattr(self.monitor, "reference", None) is not None and self.view_toggle.value == "over reference"

    def shown_counts(self, state: EngineState) -> np.ndarray:
        """The counts ``[row, column]`` the map shows (masked pixels NaN)."""
        return self.masked(state.hit_counts(self.chip))

    def update(self, state: EngineState, top: float | None = None) -> None:
        """Send what changed; ``top``: the colour scale's top to use (a layout's shared scale), else this map's own.

        The colour canvas's changes (its cells, a caption) go in one message.
        """
        with self.heatmap.hold_sync():
            self._update(state, top)

    def _update(self, state: EngineState, top: float | None) -> None:
        self._update_markers()
        if self._update_selected() | self._update_mask_layer():
            self._last = None
        counts = self.shown_counts(state)
        log = self.log
        reference = getattr(self.monitor, "reference", None)
        if self.OWN_CONTROLS:
            self.view_box.layout.display = "none" if reference is None else ""
        mode = (log, reference if self.ratio else None, getattr(state, "window", 0.0), top)
        if self._last is not None and self._last[1:] == mode and np.array_equal(counts, self._last[0], equal_nan=True):
            self._draw_title(state)
            return
        if self.ratio:
            self._draw_ratio(state, reference, counts)
        else:
            self._draw_counts(counts, log, top)
        marks = self.overlay_marks()
        if list(self.figure.marks) != marks:
            self.figure.marks = marks
        self._draw_title(state)
        self._last = (counts, *mode)

    def color_top(self, counts: np.ndarray) -> float:
        """The largest colour value of ``counts`` (0 for an empty or fully masked map)."""
        colors = np.log10(1.0 + counts) if self.log else counts
        finite = colors[np.isfinite(colors)]
        return float(finite.max()) if finite.size else 0.0

    def _draw_counts(self, counts: np.ndarray, log: bool, top: float | None) -> None:
        colors = self.colors(counts)
        top = self.color_top(counts) if top is None else float(top)
        # The scale's top is the last round tick at or above the largest value: it
        # changes (and the colour bar with it) only when the counts pass a tick.
        ticks = integer_ticks(top)
        step = float(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
        nice = max(math.ceil(top / step) * step, 1.0)
        if nice > ticks[-1]:
            ticks = np.append(ticks, nice)
        with self.color_scale.hold_sync(), self.color_axis.hold_sync():
            self.color_scale.scheme = "viridis"
            self.color_scale.mid = None
            self.color_scale.min = 0.0
            self.color_scale.max = float(nice) if not log else float(max(np.ceil(2.0 * top) / 2.0, 1.0))
            self.color_axis.tick_values = ticks[ticks <= self.color_scale.max]
            self.color_axis.label = "" if log else "hits"  # the title says what log colours are
        self.heatmap.set_scheme("viridis")
        self.heatmap.show(colors, self.color_scale.min, self.color_scale.max)
        self._shown = (counts, None)

    def _draw_title(self, state: EngineState) -> None:
        if self.ratio:
            title = "Hit map over the reference"
        else:
            title = ("Hit map: log10(1 + hits)" if self.log else "Hit map") + window_suffix(state)
        if self.figure.title != title:
            self.figure.title = title

    def _draw_ratio(self, state: EngineState, reference: Any, counts: np.ndarray) -> None:
        """This run over the reference, each normalised to its hits: 1 = as the reference; grey = no reference hit."""
        from .. import compare

        ratio = compare.hit_map_ratio(state.chip_hit_map(self.chip), compare.hit_map_of(reference, self.chip), rows_first=True)
        finite = ratio[np.isfinite(ratio)]
        top = float(max(2.0, finite.max())) if finite.size else 2.0
        with self.color_scale.hold_sync(), self.color_axis.hold_sync():
            self.color_scale.scheme = "RdBu"
            self.color_scale.min = 0.0
            self.color_scale.mid = 1.0
            self.color_scale.max = top
            self.color_axis.tick_values = np.array([0.0, 0.5, 1.0, 1.5, 2.0])[: 5 if top >= 2 else 3]
            self.color_axis.label = "ratio"
        self.heatmap.set_scheme("RdBu")
        self.heatmap.show(self.masked(ratio).astype(np.float32), 0.0, top, mid=1.0)
        self._shown = (counts, ratio)


class TotPanel(Panel):
    """The TOT spectrum (a filled step line over the bins), with the overflow count in the title.

    :attr:`bars` is its mark: a ``bqplot.Lines`` (x: the bin edges, y: the
    counts with the last one repeated, float32; :meth:`drawn_counts` gives
    the counts). Only what changed is sent: nothing when the spectrum, its
    overflow and the reference are as at the last refresh.
    """

    title = "TOT spectrum"
    width = 1.35
    css_class = "apx-tot"
    #: Redrawn at most once a second (a spectrum filling up changes slowly; each redraw costs the browser).
    min_interval = 1.0
    #: The overflow count in the title: at most every 3 s while running (see Panel.set_title).
    title_interval = 3.0
    #: While data keep coming, the spectrum is redrawn when a bin moved by this fraction of the
    #: y scale's top (about a pixel and a half of a 400 px plot: a smaller change is not seen) ...
    redraw_fraction = 0.004
    #: ... or when the drawing is this many seconds old; when the data stop, at once, exactly.
    max_stale = 10.0

    def build(self) -> None:
        edges = np.asarray(getattr(self.monitor, "tot_edges", TOT_EDGES), dtype=float)
        self.edges = edges
        x_scale = bqplot.LinearScale(min=float(edges[0]), max=float(edges[-1]))
        self.y_scale = y_scale = bqplot.LinearScale(min=0.0, max=1.0)
        self.bars = spectrum_mark(edges, {"x": x_scale, "y": y_scale}, _BLUE)
        self.figure.axes = [
            bqplot.Axis(scale=x_scale, label="TOT [us]"),
            bqplot.Axis(scale=y_scale, side="left", label="hits", tick_format="~s"),
        ]
        # The reference run's spectrum, scaled to this run's hits (a mark only with a reference),
        # as steps over the same edges.
        self.reference_line = bqplot.Lines(
            x=np.asarray(edges, dtype=np.float32),
            y=step_y(np.zeros(len(edges) - 1)),
            scales={"x": x_scale, "y": y_scale},
            colors=[_ORANGE],
            stroke_width=2,
            interpolation="step-after",
            labels=["reference"],
        )
        self.figure.marks = [self.bars]
        self.figure.fig_margin = {"top": 30, "bottom": 45, "left": 65, "right": 20}
        self._last: tuple[np.ndarray, int, Any] | None = None

    def drawn_counts(self) -> np.ndarray:
        """The bin counts the page shows now (float64)."""
        return np.asarray(self.bars.y[:-1], dtype=np.float64)

    def invalidate(self) -> None:
        self._last = None

    def _settled(self) -> bool:
        """True when the engine's data did not move since the previous update (then the exact picture is drawn at once)."""
        mark_of = getattr(getattr(self.monitor, "engine", None), "change_mark", None)
        if mark_of is None:
            return False
        mark = mark_of()
        seen, self._mark_seen = getattr(self, "_mark_seen", None), mark
        return seen == mark

    def _visible_change(self, counts: np.ndarray, drawn: np.ndarray) -> bool:
        """True when a bin moved by :attr:`redraw_fraction` of the y scale, or the drawing is :attr:`max_stale` s old."""
        engine = getattr(self.monitor, "engine", None)
        now = float(getattr(engine, "clock", time.time)())
        drawn_at = getattr(self, "_drawn_at", None)
        if drawn_at is None or not 0.0 <= now - drawn_at < self.max_stale or counts.shape != drawn.shape:
            return True
        top = float(self.y_scale.max or 0.0)
        return top <= 0.0 or float(np.max(np.abs(counts - drawn), initial=0.0)) >= self.redraw_fraction * top

    def title_for(self, overflow: int) -> str:
        """The title: the overflow edge is the last real bin edge."""
        return f"TOT (overflow > {self.edges[-1]:g} us: {overflow:,})"

    def shown_counts(self, state: EngineState) -> tuple[np.ndarray, int, str]:
        """Bin counts (float64), overflow and a title note: the masked pixels' hits left out when possible."""
        if getattr(self.monitor, "displayed_tot_hist", None) is None:
            counts, _, overflow = state.tot_counts(self.chip)
            return counts, overflow, ""
        hist, masked_out = self.monitor.displayed_tot_hist(state, self.chip)
        flow = hist.values(flow=True)
        masked = len(getattr(self.monitor, "mask", ()))
        note = "" if not masked else (", masked pixels out" if masked_out else ", masked pixels in")
        return flow[1:-1].astype(np.float64), int(flow[-1]), note

    def update(self, state: EngineState) -> None:
        counts, overflow, note = self.shown_counts(state)
        reference = getattr(self.monitor, "reference", None)
        window = getattr(state, "window", 0.0)
        last = self._last
        same_view = last is not None and last[2] is reference and last[3] == window and last[4] == note
        if same_view and last[1] == overflow and np.array_equal(counts, last[0]):
            return
        settled = self._settled() or not getattr(getattr(self.monitor, "engine", None), "running", True)
        if same_view and not settled and not self._visible_change(counts, last[0]):
            return  # data still coming, but no bar moved by a pixel's worth: wait (at most max_stale)
        if not self.due(forced=last is None or settled):
            return
        top = float(counts.max()) if counts.size else 0.0
        if reference is None:
            set_if_changed(self.y_scale, "max", nice_ceiling(top * 1.05))
            set_if_changed(self.bars, "y", step_y(counts))
            self.set_title(self.title_for(overflow) + window_suffix(state) + note)
            if list(self.figure.marks) != [self.bars]:
                self.figure.marks = [self.bars]
        else:
            self._draw_reference(state, reference, counts, top)
        self._last = (counts, overflow, reference, window, note)

    def _draw_reference(self, state: EngineState, reference: Any, counts: np.ndarray, top: float) -> None:
        """Overlay the reference scaled to this run's hits; the title gives the compatibility."""
        from .. import compare

        current = state.chip_tot_hist(self.chip)
        ref = compare.tot_of(reference, self.chip)
        scaled = np.asarray(compare.scaled_reference(current, ref), dtype=np.float64)
        top = max(top, float(scaled.max()) if scaled.size else 0.0)
        set_if_changed(self.y_scale, "max", nice_ceiling(top * 1.05))
        set_if_changed(self.bars, "y", step_y(counts))
        set_if_changed(self.reference_line, "y", step_y(scaled))
        compat = compare.compatibility(current, ref)
        set_if_changed(self.figure, "title", f"TOT vs reference: {compat.text()}")
        if list(self.figure.marks) != [self.bars, self.reference_line]:
            self.figure.marks = [self.bars, self.reference_line]

    def own_widgets(self) -> list[widgets.Widget]:
        return [self.reference_line]


class RatePanel(Panel):
    """Readout and hit rates over the last minutes (or the whole run), in a bounded number of points.

    The last minutes are shown as :attr:`POINTS` buckets of equal length
    counted back from the newest refresh (each the mean of its refreshes'
    rates), redrawn once a bucket (:attr:`min_interval`): once the history
    spans its minutes, the buckets' times are fixed and a redraw sends only
    the new rates (2 x 60 float32). The whole run
    (the engine's downsampled trend) is shown in at most :attr:`RUN_POINTS`
    buckets and redrawn when the trend has grown by a :attr:`RUN_POINTS`-th
    of its points (every refresh at first, every few minutes after hours).
    """

    title = "Rates"
    width = 1.35
    css_class = "apx-rates"
    #: Room left above the highest point, so the legend never covers a line.
    HEADROOM = 1.35
    #: Buckets of the last minutes.
    POINTS = 60
    #: The most points of the whole-run view.
    RUN_POINTS = 120

    @property
    def min_interval(self) -> float:  # type: ignore[override]
        """Redrawn at most once a bucket: 3 s for the default 180 s history (the dashboard's rates follow every refresh)."""
        return self.history_span() / self.POINTS

    def build(self) -> None:
        x_scale = bqplot.LinearScale()
        self.y_scale = bqplot.LinearScale(min=0.0, max=1.0)
        # Two curves from the start (two points at 0 each): bqplot draws a y of fewer than two
        # points as one curve, and the second curve and its legend entry would join later.
        self.lines = bqplot.Lines(
            x=np.array([-1.0, 0.0], dtype=np.float32),
            y=np.zeros((2, 2), dtype=np.float32),
            scales={"x": x_scale, "y": self.y_scale},
            colors=[_BLUE, _ORANGE],
            labels=["readouts/s", "hits/s"],
            display_legend=True,
        )
        self.figure.axes = [
            bqplot.Axis(scale=x_scale, label="seconds ago"),
            bqplot.Axis(scale=self.y_scale, side="left", label="rate [1/s]", tick_format="~s"),
        ]
        self.figure.marks = [self.lines]
        self.figure.fig_margin = {"top": 30, "bottom": 45, "left": 65, "right": 20}
        self.figure.legend_location = "top-right"
        self.x_axis = self.figure.axes[0]
        # The last minutes (every refresh) or the whole run (the engine's downsampled trend).
        self.span_toggle = widgets.ToggleButtons(options=["last minutes", "whole run"], value="last minutes")
        self.span_toggle.style.button_width = "110px"
        self.span_toggle.add_class("apx-rate-span")
        if getattr(getattr(monitor_of(self), "engine", None), "trend", None) is None:
            self.span_toggle.disabled = True
            self.span_toggle.tooltip = "the whole-run trend is kept by the hub's own monitor, not by a viewer"
        self.span_toggle.observe(lambda _: self.redraw(), names="value")
        self.controls = [self.span_toggle]
        self._sent_trend = -1
        self._forced = True

    @property
    def whole_run(self) -> bool:
        """True when the chart shows the whole run's trend."""
        return self.span_toggle.value == "whole run" and not self.span_toggle.disabled

    def history_span(self) -> float:
        """Seconds of the last-minutes view (the engine's rate history)."""
        history = getattr(getattr(self.monitor, "engine", None), "history", None)
        return float(getattr(history, "span", 180.0))

    @staticmethod
    def bucket_means(t: np.ndarray, values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Means of ``values`` (rows) in the time buckets ``edges`` (increasing); the buckets holding a point, and their means."""
        index = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
        counts = np.bincount(index, minlength=len(edges) - 1)
        sums = np.vstack([np.bincount(index, weights=v, minlength=len(edges) - 1) for v in values])
        filled = counts > 0
        return filled, sums[:, filled] / counts[filled]

    def recent_arrays(self, state: EngineState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last minutes in :attr:`POINTS` buckets: seconds ago (fixed bucket centres), readouts/s, hits/s."""
        t, readout_rate, hit_rate = (np.asarray(a, dtype=np.float64) for a in state.rates)
        if not len(t):
            return t, readout_rate, hit_rate
        step = self.history_span() / self.POINTS
        # Bucket k holds the refreshes k * step to (k + 1) * step before the newest one; oldest first.
        edges = -step * np.arange(self.POINTS, -1, -1, dtype=np.float64)
        edges[-1] = 1.0  # the newest point (t = 0) is in the last bucket
        filled, means = self.bucket_means(t, np.vstack([readout_rate, hit_rate]), edges)
        centres = -step * (np.arange(self.POINTS - 1, -1, -1, dtype=np.float64) + 0.5)
        return centres[filled], means[0], means[1]

    def run_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The whole run in at most :attr:`RUN_POINTS` buckets (None: not grown enough to redraw)."""
        trend = self.monitor.engine.trend
        added = trend.num_added
        if self._sent_trend >= 0 and added - self._sent_trend < max(1, self._sent_trend // self.RUN_POINTS):
            return None
        self._sent_trend = added
        arrays = trend.arrays()
        if not len(arrays):
            return arrays.t, arrays.readout_rate, arrays.hit_rate
        t = arrays.t - arrays.t[-1]
        values = np.vstack([arrays.readout_rate, arrays.hit_rate])
        if len(t) <= self.RUN_POINTS:
            return t, values[0], values[1]
        edges = np.linspace(t[0], 0.0, self.RUN_POINTS + 1)
        edges[-1] = 1.0
        _, means = self.bucket_means(t, values, edges)
        _, times = self.bucket_means(t, t[None, :], edges)
        return times[0], means[0], means[1]

    def invalidate(self) -> None:
        self._sent_trend = -1
        self._forced = True

    def rate_arrays(self, state: EngineState) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Seconds before the last point, readouts/s, hits/s to draw (None: nothing new, or not due)."""
        if not self.whole_run:
            if not self.due(forced=getattr(self, "_forced", True)):
                return None
            self._forced = False
            self._sent_trend = -1
            return self.recent_arrays(state)
        self._forced = False
        return self.run_arrays()

    def update(self, state: EngineState) -> None:
        rates = self.rate_arrays(state)
        if rates is None or not len(rates[0]):
            return
        t, readout_rate, hit_rate = rates
        if len(t) == 1:  # one point is drawn as one curve (see build): give each rate two
            t, readout_rate, hit_rate = (np.repeat(a, 2) for a in (t, readout_rate, hit_rate))
        top = float(max(readout_rate.max(), hit_rate.max(), 1.0))
        with self.lines.hold_sync(), self.y_scale.hold_sync():
            set_if_changed(self.y_scale, "max", nice_ceiling(top * self.HEADROOM))
            set_if_changed(self.lines, "x", t.astype(np.float32))
            set_if_changed(self.lines, "y", np.vstack([readout_rate, hit_rate]).astype(np.float32))
        set_if_changed(self.figure, "title", "Rates: whole run" if self.whole_run else "Rates")


class PixelPanel(Panel):
    """The selected pixel: its whole-run TOT spectrum, and its hit rate per second over the last minutes.

    Shown by the monitor when a pixel is selected (``selected_pixel``); the
    figure holds the spectrum, :attr:`rate_figure` the rate.
    """

    title = "Selected pixel"
    css_class = "apx-pixel"
    #: Redrawn at most once a second while the same pixel is shown (a new pixel at once).
    min_interval = 1.0
    #: The hit count in the title: at most every 3 s while running (see Panel.set_title).
    title_interval = 3.0
    #: Seconds of the rate chart when the whole run is shown (a window shows the window).
    RATE_SECONDS = 120.0

    def build(self) -> None:
        edges = np.asarray(getattr(self.monitor, "tot_edges", TOT_EDGES), dtype=float)
        x_scale = bqplot.LinearScale(min=float(edges[0]), max=float(edges[-1]))
        y_scale = bqplot.LinearScale(min=0.0, max=1.0)
        self.y_scale = y_scale
        self.bars = spectrum_mark(edges, {"x": x_scale, "y": y_scale}, _ORANGE)
        self.figure.axes = [
            bqplot.Axis(scale=x_scale, label="TOT [us]"),
            bqplot.Axis(scale=y_scale, side="left", label="hits", tick_format="~s"),
        ]
        self.figure.marks = [self.bars]
        self.figure.fig_margin = {"top": 30, "bottom": 45, "left": 65, "right": 20}
        t_scale = bqplot.LinearScale()
        self.rate_scale = bqplot.LinearScale(min=0.0, max=1.0)
        self.rate_line = bqplot.Lines(
            x=np.zeros(0, dtype=np.float32), y=np.zeros(0, dtype=np.float32), scales={"x": t_scale, "y": self.rate_scale}, colors=[_ORANGE],
            interpolation="step-after",
        )
        self.rate_figure = bqplot.Figure(
            marks=[self.rate_line],
            axes=[bqplot.Axis(scale=t_scale, label="seconds ago"),
                  bqplot.Axis(scale=self.rate_scale, side="left", label="hits/s", tick_format="~s")],
            fig_margin={"top": 30, "bottom": 45, "left": 65, "right": 20},
            title="Selected pixel: hits/s",
            title_style={"font-size": "14px"},
        )
        self.rate_figure.add_class("apx-pixel-rate")
        for fig in (self.figure, self.rate_figure):
            fig.layout.width = "50%"
            fig.layout.height = "300px"
        # The monitor shows this box (in its children) only while a pixel is selected.
        self.box = widgets.HBox([self.figure, self.rate_figure], layout=widgets.Layout(width="100%"))
        self.box.add_class("apx-pixel-box")
        self._last: tuple[Any, ...] | None = None

    def own_widgets(self) -> list[widgets.Widget]:
        return [self.box, self.rate_figure]

    def invalidate(self) -> None:
        self._last = None

    def update(self, state: EngineState) -> None:
        pixel = getattr(self.monitor, "selected_pixel", None)
        if pixel is None:
            self._last = None
            return
        column, row = int(pixel[0]), int(pixel[1])
        # The spectrum of the time window shown (the whole run without one), as every histogram view.
        window = float(getattr(state, "window", 0.0) or 0.0) if getattr(self.monitor, "windows_available", False) else 0.0
        hist = self.monitor.pixel_tot_hist(column, row, self.chip, seconds=window or None)
        flow = hist.values(flow=True)
        times, rates = self._rates(column, row)
        key = (column, row, self.chip, window, flow.tobytes(), rates.tobytes())
        if key == self._last:
            return
        if self._last is not None and key[:4] == self._last[:4] and not self.due():
            return  # the same pixel: redrawn at most once a second (its rates are per second)
        self.due(forced=True)
        where = f"column {column}, row {row}" + ("" if self.chip is None else f", chip {self.chip}")
        counts = flow[1:-1]
        set_if_changed(self.y_scale, "max", nice_ceiling(float(counts.max() if counts.size else 0.0) * 1.05))
        set_if_changed(self.bars, "y", step_y(counts))
        self.set_title(f"Pixel {where}: TOT, {int(flow.sum()):,} hits" + (window_suffix(state) or " (whole run)"))
        with self.rate_line.hold_sync(), self.rate_scale.hold_sync():
            set_if_changed(self.rate_scale, "max", nice_ceiling(float(rates.max() if rates.size else 0.0) * 1.2))
            set_if_changed(self.rate_line, "x", times.astype(np.float32))
            set_if_changed(self.rate_line, "y", rates.astype(np.float32))
        set_if_changed(self.rate_figure, "title", f"Pixel {where}: hits/s")
        self._last = key

    def drawn_counts(self) -> np.ndarray:
        """The pixel's bin counts the page shows now (float64)."""
        return np.asarray(self.bars.y[:-1], dtype=np.float64)

    def _rates(self, column: int, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The pixel's hits per second in the last seconds (the window shown, else :attr:`RATE_SECONDS`)."""
        engine = self.monitor.engine
        windows = getattr(engine, "windows", None)
        if windows is None:
            return np.zeros(0), np.zeros(0)
        seconds = float(getattr(self.monitor, "window", 0.0) or self.RATE_SECONDS)
        return windows.pixel_rate(column, row, self.chip, seconds=min(seconds, windows.max_seconds), now=engine.clock())
