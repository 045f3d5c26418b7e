"""The headless engine (issue 10, point 1): no widget at all.

* importing it imports neither ipywidgets nor bqplot (checked in a fresh
  interpreter);
* a live stream over loopback gives counters and histograms equal to the
  simulator's truth, through ``status()`` and ``state()``;
* ``replay()`` of the same records (with lost, malformed, oversize readouts
  and a DAQ restart in them) gives the same counters as the live stream;
* ``stop()`` returns within about a second whatever the backlog, and the
  backlog is processed or counted, on the processing thread only;
* refreshes stay on time with a slow per-readout step;
* readouts sent while stopped are counted as missed while stopped.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import make_record, send_paced, wait_for

from astropix_nbmonitor import MonitorEngine
from astropix_nbmonitor.engine import EngineState
from astropix_nbmonitor.fmt import FLAG_NAMES, AstroPix4Readout
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.status import STATUS_TABLE, Status

_ENGINE_THREADS = ("astropix-monitor-listener", "astropix-monitor-processing")


def _engine_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in _ENGINE_THREADS]


@pytest.fixture
def engine():
    eng = MonitorEngine(port=0, refresh_interval=0.05)
    yield eng
    eng.close()
    assert _engine_threads() == []


def _expected_map(hits: np.ndarray) -> np.ndarray:
    inside = hits[(hits["column"] < 16) & (hits["row"] < 35)]
    out = np.zeros((16, 35), dtype=np.int64)
    np.add.at(out, (inside["column"].astype(int), inside["row"].astype(int)), 1)
    return out


def test_importing_the_engine_imports_no_widget_library():
    code = (
        "import sys\n"
        "from astropix_nbmonitor import MonitorEngine\n"
        "import astropix_nbmonitor.engine, astropix_nbmonitor.status\n"
        "bad = sorted(m for m in ('ipywidgets', 'bqplot', 'traitlets', 'IPython') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "", f"importing the engine imported {out.stdout.strip()}"


def test_a_live_stream_is_counted_and_histogrammed_exactly(engine):
    sim = AstroPix4Simulator(seed=11, hits_per_readout=2.0, faults={"split": 0.05, "out_of_matrix": 0.02})
    run = sim.generate(3000)
    engine.start()
    assert engine.running
    send_paced(engine.port, run.records)
    wait_for(lambda: engine.num_readouts == run.num_readouts, what="every readout processed")
    wait_for(lambda: len(engine.history) >= 1, what="a refresh with a rate point")  # the stream may end before one
    engine.stop()
    st = engine.status()
    inside = run.truth[(run.truth["column"] < 16) & (run.truth["row"] < 35)]
    assert st["readouts"] == run.num_readouts
    assert st["hits"] == len(run.truth)
    assert st["lost"] == st["malformed"] == st["dropped"] == st["errors"] == 0
    assert st["recovered_hits"] == run.num_split
    assert st["out_of_matrix"] == run.num_out_of_matrix
    assert st["last_datagram"] is not None and st["uptime"] > 0
    state = engine.state()
    assert isinstance(state, EngineState)
    assert np.array_equal(state.hit_map.values(), _expected_map(run.truth))
    assert state.tot_hist.sum(flow=True) == len(run.truth)
    assert int(state.hit_map.sum()) == len(inside)
    assert state.chips == (0,)
    assert state.status["readouts"] == run.num_readouts
    assert np.array_equal(state.chip_hit_map(0).values(), state.hit_map.values())
    assert state.rates.shape[0] == 3 and state.rates.shape[1] >= 1


def test_state_is_a_copy_with_a_sequence_number_and_a_time(engine):
    run = AstroPix4Simulator(seed=2).generate(200)
    engine.replay(run.records)
    first = engine.state()
    engine.replay(AstroPix4Simulator(seed=3, start_id=200).generate(200).records)
    second = engine.state()
    assert second.seq == first.seq + 1
    assert first.time <= second.time
    assert first.status["readouts"] == 200 and second.status["readouts"] == 400
    assert first.hit_map.sum() < second.hit_map.sum()  # the first copy did not change


def test_status_is_one_table_with_labels_and_judgement(engine):
    st = engine.status()
    assert isinstance(st, Status)
    assert list(st) == [c.name for c in STATUS_TABLE]
    needed = {
        "readouts", "hits", "readout_rate", "hit_rate", "lost", "malformed", "malformed_short", "malformed_header",
        "malformed_length", "dropped", "out_of_order", "daq_restarts", "recovered_hits", "out_of_matrix",
        "empty_readouts", "oversize", "missed_while_stopped", "errors", "uptime", "last_datagram",
    } | {f"flag_{name.lower()}" for name in FLAG_NAMES}
    assert needed <= set(st)
    assert st.label("lost") == "lost readouts"
    assert not st.is_bad("lost")  # zero is never bad
    engine.replay([b"junk"])
    st = engine.status()
    assert st["malformed"] == st["malformed_short"] == 1
    assert st.is_bad("malformed") and [r.name for r in st.bad_rows()] == ["malformed", "malformed_short"]
    assert any(line.split() == ["malformed", "datagrams", "1", "!"] for line in st.text_block())
    assert "malformed datagrams 1!" in st.one_line()


def _stream_with_faults() -> list[bytes]:
    """Records with a gap, malformed and oversize datagrams, reordering and a DAQ restart."""
    sim = AstroPix4Simulator(seed=5, faults={"split": 0.05})
    records = sim.generate(400).records
    records = records[:100] + records[103:]  # 3 lost
    records.insert(50, b"\xfe\xdc\xba" + bytes(5))  # short
    records.insert(60, b"\x00" * 40)  # header
    records.insert(70, make_record(bytes(10), 2**31)[:-2])  # length
    records.insert(80, make_record(b"\xbc" * 5000, 80))  # oversize (id in sequence? no: far ahead, see below)
    records.insert(150, records[149])  # a duplicate: out of order
    restart = AstroPix4Simulator(seed=6, start_id=0).generate(100).records  # the DAQ restarts at id 0
    return records + restart


def test_replay_counts_exactly_as_a_live_stream(engine):
    records = _stream_with_faults()
    engine.start()
    send_paced(engine.port, records, burst=20)
    wait_for(lambda: engine.status()["lost"] >= 3 and engine.listener.stats().datagrams == len(records), what="all datagrams")
    wait_for(lambda: engine.listener.stats().buffered == 0, what="the backlog")
    engine.stop()
    live = engine.status().as_dict()
    replayed_engine = MonitorEngine(port=0)
    try:
        replayed_engine.replay(records)
        replayed = replayed_engine.status().as_dict()
    finally:
        replayed_engine.close()
    for name in ("uptime", "last_datagram", "readout_rate", "hit_rate", "missed_while_stopped"):
        live.pop(name)
        replayed.pop(name)
    assert live == replayed
    assert replayed["daq_restarts"] == 1
    assert replayed["malformed"] == 3 and replayed["oversize"] == 1
    assert replayed["out_of_order"] >= 1


def test_stop_returns_within_a_second_whatever_the_backlog():
    seen = []

    def slow(records):
        for record in records:
            time.sleep(0.01)
            seen.append(threading.current_thread().name)
        eng.count_processed(len(records), 0)

    eng = MonitorEngine(port=0, refresh_interval=0.1, process=slow)
    try:
        eng.start()
        records = AstroPix4Simulator(seed=1).generate(3000).records
        send_paced(eng.port, records)
        wait_for(lambda: eng.listener.stats().accepted == len(records), what="every datagram received")
        began = time.monotonic()
        eng.stop()
        took = time.monotonic() - began
        st = eng.status()
        # Everything received is either processed or dropped and counted.
        assert st["readouts"] + st["dropped"] == len(records)
        assert st["dropped"] > 0
        assert set(seen) == {"astropix-monitor-processing"}  # never on the caller's thread
        # Processing the whole backlog would take 30 s: stop() did not wait for it.
        assert took < 10.0, f"stop() took {took:.1f} s"
    finally:
        eng.close()


def test_refreshes_happen_with_a_slow_per_readout_step():
    refreshes = []

    def slow(records):
        time.sleep(0.01 * len(records))
        eng.count_processed(len(records), 0)

    eng = MonitorEngine(port=0, refresh_interval=0.1, process=slow)
    eng.add_refresh_callback(lambda e: refreshes.append(time.monotonic()))
    try:
        eng.start()
        send_paced(eng.port, AstroPix4Simulator(seed=1).generate(2000).records)
        wait_for(lambda: len(refreshes) >= 10, what="ten refreshes")
        # The batches shrank to what a refresh interval allows (a 500-readout
        # batch would hold the thread for 5 s).
        assert eng.num_readouts < 2000
    finally:
        eng.close()


def test_readouts_sent_while_stopped_are_counted_as_missed(engine):
    sim = AstroPix4Simulator(seed=4)
    engine.start()
    first = sim.generate(300).records
    send_paced(engine.port, first)
    wait_for(lambda: engine.num_readouts == 300, what="the first part")
    engine.stop()
    sim.generate(250)  # sent while the monitor is stopped: nobody hears them
    engine.start()
    send_paced(engine.port, sim.generate(200).records)
    wait_for(lambda: engine.num_readouts == 500, what="the second part")
    st = engine.status()
    assert st["missed_while_stopped"] == 250
    assert st["lost"] == 0


def test_a_generic_readout_class_is_decoded_one_readout_at_a_time():
    class OtherChip(AstroPix4Readout):
        """Same bytes, another class: the engine must not assume the batch decoder."""

    eng = MonitorEngine(OtherChip, port=0)
    try:
        run = AstroPix4Simulator(seed=9, faults={"split": 0.1}).generate(500)
        eng.replay(run.records)
        st = eng.status()
        assert st["readouts"] == 500 and st["hits"] == len(run.truth)
        assert st["recovered_hits"] == run.num_split
        assert np.array_equal(eng.state().hit_map.values(), _expected_map(run.truth))
    finally:
        eng.close()


def test_reset_clears_every_counter_and_histogram(engine):
    engine.replay(AstroPix4Simulator(seed=3).generate(100).records + [b"junk"])
    engine.reset()
    st = engine.status()
    assert all(st[c.name] in (0, 0.0, None) for c in STATUS_TABLE), st.as_dict()
    assert engine.state().hit_map.sum() == 0


def test_start_and_stop_are_safe_twice(engine):
    engine.start()
    engine.start()
    assert sorted(_engine_threads()) == sorted(_ENGINE_THREADS)
    engine.stop()
    engine.stop()
    assert _engine_threads() == []
    assert not engine.running


def test_records_callbacks_see_every_processed_record_in_order(engine):
    seen: list[bytes] = []
    engine.add_records_callback(seen.extend)
    records = AstroPix4Simulator(seed=12).generate(500).records
    engine.replay(records[:200] + [b"junk"] + records[200:])
    assert seen == records
    engine.start()
    more = AstroPix4Simulator(seed=13, start_id=500).generate(300).records
    send_paced(engine.port, more)
    wait_for(lambda: len(seen) == 800, what="the live records")
    assert seen[500:] == more


# --------------------------------------------------------------------------
# CPU (issue 14, point 4): no polling while idle, coalesced batches exact


def test_the_processing_thread_and_the_listener_sleep_while_idle():
    """Idle, the processing loop turns about twice a refresh and the listener once a timeout (it polled every 5 ms)."""
    eng = MonitorEngine(port=0, refresh_interval=0.1)
    try:
        eng.start()
        time.sleep(0.2)
        turns, wakeups, began = eng.process_wakeups, eng.listener.loop_wakeups, time.monotonic()
        time.sleep(1.0)
        elapsed = time.monotonic() - began
        refreshes = elapsed / 0.1
        assert eng.process_wakeups - turns <= 2 * (refreshes + 2)  # polling every 5 ms: 200 in that second
        assert eng.listener.loop_wakeups - wakeups <= elapsed / eng.listener.timeout + 2
        assert eng.running
    finally:
        eng.stop()
    assert _engine_threads() == []


def test_a_listener_with_a_long_timeout_still_stops_at_once():
    """The stop wakes the loop's poll (an eventfd beside the socket): no wait for the 30 s timeout."""
    from astropix_nbmonitor.listener import Listener

    listener = Listener(port=0, timeout=30.0).start()
    time.sleep(0.05)  # the loop is in its poll
    assert listener.stop(timeout=5.0) is True
    assert not listener.running


def test_slow_stream_batches_are_coalesced_and_processed_exactly():
    """Datagrams a few at a time: the listener gathers them (4 ms pause), every hit lands once."""
    run = AstroPix4Simulator(seed=31, hits_per_readout=2.0, faults={"split": 0.05, "out_of_matrix": 0.02}).generate(600)
    eng = MonitorEngine(port=0, refresh_interval=0.05)
    batches = []
    eng.add_records_callback(lambda records: batches.append(len(records)))
    try:
        eng.start()
        from astropix_nbmonitor.sock import MulticastSender

        with MulticastSender("127.0.0.1", eng.port) as sender:
            for i, record in enumerate(run.records):
                sender.send_data(record)
                if i % 3 == 2:
                    time.sleep(0.001)
        wait_for(lambda: eng.num_readouts == run.num_readouts, what="every readout processed")
    finally:
        eng.stop()
    assert sum(batches) == run.num_readouts
    assert len(batches) < run.num_readouts  # batches of several readouts, not one each
    state = eng.state()
    assert np.array_equal(state.hit_map.values(), _expected_map(run.truth))
    assert state.tot_hist.sum(flow=True) == len(run.truth) == eng.num_hits
    assert eng.status()["recovered_hits"] == run.num_split
    assert int(eng.windows.counts(600.0).sum()) == int(state.hit_map.sum())
    assert sum(int(eng.pixel_tots.pixel_counts(c, r).sum()) for c in range(16) for r in range(35)) == int(state.hit_map.sum())


@pytest.mark.parametrize("collect_hits", [MonitorEngine.COLLECT_HITS, 50])
def test_collecting_fills_every_hit_once_at_the_end_of_the_block(collect_hits):
    """accumulate() inside collecting() is filled at the block's end (the per-readout path), or every
    COLLECT_HITS hits, even on an error."""
    run = AstroPix4Simulator(seed=32, hits_per_readout=3.0, chip_ids=(0, 2), faults={"out_of_matrix": 0.05}).generate(300)
    direct = MonitorEngine(port=0)
    collected = MonitorEngine(port=0)
    collected.COLLECT_HITS = collect_hits
    for eng in (direct, collected):
        eng.clock = lambda: 1000.5
    objects = [direct.decoder.decode_readout(AstroPix4Readout.from_bytes(r)) for r in run.records]
    for hits in objects:
        direct.accumulate(hits)
    with pytest.raises(ZeroDivisionError):
        with collected.collecting():
            for k, hits in enumerate(objects):
                collected.accumulate(hits)
                if k == 150:
                    with collected.collecting():  # nested: collects into the outer block
                        collected.accumulate(np.zeros(0, dtype=run.truth.dtype))
                if collect_hits > 900:
                    assert collected.accumulator.num_filled == 0  # nothing filled inside the block
            if collect_hits < 900:
                assert collected.accumulator.num_filled > 0  # filled on the way, every 50 hits
            raise ZeroDivisionError
    for a, b in ((direct.hit_map(), collected.hit_map()), (direct.tot_hist(), collected.tot_hist())):
        assert np.array_equal(a.values(flow=True), b.values(flow=True))
    assert direct.chips_seen == collected.chips_seen == [0, 2]
    assert direct.out_of_matrix == collected.out_of_matrix > 0
    assert np.array_equal(direct.windows.counts(10.0, 1000.5), collected.windows.counts(10.0, 1000.5))
    for chip in (0, 2):
        assert np.array_equal(direct.pixel_tots.pixel_counts(3, 4, chip), collected.pixel_tots.pixel_counts(3, 4, chip))
    assert np.array_equal(direct.pixel_tots.sum_pixels([(c, 3, 7) for c in (0, 2)]),
                          collected.pixel_tots.sum_pixels([(c, 3, 7) for c in (0, 2)]))


def _everything(eng: MonitorEngine) -> dict:
    """Every histogram and counter the fills and the decoder keep, for comparisons."""
    st = eng.state()
    pixel = {c: eng.pixel_tots._spectra[c].copy() for c in eng.pixel_tots.chips_seen}
    return {
        "maps": st.histograms["chip_hit_map"].view().copy(),
        "tots": st.histograms["chip_tot_hist"].view(flow=True).copy(),
        "window": eng.windows.counts(600.0, 1000.5),
        "window_tot": {c: eng.windows.tot_hist(600.0, c, 1000.5).values(flow=True) for c in eng.windows.chips_seen},
        "pixel": pixel,
        "ignored": eng.pixel_tots.ignored,
        "chips": st.chips,
        "out": eng.out_of_matrix,
        "readouts": eng.num_readouts,
        "hits": eng.num_hits,
        "flags": eng.decoder.flag_dict(),
        "counts": (eng.decoder.num_recovered, eng.decoder.num_empty, eng.decoder.num_malformed),
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            for k in a[key]:
                assert np.array_equal(a[key][k], b[key][k]), (key, k)
        else:
            assert np.array_equal(a[key], b[key]), key


def test_small_batches_decoded_readout_by_readout_equal_one_big_batch():
    """Batches of 1-30 records (a slow stream; up to SMALL_RECORDS decoded readout by readout and
    filled hit by hit) give every hit, bin and counter of one batch through the array path."""
    sim = AstroPix4Simulator(
        seed=33, hits_per_readout=3.0, chip_ids=(0, 1, 5),
        faults={"split": 0.1, "out_of_matrix": 0.05, "ff_padding": 0.1, "garbled": 0.03, "empty": 0.05,
                "truncated": 0.02, "trailing_ff": 0.05, "skip_ids": 0.02},
    )
    run = sim.generate(1500)
    small, big = MonitorEngine(port=0), MonitorEngine(port=0)
    for eng in (small, big):
        eng.clock = lambda: 1000.5
    rng = np.random.default_rng(3)
    i = 0
    while i < len(run.records):
        k = int(rng.integers(1, 31))
        small.process_records(run.records[i : i + k])
        i += k
    big.process_records(run.records)
    a, b = _everything(small), _everything(big)
    _assert_same(a, b)
    assert a["readouts"] == run.num_readouts and a["hits"] >= len(run.truth) > 0  # garbled bytes may decode as hits
    assert a["out"] > 0 and a["counts"][0] > 0 and sum(a["flags"].values()) > 0  # (skipped ids break some chains)
    assert {0, 1, 5} <= set(a["chips"])  # (garbled bytes may read as other chips)


def test_hit_by_hit_fill_equals_the_array_fill_at_the_edges():
    """The scalar fill of a few hits (accumulate below SMALL_FILL) and the array fill agree, edge cases included."""
    edges = np.linspace(0.0, 500.0, 100)
    rng = np.random.default_rng(8)
    n = 400
    hits = np.zeros(n, dtype=[("chip_id", "u1"), ("row", "u1"), ("column", "u1"), ("tot_us", "f8")])
    hits["chip_id"] = rng.choice([0, 2, 31], n)
    hits["row"] = rng.integers(0, 40, n)
    hits["column"] = rng.integers(0, 20, n)
    hits["tot_us"] = np.concatenate([edges, np.nextafter(edges, -np.inf), [np.nan, -1.0, 1e9],
                                     rng.uniform(0, 510, n - 203)])
    one, many = MonitorEngine(port=0), MonitorEngine(port=0)
    for eng in (one, many):
        eng.clock = lambda: 1000.5
    for start in range(0, n, 5):
        one.accumulate(hits[start : start + 5])  # hit by hit
    many.accumulate(hits)  # arrays
    assert one.SMALL_FILL >= 5 and many.SMALL_FILL < n
    a, b = _everything(one), _everything(many)
    _assert_same(a, b)
    assert a["out"] > 0 and a["chips"] == (0, 2, 31)


def test_change_mark_tells_whether_anything_changed():
    eng = MonitorEngine(port=0)
    mark = eng.change_mark()
    assert eng.change_mark() == mark  # nothing happened
    eng.replay(AstroPix4Simulator(seed=4).generate(20).records)
    after = eng.change_mark()
    assert after != mark
    eng.refresh()
    assert eng.change_mark() == after  # a refresh changes no histogram
    eng.reset()
    assert eng.change_mark() != after


# --------------------------------------------------------------------------
# Read-time catch-up (issue 14, point 4): few batches for a slow stream, reads see everything received


def _split_pair(seed_from: int = 100):
    """Two consecutive readouts whose first hit is split across them (the simulator's truth says so)."""
    for seed in range(seed_from, seed_from + 500):
        run = AstroPix4Simulator(seed=seed, hits_per_readout=2.0, faults={"split": 0.9}).generate(2)
        if run.num_readouts == 2 and run.num_split == 1:
            return run
    pytest.fail("no split pair found")


def _calls_recorder(eng: MonitorEngine) -> list[tuple[int, int]]:
    """Wrap the engine's own processing step: record (thread id, records) of every call."""
    calls: list[tuple[int, int]] = []
    step = eng.process_records

    def recording(records):
        calls.append((threading.get_ident(), len(records)))
        step(records)

    eng.process_records = recording  # an instance attribute: catch_up_on_read and the callbacks are untouched
    return calls


def test_a_slow_stream_is_processed_in_few_batches_yet_read_at_once():
    """The listener publishes every datagram (coalesce=0), the processing thread waits PROCESS_DELAY
    (long here) before processing: a handful of batches for 200 readouts, and hit_map() right after the
    listener counted the last datagram includes it (the read processed the buffer on its thread)."""
    run = AstroPix4Simulator(seed=41, hits_per_readout=2.0, faults={"split": 0.05}).generate(200)
    eng = MonitorEngine(port=0, refresh_interval=30.0, coalesce=0.0)
    eng.PROCESS_DELAY = 10.0
    calls = _calls_recorder(eng)
    try:
        assert eng.catches_up()
        eng.start()
        from astropix_nbmonitor.sock import MulticastSender

        with MulticastSender("127.0.0.1", eng.port) as sender:
            for i, record in enumerate(run.records):
                sender.send_data(record)
                if i % 2:
                    time.sleep(0.001)
        wait_for(lambda: eng.listener.stats().datagrams == len(run.records), what="every datagram at the listener")
        hit_map = eng.hit_map()  # no sleep: the read catches up
        worker = eng._process_thread.ident
    finally:
        eng.stop()
    assert np.array_equal(hit_map.values(), _expected_map(run.truth))
    on_loop = [n for ident, n in calls if ident == worker]
    assert sum(n for _, n in calls) == run.num_readouts  # every record processed once, on one thread or the other
    # Without the delay: one batch per datagram or so (200); with it, the loop processes only after its
    # first record (and the catch-up of hit_map did the rest).
    assert len(on_loop) <= 5
    assert eng.status()["recovered_hits"] == run.num_split


def test_records_are_never_reordered_between_the_loop_and_a_catch_up():
    """A hit split across two readouts, the first processed by the processing thread and the second by a
    read's catch-up on the caller's thread, is recovered exactly."""
    run = _split_pair()
    eng = MonitorEngine(port=0, refresh_interval=60.0, coalesce=0.0)
    eng.PROCESS_DELAY = 0.0
    calls = _calls_recorder(eng)
    try:
        eng.start()
        worker = eng._process_thread.ident
        from astropix_nbmonitor.sock import MulticastSender

        with MulticastSender("127.0.0.1", eng.port) as sender:
            sender.send_data(run.records[0])
            wait_for(lambda: calls, what="the first readout processed by the loop")
            eng.PROCESS_DELAY = 60.0  # the loop now waits a minute before processing the next records
            sender.send_data(run.records[1])
            wait_for(lambda: eng.listener.stats().datagrams == 2, what="the second datagram at the listener")
            hit_map = eng.hit_map()
            status = eng.status()
    finally:
        eng.stop()
    assert calls == [(worker, 1), (threading.get_ident(), 1)]
    assert np.array_equal(hit_map.values(), _expected_map(run.truth))
    assert status["recovered_hits"] == 1 == run.num_split
    assert status["readouts"] == 2 and status["hits"] == len(run.truth)


def test_a_read_processes_the_buffer_with_no_processing_thread_and_in_order():
    """With only the listener running, every reader processes what is buffered, on its own thread."""
    run = AstroPix4Simulator(seed=42, hits_per_readout=2.0, faults={"split": 0.2}).generate(50)
    eng = MonitorEngine(port=0, coalesce=0.0)
    calls = _calls_recorder(eng)
    try:
        eng.start_listening()
        send_paced(eng.port, run.records[:20])
        wait_for(lambda: eng.listener.stats().datagrams == 20, what="20 datagrams")
        assert eng.num_readouts == 20
        send_paced(eng.port, run.records[20:])
        wait_for(lambda: eng.listener.stats().datagrams == 50, what="50 datagrams")
        state = eng.state()
    finally:
        eng.stop()
    assert {ident for ident, _ in calls} == {threading.get_ident()}
    assert state.status["readouts"] == 50 and state.status["buffered"] == 0
    assert np.array_equal(state.hit_map.values(), _expected_map(run.truth))
    assert state.status["recovered_hits"] == run.num_split


@pytest.mark.parametrize("how", ["process hook", "records callback"])
def test_no_catch_up_on_the_callers_thread_with_a_user_step_or_a_records_callback(how):
    """A user's processing or a records callback (a hub relay's sockets) stays on the processing thread:
    reads do not process the buffer, and the processing thread does not wait PROCESS_DELAY."""
    run = AstroPix4Simulator(seed=43, hits_per_readout=1.0).generate(30)
    threads: list[int] = []
    if how == "process hook":
        eng = MonitorEngine(port=0, coalesce=0.0, process=lambda records: threads.append(threading.get_ident()))
    else:
        eng = MonitorEngine(port=0, coalesce=0.0)
        eng.add_records_callback(lambda records: threads.append(threading.get_ident()))
    try:
        assert not eng.catches_up()
        eng.start_listening()  # no processing thread: the records stay buffered unless a read processes them
        send_paced(eng.port, run.records)
        wait_for(lambda: eng.listener.stats().datagrams == 30, what="30 datagrams")
        eng.hit_map(), eng.tot_hist(), eng.state(), eng.status(), eng.num_readouts, eng.hit_map_window(10.0)
        assert eng.catch_up() == 0
        assert threads == [] and eng.listener.stats().buffered == 30
        eng.start_processing()
        wait_for(lambda: eng.listener.stats().buffered == 0 and threads, what="the processing thread's batch")
        worker = eng._process_thread.ident
    finally:
        eng.stop()
    assert set(threads) == {worker}
    assert eng.PROCESS_DELAY > 0 and eng.catch_ups == 0


def test_the_widget_catches_up_only_when_its_processing_is_the_engines():
    """AstroPix4SimpleMonitor's batch step is the engine's own: reads catch up; a subclass with its own
    process_readout or process_batch does not (its code runs on the processing thread only)."""
    from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor

    class OwnReadout(AstroPix4SimpleMonitor):
        def process_readout(self, readout):
            return super().process_readout(readout)

    class OwnBatch(AstroPix4SimpleMonitor):
        def process_batch(self, records):
            super().process_batch(records)

    monitors = [AstroPix4SimpleMonitor(port=0), OwnReadout(port=0), OwnBatch(port=0)]
    try:
        assert [m.engine.catches_up() for m in monitors] == [True, False, False]
        plain = monitors[0]
        run = AstroPix4Simulator(seed=44, hits_per_readout=2.0).generate(10)
        plain.engine.start_listening()
        send_paced(plain.port, run.records)
        wait_for(lambda: plain.engine.listener.stats().datagrams == 10, what="10 datagrams")
        assert np.array_equal(plain.hit_map.values(), _expected_map(run.truth))  # a property: the engine's hit_map()
    finally:
        for m in monitors:
            m.stop()
            m.close()


def test_the_widget_view_state_is_copied_again_only_when_the_data_changed():
    """An idle refresh reuses the whole run's histograms (change_mark unchanged), with the status of now;
    processed records, a reset or a time window give a fresh copy."""
    from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor

    mon = AstroPix4SimpleMonitor(port=0)
    try:
        first = mon.view_state()
        again = mon.view_state()
        assert again.histograms is first.histograms and again.status is not first.status
        run = AstroPix4Simulator(seed=45, hits_per_readout=2.0).generate(20)
        mon.replay(run.records)
        fresh = mon.view_state()
        assert fresh.histograms is not first.histograms
        assert np.array_equal(fresh.hit_map.values(), _expected_map(run.truth))
        assert fresh.status["readouts"] == 20 and again.status["readouts"] == 0
        assert mon.view_state().histograms is fresh.histograms
        mon.reset()
        cleared = mon.view_state()
        assert cleared.histograms is not fresh.histograms and cleared.hit_map.sum() == 0
        mon.window = 10.0
        assert mon.view_state().histograms is not mon.view_state().histograms  # a window follows the clock
    finally:
        mon.close()


def test_the_listener_pauses_longer_only_while_reads_catch_up_and_a_given_coalesce_is_kept():
    """The engine lengthens the listener's pause (bounded by the socket buffer) while reads take the
    socket's datagrams themselves; a records callback brings the 4 ms pause back; coalesce= given, or set
    by hand before start(), is never changed."""
    from astropix_nbmonitor.listener import DEFAULT_COALESCE_S

    eng = MonitorEngine(port=0, refresh_interval=0.05)
    given = MonitorEngine(port=0, refresh_interval=0.05, coalesce=0.002)
    by_hand = MonitorEngine(port=0, refresh_interval=0.05)
    by_hand.listener.coalesce = 0.0
    try:
        for e in (eng, given, by_hand):
            e.start()
        long_pause = eng._coalesce_for(True)
        assert DEFAULT_COALESCE_S <= long_pause <= eng.CATCH_UP_COALESCE
        wait_for(lambda: eng.listener.coalesce == long_pause, what="the long pause")
        eng.add_records_callback(lambda records: None)
        wait_for(lambda: eng.listener.coalesce == DEFAULT_COALESCE_S, what="the short pause back")
        turns = (given.process_wakeups, by_hand.process_wakeups)
        wait_for(lambda: given.process_wakeups > turns[0] + 2 and by_hand.process_wakeups > turns[1] + 2,
                 what="a few turns of the loops")
        assert given.listener.coalesce == 0.002 and by_hand.listener.coalesce == 0.0
    finally:
        for e in (eng, given, by_hand):
            e.stop()
