"""The monitor widget: lifecycle, exact histograms over loopback, display state."""

from __future__ import annotations

import re
import socket
import threading
import time

import bqplot
import numpy as np
import pytest

from astropix_nbmonitor.engine import MonitorEngine
from astropix_nbmonitor.monitor import board
from conftest import make_record, monitor_threads
from conftest import send_paced as _send
from conftest import wait_for as _wait_for
from astropix_nbmonitor.fmt import AstroPix4Readout, decode_batch
from astropix_nbmonitor.hist import TOT_EDGES
from astropix_nbmonitor.monitor import AbstractMonitor, AstroPix4SimpleMonitor, HitMapPanel, RatePanel
from astropix_nbmonitor.monitor.matrix import MatrixCanvas, color_indices
from astropix_nbmonitor.monitor.panels import integer_ticks
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.sock import AddressInUseError, MulticastSender


def _expected_maps(hits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inside = hits[hits["column"] < 16]
    hit_map = np.zeros((16, 35), dtype=np.int64)
    np.add.at(hit_map, (inside["column"].astype(int), inside["row"].astype(int)), 1)
    # Half-open bins as the monitor's: a TOT of exactly the last edge is overflow.
    tot, _ = np.histogram(hits["tot_us"][hits["tot_us"] < TOT_EDGES[-1]], bins=TOT_EDGES)
    return hit_map, tot


def _run_stream(mon: AstroPix4SimpleMonitor, records: list[bytes]) -> None:
    mon.start(refresh_interval=0.05)
    _send(mon.port, records)
    _wait_for(lambda: mon.listener_stats().accepted >= len(records), what="every datagram")
    mon.stop()


def test_start_returns_self_at_once_and_stop_ends_every_thread(monitor):
    assert monitor.start() is monitor
    assert monitor.running
    assert set(monitor_threads()) == {"astropix-monitor-listener", "astropix-monitor-processing"}
    monitor.stop()
    assert not monitor.running
    assert monitor_threads() == []
    # The port is free again: a plain socket can bind it.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", monitor.port))
    monitor.stop()  # twice is harmless


def test_stream_over_loopback_fills_exact_histograms_and_counters(monitor):
    sim = AstroPix4Simulator(seed=11, hits_per_readout=2.0, chip_ids=(0,), faults={"out_of_matrix": 0.05, "ff_padding": 0.1})
    run = sim.generate(3000)
    _run_stream(monitor, run.records)
    hits = decode_batch(run.records)
    exp_map, exp_tot = _expected_maps(hits)
    assert monitor.num_readouts == 3000
    assert monitor.num_hits == len(hits)
    assert np.array_equal(monitor.hit_map.values(), exp_map)
    assert np.array_equal(monitor.tot_hist.values(), exp_tot)
    assert monitor.tot_hist.values(flow=True)[-1] == np.count_nonzero(hits["tot_us"] >= 500.0)
    assert monitor.out_of_matrix_hits == np.count_nonzero(hits["column"] >= 16) > 0
    assert monitor.lost_readouts == 0
    assert monitor.malformed_packets == 0
    assert monitor.dropped_readouts == 0
    # The decoded hits are the simulator's truth.
    assert len(hits) == len(run.truth)


def test_split_hits_are_recovered_and_lost_readouts_counted(monitor):
    sim = AstroPix4Simulator(seed=5, hits_per_readout=1.5, faults={"split": 0.2, "skip_ids": 0.02})
    run = sim.generate(2000)
    assert run.num_split > 0 and run.lost > 0
    _run_stream(monitor, run.records)
    exp_map, _ = _expected_maps(run.truth)
    assert monitor.recovered_hits == run.num_split
    assert monitor.lost_readouts == run.lost
    assert monitor.num_hits == len(run.truth)
    assert np.array_equal(monitor.hit_map.values(), exp_map)


def test_malformed_datagrams_are_counted_and_do_not_stop_the_monitor(monitor):
    run = AstroPix4Simulator(seed=2).generate(200)
    monitor.start(refresh_interval=0.05)
    junk = [b"", b"\x00" * 5, b"\xfe\xdc\xba" + b"\x00" * 30, run.records[0][:-3], bytes(range(256)) * 100]
    _send(monitor.port, [j for j in junk if j] + run.records)
    _wait_for(lambda: monitor.listener_stats().datagrams >= len(run.records) + 4, what="all datagrams")
    monitor.stop()
    assert monitor.malformed_packets == 4
    assert monitor.num_readouts == 200
    assert "malformed" in monitor.dashboard.value


def test_restart_keeps_counting_and_calls_setup_each_time():
    calls = []

    class Counting(AstroPix4SimpleMonitor):
        def setup(self):
            calls.append(self.num_readouts)

    mon = Counting(port=0)
    try:
        sim = AstroPix4Simulator(seed=3)
        _run_stream(mon, sim.generate(300).records)
        assert mon.num_readouts == 300
        _run_stream(mon, sim.generate(200).records)
        assert mon.num_readouts == 500
        assert calls == [0, 300]
        assert mon.lost_readouts == 0
    finally:
        mon.close()
    assert monitor_threads() == []


def test_buttons_drive_the_lifecycle_and_reset_clears_everything(monitor):
    monitor.start_button.click()
    assert monitor.running and monitor.start_button.disabled and not monitor.stop_button.disabled
    _send(monitor.port, AstroPix4Simulator(seed=4, hits_per_readout=3).generate(500).records)
    _wait_for(lambda: monitor.listener_stats().accepted >= 500, what="500 readouts")
    monitor.stop_button.click()
    assert not monitor.running and monitor_threads() == []
    assert monitor.num_readouts == 500 and monitor.hit_map.sum() > 0
    assert monitor.heatmap.color.sum() > 0
    monitor.reset_button.click()
    assert monitor.num_readouts == monitor.num_hits == monitor.recovered_hits == 0
    assert monitor.hit_map.sum() == 0 and monitor.tot_hist.sum(flow=True) == 0
    assert monitor.heatmap.color.sum() == 0
    assert monitor.tot_bars.y.sum() == 0
    assert monitor.listener_stats().accepted == 0
    assert 'class="apx-num-readouts">0<' in monitor.dashboard.value


def test_update_display_sends_a_javascript_safe_color_array(monitor):
    hits = AstroPix4Simulator(seed=8, hits_per_readout=4).generate(400).records
    monitor.process_batch(hits)
    monitor.update_display()
    color = monitor.heatmap.color
    assert color.shape == (35, 16)
    # The smallest type the front end reads: these counts fit in a byte (float32 for log, ratio or masks).
    assert color.dtype == np.uint8
    assert np.array_equal(color, monitor.hit_map.values().T)
    assert monitor.tot_bars.y.dtype == np.float32  # a step line over the edges: the counts, the last one twice
    assert np.array_equal(monitor.tot_bars.y[:-1], monitor.tot_hist.values())
    # What the README promises of the plots: a colour bar, a tooltip with row,
    # column and counts, rows drawn top-down, and the TOT overflow in the title.
    assert any(isinstance(ax, bqplot.ColorAxis) for ax in monitor.figures[0].axes)
    panel = monitor.panel(HitMapPanel)
    # Canvas-drawn under the figure: one byte a cell a refresh, not one SVG element per pixel nor a PNG.
    assert isinstance(monitor.heatmap, MatrixCanvas) and monitor.heatmap in monitor.canvas.children
    assert monitor.heatmap.pixels == color_indices(counts_t := monitor.hit_map.values().T, 0.0, panel.color_scale.max).tobytes()
    assert counts_t.max() > 0 and len(set(monitor.heatmap.pixels)) > 2  # several colours drawn
    assert monitor.heatmap.inset == monitor.figures[0].fig_margin and monitor.figures[0].background_style["fill"] == "none"
    assert list(monitor.figures[0].marks) == [] and monitor.heatmap.pointer  # the canvas catches clicks and hovers
    counts = monitor.hit_map.values().T
    row, column = np.argwhere(counts == counts.max())[0]
    # What the colour canvas sends when the mouse enters a cell; the kernel answers with its hint.
    hover = {"event": "hover", "row": int(row), "column": int(column)}
    monitor.heatmap._handle_custom_msg(hover, [])
    assert monitor.heatmap.hint == {"row": row, "column": column, "text": f"row {row}, column {column}: {int(counts.max()):,} hits"}
    assert panel.row_scale.reverse
    overflow = int(monitor.tot_hist.values(flow=True)[-1])
    assert monitor.figures[1].title.endswith(f"overflow > 500 us: {overflow})")
    # Log scale: colours log10(1 + counts); the tooltip still shows the counts.
    # Linear again restores the counts.
    monitor.scale_toggle.value = "log"
    assert monitor.heatmap.color.dtype == np.float32
    assert np.allclose(monitor.heatmap.color, np.log10(1 + counts))
    assert list(monitor.figures[0].marks) == []
    monitor.heatmap.hint = {}
    monitor.heatmap._handle_custom_msg(hover, [])
    assert monitor.heatmap.hint["text"] == f"row {row}, column {column}: {int(counts.max()):,} hits"
    assert panel.color_axis.label == "" and monitor.figures[0].title == "Hit map: log10(1 + hits)"
    monitor.scale_toggle.value = "linear"
    assert np.array_equal(monitor.heatmap.color, counts)
    assert list(monitor.figures[0].marks) == []


def test_the_tot_title_takes_the_overflow_edge_from_the_real_edges():
    mon = AstroPix4SimpleMonitor(port=0, tot_edges=[0, 10, 100, 500])
    try:
        mon.replay(AstroPix4Simulator(seed=4, tot_tail=0.3, tot_tail_us=700.0).generate(300).records)
        overflow = int(mon.tot_hist.values(flow=True)[-1])
        assert overflow > 0
        assert mon.figures[1].title == f"TOT (overflow > 500 us: {overflow:,})"
    finally:
        mon.close()


def test_colour_bar_ticks_are_whole_numbers_even_on_an_empty_map(monitor):
    """An empty map once showed "100m" ticks; a never-started map is drawn in the lowest colour."""
    panel = monitor.panel(HitMapPanel)
    assert panel.color_scale.min == 0.0 and panel.color_scale.max == 1.0  # before any refresh
    assert np.all(monitor.heatmap.color == 0)
    monitor.refresh()
    ticks = np.asarray(panel.color_axis.tick_values)
    assert len(ticks) >= 1 and np.all(ticks == np.round(ticks)) and ticks.max() <= 1.0
    monitor.replay(AstroPix4Simulator(seed=8, hits_per_readout=4).generate(50).records)
    ticks = np.asarray(panel.color_axis.tick_values)
    assert np.all(ticks == np.round(ticks)) and len(ticks) >= 2
    for top in (0, 1, 3, 7, 12, 99, 1234, 5e6):
        t = integer_ticks(top)
        assert np.all(t == np.round(t)) and t[0] == 0 and t[-1] >= min(top, 1) and 2 <= len(t) <= 7, (top, t)


def test_a_monitor_that_failed_to_bind_shows_an_empty_map():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        mon = AstroPix4SimpleMonitor(port=port)
        try:
            with pytest.raises(AddressInUseError):
                mon.start()
            mon.refresh()
            panel = mon.panel(HitMapPanel)
            assert np.all(mon.heatmap.color == 0) and panel.color_scale.min == 0.0 and panel.color_scale.max >= 1.0
        finally:
            mon.close()


def test_the_canvas_fits_a_narrow_page_and_the_legend_leaves_room(monitor):
    """Grid columns may shrink to zero (no clipping, no horizontal scroll) and the rates keep headroom."""
    layout = monitor.canvas.layout
    assert layout.width == "100%" and layout.max_width == "1350px"
    assert all(part.startswith("minmax(0,") for part in layout.grid_template_columns.split(" ") if "(" in part)
    assert all(fig.layout.min_width == "0px" for fig in monitor.figures)
    monitor.engine.history.add(100.0, 250.0)
    monitor.update_display()
    assert monitor.panel(RatePanel).y_scale.max >= 1.3 * 250.0
    # The scale toggle sits in one row with its label.
    box = monitor.panel(HitMapPanel).controls[0]
    assert box.layout.align_items == "center" and box.children[0].value == "hit map scale"


def test_batch_path_equals_per_readout_path():
    run = AstroPix4Simulator(seed=21, hits_per_readout=2, faults={"split": 0.1, "ff_padding": 0.1, "garbled": 0.02}).generate(1500)
    fast = AstroPix4SimpleMonitor(port=0)
    slow = AstroPix4SimpleMonitor(port=0)
    try:
        for i in range(0, 1500, 250):
            fast.process_batch(run.records[i : i + 250])
        AbstractMonitor.process_batch(slow, run.records)
        fast.refresh()
        slow.refresh()
        assert fast.num_hits == slow.num_hits > 0
        assert fast.recovered_hits == slow.recovered_hits > 0
        assert np.array_equal(fast.hit_map.values(), slow.hit_map.values())
        assert np.array_equal(fast.tot_hist.values(flow=True), slow.tot_hist.values(flow=True))
        assert fast.flag_counts == slow.flag_counts
    finally:
        fast.close()
        slow.close()


def test_chip_selector_appears_with_several_chips(monitor):
    run = AstroPix4Simulator(seed=9, chip_ids=(0, 3), hits_per_readout=2).generate(300)
    monitor.process_batch(run.records[:1])
    monitor.update_display()
    monitor.process_batch(run.records[1:])
    monitor.update_display()
    assert monitor.chips_seen == [0, 3]
    assert monitor.chip_selector.layout.display != "none"
    assert [v for _, v in monitor.chip_selector.options] == [-1, 0, 3]
    total = monitor.hit_map.values()
    monitor.chip_selector.value = 3
    only3 = monitor.chip_hit_map(3).values()
    assert 0 < only3.sum() < total.sum()
    assert np.array_equal(monitor.hit_map.values(), total)  # the display's choice does not change hit_map
    assert np.array_equal(monitor.heatmap.color, only3.T)
    assert np.array_equal(monitor.chip_hit_map(0).values() + only3, total)


def test_new_monitor_on_same_address_stops_the_old_one():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = AstroPix4SimpleMonitor(port=port).start()
    try:
        second = AstroPix4SimpleMonitor(port=port)
        assert not first.running
        second.start()
        assert second.running
        second.close()
    finally:
        first.close()
    assert monitor_threads() == []


def test_port_in_use_raises_a_clear_error_and_the_button_shows_it():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        mon = AstroPix4SimpleMonitor(port=port)
        try:
            with pytest.raises(AddressInUseError, match=str(port)):
                mon.start()
            assert not mon.running
            mon.start_button.click()
            assert not mon.running
            assert "AddressInUseError" in mon.dashboard.value
        finally:
            mon.close()
    assert monitor_threads() == []


def test_dashboard_warns_when_no_data_arrives(monitor, monkeypatch):
    monkeypatch.setattr(board, "NO_DATA_WARNING_S", 0.1)
    monitor.start(refresh_interval=0.05)
    _wait_for(lambda: "apx-warning" in monitor.dashboard.value, what="the no-data warning")
    assert "no data" in monitor.dashboard.value
    monitor.stop()


def test_traitlets_are_observable_and_update_while_main_thread_sleeps(monitor):
    seen = []
    monitor.observe(lambda change: seen.append(change["new"]), names="num_readouts")
    monitor.start(refresh_interval=0.05)
    sender = threading.Thread(target=_send, args=(monitor.port, AstroPix4Simulator(seed=1).generate(2000).records))
    sender.start()
    time.sleep(1.0)  # a busy notebook cell: the monitor keeps going on its threads
    sender.join()
    _wait_for(lambda: monitor.num_readouts == 2000, what="2000 readouts")
    monitor.stop()
    assert seen and seen[-1] == 2000
    assert monitor.readout_rate == 0.0  # stopped


def test_repr_holds_no_live_values(monitor):
    text = repr(monitor)
    monitor.process_batch(AstroPix4Simulator(seed=1).generate(10).records)
    monitor.update_display()
    assert repr(monitor) == text == f"AstroPix4SimpleMonitor(group='127.0.0.1', port={monitor.port})"


def test_abstract_monitor_and_incomplete_subclass_raise_type_error():
    with pytest.raises(TypeError):
        AbstractMonitor(AstroPix4Readout, port=0)

    class NoDisplay(AbstractMonitor):
        def process_readout(self, readout):
            return 0

    with pytest.raises(TypeError):
        NoDisplay(AstroPix4Readout, port=0)


class ColumnOccupancyMonitor(AbstractMonitor):
    """A user's monitor: hits per column, written with only the two abstract methods."""

    def __init__(self, group="127.0.0.1", port=0):
        super().__init__(AstroPix4Readout, group, port)
        self.occupancy = np.zeros(32, dtype=np.int64)
        import bqplot

        (fig,) = self.create_canvas(figsize=(6, 3))
        x, y = bqplot.LinearScale(), bqplot.LinearScale()
        self.bars = bqplot.Bars(x=np.arange(32), y=np.zeros(32), scales={"x": x, "y": y})
        fig.marks = [self.bars]

    def process_readout(self, readout):
        hits = self.decode_readout(readout)
        for hit in hits:
            self.occupancy[hit.column] += 1
        return hits

    def update_display(self):
        self.bars.y = self.occupancy.astype(np.float64)
        self.display_message(0.0, 1.0, f"{self.num_readouts} readouts")


def test_user_subclass_with_two_methods_works_end_to_end():
    run = AstroPix4Simulator(seed=13, hits_per_readout=2, faults={"split": 0.1}).generate(800)
    mon = ColumnOccupancyMonitor()
    try:
        _run_stream(mon, run.records)
        expected = np.bincount(run.truth["column"], minlength=32)
        assert np.array_equal(mon.occupancy, expected)
        assert mon.num_hits == len(run.truth)
        assert mon.recovered_hits == run.num_split > 0
        assert np.array_equal(mon.bars.y, expected)
        assert "800 readouts" in mon.dashboard.value
    finally:
        mon.close()
    assert monitor_threads() == []


class _FlakyMonitor(ColumnOccupancyMonitor):
    """A user's process_readout that raises on every 10th readout."""

    def process_readout(self, readout):
        if readout.readout_id % 10 == 9:
            raise ZeroDivisionError(f"bad luck with readout {readout.readout_id}")
        return super().process_readout(readout)


def test_an_exception_in_process_readout_is_counted_shown_and_survived(caplog):
    run = AstroPix4Simulator(seed=14).generate(500)
    mon = _FlakyMonitor()
    try:
        with caplog.at_level("ERROR", logger="astropix_nbmonitor.monitor"):
            _run_stream(mon, run.records)
        assert mon.error_count == 50
        assert mon.last_error == "ZeroDivisionError: bad luck with readout 499"
        assert mon.num_readouts == 500  # the failed readouts are counted as processed, without hits
        kept = run.truth[run.truth["readout_id"] % 10 != 9]
        assert np.array_equal(mon.occupancy, np.bincount(kept["column"], minlength=32))
        assert "errors 50: ZeroDivisionError: bad luck with readout 499" in mon.dashboard.value
        assert sum("ZeroDivisionError" in r.getMessage() for r in caplog.records) == 10  # logging is rate-limited
    finally:
        mon.close()
    assert monitor_threads() == []


def test_create_canvas_grid_and_display_message_positions(monitor):
    figs = monitor.create_canvas(2, 3, height_ratios=(2, 1), width_ratios=(1, 1, 2), figsize=(12, 6))
    assert len(figs) == 6 and monitor.canvas.children == tuple(figs)
    assert monitor.canvas.layout.grid_template_rows == "minmax(0, 2fr) minmax(0, 1fr)"
    assert monitor.canvas.layout.grid_template_columns == "minmax(0, 1fr) minmax(0, 1fr) minmax(0, 2fr)"
    assert monitor.canvas.layout.max_width == "1200px" and monitor.canvas.layout.height == "600px"
    with pytest.raises(ValueError, match="expected 2 ratios"):
        monitor.create_canvas(2, 1, height_ratios=(1, 2, 3))
    # matplotlib's subplots options are accepted: ratios in gridspec_kw, the rest ignored.
    figs = monitor.create_canvas(2, 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": (3, 1)}, title="x")
    assert monitor.canvas.layout.grid_template_rows == "minmax(0, 3fr) minmax(0, 1fr)"
    assert [f.title for f in figs] == ["x", "x"]
    monitor.clear_messages()
    monitor.display_message(0.5, 0.25, "a < b", color="red", fontsize=12)
    assert "left:50.0%" in monitor.dashboard.value and "top:75.0%" in monitor.dashboard.value
    assert "a &lt; b" in monitor.dashboard.value and "color:red" in monitor.dashboard.value


def test_close_stops_threads_and_closes_widgets():
    mon = AstroPix4SimpleMonitor(port=0).start()
    mon.close()
    assert not mon.running and monitor_threads() == []
    assert mon.comm is None


def test_replay_of_recorded_records_counts_lost_readouts_and_matches_a_live_run(monitor):
    sim = AstroPix4Simulator(seed=31, hits_per_readout=2, faults={"split": 0.05, "skip_ids": 0.01})
    first, second = sim.generate(1000), sim.generate(1000)
    monitor.replay(first.records)
    monitor.replay(second.records)  # ids continue across calls: a gap at the joint counts too
    truth = np.concatenate([first.truth, second.truth])
    assert monitor.num_readouts == 2000
    assert monitor.lost_readouts == first.lost + second.lost > 0
    assert monitor.num_hits == len(truth)
    assert monitor.recovered_hits == first.num_split + second.num_split
    assert np.array_equal(monitor.hit_map.values(), _expected_maps(truth)[0])
    monitor.reset()
    assert monitor.lost_readouts == 0 and monitor.num_readouts == 0


def test_replay_follows_ids_by_the_listeners_rules(monitor):
    # Two runs of a DAQ one after the other (ids back to 0), and a readout
    # arriving late into a gap: a restart, no loss, as a live stream counts.
    first = AstroPix4Simulator(seed=33).generate(100).records
    second = AstroPix4Simulator(seed=34).generate(50).records
    late_first = [*first[:40], *first[41:60], first[40], *first[60:]]
    monitor.replay(late_first)
    monitor.replay(second)
    assert (monitor.lost_readouts, monitor.daq_restarts, monitor.num_readouts) == (0, 1, 150)
    monitor.replay(AstroPix4Simulator(seed=35).generate(10).records[5:])  # ids 5..9 after 49: a restart
    assert (monitor.lost_readouts, monitor.daq_restarts) == (0, 2)
    monitor.reset()
    assert (monitor.lost_readouts, monitor.daq_restarts) == (0, 0)


def test_replay_counts_malformed_records_apart_and_takes_no_id_from_them(monitor):
    run = AstroPix4Simulator(seed=32).generate(300)
    junk_with_an_id = b"\x00\x00\x00" + (10**6).to_bytes(4, "little") + bytes(12)
    short = run.records[5][:10]
    monitor.replay([*run.records[:100], junk_with_an_id, *run.records[100:200], short, *run.records[200:]])
    assert monitor.lost_readouts == 0
    assert monitor.malformed_packets == 2
    assert monitor.num_readouts == 300
    assert monitor.error_count == 0
    assert np.array_equal(monitor.hit_map.values(), _expected_maps(run.truth)[0])


def _multicast_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_multicast_group_two_views_run_side_by_side_and_a_rerun_replaces_its_own():
    """Several monitors may share a multicast group; re-creating one of a kind replaces it."""
    group, port = "239.255.42.17", _multicast_port()
    simple = AstroPix4SimpleMonitor(group=group, port=port)
    columns = ColumnOccupancyMonitor(group=group, port=port)
    try:
        try:
            simple.start(refresh_interval=0.05)
            columns.start(refresh_interval=0.05)
        except OSError as exc:
            pytest.skip(f"no multicast on this machine: {exc}")
        run = AstroPix4Simulator(seed=17, hits_per_readout=2).generate(500)
        with MulticastSender(group, port, ttl=1) as sender:
            for i, record in enumerate(run.records):
                sender.send_data(record)
                if i % 100 == 99:
                    time.sleep(0.001)
        try:
            _wait_for(lambda: simple.listener_stats().accepted == 500 and columns.listener_stats().accepted == 500,
                      timeout=5, what="both monitors to receive the multicast stream")
        except pytest.fail.Exception:
            pytest.skip("multicast datagrams do not loop back on this machine")
        assert simple.running and columns.running
        rerun = AstroPix4SimpleMonitor(group=group, port=port)  # the cell that made `simple`, run again
        assert not simple.running and columns.running
        rerun.close()
        columns.stop()
        simple.stop()
        assert simple.num_hits == columns.num_hits == len(run.truth)
    finally:
        simple.close()
        columns.close()
    assert monitor_threads() == []


def test_closed_monitor_leaves_no_open_widget_even_after_a_second_canvas():
    from ipywidgets.widgets.widget import _instances

    before = set(_instances)
    mon = AstroPix4SimpleMonitor(port=0)
    first = list(mon.figures)
    mon.create_canvas(nrows=1, ncols=2, figsize=(8, 3))  # replaces the first canvas
    assert all(fig.comm is None for fig in first), "the replaced figures were left open"
    assert (mon.canvas.layout.grid_template_columns, mon.canvas.layout.grid_template_rows) == ("minmax(0, 1fr) minmax(0, 1fr)", "minmax(0, 1fr)")
    assert mon.canvas.layout.max_width == "800px"
    mon.close()
    assert set(_instances) - before == set()


class _SlowBatchMonitor(ColumnOccupancyMonitor):
    """A heavy process_batch: at least 0.2 ms per readout; records each batch size."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batch_sizes = []

    def process_batch(self, records):
        self.batch_sizes.append(len(records))
        time.sleep(2e-4 * len(records))
        self.count_processed(len(records), 0)


def test_batches_shrink_for_heavy_processing_so_refreshes_stay_on_time():
    mon = _SlowBatchMonitor()
    try:
        mon.engine.listener.open()  # bind first, so that the records wait in the socket
        records = AstroPix4Simulator(seed=15).generate(12_000).records
        _send(mon.port, records)
        mon.start(refresh_interval=0.05)
        _wait_for(lambda: mon.num_readouts == 12_000, what="every readout")
        mon.stop()
    finally:
        mon.close()
    sizes = mon.batch_sizes
    assert sum(sizes) == 12_000
    # The first batch holds at most the starting size; each later one is at
    # most 4 times the one before, and sized to take BATCH_SECONDS (50 ms): at
    # >= 0.2 ms per readout, at most 250 readouts.
    engine = MonitorEngine
    assert sizes[0] <= engine.FIRST_BATCH
    assert all(b <= 4 * a for a, b in zip(sizes, sizes[1:]))
    assert len(sizes) > 10
    assert max(sizes) <= engine.BATCH_SECONDS / 2e-4 + 1


def test_listener_options_reach_the_listener():
    mon = AstroPix4SimpleMonitor(port=0, buffer_size=7, buffer_bytes=4096, rcvbuf=None, interface="127.0.0.1")
    try:
        listener = mon.engine.listener
        assert (listener.buffer_size, listener.buffer_bytes, listener.rcvbuf_request, listener.interface) == (
            7,
            4096,
            None,
            "127.0.0.1",
        )
        mon.start(refresh_interval=0.05)
        _send(mon.port, AstroPix4Simulator(seed=16).generate(20).records[:7])  # fits both bounds
        _wait_for(lambda: mon.num_readouts == 7, what="7 readouts")
    finally:
        mon.close()
    with pytest.raises(ValueError, match="buffer_bytes"):
        AstroPix4SimpleMonitor(port=0, buffer_bytes=0)


# --------------------------------------------------------------------------
# Issue 10: one source for every figure, and the defects a new user hit.


def test_after_a_replay_with_a_restart_trait_dashboard_and_status_agree(monitor):
    """Once, a replayed DAQ restart showed 1 in the traitlet and 0 on the dashboard."""
    sim = AstroPix4Simulator(seed=41)
    records = sim.generate(300).records + AstroPix4Simulator(seed=42, start_id=0).generate(100).records
    monitor.replay(records)
    assert monitor.daq_restarts == monitor.status()["daq_restarts"] == 1
    assert "DAQ restarts 1," in monitor.dashboard.value
    assert monitor.num_readouts == monitor.status()["readouts"] == 400


def test_a_user_subclass_shows_the_standard_status_lines():
    mon = ColumnOccupancyMonitor()
    try:
        mon.replay(AstroPix4Simulator(seed=3).generate(120).records + [b"\xfe\xdc\xba\x00"])
        shown = mon.dashboard.value
        # Its own message, and above it the standard lines of every monitor.
        assert "120 readouts" in shown
        assert 'class="apx-num-readouts">120<' in shown
        assert 'class="apx-malformed"' in shown and "lost " in shown and "decoding flags:" in shown
        assert shown.index("apx-status") < shown.index("apx-messages")
    finally:
        mon.close()


def test_empty_and_oversize_readouts_are_counted_and_shown(monitor):
    records = AstroPix4Simulator(seed=5).generate(50).records
    empty = [make_record(b"\xbc\xbc\xff", 50), make_record(b"", 51)]
    huge = make_record(bytes([0xE0, 0x50, 0x42, 0x03, 0x06, 0x20, 0xD7, 0x01, 0xBC]) * 800, 52)  # 7,200 bytes
    monitor.replay(records + empty + [huge])
    assert monitor.empty_readouts == 2 and monitor.oversize_records == 1
    assert monitor.num_readouts == 52  # the oversize record is kept out
    assert monitor.hit_map.sum() == 50  # one hit per simulated readout; none of the 800 in the huge one
    shown = monitor.dashboard.value
    assert re.search(r'empty readouts <span class="apx-empty">2<', shown)
    assert re.search(r'oversize <span class="apx-oversize"><b[^>]*>1<', shown)


class _SlowReadoutMonitor(ColumnOccupancyMonitor):
    """A user's process_readout taking 10 ms a readout."""

    def process_readout(self, readout):
        time.sleep(0.01)
        self.threads = getattr(self, "threads", set()) | {threading.current_thread().name}
        return super().process_readout(readout)


def test_stop_is_immediate_with_a_slow_process_readout_and_refreshes_stay_on_time():
    """Once, 26,768 waiting readouts at 10 ms each blocked the kernel for 275 s on Stop."""
    mon = _SlowReadoutMonitor()
    refreshes = []
    mon.observe(lambda change: refreshes.append(change["new"]), names="num_readouts")
    try:
        mon.start(refresh_interval=0.1)
        records = AstroPix4Simulator(seed=6).generate(2000).records  # 20 s of work
        _send(mon.port, records)
        _wait_for(lambda: mon.listener_stats().accepted == 2000, what="every datagram received")
        _wait_for(lambda: len(refreshes) >= 5, what="refreshes while the backlog is processed")
        began = time.monotonic()
        mon.stop_button.click()
        took = time.monotonic() - began
        assert not mon.running
        assert mon.num_readouts + mon.dropped_readouts == 2000  # processed, or dropped and counted
        assert mon.dropped_readouts > 0
        assert mon.threads == {"astropix-monitor-processing"}  # never on the kernel's thread
        assert took < 10.0, f"Stop took {took:.1f} s"  # the whole backlog would take 20 s
    finally:
        mon.close()


def test_per_readout_path_fills_exactly_what_the_batch_path_fills():
    """process_readout per readout (hits filled once per batch, issue 14) and the batch path: every hit,
    in hit_map, tot_hist, the time windows and the per-pixel spectra; a subclass's override is called."""

    class Overriding(AstroPix4SimpleMonitor):
        calls = 0

        def process_readout(self, readout):
            type(self).calls += 1
            return super().process_readout(readout)

    run = AstroPix4Simulator(seed=23, hits_per_readout=2, chip_ids=(0, 4),
                             faults={"split": 0.1, "out_of_matrix": 0.03, "garbled": 0.02}).generate(1200)
    fast, slow = AstroPix4SimpleMonitor(port=0), Overriding(port=0)
    try:
        for mon in (fast, slow):
            mon.engine.clock = lambda: 5000.25
        for i in range(0, 1200, 100):
            fast.process_batch(run.records[i : i + 100])
            slow.process_batch(run.records[i : i + 100])  # AstroPix4SimpleMonitor.process_batch sees the override
        assert Overriding.calls == 1200
        assert fast.engine.num_hits == slow.engine.num_hits > 0
        assert fast.engine.num_readouts == slow.engine.num_readouts == 1200
        for chip in (None, 0, 4):
            assert np.array_equal(fast.engine.hit_map(chip).values(), slow.engine.hit_map(chip).values())
            assert np.array_equal(fast.engine.tot_hist(chip).values(flow=True), slow.engine.tot_hist(chip).values(flow=True))
            assert np.array_equal(fast.engine.windows.counts(60.0, 5000.25), slow.engine.windows.counts(60.0, 5000.25))
        for column, row in ((0, 0), (5, 17), (15, 34)):
            for chip in (0, 4):
                assert np.array_equal(fast.pixel_tot_hist(column, row, chip).values(flow=True),
                                      slow.pixel_tot_hist(column, row, chip).values(flow=True))
        assert fast.out_of_matrix_hits == slow.out_of_matrix_hits > 0
    finally:
        fast.close()
        slow.close()


def test_an_idle_running_monitor_refreshes_its_display_at_most_once_a_second():
    """No datagram: the periodic refreshes (every 0.1 s here) update the display once a second; data or a control at once."""
    mon = AstroPix4SimpleMonitor(group="127.0.0.1", port=0)
    shown = []
    original = mon.update_display
    mon.update_display = lambda: (shown.append(time.monotonic()), original())[1]
    try:
        mon.start(refresh_interval=0.1)
        _wait_for(lambda: len(shown) >= 2, what="two display updates of an idle monitor")
        shown.clear()
        began = time.monotonic()
        time.sleep(3.0)
        span = time.monotonic() - began
        # Thirty periodic refreshes in 3 s; the idle ones come at most once a second (a slow
        # machine makes fewer, never more).
        assert 1 <= len(shown) <= span / mon.IDLE_REFRESH_S + 1, shown
        # A datagram: the next refresh shows it (not held back as idle).
        _send(mon.port, AstroPix4Simulator(seed=21, hits_per_readout=3).generate(1).records)
        _wait_for(lambda: mon.num_hits > 0 and int(np.asarray(mon.heatmap.color).sum()) == mon.num_hits, what="the hits to be drawn")
        # A control change on a running monitor: redrawn at the next refresh, whatever the data.
        shown.clear()
        mon.scale_toggle.value = "log"
        _wait_for(lambda: len(shown) >= 1 and mon.heatmap.color.dtype == np.float32, what="the log colours to be drawn")
    finally:
        mon.close()
    assert monitor_threads() == []


def test_a_running_panels_title_changes_its_numbers_at_most_every_title_interval():
    """A bqplot Figure lays itself out again at each title change: numbers wait, words and a stopped monitor do not."""
    import types

    from astropix_nbmonitor.monitor.panels import Panel

    clock = [1000.0]
    engine = types.SimpleNamespace(running=True, clock=lambda: clock[0])

    class Titled(Panel):
        title_interval = 3.0

        def build(self):
            pass

    figure = bqplot.Figure()
    panel = Titled(figure, types.SimpleNamespace(engine=engine))
    try:
        assert panel.set_title("TOT (overflow > 500 us: 1)") and figure.title == "TOT (overflow > 500 us: 1)"
        clock[0] += 1.0
        assert not panel.set_title("TOT (overflow > 500 us: 2)")  # numbers only, 1 s later: held back
        assert figure.title == "TOT (overflow > 500 us: 1)"
        clock[0] += 2.5
        assert panel.set_title("TOT (overflow > 500 us: 3)")  # 3.5 s since the last title
        clock[0] += 0.1
        assert panel.set_title("TOT (overflow > 500 us: 3) (last 10 s)")  # other words: at once
        clock[0] += 0.1
        assert not panel.set_title("TOT (overflow > 500 us: 4) (last 10 s)")
        engine.running = False  # a stopped monitor's picture is complete
        assert panel.set_title("TOT (overflow > 500 us: 4) (last 10 s)") and figure.title.endswith("4) (last 10 s)")
        assert not panel.set_title(figure.title)  # the same title: nothing sent
    finally:
        figure.close()


def test_a_running_tot_spectrum_waits_for_a_visible_change_and_is_exact_when_the_data_stop():
    """While data come, a change under a pixel's worth is not sent (at most max_stale s); stopped data: exact at once."""
    from astropix_nbmonitor.monitor import TotPanel

    mon = AstroPix4SimpleMonitor(group="127.0.0.1", port=0)
    try:
        panel = mon.panel(TotPanel)
        engine = mon.engine
        clock = [2_000_000_000.0]
        engine.clock = lambda: clock[0]
        engine._running = True  # the panel's view of a running monitor (no threads: driven by hand)
        sim = AstroPix4Simulator(seed=31, hits_per_readout=2)
        mon.process_batch(sim.generate(5000).records)
        panel.update(mon.view_state())
        drawn = panel.drawn_counts().copy()
        assert np.array_equal(drawn, mon.tot_hist.values())
        # One more readout a second later: no bin moves by 0.4% of the scale: nothing sent.
        clock[0] += 1.1
        mon.process_batch(sim.generate(1).records)
        panel.update(mon.view_state())
        assert np.array_equal(panel.drawn_counts(), drawn) and not np.array_equal(drawn, mon.tot_hist.values())
        # The data stopped (the engine's mark did not move since): the exact spectrum at once.
        clock[0] += 1.1
        panel.update(mon.view_state())
        assert np.array_equal(panel.drawn_counts(), mon.tot_hist.values())
        # A big change while data come: drawn at the next due redraw.
        clock[0] += 1.1
        mon.process_batch(sim.generate(5000).records)
        panel.update(mon.view_state())
        assert np.array_equal(panel.drawn_counts(), mon.tot_hist.values())
        # Small changes while data come: at the latest max_stale seconds after the last redraw.
        drawn = panel.drawn_counts().copy()
        for _ in range(int(panel.max_stale / 1.1) + 2):
            clock[0] += 1.1
            mon.process_batch(sim.generate(1).records)
            panel.update(mon.view_state())
        assert not np.array_equal(panel.drawn_counts(), drawn)
    finally:
        engine._running = False
        mon.close()
