"""The AstroPix 4 monitor: hit-map, TOT and rate panels over the engine's histograms."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import bqplot
import ipywidgets as widgets
import numpy as np
from traitlets import Bool, Int, Tuple

from ..astropix4.layout import NUM_COLS, NUM_ROWS
from ..fmt import AbstractAstroPixReadout, AstroPix4Readout
from ..hist import TOT_EDGES
from ..sock import DEFAULT_PORT, LOCAL_HOST
from .base import AbstractMonitor
from .chips import ChipGrid, normalize_layout
from .panels import HitMapPanel, Panel, PixelPanel, RatePanel, TotPanel

__all__ = ["AstroPix4SimpleMonitor"]

logger = logging.getLogger(__name__)


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
    layout : list of lists of int, or str, optional
        Several chips: one hit map per chip, placed as the setup is built,
        given as rows of chip_ids (``[[0, 1], [2, 3]]``: a quad-chip board;
        ``[[0], [1], [2]]``: a stack of layers; None in a row leaves a place
        empty; rows may differ in length), or a preset name (``"quad"``, see
        :data:`~astropix_nbmonitor.monitor.chips.LAYOUT_PRESETS`). The chip
        maps come under the main plots (see :attr:`chip_maps`); None (the
        default): the main hit map only.
    shared_scale : bool
        With a layout: one colour scale for all chip maps (True), or one per
        chip; also a toolbar toggle and the :attr:`shared_scale` traitlet.
    **kwargs
        The listener options of :class:`AbstractMonitor`.

    A subclass adds a plot by adding a panel class to :attr:`PANELS`.
    """

    NUM_COLS = NUM_COLS
    NUM_ROWS = NUM_ROWS
    #: The pixel selected for the drill-down, ``(column, row)``, or None: a
    #: click on the hit map selects (a second click or the Clear pixel button
    #: deselects); the pixel panel then shows its TOT spectrum and hit rate.
    selected_pixel = Tuple(Int(), Int(), default_value=None, allow_none=True)
    #: With a layout: one colour scale for every chip map (True) or one per chip (False).
    shared_scale = Bool(True)
    #: It draws the engine's (or the hub's) histograms: no records relayed.
    RELAY_RECORDS = False
    #: The panels, left to right.
    PANELS: ClassVar[Sequence[type[Panel]]] = (HitMapPanel, TotPanel, RatePanel)
    #: Height of the plots (px); their width follows the page, up to 1350 px.
    HEIGHT_PX = 520
    MAX_WIDTH_PX = 1350

    def __init__(
        self,
        group: str = LOCAL_HOST,
        port: int = DEFAULT_PORT,
        *,
        tot_edges: Sequence[float] = TOT_EDGES,
        history_seconds: float = 180.0,
        layout: Any = None,
        shared_scale: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(layout, widgets.Layout):  # the widget's own CSS layout, as any ipywidget takes
            kwargs["layout"], layout = layout, None
        elif layout is not None:
            normalize_layout(layout)  # a bad layout is refused before the engine (and its socket) exists
        super().__init__(AstroPix4Readout, group, port, tot_edges=tot_edges, history_seconds=history_seconds, **kwargs)
        self.tot_edges = np.asarray(tot_edges, dtype=float)
        self.shown_chip: int | None = None
        self.chip_grid: ChipGrid | None = None
        self._build_panels()
        self._build_chip_grid(layout, shared_scale)
        self._build_window_selector()
        self._build_chip_selector()
        self._build_reference_button()
        self._build_mask_button()
        self._build_pixel_panel()

    # ------------------------------------------------------------------ data
    @property
    def hit_map(self):
        """Hit counts per pixel of all chips (boost-histogram; axes: column, then row), a copy."""
        return self.engine.hit_map()

    @property
    def tot_hist(self):
        """The TOT spectrum in us of all chips (boost-histogram with under/overflow), a copy."""
        return self.engine.tot_hist()

    def chip_hit_map(self, chip: int):
        """The hit map of one chip_id."""
        return self.engine.hit_map(chip)

    def chip_tot_hist(self, chip: int):
        """The TOT spectrum of one chip_id."""
        return self.engine.tot_hist(chip)

    def hit_map_window(self, seconds: float, chip: int | None = None):
        """The hit map of the last ``seconds`` (1 s granularity, at most 600 s), all chips or one chip_id."""
        self._need_windows()
        return self.engine.hit_map_window(seconds, chip)

    def tot_hist_window(self, seconds: float, chip: int | None = None):
        """The TOT spectrum of the last ``seconds`` (1 s granularity, at most 600 s), all chips or one chip_id."""
        self._need_windows()
        return self.engine.tot_hist_window(seconds, chip)

    def _need_windows(self) -> None:
        if not self.windows_available:
            msg = "time windows are kept by the hub's own monitor, not by a viewer of a hub"
            raise RuntimeError(msg)

    @property
    def out_of_matrix_hits(self) -> int:
        """Decoded hits whose column (or row) lies outside the 35 x 16 matrix."""
        return self.engine.out_of_matrix

    @property
    def chips_seen(self) -> list[int]:
        """The chip_ids seen so far."""
        return self.engine.chips_seen

    def process_readout(self, readout: AbstractAstroPixReadout) -> int:
        """Decode one readout (chaining split hits) and fill the histograms."""
        hits = self.decode_readout(readout)
        self.engine.accumulate(hits)
        return len(hits)

    def process_batch(self, records: list[bytes]) -> None:
        """Decode a batch with the engine's batch decoder and fill.

        Same hits as calling :meth:`process_readout` on each record. A
        subclass that overrides :meth:`process_readout` gets it called for
        each readout instead (:meth:`AbstractMonitor.process_batch`).
        """
        if type(self).process_readout is not AstroPix4SimpleMonitor.process_readout:
            AbstractMonitor.process_batch(self, records)
            return
        self.engine.process_records(records)

    # ------------------------------------------------------------------ display
    def update_display(self) -> None:
        """Send the new hit map, TOT spectrum and rates to the front end (only what changed)."""
        state = self.view_state()
        self._update_chip_selector(state.chips)
        self.update_panels(state)

    def _build_panels(self) -> None:
        widths = [panel.width for panel in self.PANELS]
        figures = self.create_canvas(
            1, len(self.PANELS), width_ratios=widths, figsize=(self.MAX_WIDTH_PX / 100, self.HEIGHT_PX / 100)
        )
        for panel_class, figure in zip(self.PANELS, figures):
            self.add_panel(panel_class(figure, self))

    def _build_chip_grid(self, layout: Any, shared_scale: bool) -> None:
        """With a layout: the chip maps under the canvas, and the shared/per-chip scale toggle."""
        self.set_trait("shared_scale", bool(shared_scale))
        if layout is None:
            return
        try:
            self.chip_grid = ChipGrid(self, layout, main=self.panel(HitMapPanel))
        except Exception:
            self.close()  # nothing half-built is left bound
            raise
        self.add_panel(self.chip_grid)
        toggle = self.chip_grid.scale_toggle
        toggle.value = self.shared_scale
        toggle.observe(lambda change: setattr(self, "shared_scale", bool(change["new"])), names="value")
        self.observe(self._on_shared_scale, names="shared_scale")
        children = list(self.children)
        children.insert(children.index(self.canvas) + 1, self.chip_grid.box)
        self.children = children

    def _on_shared_scale(self, change: dict[str, Any]) -> None:
        if self.chip_grid is None:
            return
        self.chip_grid.scale_toggle.value = bool(change["new"])
        self.chip_grid.invalidate()
        self.redraw()

    @property
    def layout_rows(self) -> tuple[tuple[int | None, ...], ...] | None:
        """The layout of the chip maps, as rows of chip_ids (None: no layout)."""
        return None if self.chip_grid is None else self.chip_grid.layout

    @property
    def chip_maps(self) -> dict[int, Any]:
        """The chip maps of the layout by chip_id (:class:`~astropix_nbmonitor.monitor.chips.ChipMapPanel`; empty without a layout)."""
        return {} if self.chip_grid is None else dict(self.chip_grid.maps)

    def panel(self, panel_class: type[Panel]) -> Panel:
        """The panel of class ``panel_class``."""
        for panel in self.panels:
            if isinstance(panel, panel_class):
                return panel
        msg = f"{type(self).__name__} has no {panel_class.__name__}"
        raise LookupError(msg)

    @property
    def heatmap(self):
        """The hit map's bqplot HeatMap (its ``color``: the counts shown, rows first)."""
        return self.panel(HitMapPanel).heatmap

    @property
    def tot_bars(self):
        """The TOT spectrum's bqplot Bars."""
        return self.panel(TotPanel).bars

    @property
    def rate_lines(self):
        """The rate chart's bqplot Lines."""
        return self.panel(RatePanel).lines

    @property
    def scale_toggle(self) -> widgets.ToggleButtons:
        """The hit map's linear/log switch."""
        return self.panel(HitMapPanel).scale_toggle

    def _build_reference_button(self) -> None:
        self.pin_button = widgets.Button(description="Pin reference", icon="thumb-tack", tooltip="Hold the run against what it shows now")
        self.pin_button.add_class("apx-pin")
        self.pin_button.layout.width = "130px"
        self.pin_button.on_click(lambda _: self.set_reference())
        self.toolbar.children = [*self.toolbar.children, self.pin_button]

    def _build_pixel_panel(self) -> None:
        figure = bqplot.Figure()
        self.pixel_panel = self.add_panel(PixelPanel(figure, self))
        self.clear_pixel_button = widgets.Button(description="Clear pixel", icon="times", tooltip="Deselect the pixel", disabled=True)
        self.clear_pixel_button.add_class("apx-clear-pixel")
        self.clear_pixel_button.layout.width = "110px"
        self.clear_pixel_button.on_click(lambda _: setattr(self, "selected_pixel", None))
        self.toolbar.children = [*self.toolbar.children, self.clear_pixel_button]
        self.observe(self._on_selected_pixel, names="selected_pixel")

    def click_pixel(self, column: int, row: int, chip: int | None = None) -> None:
        """A click on pixel (column, row) of the hit map: select it, or deselect it when it was selected.

        ``chip``: the click was on that chip's map of a layout; the chip
        selector then shows that chip (the TOT, rates and pixel panels follow).
        """
        if not self.windows_available:
            logger.debug("pixel drill-down needs the per-pixel spectra, which a viewer of a hub does not have")
            return
        pixel = (int(column), int(row))
        if chip is not None and chip != self.shown_chip:
            self.show_chip(chip)
            self.selected_pixel = pixel
            return
        self.selected_pixel = None if self.selected_pixel == pixel else pixel

    def show_chip(self, chip: int | None) -> None:
        """Show one chip_id in the main panels (None: all chips summed), as the chip selector does."""
        value = -1 if chip is None else int(chip)
        if value not in [v for _, v in self.chip_selector.options]:
            self.chip_selector.options = [*self.chip_selector.options, (f"chip {value}", value)]
            self.chip_selector.layout.display = ""
        self.chip_selector.value = value

    def _on_selected_pixel(self, change: dict[str, Any]) -> None:
        pixel = change["new"]
        if pixel is not None and not (0 <= pixel[0] < self.NUM_COLS and 0 <= pixel[1] < self.NUM_ROWS):
            self.set_trait("selected_pixel", change["old"])
            msg = f"selected_pixel must be (column, row) inside the {self.NUM_COLS} x {self.NUM_ROWS} matrix, got {pixel}"
            raise ValueError(msg)
        self.clear_pixel_button.disabled = pixel is None
        self._show_pixel_box(pixel is not None)
        for panel in (self.panel(HitMapPanel), self.pixel_panel, *([self.chip_grid] if self.chip_grid else [])):
            panel.invalidate()
        self.redraw()

    def _show_pixel_box(self, show: bool) -> None:
        """Put the pixel panel under the canvas, or take it away (a figure drawn hidden gets negative sizes)."""
        box = self.pixel_panel.box
        children = [c for c in self.children if c is not box]
        self.children = [*children, box] if show else children

    def _build_mask_button(self) -> None:
        self.mask_button = widgets.Button(description="Mask noisy", icon="eye-slash", tooltip="Mask the pixels found noisy now")
        self.mask_button.add_class("apx-mask-noisy")
        self.mask_button.layout.width = "120px"
        self.mask_button.on_click(lambda _: self.mask_noisy())
        self.toolbar.children = [*self.toolbar.children, self.mask_button]

    def _on_reference_changed(self) -> None:
        for panel in self.panels:
            panel.invalidate()

    def _log_scale(self) -> bool:
        return self.panel(HitMapPanel).log

    #: The windows offered in the toolbar: (label, seconds; 0 = whole run).
    WINDOWS: ClassVar[Sequence[tuple[str, float]]] = (("whole run", 0.0), ("last 10 s", 10.0), ("last 60 s", 60.0), ("last 10 min", 600.0))

    def _build_window_selector(self) -> None:
        self.window_selector = widgets.Dropdown(options=list(self.WINDOWS), value=0.0, description="window")
        self.window_selector.layout.width = "200px"
        self.window_selector.add_class("apx-window")
        if self.windows_available:
            self.window_selector.observe(lambda change: setattr(self, "window", float(change["new"])), names="value")
            self.observe(self._show_window, names="window")
            self.window_selector.tooltip = "Show the whole run or only the last seconds"
        else:
            self.window_selector.disabled = True
            self.window_selector.tooltip = "time windows are not available on a viewer of a hub (the hub sends the whole run)"
        self.toolbar.children = [*self.toolbar.children, self.window_selector]

    def _show_window(self, change: dict[str, Any]) -> None:
        """The window traitlet changed: the toolbar shows it (a value not offered becomes an option)."""
        seconds = float(self.window)
        if seconds not in [v for _, v in self.window_selector.options]:
            self.window_selector.options = [*self.window_selector.options, (f"last {seconds:g} s", seconds)]
        self.window_selector.value = seconds

    def _build_chip_selector(self) -> None:
        self.chip_selector = widgets.Dropdown(options=[("all chips", -1)], value=-1, description="chip_id")
        self.chip_selector.layout.display = "none"
        self.chip_selector.layout.width = "auto"
        self.chip_selector.add_class("apx-chip")
        self.chip_selector.observe(self._on_chip, names="value")
        self.toolbar.children = [*self.toolbar.children, self.chip_selector]

    def _on_chip(self, change: dict[str, Any]) -> None:
        self.shown_chip = None if change["new"] == -1 else int(change["new"])
        for panel in self.panels:
            panel.invalidate()
        self.redraw()

    def _update_chip_selector(self, chips: Sequence[int]) -> None:
        shown = [] if self.shown_chip is None or self.shown_chip in chips else [self.shown_chip]
        if len(chips) + len(shown) <= 1:
            return
        options = [("all chips", -1)] + [(f"chip {c}", c) for c in sorted({*chips, *shown})]
        if list(self.chip_selector.options) != options:
            self.chip_selector.options = options
        self.chip_selector.layout.display = ""
