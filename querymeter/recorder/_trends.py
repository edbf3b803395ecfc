"""Trends of statements: which ones get slower day after day, and how fast.

Each statement's mean response time per step of the recorder's coarsest
ring, binned into at most ``max_points`` points, goes through
:func:`querymeter.trends.trend` (Theil-Sen with Sen's bounds).  A statement
is reported when the lower bound of its slope is above zero: it grows,
e.g. ``+1.1 ms/day over 30 days``.  The recorder must hold the history: its
default rings hold a day, so long trends need a coarse ring such as
``(3600.0, 24 * 90)`` (an hour per step for 90 days).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..trends import MAX_POINTS, MIN_POINTS, Trend, trend
from ._baseline import RecorderLike, Step, _count, _duration, _short, resolution_of, steps

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["NotEnoughHistory", "StatementTrend", "statement_trend", "trends"]

_NS_PER_S = 1_000_000_000
_SECONDS_PER_DAY = 86_400.0
# Bin widths that divide a day (or are whole days): a daily cycle then weighs
# the same in every bin and does not bend the line.
_BIN_WIDTHS = (
    1.0,
    2.0,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
    10800.0,
    14400.0,
    21600.0,
    28800.0,
    43200.0,
    86400.0,
)


class NotEnoughHistory(ValueError):
    """The recorder does not hold the history asked for (see the message for what it holds)."""


@dataclass(frozen=True, slots=True)
class StatementTrend:
    """A statement whose mean response time drifts.

    ``trend`` is the Theil-Sen trend of its mean response time (seconds)
    against Unix time (seconds): ``trend.per_day`` is in seconds per day.
    The points span ``start_wall_ns`` to ``end_wall_ns``; ``calls`` is the
    statement's calls over them.
    """

    fingerprint: str
    statement_id: str
    sample_sql: str
    trend: Trend
    start_wall_ns: int
    end_wall_ns: int
    calls: int

    @property
    def days(self) -> float:
        """The span of the series, days."""
        return (self.end_wall_ns - self.start_wall_ns) / _NS_PER_S / _SECONDS_PER_DAY

    @property
    def per_day(self) -> float:
        """The slope: the change of the mean response time per day, s/day."""
        return self.trend.per_day

    @property
    def start(self) -> float:
        """The fitted mean response time at the start of the series, s."""
        return self.trend.at(self.start_wall_ns / _NS_PER_S)

    @property
    def end(self) -> float:
        """The fitted mean response time at the end of the series, s."""
        return self.trend.at(self.end_wall_ns / _NS_PER_S)

    def in_milliseconds(self) -> Trend:
        """The trend with values in milliseconds (``format("ms")`` reads ``+1.1 ms/day``)."""
        t = self.trend
        return Trend(
            slope=t.slope * 1e3,
            low=t.low * 1e3,
            high=t.high * 1e3,
            intercept=t.intercept * 1e3,
            n=t.n,
            level=t.level,
        )

    def __str__(self) -> str:
        figures = self.in_milliseconds().format("ms")
        slope, _, bounds = figures.partition(" (")
        span = (
            f"{self.days:.0f} days" if self.days >= 2.0 else _duration(self.days * _SECONDS_PER_DAY)
        )
        return (
            f"[{self.statement_id}] {slope} over {span} "
            f"({bounds}, {self.start * 1e3:.3g} ms to {self.end * 1e3:.3g} ms: "
            f"{_short(self.sample_sql)}"
        )


def _bin_width(resolution: float, span: float, max_points: int) -> float:
    """The narrowest bin, no finer than a step, that divides a day and gives at most
    ``max_points`` bins over ``span`` seconds."""
    for width in _BIN_WIDTHS:
        if width >= resolution and span / width <= max_points - 1:
            return width
    days = math.ceil(span / _SECONDS_PER_DAY / (max_points - 1))
    return max(days * _SECONDS_PER_DAY, resolution)


def statement_series(
    held: Sequence[Step], fingerprint: str, width: float
) -> tuple[list[tuple[float, float]], int]:
    """The statement's mean response time per bin of ``width`` seconds, as ``(mid-bin Unix
    time s, mean s)`` points, oldest first, and its calls: Σtotal / Σcalls over the steps
    in each bin.  The bins are counted back from the end of the history, so that the
    newest is whole and the points do not depend on the hour at which it ends."""
    width_ns = round(width * _NS_PER_S)
    end_ns = held[-1].end_wall_ns if held else 0
    bins: dict[int, list[int]] = {}
    calls = 0
    for step in held:
        if step.statements is None:
            continue
        stats = step.statements.get(fingerprint)
        if stats is None or not stats.calls:
            continue
        key = (end_ns - (step.start_wall_ns + step.end_wall_ns) // 2) // width_ns
        figures = bins.setdefault(key, [0, 0])
        figures[0] += stats.calls
        figures[1] += stats.total_ns
        calls += stats.calls
    points = [
        ((end_ns - key * width_ns - width_ns / 2) / _NS_PER_S, total_ns / count / _NS_PER_S)
        for key, (count, total_ns) in sorted(bins.items(), reverse=True)
    ]
    return points, calls


def statement_trend(
    points: Sequence[tuple[float, float]], *, min_days: float, level: float
) -> Trend | None:
    """The trend of ``(Unix time s, mean s)`` points if they span ``min_days`` and it grows
    (its lower bound is above zero), else None."""
    if len(points) < MIN_POINTS or points[-1][0] - points[0][0] < min_days * _SECONDS_PER_DAY:
        return None
    found = trend(points, level=level)
    return found if found.low > 0.0 else None


def trends(
    recorder: RecorderLike,
    *,
    min_days: float = 7.0,
    level: float = 0.99,
    resolution: float | None = None,
    statements: int = 50,
    max_points: int = 500,
) -> list[StatementTrend]:
    """The statements whose mean response time grows, the fastest first.

    Reads the ring of ``resolution`` (default: the one spanning the longest
    time) and raises :class:`NotEnoughHistory` when it spans less than
    ``min_days`` days, saying what it holds.  Each of the top ``statements``
    (by total time) is binned into at most ``max_points`` points (bins that
    divide a day) and fitted with Theil-Sen; a statement is reported when
    its series spans ``min_days`` and the lower bound of its slope at
    confidence ``level`` is above zero.  At the default 0.99 a flat
    statement is reported about once in 200 (only growth is reported: one
    tail of a two-sided 99 % interval).
    """
    if isinstance(min_days, bool) or not isinstance(min_days, numbers.Real):
        raise TypeError(f"min_days must be a real number, got {type(min_days).__name__}")
    if not (math.isfinite(min_days) and min_days > 0.0):
        raise ValueError(f"min_days must be finite and > 0, got {min_days!r}")
    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise TypeError(f"level must be a real number, got {type(level).__name__}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    top = _count(statements, "statements")
    points_cap = _count(max_points, "max_points")
    if not MIN_POINTS <= points_cap <= MAX_POINTS:
        raise ValueError(f"max_points must be in {MIN_POINTS}..{MAX_POINTS}, got {max_points!r}")
    chosen = resolution_of(recorder, resolution)
    held = steps(recorder, chosen)
    span = (held[-1].end_wall_ns - held[0].start_wall_ns) / _NS_PER_S if held else 0.0
    if span < min_days * _SECONDS_PER_DAY:
        raise NotEnoughHistory(_not_enough(recorder, chosen, span, min_days))
    width = _bin_width(chosen, span, points_cap)
    totals: dict[str, int] = {}
    samples: dict[str, tuple[str, str]] = {}
    for step in held:
        if step.statements is None:
            continue
        for stats in step.statements.statements:
            totals[stats.fingerprint] = totals.get(stats.fingerprint, 0) + stats.total_ns
            samples.setdefault(stats.fingerprint, (stats.statement_id, stats.sample_sql))
    found = []
    for fingerprint in sorted(totals, key=lambda fp: (-totals[fp], fp))[:top]:
        points, calls = statement_series(held, fingerprint, width)
        grows = statement_trend(points, min_days=min_days, level=float(level))
        if grows is None:
            continue
        statement_id, sample_sql = samples[fingerprint]
        found.append(
            StatementTrend(
                fingerprint=fingerprint,
                statement_id=statement_id,
                sample_sql=sample_sql,
                trend=grows,
                start_wall_ns=round(points[0][0] * _NS_PER_S),
                end_wall_ns=round(points[-1][0] * _NS_PER_S),
                calls=calls,
            )
        )
    found.sort(key=lambda t: (-t.trend.slope, t.fingerprint))
    return found


def _not_enough(recorder: RecorderLike, resolution: float, span: float, min_days: float) -> str:
    rings = ", ".join(f"({r:g} s, {count})" for r, count in recorder.resolutions)
    longest = max(r * count for r, count in recorder.resolutions)
    advice = (
        f"its rings [{rings}] hold at most {_duration(longest)}: add a coarse ring, e.g. "
        f"FlightRecorder(resolutions=(*DEFAULT_RESOLUTIONS, (3600.0, 24 * 90))) for 90 days by hour"
        if longest < min_days * _SECONDS_PER_DAY
        else "let it run longer"
    )
    return (
        f"not enough history: the recorder holds {_duration(span)} at {resolution:g} s per step, "
        f"and min_days={min_days:g} asks for {_duration(min_days * _SECONDS_PER_DAY)}; {advice}"
    )
