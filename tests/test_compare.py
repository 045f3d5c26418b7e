"""Tests of astropix_nbmonitor.compare: TOT compatibility with a reference, hit-map ratio."""

from __future__ import annotations

import math
from pathlib import Path

import boost_histogram as bh
import numpy as np
import pytest

from astropix_nbmonitor import AstroPix4Simulator, MonitorEngine
from astropix_nbmonitor.compare import (
    compatibility,
    compatibility_of,
    hit_map_ratio,
    kolmogorov_pvalue,
    level_of,
    scaled_reference,
)
from astropix_nbmonitor.hist import TOT_EDGES


def replayed(records: list[bytes]) -> MonitorEngine:
    engine = MonitorEngine(port=0)
    engine.replay(records)
    return engine


@pytest.fixture(scope="module")
def halves() -> tuple[MonitorEngine, MonitorEngine]:
    records = AstroPix4Simulator(seed=2).generate(20_000).records
    return replayed(records[:10_000]), replayed(records[10_000:])


def tot(values: list[float] | np.ndarray) -> bh.Histogram:
    h = bh.Histogram(bh.axis.Regular(len(TOT_EDGES) - 1, TOT_EDGES[0], TOT_EDGES[-1]), storage=bh.storage.Int64())
    h.fill(np.asarray(values, dtype=float))
    return h


def test_two_halves_of_one_run_are_compatible(halves: tuple[MonitorEngine, MonitorEngine]) -> None:
    first, second = halves
    result = compatibility(first.tot_hist(), second.tot_hist())
    assert result.level == "ok", result.text()
    assert result.n_current == first.num_hits and result.n_reference == second.num_hits
    assert 0.5 < result.chi2_ndf < 1.5
    assert result.ks_pvalue > 0.05
    assert result.ndf > 50
    assert result.chi2_ndf == pytest.approx(result.chi2 / result.ndf)
    assert "chi2/ndf" in result.text() and result.text().endswith(": ok")


def test_a_shifted_tot_peak_is_red(halves: tuple[MonitorEngine, MonitorEngine]) -> None:
    shifted = replayed(AstroPix4Simulator(seed=9, tot_mpv_us=95.0).generate(10_000).records)
    result = compatibility(shifted.tot_hist(), halves[1].tot_hist())
    assert result.level == "red", result.text()
    assert result.ks_pvalue < 0.001 and result.chi2_ndf > 3


def test_compatibility_of_states_saved_runs_and_files(
    tmp_path: Path, halves: tuple[MonitorEngine, MonitorEngine]
) -> None:
    from astropix_nbmonitor import histio

    first, second = halves
    direct = compatibility(first.tot_hist(), second.tot_hist())
    path = histio.save_state(second.state(), tmp_path / "reference.json")
    assert compatibility_of(first.state(), path) == direct
    assert compatibility_of(first.state(), histio.load(path)) == direct
    assert compatibility_of(first.state(), second.state(), chip=0) == direct  # one chip only


def test_the_chi2_formula_on_small_numbers() -> None:
    # current a = (10, 20, 0), reference b = (5, 5, 0): n1 = 30, n2 = 10, one empty bin not used.
    a = tot([1.0] * 10 + [10.0] * 20)
    b = tot([1.0] * 5 + [10.0] * 5)
    result = compatibility(a, b)
    expected = ((10 * 10 - 30 * 5) ** 2 / 15 + (10 * 20 - 30 * 5) ** 2 / 25) / (30 * 10)
    assert result.chi2 == pytest.approx(expected)
    assert result.ndf == 1
    # KS: cumulative 1/3 against 1/2 after the first bin.
    assert result.ks_statistic == pytest.approx(1 / 6)
    assert result.ks_pvalue == pytest.approx(kolmogorov_pvalue(math.sqrt(30 * 10 / 40) / 6))


def test_kolmogorov_distribution_values() -> None:
    # Known values of the asymptotic Kolmogorov distribution Q(lambda).
    assert kolmogorov_pvalue(1.36) == pytest.approx(0.04949, abs=1e-4)
    assert kolmogorov_pvalue(1.63) == pytest.approx(0.00985, abs=1e-4)
    assert kolmogorov_pvalue(0.5) == pytest.approx(0.96394, abs=1e-4)
    assert kolmogorov_pvalue(0.0) == 1.0
    # The two series agree where they swap.
    assert kolmogorov_pvalue(1.1799) == pytest.approx(kolmogorov_pvalue(1.1801), abs=1e-3)
    assert kolmogorov_pvalue(10.0) == pytest.approx(0.0, abs=1e-12)


def test_levels_and_thresholds() -> None:
    assert level_of(1.0, 0.5) == "ok"
    assert level_of(1.6, 0.5) == "amber"
    assert level_of(1.0, 0.01) == "amber"
    assert level_of(3.5, 0.5) == "red"
    assert level_of(1.0, 0.0005) == "red"
    assert level_of(math.nan, math.nan) == "none"


def test_nothing_to_compare_and_other_binnings() -> None:
    empty = tot([])
    result = compatibility(empty, tot([10.0, 20.0]))
    assert result.level == "none" and math.isnan(result.chi2_ndf) and math.isnan(result.ks_pvalue)
    assert "nothing to compare" in result.text()
    assert compatibility(tot([10.0] * 5), tot([10.0] * 7)).level == "none"  # one bin: ndf 0
    other = bh.Histogram(bh.axis.Regular(10, 0, 500))
    with pytest.raises(ValueError, match="different binnings"):
        compatibility(tot([1.0]), other)


def test_scaled_reference_has_the_current_number_of_hits(halves: tuple[MonitorEngine, MonitorEngine]) -> None:
    first, second = halves
    scaled = scaled_reference(first.tot_hist(), second.tot_hist())
    in_range = second.tot_hist().values().sum() / second.tot_hist().sum(flow=True)
    assert scaled.sum() == pytest.approx(first.tot_hist().sum(flow=True) * in_range)
    assert scaled_reference(tot([1.0]), tot([])).tolist() == [0.0] * (len(TOT_EDGES) - 1)


def test_hit_map_ratio_is_normalised_and_nan_where_the_reference_is_empty() -> None:
    axes = (bh.axis.Integer(0, 2), bh.axis.Integer(0, 3))
    cur, ref = bh.Histogram(*axes), bh.Histogram(*axes)
    cur.fill([0, 0, 1, 1], [0, 0, 1, 2])  # 4 hits
    ref.fill([0, 1], [0, 1])  # 2 hits; nothing at (1, 2)
    ratio = hit_map_ratio(cur, ref)
    assert ratio.shape == (2, 3)
    assert ratio[0, 0] == pytest.approx((2 / 4) / (1 / 2))
    assert ratio[1, 1] == pytest.approx((1 / 4) / (1 / 2))
    assert np.isnan(ratio[1, 2]) and np.isnan(ratio[0, 1])
    assert hit_map_ratio(cur, ref, rows_first=True).shape == (3, 2)
    assert np.isnan(hit_map_ratio(bh.Histogram(*axes), ref)).all()
    with pytest.raises(ValueError, match="shapes"):
        hit_map_ratio(cur, bh.Histogram(bh.axis.Integer(0, 3), bh.axis.Integer(0, 3)))


def test_hit_map_ratio_of_two_halves_is_near_one(halves: tuple[MonitorEngine, MonitorEngine]) -> None:
    first, second = halves
    ratio = hit_map_ratio(first.hit_map(), second.hit_map())
    busy = second.hit_map().values() > 100
    assert busy.any()
    assert np.allclose(ratio[busy], 1.0, atol=0.35)
