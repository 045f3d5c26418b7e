"""Time windows and per-pixel TOT spectra: exact counts, bounded memory, HitAccumulator's axes."""

from __future__ import annotations

import boost_histogram as bh
import numpy as np
import pytest

from astropix_nbmonitor.astropix4.layout import NUM_CHIPS, NUM_COLS, NUM_ROWS
from astropix_nbmonitor.fmt import HIT_DTYPE
from astropix_nbmonitor.hist import TOT_EDGES, HitAccumulator
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.windows import PixelTots, WindowedAccumulator

T0 = 1_753_255_536.25  # an arbitrary wall time, not on a second boundary


def _hits(cols, rows, tots=None, chips=None) -> np.ndarray:
    out = np.zeros(len(cols), dtype=HIT_DTYPE)
    out["column"], out["row"] = cols, rows
    out["tot_us"] = 10.0 if tots is None else tots
    out["chip_id"] = 0 if chips is None else chips
    return out


def _sim_hits(n_readouts: int, **kwargs) -> np.ndarray:
    return AstroPix4Simulator(seed=kwargs.pop("seed", 3), **kwargs).generate(n_readouts).truth


def test_a_window_as_long_as_the_run_equals_the_cumulative_histograms():
    hits = _sim_hits(3000, chip_ids=(0, 1), hits_per_readout=2.0, faults={"out_of_matrix": 0.05})
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    acc = HitAccumulator(NUM_ROWS, NUM_COLS)
    for i, chunk in enumerate(np.array_split(hits, 30)):
        win.fill(chunk, now=T0 + i)
        acc.fill(chunk)
    now = T0 + 29
    assert acc.out_of_matrix > 0
    for chip in (None, 0, 1):
        assert np.array_equal(win.hit_map(600, chip, now=now).values(), acc.hit_map(chip).values())
        assert np.array_equal(win.tot_hist(600, chip, now=now).values(flow=True), acc.tot_hist(chip).values(flow=True))
    assert np.array_equal(win.counts(600, now=now), acc.snapshot()["chip_hit_map"].values())
    assert win.chips_seen == (0, 1)


def test_histograms_have_the_axes_and_metadata_of_hit_accumulator():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    win.fill(_hits([1], [2]), now=T0)
    acc = HitAccumulator(NUM_ROWS, NUM_COLS)
    h, ref = win.hit_map(10, now=T0), acc.hit_map()
    assert isinstance(h, bh.Histogram) and h.axes == ref.axes
    assert [ax.name for ax in h.axes] == ["column", "row"] and [ax.label for ax in h.axes] == ["column", "row"]
    t, tref = win.tot_hist(10, now=T0), acc.tot_hist()
    assert t.axes == tref.axes and t.axes[0].name == "tot_us" and t.axes[0].label == "TOT [us]"
    assert h.storage_type is bh.storage.Int64 and t.storage_type is bh.storage.Int64
    variable = [0.0, 1.0, 5.0, 50.0, 500.0]
    tv = WindowedAccumulator(NUM_ROWS, NUM_COLS, tot_edges=variable).tot_hist(1, now=T0)
    assert tv.axes == HitAccumulator(NUM_ROWS, NUM_COLS, tot_edges=variable).tot_hist().axes


def test_the_offline_binning_rule_holds_in_windows_and_pixel_spectra():
    tots = [-1.0, 0.0, 499.9, 500.0, 500.0001, 600.0]
    hits = _hits([3] * 6, [4] * 6, tots)
    win, acc, pix = WindowedAccumulator(NUM_ROWS, NUM_COLS), HitAccumulator(NUM_ROWS, NUM_COLS), PixelTots(NUM_ROWS, NUM_COLS)
    win.fill(hits, now=T0)
    acc.fill(hits)
    pix.fill(hits)
    ref = acc.tot_hist().values(flow=True)
    assert ref[0] == 1 and ref[-1] == 2 and ref[-2] == 2  # 500.0 in the last bin
    assert np.array_equal(win.tot_hist(1, now=T0).values(flow=True), ref)
    assert np.array_equal(pix.pixel_tot_hist(3, 4).values(flow=True), ref)


def test_a_moving_beam_spot_is_seen_only_at_its_new_place_in_a_10_s_window():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    acc = HitAccumulator(NUM_ROWS, NUM_COLS)
    before = AstroPix4Simulator(seed=1, beam_center=(8.0, 3.0), beam_sigma=(1.0, 1.0), beam_fraction=1.0)
    after = AstroPix4Simulator(seed=2, beam_center=(25.0, 12.0), beam_sigma=(1.0, 1.0), beam_fraction=1.0)
    for second in range(60):
        hits = (before if second < 30 else after).generate(200).truth
        win.fill(hits, now=T0 + second)
        acc.fill(hits)
    now = T0 + 59
    recent = win.hit_map(10, now=now).values()
    whole = acc.hit_map().values()
    assert recent.sum() == 10 * 200
    assert recent[3, 8] == 0 and recent[12, 25] > 0  # only the new place
    assert whole[3, 8] > 0 and whole[12, 25] > 0  # the whole run keeps both
    assert np.array_equal(win.hit_map(60, now=now).values(), whole)


def test_slots_roll_over_and_clear_as_time_moves_on():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS, max_seconds=10)
    for second in range(25):
        win.fill(_hits([0] * (second + 1), [0] * (second + 1)), now=T0 + second)
    now = T0 + 24
    assert win.hit_map(1, now=now).sum() == 25
    assert win.hit_map(3, now=now).sum() == 25 + 24 + 23
    assert win.hit_map(10, now=now).sum() == sum(range(16, 26))
    # Read later: seconds with no fill are empty, and the window slides over them.
    assert win.hit_map(3, now=now + 2).sum() == 25
    assert win.hit_map(10, now=now + 10).sum() == 0
    # A fill after a pause: the seconds in between are cleared, older ones kept.
    win.fill(_hits([1], [1]), now=now + 4)
    assert win.hit_map(10, now=now + 4).sum() == 1 + 25 + 24 + 23 + 22 + 21 + 20
    # A jump longer than the ring clears everything before it.
    win.fill(_hits([2], [2]), now=now + 100)
    assert win.hit_map(10, now=now + 100).sum() == 1
    assert win.hit_map(10, now=now + 100).values()[2, 2] == 1


def test_a_clock_stepping_back_counts_into_the_newest_slot():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS, max_seconds=10)
    win.fill(_hits([0], [0]), now=T0 + 5)
    win.fill(_hits([0], [0]), now=T0 + 2)
    assert win.hit_map(1, now=T0 + 5).sum() == 2


def test_granularity_below_a_second():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS, max_seconds=2, granularity=0.5)
    assert win.num_slots == 4
    for i in range(4):
        win.fill(_hits([0], [0]), now=100.0 + 0.5 * i)
    assert win.hit_map(0.5, now=101.5).sum() == 1
    assert win.hit_map(1.0, now=101.5).sum() == 2
    assert win.hit_map(2.0, now=101.5).sum() == 4


@pytest.mark.parametrize("seconds", [0, -1, 601, float("nan")])
def test_a_window_outside_0_to_max_seconds_is_refused(seconds):
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    with pytest.raises(ValueError, match="max_seconds=600"):
        win.hit_map(seconds, now=T0)
    with pytest.raises(ValueError, match="window"):
        win.tot_hist(seconds, now=T0)


def test_bad_construction_arguments_are_refused():
    with pytest.raises(ValueError, match="granularity"):
        WindowedAccumulator(NUM_ROWS, NUM_COLS, granularity=0)
    with pytest.raises(ValueError, match="max_seconds"):
        WindowedAccumulator(NUM_ROWS, NUM_COLS, max_seconds=0.5)
    with pytest.raises(ValueError, match="tot_edges"):
        WindowedAccumulator(NUM_ROWS, NUM_COLS, tot_edges=[1.0])


def test_memory_is_fixed_by_the_constructor_and_the_chips_seen_not_by_the_run_length():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    assert win.bytes_per_chip == 600 * (16 * 35 + 101) * 4 == 1_586_400
    assert win.nbytes == 0
    sim = AstroPix4Simulator(seed=5, hits_per_readout=3.0)
    win.fill(sim.generate(100).truth, now=T0)
    assert win.nbytes == win.bytes_per_chip
    for second in range(1, 3000, 7):  # a long run: 50 minutes of fills
        win.fill(sim.generate(20).truth, now=T0 + second)
    assert win.nbytes == win.bytes_per_chip
    win.fill(_hits([0, 0], [0, 0], chips=[3, 30]), now=T0 + 3000)
    assert win.nbytes == 3 * win.bytes_per_chip and win.chips_seen == (0, 3, 30)
    win.reset()
    assert win.nbytes == 0 and win.chips_seen == () and win.hit_map(600, now=T0 + 3000).sum() == 0


def test_per_chip_windows_and_an_unseen_chip():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    win.fill(_hits([1, 2, 2], [1, 2, 2], chips=[0, 5, 5]), now=T0)
    assert win.hit_map(5, 5, now=T0).values()[2, 2] == 2
    assert win.hit_map(5, 0, now=T0).sum() == 1
    assert win.hit_map(5, 7, now=T0).sum() == 0
    assert win.tot_hist(5, 5, now=T0).sum(flow=True) == 2
    with pytest.raises(ValueError, match="chip_id"):
        win.hit_map(5, NUM_CHIPS, now=T0)


def test_empty_fills_and_reads_before_any_fill():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    assert win.hit_map(10, now=T0).sum() == 0
    assert win.tot_hist(10, now=T0).sum(flow=True) == 0
    win.fill(np.zeros(0, dtype=HIT_DTYPE), now=T0)
    assert win.hit_map(10, now=T0).sum() == 0 and win.nbytes == 0


def test_pixel_rate_from_the_ring():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS, max_seconds=20)
    for second in range(10):
        win.fill(_hits([4] * second + [5], [6] * second + [6], chips=[1] * (second + 1)), now=T0 + second)
    times, rates = win.pixel_rate(4, 6, chip_id=1, seconds=12, now=T0 + 9)
    assert len(times) == len(rates) == 12
    assert np.all(np.diff(times) == 1.0) and -1.0 < times[-1] <= 0.0
    assert rates.tolist() == [0.0, 0.0, *range(10)]
    assert win.pixel_rate(4, 6, chip_id=0, seconds=12, now=T0 + 9)[1].sum() == 0
    assert win.pixel_rate(4, 6, seconds=12, now=T0 + 9)[1].sum() == 45
    with pytest.raises(ValueError, match="outside"):
        win.pixel_rate(16, 0, seconds=5, now=T0)


def test_pixel_tots_match_the_hits_of_each_pixel():
    hits = _sim_hits(2000, chip_ids=(0, 2), hits_per_readout=2.0, noisy_pixels=[(4, 3)], noisy_rate=0.5)
    pix = PixelTots(NUM_ROWS, NUM_COLS, NUM_CHIPS, TOT_EDGES)
    for chunk in np.array_split(hits, 7):
        pix.fill(chunk)
    assert pix.chips_seen == (0, 2)
    assert pix.nbytes == 2 * pix.bytes_per_chip == 2 * 16 * 35 * 101 * 8
    for chip in (0, 2, None):
        sel = (hits["column"] == 3) & (hits["row"] == 4)
        if chip is not None:
            sel &= hits["chip_id"] == chip
        ref = HitAccumulator(NUM_ROWS, NUM_COLS)
        ref.fill(hits[sel])
        h = pix.pixel_tot_hist(3, 4, chip)
        assert h.axes == ref.tot_hist().axes
        assert np.array_equal(h.values(flow=True), ref.tot_hist().values(flow=True))
        assert h.sum(flow=True) == np.count_nonzero(sel) > 0
    total = sum(pix.pixel_counts(c, r).sum() for c in range(NUM_COLS) for r in range(NUM_ROWS))
    inside = np.count_nonzero((hits["column"] < NUM_COLS) & (hits["row"] < NUM_ROWS))
    assert total == inside
    assert pix.pixel_tot_hist(0, 0, chip_id=9).sum(flow=True) == 0
    pix.reset()
    assert pix.nbytes == 0 and pix.pixel_tot_hist(3, 4).sum(flow=True) == 0


def test_pixel_tots_leave_out_of_matrix_hits_and_chips_beyond_num_chips():
    pix = PixelTots(NUM_ROWS, NUM_COLS, num_chips=2)
    pix.fill(_hits([20, 1, 1], [1, 1, 1], chips=[0, 0, 3]))
    assert pix.pixel_counts(1, 1).sum() == 1 and pix.ignored == 1 and pix.chips_seen == (0,)
    assert pix.sum_pixels([(0, 1, 1), (1, 1, 1)]).sum() == 1
