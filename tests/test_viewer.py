"""Widgets attached to a hub (issue 11, points 2, 3, 5 and 6): the same monitor, fed by another's state.

A local monitor publishes (``mon.publish``); viewers in this process attach
with ``hub=``. Everything a viewer shows must equal the hub's: plots,
traitlets, ``hit_map`` and ``tot_hist``; Start/Stop/Reset act on the hub only
with its token; a user's subclass gets every relayed record; a viewer of two
hubs shows their sum with each hub's counters apart; a silent hub turns
``hub_connected`` False with a red warning.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import send_paced, wait_for

from astropix_nbmonitor.fmt import AstroPix4Readout
from astropix_nbmonitor.monitor import AbstractMonitor, AstroPix4SimpleMonitor
from astropix_nbmonitor.sim import AstroPix4Simulator

pytest.importorskip("zmq")

_THREADS = ("astropix-monitor-listener", "astropix-monitor-processing")


def _publishing_monitor(seed: int = 1, n: int = 1500, **faults):
    """A local monitor on a free UDP port, fed a simulated run, publishing on a free TCP port."""
    mon = AstroPix4SimpleMonitor(port=0).start(refresh_interval=0.1)
    publisher = mon.publish("tcp://127.0.0.1:0", refresh_interval=0.1)
    run = AstroPix4Simulator(seed=seed, hits_per_readout=2.0, faults=faults or {"split": 0.05, "skip_ids": 0.01}).generate(n)
    send_paced(mon.port, run.records)
    wait_for(lambda: mon.num_readouts == run.num_readouts, what="the hub's monitor to process the run")
    return mon, publisher, run


def _same_as_hub(viewer, mon) -> bool:
    return (
        viewer.num_readouts == mon.num_readouts
        and np.array_equal(viewer.hit_map.values(), mon.hit_map.values())
        and np.array_equal(viewer.tot_hist.values(flow=True), mon.tot_hist.values(flow=True))
    )


@pytest.fixture
def hub():
    mon, publisher, run = _publishing_monitor()
    yield mon, publisher, run
    mon.close()


def test_a_viewer_shows_exactly_the_hubs_state(hub):
    mon, publisher, run = hub
    viewer = AstroPix4SimpleMonitor(hub=publisher.publish_url).start(refresh_interval=0.1)
    try:
        wait_for(lambda: viewer.hub_connected and _same_as_hub(viewer, mon), what="the viewer to show the hub's state")
        assert viewer.lost_readouts == mon.lost_readouts == run.lost > 0
        assert viewer.recovered_hits == mon.recovered_hits
        assert viewer.num_hits == mon.num_hits == len(run.truth)
        # The plots are drawn from the hub's histograms.
        viewer.refresh()
        assert np.array_equal(viewer.heatmap.color, mon.hit_map.values().T)
        shown = viewer.dashboard.value
        assert "Viewer of hub" in shown and publisher.publish_url in shown
        assert "plot delay" in shown and "missed updates" in shown
        assert "hub: loopback only (tcp://127.0.0.1:" in shown  # who can attach to the hub
        assert f'class="apx-num-readouts">{mon.num_readouts:,}<' in shown
        # No token: Start, Stop and Reset are disabled, and say why.
        for button in (viewer.start_button, viewer.stop_button, viewer.reset_button):
            assert button.disabled and "token" in button.tooltip
        assert viewer.listener_stats() is None
    finally:
        viewer.close()


def test_with_the_token_the_buttons_act_on_the_hub(hub):
    mon, publisher, _ = hub
    viewer = AstroPix4SimpleMonitor(hub=publisher.publish_url, token=publisher.token).start(refresh_interval=0.1)
    try:
        wait_for(lambda: viewer.hub_connected and not viewer.stop_button.disabled, what="an enabled Stop")
        viewer.stop_button.click()
        wait_for(lambda: not mon.running, what="the hub's monitor to stop")
        wait_for(lambda: not viewer.start_button.disabled, what="Start enabled on the viewer")
        viewer.reset_button.click()
        wait_for(lambda: mon.num_readouts == 0 and viewer.num_readouts == 0, what="the reset on hub and viewer")
        viewer.start_button.click()
        wait_for(lambda: mon.running, what="the hub's monitor to start again")
    finally:
        viewer.close()


def test_a_silent_hub_turns_hub_connected_false_with_a_red_warning(hub):
    mon, publisher, _ = hub
    viewer = AstroPix4SimpleMonitor(hub=publisher.publish_url).start(refresh_interval=0.1)
    try:
        wait_for(lambda: viewer.hub_connected, what="the first update")
        publisher.stop()
        wait_for(lambda: not viewer.hub_connected, what="hub_connected to fall")
        wait_for(lambda: "apx-hub-warning" in viewer.dashboard.value, what="the red warning")
    finally:
        viewer.close()


class _RecordCounter(AbstractMonitor):
    """A user's monitor: counts the readouts and hits it is handed."""

    def __init__(self, **kwargs):
        super().__init__(AstroPix4Readout, **kwargs)
        self.ids: list[int] = []
        self.threads: set[str] = set()

    def process_readout(self, readout):
        self.ids.append(readout.readout_id)
        self.threads.add(threading.current_thread().name)
        return self.decode_readout(readout)

    def update_display(self):
        pass


def test_a_custom_subclass_attached_to_a_hub_sees_every_record():
    mon = AstroPix4SimpleMonitor(port=0).start(refresh_interval=0.1)
    try:
        publisher = mon.publish("tcp://127.0.0.1:0", refresh_interval=0.1)
        viewer = _RecordCounter(hub=publisher.publish_url).start(refresh_interval=0.1)
        try:
            wait_for(lambda: viewer.hub_connected, what="the viewer to attach")
            run = AstroPix4Simulator(seed=8, faults={"skip_ids": 0.01}).generate(2000)
            send_paced(mon.port, run.records)
            expected = [AstroPix4Readout.from_bytes(r).readout_id for r in run.records]
            wait_for(lambda: len(viewer.ids) >= len(expected), what="every relayed record")
            assert viewer.ids == expected
            assert len(viewer.threads) == 1  # one thread, always the same: no locks needed
        finally:
            viewer.close()
    finally:
        mon.close()


def test_a_viewer_of_two_hubs_shows_their_sum_and_each_hubs_counters():
    first, pub1, run1 = _publishing_monitor(seed=21, n=800)
    second, pub2, run2 = _publishing_monitor(seed=22, n=500)
    viewer = AstroPix4SimpleMonitor(hub=[pub1.publish_url, pub2.publish_url]).start(refresh_interval=0.1)
    try:
        total = first.hit_map.values() + second.hit_map.values()
        wait_for(
            lambda: viewer.num_readouts == first.num_readouts + second.num_readouts
            and np.array_equal(viewer.hit_map.values(), total),
            what="the sum of both hubs",
        )
        shown = viewer.dashboard.value
        assert pub1.publish_url in shown and pub2.publish_url in shown
        assert shown.count("apx-hub-status") == 2
        # The time windows are summed too, each hub's ring read at that hub's clock.
        wait_for(
            lambda: viewer.engine.windows_synced
            and viewer.hit_map_window(600) == first.hit_map_window(600) + second.hit_map_window(600)
            and np.array_equal(
                viewer.pixel_tot_hist(3, 7).values(flow=True),
                first.pixel_tot_hist(3, 7).values(flow=True) + second.pixel_tot_hist(3, 7).values(flow=True),
            ),
            what="the sum of both hubs' windows and pixel spectra",
        )
        assert viewer.hit_map_window(600).sum() == total.sum()
    finally:
        viewer.close()
        first.close()
        second.close()


def test_publishing_is_stated_on_the_dashboard_and_stops_with_close():
    mon = AstroPix4SimpleMonitor(port=0)
    publisher = mon.publish("tcp://127.0.0.1:0")
    try:
        assert "publishing as a hub on" in mon.dashboard.value and "loopback" in mon.dashboard.value
        assert publisher.token not in mon.dashboard.value  # never shown
    finally:
        mon.close()
    assert [t.name for t in threading.enumerate() if t.name in _THREADS] == []


class _FakeClock:
    def __init__(self, start: float) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now


def test_a_viewer_has_the_hubs_windows_noisy_pixels_viewer_masks_drill_down_and_alarms():
    mon = AstroPix4SimpleMonitor(port=0)
    clock = _FakeClock(1_000_000.3)
    mon.engine.clock = clock  # the hub's seconds, moved by the test
    mon.start(refresh_interval=0.1)
    publisher = mon.publish("tcp://127.0.0.1:0", refresh_interval=0.1)
    viewer = AstroPix4SimpleMonitor(hub=publisher.publish_url).start(refresh_interval=0.1)
    try:
        wait_for(lambda: viewer.hub_connected, what="the first update")
        assert not viewer.window_selector.disabled
        next_id = 0
        for second in range(20):  # the pixel (column 2, row 30) turns noisy after 8 s
            noisy = [(30, 2)] if second >= 8 else []
            run = AstroPix4Simulator(seed=70 + second, noisy_pixels=noisy, noisy_rate=0.3, start_id=next_id).generate(200)
            before = mon.num_readouts
            send_paced(mon.port, run.records)
            wait_for(lambda: mon.num_readouts == before + 200, what="the hub to process the second")
            next_id += 200
            clock.now += 1.0
        hub_window = mon.hit_map_window(10)
        wait_for(
            lambda: viewer.engine.windows_synced
            and viewer.hit_map_window(10) == hub_window
            and viewer.tot_hist_window(10) == mon.tot_hist_window(10)
            and viewer.pixel_tot_hist(2, 30) == mon.pixel_tot_hist(2, 30),
            what="the viewer's windows to equal the hub's",
        )
        # The window selector and traitlet: the viewer draws the hub's last 10 s.
        viewer.window_selector.value = 10.0
        assert viewer.window == 10
        viewer.refresh()
        assert np.array_equal(viewer.heatmap.color, hub_window.values().T)
        assert "last 10 s" in viewer.figures[0].title
        # Noisy pixels over the window, and the latched alarm of a new one.
        assert [p.pixel for p in viewer.noisy_pixels()] == [p.pixel for p in mon.noisy_pixels(10)] == [(0, 2, 30)]
        wait_for(lambda: any(a["name"] == "noisy" for a in viewer.alarms), what="the viewer's noisy alarm")
        # A viewer's mask is its own: the window's spectrum leaves the pixel out, the hub keeps its view.
        viewer.mask_noisy()
        viewer.refresh()  # a running viewer redraws at its next refresh: this one, now
        assert viewer.masked_pixels == {(0, 2, 30)} and mon.masked_pixels == set()
        counts, exact = mon.engine.masked_tot_window(10, [(0, 2, 30)])
        expected = mon.tot_hist_window(10).values(flow=True) - counts
        assert exact and counts.sum() == hub_window.values()[2, 30] > 0
        assert np.array_equal(np.asarray(viewer.tot_bars.y)[:-1], expected[1:-1])  # a step line: the last count repeated
        assert "masked pixels out" in viewer.figures[1].title
        assert np.isnan(np.asarray(viewer.heatmap.color)[30, 2])
        viewer.refresh()
        assert viewer.shift_figures.masked_hits == hub_window.values()[2, 30]
        # The hub's own monitor, given the same mask and window, draws the same spectrum.
        mon.mask_pixels([(0, 2, 30)])
        mon.window = 10
        mon.refresh()
        assert np.array_equal(mon.tot_bars.y, viewer.tot_bars.y)
        # Drill-down: a click selects the pixel; its spectrum and its rate over the window are the hub's.
        viewer.click_pixel(2, 30)
        viewer.refresh()
        assert viewer.selected_pixel == (2, 30)
        panel = viewer.pixel_panel
        # The viewer shows the last 10 s: the pixel's spectrum of its window (from the hub's slices).
        expected = viewer.pixel_tot_hist(2, 30, seconds=10).values()
        assert expected.sum() > 0 and panel.figure.title.endswith("(last 10 s)")
        assert np.array_equal(panel.drawn_counts(), expected)
        assert panel.rate_line.y.sum() == hub_window.values()[2, 30]
        assert viewer.error_count == 0, viewer.last_error
    finally:
        viewer.close()
        mon.close()


def test_a_viewer_shows_the_hubs_whole_run_rates_also_when_it_joins_late():
    from astropix_nbmonitor.hub import HubEngine
    from astropix_nbmonitor.monitor import RatePanel

    mon = AstroPix4SimpleMonitor(port=0)
    clock = _FakeClock(2_000_000.0)
    mon.engine.clock = clock
    mon.start(refresh_interval=0.1)
    publisher = mon.publish("tcp://127.0.0.1:0", refresh_interval=0.1)
    try:
        for second in range(5):
            run = AstroPix4Simulator(seed=90 + second, start_id=300 * second).generate(300)
            before = mon.num_readouts
            send_paced(mon.port, run.records)
            wait_for(lambda: mon.num_readouts == before + 300, what="the hub to process the second")
            clock.now += 1.0
            wait_for(lambda: mon.engine.trend.num_added >= second + 1, what="a trend point")  # noqa: B023
        hub_first = float(mon.engine.trend.arrays().t[0])
        late = HubEngine(publisher.publish_url, refresh_interval=0.1).start()
        try:
            wait_for(lambda: late.windows_synced and len(late.trend), what="the late viewer's history")
            arrays = late.trend.arrays()
            assert arrays.t[0] == hub_first  # the hub's points from before the viewer attached
            assert np.all(np.diff(arrays.t) > 0) and arrays.hit_rate.max() > 0
        finally:
            late.close()
        viewer = AstroPix4SimpleMonitor(hub=publisher.publish_url).start(refresh_interval=0.1)
        try:
            wait_for(lambda: viewer.engine.windows_synced and len(viewer.engine.trend) > 0, what="the viewer's trend")
            panel = viewer.panel(RatePanel)
            assert not panel.span_toggle.disabled
            panel.span_toggle.value = "whole run"
            viewer.refresh()
            assert viewer.figures[2].title == "Rates: whole run"
            assert 0 < len(viewer.rate_lines.x) <= len(viewer.engine.trend)
        finally:
            viewer.close()
    finally:
        mon.close()


def test_a_viewer_without_the_hubs_history_says_its_windows_are_incomplete(hub, monkeypatch):
    mon, publisher, _ = hub
    monkeypatch.setattr(publisher, "_history_reply", lambda: [b"history", b"{not json"])
    viewer = AstroPix4SimpleMonitor(hub=publisher.publish_url).start(refresh_interval=0.1)
    try:
        wait_for(lambda: viewer.engine.malformed_histories >= 1, what="a refused history")
        viewer.refresh()
        assert "apx-windows-warning" in viewer.dashboard.value and "refused as malformed" in viewer.dashboard.value
        monkeypatch.undo()  # the hub answers again: the viewer asks 2 to 4 s later and the warning goes
        wait_for(lambda: viewer.engine.windows_synced, timeout=30, what="the history at last")
        viewer.refresh()
        assert "apx-windows-warning" not in viewer.dashboard.value
        assert viewer.hit_map_window(600) == mon.hit_map_window(600)
    finally:
        viewer.close()
