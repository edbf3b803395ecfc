"""Trends beside their floor, sorting as many floats as there are pairs of points.

Every pair of points is a slope, so a trend costs O(n^2): two weeks of hourly
points (336, 56,280 pairs) in tens of milliseconds, MAX_POINTS (4,000, about
8 million pairs) in a few seconds.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from querymeter.trends import MAX_POINTS, trend

from .conftest import mark_baseline


def hourly(count: int) -> list[tuple[float, float]]:
    """``count`` hourly points of a 20 ms statement with 2 ms of noise, drifting 1 ms/day."""
    rng = random.Random(1)
    return [(1.7e9 + i * 3600.0, 20.0 + i / 24.0 + rng.gauss(0.0, 2.0)) for i in range(count)]


@pytest.mark.benchmark(group="trend: 336 points (two weeks hourly)", min_rounds=10)
def test_floor_sort_as_many_floats_as_pairs(benchmark: Any) -> None:
    """The floor: sorting 56,280 random floats, one per pair."""
    mark_baseline(benchmark)
    benchmark.extra_info["ops"] = 1
    rng = random.Random(2)
    values = [rng.random() for _ in range(336 * 335 // 2)]
    benchmark(sorted, values)


@pytest.mark.benchmark(group="trend: 336 points (two weeks hourly)", min_rounds=10)
def test_trend_of_two_weeks_hourly(benchmark: Any) -> None:
    """trend() of 336 points."""
    benchmark.extra_info["ops"] = 1
    points = hourly(336)
    benchmark(trend, points)


@pytest.mark.benchmark(group="trend: MAX_POINTS", min_rounds=3)
def test_trend_of_max_points(benchmark: Any) -> None:
    """trend() of MAX_POINTS points: the most it accepts."""
    benchmark.extra_info["ops"] = 1
    points = hourly(MAX_POINTS)
    benchmark.pedantic(trend, args=(points,), rounds=3, iterations=1)
