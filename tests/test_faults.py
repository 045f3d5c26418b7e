"""Faults of a live stream, through a running monitor on loopback (issue 6, point 2).

* The DAQ restarts mid-run: readout ids go back (to 0, or far back). Exactly
  one restart is counted and shown, nothing is counted lost, and the monitor
  decodes each run on its own: a hit cut at the end of the old run is never
  completed with bytes of the new run.
* The DAQ pauses for 10 s: the dashboard warns while no data arrive, and the
  warning goes at the first refresh after data return; counting goes on exactly.
* 10 % of the readouts are garbled (well-framed records with damaged board
  bytes): they are counted by decoding flag, never as malformed, and every
  good hit is still shown.

Every reference here is the offline path of ``conftest.decode_chained`` (one
readout at a time, chaining extra bytes only between consecutive ids) and the
simulator's ground truth; the monitor is only ever compared with them.
"""

from __future__ import annotations

import re
import threading
import time

import boost_histogram as bh
import numpy as np
import pytest
from conftest import assert_hits_equal, decode_chained, flag_counts, make_record, offline_tot_counts
from conftest import send_paced as _send
from conftest import wait_for as _wait_for
from astropix_nbmonitor.monitor import board, registry
from astropix_nbmonitor.fmt import FLAG_NAMES, HIT_DTYPE, AstroPix4Readout, BatchDecoder, DecodingFlag
from astropix_nbmonitor.hist import TOT_EDGES
from astropix_nbmonitor.listener import RESTART_BACKWARD_JUMP, RESTART_ID_LIMIT
from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.sock import MulticastSender

# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------






def _expected_hit_map(hits: np.ndarray) -> np.ndarray:
    """Hits per (column, row) inside the 16 x 35 matrix, all chips."""
    inside = hits[(hits["column"] < 16) & (hits["row"] < 35)]
    out = np.zeros((16, 35), dtype=np.int64)
    np.add.at(out, (inside["column"].astype(int), inside["row"].astype(int)), 1)
    return out


def _expected_tot(hits: np.ndarray) -> np.ndarray:
    """The TOT spectrum of the hits with under/overflow, binned by the offline rule independently of the monitor."""
    return offline_tot_counts(hits["tot_us"], TOT_EDGES)


class _RecordingDecoder(BatchDecoder):
    """The monitor's own batch decoder, keeping a copy of every hit it hands out."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[np.ndarray] = []

    def decode(self, records):
        hits = super().decode(records)
        self.parts.append(hits.copy())
        return hits

    def hits(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=HIT_DTYPE)


def _recording_monitor() -> tuple[AstroPix4SimpleMonitor, _RecordingDecoder]:
    mon = AstroPix4SimpleMonitor(port=0)
    recorder = _RecordingDecoder()
    mon.engine.decoder = recorder  # white box: see the exact hits the monitor decoded and filled
    return mon, recorder


def _renumber(records: list[bytes], first_id: int) -> list[bytes]:
    """The same readouts (data and timestamps) with ids first_id, first_id + 1, ..."""
    out = []
    for i, record in enumerate(records):
        readout = AstroPix4Readout.from_bytes(record)
        out.append(make_record(record[19:], first_id + i, readout.timestamp))
    return out


def _stream_with_split_at(n_before: int, n_after: int, seed: int = 3) -> tuple[list[bytes], list[bytes]]:
    """A stream cut in two where a hit is split across the cut.

    One simulated stream with frequent split hits is cut at the first index
    >= ``n_before`` where the readout before the cut ends with the first
    bytes of a hit (VALID_EXTRA_BYTES) and the readout after the cut starts
    with the rest (a chained decoder would join them: ORPHAN_BYTES_MATCHED).
    Returns the records before and after the cut.
    """
    sim = AstroPix4Simulator(seed=seed, hits_per_readout=1.5, faults={"split": 0.3})
    run = sim.generate(n_before + n_after + 200)
    readouts = run.readouts
    for b in range(n_before, n_before + 200):
        before, after = readouts[b - 1], readouts[b]
        before.decode(None)
        if not before.decoding_status() & DecodingFlag.VALID_EXTRA_BYTES:
            continue
        after.decode(before.extra_bytes())
        if after.decoding_status() & DecodingFlag.ORPHAN_BYTES_MATCHED:
            return run.records[:b], run.records[b : b + n_after]
    pytest.fail("no split hit found near the cut: change the seed")


def _reference(*runs: list[bytes]) -> tuple[np.ndarray, dict[str, int]]:
    """Offline reference of runs taken by different DAQ runs: each decoded on its own."""
    parts = [decode_chained(records) for records in runs]
    hits = np.concatenate([p[0] for p in parts])
    flags = [f for p in parts for f in p[1]]
    return hits, dict(zip(FLAG_NAMES, flag_counts(flags).tolist()))


def _assert_matches_reference(mon: AstroPix4SimpleMonitor, recorder: _RecordingDecoder, hits: np.ndarray, flags: dict[str, int]) -> None:
    assert_hits_equal(recorder.hits(), hits, "hits decoded by the monitor")
    assert mon.num_hits == len(hits)
    assert np.array_equal(mon.hit_map.values(), _expected_hit_map(hits))
    assert np.array_equal(mon.tot_hist.values(flow=True), _expected_tot(hits))
    assert mon.out_of_matrix_hits == int(np.count_nonzero(hits["column"] >= 16))
    assert mon.flag_counts == flags
    assert mon.recovered_hits == flags["ORPHAN_BYTES_MATCHED"]


# --------------------------------------------------------------------------
# DAQ restart mid-run
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_id", "restart_id", "wait_between"),
    [
        pytest.param(0, 0, False, id="back-to-0-back-to-back"),
        pytest.param(20_000, 20_000 + 3000 - 1 - (RESTART_BACKWARD_JUMP + 2000), True, id="far-back-after-a-gap"),
    ],
)
def test_daq_restart_is_counted_once_and_nothing_is_chained_across_it(no_leaks, first_id, restart_id, wait_between):
    """Ids go back mid-run; a hit cut at the end of the old run stays cut.

    The cut is chosen where a chaining decoder *would* join the old run's
    last bytes with the new run's first: the monitor must not (the ids are
    not consecutive), exactly as the offline reference does not.
    """
    before, after = _stream_with_split_at(3000, 2000)
    run1 = _renumber(before, first_id)
    run2 = _renumber(after, restart_id)
    n, m = len(run1), len(run2)
    assert restart_id < RESTART_ID_LIMIT or (first_id + n - 1) - restart_id > RESTART_BACKWARD_JUMP
    hits, flags = _reference(run1, run2)
    # What chaining across the restart would wrongly give: one hit more, recovered.
    wrong_hits, wrong_flags = _reference(before + after)
    assert len(wrong_hits) == len(hits) + 1
    assert wrong_flags["ORPHAN_BYTES_MATCHED"] == flags["ORPHAN_BYTES_MATCHED"] + 1
    assert flags["ORPHAN_BYTES_NOT_USED"] >= 1  # the new run's first readout: its orphan bytes are left alone

    mon, recorder = _recording_monitor()
    try:
        mon.start(refresh_interval=0.05)
        _send(mon.port, run1)  # the first DAQ process
        if wait_between:  # the restart then lands in a later batch than the old run's end
            _wait_for(lambda: mon.num_readouts == n, what=f"{n} readouts of the first run")
        _send(mon.port, run2)  # the restarted DAQ: a new process, a new socket
        _wait_for(lambda: mon.num_readouts == n + m, what=f"{n + m} readouts")
        _wait_for(lambda: "DAQ restarts 1," in mon.dashboard.value, what="the restart on the dashboard")
        assert mon.running
        mon.stop()

        stats = mon.listener_stats()
        assert stats.restarts == mon.daq_restarts == 1
        assert stats.lost == stats.out_of_order == stats.malformed == stats.dropped == 0
        assert stats.accepted == stats.datagrams == n + m
        assert mon.num_readouts == n + m
        assert mon.lost_readouts == mon.malformed_packets == mon.dropped_readouts == 0
        assert "DAQ restarts 1," in mon.dashboard.value
        assert mon.error_count == 0
        _assert_matches_reference(mon, recorder, hits, flags)
    finally:
        mon.close()


def test_daq_restart_with_a_new_simulator_run_shows_both_truths(no_leaks):
    """A real restart: a new simulator run (its own seed) from id 0, both with split hits and padding."""
    faults = {"split": 0.1, "ff_padding": 0.1, "out_of_matrix": 0.02}
    first = AstroPix4Simulator(seed=41, hits_per_readout=2.0, faults=faults).generate(2500)
    second = AstroPix4Simulator(seed=42, hits_per_readout=2.0, faults=faults).generate(1500)
    assert first.readout_ids()[0] == second.readout_ids()[0] == 0
    truth = np.concatenate([first.truth, second.truth])
    hits, flags = _reference(first.records, second.records)
    assert_hits_equal(hits, truth, "offline reference against the truth")

    mon, recorder = _recording_monitor()
    try:
        mon.start(refresh_interval=0.05)
        _send(mon.port, first.records)
        _wait_for(lambda: mon.listener_stats().accepted == 2500, what="the first run")
        _send(mon.port, second.records)
        _wait_for(lambda: mon.num_readouts == 4000, what="both runs")
        mon.stop()
        stats = mon.listener_stats()
        assert (stats.restarts, stats.lost, stats.out_of_order, stats.malformed) == (1, 0, 0, 0)
        assert mon.lost_readouts == mon.malformed_packets == 0
        assert mon.recovered_hits == first.num_split + second.num_split > 0
        assert "DAQ restarts 1," in mon.dashboard.value
        _assert_matches_reference(mon, recorder, truth, flags)
        assert mon.error_count == 0
    finally:
        mon.close()


# --------------------------------------------------------------------------
# The DAQ pauses for 10 s
# --------------------------------------------------------------------------


class _PausingDaq(threading.Thread):
    """Send ``first`` at a steady rate, pause ``pause_s``, then send ``second``."""

    def __init__(self, port: int, first: list[bytes], second: list[bytes], pause_s: float, rate_hz: float) -> None:
        super().__init__(name="test-pausing-daq", daemon=True)
        self.port, self.first, self.second = port, first, second
        self.pause_s, self.period = pause_s, 1.0 / rate_hz
        self.abort = threading.Event()
        self.paused = threading.Event()
        self.resumed = threading.Event()
        self.error: BaseException | None = None

    def _paced(self, sender: MulticastSender, records: list[bytes]) -> None:
        t0 = time.monotonic()
        for i, record in enumerate(records):
            if self.abort.is_set():
                return
            delay = t0 + i * self.period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sender.send_data(record)

    def run(self) -> None:
        try:
            with MulticastSender("127.0.0.1", self.port) as sender:
                self._paced(sender, self.first)
                self.paused.set()
                if self.abort.wait(self.pause_s):
                    return
                self.resumed.set()
                self._paced(sender, self.second)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def stop(self) -> None:
        self.abort.set()
        self.join(10.0)


def test_a_10_s_pause_warns_then_recovers_and_counting_goes_on_exactly(no_leaks):
    assert board.NO_DATA_WARNING_S == 5.0  # the default, kept: the pause is real
    pause_s = 10.0
    sim = AstroPix4Simulator(seed=23, hits_per_readout=2.0, faults={"split": 0.05})
    first, second = sim.generate(1000), sim.generate(1000)  # ids continue across the pause
    records = first.records + second.records
    hits, flags = _reference(records)

    mon, recorder = _recording_monitor()
    shown: list[str] = []  # every value the dashboard widget takes, in order
    running_changes: list[bool] = []
    mon.dashboard.observe(lambda change: shown.append(change["new"]), names="value")
    mon.observe(lambda change: running_changes.append(change["new"]), names="running")
    daq: _PausingDaq | None = None
    try:
        mon.start(refresh_interval=0.1)
        daq = _PausingDaq(mon.port, first.records, second.records, pause_s, rate_hz=1000.0)
        daq.start()
        _wait_for(lambda: daq.paused.is_set() or daq.error is not None, what="the DAQ to send its first 1000 readouts")
        assert daq.error is None
        _wait_for(lambda: mon.num_readouts == 1000, what="the first 1000 readouts")
        n_flowing = len(shown)
        # The pause: the dashboard warns (after NO_DATA_WARNING_S), in the widget and in the HTML.
        _wait_for(lambda: "apx-warning" in mon.dashboard.value, timeout=pause_s + 5.0, what="the no-data warning")
        assert not daq.resumed.is_set(), "the warning came only after the DAQ resumed"
        html_now = mon._dashboard_html()
        assert "apx-warning" in html_now and "no data for" in html_now
        warned = mon.dashboard.value
        seconds = int(re.search(r"no data for (\d+) s", warned).group(1))
        assert seconds >= board.NO_DATA_WARNING_S
        assert mon.running
        stats = mon.listener_stats()
        assert stats.datagrams == 1000 and stats.last_datagram_time is not None
        # The data return.
        _wait_for(lambda: mon.listener_stats().datagrams > 1000, timeout=pause_s + 10.0, what="data after the pause")
        n_back = len(shown)
        assert "apx-warning" not in mon._dashboard_html()
        _wait_for(lambda: "apx-warning" not in mon.dashboard.value, what="the warning to go")
        _wait_for(lambda: mon.num_readouts == 2000, what="all 2000 readouts")
        daq.join(20.0)
        assert not daq.is_alive() and daq.error is None
        assert mon.running
        mon.stop()

        # While data flowed, no warning; during the pause, a warning; from the
        # first refresh that began after the data returned on, none. (The value
        # written just after the return may come from a refresh that began
        # before it.)
        assert all("apx-warning" not in v for v in shown[:n_flowing])
        assert any("apx-warning" in v and "no data for" in v for v in shown[n_flowing:n_back])
        assert all("apx-warning" not in v for v in shown[n_back + 1 :])
        assert "apx-warning" not in mon.dashboard.value
        assert running_changes == [True, False]  # running all along, until stop()

        stats = mon.listener_stats()
        assert (stats.datagrams, stats.accepted) == (2000, 2000)
        assert stats.lost == stats.out_of_order == stats.restarts == stats.malformed == stats.dropped == 0
        assert mon.num_readouts == 2000
        assert mon.lost_readouts == mon.malformed_packets == mon.dropped_readouts == 0
        _assert_matches_reference(mon, recorder, hits, flags)
        assert_hits_equal(recorder.hits(), np.concatenate([first.truth, second.truth]), "hits against the truth")
    finally:
        if daq is not None:
            daq.stop()
        mon.close()


# --------------------------------------------------------------------------
# 10 % garbled readouts
# --------------------------------------------------------------------------


def test_ten_percent_garbled_readouts_are_counted_by_flag_and_good_hits_all_shown(no_leaks):
    sim = AstroPix4Simulator(seed=7, hits_per_readout=2.0, faults={"garbled": 0.1, "split": 0.05})
    run = sim.generate(5000)
    assert 0.08 < len(run.damaged) / run.num_readouts < 0.12  # about 10 % garbled
    hits, flags = _reference(run.records)
    # The damage shows in the flags (which ones depends on the bytes written).
    assert sum(flags[name] for name in FLAG_NAMES if name != "ORPHAN_BYTES_MATCHED" and name != "VALID_EXTRA_BYTES") > 100
    # Every hit of a readout with a known truth is decoded, exactly.
    assert_hits_equal(run.select_reliable(hits), run.truth, "reference hits of the reliable readouts")

    mon, recorder = _recording_monitor()
    try:
        mon.start(refresh_interval=0.05)
        _send(mon.port, run.records)
        _wait_for(lambda: mon.num_readouts == 5000, what="5000 readouts")
        mon.stop()

        stats = mon.listener_stats()
        assert stats.malformed == 0 and stats.malformed_by_reason == dict.fromkeys(stats.malformed_by_reason, 0)
        assert stats.accepted == 5000 and stats.lost == stats.restarts == stats.out_of_order == 0
        assert mon.malformed_packets == mon.lost_readouts == mon.dropped_readouts == 0
        assert mon.error_count == 0
        _assert_matches_reference(mon, recorder, hits, flags)
        # Truth check on what is shown: every good hit is in the monitor's hit map and TOT spectrum.
        assert_hits_equal(run.select_reliable(recorder.hits()), run.truth, "monitor hits of the reliable readouts")
        extra_map = mon.hit_map.values() - _expected_hit_map(run.truth)
        assert extra_map.min() >= 0
        assert (mon.tot_hist.values(flow=True) - _expected_tot(run.truth)).min() >= 0
        # The dashboard shows the flags by name, and no error.
        shown = mon.dashboard.value
        for name, count in flags.items():
            if count:
                assert re.search(rf"\b{name} {count}\b", shown), (name, count)
        assert "errors" not in shown
    finally:
        mon.close()
