"""health(): a quick assessment of the database as the application sees it, with a severity.

It gathers, in this order: can we connect (a read-only ``SELECT 1`` through
the engine's pool, only when a connection is free), the error ratio and the
response time of a recent window against a baseline, the pools' saturation,
the oldest query still in flight, the last change markers, and the initial
scope of the trouble (which statements, tables and tags hold the errors and
the latency excess).  The triage table (``_rules``) turns the figures into
SEV-1, SEV-2, SEV-3 or OK, naming the rule.

Nothing here raises into the application beyond the validation of its own
arguments: a figure that cannot be read is left out and said so in ``notes``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import _faults
from .._pools import pool_limit, pool_snapshots
from ..markers import Marker, markers
from ..meter import Meter, meter_argument
from ..readings import Interval, Snapshot
from ..statements import StatementsInterval, StatementsSnapshot
from ._connect import Connectivity, check_connection
from ._rules import Figures, Finding, findings, severity_of
from ._scope import ScopeBreakdown, StatementFigures, breakdown

__all__ = ["Baseline", "Health", "PoolHealth", "health"]

#: The window a recorder's steps give by default, s.
RECORDED_WINDOW_S = 60.0
#: The window watched when there is no recorder, s.
WATCHED_WINDOW_S = 1.0
#: The longest window health() watches by sleeping, s.
MAX_WATCH_S = 60.0
#: Markers listed at most.
MAX_MARKERS = 5


@dataclass(frozen=True, slots=True)
class Baseline:
    """What "normal" was: median (and MAD, where there are steps) of the figures.

    From the flight recorder's steps before the window (robust: median and
    median absolute deviation), or, with no recorder, the meter's own figures
    from its start to the window (means, no spread).
    """

    source: str
    response_time: float | None
    response_time_mad: float | None
    error_ratio: float | None
    error_ratio_mad: float | None
    steps: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "response_time": self.response_time,
            "response_time_mad": self.response_time_mad,
            "error_ratio": self.error_ratio,
            "error_ratio_mad": self.error_ratio_mad,
            "steps": self.steps,
        }


@dataclass(frozen=True, slots=True)
class PoolHealth:
    """One connection pool now: how full it is and who waits."""

    name: str
    in_use: int
    #: Connections it may open at most; None without a limit.
    limit: int | None
    waiting: int
    timeouts: int

    @property
    def saturation(self) -> float | None:
        """Connections in use over the limit, 0..1; None without a limit."""
        if not self.limit:
            return None
        return self.in_use / self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in_use": self.in_use,
            "limit": self.limit,
            "waiting": self.waiting,
            "timeouts": self.timeouts,
            "saturation": self.saturation,
        }


@dataclass(frozen=True, slots=True)
class Health:
    """The assessment; ``str(health)`` is a short summary that starts with the severity."""

    #: "SEV-1", "SEV-2", "SEV-3" or "OK".
    severity: str
    #: The triage rule that gave the severity.
    rule: str
    #: Every rule that holds, worst first.
    findings: tuple[Finding, ...]
    connect: Connectivity
    #: The window the figures are of: its length, s, and what the meter counted in it.
    window: Interval | None
    error_ratio: float | None
    response_time: float | None
    baseline: Baseline
    in_flight: int
    #: How long the oldest query still running has run, s; None if none runs or unknown.
    oldest_in_flight: float | None
    pools: tuple[PoolHealth, ...]
    markers: tuple[Marker, ...]
    scope: ScopeBreakdown
    #: Wall time of the assessment, ns since the epoch.
    checked_wall_ns: int
    #: What could not be assessed, and why.
    notes: tuple[str, ...] = field(default=())

    @property
    def queries(self) -> int:
        return 0 if self.window is None else self.window.queries

    def __str__(self) -> str:
        lines = [f"{self.severity}: {self.rule}"]
        lines.extend(f"  {f.severity} {f.rule}: {f.detail}" for f in self.findings)
        lines.append(f"  connect: {self.connect.detail}")
        if self.window is not None:
            lines.append(
                f"  now ({self.window.duration:.1f} s): {self.window.queries} queries, "
                f"error ratio {_percent(self.error_ratio)}, "
                f"response time {_millis(self.response_time)}"
            )
        lines.append(
            f"  baseline ({self.baseline.source}): error ratio "
            f"{_percent(self.baseline.error_ratio)}, response time "
            f"{_millis(self.baseline.response_time)}"
        )
        oldest = "" if self.oldest_in_flight is None else f", oldest {self.oldest_in_flight:.1f} s"
        lines.append(f"  in flight: {self.in_flight}{oldest}")
        lines.extend(
            f"  pool {p.name}: {p.in_use}/{p.limit if p.limit is not None else '∞'} in use, "
            f"{p.waiting} waiting, {p.timeouts} timeouts"
            for p in self.pools
        )
        lines.extend(f"  scope: {sentence}" for sentence in self.scope.summary)
        lines.extend(
            f"  marker {_clock(m.wall_ns)}: {m.label}" for m in self.markers[-MAX_MARKERS:]
        )
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able)."""
        window = self.window
        return {
            "severity": self.severity,
            "rule": self.rule,
            "findings": [
                {"severity": f.severity, "rule": f.rule, "detail": f.detail} for f in self.findings
            ],
            "connect": self.connect.as_dict(),
            "window": None
            if window is None
            else {
                "duration": window.duration,
                "queries": window.queries,
                "errors": window.errors,
                "throughput": window.throughput,
                "concurrency": window.concurrency,
                "utilization": window.utilization,
            },
            "error_ratio": self.error_ratio,
            "response_time": self.response_time,
            "baseline": self.baseline.as_dict(),
            "in_flight": self.in_flight,
            "oldest_in_flight": self.oldest_in_flight,
            "pools": [p.as_dict() for p in self.pools],
            "markers": [
                {"label": m.label, "wall_ns": m.wall_ns, "attrs": dict(m.attrs)}
                for m in self.markers
            ],
            "scope": self.scope.as_dict(),
            "checked_wall_ns": self.checked_wall_ns,
            "notes": list(self.notes),
        }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _millis(value: float | None) -> str:
    return "n/a" if value is None else f"{1000 * value:.1f} ms"


def _clock(wall_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall_ns / 1e9))


def _positive(value: object, name: str, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name} must be more than 0 seconds, got {value!r}")
    return seconds


# ------------------------------------------------------------------ the window


@dataclass(slots=True)
class _Window:
    """What health() reads of the recent past: counters, statements, samples."""

    interval: Interval
    #: Each fingerprint's (calls, errors, total_ns) in the window.
    statements: dict[str, tuple[int, int, int]]
    #: Baseline built from steps before the window (a recorder), else None.
    steps_before: list[Interval]
    start_wall_ns: int


def _statement_sums(
    readings: Iterable[StatementsInterval | None],
) -> dict[str, tuple[int, int, int]]:
    sums: dict[str, tuple[int, int, int]] = {}
    for reading in readings:
        if reading is None:
            continue
        for s in reading:
            calls, errors, total = sums.get(s.fingerprint, (0, 0, 0))
            sums[s.fingerprint] = (calls + s.calls, errors + s.errors, total + s.total_ns)
    return sums


def _from_recorder(recorder: Any, window_s: float) -> _Window | None:
    """The recorder's last ``window_s`` of steps (finest resolution), or None if it has none."""
    steps: list[Interval] = list(recorder.timeline())
    if not steps:
        return None
    statement_steps: list[StatementsInterval | None] = list(recorder.statement_timeline())
    if len(statement_steps) != len(steps):
        statement_steps = [None] * len(steps)
    end_ns = steps[-1].later.uptime_ns
    first = len(steps) - 1
    while first > 0 and end_ns - steps[first - 1].earlier.uptime_ns <= window_s * 1e9 + 1:
        first -= 1
    interval = Interval.between(steps[first].earlier, steps[-1].later)
    start_wall_ns = steps[first].earlier.wall_ns
    return _Window(interval, _statement_sums(statement_steps[first:]), steps[:first], start_wall_ns)


def _watched(meter: Meter, window_s: float) -> _Window:
    """Watch the meter for ``window_s`` seconds."""
    table = meter.statements
    before: StatementsSnapshot | None = table.snapshot() if table is not None else None
    earlier = meter.snapshot()
    time.sleep(window_s)
    later = meter.snapshot()
    sums: dict[str, tuple[int, int, int]] = {}
    if table is not None and before is not None and meter.statements is table:
        sums = _statement_sums([table.snapshot() - before])
    return _Window(Interval.between(earlier, later), sums, [], earlier.wall_ns)


# ---------------------------------------------------------------- the baseline


def _median_mad(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    median = statistics.median(values)
    return median, statistics.median(abs(v - median) for v in values)


def _baseline_of_steps(steps: Sequence[Interval]) -> Baseline:
    response = [s.response_time for s in steps if s.response_time is not None]
    errors = [s.errors / s.queries for s in steps if s.queries]
    rt, rt_mad = _median_mad(response)
    er, er_mad = _median_mad(errors)
    return Baseline(
        "the flight recorder's steps before the window", rt, rt_mad, er, er_mad, len(steps)
    )


def _recorder_baseline(
    recorder: Any, steps_before: Sequence[Interval], now_wall_ns: int
) -> tuple[Baseline, dict[str, float]]:
    """The recorder's baseline: response time from its bands (by hour of day where it has
    a day), each top statement's median response time, and the error ratio of its steps.

    The recorder's bands are of error *rates* (errors/s); the triage grades the error
    *ratio* (errors/queries), whose median and MAD the steps before the window give.
    """
    from_steps = _baseline_of_steps(steps_before)
    try:
        found = recorder.baseline()
    except Exception as exc:  # noqa: BLE001 - the steps still give one
        _faults.report("health: the recorder's baseline could not be read", exc)
        return from_steps, {}
    response = found.response_time
    if response is None:
        return from_steps, {}
    band = response.band(now_wall_ns)
    means = {
        fingerprint: statement.response_time.median
        for fingerprint, statement in found.statements.items()
        if statement.response_time is not None
    }
    by_hour = ", by hour of day" if found.by_hour else ""
    source = f"the flight recorder's, {found.steps} steps of {found.resolution:g} s{by_hour}"
    baseline = Baseline(
        source,
        band.median,
        band.mad,
        from_steps.error_ratio,
        from_steps.error_ratio_mad,
        found.steps,
    )
    return baseline, means


def _baseline_since_start(before: Snapshot) -> Baseline:
    rt = before.total_ns / before.queries / 1e9 if before.queries else None
    er = before.errors / before.queries if before.queries else None
    return Baseline("since the meter started", rt, None, er, None, 0)


# ------------------------------------------------------------------- the parts


def _oldest_in_flight(meter: Meter) -> float | None:
    reader = getattr(meter, "oldest_in_flight_ns", None)
    if reader is None:
        return None
    age_ns = reader()
    return None if age_ns is None else age_ns / 1e9


def _pools(meter: Meter, engine: Any, notes: list[str]) -> list[PoolHealth]:
    found = [
        PoolHealth(name, p.in_use, _limit(p), p.waiting, p.timeouts)
        for name, p in pool_snapshots(meter, "health")
    ]
    if engine is not None and not _is_instrumented(engine, meter):
        pool = getattr(engine, "pool", None)
        try:
            found.append(
                PoolHealth(
                    str(engine.url.render_as_string(hide_password=True)),
                    int(pool.checkedout()),  # type: ignore[union-attr]
                    pool_limit(_PoolLimits(pool)),
                    0,
                    0,
                )
            )
        except Exception as exc:  # noqa: BLE001 - a pool without a queue: no figures
            notes.append(f"the engine's pool has no figures: {type(exc).__name__}")
    return found


class _PoolLimits:
    """An uninstrumented QueuePool's size and overflow, as pool_limit() reads them."""

    def __init__(self, pool: Any) -> None:
        self.size = pool.size()
        self.max_overflow = pool._max_overflow


def _limit(pool: Any) -> int | None:
    return pool_limit(pool)


def _is_instrumented(engine: Any, meter: Meter) -> bool:
    hooks = sys.modules.get("querymeter.sqlalchemy")
    if hooks is None:
        return False
    try:
        return hooks.instrumented_meter(engine) is meter
    except Exception:  # noqa: BLE001 - not an engine: the check says so
        return False


def _tags_of_samples(
    meter: Meter, start_wall_ns: int, baseline_means: Mapping[str, float]
) -> dict[str, dict[str, tuple[int, float]]]:
    """Errors and excess by tag, from the samples taken in the window."""
    by_tag: dict[str, dict[str, tuple[int, float]]] = {}
    for sample in meter.samples():
        if sample.start_wall_ns + sample.duration_ns < start_wall_ns or not sample.tags:
            continue
        duration = sample.duration_ns / 1e9
        mean = baseline_means.get(sample.fingerprint)
        excess = duration if mean is None else max(0.0, duration - mean)
        for key, value in sample.tags.items():
            values = by_tag.setdefault(str(key), {})
            errors, total = values.get(str(value), (0, 0.0))
            values[str(value)] = (errors + (sample.error is not None), total + excess)
    return by_tag


def _statement_figures(
    meter: Meter, window: _Window, recorded_means: Mapping[str, float]
) -> tuple[list[StatementFigures], dict[str, float]]:
    """Each fingerprint in the window with its mean before it: the recorder's median
    where it has one, else the statement's mean from the cumulative table."""
    table = meter.statements
    cumulative = {} if table is None else {s.fingerprint: s for s in table.snapshot()}
    figures: list[StatementFigures] = []
    means: dict[str, float] = {}
    for fingerprint, (calls, errors, total_ns) in window.statements.items():
        whole = cumulative.get(fingerprint)
        mean: float | None = recorded_means.get(fingerprint)
        if mean is not None:
            means[fingerprint] = mean
        elif whole is not None:
            calls_before = whole.calls - calls
            if calls_before > 0:
                mean = (whole.total_ns - total_ns) / calls_before / 1e9
                means[fingerprint] = mean
        figures.append(StatementFigures(fingerprint, calls, errors, total_ns / 1e9, mean))
    return figures, means


def _find_recorder(meter: Meter) -> Any:
    recorder_module = sys.modules.get("querymeter.recorder")
    finder = getattr(recorder_module, "running_recorder", None)
    if finder is None:
        return None
    return finder(meter)


# ---------------------------------------------------------------------- health


def health(
    meter: Meter | None = None,
    engine: Any = None,
    *,
    recorder: Any = None,
    window: float | None = None,
    stuck_after: float = 30.0,
    connect_timeout: float = 2.0,
) -> Health:
    """Assess the database as ``meter`` (the default meter) has seen it, and grade it.

    ``engine``: a SQLAlchemy engine to check the connection through (a
    read-only ``SELECT 1`` on a connection its pool has free, never a new
    one past the pool's limit, answered within ``connect_timeout`` seconds).
    ``recorder``: the flight recorder whose steps give the window and the
    baseline (by default the one running for the meter).  ``window``: the
    recent past assessed, s: the recorder's last 60 s by default, or, with no
    recorder, 1 s that health() watches the meter for (it sleeps meanwhile).
    ``stuck_after``: a query in flight longer than this many seconds is stuck.
    """
    meter = meter_argument(meter)
    window_s = _positive(window, "window", allow_none=True)
    stuck_s = _positive(stuck_after, "stuck_after")
    timeout_s = _positive(connect_timeout, "connect_timeout")
    assert stuck_s is not None and timeout_s is not None
    if window_s is not None and window_s > MAX_WATCH_S and recorder is None:
        raise ValueError(
            f"window must be at most {MAX_WATCH_S:g} s without a recorder, got {window!r}"
        )
    notes: list[str] = []

    connect = check_connection(engine, timeout_s)
    recorder = recorder if recorder is not None else _find_recorder(meter)
    watched = None if recorder is None else _from_recorder(recorder, window_s or RECORDED_WINDOW_S)
    if watched is None:
        if recorder is not None:
            notes.append("the flight recorder has no steps yet: the meter was watched instead")
        watched = _watched(meter, min(window_s or WATCHED_WINDOW_S, MAX_WATCH_S))
    interval = watched.interval

    baseline: Baseline | None = None
    statement_means: dict[str, float] = {}
    if recorder is not None and watched.steps_before:
        baseline, statement_means = _recorder_baseline(
            recorder, watched.steps_before, interval.later.wall_ns
        )
    if baseline is None:
        baseline = _baseline_since_start(interval.earlier)
        if recorder is not None:
            notes.append(
                "the flight recorder holds no steps before the window: baseline since start"
            )

    now = meter.snapshot()
    error_ratio = interval.errors / interval.queries if interval.queries else None
    oldest = _oldest_in_flight(meter)
    if oldest is None and now.concurrency:
        notes.append("this core cannot tell how long the queries in flight have run")
    pools = _pools(meter, engine, notes)
    statements, means = _statement_figures(meter, watched, statement_means)
    if meter.statements is None:
        notes.append("no statement table (meter.enable_statements()): no breakdown by statement")
    scope = breakdown(statements, _tags_of_samples(meter, watched.start_wall_ns, means))
    recent = markers() if recorder is None else list(recorder.markers())

    fullest = max(pools, key=lambda p: p.saturation or 0.0, default=None)
    figures = Figures(
        connected=connect.ok,
        queries=interval.queries,
        error_ratio=error_ratio,
        baseline_error_ratio=baseline.error_ratio,
        baseline_error_mad=baseline.error_ratio_mad,
        response_time=interval.response_time,
        baseline_response_time=baseline.response_time,
        baseline_response_mad=baseline.response_time_mad,
        oldest_in_flight=oldest,
        stuck_after=stuck_s,
        pool_saturation=None if fullest is None else fullest.saturation,
        pool_waiting=sum(p.waiting for p in pools),
    )
    found = findings(figures)
    severity, rule = severity_of(found)
    return Health(
        severity=severity,
        rule=rule,
        findings=tuple(found),
        connect=connect,
        window=interval,
        error_ratio=error_ratio,
        response_time=interval.response_time,
        baseline=baseline,
        in_flight=now.concurrency,
        oldest_in_flight=oldest,
        pools=tuple(pools),
        markers=tuple(recent[-MAX_MARKERS:]),
        scope=scope,
        checked_wall_ns=time.time_ns(),
        notes=tuple(notes),
    )
