"""The shift's record on a monitor: snapshots, saved histograms, a reference run, replay at any speed.

:class:`LogbookMixin` gives every monitor (it is a base of
:class:`~astropix_nbmonitor.monitor.AbstractMonitor`) the methods of issue 13
over the headless modules that do the work:

* :meth:`~LogbookMixin.snapshot` - a static picture and the dashboard's
  figures into the cell's output (:mod:`astropix_nbmonitor.snapshot`);
* :meth:`~LogbookMixin.save` - every histogram, the status and the run's
  metadata as .h5, .root, .json or .zip (:mod:`astropix_nbmonitor.histio`);
* :meth:`~LogbookMixin.set_reference` - a known-good run to compare the TOT
  spectrum and the hit map with (:mod:`astropix_nbmonitor.compare`);
* :meth:`~LogbookMixin.play` - an .apx or .log file through the live pipeline,
  paced by its timestamps (:mod:`astropix_nbmonitor.player`), with a
  play/pause button, a position slider and a speed choice in the toolbar.
"""

from __future__ import annotations

import html
import logging
import os
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from .. import compare, histio
from .. import snapshot as snapshots
from ..engine import EngineState
from ..player import Player

__all__ = ["LogbookMixin", "ShownSnapshot"]

logger = logging.getLogger(__name__)

#: The speeds offered in the toolbar while playing.
SPEEDS = (0.1, 0.5, 1.0, 2.0, 10.0, 100.0, 1000.0)
#: Hits this run needs before a red compatibility is logged (fewer hits: the badge only).
MIN_HITS_TO_WARN = 1000
#: Badge colours of the reference compatibility levels.
_LEVEL_COLOURS = {"ok": "#2a7d2a", "amber": "#d98e04", "red": "#c0392b", "none": "#777"}


class ShownSnapshot:
    """A snapshot already shown in the cell's output: its picture and figures, without showing them again.

    Attributes
    ----------
    png : bytes
        The PNG picture.
    text : str
        The dashboard's figures as text.
    """

    def __init__(self, shot: snapshots.Snapshot) -> None:
        self.png = shot.png
        self.text = shot.text
        self._shot = shot

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the PNG (and the text beside it, ``.txt``)."""
        return self._shot.save(path)

    def __repr__(self) -> str:
        return f"<snapshot: {len(self.png):,} bytes of PNG, shown above>"


class LogbookMixin:
    """Snapshot, save, reference and play for a monitor widget (see the module's text)."""

    #: The player of the last :meth:`play` (None before).
    player: Player | None = None
    #: The reference run (a state or a saved run), None without one.
    reference: Any = None

    # ------------------------------------------------------------------ snapshots and files
    def snapshot(self, **options: Any) -> ShownSnapshot:
        """Put a static picture of the plots and the dashboard's figures into the cell's output.

        Rendered in the kernel with matplotlib (no browser needed), so it
        stays in the notebook after the kernel is gone, in nbconvert's output
        and in a PDF export. Options as :func:`astropix_nbmonitor.snapshot.render_png`
        (``title``, ``dpi``, ``chip``, ``log``, ``style``); by default the
        chip shown, the hit map's scale and the reference are those of the
        widget. Returns the snapshot (its ``png``, ``text`` and ``save(path)``).
        """
        from IPython.display import display

        options.setdefault("chip", getattr(self, "shown_chip", None))
        options.setdefault("log", self._log_scale())
        if self.reference is not None:
            options.setdefault("reference", self.reference)
        shot = snapshots.snapshot(self.engine.state(), **options)
        display(shot)
        return ShownSnapshot(shot)

    def save(self, path: str | os.PathLike[str], **metadata: Any) -> Path:
        """Write every histogram, the status table and the run's metadata to ``path``.

        The extension picks the format: ``.h5`` (UHI HDF5 layout), ``.root``
        (TH1D/TH2D a ROOT user opens), ``.json`` or ``.zip`` (UHI). The
        metadata hold the address, the times and, when a file is being
        played, its header; more keys may be given. Read it back with
        :func:`astropix_nbmonitor.load`.
        """
        header = self.player.header if self.player is not None else None
        if self.player is not None and self.player.path is not None:
            metadata.setdefault("played_file", str(self.player.path))
        return histio.save(self, path, header=header, metadata=metadata)

    # ------------------------------------------------------------------ reference run
    def set_reference(self, reference: Any = None) -> Any:
        """Hold this run against a reference: a saved file, a state, another monitor, or None to clear.

        ``reference`` may be a path written by :meth:`save`, an
        :class:`~astropix_nbmonitor.engine.EngineState` (e.g.
        ``other.state()``), another monitor (its current state is pinned), or
        nothing given: the current state of this monitor is pinned (what the
        toolbar's pin button does). The TOT panel then overlays the reference
        spectrum scaled to the same number of hits with the compatibility
        figures, the hit map can show this run over the reference, and the
        dashboard shows a badge (see :attr:`compatibility`).
        """
        if reference is None:
            reference = self.engine.state()
        elif isinstance(reference, (str, os.PathLike)):
            reference = histio.load(reference)
        elif not isinstance(reference, (EngineState, histio.SavedRun)) and hasattr(reference, "state"):
            reference = reference.state()
        self.reference = reference
        self._last_level = None
        self._on_reference_changed()
        self.redraw()
        return reference

    def clear_reference(self) -> None:
        """Forget the reference run (its alarm's condition clears; a latched alarm waits for an acknowledgement)."""
        self.reference = None
        note = getattr(self, "_note_reference_alarm", None)
        if note is not None:
            note(None)
        self._on_reference_changed()
        self.redraw()

    @property
    def compatibility(self) -> compare.Compatibility | None:
        """How compatible this run's TOT spectrum is with the reference's (None without a reference).

        ``chi2/ndf`` (two-sample, both statistical errors) and a
        Kolmogorov-Smirnov p-value; ``level`` is ``"ok"``, ``"amber"`` (p <
        0.05 or chi2/ndf > 1.5), ``"red"`` (p < 0.001 or chi2/ndf > 3), or
        ``"none"`` when there is nothing to compare yet. See
        :mod:`astropix_nbmonitor.compare`.
        """
        if self.reference is None:
            return None
        return compare.compatibility_of(self.engine.state(), self.reference, chip=getattr(self, "shown_chip", None))

    def _on_reference_changed(self) -> None:
        """Hook for views that draw the reference (the AstroPix 4 monitor's panels)."""

    def _reference_html(self) -> str:
        """The dashboard's badge of the reference compatibility ("" without a reference)."""
        compat = self.compatibility
        if compat is None:
            return ""
        self._note_level(compat)
        colour = _LEVEL_COLOURS.get(compat.level, "#777")
        text = html.escape(f"reference: {compat.text()}")
        return (
            f'<div class="apx-reference" data-level="{compat.level}" style="line-height:1.6">'
            f'<span style="background:{colour};color:white;padding:0 6px;border-radius:3px">{text}</span></div>'
        )

    def _note_level(self, compat: compare.Compatibility) -> None:
        """Hold the ``reference`` alarm while the compatibility is red with at least :data:`MIN_HITS_TO_WARN` hits.

        The alarm is latched and logged once when it fires (early in a run a
        handful of hits can look incompatible: the badge shows it, the alarm
        waits for enough hits).
        """
        red = compat.level == "red" and compat.n_current >= MIN_HITS_TO_WARN
        message = f"the TOT spectrum is incompatible with the reference: {compat.text()}" if red else None
        note = getattr(self, "_note_reference_alarm", None)
        if note is not None:
            note(message)
        elif red and getattr(self, "_last_level", None) != "red":
            logger.warning("%r: %s", self, message)
        self._last_level = compat.level

    # ------------------------------------------------------------------ replay at any speed
    def play(self, path: str | os.PathLike[str], speed: float = 1.0, *, rate_hz: float = 1000.0) -> Player:
        """Play an .apx or .log file through the live pipeline, paced by its timestamps times ``speed``.

        The records go through the same checks, counters and plots as a live
        stream (``engine.replay`` in small chunks, on the player's thread);
        records whose timestamps are 0 (a .log file) are played at
        ``rate_hz``. Returns at once with the :class:`~astropix_nbmonitor.player.Player`;
        :meth:`pause`, :meth:`resume` and :meth:`seek` control it, as do the
        play/pause button, the position slider and the speed choice that
        appear in the toolbar. Playing a second file stops the first.
        """
        if self.player is not None:
            self.player.stop()
        self.player = Player(self.engine, path, speed=speed, rate_hz=rate_hz)
        self._show_player_controls()
        self.player.start()
        self._sync_player_controls()
        return self.player

    def pause(self) -> None:
        """Pause the file being played."""
        if self.player is not None:
            self.player.pause()
            self._sync_player_controls()

    def resume(self) -> None:
        """Resume the file being played."""
        if self.player is not None:
            self.player.resume()
            self._sync_player_controls()

    def seek(self, readout_index: int) -> None:
        """Go on playing from readout ``readout_index`` (histograms are not rewound; see ``Player.seek``)."""
        if self.player is not None:
            self.player.seek(int(readout_index))
            self._sync_player_controls()

    def _show_player_controls(self) -> None:
        if getattr(self, "play_button", None) is None:
            self.play_button = widgets.ToggleButton(value=True, description="Pause", icon="pause", tooltip="Pause or resume the file")
            self.play_button.add_class("apx-play")
            self.play_button.observe(self._on_play_button, names="value")
            self.position_slider = widgets.IntSlider(value=0, min=0, max=1, description="readout", continuous_update=False)
            self.position_slider.add_class("apx-position")
            self.position_slider.observe(self._on_position, names="value")
            self.speed_choice = widgets.Dropdown(options=[(f"{s:g}x", s) for s in SPEEDS], value=1.0, description="speed")
            self.speed_choice.layout.width = "160px"
            self.speed_choice.add_class("apx-speed")
            self.speed_choice.observe(self._on_speed, names="value")
            self.player_box = widgets.HBox(
                [self.play_button, self.position_slider, self.speed_choice], layout=widgets.Layout(align_items="center")
            )
            self.player_box.add_class("apx-player")
            self.children = [*self.children[:1], self.player_box, *self.children[1:]]
        self._syncing_player = True
        try:
            self.position_slider.max = max(1, self.player.total)
            if self.player.speed not in SPEEDS:
                self.speed_choice.options = [*self.speed_choice.options, (f"{self.player.speed:g}x", self.player.speed)]
            self.speed_choice.value = self.player.speed
        finally:
            self._syncing_player = False
        self.player_box.layout.display = ""

    def _sync_player_controls(self) -> None:
        """Show the player's position and state (at every refresh, and after each control)."""
        player = self.player
        if player is None or getattr(self, "play_button", None) is None:
            return
        self._syncing_player = True
        try:
            self.position_slider.value = min(player.position, self.position_slider.max)
            playing = player.playing
            self.play_button.value = playing
            self.play_button.description = "Pause" if playing else ("Done" if player.finished else "Play")
            self.play_button.icon = "pause" if playing else "play"
        finally:
            self._syncing_player = False

    def _on_play_button(self, change: dict[str, Any]) -> None:
        if getattr(self, "_syncing_player", False) or self.player is None:
            return
        if change["new"]:
            self.resume()
        else:
            self.pause()

    def _on_position(self, change: dict[str, Any]) -> None:
        if not getattr(self, "_syncing_player", False):
            self.seek(change["new"])

    def _on_speed(self, change: dict[str, Any]) -> None:
        if not getattr(self, "_syncing_player", False) and self.player is not None:
            self.player.speed = float(change["new"])

    def _log_scale(self) -> bool:
        """Whether the widget's hit map is on the log scale (False for views without one)."""
        return False
