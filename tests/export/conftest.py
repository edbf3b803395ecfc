"""Fixtures for the exporters: a meter on a fake clock with a known schedule, engines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from querymeter.meter import Meter as MeterType

from ..conftest import FakeClock

S = 1_000_000_000


@dataclass(frozen=True)
class Expected:
    """The counters of the schedule below, worked out by hand, in ns."""

    uptime_ns: int = 10 * S + S // 2 + 123
    queries: int = 2
    errors: int = 1
    concurrency: int = 1
    # 3 s (first) + 4 s (second, an error) + 2.5 s + 123 ns (third, in flight).
    total_ns: int = 9 * S + S // 2 + 123
    # Busy from 1 s to 7 s, then from 8 s to the end.
    busy_ns: int = 8 * S + S // 2 + 123


def run_schedule(meter: MeterType, clock: FakeClock) -> Expected:
    """Two overlapping queries (the second an error), then one left in flight."""
    clock.advance(1 * S)
    first = meter.begin()
    clock.advance(2 * S)
    second = meter.begin()
    clock.advance(1 * S)
    meter.end(first)
    clock.advance(3 * S)
    meter.end(second, error=True)
    clock.advance(1 * S)
    meter.begin()  # still executing at the reading
    clock.advance(2 * S + S // 2 + 123)
    return Expected()


@pytest.fixture
def scheduled(fake_meter: MeterType, clock: FakeClock) -> tuple[MeterType, Expected]:
    """A meter of the core under test that ran the schedule, and its expected counters."""
    return fake_meter, run_schedule(fake_meter, clock)


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Any]]:
    """create_engine(), each engine made uninstrumented and disposed after the test."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    engines: list[Any] = []

    def make(url: Any, **kwargs: Any) -> Any:
        engine = sqlalchemy.create_engine(url, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        qs.uninstrument(engine)
        engine.dispose()


def run_statements(meter: MeterType, clock: FakeClock) -> dict[str, tuple[int, int, int]]:
    """Three statements of different total time; (calls, errors, total_ns) by SQL text."""
    plan = {
        "SELECT a FROM t WHERE id = 1": [(5 * S, False), (1 * S, True)],
        "UPDATE t SET a = 2": [(2 * S, False)],
        "DELETE FROM t": [(1, False), (2, False), (3, False)],
    }
    for sql, calls in plan.items():
        for duration, error in calls:
            try:
                with meter.track(sql):
                    clock.advance(duration)
                    if error:
                        raise RuntimeError("the statement failed")
            except RuntimeError:
                pass
    return {
        sql: (len(calls), sum(error for _, error in calls), sum(d for d, _ in calls))
        for sql, calls in plan.items()
    }
