"""The hit map's colours on the page: one small canvas, one byte a pixel.

bqplot's ``HeatMap`` redraws a refresh by filling every cell into a canvas
as large as the plot, encoding that canvas as a PNG and loading the PNG into
an SVG ``<image>``: about 6 ms of the page's main thread a refresh for one
35 x 16 matrix on the machines of ``benchmarks/bench_browser.py``, most of
the page's cost. :class:`MatrixCanvas` draws the same colours into a canvas
of one pixel a cell (``putImageData`` of ``rows x cols`` pixels, scaled by
CSS without smoothing), under the hit map's bqplot figure, whose axes,
colour bar, markers and click/hover layer stay as they were (the figure's
plot area is made transparent). What goes to the page at a refresh is one
byte a cell: the index of the cell's colour in :attr:`palette`, computed in
the kernel from the values and the colour scale's range. The palette (255
colours and the colour of the cells without a value) is sent when the scheme
changes.

``color`` keeps, in the kernel, the values drawn (``[row, column]``, NaN for
no value), as a ``bqplot.HeatMap``'s ``color`` did.

:attr:`MatrixCanvas.caption`, when set, is a title line drawn by the same
element in the figure's top margin, over the plot area: a title whose
numbers change while data come (a chip map's hit rate) is then one text
node rewritten, where a change of the bqplot figure's ``title`` lays the
whole figure out again, axes and marks: about 8 ms of the page's main
thread a refresh for 16 chip maps (``benchmarks/bench_browser.py --freeze
titles``). With :attr:`MatrixCanvas.pointer` (:meth:`MatrixCanvas.on_cell`)
the element also tells the kernel which cell a click or a hover is on, and
shows the kernel's answer to a hover (:attr:`MatrixCanvas.hint`) by the
mouse: no layer of one SVG element a cell is needed to catch them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import anywidget
import numpy as np
from traitlets import Bool, Bytes, Dict, Int, Unicode

__all__ = ["MatrixCanvas", "NULL_INDEX", "SCHEMES", "palette_bytes", "color_indices", "stack_underlays"]

logger = logging.getLogger(__name__)

#: The palette index of a cell without a value (NaN): the palette's last colour.
NULL_INDEX = 255

#: Colour schemes: colours at evenly spaced points from the scale's minimum to its
#: maximum, linearly interpolated between them. viridis: the scheme's published
#: values at ten points; RdBu: ColorBrewer's eleven-class diverging scheme (red low,
#: white in the middle, blue high), as d3's schemes (and bqplot's colour bar) have them.
SCHEMES: dict[str, tuple[str, ...]] = {
    "viridis": ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"),
    "RdBu": ("#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3", "#2166ac", "#053061"),
}


def _rgb(color: str) -> tuple[int, int, int]:
    text = color.lstrip("#")
    if len(text) != 6:
        msg = f"colours are given as #rrggbb, got {color!r}"
        raise ValueError(msg)
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def palette_bytes(scheme: str, null_color: str) -> bytes:
    """256 RGBA colours: 255 steps of ``scheme`` from low to high, then ``null_color`` (index :data:`NULL_INDEX`)."""
    try:
        anchors = np.array([_rgb(c) for c in SCHEMES[scheme]], dtype=np.float64)
    except KeyError:
        msg = f"unknown colour scheme {scheme!r}; known: {sorted(SCHEMES)}"
        raise ValueError(msg) from None
    where = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, NULL_INDEX)
    rgb = np.stack([np.interp(t, where, anchors[:, k]) for k in range(3)], axis=1)
    out = np.empty((NULL_INDEX + 1, 4), dtype=np.uint8)
    out[:NULL_INDEX, :3] = np.round(rgb).astype(np.uint8)
    out[:NULL_INDEX, 3] = 255
    out[NULL_INDEX, :3] = _rgb(null_color)
    out[NULL_INDEX, 3] = 255
    return out.tobytes()


def color_indices(values: np.ndarray, vmin: float, vmax: float, mid: float | None = None) -> np.ndarray:
    """Palette indices (uint8) of ``values`` on the scale ``vmin .. vmax`` (``mid``: a diverging scale's centre).

    Values outside the range take the end colours; NaN takes :data:`NULL_INDEX`.
    With ``mid``, ``vmin .. mid`` fills the first half of the palette and
    ``mid .. vmax`` the second, as a ``bqplot.ColorScale`` with ``mid`` does.
    """
    v = np.asarray(values, dtype=np.float64)
    lo, hi = float(vmin), float(vmax)
    with np.errstate(invalid="ignore", divide="ignore"):
        if mid is None:
            t = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
        else:
            m = float(mid)
            below = 0.5 * (v - lo) / (m - lo) if m > lo else np.zeros_like(v)
            above = 0.5 + 0.5 * (v - m) / (hi - m) if hi > m else np.ones_like(v)
            t = np.where(v < m, below, above)
    t = np.clip(t, 0.0, 1.0)
    index = np.round(t * (NULL_INDEX - 1))
    index[~np.isfinite(v)] = NULL_INDEX
    return index.astype(np.uint8)


_ESM = r"""
function bytesOf(value) {
  if (!value) { return new Uint8Array(0); }
  if (value instanceof DataView) { return new Uint8Array(value.buffer, value.byteOffset, value.byteLength); }
  if (value instanceof ArrayBuffer) { return new Uint8Array(value); }
  if (ArrayBuffer.isView(value)) { return new Uint8Array(value.buffer, value.byteOffset, value.byteLength); }
  return new Uint8Array(0);
}

function render({ model, el }) {
  // This element takes no room (display: none); its canvas goes into the figure
  // it lies under (a sibling with the class in "target"), once both are on the page.
  el.classList.add("apx-matrix");
  const canvas = document.createElement("canvas");
  canvas.className = "apx-matrix-canvas";
  const ctx = canvas.getContext("2d");
  let tries = 0;
  const attach = () => {
    const parent = el.parentElement;
    const figure = parent ? parent.querySelector(":scope > ." + model.get("target")) : null;
    if (figure) {
      figure.insertBefore(canvas, figure.firstChild);
      figure.appendChild(caption);
      figure.appendChild(hint);
      figure.addEventListener("mousemove", onMove);
      figure.addEventListener("mouseleave", onLeave);
      figure.addEventListener("click", onClick);
      return;
    }
    if (tries++ < 600) { setTimeout(attach, 50); }
  };
  const caption = document.createElement("div");
  caption.className = "apx-matrix-caption";
  // With "pointer": clicks and hovers over the plot area name their cell to the kernel
  // (in place of a layer of one SVG element a cell), and "hint" is shown by the mouse.
  const hint = document.createElement("div");
  hint.className = "apx-matrix-hint";
  let hovered = null;
  const cellAt = (ev) => {
    const r = canvas.getBoundingClientRect();
    const rows = model.get("rows"), cols = model.get("cols");
    const x = (ev.clientX - r.left) / r.width, y = (ev.clientY - r.top) / r.height;
    if (!(x >= 0 && x < 1 && y >= 0 && y < 1) || rows <= 0 || cols <= 0) { return null; }
    return { row: Math.floor(y * rows), column: Math.floor(x * cols) };
  };
  const showHint = () => {
    // The kernel's answer names its cell: shown only while the mouse is on that cell.
    const h = model.get("hint") || {};
    const text = hovered && h.row === hovered.row && h.column === hovered.column ? (h.text || "") : "";
    if (hint.textContent !== text) { hint.textContent = text; }
    hint.style.display = text ? "block" : "none";
  };
  const send = (event, cell) => {
    try { model.send({ event: event, row: cell.row, column: cell.column }); } catch (e) { /* no kernel */ }
  };
  const onMove = (ev) => {
    if (!model.get("pointer")) { return; }
    const cell = cellAt(ev);
    if (!cell) { hovered = null; showHint(); return; }
    const box = canvas.parentElement.getBoundingClientRect();
    hint.style.left = (ev.clientX - box.left + 14) + "px";
    hint.style.top = (ev.clientY - box.top + 14) + "px";
    if (!hovered || hovered.row !== cell.row || hovered.column !== cell.column) {
      hovered = cell;
      send("hover", cell);
    }
    showHint();
  };
  const onLeave = () => { hovered = null; showHint(); };
  const onClick = (ev) => {
    if (!model.get("pointer")) { return; }
    const cell = cellAt(ev);
    if (cell) { send("click", cell); }
  };
  let image = null;
  let drawn = 0;
  const place = () => {
    const m = model.get("inset") || {};
    const top = m.top || 0, right = m.right || 0, bottom = m.bottom || 0, left = m.left || 0;
    canvas.style.left = left + "px";
    canvas.style.top = top + "px";
    canvas.style.width = "calc(100% - " + (left + right) + "px)";
    canvas.style.height = "calc(100% - " + (top + bottom) + "px)";
    caption.style.left = left + "px";
    caption.style.right = right + "px";
    caption.style.height = top + "px";
    caption.style.lineHeight = top + "px";
  };
  const label = () => {
    const text = model.get("caption") || "";
    if (caption.textContent !== text) { caption.textContent = text; }
    caption.title = text;
  };
  const draw = () => {
    const rows = model.get("rows"), cols = model.get("cols");
    const pixels = bytesOf(model.get("pixels"));
    const palette = bytesOf(model.get("palette"));
    if (rows <= 0 || cols <= 0 || pixels.length < rows * cols || palette.length < 1024) { return; }
    if (canvas.width !== cols || canvas.height !== rows || image === null) {
      canvas.width = cols;
      canvas.height = rows;
      image = ctx.createImageData(cols, rows);
    }
    const data = image.data;
    for (let i = 0, n = rows * cols; i < n; i++) {
      const k = pixels[i] * 4, j = i * 4;
      data[j] = palette[k]; data[j + 1] = palette[k + 1]; data[j + 2] = palette[k + 2]; data[j + 3] = palette[k + 3];
    }
    ctx.putImageData(image, 0, 0);
    drawn += 1;
    el.dataset.drawn = String(drawn);
  };
  model.on("change:pixels", draw);
  model.on("change:palette", draw);
  model.on("change:rows", draw);
  model.on("change:cols", draw);
  model.on("change:inset", place);
  model.on("change:caption", label);
  model.on("change:hint", showHint);
  place();
  label();
  showHint();
  draw();
  attach();
  return () => {
    const figure = canvas.parentElement;
    if (figure) {
      figure.removeEventListener("mousemove", onMove);
      figure.removeEventListener("mouseleave", onLeave);
      figure.removeEventListener("click", onClick);
    }
    canvas.remove();
    caption.remove();
    hint.remove();
    model.off("change:caption", label);
    model.off("change:hint", showHint);
    model.off("change:pixels", draw);
    model.off("change:palette", draw);
    model.off("change:rows", draw);
    model.off("change:cols", draw);
    model.off("change:inset", place);
  };
}

export default { render };
"""

_CSS = """
.apx-matrix { display: none !important; }
.apx-over-matrix { position: relative; }
.apx-over-matrix > .apx-matrix-canvas { position: absolute; z-index: 0; image-rendering: pixelated; pointer-events: none; }
.apx-over-matrix > svg { position: relative; z-index: 1; }
.apx-over-matrix > svg .svg-figure { background: transparent !important; }
.apx-over-matrix > .apx-matrix-caption {
  position: absolute; top: 0; z-index: 2; contain: strict; pointer-events: none;
  text-align: center; white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
  font-size: 13px; color: var(--jp-ui-font-color1, #000);
}
.apx-over-matrix > .apx-matrix-caption:empty { display: none; }
.apx-over-matrix > .apx-matrix-hint {
  position: absolute; z-index: 3; display: none; pointer-events: none; white-space: nowrap;
  font-size: 12px; padding: 2px 6px; border: 1px solid #999; border-radius: 3px;
  background: var(--jp-layout-color0, #fff); color: var(--jp-ui-font-color1, #000);
}
"""


class MatrixCanvas(anywidget.AnyWidget):
    """A matrix of colour cells drawn on a canvas under a bqplot figure's plot area.

    Parameters
    ----------
    rows, cols : int
        The matrix's shape; row 0 is drawn at the top, column 0 at the left.
    null_color : str
        The colour of cells without a value (NaN), ``#rrggbb``.

    :meth:`show` draws values on a colour scale; ``color`` gives them back
    (``[row, column]``). Put the widget in the figure's grid cell, before the
    figure (:func:`stack_underlays`), and keep :attr:`inset` equal to the
    figure's ``fig_margin`` (:meth:`follow`).
    """

    _esm = Unicode(_ESM).tag(sync=True)
    _css = Unicode(_CSS).tag(sync=True)
    rows = Int(0).tag(sync=True)
    cols = Int(0).tag(sync=True)
    #: One palette index a cell, row by row (row 0 first).
    pixels = Bytes(b"").tag(sync=True)
    #: 256 RGBA colours (see :func:`palette_bytes`).
    palette = Bytes(b"").tag(sync=True)
    #: The figure's margins around its plot area, px: where the canvas lies.
    inset = Dict().tag(sync=True)
    #: The CSS class of the figure the canvas goes into (a sibling of this widget's element).
    target = Unicode("").tag(sync=True)
    #: A title line drawn in the figure's top margin (empty: none); plain text.
    caption = Unicode("").tag(sync=True)
    #: Clicks and hovers over the plot area are sent to the kernel (see :meth:`on_cell`).
    pointer = Bool(False).tag(sync=True)
    #: What the mouse shows over a cell, in answer to a hover: ``{"row", "column", "text"}`` (plain text).
    hint = Dict().tag(sync=True)

    def __init__(self, rows: int, cols: int, *, null_color: str = "#c8c8c8", scheme: str = "viridis", **kwargs: Any) -> None:
        super().__init__(rows=int(rows), cols=int(cols), **kwargs)
        self.null_color = null_color
        self.scheme = ""
        self.set_scheme(scheme)
        #: The values drawn, ``[row, column]`` (NaN: no value): what :meth:`show` was given last.
        self.color: np.ndarray = np.zeros((self.rows, self.cols), dtype=np.uint8)
        self.pixels = color_indices(self.color, 0.0, 1.0).tobytes()
        self._cell_callbacks: list[Callable[[str, int, int], None]] = []
        self.on_msg(self._on_page_msg)

    def on_cell(self, callback: Callable[[str, int, int], None]) -> None:
        """Call ``callback(event, column, row)`` for a ``"click"`` or ``"hover"`` on a cell; turns :attr:`pointer` on."""
        self._cell_callbacks.append(callback)
        self.pointer = True

    def _on_page_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        """A message of the page: a cell clicked or hovered; anything else (or a cell outside the matrix) is ignored."""
        if not isinstance(content, dict) or content.get("event") not in ("click", "hover"):
            logger.debug("ignored a message of the page: %.200r", content)
            return
        try:
            row, column = int(content["row"]), int(content["column"])
        except (KeyError, TypeError, ValueError):
            logger.debug("ignored a %s message without a cell: %.200r", content.get("event"), content)
            return
        if not (0 <= row < self.rows and 0 <= column < self.cols):
            return
        for callback in list(self._cell_callbacks):
            try:
                callback(content["event"], column, row)
            except Exception:
                logger.exception("a %s on cell (column %d, row %d) failed", content["event"], column, row)

    def set_scheme(self, scheme: str) -> None:
        """Use another colour scheme (sends the palette once)."""
        if scheme != self.scheme:
            self.palette = palette_bytes(scheme, self.null_color)
            self.scheme = scheme

    def show(self, values: np.ndarray, vmin: float, vmax: float, mid: float | None = None) -> None:
        """Draw ``values`` (``[row, column]``) on the scale ``vmin .. vmax`` (``mid``: diverging); sends what changed."""
        values = np.asarray(values)
        if values.shape != (self.rows, self.cols):
            msg = f"values of shape {values.shape} for a {self.rows} x {self.cols} matrix"
            raise ValueError(msg)
        self.color = values
        pixels = color_indices(values, vmin, vmax, mid).tobytes()
        if pixels != self.pixels:
            self.pixels = pixels

    def drawn_colors(self) -> np.ndarray:
        """The RGB colour of each cell as the page draws it, ``[row, column, 3]`` (uint8)."""
        palette = np.frombuffer(self.palette, dtype=np.uint8).reshape(-1, 4)
        index = np.frombuffer(self.pixels, dtype=np.uint8).reshape(self.rows, self.cols)
        return palette[index, :3]

    def follow(self, figure: Any) -> None:
        """Lie under ``figure``'s plot area: its margins now and whenever they change; its plot area made transparent."""
        self.inset = dict(figure.fig_margin)
        figure.observe(lambda change: setattr(self, "inset", dict(change["new"])), "fig_margin")
        style = dict(figure.background_style or {})
        style["fill"] = "none"
        figure.background_style = style
        figure.add_class("apx-over-matrix")
        self.target = f"apx-matrix-of-{self.model_id}"
        figure.add_class(self.target)
        figure._apx_underlay = self  # read by stack_underlays()


def stack_underlays(children: Sequence[Any]) -> list[Any]:
    """``children`` of a container with each figure's underlay (a :class:`MatrixCanvas` that follows it) just before it.

    The underlay's element takes no room on the page (its canvas moves into
    the figure's element): the grid's cells stay as they were. Idempotent.
    """
    out: list[Any] = []
    for child in children:
        if isinstance(child, MatrixCanvas):
            continue
        under = getattr(child, "_apx_underlay", None)
        if under is not None:
            out.append(under)
        out.append(child)
    return out
