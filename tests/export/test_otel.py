"""querymeter.otel: observable instruments read from one reading per collection."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter
from querymeter.meter import Meter as MeterType

from ..conftest import FakeClock
from .conftest import Expected, run_statements

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from querymeter.otel import instrument_metrics

Points = dict[str, dict[frozenset[tuple[str, Any]], Any]]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    """A provider of its own for each test; the global one is never set."""
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield provider
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> tuple[Points, dict[str, tuple[str, str]]]:
    """One collection: each metric's points by attributes, and its (kind, unit)."""
    points: Points = {}
    kinds: dict[str, tuple[str, str]] = {}
    data = reader.get_metrics_data()
    if data is None:
        return points, kinds
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "querymeter"
            for metric in scope.metrics:
                kind = type(metric.data).__name__
                if kind == "Sum":
                    kind = "Sum monotonic" if metric.data.is_monotonic else "Sum"
                kinds[metric.name] = (kind, metric.unit or "")
                points[metric.name] = {
                    frozenset(point.attributes.items()): point.value
                    for point in metric.data.data_points
                }
    return points, kinds


def test_a_collection_gives_the_meters_counters(
    scheduled: tuple[MeterType, Expected], provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    """Each counter comes out exactly, times in seconds, with its instrument kind and unit."""
    meter, expected = scheduled
    instrument_metrics(provider, meter=meter)
    points, kinds = collect(reader)
    none: frozenset[tuple[str, Any]] = frozenset()
    assert points["db.client.querymeter.queries"] == {none: expected.queries}
    assert points["db.client.querymeter.errors"] == {none: expected.errors}
    assert points["db.client.querymeter.in_flight"] == {none: expected.concurrency}
    assert points["db.client.querymeter.total_time"] == {none: expected.total_ns / 1e9}
    assert points["db.client.querymeter.busy_time"] == {none: expected.busy_ns / 1e9}
    assert points["db.client.querymeter.uptime"] == {none: expected.uptime_ns / 1e9}
    assert kinds["db.client.querymeter.queries"] == ("Sum monotonic", "{query}")
    assert kinds["db.client.querymeter.errors"] == ("Sum monotonic", "{error}")
    assert kinds["db.client.querymeter.total_time"] == ("Sum monotonic", "s")
    assert kinds["db.client.querymeter.busy_time"] == ("Sum monotonic", "s")
    assert kinds["db.client.querymeter.in_flight"] == ("Sum", "{query}")
    assert kinds["db.client.querymeter.uptime"] == ("Gauge", "s")


def test_one_reading_per_collection(
    fake_meter: MeterType, clock: FakeClock, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    """However many instruments, a collection reads the meter's clock once."""
    instrument_metrics(provider, meter=fake_meter)
    before = clock.reads
    collect(reader)
    assert clock.reads == before + 1
    clock.advance(5)
    points, _ = collect(reader)
    assert clock.reads == before + 2
    # The second collection is a new reading, not the first one served again.
    assert points["db.client.querymeter.uptime"] == {frozenset(): 5 / 1e9}


def test_the_instruments_of_a_collection_agree(
    Meter: type[MeterType], provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    """On a clock that moves at every read, a query in flight shows the same time everywhere."""

    class Ticking:
        def __init__(self) -> None:
            self.now = 0

        def __call__(self) -> int:
            self.now += 1_000
            return self.now

    meter = Meter(clock=Ticking())
    meter.begin()
    instrument_metrics(provider, meter=meter)
    for _ in range(3):
        points, _ = collect(reader)
        # One query in flight since its start: total, busy and (less the start) uptime agree.
        total = points["db.client.querymeter.total_time"][frozenset()]
        busy = points["db.client.querymeter.busy_time"][frozenset()]
        uptime = points["db.client.querymeter.uptime"][frozenset()]
        assert total == busy
        assert round((uptime - total) * 1e9) == 1_000


def test_the_pools_under_the_semantic_conventions(
    fake_meter: MeterType,
    make_engine: Callable[..., Any],
    tmp_path: Any,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    """A SQLite QueuePool with a connection held, one returned and one timeout, under the
    db.client.connection names, units and attributes."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    path = tmp_path / "export_otel.db"
    engine = make_engine(
        f"sqlite:///{path}",
        poolclass=sqlalchemy.pool.QueuePool,
        pool_size=2,
        max_overflow=1,
        pool_timeout=0.01,
    )
    qs.instrument(engine, meter=fake_meter)
    held = [engine.connect(), engine.connect()]
    engine.connect().close()  # the overflow connection, discarded on return
    held.append(engine.connect())
    with pytest.raises(sqlalchemy.exc.TimeoutError):
        engine.connect()
    held.pop().close()
    instrument_metrics(provider, meter=fake_meter)
    try:
        points, kinds = collect(reader)
    finally:
        for connection in held:
            connection.close()
    name = ("db.client.connection.pool.name", f"sqlite:///{path}")
    assert points["db.client.connection.count"] == {
        frozenset({name, ("db.client.connection.state", "used")}): 2,
        frozenset({name, ("db.client.connection.state", "idle")}): 1,
    }
    assert points["db.client.connection.max"] == {frozenset({name}): 3}
    assert points["db.client.connection.idle.max"] == {frozenset({name}): 2}
    assert points["db.client.connection.pending_requests"] == {frozenset({name}): 0}
    assert points["db.client.connection.timeouts"] == {frozenset({name}): 1}
    assert kinds["db.client.connection.count"] == ("Sum", "{connection}")
    assert kinds["db.client.connection.max"] == ("Sum", "{connection}")
    assert kinds["db.client.connection.idle.max"] == ("Sum", "{connection}")
    assert kinds["db.client.connection.pending_requests"] == ("Sum", "{request}")
    assert kinds["db.client.connection.timeouts"] == ("Sum monotonic", "{timeout}")


def test_the_semantic_conventions_names_are_the_installed_ones() -> None:
    """The pool's names are those of the installed semantic conventions package."""
    semconv = pytest.importorskip("opentelemetry.semconv._incubating.metrics.db_metrics")
    attributes = pytest.importorskip("opentelemetry.semconv._incubating.attributes.db_attributes")
    stable = pytest.importorskip("opentelemetry.semconv.attributes.db_attributes")
    from querymeter import otel

    assert semconv.DB_CLIENT_CONNECTION_COUNT == "db.client.connection.count"
    assert semconv.DB_CLIENT_CONNECTION_MAX == "db.client.connection.max"
    assert semconv.DB_CLIENT_CONNECTION_IDLE_MAX == "db.client.connection.idle.max"
    assert semconv.DB_CLIENT_CONNECTION_PENDING_REQUESTS == "db.client.connection.pending_requests"
    assert semconv.DB_CLIENT_CONNECTION_TIMEOUTS == "db.client.connection.timeouts"
    assert attributes.DB_CLIENT_CONNECTION_POOL_NAME == otel.POOL_NAME
    assert attributes.DB_CLIENT_CONNECTION_STATE == otel.CONNECTION_STATE
    assert {v.value for v in attributes.DbClientConnectionStateValues} == {"idle", "used"}
    assert stable.DB_QUERY_SUMMARY == otel.QUERY_SUMMARY


def test_the_top_statements_by_time(
    fake_meter: MeterType, clock: FakeClock, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    """statements=K observes the K statements with the most time, by summary and id."""
    fake_meter.enable_statements()
    ran = run_statements(fake_meter, clock)
    instrument_metrics(provider, meter=fake_meter, statements=2)
    points, kinds = collect(reader)
    expected_time, expected_calls, expected_errors = {}, {}, {}
    for sql in ["SELECT a FROM t WHERE id = 1", "UPDATE t SET a = 2"]:
        fingerprint = querymeter.fingerprint(sql)
        key = frozenset(
            {
                ("db.query.summary", fingerprint),
                ("querymeter.statement.id", querymeter.statement_id(fingerprint)),
            }
        )
        calls, errors, total_ns = ran[sql]
        expected_time[key] = total_ns / 1e9
        expected_calls[key] = calls
        expected_errors[key] = errors
    assert points["db.client.querymeter.statement.time"] == expected_time
    assert points["db.client.querymeter.statement.calls"] == expected_calls
    assert points["db.client.querymeter.statement.errors"] == expected_errors
    assert kinds["db.client.querymeter.statement.time"] == ("Sum monotonic", "s")


def test_uninstrument_ends_it_and_the_provider_can_be_instrumented_again(
    fake_meter: MeterType, provider: MeterProvider, reader: InMemoryMetricReader
) -> None:
    """After uninstrument() nothing is observed; instrumenting again observes the new meter."""
    instrumentation = instrument_metrics(provider, meter=fake_meter)
    with pytest.raises(ValueError, match="already observes a querymeter meter"):
        instrument_metrics(provider, meter=fake_meter)
    instrumentation.uninstrument()
    instrumentation.uninstrument()
    points, _ = collect(reader)
    assert not any(points.values())
    other = querymeter.Meter()
    for _ in range(3):
        with other.track():
            pass
    instrument_metrics(provider, meter=other)
    points, _ = collect(reader)
    assert points["db.client.querymeter.queries"] == {frozenset(): 3}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"statements": -1}, ValueError, "statements must be 0 or more, not -1"),
        ({"statements": 2.0}, TypeError, "statements must be an int, not float"),
        ({"meter": object()}, TypeError, "meter must be a querymeter.Meter, not object"),
        (
            {"meter_provider": object()},
            TypeError,
            "meter_provider must be an opentelemetry.metrics.MeterProvider, not object",
        ),
    ],
)
def test_bad_arguments_are_refused(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bad argument raises, naming the problem, before anything is registered."""
    with pytest.raises(error, match=message):
        instrument_metrics(**kwargs)


def test_a_broken_engine_is_a_fault_and_the_rest_is_observed(
    fake_meter: MeterType,
    make_engine: Callable[..., Any],
    tmp_path: Any,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An engine whose pool cannot be read is left out and counted as a fault."""
    qs = pytest.importorskip("querymeter.sqlalchemy")
    engine = make_engine(f"sqlite:///{tmp_path / 'export_otel_broken.db'}")
    qs.instrument(engine, meter=fake_meter)

    def pool_snapshot(engine: Any) -> Any:
        raise RuntimeError("a broken pool")

    monkeypatch.setattr(qs, "pool_snapshot", pool_snapshot)
    cause = "otel: could not read an engine's pool"
    before = querymeter.faults().get(cause, 0)
    instrument_metrics(provider, meter=fake_meter)
    points, _ = collect(reader)
    assert querymeter.faults()[cause] == before + 1
    assert not points.get("db.client.connection.count")
    assert points["db.client.querymeter.queries"] == {frozenset(): 0}


# ------------------------------------------------------------------- OTLP


class _Receiver(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps the bodies it is sent."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.bodies.append((self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_an_otlp_export_carries_the_figures(scheduled: tuple[MeterType, Expected]) -> None:
    """Through the OTLP/HTTP exporter, a collector receives the meter's figures as protobuf."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.metric_exporter")
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    meter, expected = scheduled
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        exporter = OTLPMetricExporter(
            endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1/metrics", timeout=10
        )
        periodic = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        provider = MeterProvider(metric_readers=[periodic], shutdown_on_exit=False)
        try:
            instrument_metrics(provider, meter=meter)
            assert periodic.force_flush(timeout_millis=10_000)
        finally:
            provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    received: dict[str, Any] = {}
    for path, body in server.bodies:  # type: ignore[attr-defined]
        assert path == "/v1/metrics"
        request = ExportMetricsServiceRequest.FromString(body)
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name != "querymeter":
                    continue
                for metric in scope.metrics:
                    received.setdefault(metric.name, metric)
    queries = received["db.client.querymeter.queries"]
    assert queries.sum.is_monotonic
    assert queries.sum.data_points[0].as_int == expected.queries
    total = received["db.client.querymeter.total_time"]
    assert total.unit == "s"
    assert total.sum.data_points[0].as_double == expected.total_ns / 1e9
    assert received["db.client.querymeter.in_flight"].sum.data_points[0].as_int == 1
    uptime = received["db.client.querymeter.uptime"]
    assert uptime.gauge.data_points[0].as_double == expected.uptime_ns / 1e9
