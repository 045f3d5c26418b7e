"""Several chips: one hit map per chip, in the physical arrangement of the setup.

``AstroPix4SimpleMonitor(layout=[[0, 1], [2, 3]])`` (a quad-chip board), or
``layout=[[0], [1], [2]]`` (a stack of layers), or any grid given as rows of
chip_ids, adds a :class:`ChipGrid` under the monitor's canvas: one
:class:`ChipMapPanel` per chip, placed at its row and column of the layout,
each titled with its chip_id, hit rate, out-of-matrix hits, noisy and masked
pixels. The main hit map (all chips summed, or the chip of the chip selector)
stays. A click on a chip's map selects that chip in the chip selector and the
pixel in ``selected_pixel``, so the drill-down, masks and noisy-pixel markers
work per chip.

The maps draw their colours on a small canvas each (one pixel a cell, one
byte a cell sent; see :class:`~astropix_nbmonitor.monitor.matrix.MatrixCanvas`
and :class:`~astropix_nbmonitor.monitor.panels.HitMapPanel`): the browser's
cost of a refresh then grows little with the number of chips (figures in
``benchmarks/README.md``). Each figure is placed in its grid cell by a CSS
rule of its cell class (``apx-cell-R-C``), which the page applies whatever
its widget front end does with a child's ``grid_row``/``grid_column``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import bqplot
import ipywidgets as widgets
import numpy as np

from ..astropix4.layout import NUM_CHIPS
from .matrix import stack_underlays
from .panels import HitMapPanel

if TYPE_CHECKING:
    from ..engine import EngineState

__all__ = ["LAYOUT_PRESETS", "MAX_CHIP_ID", "ChipGrid", "ChipMapPanel", "normalize_layout"]

logger = logging.getLogger(__name__)

#: The largest chip_id a layout may name: 31 is left out, since a hit of chip
#: 31 starts with the byte ``ff``, which the readout format reads as padding.
MAX_CHIP_ID = NUM_CHIPS - 2

#: Named layouts: ``layout="quad"`` is a 2 x 2 quad-chip board.
LAYOUT_PRESETS: dict[str, tuple[tuple[int | None, ...], ...]] = {
    "quad": ((0, 1), (2, 3)),
    "row4": ((0, 1, 2, 3),),
    "stack3": ((0,), (1,), (2,)),
    "stack4": ((0,), (1,), (2,), (3,)),
}


def normalize_layout(layout: Any) -> tuple[tuple[int | None, ...], ...]:
    """Check a layout and return it as a tuple of rows of chip_ids (None: an empty place).

    ``layout`` is a preset's name (:data:`LAYOUT_PRESETS`) or a sequence of
    rows, each a sequence of chip_ids (whole numbers 0 to :data:`MAX_CHIP_ID`)
    or None for a place left empty. Rows may have different lengths (a
    ragged row leaves the places to its right empty). No chip may appear
    twice, and at least one chip must be named.

    Raises
    ------
    ValueError, TypeError
        With a message that names what is wrong.
    """
    if isinstance(layout, str):
        try:
            return LAYOUT_PRESETS[layout]
        except KeyError:
            msg = f"unknown layout {layout!r}: the presets are {sorted(LAYOUT_PRESETS)}, or give rows of chip_ids such as [[0, 1], [2, 3]]"
            raise ValueError(msg) from None
    if isinstance(layout, (bytes, dict)) or not isinstance(layout, Sequence):
        msg = f"layout must be rows of chip_ids such as [[0, 1], [2, 3]], or a preset name, got {layout!r}"
        raise TypeError(msg)
    rows: list[tuple[int | None, ...]] = []
    seen: dict[int, tuple[int, int]] = {}
    for r, row in enumerate(layout):
        if isinstance(row, (str, bytes, dict)) or not isinstance(row, Sequence):
            msg = f"layout row {r} must be a list of chip_ids (e.g. [0, 1]), got {row!r}"
            raise TypeError(msg)
        out: list[int | None] = []
        for c, chip in enumerate(row):
            if chip is None:
                out.append(None)
                continue
            if isinstance(chip, bool) or not isinstance(chip, (int, np.integer)):
                msg = f"layout[{r}][{c}] must be a chip_id (a whole number 0 to {MAX_CHIP_ID}) or None, got {chip!r}"
                raise TypeError(msg)
            chip = int(chip)
            if not 0 <= chip <= MAX_CHIP_ID:
                msg = f"layout[{r}][{c}]: chip_id {chip} is outside 0 to {MAX_CHIP_ID}"
                raise ValueError(msg)
            if chip in seen:
                msg = f"layout names chip {chip} twice: at row {seen[chip][0]}, column {seen[chip][1]} and at row {r}, column {c}"
                raise ValueError(msg)
            seen[chip] = (r, c)
            out.append(chip)
        rows.append(tuple(out))
    if not seen:
        msg = f"layout names no chip: {layout!r}"
        raise ValueError(msg)
    return tuple(rows)


class ChipMapPanel(HitMapPanel):
    """The hit map of one chip of a layout.

    It shows its own chip whatever the chip selector shows, follows the main
    map's linear/log and reference toggles, draws the masked and noisy
    pixels of its chip, and the selected pixel when the chip selector shows
    its chip. A click selects its chip and the pixel.
    """

    OWN_CONTROLS = False
    css_class = "apx-chipmap"
    title = ""
    #: The hit rate in the title: at most every second while running. The title is the colour
    #: canvas's caption (one text node; it travels with the cells' message), not the figure's
    #: ``title``, whose every change lays the whole figure out again, axes and marks.
    title_interval = 1.0

    def __init__(self, figure: bqplot.Figure, monitor: Any, chip_id: int, main: HitMapPanel | None = None) -> None:
        self.chip_id = int(chip_id)
        self.main = main
        super().__init__(figure, monitor)
        figure.add_class(f"apx-chip-{self.chip_id}")
        figure.fig_margin = {"top": 30, "bottom": 35, "left": 40, "right": 70}
        self.heatmap.caption = f"chip {self.chip_id}"

    @property
    def shown_title(self) -> str:
        """The title line over the map (the colour canvas's caption)."""
        return self.heatmap.caption

    def _put_title(self, title: str) -> None:
        self.heatmap.caption = title

    @property
    def chip(self) -> int | None:
        return self.chip_id

    @property
    def log(self) -> bool:
        return self.main is not None and self.main.log

    @property
    def ratio(self) -> bool:
        return self.main is not None and self.main.ratio

    def selected_cell(self) -> tuple[int, int] | None:
        if getattr(self.monitor, "shown_chip", None) != self.chip_id:
            return None
        return super().selected_cell()

    def click(self, column: int, row: int) -> None:
        self.monitor.click_pixel(column, row, chip=self.chip_id)

    def label(self) -> str:
        """The title: chip_id, hits per second, out-of-matrix hits, noisy and masked pixels (from the last refresh's figures)."""
        parts = [f"chip {self.chip_id}"]
        figures = getattr(self.monitor, "shift_figures", None)
        row = None
        if figures is not None:
            row = next((r for r in figures.chip_rows if r[0] == self.chip_id), None)
        chips = list(getattr(self.monitor, "chips_seen", None) or [])
        if row is None and chips == [self.chip_id]:  # the only chip seen (no per-chip rows): the run's own figures
            oom = getattr(getattr(self.monitor, "engine", None), "out_of_matrix", 0)
            row = (self.chip_id, 0, float(getattr(self.monitor, "hit_rate", 0.0) or 0.0), int(oom or 0))
        if row is not None:
            # Three significant digits: the title (a message to the page) changes only when the rate really does.
            parts.append(f"{float(f'{row[2]:.3g}'):,g} hits/s")
            if row[3]:
                parts.append(f"out of matrix {row[3]:,}")
        elif self.chip_id not in chips:
            parts.append("no data")
        noisy = len(self._noisy_sent or ())
        if noisy:
            parts.append(f"{noisy} noisy")
        masked = len(self._mask_sent or ())
        if masked:
            parts.append(f"{masked} masked")
        return ", ".join(parts)

    def _draw_title(self, state: EngineState) -> None:
        title = self.label()
        if self.ratio:
            title += " / reference"
        elif self.log:
            title += " (log10)"
        self.set_title(title)


def _places_css(places: dict[int, tuple[int, int]]) -> str:
    """A ``<style>`` placing each chip's figure (class ``apx-cell-R-C``, 1-based) in its cell of the ``.apx-chips`` grid."""
    cells = sorted(set(places.values()))
    rules = " ".join(f".apx-chips > .apx-cell-{r + 1}-{c + 1} {{ grid-row: {r + 1}; grid-column: {c + 1}; }}" for r, c in cells)
    return f"<style>{rules}</style>"


class ChipGrid:
    """The chip maps of a layout, in a grid box; updated by the monitor as one panel.

    Parameters
    ----------
    monitor : AstroPix4SimpleMonitor
        Its monitor.
    layout : layout
        Rows of chip_ids, or a preset name (see :func:`normalize_layout`).
    main : HitMapPanel
        The main map, whose linear/log and reference toggles the chip maps follow.
    height_px : int, optional
        Height of one chip map (default: by the number of columns).
    """

    controls: list[widgets.Widget]

    def __init__(self, monitor: Any, layout: Any, main: HitMapPanel | None = None, height_px: int | None = None) -> None:
        self.monitor = monitor
        self.layout = normalize_layout(layout)
        self.main = main
        ncols = max(len(row) for row in self.layout)
        self.ncols, self.nrows = ncols, len(self.layout)
        height = int(height_px) if height_px is not None else (460 if ncols <= 2 else 380 if ncols <= 3 else 330)
        self.maps: dict[int, ChipMapPanel] = {}
        self.places: dict[int, tuple[int, int]] = {}
        figures = []
        for r, row in enumerate(self.layout):
            for c, chip in enumerate(row):
                if chip is None:
                    continue
                figure = bqplot.Figure(title_style={"font-size": "13px"})
                figure.layout.width = "auto"
                figure.layout.height = f"{height}px"
                figure.layout.min_width = "0px"
                figure.layout.grid_row = str(r + 1)
                figure.layout.grid_column = str(c + 1)
                figure.add_class(f"apx-cell-{r + 1}-{c + 1}")  # the place again, by CSS (see _places_css)
                self.maps[chip] = ChipMapPanel(figure, monitor, chip, main)
                self.places[chip] = (r, c)
                figures.append(figure)
        # The places as CSS rules too: a child's grid_row/grid_column Layout traits were not
        # applied by the front ends we test with (JupyterLab 4, ipywidgets 8.1), so a layout
        # with a hole would be drawn shifted. An HTML widget that takes no room holds the rules.
        self.places_style = widgets.HTML(_places_css(self.places), layout=widgets.Layout(display="none"))
        self.box = widgets.GridBox(
            [self.places_style, *stack_underlays(figures)],  # each map's colour canvas goes into its figure
            layout=widgets.Layout(
                grid_template_columns=f"repeat({ncols}, minmax(0, 1fr))",
                grid_template_rows=f"repeat({self.nrows}, auto)",
                width="100%",
                max_width=f"{min(1350, 460 * ncols)}px",
            ),
        )
        self.box.add_class("apx-chips")
        self.scale_toggle = widgets.ToggleButtons(options=[("shared", True), ("per chip", False)], value=True)
        self.scale_toggle.style.button_width = "80px"
        self.scale_toggle.add_class("apx-chip-scale")
        scale_box = widgets.HBox([widgets.Label("chip scales"), self.scale_toggle], layout=widgets.Layout(align_items="center", width="auto"))
        self.controls = [scale_box]

    @property
    def figures(self) -> list[bqplot.Figure]:
        """The chip maps' figures, in the layout's reading order."""
        return [panel.figure for panel in self.maps.values()]

    def chip_at(self, row: int, column: int) -> int | None:
        """The chip_id at (row, column) of the layout (None: an empty place)."""
        for chip, place in self.places.items():
            if place == (row, column):
                return chip
        return None

    @property
    def shared(self) -> bool:
        return bool(getattr(self.monitor, "shared_scale", True))

    def update(self, state: EngineState) -> None:
        """Update every chip map; with a shared scale, all colour bars go to the highest chip's top."""
        top = None
        if self.shared and not (self.main is not None and self.main.ratio):
            top = max((panel.color_top(panel.shown_counts(state)) for panel in self.maps.values()), default=0.0)
        for panel in self.maps.values():
            panel.update(state, top=top)

    def invalidate(self) -> None:
        for panel in self.maps.values():
            panel.invalidate()

    def own_widgets(self) -> list[widgets.Widget]:
        out: list[widgets.Widget] = [self.box, self.places_style, *self.controls]
        for panel in self.maps.values():
            out += [panel.figure, *panel.own_widgets()]
        return out

    def redraw(self) -> None:
        self.invalidate()
        if self.monitor is not None:
            self.monitor.redraw()
