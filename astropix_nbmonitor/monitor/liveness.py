"""Is anybody looking, and is the kernel alive? The monitor's liveness element.

Two questions cross the kernel/browser boundary here, one each way:

* **A dead view says so.** :class:`Liveness` is a small front-end element
  (an ``anywidget``) in the monitor's layout. The kernel bumps its ``beat``
  (the time of the refresh) at every refresh of a running monitor and sets
  ``state`` to ``"running"`` or ``"stopped"``. The page keeps its own timer:
  when the monitor should be running but no beat came for ``dead_after``
  seconds (5 s, or three refresh intervals if longer) while the page is
  visible, it shows a red banner, "this monitor stopped updating (last
  update hh:mm:ss; kernel restarted or busy?)", and greys the plots; the
  banner goes when beats return. A monitor stopped on purpose shows
  "stopped". A saved or exported notebook (no kernel behind it) shows the
  same element in grey: "not live: last update hh:mm:ss".
* **Is a view shown?** While the page is visible (``document.visibilityState``)
  each view of the element sends a ``heartbeat`` message to the kernel every
  :data:`HEARTBEAT_S` seconds, and at once when the page becomes visible
  again. :class:`ViewTracker` decides, in the kernel, that no view is shown
  when no heartbeat arrived for :data:`VIEW_TIMEOUT_S` seconds; the monitor
  then stops sending display updates (counting, histograms, alarms and
  logging go on), and the first heartbeat after that brings the page up to
  date at once. Messages from the browser reach the kernel's main thread
  only between cells: while a cell runs the tracker always answers "shown"
  (IPython's ``pre_run_cell`` / ``post_run_cell`` events), so a long
  analysis cell never pauses a visible page. Until a first heartbeat arrives
  (a front end without this element, a plain Python process) nothing is
  ever paused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import anywidget
import ipywidgets as widgets
from traitlets import Float, Unicode

from .tree import walk_widgets

__all__ = ["HEARTBEAT_S", "VIEW_TIMEOUT_S", "DEAD_AFTER_S", "Liveness", "CellWatch", "ViewTracker", "cell_watch", "describe_pause", "resend_state"]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a visible page.
HEARTBEAT_S = 5.0
#: Seconds without a heartbeat after which the kernel considers that no view is shown.
VIEW_TIMEOUT_S = 20.0
#: Seconds without a beat after which a visible page says its monitor stopped updating.
DEAD_AFTER_S = 5.0

_ESM = r"""
function hhmmss(t) {
  if (!t) { return "never"; }
  return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

function render({ model, el }) {
  el.classList.add("apx-liveness");
  const line = document.createElement("div");
  line.className = "apx-live-line";
  el.appendChild(line);
  const note = document.createElement("div");
  note.className = "apx-live-note";
  el.appendChild(note);
  // The dashboard's first block (the lines that change at every refresh) comes with the beat:
  // one message a refresh for both.
  const status = document.createElement("div");
  status.className = "apx-live-status";
  el.appendChild(status);
  // The block changes at every refresh, mostly in its numbers: when its tags are as before,
  // only the text nodes that differ are rewritten (no new elements to style and lay out).
  let shownHtml = null, shownSkeleton = null;
  const textNodes = (root) => {
    const out = [], walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = walker.nextNode(); n; n = walker.nextNode()) { out.push(n); }
    return out;
  };
  const showStatus = () => {
    const text = model.get("status") || "";
    if (text === shownHtml) { return; }
    const skeleton = text.replace(/>[^<]*</g, "><");
    if (skeleton === shownSkeleton) {
      const fresh = document.createElement("template");
      fresh.innerHTML = text;
      const now = textNodes(status), next = textNodes(fresh.content);
      if (now.length === next.length) {
        for (let i = 0; i < now.length; i++) {
          if (now[i].nodeValue !== next[i].nodeValue) { now[i].nodeValue = next[i].nodeValue; }
        }
        shownHtml = text;
        return;
      }
    }
    status.innerHTML = text;
    shownHtml = text;
    shownSkeleton = skeleton;
  };
  // A beat seen by this view: before the first one, a frozen state is a saved
  // view (or a kernel busy since the page opened), not a monitor that died.
  let seen = false;
  let since = performance.now();
  const visible = () => document.visibilityState === "visible";
  const heartbeat = () => {
    if (!visible() || !el.isConnected) { return; }
    try { model.send({ event: "heartbeat" }); } catch (e) { /* no kernel: nothing to tell */ }
  };
  const draw = () => {
    const state = model.get("state");
    const last = model.get("beat");
    if (!visible()) { since = performance.now(); }  // a hidden page gets no beats: it judges nothing
    el.dataset.beat = String(last);
    const quiet = (performance.now() - since) / 1000;
    const deadAfter = model.get("dead_after");
    let kind, text;
    if (state !== "running") {
      kind = "stopped";
      text = state === "stopped" ? "stopped" : "not started";
    } else if (quiet <= deadAfter) {
      kind = "ok";
      text = "live, last update " + hhmmss(last);
    } else if (seen) {
      kind = "dead";
      text = "\u26a0 This monitor stopped updating (last update " + hhmmss(last) +
        "; kernel restarted or busy?): the numbers below are frozen, not a quiet beam.";
    } else {
      kind = "saved";
      text = "not live: last update " + hhmmss(last) + " (a saved view, or the kernel is busy)";
    }
    if (el.dataset.live !== kind) {
      el.dataset.live = kind;
      el.classList.remove("apx-live-ok", "apx-live-dead", "apx-live-stopped", "apx-live-saved");
      el.classList.add("apx-live-" + kind);
      const monitor = el.closest(".apx-monitor");
      if (monitor) { monitor.classList.toggle("apx-frozen", kind === "dead"); }
    }
    if (line.textContent !== text) { line.textContent = text; }
    const n = model.get("note") || "";
    if (note.textContent !== n) { note.textContent = n; }
  };
  const onBeat = () => { seen = true; since = performance.now(); draw(); };
  const onVisibility = () => {
    if (visible()) {
      // Hidden pages get no beats (the kernel paused for them): count afresh.
      since = performance.now();
      heartbeat();
    }
    draw();
  };
  model.on("change:beat", onBeat);
  model.on("change:state", onBeat);
  model.on("change:note", draw);
  model.on("change:status", showStatus);
  document.addEventListener("visibilitychange", onVisibility);
  const timer = setInterval(() => { heartbeat(); draw(); }, model.get("heartbeat") * 1000);
  // The first heartbeat as soon as the element is on the page: a widget's view is rendered
  // before it is attached, and a page hidden before the first interval ended would otherwise
  // never have said it was shown (the kernel pauses nothing before a first heartbeat).
  let removed = false, waits = 0;
  const firstHeartbeat = () => {
    if (removed) { return; }
    if (el.isConnected) { heartbeat(); return; }
    if (waits++ < 1200) { setTimeout(firstHeartbeat, 50); }
  };
  firstHeartbeat();
  showStatus();
  draw();
  return () => {
    removed = true;
    model.off("change:status", showStatus);
    clearInterval(timer);
    document.removeEventListener("visibilitychange", onVisibility);
    model.off("change:beat", onBeat);
    model.off("change:state", onBeat);
    model.off("change:note", draw);
    const monitor = el.closest(".apx-monitor");
    if (monitor) { monitor.classList.remove("apx-frozen"); }
  };
}

export default { render };
"""

_CSS = """
.apx-liveness { font-size: 12px; line-height: 1.4; margin: 2px 0; contain: content; }
.apx-liveness .apx-live-status { font-size: var(--jp-widgets-font-size, 13px); }
.apx-liveness .apx-live-note { color: #777; }
.apx-liveness .apx-live-note:empty { display: none; }
.apx-liveness.apx-live-ok .apx-live-line { color: #2a7d2a; }
.apx-liveness.apx-live-ok .apx-live-line::before { content: "\\25cf  "; }
.apx-liveness.apx-live-stopped .apx-live-line { color: #a33; }
.apx-liveness.apx-live-saved .apx-live-line { color: #777; }
.apx-liveness.apx-live-dead .apx-live-line {
  background: #c0392b; color: #fff; font-weight: bold; font-size: 14px; padding: 6px 10px; border-radius: 3px;
}
.apx-monitor.apx-frozen .apx-canvas, .apx-monitor.apx-frozen .apx-dashboard { opacity: 0.45; }
"""


class Liveness(anywidget.AnyWidget):
    """The liveness element: beats from the kernel, heartbeats from each visible view.

    ``state`` is ``"idle"`` (never started), ``"running"`` or ``"stopped"``;
    ``beat`` the time (``time.time()``) of the last refresh sent. A
    ``{"event": "heartbeat"}`` message from a view calls the function given
    to :meth:`on_heartbeat`.
    """

    _esm = Unicode(_ESM).tag(sync=True)
    _css = Unicode(_CSS).tag(sync=True)
    state = Unicode("idle").tag(sync=True)
    beat = Float(0.0).tag(sync=True)
    note = Unicode("").tag(sync=True)
    #: HTML shown under the live line: the dashboard's first block (see ``board.Dashboard(lead=...)``).
    status = Unicode("").tag(sync=True)
    dead_after = Float(DEAD_AFTER_S).tag(sync=True)
    heartbeat = Float(HEARTBEAT_S).tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._heartbeat_callbacks: list[Callable[[], None]] = []
        self.on_msg(self._on_message)

    def on_heartbeat(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on the kernel's main thread) at each heartbeat of a view."""
        self._heartbeat_callbacks.append(callback)

    def pulse(self, running: bool, now: float | None = None) -> None:
        """A refresh was sent: bump the beat (and say running/stopped)."""
        with self.hold_sync():
            self.state = "running" if running else "stopped"
            self.beat = time.time() if now is None else now

    def set_refresh_interval(self, seconds: float) -> None:
        """Keep the dead timer above three refresh intervals."""
        self.dead_after = max(DEAD_AFTER_S, 3.0 * float(seconds))

    def _on_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or content.get("event") != "heartbeat":
            return  # anything else from a page is ignored
        for callback in list(self._heartbeat_callbacks):
            try:
                callback()
            except Exception:  # a heartbeat has no caller to raise to
                logger.exception("heartbeat callback %r failed", callback)


class CellWatch:
    """Whether the IPython kernel of this process runs a cell now (one shared by every monitor)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.running = False
        self.ended = 0.0  # time.monotonic() of the end of the last cell
        self.registered = False
        self._lock = threading.Lock()

    def register(self) -> None:
        """Listen to IPython's cell events, once, if running in IPython."""
        with self._lock:
            if self.registered:
                return
            self.registered = True
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - IPython comes with every kernel
            return
        shell = get_ipython()
        if shell is None:
            return
        shell.events.register("pre_run_cell", self.pre_run_cell)
        shell.events.register("post_run_cell", self.post_run_cell)

    def pre_run_cell(self, *_args: Any) -> None:
        self.running = True

    def post_run_cell(self, *_args: Any) -> None:
        self.ended = self.clock()
        self.running = False


#: The cell watch of this process.
cell_watch = CellWatch()


class ViewTracker:
    """Decide, from the views' heartbeats, whether any view of a widget is shown.

    ``shown()`` is True until the first heartbeat (nothing to judge by), then
    while the last heartbeat (of any view) or the end of the last cell is less
    than ``timeout`` seconds old, and always while a cell runs (heartbeats
    queue behind it). ``clock`` is ``time.monotonic`` (tests drive their own,
with a :class:`CellWatch` on the same clock).
    """

    def __init__(
        self, timeout: float = VIEW_TIMEOUT_S, *, clock: Callable[[], float] = time.monotonic, cells: CellWatch | None = None
    ) -> None:
        self.timeout = float(timeout)
        self.clock = clock
        self.cells = cell_watch if cells is None else cells
        self.last_heartbeat: float | None = None
        self.heartbeats = 0

    @property
    def armed(self) -> bool:
        """True once a view has sent a heartbeat (before that, nothing is ever paused)."""
        return self.last_heartbeat is not None

    def heartbeat(self) -> None:
        """A view said it is shown."""
        self.last_heartbeat = self.clock()
        self.heartbeats += 1

    def shown(self) -> bool:
        """Whether a view of the widget is (or may be) shown now."""
        last = self.last_heartbeat
        if last is None or self.cells.running:
            return True
        last = max(last, self.cells.ended)
        return self.clock() - last < self.timeout


def describe_pause(began: float, ended: float) -> str:
    """The note shown after a pause: when display updates were paused, for how long."""
    span = max(0.0, ended - began)
    if span >= 3600:
        length = f"{span / 3600:.1f} h"
    elif span >= 60:
        length = f"{span / 60:.0f} min"
    else:
        length = f"{span:.0f} s"
    first = time.strftime("%H:%M:%S", time.localtime(began))
    last = time.strftime("%H:%M:%S", time.localtime(ended))
    return f"display paused {first} to {last} ({length}, no view shown); counting went on"


def resend_state(root: widgets.Widget) -> int:
    """Send the whole state of ``root`` and of every open widget its traits reach; return how many.

    A page that reconnects after its messages were dropped (the server keeps
    none for a page that is gone, see ``buffer_offline_messages``) missed
    some changes; this brings every widget of it up to date.
    """
    count = 0
    for item in walk_widgets(root, synced_only=True):
        if item.comm is not None:
            item.send_state()
            count += 1
    return count
