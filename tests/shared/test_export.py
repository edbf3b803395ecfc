"""Exporters over a shared meter: one scrape of one process reports the whole service."""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from querymeter import dbapi, fingerprint, statement_id
from querymeter.shared import shared_meter_class

PREFIX = "h2_export"
WORKERS = 2
# Each worker's statements: (text, times); the second fails (no such table).
WORK = [
    ("SELECT 1", 40),
    (f"SELECT * FROM {PREFIX}_missing", 3),
    ("SELECT 2, 3", 25),
]


def worker(implementation: str, meter_path: str, number: int, ready: Any, scraped: Any) -> None:
    """Runs its queries, each worker also one of its own, then stays open until scraped."""
    with shared_meter_class(implementation)(meter_path) as meter:
        meter.enable_statements(50)
        connection = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
        for sql, times in [*WORK, (f"SELECT {number} AS worker_{number}", number + 1)]:
            for _ in range(times):
                with contextlib.suppress(sqlite3.OperationalError):
                    connection.execute(sql).fetchall()
        connection.close()
        ready.release()
        scraped.wait(60)


def expected_calls() -> Counter[str]:
    """Every statement's calls over the service, by fingerprint: the workload's own count."""
    calls: Counter[str] = Counter()
    for number in range(WORKERS):
        for sql, times in [*WORK, (f"SELECT {number} AS worker_{number}", number + 1)]:
            calls[fingerprint(sql, "sqlite")] += times
    return calls


@pytest.fixture
def service(implementation: str, tmp_path: Path) -> Iterator[Any]:
    """Workers that have run their queries and are still running; this process's shared meter."""
    meter_path = str(tmp_path / "service.querymeter")
    context = multiprocessing.get_context("fork")
    ready, scraped = context.Semaphore(0), context.Event()
    workers = [
        context.Process(target=worker, args=(implementation, meter_path, n, ready, scraped))
        for n in range(WORKERS)
    ]
    for process in workers:
        process.start()
    try:
        for _ in workers:
            assert ready.acquire(timeout=60)
        with shared_meter_class(implementation)(meter_path) as meter:
            meter.enable_statements(50)
            # The workers are alive: their slots are in the file with ours.
            assert len(meter.slots()) == WORKERS + 1
            yield meter
    finally:
        scraped.set()
        for process in workers:
            process.join(60)
    assert [process.exitcode for process in workers] == [0] * WORKERS


def test_a_prometheus_scrape_reports_the_service(service: Any) -> None:
    """One scrape in one process gives every worker's queries and statements."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from querymeter.prometheus import Collector

    registry = prometheus_client.CollectorRegistry()
    registry.register(Collector(service, statements=10))
    text = prometheus_client.generate_latest(registry).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    calls = expected_calls()
    failing = fingerprint(f"SELECT * FROM {PREFIX}_missing", "sqlite")
    assert samples[("querymeter_queries_total", ())] == sum(calls.values())
    assert samples[("querymeter_errors_total", ())] == calls[failing]
    assert samples[("querymeter_queries_in_flight", ())] == 0
    statements = {
        dict(labels)["fingerprint"]: value
        for (name, labels), value in samples.items()
        if name == "querymeter_statement_calls_total"
    }
    assert statements == dict(calls)
    table = service.statements.snapshot()
    counters = service.snapshot()
    assert table.total_ns == counters.total_ns
    assert samples[("querymeter_query_seconds_total", ())] == pytest.approx(
        counters.total_ns / 1e9, rel=0, abs=1e-9
    )
    for stats in table:
        labels = (("fingerprint", stats.fingerprint), ("fingerprint_id", stats.statement_id))
        assert samples[("querymeter_statement_seconds_total", labels)] == stats.total_ns / 1e9


def test_an_opentelemetry_collection_reports_the_service(service: Any) -> None:
    """One collection in one process gives every worker's queries and statements."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from querymeter.otel import instrument_metrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        instrument_metrics(provider, meter=service, statements=10)
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    assert data is not None
    points: dict[str, dict[frozenset[tuple[str, Any]], Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = {
                    frozenset(point.attributes.items()): point.value
                    for point in metric.data.data_points
                }
    calls = expected_calls()
    assert sum(points["db.client.querymeter.statement.calls"].values()) == sum(calls.values())
    by_id = {
        dict(attributes)["querymeter.statement.id"]: value
        for attributes, value in points["db.client.querymeter.statement.calls"].items()
    }
    assert by_id == {statement_id(f): n for f, n in calls.items()}
    failing = fingerprint(f"SELECT * FROM {PREFIX}_missing", "sqlite")
    assert points["db.client.querymeter.queries"] == {frozenset(): sum(calls.values())}
    assert points["db.client.querymeter.errors"] == {frozenset(): calls[failing]}
    table, counters = service.statements.snapshot(), service.snapshot()
    assert table.total_ns == counters.total_ns
    time_points = points["db.client.querymeter.statement.time"]
    assert sum(time_points.values()) == pytest.approx(table.total_ns / 1e9)
