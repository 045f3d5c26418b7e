"""Noisy pixels: the simulator's noisy pixel is found, and nothing else (not the beam's hot centre)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from astropix_nbmonitor.astropix4.layout import NUM_COLS, NUM_ROWS
from astropix_nbmonitor.hist import HitAccumulator
from astropix_nbmonitor.noisy import NoisyPixel, find_noisy
from astropix_nbmonitor.sim import AstroPix4Simulator


def _accumulate(*sims_and_counts: tuple[AstroPix4Simulator, int]) -> HitAccumulator:
    acc = HitAccumulator(NUM_ROWS, NUM_COLS)
    for sim, n in sims_and_counts:
        acc.fill(sim.generate(n).truth)
    return acc


def test_the_noisy_pixel_is_found_and_no_other():
    # The simulator takes noisy pixels as (row, column).
    acc = _accumulate((AstroPix4Simulator(seed=1, noisy_pixels=[(30, 1)], noisy_rate=0.02), 20_000))
    found = find_noisy(acc.hit_map().values(), 100.0)
    hits = int(acc.hit_map().values()[1, 30])
    assert found == [NoisyPixel(chip_id=0, column=1, row=30, hits=hits, rate=hits / 100.0)]
    assert found[0].pixel == (0, 1, 30)


def test_the_beam_spots_hot_centre_is_not_noisy():
    acc = _accumulate((AstroPix4Simulator(seed=1), 20_000))
    values = acc.hit_map().values()
    centre = np.unravel_index(values.argmax(), values.shape)
    fired = values[values > 0]
    # The centre holds more than 10 times the median of the fired pixels ...
    assert values[centre] > 10 * np.median(fired)
    # ... so the median rule alone flags the beam's core, but it is smooth with its neighbours.
    core = [(p.column, p.row) for p in find_noisy(values, 1.0, local=False)]
    assert core[0] == tuple(map(int, centre)) and len(core) > 5
    assert find_noisy(values, 1.0) == []


def test_a_noisy_pixel_inside_the_beam_is_found():
    sim = AstroPix4Simulator(seed=2, noisy_pixels=[(17, 8)], noisy_rate=1.0)  # the beam's centre
    acc = _accumulate((sim, 20_000))
    found = find_noisy(acc.hit_map().values(), 10.0)
    assert [(p.chip_id, p.column, p.row) for p in found] == [(0, 8, 17)]


def test_two_chips_each_judged_against_its_own_median():
    quiet = AstroPix4Simulator(seed=3, chip_ids=(0,))
    noisy = AstroPix4Simulator(seed=4, chip_ids=(1,), noisy_pixels=[(5, 12), (25, 2)], noisy_rate=0.05)
    acc = _accumulate((quiet, 20_000), (noisy, 20_000))
    counts = acc.snapshot()["chip_hit_map"].values()
    assert counts.shape == (32, NUM_COLS, NUM_ROWS)
    found = find_noisy(counts, 50.0)
    assert {p.pixel for p in found} == {(1, 12, 5), (1, 2, 25)}
    assert [p.hits for p in found] == sorted((p.hits for p in found), reverse=True)
    assert all(p.rate == p.hits / 50.0 for p in found)
    # One chip's map on its own: the chip id is the caller's.
    assert {p.pixel for p in find_noisy(acc.hit_map(1).values(), 50.0, chip_id=1)} == {(1, 12, 5), (1, 2, 25)}
    assert find_noisy(acc.hit_map(0).values(), 50.0) == []


def test_a_noisy_pixel_on_every_chip_of_one_stream():
    sim = AstroPix4Simulator(seed=5, chip_ids=(0, 3), noisy_pixels=[(10, 10)], noisy_rate=0.05)
    acc = _accumulate((sim, 20_000))
    found = find_noisy(acc.snapshot()["chip_hit_map"].values(), 1.0)
    assert {p.pixel for p in found} == {(0, 10, 10), (3, 10, 10)}


def test_min_hits_and_factor():
    counts = np.zeros((NUM_COLS, NUM_ROWS), dtype=np.int64)
    counts[:, :] = 1
    counts[3, 3] = 19  # 19 times the median, but fewer than 20 hits
    assert find_noisy(counts, 1.0) == []
    counts[3, 3] = 20
    assert [p.hits for p in find_noisy(counts, 1.0)] == [20]
    assert find_noisy(counts, 1.0, factor=20.0) == []  # not more than 20 x 1
    assert [p.hits for p in find_noisy(counts, 1.0, min_hits=5, factor=20.0)] == []
    counts[3, 3] = 21
    assert [p.hits for p in find_noisy(counts, 1.0, factor=20.0)] == [21]


def test_ties_sort_by_chip_column_row_and_empty_maps():
    counts = np.zeros((2, 4, 4), dtype=np.int64)
    counts[:, :, :] = 1
    counts[1, 0, 0] = counts[0, 3, 3] = counts[0, 1, 2] = 100
    assert [p.pixel for p in find_noisy(counts, 1.0)] == [(0, 1, 2), (0, 3, 3), (1, 0, 0)]
    assert find_noisy(np.zeros((16, 35)), 1.0) == []


def test_bad_arguments_are_refused_and_items_are_frozen():
    with pytest.raises(ValueError, match="seconds"):
        find_noisy(np.ones((16, 35)), 0)
    with pytest.raises(ValueError, match="shape"):
        find_noisy(np.ones(16), 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        NoisyPixel(0, 1, 2, 3, 4.0).hits = 5  # type: ignore[misc]
