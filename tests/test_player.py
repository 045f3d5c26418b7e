"""Tests of astropix_nbmonitor.player: paced replay, pause, resume, seek, speed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_LOG, shared_data_file, wait_for

from astropix_nbmonitor import AstroPix4Simulator, MonitorEngine
from astropix_nbmonitor.fileio import apx_open
from astropix_nbmonitor.player import Player, schedule
from astropix_nbmonitor.record import parse_record

COUNTERS = ("readouts", "hits", "lost", "malformed", "recovered_hits", "out_of_order", "daq_restarts", "empty_readouts")


def player_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "astropix-player"]


@pytest.fixture
def records() -> list[bytes]:
    # 3000 readouts 1 ms apart: a 3 s run.
    sim = AstroPix4Simulator(seed=4, hits_per_readout=1.5, rate_hz=1000.0, faults={"split": 0.02, "skip_ids": 0.005})
    return sim.generate(3000).records


@pytest.fixture
def players() -> Iterator[list[Player]]:
    made: list[Player] = []
    yield made
    for player in made:
        player.stop()
    assert player_threads() == []


def make_player(players: list[Player], *args, **kwargs) -> Player:
    player = Player(*args, **kwargs)
    players.append(player)
    return player


def test_play_at_10x_takes_about_a_tenth_and_counts_as_replay(records: list[bytes], players: list[Player]) -> None:
    engine = MonitorEngine(port=0)
    player = make_player(players, engine, records, speed=10.0)
    span = player.duration
    stamps = [parse_record(r)[1] for r in records]
    assert span == pytest.approx((stamps[-1] - stamps[0]) / 1e9) and span > 2.9
    began = time.monotonic()
    player.start()
    assert player.wait(timeout=60)
    took = time.monotonic() - began
    assert player.finished and not player.playing and player.position == player.total == 3000
    # The last record is due span/10 s after the start; generous upper bound.
    assert span / 10 * 0.9 <= took < span / 2
    reference = MonitorEngine(port=0)
    reference.replay(records)
    got, expected = engine.status(), reference.status()
    assert {k: got[k] for k in COUNTERS} == {k: expected[k] for k in COUNTERS}
    assert got.flag_counts() == expected.flag_counts()
    assert engine.state().histograms == reference.state().histograms
    assert player_threads() == []


def test_pause_stops_the_position_and_resume_continues(records: list[bytes], players: list[Player]) -> None:
    engine = MonitorEngine(port=0)
    player = make_player(players, engine, records, speed=1.0)
    player.start()
    wait_for(lambda: player.position > 100, what="playing")
    player.pause()
    assert not player.playing
    time.sleep(0.2)  # let a chunk in flight finish
    paused_at = player.position
    time.sleep(0.3)
    assert player.position == paused_at < player.total
    assert engine.num_readouts == paused_at
    player.resume()
    assert player.playing
    wait_for(lambda: player.position > paused_at, what="resumed")
    player.speed = 50.0  # settable while playing
    assert player.wait(timeout=60) and player.finished
    assert engine.num_readouts == player.total


def test_seek_jumps_and_counts_the_skipped_readouts_as_lost(players: list[Player]) -> None:
    records = AstroPix4Simulator(seed=6, rate_hz=1000.0).generate(3000).records
    engine = MonitorEngine(port=0)
    player = make_player(players, engine, records, speed=1.0)
    player.start()
    wait_for(lambda: player.position > 50, what="playing")
    player.pause()
    time.sleep(0.2)
    reached = player.position
    player.seek(2500)
    assert player.position == 2500
    player.speed = 20.0
    player.resume()
    assert player.wait(timeout=60) and player.finished
    status = engine.status()
    assert status["readouts"] == reached + 500
    assert status["lost"] == 2500 - reached  # the skipped ids, as a live stream would show them


def test_seek_back_after_the_end_plays_again_on_top(players: list[Player]) -> None:
    records = AstroPix4Simulator(seed=7, rate_hz=1e6).generate(200).records
    engine = MonitorEngine(port=0)
    player = make_player(players, engine, records, speed=100.0)
    player.start()
    assert player.wait(timeout=60) and player.finished
    hits = engine.num_hits
    player.seek(0)
    assert not player.finished and player.position == 0
    player.start()
    assert player.wait(timeout=60) and player.finished
    assert engine.num_readouts == 400 and engine.num_hits == 2 * hits  # not rewound: on top
    assert engine.status()["daq_restarts"] + engine.status()["out_of_order"] >= 1


def test_stop_ends_the_thread_and_start_goes_on(records: list[bytes], players: list[Player]) -> None:
    engine = MonitorEngine(port=0)
    player = make_player(players, engine, records, speed=1.0)
    player.start()
    player.start()  # safe twice
    assert len(player_threads()) == 1
    wait_for(lambda: player.position > 10, what="playing")
    player.stop()
    player.stop()  # safe twice
    assert player_threads() == [] and not player.playing
    stopped_at = player.position
    player.speed = 100.0
    player.start()
    assert player.wait(timeout=60)
    assert engine.num_readouts == player.total and stopped_at < player.total


def test_a_log_file_plays_at_rate_hz(players: list[Player]) -> None:
    path = shared_data_file(TEST_LOG)
    engine = MonitorEngine(port=0)
    player = make_player(players, engine, path, rate_hz=200.0, speed=2.0)
    assert player.total == 7 and player.header is not None and "Receiver" in player.header
    assert player.duration == pytest.approx(6 / 200)
    player.start()
    assert player.wait(timeout=60)
    assert engine.num_readouts == 7 and engine.status()["recovered_hits"] == 1


def test_an_apx_file_plays_with_its_header(tmp_path: Path, records: list[bytes], players: list[Player]) -> None:
    path = tmp_path / "run.apx"
    with apx_open(path, "w", header={"run": 3}) as writer:
        for record in records[:100]:
            writer.write_record(record)
    player = make_player(players, MonitorEngine(port=0), path, speed=100.0)
    assert player.header == {"readout_uid": 4000, "run": 3} and player.path == path
    player.start()
    assert player.wait(timeout=60) and player.engine.num_readouts == 100


def test_schedule_and_validation() -> None:
    sim = AstroPix4Simulator(seed=1, rate_hz=100.0)
    recs = sim.generate(5).records
    np.testing.assert_allclose(schedule(recs, 1.0), [0.0, 0.01, 0.02, 0.03, 0.04])
    zeros = [r[:7] + bytes(8) + r[15:] for r in recs]
    np.testing.assert_allclose(schedule(zeros, 10.0), [0.0, 0.1, 0.2, 0.3, 0.4])
    backwards = [recs[2], recs[0], recs[4]]
    assert np.all(np.diff(schedule(backwards, 1.0)) >= 0)
    with pytest.raises(ValueError, match="rate_hz"):
        schedule(recs, 0.0)
    player = Player(MonitorEngine(port=0), recs)
    with pytest.raises(ValueError, match="speed"):
        player.speed = 0
    assert Player(MonitorEngine(port=0), []).start().finished
