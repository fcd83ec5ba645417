"""The report's series arithmetic (exporter/report/series.py), without Prometheus."""

from __future__ import annotations

import pytest

from exporter.report.series import (
    Gauge,
    by_target,
    counter_increase,
    held_intervals,
    labelset_of,
    nice_bucket,
    overlap_share,
    rfc3339,
    spread,
    stats,
    target_of,
)


def test_counter_increase_from_the_baseline_before_the_window():
    points = [(90.0, 10.0), (100.0, 12.0), (110.0, 15.0), (120.0, 20.0), (130.0, 26.0)]
    inc = counter_increase(points, 105.0, 125.0)
    # baseline: the last sample at or before the start (100); up to the last one at or before the end
    assert inc.deltas == [(100.0, 110.0, 3.0), (110.0, 120.0, 5.0)]
    assert inc.total == 8.0 and inc.resets == 0


def test_counter_increase_counts_a_reset_as_the_new_value():
    inc = counter_increase([(0.0, 50.0), (10.0, 60.0), (20.0, 4.0), (30.0, 9.0)], 0.0, 30.0)
    assert inc.total == 10.0 + 4.0 + 5.0 and inc.resets == 1


def test_counter_increase_without_a_baseline_starts_at_the_first_sample():
    inc = counter_increase([(200.0, 7.0), (210.0, 9.0)], 100.0, 300.0)
    assert inc.total == 2.0


def test_adjacent_windows_add_up():
    points = [(float(t), float(t * t)) for t in range(0, 100, 7)]
    whole = counter_increase(points, 0.0, 98.0).total
    halves = counter_increase(points, 0.0, 49.0).total + counter_increase(points, 49.0, 98.0).total
    assert halves == pytest.approx(whole)


def test_gauge_holds_each_value_until_the_next_sample():
    gauge = Gauge([(10.0, 1.0), (20.0, 1.5), (30.0, 1.2)])
    assert [gauge.at(t) for t in (5.0, 10.0, 19.9, 20.0, 100.0)] == [1.0, 1.0, 1.0, 1.5, 1.2]


def test_held_intervals_clip_to_the_window():
    points = [(0.0, 100.0), (10.0, 200.0), (20.0, 300.0)]
    assert list(held_intervals(points, 5.0, 15.0)) == [(5.0, 10.0, 100.0), (10.0, 15.0, 200.0)]


def test_spread_keeps_the_amount_and_splits_by_overlap():
    buckets = [0.0] * 4
    spread(buckets, origin=0.0, width=10.0, lo=5.0, hi=25.0, amount=40.0)
    assert buckets == [10.0, 20.0, 10.0, 0.0]
    point = [0.0] * 2
    spread(point, origin=0.0, width=10.0, lo=12.0, hi=12.0, amount=3.0)  # an instant
    assert point == [0.0, 3.0]


def test_overlap_share():
    assert overlap_share(0.0, 10.0, 5.0, 20.0) == 0.5
    assert overlap_share(4.0, 4.0, 0.0, 10.0) == 1.0 and overlap_share(4.0, 4.0, 5.0, 10.0) == 0.0


def test_stats_are_time_weighted():
    assert stats([]) is None
    assert stats([(100.0, 3.0), (400.0, 1.0)]) == {"min": 100.0, "mean": 175.0, "max": 400.0}


def test_labels_targets_and_buckets():
    key = labelset_of({"metric": {"job": "node", "instance": "a:9875", "component": "cpu"}})
    assert target_of(key) == ("node", "a:9875")
    grouped = by_target({key: [(2.0, 1.0)], (("instance", "a:9875"), ("job", "node")): [(1.0, 0.0)]})
    assert grouped == {("node", "a:9875"): [(1.0, 0.0), (2.0, 1.0)]}
    assert nice_bucket(3600) == 60.0 and nice_bucket(30 * 86400) == 3 * 3600
    assert rfc3339(0) == "1970-01-01T00:00:00Z" and rfc3339(0.5) == "1970-01-01T00:00:00.500Z"
