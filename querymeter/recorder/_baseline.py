"""Baselines and anomalies: what a metric usually is, and the steps that were not usual.

A baseline is robust: the median and the median absolute deviation (MAD) of
each metric over the recorder's steps, so that an incident inside the window
neither moves the centre nor widens the band much (both have a breakdown
point of 50 %).  Where the window holds a day of data, each hour of the day
(UTC) gets its own band, so that the morning peak is not an anomaly every
morning.  An anomaly is a step whose value lies outside its band, with the
markers just before it: the "what changed?" of an incident.
"""

from __future__ import annotations

import datetime
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ..markers import Marker
    from ..readings import Interval
    from ..statements import StatementsInterval

__all__ = [
    "METRICS",
    "Anomaly",
    "Band",
    "Baseline",
    "MetricBaseline",
    "StatementBaseline",
    "anomalies",
    "baseline",
]

_NS_PER_S = 1_000_000_000
_NS_PER_HOUR = 3_600 * _NS_PER_S
_SECONDS_PER_DAY = 86_400.0

#: The metrics of a baseline, and their units.
METRICS: Mapping[str, str] = MappingProxyType(
    {
        "response_time": "s",
        "throughput": "/s",
        "error_rate": "/s",
        "utilization": "",
    }
)

#: Fewest values a band is made of; fewer give no band (and no anomaly).
MIN_STEPS = 10
#: Fewest values an hour of the day needs for a band of its own.
MIN_STEPS_PER_HOUR = 5
#: The MAD of a normal distribution is this fraction of its standard deviation:
#: 1.4826 * MAD estimates sigma (Rousseeuw and Croux 1993).
MAD_TO_SIGMA = 1.482602218505602
#: Where more than half the values are equal (MAD = 0), the mean absolute
#: deviation times sqrt(pi/2) estimates sigma instead (the usual fallback of
#: the modified z-score; the mean absolute deviation of a normal distribution
#: is sigma * sqrt(2/pi)).
MEANAD_TO_SIGMA = 1.2533141373155003
#: Most markers an anomaly lists (the nearest before it).
MAX_MARKERS = 5


class RecorderLike(Protocol):
    """What these functions read of a FlightRecorder (see querymeter.recorder)."""

    @property
    def resolutions(self) -> tuple[tuple[float, int], ...]: ...

    def timeline(self, since: Any = None, resolution: float | None = None) -> list[Interval]: ...

    def statement_timeline(
        self, since: Any = None, resolution: float | None = None
    ) -> Sequence[StatementsInterval | None]: ...

    def step_wall_ns(self, interval: Interval) -> int: ...

    def markers(self, since: Any = None) -> list[Marker]: ...

    def add_step_listener(self, fn: Callable[[Any, float], None]) -> Callable[[], None]: ...


# --- robust statistics over plain numbers --------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    ordered = sorted(values)
    size = len(ordered)
    middle = size // 2
    if size % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


@dataclass(frozen=True, slots=True)
class Band:
    """The usual range of a metric: ``median ± width * scale``, from ``steps`` values.

    ``mad`` is the median absolute deviation from the median; ``scale`` the
    robust estimate of the standard deviation, ``1.4826 * mad``, or where
    ``mad`` is 0 (more than half the values equal) ``1.2533 *`` the mean
    absolute deviation; 0 when all values are equal, and then any other
    value is outside.  ``low`` stops at 0 (every metric is >= 0).  Units
    are the metric's.
    """

    median: float
    mad: float
    scale: float
    low: float
    high: float
    steps: int
    width: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within the band (bounds included)."""
        return self.low <= value <= self.high

    def score(self, value: float) -> float:
        """How many scales ``value`` lies from the median (a robust z-score), signed."""
        deviation = value - self.median
        if self.scale > 0.0:
            return deviation / self.scale
        return 0.0 if deviation == 0.0 else math.copysign(math.inf, deviation)


def band(values: Sequence[float], *, width: float = 4.0) -> Band | None:
    """The band of ``values`` (see :class:`Band`), None for fewer than MIN_STEPS values."""
    if len(values) < MIN_STEPS:
        return None
    return _band_of(values, width)


@dataclass(frozen=True, slots=True)
class MetricBaseline:
    """The baseline of one metric: its band over the whole window, and by hour of day.

    ``by_hour`` maps an hour of the day (0 to 23, UTC) to its band; it is
    empty unless the window spans a day, and an hour with fewer than
    MIN_STEPS_PER_HOUR values has no band of its own (the overall band
    applies).  ``unit``: ``"s"``, ``"/s"`` or ``""`` (a fraction).
    """

    metric: str
    unit: str
    overall: Band
    by_hour: Mapping[int, Band] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def median(self) -> float:
        """The median over the whole window."""
        return self.overall.median

    @property
    def mad(self) -> float:
        """The median absolute deviation over the whole window."""
        return self.overall.mad

    def band(self, wall_ns: int | None = None) -> Band:
        """The band that applies at Unix time ``wall_ns`` (its hour's, else the overall one)."""
        if wall_ns is None or not self.by_hour:
            return self.overall
        return self.by_hour.get(_hour(wall_ns), self.overall)


@dataclass(frozen=True, slots=True)
class StatementBaseline:
    """The baseline of one top statement: its mean response time and its calls per second.

    Each is over the steps in which the statement ran (a step without calls
    has no mean response time; a step's reading may list only its top
    statements).  ``calls`` and ``total_ns`` are the statement's over the window.
    """

    fingerprint: str
    statement_id: str
    sample_sql: str
    calls: int
    total_ns: int
    response_time: MetricBaseline | None
    throughput: MetricBaseline | None


@dataclass(frozen=True, slots=True)
class Baseline:
    """Robust baselines of a recorder's steps at one resolution (see :func:`baseline`).

    ``metrics`` maps each metric of METRICS that has at least MIN_STEPS values
    to its :class:`MetricBaseline`; ``statements`` maps the fingerprints of the
    top statements (by total time in the window) to theirs.  ``start_wall_ns``
    and ``end_wall_ns`` bound the window (Unix time, ns); ``steps`` is the
    number of steps in it; ``by_hour`` whether it spans a day, so that the
    bands are by hour of the day.
    """

    resolution: float
    start_wall_ns: int
    end_wall_ns: int
    steps: int
    width: float
    by_hour: bool
    metrics: Mapping[str, MetricBaseline]
    statements: Mapping[str, StatementBaseline]

    @property
    def response_time(self) -> MetricBaseline | None:
        """Mean response time R per step, s."""
        return self.metrics.get("response_time")

    @property
    def throughput(self) -> MetricBaseline | None:
        """Throughput X per step, queries/s."""
        return self.metrics.get("throughput")

    @property
    def error_rate(self) -> MetricBaseline | None:
        """Error rate E per step, errors/s."""
        return self.metrics.get("error_rate")

    @property
    def utilization(self) -> MetricBaseline | None:
        """Utilization U per step, 0..1."""
        return self.metrics.get("utilization")

    @property
    def days(self) -> float:
        """The window's span, days."""
        return (self.end_wall_ns - self.start_wall_ns) / _NS_PER_S / _SECONDS_PER_DAY

    def __str__(self) -> str:
        lines = [
            f"baseline over {_duration(self.days * _SECONDS_PER_DAY)} "
            f"({self.steps} steps of {self.resolution:g} s"
            f"{', by hour of day' if self.by_hour else ''}):"
        ]
        for name, metric in self.metrics.items():
            overall = metric.overall
            lines.append(
                f"  {name}: median {_value(overall.median, metric.unit)}, "
                f"MAD {_value(overall.mad, metric.unit)}, "
                f"band {_value(overall.low, metric.unit)} to {_value(overall.high, metric.unit)}"
            )
        for statement in self.statements.values():
            rt = statement.response_time
            if rt is not None:
                lines.append(
                    f"  [{statement.statement_id}] median {_value(rt.median, 's')}, "
                    f"MAD {_value(rt.mad, 's')}: {_short(statement.sample_sql)}"
                )
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A step whose value of one metric lies outside its band.

    ``metric`` is a name of METRICS; ``statement`` the fingerprint for a
    statement's own metric, else None.  ``value`` is the step's figure,
    ``band`` the band that applied (its hour's where the baseline is by hour),
    ``score`` the robust z-score ``(value - median) / scale``.  The step runs
    from ``start_wall_ns`` to ``end_wall_ns`` (Unix time, ns).  ``markers``
    are the change markers of the ``lookback`` seconds before the step's end
    (at most MAX_MARKERS, the nearest, oldest first): what changed just before.
    """

    metric: str
    statement: str | None
    value: float
    band: Band
    score: float
    start_wall_ns: int
    end_wall_ns: int
    resolution: float
    interval: Interval = field(repr=False, compare=False)
    markers: tuple[Marker, ...] = ()

    @property
    def direction(self) -> Literal["above", "below"]:
        """Whether the value is above or below the band."""
        return "above" if self.value > self.band.high else "below"

    def __str__(self) -> str:
        unit = METRICS[self.metric]
        when = _utc(self.end_wall_ns)
        what = (
            self.metric
            if self.statement is None
            else f"{self.metric} of {_short(self.statement, 50)!r}"
        )
        text = (
            f"{when}: {what} {_value(self.value, unit)} {self.direction} its band "
            f"{_value(self.band.low, unit)} to {_value(self.band.high, unit)} "
            f"(median {_value(self.band.median, unit)}, score {self.score:+.1f})"
        )
        if self.markers:
            changes = ", ".join(
                f"{m.label!r} {_duration((self.end_wall_ns - m.wall_ns) / _NS_PER_S)} before"
                for m in self.markers
            )
            text += f"; after {changes}"
        return text


# --- reading the recorder --------------------------------------------------------------


def _positive_real(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{what} must be finite and > 0, got {value!r}")
    return number


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value!r}")
    return value


def resolution_of(recorder: RecorderLike, resolution: object) -> float:
    """The resolution to read: the one asked for (it must be one of the recorder's) or,
    by default, the one whose ring spans the longest time (the finer on a tie)."""
    resolutions = [float(r) for r, _ in recorder.resolutions]
    if resolution is not None:
        asked = _positive_real(resolution, "resolution")
        if asked not in resolutions:
            raise ValueError(
                f"resolution {resolution!r} is not one of the recorder's: "
                f"{', '.join(f'{r:g}' for r in resolutions)}"
            )
        return asked
    best = resolutions[0]
    best_span = -1.0
    for candidate in sorted(resolutions):
        span = candidate * len(recorder.timeline(resolution=candidate))
        if span > best_span:
            best, best_span = candidate, span
    return best


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the recorder, with its wall times (ns) and its statements."""

    interval: Interval
    start_wall_ns: int
    end_wall_ns: int
    statements: StatementsInterval | None


def steps(recorder: RecorderLike, resolution: float, window: float | None = None) -> list[Step]:
    """The recorder's steps at ``resolution``, oldest first; the last ``window`` seconds only."""
    intervals = recorder.timeline(resolution=resolution)
    readings = recorder.statement_timeline(resolution=resolution)
    # The recorder's thread may close a step between the two reads: pair them
    # by the step's end (wall ns) rather than by position.
    by_end: dict[int, StatementsInterval] = {}
    for reading in readings:
        if reading is not None:
            by_end[reading.end_wall_ns] = reading
    result = []
    for interval in intervals:
        end = recorder.step_wall_ns(interval)
        result.append(Step(interval, end - interval.duration_ns, end, by_end.get(end)))
    if window is not None and result:
        cutoff = result[-1].end_wall_ns - round(window * _NS_PER_S)
        result = [step for step in result if step.start_wall_ns >= cutoff]
    return result


def _metric_value(interval: Interval, metric: str) -> float | None:
    value: float | None = getattr(interval, metric)
    return value


def _metric_baseline(
    metric: str, points: list[tuple[int, float]], *, width: float, hourly: bool
) -> MetricBaseline | None:
    """The baseline of ``(mid-step wall ns, value)`` points."""
    overall = band([v for _, v in points], width=width)
    if overall is None:
        return None
    by_hour: dict[int, Band] = {}
    if hourly:
        grouped: dict[int, list[float]] = {}
        for wall_ns, value in points:
            grouped.setdefault(_hour(wall_ns), []).append(value)
        for hour, values in sorted(grouped.items()):
            if len(values) >= MIN_STEPS_PER_HOUR:
                by_hour[hour] = _band_of(values, width)
    return MetricBaseline(metric, METRICS[metric], overall, MappingProxyType(by_hour))


def _band_of(values: Sequence[float], width: float) -> Band:
    centre = median(values)
    deviations = [abs(v - centre) for v in values]
    mad = median(deviations)
    scale = (
        MAD_TO_SIGMA * mad if mad > 0.0 else MEANAD_TO_SIGMA * math.fsum(deviations) / len(values)
    )
    # Every metric is >= 0: a band reaching below 0 stops at 0.
    low = max(centre - width * scale, 0.0)
    return Band(centre, mad, scale, low, centre + width * scale, len(values), width)


def _mid(step: Step) -> int:
    return (step.start_wall_ns + step.end_wall_ns) // 2


def baseline(
    recorder: RecorderLike,
    *,
    resolution: float | None = None,
    window: float | None = None,
    statements: int = 10,
    width: float = 4.0,
) -> Baseline:
    """Robust baselines of the recorder's steps: per metric and per top statement.

    ``resolution``: which ring (seconds per step); by default the one that
    spans the longest time.  ``window``: the last that many seconds (default:
    all the ring holds).  ``statements``: how many top statements (by total
    time in the window) get a baseline of their own (0 for none).
    ``width``: the band is ``median ± width * scale`` (scale ≈ the standard
    deviation, from the MAD).  Where the window spans a day or more, each hour
    of the day (UTC) gets its own band.
    """
    chosen = resolution_of(recorder, resolution)
    if window is not None:
        window = _positive_real(window, "window")
    top = _count(statements, "statements")
    width = _positive_real(width, "width")
    held = steps(recorder, chosen, window)
    return _baseline_of(held, chosen, top, width)


def _baseline_of(held: list[Step], resolution: float, top: int, width: float) -> Baseline:
    if not held:
        return Baseline(
            resolution, 0, 0, 0, width, False, MappingProxyType({}), MappingProxyType({})
        )
    start, end = held[0].start_wall_ns, held[-1].end_wall_ns
    hourly = end - start >= 24 * _NS_PER_HOUR
    metrics: dict[str, MetricBaseline] = {}
    for metric in METRICS:
        points = []
        for step in held:
            value = _metric_value(step.interval, metric)
            if value is not None:
                points.append((_mid(step), value))
        made = _metric_baseline(metric, points, width=width, hourly=hourly)
        if made is not None:
            metrics[metric] = made
    return Baseline(
        resolution=resolution,
        start_wall_ns=start,
        end_wall_ns=end,
        steps=len(held),
        width=width,
        by_hour=hourly,
        metrics=MappingProxyType(metrics),
        statements=MappingProxyType(_statement_baselines(held, top, width, hourly)),
    )


def _statement_baselines(
    held: list[Step], top: int, width: float, hourly: bool
) -> dict[str, StatementBaseline]:
    if top == 0:
        return {}
    totals: dict[str, list[int]] = {}  # fingerprint -> [calls, total_ns]
    samples: dict[str, tuple[str, str]] = {}  # fingerprint -> (statement_id, sample_sql)
    for step in held:
        if step.statements is None:
            continue
        for stats in step.statements.statements:
            if stats.calls:
                figures = totals.setdefault(stats.fingerprint, [0, 0])
                figures[0] += stats.calls
                figures[1] += stats.total_ns
                if stats.fingerprint not in samples:
                    samples[stats.fingerprint] = (stats.statement_id, stats.sample_sql)
    chosen = sorted(totals, key=lambda fp: (-totals[fp][1], fp))[:top]
    result: dict[str, StatementBaseline] = {}
    for fingerprint in chosen:
        response: list[tuple[int, float]] = []
        rate: list[tuple[int, float]] = []
        for step in held:
            row = None if step.statements is None else step.statements.get(fingerprint)
            if row is None or not row.calls:
                continue
            response.append((_mid(step), row.total_ns / row.calls / _NS_PER_S))
            duration = step.interval.duration
            if duration > 0.0:
                rate.append((_mid(step), row.calls / duration))
        calls, total_ns = totals[fingerprint]
        statement_id, sample_sql = samples[fingerprint]
        result[fingerprint] = StatementBaseline(
            fingerprint=fingerprint,
            statement_id=statement_id,
            sample_sql=sample_sql,
            calls=calls,
            total_ns=total_ns,
            response_time=_metric_baseline("response_time", response, width=width, hourly=hourly),
            throughput=_metric_baseline("throughput", rate, width=width, hourly=hourly),
        )
    return result


def anomalies(
    recorder: RecorderLike,
    *,
    resolution: float | None = None,
    window: float | None = None,
    since: float | None = None,
    statements: int = 10,
    width: float = 4.0,
    lookback: float = 3600.0,
) -> list[Anomaly]:
    """The steps outside their band, oldest first, each with the markers just before it.

    The baseline is :func:`baseline` with the same ``resolution``, ``window``,
    ``statements`` and ``width``; the steps checked are those of the window
    that end after ``since`` (Unix time, s; default: all).  Each metric of
    each step is checked (above or below its band: a sudden drop of
    throughput is as much a symptom as a surge of response time), and each
    top statement's mean response time.  ``lookback``: markers within that
    many seconds before a step's end are listed with it.
    """
    chosen = resolution_of(recorder, resolution)
    if window is not None:
        window = _positive_real(window, "window")
    top = _count(statements, "statements")
    width = _positive_real(width, "width")
    lookback = _positive_real(lookback, "lookback")
    since_ns = None
    if since is not None:
        if isinstance(since, bool) or not isinstance(since, numbers.Real):
            raise TypeError(f"since must be a Unix time in seconds, got {type(since).__name__}")
        since_ns = round(float(since) * _NS_PER_S)
    return anomalies_since(recorder, chosen, window, top, width, lookback, since_ns)


def anomalies_since(
    recorder: RecorderLike,
    resolution: float,
    window: float | None,
    top: int,
    width: float,
    lookback: float,
    since_ns: int | None,
) -> list[Anomaly]:
    """:func:`anomalies` with checked arguments, and ``since`` in Unix ns."""
    held = steps(recorder, resolution, window)
    reference = _baseline_of(held, resolution, top, width)
    checked = held if since_ns is None else [s for s in held if s.end_wall_ns > since_ns]
    return outside(reference, checked, recorder.markers(), lookback=lookback)


def outside(
    reference: Baseline, checked: Iterable[Step], markers: Sequence[Marker], *, lookback: float
) -> list[Anomaly]:
    """The anomalies of ``checked`` steps against ``reference``, with their markers."""
    ordered = sorted(markers, key=lambda m: m.wall_ns)
    lookback_ns = round(lookback * _NS_PER_S)
    found: list[Anomaly] = []
    for step in checked:
        before = tuple(
            m for m in ordered if step.end_wall_ns - lookback_ns <= m.wall_ns <= step.end_wall_ns
        )[-MAX_MARKERS:]
        for metric, metric_baseline in reference.metrics.items():
            value = _metric_value(step.interval, metric)
            if value is not None:
                _check(found, metric, None, value, metric_baseline, step, reference, before)
        if step.statements is None:
            continue
        for fingerprint, statement in reference.statements.items():
            stats = step.statements.get(fingerprint)
            if statement.response_time is None or stats is None or not stats.calls:
                continue
            value = stats.total_ns / stats.calls / _NS_PER_S
            _check(
                found,
                "response_time",
                fingerprint,
                value,
                statement.response_time,
                step,
                reference,
                before,
            )
    return found


def _check(
    found: list[Anomaly],
    metric: str,
    fingerprint: str | None,
    value: float,
    metric_baseline: MetricBaseline,
    step: Step,
    reference: Baseline,
    markers: tuple[Marker, ...],
) -> None:
    applies = metric_baseline.band(_mid(step))
    if applies.contains(value):
        return
    found.append(
        Anomaly(
            metric=metric,
            statement=fingerprint,
            value=value,
            band=applies,
            score=applies.score(value),
            start_wall_ns=step.start_wall_ns,
            end_wall_ns=step.end_wall_ns,
            resolution=reference.resolution,
            interval=step.interval,
            markers=markers,
        )
    )


# --- formatting ---------------------------------------------------------------------------


def _hour(wall_ns: int) -> int:
    """The hour of the day, UTC, of a Unix time in ns."""
    return (wall_ns // _NS_PER_HOUR) % 24


def _utc(wall_ns: int) -> str:
    moment = datetime.datetime.fromtimestamp(wall_ns / _NS_PER_S, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3g} s" if abs(value) >= 1.0 else f"{value * 1000:.3g} ms"
    if unit == "":
        return f"{value * 100:.3g} %"
    return f"{value:.4g}{unit}"


def _duration(seconds: float) -> str:
    """A duration in the largest unit that keeps it above 1: ``42 s``, ``3.5 min``, ``2.1 days``."""
    for unit, size in (("weeks", 604_800.0), ("days", 86_400.0), ("h", 3_600.0), ("min", 60.0)):
        if abs(seconds) >= size * (2.0 if unit in ("weeks", "days") else 1.0):
            return (
                f"{seconds / size:.2g} {unit}"
                if seconds / size < 10
                else f"{seconds / size:.0f} {unit}"
            )
    return f"{seconds:.2g} s" if abs(seconds) < 10 else f"{seconds:.0f} s"


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
