"""Saturation forecasts: at the current growth of throughput, when is a limit reached?

The growth is the Theil-Sen trend of the logarithm of the daily throughput
(so ``+3 %/week`` is a constant rate, compounding), with its confidence
bounds.  The limits are throughputs:

* utilization ``U = X·S`` (Utilization Law) reaches ``utilization`` at
  ``X = utilization / S``, with the service time S of the last day;
* the pool of ``pool`` connections fills when the mean concurrency reaches
  it: ``X = pool / R`` (Little's Law, at the last day's response time R), or,
  where the recorder's steps hold enough concurrency levels for a Universal
  Scalability Law model, ``X = X_usl(min(pool, N*))``, which lets R grow with
  the load as the model says;
* the model's peak throughput ``X*``, past which more load only slows it.

A limit ``X_lim`` is reached after ``ln(X_lim / X_now) / r`` seconds at the
growth rate r (per second).  The earliest and latest come from the bounds of
r, each line turned about the middle of the history (the median day) rather
than about its end: the throughput now is itself an estimate, as uncertain
as the slope that carries the middle's level to the end.
"""

from __future__ import annotations

import itertools
import math
import numbers
from dataclasses import dataclass, field

from .. import usl
from ..trends import MIN_POINTS, Trend, trend
from ._baseline import RecorderLike, Step, _duration, _positive_real, resolution_of, steps
from ._trends import NotEnoughHistory, _not_enough

__all__ = ["Forecast", "Horizon", "daily_points", "forecast", "growth_of", "scalability_model"]

_NS_PER_S = 1_000_000_000
_SECONDS_PER_DAY = 86_400.0
_SECONDS_PER_WEEK = 7 * _SECONDS_PER_DAY
#: A day's bin needs steps covering at least this fraction of it to be a point.
MIN_DAY_COVERAGE = 0.5
#: Fewest steps (with queries) for a USL model.
MIN_USL_STEPS = 6
#: Fewest distinct concurrency levels (at least 5 % apart) for a USL model.
MIN_USL_LEVELS = 4
#: The highest concurrency level must be at least this multiple of the lowest.
MIN_USL_RANGE = 1.5
#: A USL model must explain at least this share of the throughput's variance.
MIN_USL_R_SQUARED = 0.8


@dataclass(frozen=True, slots=True)
class Horizon:
    """When a limit is reached at the current growth.

    ``what``: ``"utilization"``, ``"pool"`` or ``"peak"``; ``phrases`` say it
    in words (reached in the future, already, never).  ``throughput`` is the
    throughput at which the limit is reached (queries/s).  ``seconds`` is
    the estimate from now (the end of the recorder's history); ``earliest``
    and ``latest`` come from the growth's upper and lower bounds (each line
    through the middle of the history, so the level now is uncertain too).  ``0``
    means it is reached already; ``math.inf`` that it is not reached at that
    growth (flat or shrinking).
    """

    what: str
    throughput: float
    seconds: float
    earliest: float
    latest: float
    phrases: tuple[str, str, str] = field(repr=False)

    def __str__(self) -> str:
        future, already, never = self.phrases
        if self.seconds == 0.0:
            return already
        if math.isinf(self.seconds):
            if math.isinf(self.earliest):
                return never
            return f"{never} (at its upper bound, in {_duration(self.earliest)})"
        latest = "never" if math.isinf(self.latest) else _duration(self.latest)
        return (
            f"{future} in about {_duration(self.seconds)} ({_duration(self.earliest)} to {latest})"
        )


@dataclass(frozen=True, slots=True)
class Forecast:
    """Where the load is going, and when it meets its limits (see :func:`forecast`).

    ``growth``: the trend of ln(daily throughput) against Unix time (s), its
    slope the growth rate per second.  ``throughput`` (fitted, now),
    ``service_time``, ``response_time`` (the last day's, s), ``utilization``
    and ``concurrency`` (now, from them) describe the present.  ``model`` is
    the USL model when the steps held enough concurrency levels, else None.
    ``horizons``: the utilization's, then the pool's (when ``pool`` was
    given), then the model's peak (when there is a model with coherency, kappa > 0).
    """

    growth: Trend
    days: float
    throughput: float
    service_time: float
    response_time: float
    utilization: float
    concurrency: float
    model: usl.Model | None
    horizons: tuple[Horizon, ...]

    @property
    def growth_per_week(self) -> float:
        """Relative growth of the throughput per week (0.03 is +3 %/week)."""
        return math.expm1(self.growth.slope * _SECONDS_PER_WEEK)

    @property
    def growth_per_week_bounds(self) -> tuple[float, float]:
        """The bounds of :attr:`growth_per_week` at the growth's confidence level."""
        low, high = self.growth.low, self.growth.high
        return (
            math.expm1(low * _SECONDS_PER_WEEK) if math.isfinite(low) else -1.0,
            math.expm1(high * _SECONDS_PER_WEEK) if math.isfinite(high) else math.inf,
        )

    def horizon(self, what: str) -> Horizon | None:
        """The horizon of ``"utilization"``, ``"pool"`` or ``"peak"``, None if not forecast."""
        return next((h for h in self.horizons if h.what == what), None)

    def __str__(self) -> str:
        low, high = self.growth_per_week_bounds
        head = (
            f"at {self.growth_per_week * 100:+.1f} %/week ({low * 100:+.1f} to "
            f"{high * 100:+.1f} %, {self.growth.level * 100:g} %, over {self.days:.0f} days)"
        )
        return head + ", " + "; ".join(str(h) for h in self.horizons)


def daily_points(held: list[Step]) -> list[tuple[float, float]]:
    """(mid-day Unix time in s, ln(throughput)) per day, oldest first.

    The days are counted back from the end of the history, so that the
    newest is a whole day and the points do not depend on the hour at which
    the history ends.  Days covered by steps over less than MIN_DAY_COVERAGE
    of their length, and days without a query, are left out.
    """
    day_ns = round(_SECONDS_PER_DAY * _NS_PER_S)
    end_ns = held[-1].end_wall_ns if held else 0
    days: dict[int, list[int]] = {}
    for step in held:
        key = (end_ns - (step.start_wall_ns + step.end_wall_ns) // 2) // day_ns
        figures = days.setdefault(key, [0, 0])
        figures[0] += step.interval.queries
        figures[1] += step.interval.duration_ns
    points = [
        (
            (end_ns - key * day_ns - day_ns / 2) / _NS_PER_S,
            math.log(queries * _NS_PER_S / duration_ns),
        )
        for key, (queries, duration_ns) in sorted(days.items(), reverse=True)
        if queries > 0 and duration_ns >= MIN_DAY_COVERAGE * day_ns
    ]
    return points


def growth_of(held: list[Step], *, level: float) -> Trend:
    """The Theil-Sen trend of :func:`daily_points`; raises NotEnoughHistory with fewer
    than 3 days."""
    points = daily_points(held)
    if len(points) < MIN_POINTS:
        raise NotEnoughHistory(
            f"not enough history: {len(points)} days with queries covered over "
            f"{MIN_DAY_COVERAGE:.0%}; a growth needs at least {MIN_POINTS}"
        )
    return trend(points, level=level)


def scalability_model(held: list[Step]) -> usl.Model | None:
    """A USL model of the steps' (concurrency, throughput) points, or None when they hold
    too few distinct concurrency levels or the model does not fit them."""
    points = [
        (n, x)
        for step in held
        for n, x in [(step.interval.concurrency, step.interval.throughput)]
        if n is not None and x is not None and n > 0.0 and x > 0.0
    ]
    if len(points) < MIN_USL_STEPS:
        return None
    levels = sorted(n for n, _ in points)
    distinct = 1 + sum(1 for a, b in itertools.pairwise(levels) if b > a * 1.05)
    if distinct < MIN_USL_LEVELS or levels[-1] < MIN_USL_RANGE * levels[0]:
        return None
    try:
        model = usl.fit(points)
    except ValueError:
        return None
    if not model.converged or model.r_squared is None or model.r_squared < MIN_USL_R_SQUARED:
        return None
    return model


@dataclass(frozen=True, slots=True)
class _Growth:
    """The growth's line, where it is read (now) and the point its bounds turn about."""

    trend: Trend
    now_s: float
    pivot_s: float

    def after(self, limit: float, rate: float) -> float:
        """Seconds from now until ln(throughput) reaches ln(limit) on the line of slope
        ``rate`` through the pivot (0 if above it now, inf if never)."""
        if math.isinf(rate):
            return 0.0 if rate > 0.0 else math.inf
        pivot = self.trend.at(self.pivot_s)
        needed = math.log(limit) - (pivot + rate * (self.now_s - self.pivot_s))
        if needed <= 0.0:
            return 0.0
        return needed / rate if rate > 0.0 else math.inf


def _horizon(
    what: str, phrases: tuple[str, str, str], limit: float, now: float, growth: _Growth
) -> Horizon:
    if now >= limit:
        return Horizon(what, limit, 0.0, 0.0, 0.0, phrases)
    seconds = math.log(limit / now) / growth.trend.slope if growth.trend.slope > 0.0 else math.inf
    earliest = min(seconds, growth.after(limit, growth.trend.high))
    latest = max(seconds, growth.after(limit, growth.trend.low))
    return Horizon(what, limit, seconds, earliest, latest, phrases)


def forecast(
    recorder: RecorderLike,
    *,
    utilization: float = 0.8,
    pool: int | None = None,
    resolution: float | None = None,
    min_days: float = 7.0,
    level: float = 0.95,
) -> Forecast:
    """When utilization (and the pool, and the USL peak) would be reached at the current growth.

    Reads the ring of ``resolution`` (default: the one spanning the longest
    time); raises :class:`NotEnoughHistory` when it spans less than
    ``min_days`` days.  ``utilization``: the level to forecast, in (0, 1].
    ``pool``: the pool's size in connections, to forecast when the mean
    concurrency fills it.  ``level``: the confidence level of the growth's
    bounds, hence of the horizons' earliest and latest.
    """
    target = _positive_real(utilization, "utilization")
    if target > 1.0:
        raise ValueError(f"utilization must be in (0, 1], got {utilization!r}")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int)):
        raise TypeError(f"pool must be an int (connections) or None, got {type(pool).__name__}")
    if pool is not None and pool < 1:
        raise ValueError(f"pool must be at least 1 connection, got {pool!r}")
    days = _positive_real(min_days, "min_days")
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise TypeError(f"level must be a real number, got {type(level).__name__}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    chosen = resolution_of(recorder, resolution)
    held = steps(recorder, chosen)
    span = (held[-1].end_wall_ns - held[0].start_wall_ns) / _NS_PER_S if held else 0.0
    if span < days * _SECONDS_PER_DAY:
        raise NotEnoughHistory(_not_enough(recorder, chosen, span, days))
    growth = growth_of(held, level=float(level))

    # The present: the fitted throughput now, the last day's service and response times.
    end_ns = held[-1].end_wall_ns
    recent = [s for s in held if s.end_wall_ns > end_ns - round(_SECONDS_PER_DAY * _NS_PER_S)]
    queries = sum(s.interval.queries for s in recent)
    if queries == 0:
        raise NotEnoughHistory("no query completed in the last day: no service time to forecast")
    service_time = sum(s.interval.busy_ns for s in recent) / queries / _NS_PER_S
    response_time = sum(s.interval.total_ns for s in recent) / queries / _NS_PER_S
    throughput = math.exp(growth.at(end_ns / _NS_PER_S))
    times = sorted(t for t, _ in daily_points(held))
    pivot_s = (times[(len(times) - 1) // 2] + times[len(times) // 2]) / 2
    line = _Growth(growth, end_ns / _NS_PER_S, pivot_s)
    model = scalability_model(held)

    horizons = []
    if service_time > 0.0:
        level_text = f"{target * 100:g} %"
        phrases = (
            f"utilization reaches {level_text}",
            f"utilization is at {level_text} or above already",
            f"utilization does not reach {level_text} at this growth",
        )
        horizons.append(_horizon("utilization", phrases, target / service_time, throughput, line))
    if pool is not None:
        if model is not None:
            filled = min(float(pool), model.peak_concurrency)
            limit = model.max_throughput if math.isinf(filled) else model.throughput(filled)
        else:
            limit = pool / response_time if response_time > 0.0 else math.inf
        if math.isfinite(limit):
            name = f"the pool ({pool} connection{'' if pool == 1 else 's'})"
            phrases = (
                f"{name} saturates",
                f"{name} is saturated already",
                f"{name} does not saturate at this growth",
            )
            horizons.append(_horizon("pool", phrases, limit, throughput, line))
    # Only a model with coherency has a peak; with kappa = 0 (Amdahl) throughput
    # only approaches lam / sigma as the concurrency grows without bound.
    if model is not None and model.kappa > 0.0:
        peak = (
            f"the USL peak of {model.max_throughput:.4g}/s "
            f"(at a concurrency of {model.peak_concurrency:.3g})"
        )
        phrases = (
            f"throughput reaches {peak}",
            f"throughput is at {peak} already",
            f"throughput does not reach {peak} at this growth",
        )
        horizons.append(_horizon("peak", phrases, model.max_throughput, throughput, line))
    return Forecast(
        growth=growth,
        days=span / _SECONDS_PER_DAY,
        throughput=throughput,
        service_time=service_time,
        response_time=response_time,
        utilization=throughput * service_time,
        concurrency=throughput * response_time,
        model=model,
        horizons=tuple(horizons),
    )
