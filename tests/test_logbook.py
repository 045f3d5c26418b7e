"""The shift's record on a monitor widget (issue 13): snapshot, save/load, reference run, play.

The headless pieces have their own tests (test_snapshot, test_histio,
test_compare, test_player, test_legacy); here they are driven through the
monitor as a physicist would: ``mon.snapshot()``, ``mon.save(path)`` and
``astropix_nbmonitor.load``, ``mon.set_reference`` with the TOT overlay, the
badge and the ratio map, ``mon.play(path, speed)`` with its toolbar.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import wait_for

import astropix_nbmonitor
from astropix_nbmonitor.fileio import apx_open
from astropix_nbmonitor.monitor import AbstractMonitor, AstroPix4SimpleMonitor, HitMapPanel, TotPanel
from astropix_nbmonitor.sim import AstroPix4Simulator


@pytest.fixture
def monitor():
    mon = AstroPix4SimpleMonitor(port=0)
    yield mon
    mon.close()
    assert [t.name for t in threading.enumerate() if t.name == "astropix-player"] == []


def _write_run(path, seed=1, n=2000, rate_hz=2000.0, **sim):
    """A simulated run written as an .apx file (timestamps paced at ``rate_hz``)."""
    run = AstroPix4Simulator(seed=seed, rate_hz=rate_hz, **sim).generate(n)
    with apx_open(path, "w", header={"run": seed}) as writer:
        for record in run.records:
            writer.write_record(record)
    return run


def test_snapshot_shows_a_picture_in_the_cell_and_returns_it(monitor, capsys):
    pytest.importorskip("matplotlib")
    monitor.replay(AstroPix4Simulator(seed=2).generate(300).records)
    shot = monitor.snapshot()
    assert shot.png.startswith(b"\x89PNG\r\n\x1a\n") and len(shot.png) > 10_000
    assert "300" in shot.text and "readouts processed" in shot.text
    assert "shown above" in repr(shot)  # returned without showing it twice


@pytest.mark.parametrize("suffix", [".json", ".zip", ".h5", ".root"])
def test_save_then_load_gives_the_same_histograms(monitor, tmp_path, suffix):
    if suffix == ".h5":
        pytest.importorskip("h5py")
    if suffix == ".root":
        pytest.importorskip("uproot")
    monitor.replay(AstroPix4Simulator(seed=3, hits_per_readout=2.0).generate(500).records)
    path = monitor.save(tmp_path / f"run{suffix}", shift="night")
    saved = astropix_nbmonitor.load(path)
    assert np.array_equal(saved.histograms["hit_map"].values(), monitor.hit_map.values())
    assert np.array_equal(saved.histograms["tot_hist"].values(flow=True), monitor.tot_hist.values(flow=True))
    assert saved.status["readouts"] == 500
    assert saved.metadata["shift"] == "night" and saved.metadata["address"]["port"] == monitor.port


def test_a_reference_from_a_file_is_overlaid_with_its_compatibility(monitor, tmp_path):
    sim = AstroPix4Simulator(seed=4, hits_per_readout=2.0)
    first, second = sim.generate(3000), sim.generate(3000)
    reference = AstroPix4SimpleMonitor(port=0)
    try:
        reference.replay(first.records)
        ref_path = reference.save(tmp_path / "reference.json")
    finally:
        reference.close()
    monitor.replay(second.records)
    monitor.set_reference(ref_path)
    compat = monitor.compatibility
    assert compat is not None and compat.level == "ok", compat.text()
    tot = monitor.panel(TotPanel)
    assert list(monitor.figures[1].marks) == [tot.bars, tot.reference_line]
    assert monitor.figures[1].title.startswith("TOT vs reference: chi2/ndf")
    assert np.isclose(tot.reference_line.y[:-1].sum(), monitor.tot_hist.values().sum() * 3000 * 2 / (3000 * 2), rtol=0.05)
    assert 'class="apx-reference" data-level="ok"' in monitor.dashboard.value
    # The hit map over the reference: about 1 everywhere the beam is.
    hitmap = monitor.panel(HitMapPanel)
    hitmap.view_toggle.value = "over reference"
    ratio = np.asarray(monitor.heatmap.color)
    assert np.nanmedian(ratio) == pytest.approx(1.0, abs=0.3)
    assert monitor.figures[0].title == "Hit map over the reference"
    monitor.clear_reference()
    assert list(monitor.figures[1].marks) == [tot.bars] and "apx-reference" not in monitor.dashboard.value


def test_a_run_with_a_shifted_tot_peak_turns_the_badge_red(monitor):
    reference = AstroPix4SimpleMonitor(port=0)
    try:
        reference.replay(AstroPix4Simulator(seed=5).generate(3000).records)
        monitor.replay(AstroPix4Simulator(seed=6, tot_mpv_us=110.0).generate(3000).records)
        monitor.set_reference(reference)  # another monitor: its current state is pinned
    finally:
        reference.close()
    assert monitor.compatibility.level == "red"
    assert 'data-level="red"' in monitor.dashboard.value


def test_the_pin_button_holds_the_run_against_what_it_shows_now(monitor):
    monitor.replay(AstroPix4Simulator(seed=7).generate(1000).records)
    monitor.pin_button.click()
    assert monitor.reference is not None
    assert monitor.compatibility.level == "ok"  # the same run


def test_play_at_10x_gives_the_counters_of_replay_and_its_toolbar_follows(tmp_path):
    run = _write_run(tmp_path / "yesterday.apx", seed=8, n=3000, rate_hz=1500.0, faults={"skip_ids": 0.01})
    span = 3000 / 1500.0
    played = AstroPix4SimpleMonitor(port=0)
    replayed = AstroPix4SimpleMonitor(port=0)
    try:
        began = time.monotonic()
        player = played.play(tmp_path / "yesterday.apx", speed=10.0)
        assert played.player_box.layout.display == "" and played.play_button.value  # shown while playing
        wait_for(lambda: player.finished, timeout=30, what="the end of the file")
        took = time.monotonic() - began
        replayed.replay(run.records)
        for name in ("readouts", "hits", "lost", "recovered_hits", "malformed", "daq_restarts"):
            assert played.status()[name] == replayed.status()[name], name
        assert np.array_equal(played.hit_map.values(), replayed.hit_map.values())
        assert took < span / 2, f"10x took {took:.2f} s for a {span:.1f} s run"  # a limit, not a measure
        # The rate chart shows the run's rates, in the run's own time (as live), not 10x them.
        _, readout_rates, _ = played.engine.state().rates
        assert len(readout_rates) >= 1
        assert np.median(readout_rates) == pytest.approx(1500.0, rel=0.5)
        played.refresh()
        assert played.position_slider.value == 3000 and played.play_button.description == "Done"
        saved = played.save(tmp_path / "played.json")
        assert astropix_nbmonitor.load(saved).metadata["apx_header"]["run"] == 8
    finally:
        played.close()
        replayed.close()


def test_pause_resume_and_seek_from_the_monitor_and_the_toolbar(monitor, tmp_path):
    _write_run(tmp_path / "slow.apx", seed=9, n=2000, rate_hz=200.0)  # 10 s of run time
    player = monitor.play(tmp_path / "slow.apx", speed=1.0)
    wait_for(lambda: player.position > 0, what="some readouts played")
    monitor.play_button.value = False  # the toolbar's pause
    wait_for(lambda: not player.playing, what="the pause")
    held = player.position
    time.sleep(0.3)  # a running player would move on meanwhile
    assert player.position == held
    monitor.seek(1500)
    assert player.position == 1500
    monitor.speed_choice.value = 1000.0
    monitor.resume()
    wait_for(lambda: player.finished, what="the end after the seek")
    assert monitor.num_readouts < 2000  # readouts skipped by the seek were never played


class _DuckReadout:
    """A readout class of another package: only from_bytes, decode, readout_id (and extra_bytes, decoding_status)."""

    from astropix_nbmonitor.fmt import AstroPix4Readout as _Real

    def __init__(self, real):
        self._real = real
        self.readout_id = real.readout_id

    @classmethod
    def from_bytes(cls, record):
        return cls(cls._Real.from_bytes(record))

    def decode(self, extra_bytes=None):
        return self._real.decode(extra_bytes)

    def extra_bytes(self):
        return self._real.extra_bytes()

    def decoding_status(self):
        return self._real.decoding_status()


class _DuckMonitor(AbstractMonitor):
    def __init__(self):
        super().__init__(_DuckReadout, port=0)
        self.hits = 0

    def process_readout(self, readout):
        hits = self.decode_readout(readout)
        self.hits += len(hits)
        return hits

    def update_display(self):
        pass


def test_a_monitor_takes_a_duck_typed_readout_class():
    run = AstroPix4Simulator(seed=10, faults={"split": 0.1}).generate(400)
    mon = _DuckMonitor()
    try:
        mon.replay(run.records)
        assert mon.num_readouts == 400 and mon.hits == mon.num_hits == len(run.truth)
        assert mon.recovered_hits == run.num_split
    finally:
        mon.close()
