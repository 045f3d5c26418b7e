"""The whole-run rate trend: bounded points, exact means, minima and maxima, recent points kept as they are."""

from __future__ import annotations

import numpy as np
import pytest

from astropix_nbmonitor.trend import RateTrend

T0 = 1_753_255_536.0


def test_a_12_hour_run_keeps_at_most_max_points():
    trend = RateTrend(max_points=2000)
    n = 12 * 3600 * 2  # a refresh every 0.5 s
    for i in range(n):
        trend.add(T0 + 0.5 * i, 1000.0, 2000.0)
    whole = trend.arrays()
    assert trend.num_added == n
    assert 1000 <= len(whole) <= 2000 and len(whole) == len(trend)
    assert trend.stride == 64 and len(whole) == 1350
    assert np.all(np.diff(whole.t) > 0)
    assert whole.t[0] == pytest.approx(T0 + 0.5 * 31.5)  # mean time of the first 64 points
    assert np.allclose(whole.readout_rate, 1000.0) and np.allclose(whole.hit_max, 2000.0)


def test_bucket_means_minima_and_maxima_are_exact():
    trend = RateTrend(max_points=4)
    rates = [1.0, 5.0, 2.0, 8.0, 3.0, 3.0, 10.0, 0.0, 4.0]
    for i, r in enumerate(rates):
        trend.add(T0 + i, r, 2 * r)
    a = trend.arrays()
    # 9 points: stride 4 after two halvings -> buckets of 4, 4 and 1 points.
    assert trend.stride == 4 and len(a) == 3
    assert a.readout_rate.tolist() == [4.0, 4.0, 4.0]
    assert a.readout_min.tolist() == [1.0, 0.0, 4.0] and a.readout_max.tolist() == [8.0, 10.0, 4.0]
    assert a.hit_rate.tolist() == [8.0, 8.0, 8.0] and a.hit_max.tolist() == [16.0, 20.0, 8.0]
    assert a.t.tolist() == [T0 + 1.5, T0 + 5.5, T0 + 8.0]


def test_a_short_spike_survives_as_a_bucket_maximum():
    trend = RateTrend(max_points=100)
    for i in range(10_000):
        trend.add(T0 + i, 50_000.0 if i == 6543 else 100.0, 100.0)
    a = trend.arrays()
    assert len(a) <= 100 and a.readout_max.max() == 50_000.0 and a.readout_min.min() == 100.0


def test_the_last_minutes_come_at_full_resolution():
    trend = RateTrend(max_points=500)
    for i in range(10_000):
        trend.add(T0 + 0.5 * i, float(i), 0.0)
    last = trend.arrays(span=180)
    assert len(last) == 361  # every point of the last 180 s, both ends included
    assert last.readout_rate[-1] == 9999.0 and last.t[-1] - last.t[0] == 180.0
    assert np.array_equal(last.readout_min, last.readout_rate)
    # A span longer than the points kept as they are: from the buckets.
    long = trend.arrays(span=3600)
    assert len(long) < 3600 * 2 and long.t[0] >= T0 + 0.5 * 9999 - 3600 - 0.5 * trend.stride
    assert long.readout_max[-1] == 9999.0


def test_a_short_run_is_kept_as_it_is_and_clear_empties():
    trend = RateTrend()
    assert len(trend.arrays()) == 0 and len(trend.arrays(span=60)) == 0
    for i in range(5):
        trend.add(T0 + i, i, 10 * i)
    assert trend.arrays().readout_rate.tolist() == [0, 1, 2, 3, 4]
    assert trend.arrays(span=2).hit_rate.tolist() == [20, 30, 40]
    trend.clear()
    assert len(trend) == 0 and trend.num_added == 0 and trend.stride == 1


def test_an_odd_max_points_keeps_the_odd_bucket():
    trend = RateTrend(max_points=3)
    for i in range(20):
        trend.add(T0 + i, 1.0, 1.0)
        assert len(trend) <= 3
    a = trend.arrays()
    assert np.all(np.diff(a.t) > 0) and a.readout_rate.tolist() == [1.0] * len(a)


def test_max_points_below_2_is_refused():
    with pytest.raises(ValueError, match="max_points"):
        RateTrend(max_points=1)
