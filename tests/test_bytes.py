"""What a refresh sends to the page: bounded, not growing with the run, nothing when nothing changed.

Every comm message the monitor's widgets send is counted (its JSON and its
binary buffers) by a comm that records instead of sending. The monitor is
driven without threads, refresh by refresh (``engine.refresh(0.5,
paced=True)``), on a fake clock, so that 1,000 refreshes are 500 s of a run:
the rate history (180 s) fills up on the way.

The hit map is budgeted apart (its panel's messages are counted separately):
issue 14 leaves 2.5 kB of the 5 kB per refresh to everything else (TOT
spectrum, rates, pixel panel, dashboard, traitlets).
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator

import comm
import ipywidgets as widgets
import numpy as np
import pytest
from comm.base_comm import BaseComm

from astropix_nbmonitor import hist
from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor, HitMapPanel, RatePanel, TotPanel
from astropix_nbmonitor.monitor.panels import nice_ceiling, set_if_changed, step_y
from astropix_nbmonitor.monitor.tree import walk_widgets
from astropix_nbmonitor.sim import AstroPix4Simulator

#: What everything but the hit map may send in one refresh (bytes).
BUDGET = 2500


class _Recorder:
    """The comm messages sent, as (comm_id, state keys (binary ones too), bytes)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple[str, ...], int]] = []

    def take(self) -> list[tuple[str, tuple[str, ...], int]]:
        out, self.messages = self.messages, []
        return out


@pytest.fixture
def recorder(monkeypatch) -> Iterator[_Recorder]:
    rec = _Recorder()

    class CountingComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):  # noqa: ANN001
            if msg_type != "comm_msg":
                return
            size = len(json.dumps(data, default=str)) + sum(memoryview(b).nbytes for b in buffers or ())
            data = data or {}
            # State keys, binary ones too (ipywidgets moves them out of "state" into "buffer_paths").
            names = set(data.get("state", {})) | {path[0] for path in data.get("buffer_paths", ()) if path}
            rec.messages.append((self.comm_id, tuple(sorted(names)), size))

    monkeypatch.setattr(comm, "create_comm", CountingComm)
    yield rec


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def driven(recorder, monkeypatch):
    """A monitor on a fake clock (engine, windows, trend and rate history), refreshed by hand; closed after."""
    clock = _Clock()
    monkeypatch.setattr(hist, "time", types.SimpleNamespace(time=clock))
    mon = AstroPix4SimpleMonitor(port=0)
    mon.engine.clock = clock
    yield mon, clock, recorder
    mon.close()


def _widget_ids(*roots: widgets.Widget) -> set[str]:
    """Comm ids of ``roots`` and every widget reachable from their traits."""
    return {w.comm.comm_id for root in roots for w in walk_widgets(root) if w.comm is not None}


def _hit_map_ids(mon: AstroPix4SimpleMonitor) -> set[str]:
    panel = mon.panel(HitMapPanel)
    return _widget_ids(panel.figure, *panel.own_widgets(), *panel.controls)


def _refresh(mon, clock, recorder, records=()) -> tuple[int, int, list]:
    """One refresh 0.5 s after the last: (bytes of the hit map, bytes of everything else, the other messages)."""
    clock.now += 0.5
    if records:
        mon.process_batch(list(records))
    recorder.take()
    mon.engine.refresh(0.5, paced=True)
    hit_map = _hit_map_ids(mon)
    sent = recorder.take()
    ours = [m for m in sent if m[0] not in hit_map]
    return sum(m[2] for m in sent if m[0] in hit_map), sum(m[2] for m in ours), ours


def test_a_refresh_sends_a_bounded_amount_that_does_not_grow_over_1000_refreshes(driven):
    mon, clock, recorder = driven
    sim = AstroPix4Simulator(seed=11, hits_per_readout=2.0, faults={"out_of_matrix": 0.01})
    mon.refresh()
    sizes, hit_map_sizes = [], []
    for _ in range(1000):
        hm, ours, _ = _refresh(mon, clock, recorder, sim.generate(200).records)
        sizes.append(ours)
        hit_map_sizes.append(hm)
    sizes = np.array(sizes)
    # Data arrived at every refresh: the TOT spectrum and the rates were sent every time.
    assert sizes.min() > 0
    assert sizes.max() <= BUDGET, f"largest refresh {sizes.max()} B (hit map apart)"
    # Not growing: once the rate history is full (180 s = 360 refreshes), the last refreshes
    # send what those of the middle of the run sent (numbers gain a digit now and then).
    assert sizes[-100:].mean() <= sizes[400:500].mean() + 40, (sizes[400:500].mean(), sizes[-100:].mean())
    print(f"\nper refresh, hit map apart: median {np.median(sizes):.0f} B, max {sizes.max()} B; "
          f"hit map: median {np.median(hit_map_sizes):.0f} B")


def test_a_refresh_without_new_data_sends_only_what_changed(driven):
    mon, clock, recorder = driven
    sim = AstroPix4Simulator(seed=12, hits_per_readout=2.0)
    mon.refresh()
    for _ in range(20):
        _refresh(mon, clock, recorder, sim.generate(200).records)
    tot = mon.panel(TotPanel)
    tot_ids = _widget_ids(tot.figure)
    # The first refresh without data: the rates drop (the rate chart and the dashboard's rate
    # line change), but nothing of the TOT spectrum is sent again.
    _, ours, sent = _refresh(mon, clock, recorder)
    assert ours > 0
    assert not [m for m in sent if m[0] in tot_ids], sent
    # Once the rate history holds only zeros (180 s later), a refresh without data sends nothing
    # but the liveness beat (the page's proof that the kernel is alive, under 100 B).
    for _ in range(370):
        _refresh(mon, clock, recorder)
    hm, ours, sent = _refresh(mon, clock, recorder)
    assert hm == 0 and ours < 100, sent
    assert [(m[0], m[1]) for m in sent] == [(mon.liveness.comm.comm_id, ("beat",))], sent
    # And new data is sent again.
    _, ours, sent = _refresh(mon, clock, recorder, sim.generate(200).records)
    assert [m for m in sent if m[0] in tot_ids and "y" in m[1]]


def test_the_dashboard_sends_only_the_lines_that_changed(driven):
    mon, clock, recorder = driven
    sim = AstroPix4Simulator(seed=13, hits_per_readout=2.0)
    mon.refresh()
    _refresh(mon, clock, recorder, sim.generate(200).records)
    dashboard = mon.dashboard
    parts = {p.comm.comm_id: p for p in dashboard.children}
    assert len(parts) >= 5  # one widget per block of lines
    _, _, sent = _refresh(mon, clock, recorder, sim.generate(200).records)
    changed = [parts[m[0]] for m in sent if m[0] in parts]
    shown = lambda p: p.status if p is mon.liveness else p.value  # noqa: E731 - the liveness element shows the live block
    # The counts line changed (it shares its block with the address and uptime lines, which change
    # at every refresh of a running monitor); the decoding flags and the shift's lines did not.
    assert [p for p in changed if "apx-num-readouts" in shown(p)] == changed[:1] == [mon.liveness]
    assert not any("decoding flags" in shown(p) or "view: whole run" in shown(p) for p in changed)
    # That block travels with the liveness beat: one message for both.
    live = [m for m in sent if m[0] == mon.liveness.comm.comm_id]
    assert len(live) == 1 and {"status", "beat"} <= set(live[0][1])
    # The whole HTML is still the dashboard's value, in order.
    whole = dashboard.value
    assert 'class="apx-num-readouts">400<' in whole
    assert "".join(shown(p) for p in dashboard.children) == "".join(dashboard.blocks(whole))


def test_the_rate_chart_keeps_a_bounded_number_of_points_and_fixed_times(driven):
    mon, clock, recorder = driven
    sim = AstroPix4Simulator(seed=14, hits_per_readout=1.0)
    mon.refresh()
    panel = mon.panel(RatePanel)
    for _ in range(400):  # 200 s: more than the 180 s history
        _refresh(mon, clock, recorder, sim.generate(100).records)
    x = np.array(panel.lines.x)
    assert len(x) == RatePanel.POINTS and panel.lines.x.dtype == np.float32
    assert panel.lines.y.shape == (2, RatePanel.POINTS) and panel.lines.y.dtype == np.float32
    # The readout rate: 100 readouts every 0.5 s.
    assert np.allclose(panel.lines.y[0], 200.0)
    _, _, sent = _refresh(mon, clock, recorder, sim.generate(100).records)
    lines_id = panel.lines.comm.comm_id
    keys = {k for m in sent if m[0] == lines_id for k in m[1]}
    assert "x" not in keys  # the bucket times stay; only the rates move (and here not even they)
    # The whole run: at most RUN_POINTS points, the run's start included.
    panel.span_toggle.value = "whole run"
    mon.update_display()
    assert 0 < len(panel.lines.x) <= RatePanel.RUN_POINTS
    assert float(panel.lines.x[0]) < -190


def test_helpers_skip_equal_values_and_round_scales():
    assert [nice_ceiling(v) for v in (0, 1, 1.2, 7, 101, 2500)] == [1, 1, 1.5, 8, 150, 3000]
    line = widgets.FloatText(value=1.0)
    assert not set_if_changed(line, "value", 1.0)
    assert set_if_changed(line, "value", 2.0) and line.value == 2.0
    assert np.array_equal(step_y(np.array([1.0, 2.0, 3.0])), [1, 2, 3, 3]) and step_y(np.zeros(2)).dtype == np.float32
    line.close()



def test_a_running_monitor_redraws_the_spectrum_once_a_second_and_the_rates_once_a_bucket(driven, monkeypatch):
    mon, clock, recorder = driven
    from astropix_nbmonitor.engine import MonitorEngine

    sim = AstroPix4Simulator(seed=15, hits_per_readout=2.0)
    mon.refresh()
    tot, rates = mon.panel(TotPanel), mon.panel(RatePanel)
    for _ in range(400):  # a full rate history first (not running: every refresh draws)
        _refresh(mon, clock, recorder, sim.generate(100).records)
    monkeypatch.setattr(MonitorEngine, "running", property(lambda self: True))
    tot_ids, rate_ids = _widget_ids(tot.figure), _widget_ids(rates.figure)
    drawn_tot, drawn_rates = [], []
    for _ in range(12):  # 6 s at 0.5 s a refresh, data at every one
        _, _, sent = _refresh(mon, clock, recorder, sim.generate(100).records)
        drawn_tot.append(any(m[0] in tot_ids for m in sent))
        drawn_rates.append(any(m[0] in rate_ids for m in sent))
    assert sum(drawn_tot) == 6 and drawn_tot[::2] != drawn_tot[1::2]  # every other refresh: once a second
    assert sum(drawn_rates) == 2  # 6 s of 3 s buckets
    # A control change redraws at the next refresh, due or not.
    tot.invalidate()
    rates.invalidate()
    _, _, sent = _refresh(mon, clock, recorder, sim.generate(100).records)
    assert any(m[0] in tot_ids for m in sent) and any(m[0] in rate_ids for m in sent)
    # What the page shows is the spectrum of the last redraw: at most a second behind.
    assert tot.drawn_counts().sum() <= mon.tot_hist.values().sum()


def test_a_chip_maps_cells_and_title_line_go_in_one_message_and_never_touch_the_figures_title(recorder, monkeypatch):
    """A layout's chip map: its hit rate is the colour canvas's caption, sent with its cells."""
    clock = _Clock()
    monkeypatch.setattr(hist, "time", types.SimpleNamespace(time=clock))
    mon = AstroPix4SimpleMonitor(port=0, layout=[[0, 1]])
    mon.engine.clock = clock
    try:
        sim = AstroPix4Simulator(seed=13, hits_per_readout=2.0, chip_ids=(0, 1))
        mon.refresh()
        titles, captions, together, figure_titles = [], 0, 0, 0
        for _ in range(12):
            clock.now += 0.5
            mon.process_batch(list(sim.generate(300).records))
            recorder.take()
            mon.engine.refresh(0.5, paced=True)
            sent = recorder.take()
            for chip, panel in mon.chip_maps.items():
                mine = [m for m in sent if m[0] == panel.heatmap.comm.comm_id]
                assert len(mine) <= 1, (chip, mine)  # cells and caption together
                captions += sum("caption" in m[1] for m in mine)
                together += sum("caption" in m[1] and "pixels" in m[1] for m in mine)
                figure_titles += sum("title" in m[1] for m in sent if m[0] == panel.figure.comm.comm_id)
                titles.append(panel.shown_title)
        assert figure_titles == 0
        # The rates changed at every refresh (a stopped monitor's titles are never held back): each
        # caption went in the message of its cells.
        assert captions == 2 * 12, captions
        assert together == captions, (together, captions)
        assert all(t.startswith("chip ") and "hits/s" in t for t in titles[-2:]), titles[-2:]
    finally:
        mon.close()
