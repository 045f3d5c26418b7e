"""A static picture of a monitor's state, for the logbook: a PNG and the figures as text.

:func:`render_png` draws, with matplotlib and no screen (the Agg canvas on a
:class:`matplotlib.figure.Figure` of its own; pyplot's global state is never
touched), the three plots of the monitor: the hit map (columns on x, rows on
y, row 0 at the top as the monitor draws it), the TOT spectrum (under- and
overflow in the title) and the readout and hit rates. Given a reference run
the TOT panel overlays its spectrum scaled to the same number of hits, with
the compatibility figures (:mod:`astropix_nbmonitor.compare`) in its title.

:func:`summary_text` gives the dashboard's figures as text (a header line
and the status table). :func:`snapshot` gives both as a :class:`Snapshot`,
which Jupyter shows as the image (``_repr_png_``) with the text as its plain
form, so it stays in a saved notebook, nbconvert's output and a PDF export.

Any state will do: an :class:`~astropix_nbmonitor.engine.EngineState` or a
:class:`~astropix_nbmonitor.histio.SavedRun` (its rate history comes from
its metadata). matplotlib is optional (``pip install
'astropix-nbmonitor[files]'``); mplhep only for ``style=``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boost_histogram as bh
import numpy as np

from .status import Status

__all__ = ["Snapshot", "render_png", "snapshot", "summary_text"]

logger = logging.getLogger(__name__)

#: The eight bytes every PNG file starts with.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXTRA = "astropix-nbmonitor[files]"


@dataclasses.dataclass(frozen=True)
class _View:
    """What the snapshot draws, read from a state or a saved run."""

    hit_counts: np.ndarray  # (rows, columns)
    tot_hist: bh.Histogram
    rates: np.ndarray  # (3, n): seconds (<= 0), readouts/s, hits/s
    status: Status
    time: float | None
    seq: int | None
    running: bool | None
    chips: tuple[int, ...]


def _view(state: Any, chip: int | None) -> _View:
    """Read the plots' data from an EngineState or a SavedRun."""
    histograms = state.histograms
    maps = histograms["chip_hit_map"]
    if chip is None:
        tot = histograms["tot_hist"]
        counts = maps.view().sum(axis=0)
    else:
        tot = histograms["chip_tot_hist"][bh.loc(int(chip)), :]
        counts = maps[bh.loc(int(chip)), :, :].view()
    status = state.status if isinstance(state.status, Status) else Status.from_dict(state.status)
    meta = getattr(state, "metadata", {}) or {}
    rates = getattr(state, "rates", None)
    if rates is None:
        saved = meta.get("rates", {})
        rates = np.array([saved.get("seconds", []), saved.get("readouts_per_s", []), saved.get("hits_per_s", [])], dtype=float)
    return _View(
        hit_counts=np.ascontiguousarray(np.asarray(counts, dtype=np.float64).T),
        tot_hist=tot,
        rates=np.asarray(rates, dtype=np.float64).reshape(3, -1),
        status=status,
        time=getattr(state, "time", meta.get("state_time")),
        seq=getattr(state, "seq", meta.get("state_seq")),
        running=getattr(state, "running", meta.get("running")),
        chips=tuple(getattr(state, "chips", meta.get("chips", ()))),
    )


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------


def header_line(state: Any, *, title: str | None = None) -> str:
    """``AstroPix monitor, 2026-12-01 10:30:00 UTC, state 12, running, chips 0, 3``."""
    view = _view(state, None)
    parts = [title or "AstroPix monitor"]
    if view.time is not None:
        when = datetime.datetime.fromtimestamp(float(view.time), datetime.timezone.utc)
        parts.append(when.strftime("%Y-%m-%d %H:%M:%S UTC"))
    if view.seq is not None:
        parts.append(f"state {view.seq}")
    if view.running is not None:
        parts.append("running" if view.running else "stopped")
    if view.chips:
        parts.append("chips " + ", ".join(str(c) for c in view.chips))
    return ", ".join(parts)


def summary_text(state: Any, *, title: str | None = None) -> str:
    """The dashboard's figures as text: a header line, then ``state.status.text_block()``."""
    view = _view(state, None)
    return "\n".join([header_line(state, title=title), *view.status.text_block()])


# --------------------------------------------------------------------------
# Picture
# --------------------------------------------------------------------------


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's Figure and Agg canvas classes, or an ImportError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        msg = f"snapshots need the optional package matplotlib: pip install '{_EXTRA}'"
        raise ImportError(msg) from exc
    return Figure, FigureCanvasAgg


@contextlib.contextmanager
def _style(style: str | None) -> Iterator[None]:
    """mplhep's named style (``"ROOT"``, ``"ATLAS"``, ``"CMS"``, ``"LHCb2"``...) for the drawing, or none."""
    if style is None:
        yield
        return
    try:
        import matplotlib.style
        import mplhep
    except ImportError as exc:
        msg = f"style={style!r} needs the optional package mplhep: pip install '{_EXTRA}'"
        raise ImportError(msg) from exc
    try:
        chosen = getattr(mplhep.style, style)
    except AttributeError:
        msg = f"mplhep has no style {style!r}"
        raise ValueError(msg) from None
    with matplotlib.style.context(chosen):
        yield


def _draw_hit_map(fig: Any, ax: Any, counts: np.ndarray, log: bool) -> None:
    shown = np.log10(1.0 + counts) if log else counts
    rows, cols = counts.shape
    image = ax.imshow(
        shown, origin="upper", aspect="auto", interpolation="nearest", cmap="viridis",
        extent=(-0.5, cols - 0.5, rows - 0.5, -0.5),
    )
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    total = int(counts.sum())
    ax.set_title(f"Hit map: {total:,} hits" + (" (log10(1 + hits))" if log else ""))
    fig.colorbar(image, ax=ax, label="log10(1 + hits)" if log else "hits")


def _draw_tot(ax: Any, tot: bh.Histogram, reference: Any, chip: int | None) -> None:
    counts = np.asarray(tot.values(), dtype=np.float64)
    edges = np.asarray(tot.axes[0].edges)
    flow = np.asarray(tot.values(flow=True))
    under, over = int(flow[0]), int(flow[-1])
    ax.stairs(counts, edges, label="this run", color="C0")
    title = f"TOT: {int(tot.sum(flow=True)):,} hits"
    if under or over:
        title += f", {under:,} under / {over:,} over"
    if reference is not None:
        from .compare import compatibility, scaled_reference

        ref_tot = _view(reference, chip).tot_hist
        ax.stairs(scaled_reference(tot, ref_tot), edges, label="reference (scaled)", color="C1", linestyle="--")
        title += f"\n{compatibility(tot, ref_tot).text()}"
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlabel("TOT [us]")
    ax.set_ylabel("hits per bin")
    ax.set_title(title)


def _draw_rates(ax: Any, rates: np.ndarray) -> None:
    seconds, readouts, hits = rates
    if seconds.size:
        ax.plot(seconds, readouts, label="readouts/s", color="C0")
        ax.plot(seconds, hits, label="hits/s", color="C2")
        ax.legend(loc="upper left", fontsize="small")
    else:
        ax.text(0.5, 0.5, "no rate history", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("seconds (0 = now)")
    ax.set_ylabel("per second")
    ax.set_title("Rates")


def render_png(
    state: Any,
    *,
    title: str | None = None,
    dpi: int = 100,
    chip: int | None = None,
    log: bool = False,
    reference: Any = None,
    style: str | None = None,
) -> bytes:
    """Draw the hit map, the TOT spectrum and the rates of a state as a PNG.

    Parameters
    ----------
    state : EngineState or SavedRun
        What to draw.
    title : str, optional
        The figure's title (default: the header line of :func:`summary_text`).
    dpi : int
        Resolution (the figure is 15 x 4.5 inches).
    chip : int, optional
        One chip_id's hit map and TOT (default all chips).
    log : bool
        Hit map colours as ``log10(1 + hits)``, as the monitor's log mode.
    reference : EngineState or SavedRun, optional
        A reference run: its TOT spectrum scaled and overlaid, with the
        compatibility figures.
    style : str, optional
        An mplhep style name (needs mplhep).

    Returns
    -------
    bytes
        The PNG file's bytes.

    Raises
    ------
    ImportError
        Without matplotlib (or mplhep for ``style=``), naming the extra to install.
    """
    Figure, FigureCanvasAgg = _matplotlib()
    view = _view(state, chip)
    with _style(style):
        fig = Figure(figsize=(15, 4.5), dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        ax_map, ax_tot, ax_rate = fig.subplots(1, 3, width_ratios=(1.0, 1.3, 1.3))
        _draw_hit_map(fig, ax_map, view.hit_counts, log)
        _draw_tot(ax_tot, view.tot_hist, reference, chip)
        _draw_rates(ax_rate, view.rates)
        fig.suptitle(title or header_line(state))
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A picture and the figures of a state; Jupyter shows the picture.

    Attributes
    ----------
    png : bytes
    text : str
    """

    png: bytes
    text: str

    def _repr_png_(self) -> bytes:
        return self.png

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"image/png": base64.b64encode(self.png).decode("ascii"), "text/plain": self.text}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the PNG to ``path`` (and the text beside it, with ``.txt``)."""
        target = Path(path)
        target.write_bytes(self.png)
        target.with_suffix(".txt").write_text(self.text + "\n", encoding="utf-8")
        return target

    def __repr__(self) -> str:
        return self.text


def snapshot(state: Any, **options: Any) -> Snapshot:
    """:func:`render_png` and :func:`summary_text` of one state (options as :func:`render_png`'s)."""
    return Snapshot(render_png(state, **options), summary_text(state, title=options.get("title")))
