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


# ---------------------------------------------------------------------------
# Per-second per-pixel TOT counts: masked windows (exact, retroactive), budget, checks
# ---------------------------------------------------------------------------

from conftest import offline_tot_counts  # noqa: E402

NOISY = (0, 5, 17)  # (chip_id, column, row) of the noisy pixel
NOISY_TOT = 433.3  # its distinctive TOT (us): no other hit has it


def _tracked() -> tuple[WindowedAccumulator, PixelTots]:
    win, pix = WindowedAccumulator(NUM_ROWS, NUM_COLS), PixelTots(NUM_ROWS, NUM_COLS)
    win.track_pixels(pix)
    return win, pix


def _fill_both(win: WindowedAccumulator, pix: PixelTots, hits: np.ndarray, now: float) -> None:
    """What MonitorEngine.accumulate does: the window ring first, then the per-pixel spectra."""
    bins = win.tot_bins(hits["tot_us"])
    win.fill(hits, now, tot_bins=bins)
    pix.fill(hits, tot_bins=bins)


def _noisy_seconds(n_seconds: int, seed: int = 21) -> list[np.ndarray]:
    """Per second: 300 random hits on two chips (some out of the matrix) plus, from second 5, 40 hits of NOISY."""
    rng = np.random.default_rng(seed)
    out = []
    for second in range(n_seconds):
        cols = rng.integers(0, 18, 300)  # 16 and 17 are out of the matrix
        rows = rng.integers(0, 35, 300)
        tots = np.round(rng.uniform(0.0, 300.0, 300), 1)
        chips = rng.integers(0, 2, 300)
        if second >= 5:
            k, c, r = NOISY
            cols, rows = np.r_[cols, [c] * 40], np.r_[rows, [r] * 40]
            tots, chips = np.r_[tots, [NOISY_TOT] * 40], np.r_[chips, [k] * 40]
        out.append(_hits(cols, rows, tots, chips))
    return out


def test_a_pixel_masked_after_its_hits_leaves_the_window_tot_exactly():
    win, pix = _tracked()
    seconds = _noisy_seconds(40)
    arrival = []
    for second, hits in enumerate(seconds):
        for part in np.array_split(hits, 3):  # several batches a second
            _fill_both(win, pix, part, T0 + second)
        arrival.append(np.full(len(hits), second))
    everything, when = np.concatenate(seconds), np.concatenate(arrival)
    k, c, r = NOISY
    is_noisy = (everything["chip_id"] == k) & (everything["column"] == c) & (everything["row"] == r)
    for now_offset, length in ((39.7, 10), (39.7, 60), (39.0, 1), (39.7, 600), (45.2, 10)):
        now = T0 + now_offset
        newest = int(np.floor(T0 + now_offset)) - int(np.floor(T0))
        in_window = (when > newest - length) & (when <= newest)
        for chip in (None, 0, 1):
            on_chip = np.ones(len(everything), bool) if chip is None else everything["chip_id"] == chip
            # The pixel is masked now, after every one of its hits arrived.
            counts, exact = win.masked_tot_counts(length, [NOISY], chip, now=now)
            shown = win.tot_hist(length, chip, now=now).values(flow=True) - counts
            keep = in_window & on_chip & ~is_noisy
            assert exact
            assert np.array_equal(shown, offline_tot_counts(everything["tot_us"][keep], TOT_EDGES)), (now_offset, length, chip)
            assert np.array_equal(counts, offline_tot_counts(everything["tot_us"][in_window & on_chip & is_noisy], TOT_EDGES))
    # The distinctive bin is empty in the masked 10 s window and full in the whole run.
    noisy_bin = int(np.searchsorted(TOT_EDGES, NOISY_TOT, side="right"))
    counts, _ = win.masked_tot_counts(10, [NOISY], None, now=T0 + 39.7)
    assert (win.tot_hist(10, now=T0 + 39.7).values(flow=True) - counts)[noisy_bin] == 0
    assert pix.pixel_tot_hist(c, r, k).values(flow=True)[noisy_bin] == 35 * 40
    # The pixel's own spectrum over a window, from the same per-second counts.
    assert win.pixel_tot_hist(10, c, r, k, now=T0 + 39.7).values(flow=True)[noisy_bin] == 10 * 40
    same_pixel = (everything["column"] == c) & (everything["row"] == r) & (when > 29) & (when <= 39)
    assert np.array_equal(
        win.pixel_tot_hist(10, c, r, None, now=T0 + 39.7).values(flow=True),
        offline_tot_counts(everything["tot_us"][same_pixel], TOT_EDGES),
    )  # all chips: chip 1's hits of that pixel too
    assert win.pixels.mismatches == 0 and win.pixels.dropped_seconds == 0


def test_the_second_still_filling_is_counted_too():
    win, pix = _tracked()
    k, c, r = NOISY
    _fill_both(win, pix, _hits([c] * 3, [r] * 3, [NOISY_TOT] * 3, [k] * 3), T0)
    counts, exact = win.masked_tot_counts(10, [NOISY], now=T0)  # no rollover yet: all from the partial second
    assert exact and counts.sum() == 3
    _fill_both(win, pix, _hits([c] * 2, [r] * 2, [NOISY_TOT] * 2, [k] * 2), T0 + 0.5)
    assert win.masked_tot_counts(10, [NOISY], now=T0 + 0.5)[0].sum() == 5
    assert win.masked_tot_counts(1, [NOISY], now=T0 + 1.0)[0].sum() == 0  # the next second, before any fill
    assert win.masked_tot_counts(2, [NOISY], now=T0 + 1.0)[0].sum() == 5
    counts, exact = win.masked_tot_counts(10, [], now=T0)
    assert exact and not counts.any()


def test_per_pixel_deltas_stay_within_their_budget_and_say_when_a_window_is_inexact():
    win = WindowedAccumulator(NUM_ROWS, NUM_COLS)
    pix = PixelTots(NUM_ROWS, NUM_COLS)
    budget = 200_000
    deltas = win.track_pixels(pix, budget_bytes=budget)
    rng = np.random.default_rng(5)
    sizes = []
    for second in range(3000):  # 50 minutes, the clock driven
        hits = _hits(rng.integers(0, 16, 2000), rng.integers(0, 35, 2000), np.round(rng.uniform(0, 500, 2000), 1))
        _fill_both(win, pix, hits, T0 + second)
        if second in (900, 2999):
            sizes.append((deltas.nbytes, win.nbytes, win.pixel_nbytes, pix.nbytes))
    assert all(stored <= budget for stored, *_ in sizes)
    assert sizes[0][1] == sizes[1][1] and sizes[0][3] == sizes[1][3]  # the ring and the spectra: fixed
    assert all(total <= budget + pix.bytes_per_chip for *_, total, _ in sizes)  # stored seconds + the copy
    assert deltas.dropped_seconds > 0 and deltas.kept_from is not None
    now = T0 + 2999.5
    kept = int(np.floor(now)) - deltas.kept_from + 1  # the newest seconds still kept
    assert 1 < kept < 600
    assert win.masked_tot_counts(kept, [NOISY], now=now)[1] is True
    assert win.masked_tot_counts(kept + 1, [NOISY], now=now)[1] is False  # reaches a dropped second: said
    assert win.masked_tot_counts(600, [], now=now)[1] is True  # nothing masked: nothing to take out


@pytest.mark.parametrize(("per_second", "dtype"), [(3, np.uint8), (255, np.uint8), (256, np.uint16), (70_000, np.uint32)])
def test_a_second_keeps_its_counts_in_the_smallest_type_and_masks_them_exactly(per_second, dtype):
    win, pix = _tracked()
    k, c, r = NOISY
    for second in range(3):
        noisy = _hits([c] * per_second, [r] * per_second, [NOISY_TOT] * per_second, [k] * per_second)
        _fill_both(win, pix, np.concatenate([noisy, _hits([1, 2], [3, 4], [10.0, 20.0])]), T0 + second)
    stored = [cnt for s in win.pixels.seconds for idx, cnt in win.pixels._entries[s].values()]
    assert len(stored) == 2 and all(cnt.dtype == dtype for cnt in stored)
    assert win.pixels.nbytes == sum(idx.nbytes + cnt.nbytes + 256 for s in win.pixels.seconds for idx, cnt in win.pixels._entries[s].values())
    counts, exact = win.masked_tot_counts(10, [NOISY], now=T0 + 2.5)
    noisy_bin = int(np.searchsorted(TOT_EDGES, NOISY_TOT, side="right"))
    assert exact and counts[noisy_bin] == 3 * per_second and counts.sum() == 3 * per_second
    assert win.pixel_tot_hist(10, c, r, k, now=T0 + 2.5).values(flow=True)[noisy_bin] == 3 * per_second


def test_the_ring_alone_bounds_the_per_pixel_memory_at_a_modest_rate():
    win, pix = _tracked()
    hits = _sim_hits(100)
    for second in range(1500):
        _fill_both(win, pix, hits, T0 + second)
        if second == 700:
            first = win.pixel_nbytes
    assert win.pixel_nbytes == first  # 600 seconds stored, never more
    assert len(win.pixels.seconds) == 599 and win.pixels.dropped_seconds == 0  # the ring, plus the partial second


def test_per_pixel_spectra_filled_before_the_ring_are_counted_as_mismatches():
    win, pix = _tracked()
    for second in range(5):
        hits = _hits([1 + second, 2], [3, 4], [10.0, 20.0])  # another pixel each second
        pix.fill(hits)  # the wrong order: the spectra see the batch before the ring's rollover
        win.fill(hits, T0 + second)
    assert win.pixels.mismatches > 0
    assert win.masked_tot_counts(10, [(0, 1, 3)], now=T0 + 4)[1] is False


def test_a_reset_clears_the_per_pixel_deltas_and_counts_a_generation():
    win, pix = _tracked()
    for second in range(3):
        _fill_both(win, pix, _hits([1], [2]), T0 + second)
    assert win.pixel_nbytes > 0 and win.generation == 0
    win.reset()
    pix.reset()
    assert win.pixels.nbytes == 0 and win.generation == 1
    _fill_both(win, pix, _hits([1], [2]), T0 + 10)
    assert win.masked_tot_counts(10, [(0, 1, 2)], now=T0 + 10)[0].sum() == 1


def test_loaded_slices_replace_their_second_in_windows_reads_and_whole_run_spectra():
    """A viewer's ring: a second loaded again (the hub's newest, still filling) replaces what it held."""
    from astropix_nbmonitor.windows import SecondSlice

    hub_win, hub_pix = _tracked()
    viewer, viewer_pix = WindowedAccumulator(NUM_ROWS, NUM_COLS), PixelTots(NUM_ROWS, NUM_COLS)
    viewer.receive_pixels(viewer_pix)
    k, c, r = NOISY
    masked = [NOISY]
    for step in range(6):  # three batches in each of two seconds; the viewer loads after each batch
        second = step // 3
        _fill_both(hub_win, hub_pix, _hits([c, 1], [r, 2], [NOISY_TOT, 50.0 + step], [k, 0]), T0 + second)
        after = None if step == 0 else int(np.floor(T0)) + second - 2
        viewer.load(hub_win.export(after))
        now = T0 + second + 0.25
        for length in (1, 10):
            assert np.array_equal(
                viewer.masked_tot_counts(length, masked, now=now)[0], hub_win.masked_tot_counts(length, masked, now=now)[0]
            )
            assert viewer.tot_hist(length, now=now) == hub_win.tot_hist(length, now=now)
        assert np.array_equal(viewer_pix.pixel_counts(c, r, k), hub_pix.pixel_counts(c, r, k))
        assert np.array_equal(viewer_pix.pixel_counts(1, 2, 0), hub_pix.pixel_counts(1, 2, 0))
    assert viewer.masked_tot_counts(10, masked, now=T0 + 1.25)[0].sum() == 6
    assert isinstance(hub_win.export()[0], SecondSlice)


def test_a_ring_moved_without_its_rollover_is_reported_inexact():
    """A fill path that moves the newest slot without WindowedAccumulator._advance is caught, not trusted."""
    win, pix = _tracked()
    _fill_both(win, pix, _hits([1], [3]), T0)
    assert win.masked_tot_counts(10, [(0, 1, 3)], now=T0)[1] is True
    win._head += 1  # what such a fill path would leave: the ring moved, the per-pixel counts did not roll
    counts, exact = win.masked_tot_counts(10, [(0, 1, 3)], now=T0 + 1)
    assert exact is False and win.pixels.mismatches >= 1
    assert all(sl.pixel_index is None for sl in win.export())  # a hub sends no per-pixel counts it cannot vouch for
