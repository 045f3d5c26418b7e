"""Unattended nights, kernel side: no display message while no view is shown, counting goes on.

The views' heartbeats are driven by hand (the liveness element's message
handler, as a page's ``model.send`` reaches it) on a test clock; the display
messages are counted by capturing every widget's send (``Widget._send``,
through which every state update and custom message of ipywidgets goes).
"""

from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pytest

from astropix_nbmonitor.monitor.liveness import (
    DEAD_AFTER_S,
    VIEW_TIMEOUT_S,
    CellWatch,
    Liveness,
    ViewTracker,
    describe_pause,
)
from astropix_nbmonitor.sim import AstroPix4Simulator
from conftest import monitor_threads, send_paced, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sent:
    """Every message any widget sends, as (widget, msg)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.messages: list[tuple[widgets.Widget, dict]] = []
        original = widgets.Widget._send

        def spy(widget, msg, buffers=None):
            self.messages.append((widget, msg))
            return original(widget, msg, buffers)

        monkeypatch.setattr(widgets.Widget, "_send", spy)

    def clear(self) -> None:
        self.messages.clear()

    def __len__(self) -> int:
        return len(self.messages)

    def updates_of(self, widget: widgets.Widget) -> list[dict]:
        """The states sent to ``widget``'s model (binary traits, which travel as buffers, included by name)."""
        return [
            {**m["state"], **{path[0]: None for path in m.get("buffer_paths", ())}}
            for w, m in self.messages
            if w is widget and m.get("method") == "update"
        ]

    def dashboard_updates(self, mon) -> list[dict]:
        """Updates of the dashboard's blocks (one HTML widget per block of lines)."""
        return [u for block in mon.dashboard.children for u in self.updates_of(block)]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cells(clock) -> CellWatch:
    return CellWatch(clock=clock)


@pytest.fixture
def mon(monitor, clock, cells):
    """The conftest monitor, its views judged on the test clock."""
    monitor.views = ViewTracker(clock=clock, cells=cells)
    return monitor


def heartbeat(mon) -> None:
    """What a visible page's heartbeat does in the kernel."""
    mon.liveness._on_message(mon.liveness, {"event": "heartbeat"}, [])


def records(n: int, seed: int, start_id: int = 0) -> list[bytes]:
    return AstroPix4Simulator(seed=seed, start_id=start_id, hits_per_readout=2.0).generate(n).records


# --------------------------------------------------------------------------
# The tracker alone.


def test_tracker_pauses_only_after_a_first_heartbeat_and_its_timeout(clock, cells):
    views = ViewTracker(timeout=10.0, clock=clock, cells=cells)
    clock.now += 1e6
    assert views.shown() and not views.armed  # no front end ever spoke: never paused
    views.heartbeat()
    clock.now += 9.9
    assert views.shown()
    clock.now += 0.2
    assert not views.shown()
    views.heartbeat()
    assert views.shown() and views.heartbeats == 2


def test_tracker_never_pauses_while_a_cell_runs_and_gives_its_end_a_grace(clock, cells):
    views = ViewTracker(timeout=10.0, clock=clock, cells=cells)
    views.heartbeat()
    cells.pre_run_cell(None)
    clock.now += 3600  # an hour-long analysis cell: the page's heartbeats queue behind it
    assert views.shown()
    cells.post_run_cell(None)
    clock.now += 9.9  # the queued heartbeats are handled now; until then, still shown
    assert views.shown()
    clock.now += 0.2
    assert not views.shown()


def test_liveness_element_beats_and_ignores_other_messages():
    element = Liveness()
    calls = []
    element.on_heartbeat(lambda: calls.append(1))
    try:
        assert element.state == "idle" and element.dead_after == DEAD_AFTER_S
        element.pulse(True, now=12.5)
        assert (element.state, element.beat) == ("running", 12.5)
        element.pulse(False)
        assert element.state == "stopped" and element.beat > 12.5
        for junk in ({"event": "other"}, ["heartbeat"], "heartbeat", None, {"event": 1}):
            element._on_message(element, junk, [])
        assert calls == []
        element._on_message(element, {"event": "heartbeat"}, [])
        assert calls == [1]
        element.set_refresh_interval(10.0)
        assert element.dead_after == 30.0  # a slow refresh is not a dead kernel
        element.set_refresh_interval(0.5)
        assert element.dead_after == DEAD_AFTER_S
    finally:
        element.close()


def test_describe_pause_says_when_and_how_long():
    assert "(2.0 h, no view shown); counting went on" in describe_pause(0.0, 7200.0)
    assert "(5 min," in describe_pause(100.0, 400.0)


# --------------------------------------------------------------------------
# The monitor: no display message while no view is shown.


def test_no_display_message_while_no_view_is_shown_and_a_heartbeat_brings_it_up_to_date(mon, clock, monkeypatch, caplog):
    sent = Sent(monkeypatch)
    heartbeat(mon)  # a page showed the monitor once
    mon.replay(records(200, seed=1))
    assert len(sent) > 0 and mon.view_shown

    clock.now += VIEW_TIMEOUT_S + 1  # the page went away
    caplog.set_level("INFO", logger="astropix_nbmonitor.monitor.base")
    sent.clear()
    counts = []
    start_id = 200
    for i in range(6):  # six refreshes with new data each
        mon.replay(records(300, seed=10 + i, start_id=start_id))
        start_id += 300
        counts.append((mon.num_readouts, mon.num_hits))
    assert not mon.view_shown
    assert [m for _, m in sent.messages] == []  # not one comm message
    assert [c[0] for c in counts] == [200 + 300 * (i + 1) for i in range(6)]  # counting went on
    assert all(b[1] > a[1] for a, b in zip(counts, counts[1:]))
    assert any("display updates paused" in r.getMessage() for r in caplog.records)

    # A heartbeat again: one full update at once (no refresh called), equal to the engine's.
    heartbeat(mon)
    assert mon.view_shown
    assert len(sent) > 0
    assert any("display updates resumed" in r.getMessage() for r in caplog.records)
    state = mon.state()
    assert np.array_equal(np.asarray(mon.heatmap.color), state.hit_counts(None))
    assert np.array_equal(np.asarray(mon.tot_bars.y)[:-1], mon.tot_hist.values())  # a step line: the last count repeated
    assert f'<span class="apx-num-readouts">{mon.num_readouts:,}</span>' in mon.dashboard.value
    assert mon.num_readouts == 2000
    assert mon.liveness.note.startswith("display paused ")
    beats = sent.updates_of(mon.liveness)
    assert any("beat" in update for update in beats)
    # A full update: every widget's whole state, for a page that missed messages before the pause.
    for widget in (mon.start_button, mon.stop_button, mon.window_selector, mon.heatmap, mon.tot_bars, mon.rate_lines):
        assert any(set(update) >= set(widget.keys) - {"comm", "_view_count"} for update in sent.updates_of(widget)), widget

    # And the next refreshes flow again.
    sent.clear()
    mon.replay(records(100, seed=30, start_id=start_id))
    assert len(sent.dashboard_updates(mon)) >= 1


def test_a_running_cell_does_not_pause_updates(mon, clock, cells, monkeypatch):
    sent = Sent(monkeypatch)
    heartbeat(mon)
    cells.pre_run_cell(None)
    clock.now += 10 * VIEW_TIMEOUT_S  # the page's heartbeats wait behind the cell
    sent.clear()
    mon.replay(records(200, seed=2))
    assert mon.view_shown
    assert len(sent.dashboard_updates(mon)) >= 1
    cells.post_run_cell(None)
    clock.now += VIEW_TIMEOUT_S + 1  # no heartbeat after the cell: the page is really gone
    sent.clear()
    mon.replay(records(200, seed=3, start_id=200))
    assert not mon.view_shown and len(sent) == 0
    # A cell starts while paused (someone is at the notebook): updates resume at that refresh.
    cells.pre_run_cell(None)
    mon.replay(records(200, seed=4, start_id=400))
    assert mon.view_shown
    assert f'<span class="apx-num-readouts">{mon.num_readouts:,}</span>' in mon.dashboard.value


def test_without_any_heartbeat_nothing_is_ever_paused(mon, clock, monkeypatch):
    """A front end without the element (or a script) never sends one: updates always flow."""
    sent = Sent(monkeypatch)
    clock.now += 1e6
    mon.replay(records(100, seed=5))
    assert mon.view_shown and len(sent.dashboard_updates(mon)) >= 1


def test_two_views_any_heartbeat_keeps_updates_flowing(mon, clock, monkeypatch):
    sent = Sent(monkeypatch)
    start_id = 0
    for _ in range(4):
        heartbeat(mon)  # one view's heartbeat...
        clock.now += 0.6 * VIEW_TIMEOUT_S
        heartbeat(mon)  # ...then the other's
        clock.now += 0.6 * VIEW_TIMEOUT_S
        sent.clear()
        mon.replay(records(100, seed=6, start_id=start_id))
        start_id += 100
        assert mon.view_shown and len(sent.dashboard_updates(mon)) >= 1


def test_live_monitor_counts_on_while_paused_and_resumes_from_another_thread(mon, clock, monkeypatch):
    """The threads run: paused, the counters rise; a heartbeat on this thread resumes without a stall."""
    sent = Sent(monkeypatch)
    mon.start(refresh_interval=0.05)
    try:
        heartbeat(mon)
        wait_for(lambda: mon.liveness.state == "running" and mon.liveness.beat > 0, what="a beat")
        clock.now += VIEW_TIMEOUT_S + 1
        wait_for(lambda: not mon.view_shown, what="the pause")
        sent.clear()
        n = send_paced(mon.port, records(2000, seed=7))
        wait_for(lambda: mon.num_readouts == n, what="every readout counted while paused")
        assert mon.engine.running
        paused = list(sent.messages)
        heartbeat(mon)
        assert mon.view_shown
        assert f'<span class="apx-num-readouts">{n:,}</span>' in mon.dashboard.value
        assert paused == [], [m for _, m in paused][:3]
    finally:
        mon.stop()
    assert mon.liveness.state == "stopped"
    assert monitor_threads() == []


# --------------------------------------------------------------------------
# The servers' option takes effect (the browser test checks that demo and serve pass it).


def test_the_offline_buffer_option_reaches_jupyter_servers_kernel_manager():
    pytest.importorskip("jupyter_server")
    from jupyter_server.serverapp import ServerApp
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager

    from astropix_nbmonitor.app import NO_OFFLINE_BUFFER

    for argv, expected in (([NO_OFFLINE_BUFFER], False), ([], True)):
        app = ServerApp()
        app.parse_command_line(argv)
        assert AsyncMappingKernelManager(parent=app).buffer_offline_messages is expected


def test_the_offline_buffer_option_reaches_voilas_kernel_manager(tmp_path, monkeypatch):
    pytest.importorskip("voila")
    from voila.app import Voila

    from astropix_nbmonitor.app import NO_OFFLINE_BUFFER

    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    notebook = tmp_path / "empty.ipynb"
    notebook.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    for argv, expected in (([NO_OFFLINE_BUFFER], False), ([], True)):
        app = Voila()
        app.initialize([str(notebook), *argv])
        app.init_settings()
        assert app.kernel_manager.buffer_offline_messages is expected
