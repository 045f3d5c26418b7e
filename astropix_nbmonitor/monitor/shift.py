"""What a shift acts on, on every monitor: latched alarms, noisy pixels, masks, per-chip figures.

:class:`ShiftMixin` is a base of :class:`~astropix_nbmonitor.monitor.AbstractMonitor`
and wires the headless modules into the widget:

* :mod:`astropix_nbmonitor.alarms` - an :class:`~astropix_nbmonitor.alarms.AlarmBook`
  evaluated at every refresh on the processing thread (the default rules,
  plus ``reference``: the reference run's TOT compatibility turned red with
  enough hits), its latched alarms in the ``alarms`` traitlet and in red at
  the top of the dashboard until acknowledged;
* :mod:`astropix_nbmonitor.noisy` - :meth:`~ShiftMixin.noisy_pixels` over the
  whole run, or over the window shown;
* :mod:`astropix_nbmonitor.masks` - a :class:`~astropix_nbmonitor.masks.PixelMask`
  the displayed hit map and TOT spectrum leave out, written back in the DAQ's
  chip configuration.

What is computed at a refresh (noisy pixels, masked hits, per-chip figures)
is kept in :attr:`ShiftMixin.shift_figures` for the dashboard, so the
dashboard never reads the engine again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import masks
from ..alarms import AlarmBook
from ..astropix4.layout import NUM_CHIPS
from ..noisy import NoisyPixel, find_noisy

__all__ = ["ShiftFigures", "ShiftMixin"]

logger = logging.getLogger(__name__)

#: The alarm rule of the reference run's compatibility.
REFERENCE_ALARM = "reference"


@dataclasses.dataclass(frozen=True)
class ShiftFigures:
    """What the dashboard shows of the shift's tools, computed at one refresh.

    Attributes
    ----------
    seconds : float
        The time the counts cover: the window, or the monitor's uptime.
    window : float
        The window shown (0: the whole run).
    noisy : tuple of NoisyPixel
        The pixels found noisy over those counts.
    masked_hits : int
        Hits of the masked pixels in those counts (left out of the displayed map).
    chip_rows : tuple of tuple
        ``(chip_id, hits, hits per second, out-of-matrix hits)`` per chip seen,
        over those counts (empty with a single chip).
    """

    seconds: float = 0.0
    window: float = 0.0
    noisy: tuple[NoisyPixel, ...] = ()
    masked_hits: int = 0
    chip_rows: tuple[tuple[int, int, float, int], ...] = ()


class ShiftMixin:
    """Alarms, noisy pixels and masks for a monitor widget (see the module's text)."""

    #: A noisy pixel has more than this many times the median hits of its chip's fired pixels ...
    NOISY_FACTOR = 10.0
    #: ... and at least this many hits (see :func:`astropix_nbmonitor.noisy.find_noisy`).
    NOISY_MIN_HITS = 20

    def _init_shift(self, num_rows: int, num_cols: int) -> None:
        """Make the alarm book and the mask (called by the monitor's ``__init__``)."""
        self.alarm_book = AlarmBook()
        self.alarm_book.add_external(REFERENCE_ALARM)
        self.mask = masks.PixelMask(num_rows=num_rows, num_cols=num_cols)
        self.shift_figures = ShiftFigures()

    # ------------------------------------------------------------------ alarms
    def add_alarm(
        self, name: str, counter_or_rate: str, above: float | None = None, below: float | None = None, for_seconds: float = 0
    ) -> None:
        """Add an alarm on a counter of the status table (``"lost"``), or on its rate of change (``"lost/s"``).

        It fires when the value is above ``above`` or below ``below`` for
        ``for_seconds`` or longer, and latches as the default alarms do.
        """
        with self.engine._processing_lock:
            self.alarm_book.add(name, counter_or_rate, above=above, below=below, for_seconds=for_seconds)

    def acknowledge(self, name: str | None = None) -> int:
        """Acknowledge one alarm (None: all); returns how many.

        A cleared alarm leaves the dashboard at once; one whose condition
        still holds stays, marked acknowledged, until it clears.
        """
        with self.engine._processing_lock:
            count = self.alarm_book.acknowledge(name)
            self._publish_alarms()
        self._render_dashboard()
        return count

    def _evaluate_alarms(self, status: Any, running: bool) -> None:
        """Evaluate the alarm book (at every refresh, on the processing thread)."""
        clock = getattr(self.engine, "clock", None)
        now = None if clock is None else clock()
        self.alarm_book.evaluate(status, now=now, running=running, noisy=self.shift_figures.noisy)
        self._publish_alarms()

    def _publish_alarms(self) -> None:
        alarms = self.alarm_book.alarms
        if alarms != self.alarms:
            self.set_trait("alarms", alarms)

    def _note_reference_alarm(self, message: str | None) -> None:
        """The reference compatibility is red with enough hits (message) or not (None)."""
        self.alarm_book.set_condition(REFERENCE_ALARM, message)

    # ------------------------------------------------------------------ noisy pixels
    def noisy_pixels(self, seconds: float | None = None) -> list[NoisyPixel]:
        """The noisy pixels of every chip, busiest first (chip_id, column, row, hits, rate).

        Over the last ``seconds`` (default: the window shown, :attr:`window`),
        or over the whole run when that is 0; the rule is
        :func:`astropix_nbmonitor.noisy.find_noisy`'s with :attr:`NOISY_FACTOR`
        and :attr:`NOISY_MIN_HITS`. Rates are hits per second over the window,
        or over the monitor's uptime (at least 1 s: a replayed run has none).
        """
        counts, span = self._counts_for(self.window if seconds is None else seconds)
        return self._find_noisy(counts, span)

    def _find_noisy(self, counts: np.ndarray, seconds: float) -> list[NoisyPixel]:
        return find_noisy(counts, seconds, factor=self.NOISY_FACTOR, min_hits=self.NOISY_MIN_HITS)

    def _counts_for(self, seconds: float) -> tuple[np.ndarray, float]:
        """Hit counts ``[chip, column, row]`` of the last ``seconds`` (0: whole run), and the seconds they cover."""
        if seconds and self.windows_available:
            return self.engine.windows.counts(seconds, self.engine.clock()), float(seconds)
        return self._run_counts(), max(float(self.engine.uptime), 1.0)

    def _run_counts(self) -> np.ndarray:
        """The whole run's hit counts ``[chip, column, row]`` (a copy; the same one while ``change_mark()`` stays)."""
        accumulator = getattr(self.engine, "accumulator", None)
        if accumulator is not None:
            return self._unchanged_run("counts", lambda: accumulator.snapshot()["chip_hit_map"].values())
        state = self.engine.state()
        if state is None or "chip_hit_map" not in state.histograms:
            return np.zeros((NUM_CHIPS, 1, 1), dtype=np.int64)
        return state.histograms["chip_hit_map"].values()

    def _unchanged_run(self, name: str, compute: Any) -> Any:
        """``compute()``, or what it gave last time when the engine's ``change_mark()`` has not moved since.

        The whole run's figures change only with the data: an idle refresh
        (no datagram, no record, no reset) reuses them instead of copying the
        histograms again. A hub viewer's engine has no mark: always computed.
        """
        mark_of = getattr(self.engine, "change_mark", None)
        if mark_of is None:
            return compute()
        mark = mark_of()  # before computing: data arriving meanwhile move the next mark
        cache = self.__dict__.setdefault("_run_cache", {})
        hit = cache.get(name)
        if hit is not None and hit[0] == mark:
            return hit[1]
        value = compute()
        cache[name] = (mark, value)
        return value

    def _update_shift_figures(self) -> None:
        """Noisy pixels, masked hits and per-chip figures of the counts shown (at every refresh)."""
        window = float(self.window) if self.windows_available else 0.0
        counts, seconds = self._counts_for(window)
        if window:
            noisy = tuple(self._find_noisy(counts, seconds))
        else:  # the same pixels while the counts stay; their rates follow the uptime
            found = self._unchanged_run("noisy", lambda: tuple(self._find_noisy(counts, seconds)))
            noisy = tuple(dataclasses.replace(p, rate=p.hits / seconds) for p in found)
        masked = self.mask.masked_hits(counts) if len(self.mask) else 0
        self.shift_figures = ShiftFigures(seconds, window, noisy, masked, self._chip_rows(counts, seconds, window))

    def _chip_rows(self, counts: np.ndarray, seconds: float, window: float) -> tuple[tuple[int, int, float, int], ...]:
        """Per chip seen: hits, hits/s and out-of-matrix hits (TOT entries minus hit-map entries)."""
        chips = list(self.engine.chips_seen) if hasattr(self.engine, "chips_seen") else []
        if len(chips) <= 1:
            return ()
        tots = self._tot_entries(window)
        rows = []
        for chip in chips:
            inside = int(counts[chip].sum())
            total = int(tots[chip]) if tots is not None else inside
            rows.append((int(chip), total, total / seconds, max(total - inside, 0)))
        return tuple(rows)

    def _tot_entries(self, window: float) -> np.ndarray | None:
        """Hits per chip, out-of-matrix ones included (the TOT spectra's entries)."""
        engine = self.engine
        if window and self.windows_available:
            now = engine.clock()
            out = np.zeros(NUM_CHIPS, dtype=np.int64)
            for chip in engine.windows.chips_seen:
                out[chip] = engine.windows.tot_hist(window, chip, now).sum(flow=True)
            return out
        accumulator = getattr(engine, "accumulator", None)
        if accumulator is None:
            return None
        return self._unchanged_run("tot_entries", lambda: accumulator.snapshot()["chip_tot_hist"].values(flow=True).sum(axis=1))

    # ------------------------------------------------------------------ masks
    @property
    def masked_pixels(self) -> set[tuple[int, int, int]]:
        """The masked pixels, as ``(chip_id, column, row)``."""
        return self.mask.masked_pixels

    def mask_pixels(self, pixels: Any) -> None:
        """Mask pixels: ``(chip_id, column, row)`` tuples or :meth:`noisy_pixels` items (one, or an iterable).

        The displayed hit map and TOT spectrum leave them out; ``hit_map``
        and ``tot_hist`` stay complete.
        """
        with self.engine._processing_lock:
            self.mask.add(pixels)
        self._on_mask_changed()

    def unmask_pixels(self, pixels: Any) -> None:
        """Unmask pixels (tuples or :meth:`noisy_pixels` items); pixels not masked are ignored."""
        with self.engine._processing_lock:
            self.mask.remove(pixels)
        self._on_mask_changed()

    def mask_noisy(self) -> list[NoisyPixel]:
        """Mask the pixels found noisy now (what the toolbar's "Mask noisy" button does); returns them."""
        noisy = self.noisy_pixels()
        if noisy:
            self.mask_pixels(noisy)
        return noisy

    def write_mask(
        self, path: str | os.PathLike[str], config: str | os.PathLike[str] | None = None, chip_id: int | None = -1
    ) -> Path:
        """Write the mask for the DAQ: the chip configuration YAML with each masked pixel's comparator disabled.

        Given the run's own configuration file (``config``), every other key
        and bit stays as it was; without one a minimal single-chip document
        is written (see :func:`astropix_nbmonitor.masks.write_mask`).
        ``chip_id``: which chip's pixels go into a single-chip file (default:
        the chip shown, else the only chip masked, else 0); None writes every
        chip into its own section of a multi-chip file.
        """
        if chip_id == -1:
            chip_id = self._mask_chip()
        return masks.write_mask(self.mask, path, config, chip_id=chip_id)

    def _mask_chip(self) -> int:
        shown = getattr(self, "shown_chip", None)
        if shown is not None:
            return int(shown)
        chips = {k for k, _, _ in self.mask}
        return chips.pop() if len(chips) == 1 else 0

    def read_mask(self, path: str | os.PathLike[str], chip_id: int | None = 0) -> set[tuple[int, int, int]]:
        """Mask the pixels whose comparator is disabled in a chip configuration file (replacing the mask).

        Note that a DAQ file may disable almost every pixel. Returns the
        masked pixels.
        """
        read = masks.read_mask(path, chip_id=chip_id)
        with self.engine._processing_lock:
            self.mask.clear()
            self.mask.add(read.masked_pixels)
        self._on_mask_changed()
        return self.masked_pixels

    def displayed_tot_hist(self, state: Any, chip: int | None) -> tuple[Any, bool]:
        """The TOT spectrum to draw: ``state``'s, minus the masked pixels' hits when that can be done.

        Returns ``(histogram, masked_out)``. The whole run: minus the masked
        pixels' whole-run spectra. A time window: minus their hits within the
        window, from the per-second per-pixel counts (also hits that arrived
        before the pixel was masked); ``masked_out`` is False when those were
        not all kept (the byte budget of
        :class:`~astropix_nbmonitor.windows.PixelDeltas` at extreme rates) or
        the engine keeps no per-pixel counts: then the spectrum still holds
        some of the masked pixels' hits, and the panel says so.
        """
        hist = state.chip_tot_hist(chip)
        pixel_tots = getattr(self.engine, "pixel_tots", None)
        if not len(self.mask):
            return hist, True
        window = float(getattr(state, "window", 0.0) or 0.0)
        if window:
            masked_tot = getattr(self.engine, "masked_tot_window", None)
            if masked_tot is None:
                return hist, False
            counts, exact = masked_tot(window, self.mask.masked_pixels, chip, getattr(state, "window_now", None))
            out = hist.copy()
            out.view(flow=True)[...] = hist.values(flow=True) - counts
            return out, exact
        if pixel_tots is None:
            return hist, False
        return masks.tot_without_masked(hist, pixel_tots, self.mask, chip), True

    # ------------------------------------------------------------------ drill-down
    def pixel_tot_hist(self, column: int, row: int, chip_id: int | None = None, seconds: float | None = None):
        """The TOT spectrum of pixel (column, row) of ``chip_id`` (None: summed over chips).

        The whole run by default; ``seconds``: the last ``seconds`` (1 s
        granularity). A viewer of a hub has them too (from the hub's
        per-second per-pixel counts).
        """
        pixel_tots = getattr(self.engine, "pixel_tots", None)
        if pixel_tots is None:
            msg = "this engine keeps no per-pixel spectra"
            raise RuntimeError(msg)
        if seconds:
            return self.engine.pixel_tot_hist(column, row, chip_id, seconds=seconds)
        return pixel_tots.pixel_tot_hist(column, row, chip_id)

    def _on_mask_changed(self) -> None:
        for panel in self.panels:
            panel.invalidate()
        self.redraw()


def pixels_text(pixels: Iterable[tuple[int, int, int]], limit: int = 8) -> str:
    """``chip 0 (column 3, row 5), ...`` for a dashboard line, at most ``limit`` pixels."""
    items = sorted(pixels)
    text = ", ".join(f"chip {k} (column {c}, row {r})" for k, c, r in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")
