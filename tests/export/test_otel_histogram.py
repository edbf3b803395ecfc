"""querymeter.otel with histogram=True: db.client.operation.duration, recorded per query."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter
from querymeter import dbapi
from querymeter.meter import Meter as MeterType
from querymeter.meter import _observing

from ..conftest import FakeClock
from ..servers import mysql_params, postgres_dsn

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from querymeter import otel
from querymeter.otel import instrument_metrics

DURATION = "db.client.operation.duration"
# The semantic conventions' advice for this histogram, copied from them (not from otel.py).
ADVISED_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
MS = 1_000_000
S = 1_000_000_000

Attributes = frozenset[tuple[str, Any]]


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    """A provider of its own for each test; the global one is never set."""
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    yield provider
    provider.shutdown()


@pytest.fixture
def instrumented() -> Iterator[Callable[..., otel.MetricsInstrumentation]]:
    """instrument_metrics(), each instrumentation ended after the test."""
    made: list[otel.MetricsInstrumentation] = []

    def instrument(*args: Any, **kwargs: Any) -> otel.MetricsInstrumentation:
        made.append(instrument_metrics(*args, **kwargs))
        return made[-1]

    yield instrument
    for instrumentation in made:
        instrumentation.uninstrument()


def histogram_points(reader: InMemoryMetricReader) -> dict[Attributes, Any]:
    """One collection: the duration histogram's points by attributes ({} if none)."""
    data = reader.get_metrics_data()
    points: dict[Attributes, Any] = {}
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == DURATION:
                    assert scope.scope.name == "querymeter"
                    assert type(metric.data).__name__ == "Histogram"
                    assert metric.unit == "s"
                    for point in metric.data.data_points:
                        points[frozenset(point.attributes.items())] = point
    return points


def key(**attributes: str) -> Attributes:
    """Attributes given as keywords, with _ for the dots: db_system_name="sqlite"."""
    return frozenset((name.replace("_", "."), value) for name, value in attributes.items())


def test_durations_fall_in_the_advised_buckets(
    fake_meter: MeterType,
    clock: FakeClock,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
) -> None:
    """Known durations land in the semantic conventions' buckets, upper bounds inclusive;
    count and sum are those of the queries run, and of the meter."""
    instrumented(provider, meter=fake_meter, histogram=True)
    durations_ns = [MS // 2, 1 * MS, 3 * MS, 20 * MS, 2 * S, 12 * S]
    for duration in durations_ns:
        with fake_meter.track("SELECT a FROM t"):
            clock.advance(duration)
    points = histogram_points(reader)
    point = points[key(db_operation_name="SELECT", db_collection_name="t")]
    assert tuple(point.explicit_bounds) == ADVISED_BOUNDS
    # <=1 ms: 0.5 and 1 ms; <=5 ms: 3 ms; <=50 ms: 20 ms; <=5 s: 2 s; above 10 s: 12 s.
    assert tuple(point.bucket_counts) == (2, 1, 0, 1, 0, 0, 0, 1, 0, 1)
    assert point.count == len(durations_ns) == fake_meter.snapshot().queries
    assert point.sum == pytest.approx(sum(durations_ns) / S, rel=1e-15)
    assert point.sum == pytest.approx(fake_meter.snapshot().total_ns / S, rel=1e-15)
    assert (point.min, point.max) == (0.0005, 12.0)


@pytest.mark.parametrize(
    ("dialect", "system"),
    [
        ("postgresql", "postgresql"),
        ("mysql", "mysql"),
        ("mariadb", "mariadb"),
        ("sqlite", "sqlite"),
        (None, None),
    ],
)
def test_the_dialect_names_the_database_system(
    fake_meter: MeterType,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
    dialect: str | None,
    system: str | None,
) -> None:
    """db.system.name is the conventions' name of the hook's dialect, absent without one."""
    instrumented(provider, meter=fake_meter, histogram=True)
    with fake_meter._track_statement("DELETE FROM t WHERE id = 1", dialect):
        pass
    expected = {"db.operation.name": "DELETE", "db.collection.name": "t"}
    if system is not None:
        expected["db.system.name"] = system
    assert list(histogram_points(reader)) == [frozenset(expected.items())]


def test_the_semantic_conventions_names_are_the_installed_ones() -> None:
    """The histogram's and its attributes' names, and the system names, are the installed
    semantic conventions package's."""
    metrics = pytest.importorskip("opentelemetry.semconv.metrics.db_metrics")
    db = pytest.importorskip("opentelemetry.semconv.attributes.db_attributes")
    error = pytest.importorskip("opentelemetry.semconv.attributes.error_attributes")
    incubating = pytest.importorskip("opentelemetry.semconv._incubating.attributes.db_attributes")
    assert metrics.DB_CLIENT_OPERATION_DURATION == otel.OPERATION_DURATION == DURATION
    assert db.DB_SYSTEM_NAME == otel.SYSTEM_NAME
    assert db.DB_OPERATION_NAME == otel.OPERATION_NAME
    assert db.DB_COLLECTION_NAME == otel.COLLECTION_NAME
    assert error.ERROR_TYPE == otel.ERROR_TYPE
    assert error.ErrorTypeValues.OTHER.value == otel.OTHER_ERROR
    known = {value.value for value in incubating.DbSystemNameValues}
    assert set(otel._SYSTEM_NAMES.values()) <= known
    assert otel.DURATION_BUCKETS == ADVISED_BOUNDS


@pytest.mark.parametrize(
    ("sql", "operation", "collection"),
    [
        ("SELECT * FROM users WHERE id = 1", "SELECT", "users"),
        ("insert into orders (a) values (1), (2)", "INSERT", "orders"),
        ('UPDATE "Orders" SET x = 1', "UPDATE", "Orders"),
        ("/* a comment */ select 1", "SELECT", None),
        ("SELECT * FROM a JOIN b ON a.id = b.id", "SELECT", None),
        ("with x as (select a from t) select * from x", "SELECT", None),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", "INSERT", None),
        ("(select a from t) union (select a from t)", "SELECT", "t"),
        ("CREATE TABLE foo (a int)", "CREATE", "foo"),
        ("BEGIN", "BEGIN", None),
        ("SELECT 1; SELECT 2", None, None),
        ("", None, None),
    ],
)
def test_operation_and_collection_names_come_from_the_statement(
    fake_meter: MeterType,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
    sql: str,
    operation: str | None,
    collection: str | None,
) -> None:
    """The operation is the statement's (upper case); the collection only where the
    statement names one table; several statements have no single operation."""
    instrumented(provider, meter=fake_meter, histogram=True)
    with fake_meter._track_statement(sql, "postgresql"):
        pass
    expected = {"db.system.name": "postgresql"}
    if operation is not None:
        expected["db.operation.name"] = operation
    if collection is not None:
        expected["db.collection.name"] = collection
    assert list(histogram_points(reader)) == [frozenset(expected.items())]


def test_a_query_without_a_statement_has_no_attributes(
    fake_meter: MeterType,
    clock: FakeClock,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
) -> None:
    """begin()/end() and tracked functions are recorded without attributes; an error that
    was not an exception has error.type _OTHER."""
    instrumented(provider, meter=fake_meter, histogram=True)
    token = fake_meter.begin()
    clock.advance(2 * MS)
    fake_meter.end(token)
    token = fake_meter.begin()
    clock.advance(4 * MS)
    fake_meter.end(token, error=True)
    points = histogram_points(reader)
    assert {attributes: (p.count, p.sum) for attributes, p in points.items()} == {
        frozenset(): (1, 0.002),
        key(error_type="_OTHER"): (1, 0.004),
    }


def run_sqlite(counted: Any) -> None:
    """Five statements on a counted SQLite connection, the last one failing."""
    cursor = counted.cursor()
    cursor.execute("CREATE TABLE item (id INTEGER, name TEXT)")
    cursor.executemany("INSERT INTO item VALUES (?, ?)", [(1, "a"), (2, "b")])
    cursor.execute("SELECT name FROM item WHERE id = ?", (1,))
    cursor.execute("SELECT name FROM item WHERE id = ?", (2,))
    cursor.execute("SELECT * FROM missing")


def test_sqlite3_queries_are_recorded_with_their_attributes(
    Meter: type[MeterType],
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
) -> None:
    """Each sqlite3 statement is one observation under its attributes; the failed one has
    error.type, and the driver's exception reaches the caller unchanged."""
    meter = Meter()
    instrumented(provider, meter=meter, histogram=True)
    counted = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    with pytest.raises(sqlite3.OperationalError, match="no such table: missing") as caught:
        run_sqlite(counted)
    assert caught.value.__context__ is None
    points = histogram_points(reader)
    sqlite = {"db_system_name": "sqlite"}
    assert {attributes: p.count for attributes, p in points.items()} == {
        key(**sqlite, db_operation_name="CREATE", db_collection_name="item"): 1,
        key(**sqlite, db_operation_name="INSERT", db_collection_name="item"): 1,
        key(**sqlite, db_operation_name="SELECT", db_collection_name="item"): 2,
        key(
            **sqlite,
            db_operation_name="SELECT",
            db_collection_name="missing",
            error_type="sqlite3.OperationalError",
        ): 1,
    }
    snapshot = meter.snapshot()
    assert sum(p.count for p in points.values()) == snapshot.queries == 5
    # Each observation is elapsed_ns / 1e9: equal to the meter's total but for float rounding.
    assert sum(p.sum for p in points.values()) == pytest.approx(snapshot.total_ns / S, abs=1e-12)
    counted.close()


def test_postgresql_through_psycopg(
    Meter: type[MeterType],
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
) -> None:
    """psycopg's statements are PostgreSQL's, and a server error has its psycopg class."""
    dsn = postgres_dsn()
    import psycopg

    meter = Meter()
    instrumented(provider, meter=meter, histogram=True)
    with psycopg.connect(dsn, autocommit=True) as connection:
        dbapi.wrap_connection(connection, meter=meter)
        with connection.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE qm_otel_item (id int)")
            cursor.execute("INSERT INTO qm_otel_item VALUES (%s)", (1,))
            cursor.execute("SELECT id FROM qm_otel_item")
            with pytest.raises(psycopg.errors.UndefinedTable):
                cursor.execute("SELECT * FROM qm_otel_missing")
    points = histogram_points(reader)
    pg = {"db_system_name": "postgresql"}
    assert {attributes: p.count for attributes, p in points.items()} == {
        key(**pg, db_operation_name="CREATE", db_collection_name="qm_otel_item"): 1,
        key(**pg, db_operation_name="INSERT", db_collection_name="qm_otel_item"): 1,
        key(**pg, db_operation_name="SELECT", db_collection_name="qm_otel_item"): 1,
        key(
            **pg,
            db_operation_name="SELECT",
            db_collection_name="qm_otel_missing",
            error_type="psycopg.errors.UndefinedTable",
        ): 1,
    }
    assert sum(p.count for p in points.values()) == meter.snapshot().queries == 4


def test_mariadb_through_pymysql(
    Meter: type[MeterType],
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
) -> None:
    """PyMySQL's statements are MySQL's (the driver's dialect: it cannot tell MariaDB
    apart), and a server error has its pymysql class."""
    params = mysql_params()
    import pymysql

    meter = Meter()
    instrumented(provider, meter=meter, histogram=True)
    connection = pymysql.connect(autocommit=True, **params)
    try:
        dbapi.wrap_connection(connection, meter=meter)
        with connection.cursor() as cursor:
            cursor.execute("CREATE TEMPORARY TABLE qm_otel_item (id int)")
            cursor.executemany("INSERT INTO qm_otel_item VALUES (%s)", [(1,), (2,)])
            cursor.execute("SELECT id FROM qm_otel_item")
            with pytest.raises(pymysql.err.ProgrammingError):
                cursor.execute("SELECT * FROM qm_otel_missing")
    finally:
        connection.close()
    points = histogram_points(reader)
    mysql = {"db_system_name": "mysql"}
    assert {attributes: p.count for attributes, p in points.items()} == {
        key(**mysql, db_operation_name="CREATE", db_collection_name="qm_otel_item"): 1,
        key(**mysql, db_operation_name="INSERT", db_collection_name="qm_otel_item"): 1,
        key(**mysql, db_operation_name="SELECT", db_collection_name="qm_otel_item"): 1,
        key(
            **mysql,
            db_operation_name="SELECT",
            db_collection_name="qm_otel_missing",
            error_type="pymysql.err.ProgrammingError",
        ): 1,
    }
    assert sum(p.count for p in points.values()) == meter.snapshot().queries == 4


def test_sqlalchemy_engines_pass_their_dialects_name(
    Meter: type[MeterType],
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
) -> None:
    """Through an instrumented SQLAlchemy engine, statements carry the engine's dialect."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    meter = Meter()
    instrumented(provider, meter=meter, histogram=True)
    engine = sqlalchemy.create_engine("sqlite://")
    qs.instrument(engine, meter=meter)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("CREATE TABLE item (id INTEGER)"))
            connection.execute(sqlalchemy.text("INSERT INTO item VALUES (:id)"), [{"id": 1}])
            connection.execute(sqlalchemy.text("SELECT id FROM item")).fetchall()
    finally:
        qs.uninstrument(engine)
        engine.dispose()
    points = histogram_points(reader)
    counts = {attributes: p.count for attributes, p in points.items()}
    sqlite = {"db_system_name": "sqlite", "db_collection_name": "item"}
    for operation in ("CREATE", "INSERT", "SELECT"):
        assert counts[key(**sqlite, db_operation_name=operation)] == 1
    assert sum(counts.values()) == meter.snapshot().queries


def test_a_failure_to_record_is_a_fault_and_the_query_goes_on(
    Meter: type[MeterType],
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception while recording is counted as a fault, never raised; the driver's
    result and exceptions are what they were."""

    def broken(sql: Any, dialect: Any) -> dict[str, str]:
        raise RuntimeError("cannot name it")

    monkeypatch.setattr(otel, "_query_attributes", broken)
    meter = Meter()
    instrumented(provider, meter=meter, histogram=True)
    cause = "could not call a query observer"
    before = querymeter.faults().get(cause, 0)
    counted = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    assert counted.execute("SELECT 'a new text, not cached' AS x").fetchall() == [
        ("a new text, not cached",)
    ]
    with pytest.raises(sqlite3.OperationalError, match="no such table") as caught:
        counted.execute("SELECT * FROM another_new_text")
    assert caught.value.__context__ is None
    assert querymeter.faults()[cause] == before + 2
    assert meter.snapshot().queries == 2
    assert histogram_points(reader) == {}
    counted.close()


def test_histogram_false_records_nothing_and_installs_nothing(
    Meter: type[MeterType],
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
) -> None:
    """Without histogram=True the meter has no observer and there is no histogram."""
    meter = Meter()
    instrumented(provider, meter=meter)
    assert _observing(meter).observers == ()
    counted = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    counted.execute("SELECT 1")
    data = reader.get_metrics_data()
    names = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert "db.client.querymeter.queries" in names
    assert DURATION not in names
    counted.close()


def test_uninstrument_takes_the_observer_out(
    fake_meter: MeterType,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
) -> None:
    """After uninstrument() the meter has no observer and queries are not recorded; a new
    instrumentation with the histogram records again, into the same instrument."""
    instrumentation = instrument_metrics(provider, meter=fake_meter, histogram=True)
    assert len(_observing(fake_meter).observers) == 1
    with fake_meter.track("SELECT 1"):
        pass
    instrumentation.uninstrument()
    instrumentation.uninstrument()
    assert _observing(fake_meter).observers == ()
    with fake_meter.track("SELECT 1"):
        pass
    assert histogram_points(reader)[key(db_operation_name="SELECT")].count == 1
    again = instrument_metrics(provider, meter=fake_meter, histogram=True)
    try:
        with fake_meter.track("SELECT 1"):
            pass
        assert histogram_points(reader)[key(db_operation_name="SELECT")].count == 2
    finally:
        again.uninstrument()


def test_two_providers_each_record_every_query(
    fake_meter: MeterType, clock: FakeClock, instrumented: Callable[..., Any]
) -> None:
    """Two providers instrumenting one meter both see each query; ending one leaves the other."""
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    providers = [MeterProvider(metric_readers=[r], shutdown_on_exit=False) for r in readers]
    try:
        first = instrumented(providers[0], meter=fake_meter, histogram=True)
        instrumented(providers[1], meter=fake_meter, histogram=True)
        for _ in range(3):
            with fake_meter.track("SELECT 1"):
                clock.advance(MS)
        first.uninstrument()
        with fake_meter.track("SELECT 1"):
            clock.advance(MS)
        counts = [histogram_points(r)[key(db_operation_name="SELECT")].count for r in readers]
        assert counts == [3, 4]
    finally:
        for provider in providers:
            provider.shutdown()


@pytest.mark.parametrize("histogram", [1, "yes", None])
def test_histogram_must_be_a_bool(Meter: type[MeterType], histogram: Any) -> None:
    """A histogram argument that is not a bool is refused, naming its type."""
    meter = Meter()
    with pytest.raises(
        TypeError, match=f"histogram must be a bool, not {type(histogram).__name__}"
    ):
        instrument_metrics(MeterProvider(), meter=meter, histogram=histogram)
    assert _observing(meter).observers == ()


def test_the_attribute_cache_is_bounded(
    fake_meter: MeterType,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More distinct texts than the cache holds keep it within its bound, and each is
    still recorded under its own attributes."""
    monkeypatch.setattr(otel, "_ATTRIBUTES_MAX_ENTRIES", 10)
    monkeypatch.setattr(otel, "_attributes", {})
    monkeypatch.setattr(otel, "_collections", set())
    instrumented(provider, meter=fake_meter, histogram=True)
    for n in range(35):
        with fake_meter._track_statement(f"SELECT * FROM t{n}", "sqlite"):
            pass
        assert len(otel._attributes) <= 10
    points = histogram_points(reader)
    assert len(points) == 35
    assert {dict(attributes)["db.collection.name"] for attributes in points} == {
        f"t{n}" for n in range(35)
    }


def test_distinct_names_are_bounded(
    fake_meter: MeterType,
    provider: MeterProvider,
    reader: InMemoryMetricReader,
    instrumented: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the bound of distinct collection and operation names, a new name is left out
    (the query is still recorded); the names seen before keep being exported."""
    monkeypatch.setattr(otel, "MAX_COLLECTIONS", 3)
    monkeypatch.setattr(otel, "MAX_OPERATIONS", 2)
    monkeypatch.setattr(otel, "_collections", set())
    monkeypatch.setattr(otel, "_operations", set())
    monkeypatch.setattr(otel, "_attributes", {})
    instrumented(provider, meter=fake_meter, histogram=True)
    statements = [
        "SELECT * FROM t1",
        "SELECT * FROM t2",
        "DELETE FROM t3",
        "DELETE FROM t4",  # a fourth table: left out
        "UPDATE t1 SET a = 1",  # a third operation: left out
        "SELECT * FROM t2",
    ]
    for sql in statements:
        with fake_meter._track_statement(sql, "sqlite"):
            pass
    points = histogram_points(reader)
    assert {attributes: p.count for attributes, p in points.items()} == {
        key(db_system_name="sqlite", db_operation_name="SELECT", db_collection_name="t1"): 1,
        key(db_system_name="sqlite", db_operation_name="SELECT", db_collection_name="t2"): 2,
        key(db_system_name="sqlite", db_operation_name="DELETE", db_collection_name="t3"): 1,
        key(db_system_name="sqlite", db_operation_name="DELETE"): 1,
        key(db_system_name="sqlite", db_collection_name="t1"): 1,
    }


FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from querymeter.meter import meter_class
    from querymeter.otel import instrument_metrics

    def count(reader):
        total = 0
        for resource in reader.get_metrics_data().resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "db.client.operation.duration":
                        total += sum(p.count for p in metric.data.data_points)
        return total

    meter = meter_class(sys.argv[1])()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    instrumentation = instrument_metrics(provider, meter=meter, histogram=True)
    with meter.track("SELECT 1"):
        pass
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        before = count(reader)
        for _ in range(2):
            with meter.track("SELECT 1"):
                pass
        after = count(reader)
        instrumentation.uninstrument()
        with meter.track("SELECT 1"):
            pass
        ended = count(reader)
        os.write(write_end, json.dumps([before, after, ended]).encode())
        os._exit(0)
    os.close(write_end)
    child = json.loads(os.read(read_end, 65536))
    os.waitpid(pid, 0)
    print(json.dumps({"child": child, "parent": count(reader)}))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_forked_child_goes_on_recording_its_own_queries(implementation: str) -> None:
    """In a forked child the histogram records the child's queries (as the statement table
    goes on there), uninstrument() there ends it, and the parent records none of them."""
    # A fresh interpreter: forking this multi-threaded test process is unsafe.
    output = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, implementation],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    result = json.loads(output)
    before, after, ended = result["child"]
    assert (after - before, ended - after) == (2, 0)
    assert result["parent"] == 1
