"""The per-query OpenTelemetry histogram: sqlite3 execute, raw, counted, and recorded too.

``cursor.execute("SELECT 1")`` on a reused cursor of an in-memory SQLite
database (the cheapest statement there is, so the added cost shows at its
largest), against the raw driver as baseline, on each core:

- counted: querymeter.dbapi, nothing observed per query;
- counted + a no-op observer: the core's call of a Python observer alone;
- counted + ``instrument_metrics(histogram=True)`` on an SDK ``MeterProvider``
  with an ``InMemoryMetricReader`` (the SDK aggregates for a reader; without
  one a recording is dropped early and would look cheaper than in production).

The interleaved test gives the figures that docs/export.md quotes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter.dbapi
from querymeter.meter import add_query_observer

from .conftest import (
    OPS,
    interleaved_medians,
    load_meter_class,
    mark_baseline,
    print_interleaved,
    quick_mode,
)

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from querymeter.otel import instrument_metrics

RANGE = range(OPS)
SQL = "SELECT 1"


def raw_cursor() -> Any:
    return sqlite3.connect(":memory:").cursor()


def counted_cursor(implementation: str, per_query: str | None = None) -> Callable[[], Any]:
    """A cursor counted into a new meter of the core; per_query: "no-op" or "otel"."""

    def make() -> Any:
        meter = load_meter_class(implementation)()
        if per_query == "no-op":
            add_query_observer(meter, lambda sql, dialect, elapsed_ns, error, error_type: None)
        elif per_query == "otel":
            provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
            instrument_metrics(provider, meter=meter, histogram=True)
        return querymeter.dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter).cursor()

    return make


class RecordingByHand:
    """The raw cursor, and an SDK histogram recorded by hand after each execute: what the
    SDK's recording costs an application that does it itself."""

    def __init__(self) -> None:
        self.cursor = raw_cursor()
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        histogram = provider.get_meter("by-hand").create_histogram("duration", unit="s")
        self.record = histogram.record
        self.attributes = {"db.system.name": "sqlite", "db.operation.name": "SELECT"}

    def execute(self, sql: str) -> Any:
        result = self.cursor.execute(sql)
        self.record(0.000001, self.attributes)
        return result


# Names of at most 28 characters: the width of the interleaved table's first column.
VARIANTS: dict[str, Callable[[], Any]] = {
    "raw": raw_cursor,
    "raw + sdk record by hand": RecordingByHand,
    "c": counted_cursor("c"),
    "c + no-op observer": counted_cursor("c", "no-op"),
    "c + otel histogram": counted_cursor("c", "otel"),
    "python": counted_cursor("python"),
    "python + no-op observer": counted_cursor("python", "no-op"),
    "python + otel histogram": counted_cursor("python", "otel"),
}


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest, benchmark: Any) -> Iterator[tuple[str, Any]]:
    name = request.param
    if name == "raw":
        mark_baseline(benchmark)
    yield name, VARIANTS[name]()


@pytest.mark.benchmark(group="otel: execute, histogram per query", min_rounds=20)
def test_execute(benchmark: Any, variant: tuple[str, Any]) -> None:
    """cursor.execute("SELECT 1") on a reused cursor."""
    _, cursor = variant
    execute = cursor.execute

    def run() -> None:
        for _ in RANGE:
            execute(SQL)

    benchmark(run)


def test_added_cost_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every variant in turn, round after round: the figures to judge by."""
    cursors = {name: make() for name, make in VARIANTS.items()}

    def execute_alone(cursor: Any) -> Callable[[], None]:
        execute = cursor.execute

        def run() -> None:
            for _ in RANGE:
                execute(SQL)

        return run

    rounds = 1 if quick_mode(request.config) else 41
    medians = interleaved_medians(
        {name: execute_alone(cursor) for name, cursor in cursors.items()}, rounds
    )
    if not quick_mode(request.config):
        print_interleaved("otel histogram, sqlite3 execute", medians, "raw", capsys)


# ------------------------------------------------------------ on a real server
#
# psycopg on the local PostgreSQL, where one statement is a round trip of tens
# of microseconds: the same per-query cost, as a share of a short query.

SERVER_OPS = 200


def test_added_cost_on_postgresql_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """psycopg cursor.execute("SELECT 1"): raw, counted (C core), counted with the histogram."""
    from tests.servers import postgres_dsn

    dsn = postgres_dsn()
    import psycopg

    connections: list[Any] = []

    def cursor(implementation: str | None, otel: bool) -> Any:
        connection = psycopg.connect(dsn, autocommit=True)
        connections.append(connection)
        if implementation is not None:
            meter = load_meter_class(implementation)()
            if otel:
                provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
                instrument_metrics(provider, meter=meter, histogram=True)
            querymeter.dbapi.wrap_connection(connection, meter=meter)
        return connection.cursor()

    cursors = {
        "raw": cursor(None, False),
        "c": cursor("c", False),
        "c + otel histogram": cursor("c", True),
    }

    def execute_alone(counted: Any) -> Callable[[], None]:
        execute = counted.execute

        def run() -> None:
            for _ in range(SERVER_OPS):
                execute(SQL)

        return run

    try:
        rounds = 1 if quick_mode(request.config) else 21
        medians = interleaved_medians(
            {name: execute_alone(counted) for name, counted in cursors.items()}, rounds
        )
    finally:
        for connection in connections:
            connection.close()
    # interleaved_medians divides by OPS; each run here made SERVER_OPS queries.
    medians = {name: median * OPS / SERVER_OPS for name, median in medians.items()}
    if not quick_mode(request.config):
        print_interleaved("otel histogram, psycopg execute on PostgreSQL", medians, "raw", capsys)
