"""Recorder trends: a 1 ms/day drift found in 14 simulated days, flat statements rarely flagged."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

import pytest

from querymeter import trend
from querymeter.meter import Meter as MeterType
from querymeter.meter import meter_class
from querymeter.recorder import FlightRecorder
from querymeter.recorder._trends import (
    NotEnoughHistory,
    StatementTrend,
    _bin_width,
    statement_trend,
)

NS = 1_000_000_000
HOUR = 3600.0
DAY = 86_400.0
COARSE = ((HOUR, 24 * 90),)
SQL = "SELECT * FROM orders WHERE customer_id = 42"


def drifting_ms(seed: int, drift_ms_per_day: float, hours: int) -> list[float]:
    """A 20 ms statement with 10 % Gaussian noise, drifting linearly: one duration per hour."""
    rng = random.Random(seed)
    return [20.0 + drift_ms_per_day * (h + 0.5) / 24 + rng.gauss(0.0, 2.0) for h in range(hours)]


def record(
    meter_type: type[MeterType],
    durations_ms: list[float],
    *,
    resolutions: tuple[tuple[float, int], ...] = COARSE,
    others: Callable[[int], list[tuple[str, float]]] | None = None,
) -> FlightRecorder:
    """A recorder of a simulated meter that ran the statement once an hour for the durations."""
    now = [1_000_000]
    meter = meter_type(clock=lambda: now[0])
    meter.enable_statements()
    recorder = FlightRecorder(meter, resolutions)
    recorder.take()
    for hour, ms in enumerate(durations_ms):
        start = now[0]
        with meter.track(sql=SQL):
            now[0] += round(ms * 1e6)
        for sql, seconds in others(hour) if others else []:
            with meter.track(sql=sql):
                now[0] += round(seconds * NS)
        now[0] = start + round(HOUR * NS)
        recorder.take()
    return recorder


def test_a_drift_of_1_ms_a_day_is_found_within_14_days(Meter: type[MeterType]) -> None:
    """A 20 ms statement drifting by 1 ms/day with 10 % noise is reported, its slope bounded."""
    for seed in range(10):
        recorder = record(Meter, drifting_ms(seed, 1.0, 14 * 24))
        found = recorder.trends()
        assert len(found) == 1
        (statement,) = found
        assert isinstance(statement, StatementTrend)
        assert statement.sample_sql == SQL
        assert statement.calls == 14 * 24
        assert statement.trend.n == 14 * 24
        assert statement.trend.level == 0.99
        assert statement.trend.low * DAY * 1e3 <= 1.0 <= statement.trend.high * DAY * 1e3
        assert statement.per_day == pytest.approx(0.001, rel=0.15)
        assert statement.days == pytest.approx(14 - 1 / 24)
        assert statement.start == pytest.approx(0.020, rel=0.05)
        assert statement.end == pytest.approx(0.034, rel=0.05)
        text = str(statement)
        assert "ms/day over" in text
        assert re.match(
            rf"\[{statement.statement_id}\] \+(0\.9|1\.0|1\.1)\d* ms/day over 14 days \(", text
        ), text
        assert SQL.lower()[:20] in text.lower()


def test_the_recorder_series_is_the_hourly_series(Meter: type[MeterType]) -> None:
    """The trend through the recorder equals querymeter.trend of the hourly durations."""
    durations = drifting_ms(7, 1.0, 14 * 24)
    (statement,) = record(Meter, durations).trends()
    points = [((h + 0.5) * HOUR, round(ms * 1e6) / 1e9) for h, ms in enumerate(durations)]
    oracle = trend(points, level=0.99)
    assert statement.trend.slope == pytest.approx(oracle.slope, rel=1e-9)
    assert statement.trend.low == pytest.approx(oracle.low, rel=1e-9)
    assert statement.trend.high == pytest.approx(oracle.high, rel=1e-9)


def test_detection_and_false_alarm_rates_over_many_seeds() -> None:
    """The 1 ms/day drift is found in 14 days in each of 50 seeds; a flat series rarely, of 200.

    The hourly series the recorder gives (test above) through the same
    decision; at level 0.99 only growth is reported, so a flat statement is
    flagged about 0.5 % of the time (2000 seeds: 0.25 %, docs/continuous-profiling.md).
    4 of 200 is a ceiling that a 0.5 % rate passes in more than 99.5 % of seed sets.
    """

    def hourly(seed: int, drift: float) -> list[tuple[float, float]]:
        return [((h + 0.5) * HOUR, ms / 1e3) for h, ms in enumerate(drifting_ms(seed, drift, 336))]

    found = sum(
        statement_trend(hourly(seed, 1.0), min_days=7.0, level=0.99) is not None
        for seed in range(50)
    )
    flagged = sum(
        statement_trend(hourly(-seed, 0.0), min_days=7.0, level=0.99) is not None
        for seed in range(1, 201)
    )
    assert found == 50
    assert flagged <= 4


def test_through_the_recorder_flat_statements_are_rarely_flagged() -> None:
    """20 flat statements recorded for 14 days: at most one is reported (about 0.5 % expected)."""
    meter_type = meter_class("python")
    flagged = sum(
        bool(record(meter_type, drifting_ms(seed, 0.0, 336)).trends()) for seed in range(20)
    )
    assert flagged <= 1


def test_shrinking_and_new_statements_are_not_reported(Meter: type[MeterType]) -> None:
    """A statement getting faster, or one seen for less than min_days, is not reported."""

    def others(hour: int) -> list[tuple[str, float]]:
        new = [("SELECT * FROM audit_log", 0.010 + hour * 0.001)] if hour >= 300 else []
        return [("SELECT name FROM products", 0.050 - hour * 0.0001), *new]

    recorder = record(Meter, [20.0] * 336, others=others)
    assert recorder.trends() == []
    assert [s.sample_sql for s in recorder.trends(min_days=1.0)] == ["SELECT * FROM audit_log"]


def test_the_fastest_growing_statement_comes_first(Meter: type[MeterType]) -> None:
    """Reported statements are sorted by slope, the largest first."""

    def others(hour: int) -> list[tuple[str, float]]:
        return [("SELECT total FROM invoices", 0.040 + hour / 24 * 0.005)]

    recorder = record(Meter, drifting_ms(1, 1.0, 336), others=others)
    assert [s.sample_sql for s in recorder.trends()] == ["SELECT total FROM invoices", SQL]
    assert [s.sample_sql for s in recorder.trends(statements=1)] == ["SELECT total FROM invoices"]


def test_default_rings_do_not_hold_enough_history(Meter: type[MeterType]) -> None:
    """With the default rings (24 h), trends() says so and how to keep more."""
    recorder = record(Meter, [20.0] * 30, resolutions=((60.0, 1440),))
    with pytest.raises(NotEnoughHistory, match=r"\(3600.0, 24 \* 90\)") as raised:
        recorder.trends()
    assert "min_days=7" in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_a_coarse_ring_not_yet_full_asks_to_wait(Meter: type[MeterType]) -> None:
    """A ring that could hold the history but does not yet says to let it run."""
    recorder = record(Meter, [20.0] * 72)
    with pytest.raises(NotEnoughHistory, match="let it run longer"):
        recorder.trends()
    assert recorder.trends(min_days=2.0) == []


def test_long_series_are_binned_into_whole_fractions_of_a_day() -> None:
    """90 days of hourly steps make 6-hour bins (360 points); short series keep their steps."""
    assert _bin_width(HOUR, 90 * DAY, 500) == 6 * HOUR
    assert _bin_width(HOUR, 14 * DAY, 500) == HOUR
    assert _bin_width(60.0, DAY, 500) == 300.0
    assert _bin_width(HOUR, 4000 * DAY, 500) == 9 * DAY


def test_binned_points_are_means_of_the_calls_in_the_bin(Meter: type[MeterType]) -> None:
    """A bin's value is its calls' total time over their number, not a mean of step means."""
    recorder = record(Meter, drifting_ms(3, 1.0, 24 * 30))
    (statement,) = recorder.trends(max_points=200)
    assert statement.trend.n == 180  # 30 days of 4-hour bins, counted back from the end
    assert statement.per_day == pytest.approx(0.001, rel=0.1)


def test_the_bins_do_not_depend_on_the_hour_the_history_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bins are counted back from the end: the same history starting at other hours of
    the day (the simulated calendar starts at the wall time of the first reading) has the
    same trend.  The pure-Python core's wall clock is set for it; binning is the
    recorder's, the same over either core."""
    from querymeter.core import _py

    midnight_ns = 1_790_000_000 // 86_400 * 86_400 * NS
    found = []
    for hours in (0, 1, 7, 13, 23):
        monkeypatch.setattr(_py, "_wall_ns", lambda hours=hours: midnight_ns + hours * 3600 * NS)
        (statement,) = record(meter_class("python"), drifting_ms(5, 1.0, 24 * 30)).trends(
            max_points=200
        )
        found.append((statement.trend.slope, statement.trend.low, statement.trend.high))
    assert len(set(found)) == 1, found


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"min_days": 0}, ValueError, "min_days must be finite and > 0"),
        ({"min_days": "7"}, TypeError, "min_days must be a real number"),
        ({"level": 1.0}, ValueError, r"level must be in \(0, 1\)"),
        ({"statements": -1}, ValueError, "statements must be >= 0"),
        ({"max_points": 2}, ValueError, "max_points must be in 3..4000"),
        ({"resolution": 60.0}, ValueError, "not one of the recorder's"),
    ],
)
def test_bad_arguments_are_named(
    Meter: type[MeterType], kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """A bad argument raises TypeError or ValueError naming it."""
    recorder = record(Meter, [20.0] * 3)
    with pytest.raises(error, match=message):
        recorder.trends(**kwargs)
