"""The accumulators: exact per-chip hit maps and TOT spectra, UHI-readable copies."""

from __future__ import annotations

import boost_histogram as bh
import numpy as np
import pytest

from astropix_nbmonitor.fmt import HIT_DTYPE, AstroPix4Hit
from astropix_nbmonitor.hist import TOT_EDGES, HitAccumulator, RateHistory


def _hits(rows, cols, tots, chips=None) -> np.ndarray:
    out = np.zeros(len(rows), dtype=HIT_DTYPE)
    out["row"], out["column"], out["tot_us"] = rows, cols, tots
    out["chip_id"] = 0 if chips is None else chips
    return out


def test_fill_counts_every_hit_once_and_keeps_out_of_matrix_apart():
    acc = HitAccumulator(35, 16)
    acc.fill(_hits([0, 34, 5, 5, 3], [0, 15, 7, 7, 20], [10.0, 499.9, 600.0, -0.0, 42.0]))
    h = acc.hit_map()
    assert isinstance(h, bh.Histogram) and h.ndim == 2
    assert [ax.name for ax in h.axes] == ["column", "row"]
    assert h.values().shape == (16, 35)
    assert h.values()[0, 0] == 1 and h.values()[15, 34] == 1 and h.values()[7, 5] == 2
    assert h.sum() == 4 and acc.out_of_matrix == 1
    t = acc.tot_hist()
    assert np.allclose(t.axes[0].edges, TOT_EDGES)
    assert t.values(flow=True)[-1] == 1  # 600 us: overflow
    assert t.sum(flow=True) == 5  # every decoded hit has a TOT, in the matrix or not
    counts, under, over = acc.tot_counts()
    assert counts.sum() == 4 and under == 0 and over == 1
    assert acc.hit_map_counts().shape == (35, 16)
    assert acc.hit_map_counts()[5, 7] == 2


def test_per_chip_maps_sum_to_the_total():
    rng = np.random.default_rng(1)
    n = 5000
    hits = _hits(rng.integers(0, 35, n), rng.integers(0, 16, n), rng.uniform(0, 700, n), rng.choice([0, 2, 7], n))
    acc = HitAccumulator(35, 16)
    acc.fill(hits[:100])
    acc.fill(hits[100:])
    assert acc.chips_seen == {0, 2, 7}
    total = sum(acc.hit_map(c).values() for c in (0, 2, 7))
    assert np.array_equal(total, acc.hit_map().values())
    assert acc.hit_map(2).sum() == np.count_nonzero(hits["chip_id"] == 2)
    assert acc.tot_hist(7).sum(flow=True) == np.count_nonzero(hits["chip_id"] == 7)


def test_copies_are_independent_and_reset_clears():
    acc = HitAccumulator(35, 16)
    acc.fill(_hits([1], [2], [3.0]))
    copy = acc.hit_map()
    acc.fill(_hits([1], [2], [3.0]))
    assert copy.sum() == 1 and acc.hit_map().sum() == 2
    acc.reset()
    assert acc.hit_map().sum() == 0 and acc.tot_hist().sum(flow=True) == 0
    assert acc.out_of_matrix == 0 and acc.chips_seen == set()


def test_fill_hits_objects_equals_array_fill():
    words = [AstroPix4Hit.encode(row=r, column=c, ts_coarse1=100, ts_fine1=1, ts_coarse2=300 + r, ts_fine2=2)
             for r, c in [(0, 1), (4, 15), (4, 15), (31, 17)]]
    objs = [AstroPix4Hit.from_wire(w) for w in words]
    a, b = HitAccumulator(35, 16), HitAccumulator(35, 16)
    a.fill_hits(objs)
    b.fill(_hits([h.row for h in objs], [h.column for h in objs], [h.tot_us for h in objs]))
    assert np.array_equal(a.hit_map().values(), b.hit_map().values())
    assert np.array_equal(a.tot_hist().values(flow=True), b.tot_hist().values(flow=True))
    assert a.out_of_matrix == 1


def test_variable_tot_edges():
    acc = HitAccumulator(35, 16, tot_edges=[0, 10, 100, 1000])
    acc.fill(_hits([0, 0, 0], [0, 0, 0], [5.0, 50.0, 5000.0]))
    assert list(acc.tot_hist().values()) == [1, 1, 0]
    assert acc.tot_hist().values(flow=True)[-1] == 1


def test_rate_history_keeps_the_last_span():
    hist = RateHistory(span=10.0)
    for i in range(30):
        hist.add(100.0 + i, 200.0 + i, when=1000.0 + i)
    t, r, h = hist.arrays()
    assert len(hist) == 11 and t[-1] == 0.0 and t[0] == pytest.approx(-10.0)
    assert r[-1] == 129.0 and h[-1] == 229.0
    hist.clear()
    assert len(hist.arrays()[0]) == 0


@pytest.mark.parametrize("edges", [TOT_EDGES, [0.0, 10.0, 100.0, 500.0]], ids=["regular", "variable"])
def test_a_tot_on_the_last_edge_is_in_the_last_bin_as_offline(edges):
    """docs/format.md section 8: numpy's rule, the last bin holds its right edge."""
    edges = np.asarray(edges, dtype=float)
    tots = np.array([edges[0], edges[-1], edges[-1], np.nextafter(edges[-1], np.inf), edges[-1] + 1.0, -1.0, 0.5 * (edges[1] + edges[2])])
    hits = np.zeros(len(tots), dtype=HIT_DTYPE)
    hits["tot_us"] = tots
    acc = HitAccumulator(35, 16, tot_edges=edges)
    acc.fill(hits)
    counts, under, over = acc.tot_counts()
    expected, _ = np.histogram(tots, bins=edges)
    assert counts.tolist() == expected.tolist()
    assert counts[-1] >= 2  # both values on the last edge
    assert under == 1 and over == 2


def _reference_fill(num_rows, num_cols, edges, hits):
    """The histograms filled hit by hit with boost-histogram itself (the offline rule at the last edge)."""
    chip_axis = bh.axis.Integer(0, 32, underflow=False, overflow=False)
    maps = bh.Histogram(chip_axis, bh.axis.Integer(0, num_cols, underflow=False, overflow=False),
                        bh.axis.Integer(0, num_rows, underflow=False, overflow=False), storage=bh.storage.Int64())
    regular = np.allclose(np.diff(edges), edges[1] - edges[0])  # the accumulator's own choice of axis
    tot_axis = bh.axis.Regular(len(edges) - 1, edges[0], edges[-1]) if regular else bh.axis.Variable(edges)
    tots = bh.Histogram(chip_axis, tot_axis, storage=bh.storage.Int64())
    for h in hits:
        chip, col, row, tot = int(h["chip_id"]), int(h["column"]), int(h["row"]), float(h["tot_us"])
        if col < num_cols and row < num_rows:
            maps.fill(chip, col, row)
        tots.fill(chip, np.nextafter(edges[-1], -np.inf) if tot == edges[-1] else tot)
    return maps.view(), tots.view(flow=True)


@pytest.mark.parametrize("edges", [TOT_EDGES, np.array([0.0, 2.0, 10.0, 50.0, 500.0])])
def test_fill_through_the_storage_equals_boost_histograms_own_fill(edges):
    """The fills write into the storage with np.add.at (issue 14): the counts of a hit-by-hit fill."""
    rng = np.random.default_rng(7)
    n = 3000
    tots = np.concatenate([edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf),
                           rng.uniform(-20, 600, n - 3 * len(edges))])
    hits = _hits(rng.integers(0, 40, n), rng.integers(0, 20, n), tots, rng.choice([0, 3, 31, 40], n))
    acc = HitAccumulator(35, 16, tot_edges=edges)
    acc.fill(hits[:1000])
    acc.fill(hits[1000:1001])  # a batch of one
    acc.fill(hits[1001:])
    ref_maps, ref_tots = _reference_fill(35, 16, edges, hits)
    assert np.array_equal(acc.snapshot()["chip_hit_map"].view(), ref_maps)
    assert np.array_equal(acc.snapshot()["chip_tot_hist"].view(flow=True), ref_tots)
    inside = (hits["column"] < 16) & (hits["row"] < 35)
    assert acc.out_of_matrix == int(np.count_nonzero(~inside))
    assert acc.chips_seen == {0, 3, 31, 40}  # a chip_id beyond the axis is seen, not histogrammed, as before
    acc.reset()
    acc.fill(hits[:10])
    assert acc.num_filled == int(np.count_nonzero(inside[:10] & (hits["chip_id"][:10] < 32)))


def test_bin_hits_is_what_every_accumulator_fills_from():
    from astropix_nbmonitor.hist import bin_hits

    hits = _hits([0, 34, 35, 3], [0, 15, 2, 16], [1.0, 499.9, 500.0, 700.0], [2, 2, 5, 2])
    acc = HitAccumulator(35, 16)
    binned = bin_hits(hits, 35, 16, acc.tot_bins)
    assert binned.chips == (2, 5)
    assert binned.inside.tolist() == [True, True, False, False]
    assert binned.cell[:2].tolist() == [0, 15 * 35 + 34]
    assert binned.tot_bin.tolist() == [1, 99, 99, 100]  # 500 = the last edge: the last bin (99); 700: overflow
    one_chip = bin_hits(hits[:2], 35, 16, acc.tot_bins)
    assert one_chip.chips == (2,) and one_chip.inside is None


@pytest.mark.parametrize(
    "edges", [TOT_EDGES, np.array([0.0, 1.0, 5.0, 20.0, 500.0]), np.linspace(-3.0, 7.3, 17), np.linspace(0.1, 0.7, 7)]
)
def test_the_plain_python_tot_bin_is_boost_histograms_bin(edges):
    """scalar_tot_binner (the small batches' fill) against the axis itself, at every edge, next to it, NaN and inf."""
    from astropix_nbmonitor.hist import flow_tot_bins, scalar_tot_binner

    acc = HitAccumulator(35, 16, tot_edges=edges)
    axis, last = acc._tot_axis, float(edges[-1])
    rng = np.random.default_rng(5)
    values = np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                             rng.uniform(edges[0] - 3, edges[-1] + 3, 20_000), [np.nan, np.inf, -np.inf, 0.0, -0.0]])
    to_bin = scalar_tot_binner(axis, last)
    assert [to_bin(float(v)) for v in values] == flow_tot_bins(axis, last, values).tolist()
