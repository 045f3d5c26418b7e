"""The built-in simulated source: steady rate, exact count, clean stop."""

from __future__ import annotations

import struct
import threading
import time

import pytest
from conftest import wait_for

from astropix_nbmonitor.fmt import decode_batch
from astropix_nbmonitor.listener import Listener
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.source import SimulatedSource


def _source_threads():
    return [t for t in threading.enumerate() if t.name == "astropix-simulated-source"]


def test_source_sends_the_simulator_stream_and_stops_by_itself():
    listener = Listener(port=0).start()
    try:
        src = SimulatedSource(port=listener.port, rate_hz=5000, max_readouts=1200, seed=7, hits_per_readout=2)
        src.start()
        assert src.wait(30) and src.sent == 1200
        deadline = time.monotonic() + 10
        while listener.stats().accepted < 1200 and time.monotonic() < deadline:
            time.sleep(0.01)
        records = listener.drain()
    finally:
        listener.stop()
    assert len(records) == 1200
    assert listener.stats().lost == 0
    # Same seed, same bytes: what arrived is the simulator's stream.
    chunks = []
    sim = AstroPix4Simulator(seed=7, hits_per_readout=2)
    while sum(map(len, chunks)) < 1200:
        chunks.append(sim.generate(SimulatedSource.CHUNK).records)
    expected = [r for chunk in chunks for r in chunk][:1200]
    assert records == expected
    assert len(decode_batch(records)) > 1200
    assert _source_threads() == []


def test_start_stop_twice_and_context_manager():
    with SimulatedSource(port=9, rate_hz=100) as src:  # port 9 (discard): nobody listens
        assert src.running
        src.start()
        time.sleep(0.05)
    assert not src.running and _source_threads() == []
    src.stop()
    assert "rate_hz=100" in repr(src)


def test_bad_rate_is_refused():
    with pytest.raises(ValueError, match="rate_hz"):
        SimulatedSource(rate_hz=0)


def test_a_restarted_source_sends_again_at_once():
    # The pace counts from each start: a source stopped and started again must
    # not stay silent to "pay back" the readouts of its first run.
    listener = Listener(port=0).start()
    src = SimulatedSource(port=listener.port, rate_hz=2000, seed=8)
    try:
        src.start()
        deadline = time.monotonic() + 10
        while src.sent < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        src.stop()
        first = src.sent
        assert first >= 2000
        src.start()
        deadline = time.monotonic() + 10
        while src.sent < first + 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        # 200 readouts at 2 kHz take 0.1 s; with the old pace, 1 s and more.
        assert src.sent >= first + 200, f"restarted source sent {src.sent - first} readouts"
    finally:
        src.stop()
        listener.stop()
    assert _source_threads() == []


def _ids(records: list[bytes]) -> list[int]:
    return [struct.unpack_from("<I", r, 3)[0] for r in records]


def test_a_new_source_on_the_same_address_replaces_the_old_one():
    # Re-running the quickstart's cell: the new source stops the old one, so the
    # monitor sees one stream (ids 0.. of the old, then 0.. of the new), never two
    # interleaved ones.
    listener = Listener(port=0).start()
    old = SimulatedSource(port=listener.port, rate_hz=2000, seed=1)
    new = SimulatedSource(port=listener.port, rate_hz=2000, seed=2)
    try:
        old.start()
        wait_for(lambda: old.sent >= 200, what="the old source sending")
        (old_thread,) = _source_threads()
        new.start()
        assert not old.running and not old_thread.is_alive()
        assert new.running and _source_threads() != [] and old_thread not in _source_threads()
        old_sent = old.sent
        wait_for(lambda: new.sent >= 200, what="the new source sending")
        new.stop()
        assert old.sent == old_sent  # only the newest sent
        total = old_sent + new.sent
        wait_for(lambda: listener.stats().datagrams >= total, what=f"{total} datagrams")
        records = listener.drain()
    finally:
        new.stop()
        old.stop()
        listener.stop()
    assert _ids(records) == list(range(old_sent)) + list(range(new.sent))
    assert _source_threads() == []


def test_sources_on_different_addresses_run_side_by_side():
    with SimulatedSource(port=9, rate_hz=100) as a, SimulatedSource(port=13, rate_hz=100) as b:
        assert a.running and b.running
        assert len(_source_threads()) == 2
    assert _source_threads() == []


def test_a_stopped_source_started_again_replaces_the_newer_one():
    with SimulatedSource(port=9, rate_hz=100) as first:
        second = SimulatedSource(port=9, rate_hz=100).start()
        assert not first.running
        first.start()
        assert first.running and not second.running
        second.stop()  # stopping the replaced source leaves the running one alone
        assert first.running
    assert _source_threads() == []
