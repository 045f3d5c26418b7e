"""The dashboard's text: the standard status lines of every monitor, and its messages.

:func:`status_html` turns a :class:`~astropix_nbmonitor.status.Status` into
the lines every monitor shows on top (address and state, who can send, what
was processed, what went wrong, decoding flags, warnings);
:func:`messages_html` lays out the ``display_message`` texts of a monitor
below them. Both are plain functions of their inputs (no widget), so the
same lines can be checked in tests and reused by other views.

:class:`Dashboard` is the widget that shows them: every block (a status
line, the alarms, the shift's lines, the messages...) starts with
:data:`BLOCK`, and each block is its own HTML widget, so that a refresh sends
only the blocks that changed (the uptime line and the counts, a few hundred
bytes) rather than the whole dashboard.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets
from traitlets import Unicode, observe

from ..status import Status, format_value

__all__ = ["BLOCK", "LIVE_CLASS", "Dashboard", "NO_DATA_WARNING_S", "alarms_html", "messages_html", "shift_html", "no_data_warning", "publisher_html", "status_html", "viewer_html"]

#: Seconds without a datagram after which the dashboard warns.
NO_DATA_WARNING_S = 5.0

_RED = "#c0392b"

#: Starts every block of the dashboard's HTML (an HTML comment: invisible in any page).
BLOCK = "<!--apx-block-->"
#: The CSS class of the block of the lines that change at every refresh (uptime, counts, rates).
LIVE_CLASS = "apx-status-now"


class Dashboard(widgets.VBox):
    """The dashboard: :attr:`value` is its whole HTML; each :data:`BLOCK` of it is shown by its own HTML widget.

    Setting :attr:`value` sends to the page only the blocks whose HTML
    changed (and the list of blocks when their number changes). ``value``
    itself stays in the kernel (it is observable, e.g. by tests, but not synced).
    """

    #: The whole HTML (kept in the kernel; the blocks are what the page gets).
    value = Unicode("")

    def __init__(self, lead: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parts: list[widgets.HTML] = []
        #: A widget with a ``status`` trait that shows the block marked with
        #: :data:`LIVE_CLASS`, in its place (the monitor's liveness element: the lines
        #: that change at every refresh then travel with its beat, one message for
        #: both); None: that block is an HTML part as the others.
        self.lead = lead
        if lead is not None:
            self.children = [lead]

    @staticmethod
    def blocks(text: str) -> list[str]:
        """The blocks of ``text`` (split at :data:`BLOCK`, empty ones left out)."""
        return [part for part in text.split(BLOCK) if part]

    @observe("value")
    def _show(self, change: dict[str, Any]) -> None:
        blocks = self.blocks(change["new"])
        lead, at = self.lead, 0
        if lead is not None:
            at = next((i for i, block in enumerate(blocks) if LIVE_CLASS in block), 0)
            text = blocks.pop(at) if at < len(blocks) and LIVE_CLASS in blocks[at] else ""
            if lead.status != text:
                lead.status = text
        while len(self.parts) < len(blocks):
            part = widgets.HTML(layout=widgets.Layout(margin="0px", width="100%"))
            self.parts.append(part)
        for part, block in zip(self.parts, blocks):
            if part.value != block:
                part.value = block
        shown = self.parts[: len(blocks)]
        if lead is not None:
            shown = [*shown[:at], lead, *shown[at:]]
        if list(self.children) != shown:
            self.children = shown
        for part in self.parts[len(blocks) :]:  # kept for later, emptied
            if part.value:
                part.value = ""


def _span(css: str, text: str) -> str:
    return f'<span class="{css}">{text}</span>'


def _count(status: Status, name: str, css: str | None = None) -> str:
    """A counter's formatted value, in red and bold when it is bad."""
    text = status.text(name)
    if status.is_bad(name):
        text = f'<b style="color:{_RED}">{text}</b>'
    return _span(css, text) if css else text


def no_data_warning(status: Status, *, running: bool, address: tuple[str, int], now: float | None = None) -> str:
    """The warning to show when no datagram came for :data:`NO_DATA_WARNING_S` (``""`` if none)."""
    if not running:
        return ""
    now = time.time() if now is None else now
    last = status.get("last_datagram")
    uptime = float(status.get("uptime", 0.0))
    group, port = address
    if last is None and uptime > NO_DATA_WARNING_S:
        return f"no data received in {uptime:.0f} s: is the DAQ sending to {group}:{port}?"
    if last is not None and now - last > NO_DATA_WARNING_S:
        return f"no data for {now - last:.0f} s"
    return ""


def status_html(
    status: Status,
    *,
    running: bool,
    address: tuple[str, int],
    exposure: str = "",
    last_error: str = "",
    now: float | None = None,
) -> str:
    """The standard status lines, as HTML (one ``<br>`` between lines)."""
    group, port = address
    state = '<b style="color:#2a7d2a">running</b>' if running else '<b style="color:#a33">stopped</b>'
    flags = ", ".join(f"{name} {format_value(n)}" for name, n in status.flag_counts().items() if n) or "none"
    malformed_reasons = [
        f"{name[len('malformed_'):]} {status.text(name)}" for name in status if name.startswith("malformed_") and status[name]
    ]
    malformed = _count(status, "malformed", "apx-malformed")
    if malformed_reasons:
        malformed += f" ({', '.join(malformed_reasons)})"
    lines = [
        f"Connected to address ({group!r}, {port}), {state}, uptime {status.text('uptime')}",
        _span("apx-exposure", html.escape(exposure)),
        f"{_span('apx-num-readouts', status.text('readouts'))} readouts "
        f"({_span('apx-num-hits', status.text('hits'))} hits) processed; "
        f"{status.text('readout_rate')} readouts/s, {status.text('hit_rate')} hits/s; "
        f"empty readouts {_count(status, 'empty_readouts', 'apx-empty')}",
        f"lost {_count(status, 'lost', 'apx-lost')}, malformed {malformed}, "
        f"oversize {_count(status, 'oversize', 'apx-oversize')}, dropped {_count(status, 'dropped', 'apx-dropped')}, "
        f"out of order {_count(status, 'out_of_order')}, DAQ restarts {status.text('daq_restarts')}, "
        f"missed while stopped {status.text('missed_while_stopped')}",
        f"recovered split hits {status.text('recovered_hits')}, out-of-matrix hits {_count(status, 'out_of_matrix')}",
        f"decoding flags: {html.escape(flags)}",
    ]
    if status.get("errors"):
        error = html.escape(f"errors {status.text('errors')}: {last_error}")
        lines.append(f'<span class="apx-errors" style="color:{_RED}">{error}</span>')
    warning = no_data_warning(status, running=running, address=address, now=now)
    if warning:
        lines.append(f'<span class="apx-warning" style="color:{_RED};font-weight:bold">&#9888; {html.escape(warning)}</span>')
    # Blocks: the lines that change at every refresh (uptime; counts and rates) together, with the
    # exposure line between them (one message a refresh, not two); then one block a line.
    blocks = ["<br>".join(line for line in lines[:3] if line), *lines[3:]]
    first, rest = blocks[0], blocks[1:]
    return f'{BLOCK}<div class="apx-status {LIVE_CLASS}" style="line-height:1.4">{first}</div>' + "".join(
        f'{BLOCK}<div class="apx-status" style="line-height:1.4">{block}</div>' for block in rest
    )


def viewer_html(engine: Any, *, now: float | None = None) -> str:
    """The lines of a viewer of one or several hubs: which hub, liveness, delay, missed updates, events.

    ``engine`` is a :class:`~astropix_nbmonitor.hub.HubEngine`.
    """
    now = time.time() if now is None else now
    hubs = engine.hubs
    since = engine.seconds_since_update
    delay = engine.plot_delay
    parts = [
        f"Viewer of hub {html.escape(', '.join(hubs))}",
        "last update " + ("never" if since is None else f"{since:,.1f} s ago"),
        "plot delay " + ("-" if delay is None else f"{1000 * delay:,.0f} ms"),
        f"missed updates {format_value(engine.missed_updates)}",
    ]
    lines = [_span("apx-hub", ", ".join(parts))]
    attach = [link.state.hub.attach for link in engine.links.values() if link.state is not None and link.state.hub.attach]
    if attach:
        lines.append(_span("apx-hub-exposure", html.escape("hub: " + "; ".join(attach))))
    if not engine.connected:
        waited = "no update yet" if since is None else f"no update for {since:,.0f} s"
        lines.append(
            f'<span class="apx-hub-warning" style="color:{_RED};font-weight:bold">&#9888; '
            f"not connected to the hub: {html.escape(waited)}</span>"
        )
    for when, text in list(engine.events)[-3:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(when))
        lines.append(_span("apx-hub-event", html.escape(f"{stamp} {text}")))
    statuses = engine.hub_statuses()
    if len(statuses) > 1:
        for url, status in statuses.items():
            lines.append(_span("apx-hub-status", html.escape(f"{url}: {status.one_line()}")))
    return f'{BLOCK}<div class="apx-viewer" style="line-height:1.4">{"<br>".join(lines)}</div>'


def publisher_html(publisher: Any) -> str:
    """The line of a monitor that publishes as a hub: endpoints and who can attach (never the token)."""
    text = (
        f"publishing as a hub on {publisher.publish_url} (commands {publisher.command_url}, "
        f"token in mon.publisher.token): {publisher.exposure()}"
    )
    return f'{BLOCK}<div class="apx-publisher" style="line-height:1.4">{html.escape(text)}</div>'


def messages_html(messages: Mapping[tuple[float, float], tuple[str, dict[str, Any]]]) -> str:
    """The ``display_message`` texts at their relative positions (``""`` if none).

    ``messages`` maps ``(x, y)`` (0..1, ``y = 1`` at the top) to ``(text,
    options)``; options: ``color``, ``fontsize`` (points), ``fontweight``,
    ``html`` (pass the text as HTML instead of escaping it).
    """
    if not messages:
        return ""
    parts = []
    for (x, y), (text, opts) in sorted(messages.items(), key=lambda item: (-item[0][1], item[0][0])):
        body = text if opts.get("html") else html.escape(text).replace("\n", "<br>")
        style = [f"left:{100 * x:.1f}%", f"top:{100 * (1 - y):.1f}%", "position:absolute", "white-space:nowrap"]
        if "color" in opts:
            style.append(f"color:{opts['color']}")
        if "fontsize" in opts:
            style.append(f"font-size:{float(opts['fontsize']):g}pt")
        if "fontweight" in opts:
            style.append(f"font-weight:{opts['fontweight']}")
        parts.append(f'<div style="{";".join(style)}">{body}</div>')
    lines = max((t.count("\n") + t.count("<br") + 1 for t, _ in messages.values()), default=1)
    height = 1.4 * lines + 0.4
    return f'{BLOCK}<div class="apx-messages" style="position:relative;line-height:1.4;min-height:{height:.1f}em">{"".join(parts)}</div>'


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def alarms_html(alarms: list[dict[str, Any]]) -> str:
    """The latched alarms, in red, one line each: name, message, first and last time, count (``""`` if none)."""
    if not alarms:
        return ""
    lines = []
    for alarm in alarms:
        state = "active" if alarm["active"] else "cleared, not acknowledged"
        if alarm["acknowledged"]:
            state = "acknowledged, still active"
        times = f"first {_clock(alarm['first'])}, last {_clock(alarm['last'])}, {alarm['count']}x"
        text = html.escape(f"{alarm['name']}: {alarm['message']} ({times}; {state})")
        lines.append(f'<span class="apx-alarm" data-alarm="{html.escape(alarm["name"])}">&#9888; {text}</span>')
    return (
        f'{BLOCK}<div class="apx-alarms" style="background:{_RED};color:white;font-weight:bold;padding:2px 6px;'
        f'border-radius:3px;line-height:1.5">{"<br>".join(lines)}</div>'
    )


def shift_html(figures: Any, masked: set[tuple[int, int, int]], shown_chip: int | None = None) -> str:
    """The shift's lines: window, noisy pixels, masked pixels and their hits, per-chip figures.

    ``figures`` is a :class:`~astropix_nbmonitor.monitor.shift.ShiftFigures`.
    """
    span = f"last {figures.window:g} s" if figures.window else "whole run"
    noisy = [p for p in figures.noisy if shown_chip is None or p.chip_id == shown_chip]
    if noisy:
        listed = ", ".join(f"chip {p.chip_id} (column {p.column}, row {p.row}) {p.hits:,} hits {p.rate:,.3g}/s" for p in noisy[:6])
        more = f" and {len(noisy) - 6} more" if len(noisy) > 6 else ""
        noisy_text = f'<b style="color:{_RED}">{html.escape(listed + more)}</b>'
    else:
        noisy_text = "none"
    lines = [f"view: {span}; noisy pixels: {_span('apx-noisy', noisy_text)}"]
    if masked:
        from .shift import pixels_text

        lines.append(
            f"masked pixels {len(masked)}: {_span('apx-masked-hits', format(figures.masked_hits, ','))} hits left out "
            f"of the displayed map ({html.escape(pixels_text(masked, 4))})"
        )
    if figures.chip_rows:
        parts = [f"chip {c}: {n:,} hits, {rate:,.1f}/s, out of matrix {oom:,}" for c, n, rate, oom in figures.chip_rows]
        lines.append(_span("apx-chips", html.escape("per chip (" + span + "): " + "; ".join(parts))))
        lines.append("(decoding flags, lost and malformed are per readout or datagram: not attributable to one chip)")
    return "".join(f'{BLOCK}<div class="apx-shift" style="line-height:1.4">{line}</div>' for line in lines)
