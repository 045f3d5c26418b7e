"""What a shift acts on, through the monitor: time windows, whole-run trend, alarms, noisy pixels and masks."""

from __future__ import annotations


import numpy as np
import pytest

from astropix_nbmonitor.engine import MonitorEngine
from astropix_nbmonitor.fmt import decode_batch
from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor, HitMapPanel, TotPanel
from astropix_nbmonitor.sim import AstroPix4Simulator
from conftest import monitor_threads, send_paced, wait_for


class FakeClock:
    """A wall clock the test moves by hand (the engine's ``clock``)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now


def _send_and_wait(mon: AstroPix4SimpleMonitor, records: list[bytes]) -> None:
    """Send records over loopback and wait until every one is processed."""
    before = mon.engine.num_readouts
    send_paced(mon.port, records)
    wait_for(lambda: mon.engine.num_readouts >= before + len(records), what="every readout processed")


def _spot(counts: np.ndarray) -> tuple[int, int]:
    """(column, row) of the busiest pixel of a [column, row] map."""
    c, r = np.unravel_index(int(np.argmax(counts)), counts.shape)
    return int(c), int(r)


# ---------------------------------------------------------------------------
# Time windows
# ---------------------------------------------------------------------------


def test_a_moved_beam_is_seen_only_at_its_new_place_in_a_10_s_window(monitor):
    clock = FakeClock()
    monitor.engine.clock = clock
    first = AstroPix4Simulator(seed=1, beam_center=(8.0, 4.0), beam_sigma=(1.0, 1.0), beam_fraction=1.0).generate(2000)
    second = AstroPix4Simulator(seed=2, beam_center=(27.0, 12.0), beam_sigma=(1.0, 1.0), beam_fraction=1.0, start_id=2000).generate(2000)
    monitor.start(refresh_interval=0.05)
    _send_and_wait(monitor, first.records)
    clock.now += 100.0  # the beam moved 100 s later
    _send_and_wait(monitor, second.records)
    monitor.stop()
    whole = monitor.hit_map.values()
    window = monitor.hit_map_window(10).values()
    assert whole.sum() == len(decode_batch(first.records)) + len(decode_batch(second.records))
    assert window.sum() == len(decode_batch(second.records))
    assert _spot(window) == (12, 27)  # (column, row) of the second beam
    assert whole[4, 8] > 0 and window[4, 8] == 0  # the first spot is gone from the window, kept in the run
    assert monitor.tot_hist_window(10).sum(flow=True) == window.sum()
    # The widget: a 10 s window draws the window's map, 0 the whole run's.
    monitor.window = 10
    assert np.array_equal(monitor.heatmap.color, window.T)
    assert monitor.window_selector.value == 10
    assert "last 10 s" in monitor.figures[0].title
    monitor.window_selector.value = 0.0
    assert monitor.window == 0
    assert np.array_equal(monitor.heatmap.color, whole.T)
    state = monitor.engine.state(window=10)
    assert state.window == 10
    assert np.array_equal(state.hit_map.values(), window)
    assert np.array_equal(state.chip_hit_map(0).values(), window)


def test_window_traitlet_refuses_a_window_longer_than_the_ring(monitor):
    with pytest.raises(ValueError, match="600"):
        monitor.window = 3600
    assert monitor.window == 0
    monitor.window = 30  # a window the toolbar does not offer becomes an option
    assert monitor.window_selector.value == 30


def test_reset_clears_the_windows_and_the_trend(monitor):
    run = AstroPix4Simulator(seed=3).generate(500)
    monitor.replay(run.records)
    monitor.engine.refresh(1.0, paced=True)
    assert monitor.hit_map_window(10).sum() > 0 and monitor.engine.trend.num_added > 0
    monitor.reset()
    assert monitor.hit_map_window(10).sum() == 0
    assert monitor.engine.pixel_tots.nbytes == 0
    assert monitor.engine.trend.num_added == 0


def test_memory_stays_bounded_over_two_hours_of_windowed_run():
    engine = MonitorEngine(port=0)
    clock = FakeClock()
    engine.clock = clock
    hits = decode_batch(AstroPix4Simulator(seed=4, chip_ids=(0, 1), hits_per_readout=2).generate(200).records)
    sizes = []
    for second in range(2 * 3600):
        clock.now += 1.0
        engine.accumulate(hits)
        engine.refresh(1.0, paced=True)
        if second in (700, 7199):
            sizes.append((engine.windows.nbytes, engine.pixel_tots.nbytes, len(engine.trend), engine.windows.pixel_nbytes))
    engine.close()
    assert sizes[0][:2] == sizes[1][:2]  # the ring and the spectra do not grow
    deltas = engine.windows.pixels  # the per-second per-pixel TOT of masked windows: a ring too
    assert sizes[0][3] == sizes[1][3] <= deltas.budget_bytes + 2 * engine.pixel_tots.bytes_per_chip
    assert len(deltas.seconds) == 599 and deltas.dropped_seconds == 0 and deltas.mismatches == 0
    assert sizes[0][0] == 2 * engine.windows.bytes_per_chip
    assert len(engine.trend) <= engine.TREND_POINTS
    assert engine.trend.num_added == 7200
    # A 10-minute window holds 600 s of hits, the whole run 7,200 s.
    state = engine.state(window=600)
    assert state.hit_map.sum() == 600 * np.count_nonzero(hits["column"] < 16)
    assert engine.hit_map().sum() == 7200 * np.count_nonzero(hits["column"] < 16)


def test_rate_chart_shows_the_whole_run_with_bounded_points(monitor):
    clock = FakeClock()
    monitor.engine.clock = clock
    for _ in range(5000):
        clock.now += 0.5
        monitor.engine.trend.add(clock.now, 100.0, 200.0)
    from astropix_nbmonitor.monitor import RatePanel

    panel = monitor.panel(RatePanel)
    panel.span_toggle.value = "whole run"
    monitor.update_display()
    assert 0 < len(monitor.rate_lines.x) <= monitor.engine.TREND_POINTS
    assert monitor.rate_lines.x.dtype == np.float32
    assert float(monitor.rate_lines.x[0]) < -2000  # the run's first half hour is there
    assert monitor.figures[2].title == "Rates: whole run"


# ---------------------------------------------------------------------------
# Alarms through a monitor: each default alarm fires, stays latched, clears on acknowledge
# ---------------------------------------------------------------------------


@pytest.fixture
def alarmed():
    """A running monitor that refreshes only when the test says (a fake clock for the alarms)."""
    mon = AstroPix4SimpleMonitor(port=0)
    clock = FakeClock(__import__("time").time())
    mon.engine.clock = clock
    mon.start(refresh_interval=3600.0)
    yield mon, clock
    mon.close()
    assert monitor_threads() == []


def _alarm(mon: AstroPix4SimpleMonitor, name: str) -> dict | None:
    return next((a for a in mon.alarms if a["name"] == name), None)


def _fires_latches_and_acknowledges(mon: AstroPix4SimpleMonitor, clock: FakeClock, name: str, clear=None) -> None:
    """The alarm ``name`` is active now; after ``clear()`` (default: 11 s pass) it stays latched until acknowledged."""
    mon.refresh()
    alarm = _alarm(mon, name)
    assert alarm is not None and alarm["active"] and alarm["count"] == 1, mon.alarms
    assert f'data-alarm="{name}"' in mon.dashboard.value
    assert mon.dashboard.value.index("apx-alarms") < mon.dashboard.value.index("apx-status")  # at the top
    if clear is None:
        clock.now += 11.0
    else:
        clear()
    mon.refresh()
    alarm = _alarm(mon, name)
    assert alarm is not None and not alarm["active"], mon.alarms  # latched after the fault cleared
    mon.acknowledge(name)
    assert _alarm(mon, name) is None
    assert f'data-alarm="{name}"' not in mon.dashboard.value


def test_malformed_datagrams_fire_the_malformed_alarm(alarmed, caplog):
    mon, clock = alarmed
    mon.refresh()
    send_paced(mon.port, [b"not a readout record"])
    wait_for(lambda: mon.listener_stats().malformed >= 1, what="the malformed datagram")
    with caplog.at_level("WARNING", logger="astropix_nbmonitor.alarms"):
        _fires_latches_and_acknowledges(mon, clock, "malformed")
    assert sum("alarm malformed" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_lost_readouts_fire_the_lost_alarm(alarmed):
    mon, clock = alarmed
    mon.refresh()
    run = AstroPix4Simulator(seed=7, faults={"skip_ids": 0.05}).generate(1000)
    _send_and_wait(mon, run.records)
    assert mon.status()["lost"] > 0
    _fires_latches_and_acknowledges(mon, clock, "lost")


def test_a_pixel_turned_noisy_fires_the_noisy_alarm(alarmed):
    mon, clock = alarmed
    mon.refresh()
    run = AstroPix4Simulator(seed=8, noisy_pixels=[(30, 2)], noisy_rate=0.3).generate(3000)
    _send_and_wait(mon, run.records)
    # Noisy is "a pixel noisy that was not before": the next refresh already clears it.
    _fires_latches_and_acknowledges(mon, clock, "noisy", clear=lambda: None)


def test_no_data_for_5_s_fires_the_no_data_alarm(alarmed):
    mon, clock = alarmed
    mon.refresh()
    clock.now += 6.0
    mon.refresh()

    def data_comes() -> None:
        _send_and_wait(mon, AstroPix4Simulator(seed=9).generate(10).records)
        clock.now = mon.listener_stats().last_datagram_time + 0.1

    # The first refresh after the gap fired it; the helper's refresh sees it still active.
    _fires_latches_and_acknowledges(mon, clock, "no_data", clear=data_comes)


def _inject(mon: AstroPix4SimpleMonitor, monkeypatch, **values) -> None:
    """Make the engine report these counters (a fault too slow or too rare to cause for real)."""
    from astropix_nbmonitor.status import Status

    real = type(mon.engine).status

    def status(engine=mon.engine):
        base = real(engine).as_dict()
        base.update(values)
        return Status.from_dict(base, taken_at=engine.clock())

    monkeypatch.setattr(mon.engine, "status", status)


def test_dropped_readouts_fire_the_dropped_alarm(alarmed, monkeypatch):
    mon, clock = alarmed
    _inject(mon, monkeypatch, dropped=0)
    mon.refresh()
    clock.now += 1.0
    _inject(mon, monkeypatch, dropped=25)
    _fires_latches_and_acknowledges(mon, clock, "dropped")


def test_a_halved_hit_rate_fires_the_rate_drop_alarm(alarmed, monkeypatch):
    mon, clock = alarmed
    _inject(mon, monkeypatch, hit_rate=1000.0)
    for _ in range(65):
        clock.now += 1.0
        mon.refresh()
    assert _alarm(mon, "rate_drop") is None
    _inject(mon, monkeypatch, hit_rate=300.0)
    for _ in range(5):
        clock.now += 1.0
        mon.refresh()

    def recovers() -> None:
        _inject(mon, monkeypatch, hit_rate=1000.0)
        for _ in range(6):
            clock.now += 1.0
            mon.refresh()

    _fires_latches_and_acknowledges(mon, clock, "rate_drop", clear=recovers)


def test_a_red_reference_becomes_an_alarm_and_a_custom_alarm_fires(monitor):
    reference = AstroPix4SimpleMonitor(port=0)
    try:
        reference.replay(AstroPix4Simulator(seed=5).generate(3000).records)
        monitor.set_reference(reference)
    finally:
        reference.close()
    monitor.add_alarm("many_hits", "hits", above=1000)
    monitor.replay(AstroPix4Simulator(seed=6, tot_mpv_us=110.0).generate(3000).records)
    monitor.refresh()  # the dashboard saw red with enough hits; this refresh latches it
    assert {"reference", "many_hits"} <= {a["name"] for a in monitor.alarms}
    seen = []
    monitor.observe(lambda change: seen.append(change["new"]), names="alarms")
    monitor.clear_reference()
    monitor.refresh()
    monitor.acknowledge()  # "many_hits" still holds: kept, marked acknowledged
    assert [a["name"] for a in monitor.alarms] == ["many_hits"]
    assert monitor.alarms[0]["acknowledged"] and seen  # the traitlet is observable
    monitor.ack_button.click()
    assert [a["name"] for a in monitor.alarms] == ["many_hits"]


# ---------------------------------------------------------------------------
# Noisy pixels and masks through a monitor
# ---------------------------------------------------------------------------

NOISY_ROW, NOISY_COLUMN = 30, 2  # the simulator takes (row, column)


def _noisy_run(seed: int = 8) -> list[bytes]:
    sim = AstroPix4Simulator(seed=seed, noisy_pixels=[(NOISY_ROW, NOISY_COLUMN)], noisy_rate=0.3)
    return sim.generate(3000).records


def test_a_pixel_made_noisy_is_found_and_no_other(monitor):
    monitor.start(refresh_interval=0.05)
    _send_and_wait(monitor, _noisy_run())
    monitor.stop()
    noisy = monitor.noisy_pixels()
    assert [p.pixel for p in noisy] == [(0, NOISY_COLUMN, NOISY_ROW)]
    assert noisy[0].hits == monitor.hit_map.values()[NOISY_COLUMN, NOISY_ROW]
    assert noisy[0].rate > 0
    assert "column 2, row 30" in monitor.dashboard.value
    panel = monitor.panel(HitMapPanel)
    assert panel.noisy_markers in monitor.figures[0].marks
    assert list(panel.noisy_markers.x) == [NOISY_COLUMN] and list(panel.noisy_markers.y) == [NOISY_ROW]
    assert panel.noisy_markers.x.dtype == np.float64
    # A clean run has none.
    clean = AstroPix4SimpleMonitor(port=0)
    try:
        clean.replay(AstroPix4Simulator(seed=8).generate(3000).records)
        assert clean.noisy_pixels() == []
    finally:
        clean.close()


def test_a_masked_noisy_pixel_leaves_the_displayed_map_and_spectrum(monitor):
    monitor.replay(_noisy_run())
    whole_map, whole_tot = monitor.hit_map.values(), monitor.tot_hist.values(flow=True)
    pixel_hits = int(whole_map[NOISY_COLUMN, NOISY_ROW])
    pixel_tot = monitor.pixel_tot_hist(NOISY_COLUMN, NOISY_ROW, chip_id=0).values(flow=True)
    assert pixel_tot.sum() == pixel_hits > 0
    monitor.mask_button.click()  # "Mask noisy": what noisy_pixels() finds now
    assert monitor.masked_pixels == {(0, NOISY_COLUMN, NOISY_ROW)}
    color = np.asarray(monitor.heatmap.color)
    assert np.isnan(color[NOISY_ROW, NOISY_COLUMN])
    others = np.ones(color.shape, dtype=bool)
    others[NOISY_ROW, NOISY_COLUMN] = False
    assert np.array_equal(color[others], whole_map.T[others])
    assert monitor.heatmap.null_color == "#c8c8c8"
    layer = monitor.panel(HitMapPanel).mask_layer  # paints the masked pixel grey in the browser
    assert layer in monitor.figures[0].marks and np.argwhere(layer.color).tolist() == [[NOISY_ROW, NOISY_COLUMN]]
    assert np.array_equal(monitor.panel(TotPanel).drawn_counts(), (whole_tot - pixel_tot)[1:-1])
    assert "masked pixels out" in monitor.figures[1].title
    # hit_map and tot_hist stay complete; the dashboard counts the masked hits.
    assert np.array_equal(monitor.hit_map.values(), whole_map)
    assert np.array_equal(monitor.tot_hist.values(flow=True), whole_tot)
    monitor.refresh()
    assert monitor.shift_figures.masked_hits == pixel_hits
    assert f'<span class="apx-masked-hits">{pixel_hits:,}</span> hits left out' in monitor.dashboard.value
    monitor.unmask_pixels(monitor.noisy_pixels())
    assert monitor.masked_pixels == set()
    assert np.array_equal(monitor.heatmap.color, whole_map.T)


def test_a_pixel_masked_after_its_hits_leaves_the_10_s_windows_displayed_tot_exactly(monitor):
    from astropix_nbmonitor.fmt import HIT_DTYPE
    from astropix_nbmonitor.hist import TOT_EDGES
    from conftest import offline_tot_counts

    clock = FakeClock(1_000_000.4)
    monitor.engine.clock = clock
    rng = np.random.default_rng(17)
    batches, arrival = [], []
    for second in range(30):
        hits = np.zeros(250, dtype=HIT_DTYPE)
        hits["column"], hits["row"] = rng.integers(0, 16, 250), rng.integers(0, 35, 250)
        hits["tot_us"] = np.round(rng.uniform(5.0, 200.0, 250), 1)
        if second >= 12:  # the pixel turns noisy, with a TOT no other hit has
            hits["column"][:60], hits["row"][:60], hits["tot_us"][:60] = NOISY_COLUMN, NOISY_ROW, 455.5
        for part in np.array_split(hits, 4):
            monitor.engine.accumulate(part)
            monitor.engine.count_processed(0, len(part))
        batches.append(hits)
        arrival.append(np.full(len(hits), second))
        clock.now += 1.0
    clock.now -= 0.5  # inside the last second
    hits, when = np.concatenate(batches), np.concatenate(arrival)
    noisy = (hits["column"] == NOISY_COLUMN) & (hits["row"] == NOISY_ROW)
    whole_tot = monitor.tot_hist.values(flow=True)
    monitor.window = 10
    monitor.refresh()
    assert monitor.noisy_pixels() and monitor.noisy_pixels()[0].pixel == (0, NOISY_COLUMN, NOISY_ROW)
    monitor.mask_pixels(monitor.noisy_pixels())  # masked now, after every one of its hits
    last_10_s = when >= 20
    expected = offline_tot_counts(hits["tot_us"][last_10_s & ~noisy], TOT_EDGES)
    assert np.array_equal(np.asarray(monitor.tot_bars.y)[:-1], expected[1:-1])  # a step line: the last count repeated
    noisy_bin = int(np.searchsorted(TOT_EDGES, 455.5, side="right"))  # with the underflow first
    assert expected[1:-1].sum() > 0 and monitor.tot_bars.y[noisy_bin - 1] == 0  # the distinctive bin is empty
    assert "masked pixels out" in monitor.figures[1].title and "last 10 s" in monitor.figures[1].title
    # The displayed hit map of the window leaves the pixel out too; the dashboard counts its window hits.
    color = np.asarray(monitor.heatmap.color)
    assert np.isnan(color[NOISY_ROW, NOISY_COLUMN])
    monitor.refresh()
    assert monitor.shift_figures.masked_hits == int(np.count_nonzero(last_10_s & noisy)) >= 600
    # The whole-run spectrum stays complete, and the whole-run view takes the pixel out of the whole run.
    assert np.array_equal(monitor.tot_hist.values(flow=True), whole_tot)
    assert whole_tot[noisy_bin] == 18 * 60
    monitor.window = 0
    assert np.array_equal(np.asarray(monitor.tot_bars.y)[:-1], offline_tot_counts(hits["tot_us"][~noisy], TOT_EDGES)[1:-1])
    # The pixel's own spectrum, over the window or the whole run.
    assert monitor.pixel_tot_hist(NOISY_COLUMN, NOISY_ROW, seconds=10).sum(flow=True) == np.count_nonzero(last_10_s & noisy)
    assert monitor.pixel_tot_hist(NOISY_COLUMN, NOISY_ROW).sum(flow=True) == np.count_nonzero(noisy)


def test_a_mask_written_on_the_real_configuration_sets_exactly_its_bits(monitor, tmp_path):
    from astropix_nbmonitor import masks
    from conftest import shared_data_file

    config = shared_data_file("config_v4_none_20250723_092534.yml")
    enabled = masks.enabled_pixels(config)
    assert enabled, "the real file enables some pixels"
    pixel = sorted(enabled)[0]
    monitor.mask_pixels([pixel])
    out = monitor.write_mask(tmp_path / "masked.yml", config=config)
    assert masks.enabled_pixels(out) == enabled - {pixel}
    before, after = config.read_text().splitlines(), out.read_text().splitlines()
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after)) == 1
    fresh = AstroPix4SimpleMonitor(port=0)
    try:
        read = fresh.read_mask(out)
        assert read == masks.read_mask(out).masked_pixels and pixel in read
    finally:
        fresh.close()


# ---------------------------------------------------------------------------
# Pixel drill-down
# ---------------------------------------------------------------------------


def test_a_click_on_a_pixel_selects_it_and_a_second_click_deselects(monitor):
    clock = FakeClock()
    monitor.engine.clock = clock
    run = AstroPix4Simulator(seed=1).generate(2000)
    monitor.replay(run.records)
    hits = monitor.hit_map.values()
    column, row = _spot(hits)
    # What the hit map's colour canvas sends on a click on a cell.
    def click() -> None:
        monitor.panel(HitMapPanel).heatmap._handle_custom_msg({"event": "click", "row": row, "column": column}, [])

    click()
    assert monitor.selected_pixel == (column, row)
    panel = monitor.pixel_panel
    assert panel.box in monitor.children
    expected = monitor.pixel_tot_hist(column, row).values()
    assert expected.sum() == hits[column, row] > 0
    assert np.array_equal(panel.drawn_counts(), expected) and panel.bars.y.dtype == np.float32
    assert f"column {column}, row {row}" in panel.figure.title
    assert panel.rate_line.y.sum() == hits[column, row] and panel.rate_line.x.dtype == np.float32
    hitmap = monitor.panel(HitMapPanel)
    assert hitmap.selected_marker in monitor.figures[0].marks
    assert not monitor.clear_pixel_button.disabled
    click()  # the same pixel again
    assert monitor.selected_pixel is None and panel.box not in monitor.children
    assert hitmap.selected_marker not in monitor.figures[0].marks


def test_the_selected_pixels_spectrum_follows_the_time_window(monitor):
    clock = FakeClock()
    monitor.engine.clock = clock
    sim = AstroPix4Simulator(seed=21)
    monitor.replay(sim.generate(3000).records)
    column, row = _spot(monitor.hit_map.values())
    clock.now += 60  # a minute later, fewer readouts: the last 10 s hold only these
    monitor.replay(sim.generate(300).records)  # the ids go on
    monitor.selected_pixel = (column, row)
    monitor.refresh()
    panel = monitor.pixel_panel
    whole = monitor.pixel_tot_hist(column, row).values()
    assert np.array_equal(panel.drawn_counts(), whole) and panel.figure.title.endswith("(whole run)")
    monitor.window = 10
    monitor.refresh()
    windowed = monitor.pixel_tot_hist(column, row, seconds=10).values()
    assert 0 < windowed.sum() < whole.sum()
    assert np.array_equal(panel.drawn_counts(), windowed) and panel.figure.title.endswith("(last 10 s)")
    monitor.selected_pixel = (3, 4)
    monitor.clear_pixel_button.click()
    assert monitor.selected_pixel is None
    with pytest.raises(ValueError, match="inside"):
        monitor.selected_pixel = (16, 0)


# ---------------------------------------------------------------------------
# Several chips, and a viewer of a hub
# ---------------------------------------------------------------------------


def test_several_chips_get_their_own_rates_out_of_matrix_hits_noisy_pixels_and_masks(monitor):
    sim = AstroPix4Simulator(seed=12, chip_ids=(0, 3), hits_per_readout=2, noisy_pixels=[(30, 2)], noisy_rate=0.3,
                             faults={"out_of_matrix": 0.05})
    run = sim.generate(4000)
    monitor.replay(run.records)
    hits = decode_batch(run.records)
    rows = {chip: (n, oom) for chip, n, _, oom in monitor.shift_figures.chip_rows}
    for chip in (0, 3):
        mine = hits[hits["chip_id"] == chip]
        assert rows[chip] == (len(mine), int(np.count_nonzero(mine["column"] >= 16))), chip
    assert sum(oom for _, oom in rows.values()) == monitor.out_of_matrix_hits > 0
    assert "per chip (whole run): chip 0:" in monitor.dashboard.value and "not attributable to one chip" in monitor.dashboard.value
    # The noisy pixel fires on both chips; masks and markers follow the chip shown.
    assert {p.pixel for p in monitor.noisy_pixels()} == {(0, 2, 30), (3, 2, 30)}
    monitor.mask_pixels([(3, 2, 30)])
    monitor.chip_selector.value = 0
    assert not np.isnan(monitor.heatmap.color).any()  # chip 0's pixel is not masked
    monitor.chip_selector.value = 3
    assert np.isnan(monitor.heatmap.color[30, 2])
    assert monitor.shift_figures.masked_hits == monitor.chip_hit_map(3).values()[2, 30]
    monitor.selected_pixel = (2, 30)
    assert monitor.pixel_panel.drawn_counts().sum() == monitor.pixel_tot_hist(2, 30, 3).sum()
    assert "chip 3" in monitor.pixel_panel.figure.title


def test_a_viewer_of_a_hub_has_the_hubs_windows_and_drill_down():
    pytest.importorskip("zmq")
    mon = AstroPix4SimpleMonitor(port=0)
    clock = FakeClock()
    mon.engine.clock = clock
    mon.start(refresh_interval=0.1)
    publisher = mon.publish("tcp://127.0.0.1:0", refresh_interval=0.1)
    viewer = AstroPix4SimpleMonitor(hub=publisher.publish_url).start(refresh_interval=0.1)
    try:
        _send_and_wait(mon, AstroPix4Simulator(seed=13, noisy_pixels=[(30, 2)], noisy_rate=0.5).generate(2000).records)
        clock.now += 30.0  # the first run leaves a 10 s window ...
        _send_and_wait(mon, AstroPix4Simulator(seed=14, start_id=2000).generate(1000).records)
        wait_for(
            lambda: viewer.num_readouts == 3000 and viewer.hit_map_window(10) == mon.hit_map_window(10),
            what="the viewer to show the hub's readouts and window",
        )
        assert not viewer.window_selector.disabled
        assert viewer.hit_map_window(10).sum() == len(decode_batch(AstroPix4Simulator(seed=14, start_id=2000).generate(1000).records))
        assert viewer.hit_map_window(60) == viewer.hit_map  # ... and stays in a 60 s one
        assert viewer.tot_hist_window(10) == mon.tot_hist_window(10)
        viewer.refresh()
        assert [p.pixel for p in viewer.noisy_pixels(0)] == [(0, 2, 30)]  # from the hub's whole-run map
        assert viewer.noisy_pixels(10) == []  # ... not in the last 10 s
        wait_for(lambda: viewer.pixel_tot_hist(2, 30) == mon.pixel_tot_hist(2, 30), what="the pixel's spectrum")
        viewer.selected_pixel = (2, 30)
        viewer.refresh()
        assert np.array_equal(viewer.pixel_panel.drawn_counts(), mon.pixel_tot_hist(2, 30).values())
        assert viewer.error_count == 0, viewer.last_error
    finally:
        viewer.close()
        mon.close()
