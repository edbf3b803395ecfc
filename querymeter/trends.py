"""Trends: is a series of measurements drifting, how fast, and how sure is that?

A query that becomes 1 ms slower every day never trips an alarm on any given
day.  :func:`trend` fits a straight line through ``(t, value)`` points (``t``
in seconds, e.g. Unix time; ``value`` e.g. a statement's mean latency) with
the Theil-Sen estimator and gives a distribution-free confidence interval for
its slope:

* slope: the median of the slopes of all pairs of points with distinct ``t``
  (Theil 1950, Sen 1968).  Its breakdown point is 29 %: an incident or a
  deploy's spikes do not fake a trend;
* confidence bounds: Sen's (1968) interval from Kendall's tau, two order
  statistics of the sorted pairwise slopes;
* intercept: the median of ``value - slope * t`` (Conover 1980).

Only the standard library is used.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["MAX_POINTS", "Trend", "trend"]

#: Most points :func:`trend` accepts.  Every pair of points is a slope held in
#: memory and sorted: 4,000 points make about 8 million (a few seconds, a few
#: hundred MB).  Longer series should be aggregated first (hourly or daily
#: means or medians), which also tames the noise of single measurements.
MAX_POINTS = 4_000

#: Minimum number of points: two always give one exact slope and no spread.
MIN_POINTS = 3

_SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Trend:
    """A straight-line trend ``value ≈ intercept + slope * t`` with bounds on its slope.

    ``slope``, ``low`` and ``high`` are in value units per second (the unit
    of ``t``); ``low`` and ``high`` bound the slope at confidence ``level``
    and are infinite when ``n`` points are too few to bound it at that level.
    ``intercept`` is the value at ``t = 0``; ``n`` is the number of points.
    """

    slope: float
    low: float
    high: float
    intercept: float
    n: int
    level: float

    @property
    def significant(self) -> bool:
        """Whether the confidence interval excludes zero: the series drifts, up or down."""
        return self.low > 0.0 or self.high < 0.0

    @property
    def per_day(self) -> float:
        """The slope in value units per day."""
        return self.slope * _SECONDS_PER_DAY

    def at(self, t: float) -> float:
        """The value of the fitted line at time ``t``."""
        return self.intercept + self.slope * t

    def format(self, unit: str = "") -> str:
        """The slope per day with its bounds, e.g. ``+1.1 ms/day (0.8 to 1.4, 95 %)``."""
        per_day = (self.per_day, self.low * _SECONDS_PER_DAY, self.high * _SECONDS_PER_DAY)
        # The interval's width is the uncertainty: the figures are rounded as
        # the Particle Data Group rounds a result to its error (two significant
        # digits on the width if they begin with 100 to 354, one from 355),
        # on the largest figure when the slope is unbounded, and to at most
        # five significant digits of the largest figure when the width is ~0.
        largest = max((abs(v) for v in per_day if math.isfinite(v) and v != 0.0), default=1.0)
        width = per_day[2] - per_day[1]
        scale = min(width, largest) if math.isfinite(width) and width > 0.0 else largest
        scale = max(scale, largest * 1e-3)
        exponent = math.floor(math.log10(scale))
        digits = 2 if scale / 10.0**exponent < 3.55 else 1
        decimals = max(0, digits - 1 - exponent)
        slope, low, high = (_fixed(v, decimals) for v in per_day)
        sign = "" if slope.startswith("-") else "+"
        suffix = f" {unit}/day" if unit else "/day"
        return f"{sign}{slope}{suffix} ({low} to {high}, {self.level * 100:g} %)"

    def __str__(self) -> str:
        return self.format()


def _fixed(value: float, decimals: int) -> str:
    """``value`` with ``decimals`` decimals, and no minus sign on a zero."""
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0.0 else text


def _real(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {number!r}")
    return number


def _points(series: Iterable[object]) -> list[tuple[float, float]]:
    """The validated ``(t, value)`` pairs, sorted by ``t``."""
    if isinstance(series, (str, bytes)):
        raise TypeError("series must be an iterable of (t, value) pairs, not a string")
    try:
        items = list(series)
    except TypeError:
        raise TypeError(
            f"series must be an iterable of (t, value) pairs, got {type(series).__name__}"
        ) from None
    points: list[tuple[float, float]] = []
    for i, item in enumerate(items):
        if isinstance(item, (str, bytes)) or not isinstance(item, Iterable):
            raise TypeError(
                f"point {i}: expected a (t, value) pair, got {type(item).__name__} {item!r}"
            )
        pair = tuple(item)
        if len(pair) != 2:
            raise ValueError(f"point {i}: expected a (t, value) pair, got {len(pair)} items")
        raw_t, raw_value = pair
        points.append((_real(raw_t, f"point {i}: t"), _real(raw_value, f"point {i}: value")))
    if len(points) < MIN_POINTS:
        raise ValueError(f"a trend needs at least {MIN_POINTS} points, got {len(points)}")
    if len(points) > MAX_POINTS:
        raise ValueError(
            f"a trend takes at most {MAX_POINTS} points (it compares every pair), "
            f"got {len(points)}: aggregate them first, e.g. hourly means"
        )
    points.sort()
    if points[0][0] == points[-1][0]:
        raise ValueError("all points have the same t: a trend needs at least two distinct times")
    return points


def _median(sorted_values: list[float]) -> float:
    size = len(sorted_values)
    middle = size // 2
    if size % 2:
        return sorted_values[middle]
    return (sorted_values[middle - 1] + sorted_values[middle]) / 2.0


def trend(series: Iterable[tuple[float, float]], *, level: float = 0.95) -> Trend:
    """The Theil-Sen trend of ``(t, value)`` points, with its slope's bounds at ``level``.

    ``t`` is in seconds (any origin, e.g. Unix time), in any order, possibly
    repeated; values are in any unit.  At least 3 points, at most
    :data:`MAX_POINTS`, not all at the same ``t``, every number finite;
    ``level`` in (0, 1).  Raises ``TypeError`` for what is not a pair of real
    numbers and ``ValueError`` for the rest.
    """
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise TypeError(f"level must be a real number, got {type(level).__name__} {level!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    level = float(level)
    points = _points(series)
    n = len(points)

    # Pairs with equal t carry no slope (Sen 1968 leaves them out).  The
    # points are sorted by t, so each later point has t_j >= t_i.
    slopes = [
        (y_j - y_i) / (t_j - t_i)
        for i, (t_i, y_i) in enumerate(points)
        for t_j, y_j in points[i + 1 :]
        if t_j != t_i
    ]
    slopes.sort()
    slope = _median(slopes)
    intercept = _median(sorted(y - slope * t for t, y in points))
    if not all(map(math.isfinite, (slopes[0], slopes[-1], intercept))):
        raise ValueError("the values or times are too large to subtract in floating point")

    # Confidence interval: P. K. Sen, "Estimates of the regression coefficient
    # based on Kendall's tau", JASA 63 (1968) 1379-1389, section 2.  With
    # N = len(slopes) and Kendall's S between t and the residuals, which under
    # the null hypothesis has variance (equation 2.6)
    #     V = [n(n-1)(2n+5) - sum over groups of tied t of g(g-1)(2g+5)] / 18,
    # C = z_{(1+level)/2} * sqrt(V), M1 = (N - C)/2, M2 = (N + C)/2, and the
    # bounds are the M1-th and (M2+1)-th smallest slopes (1-based), rounded to
    # the nearest rank.  Only ties in t enter: at the true slope the
    # residuals are continuous, whatever ties the raw values have.  A rank
    # outside 1..N means the data cannot bound the slope at this level.
    ties = sum(g * (g - 1) * (2 * g + 5) for g in Counter(t for t, _ in points).values())
    variance = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    spread = NormalDist().inv_cdf((1.0 + level) / 2.0) * math.sqrt(variance)
    total = len(slopes)
    lower_rank = round((total - spread) / 2.0)
    upper_rank = round((total + spread) / 2.0) + 1
    low = slopes[lower_rank - 1] if lower_rank >= 1 else -math.inf
    high = slopes[upper_rank - 1] if upper_rank <= total else math.inf
    return Trend(slope=slope, low=low, high=high, intercept=intercept, n=n, level=level)
