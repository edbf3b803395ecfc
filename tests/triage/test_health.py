"""health(): real queries on real drivers graded by the triage table, with their scope."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter
import querymeter.dbapi
from querymeter.markers import mark
from querymeter.triage import health
from tests.conftest import MeterType
from tests.servers import driver, postgres_dsn

sqlalchemy = pytest.importorskip("sqlalchemy")


@pytest.fixture
def meter(Meter: type[MeterType]) -> MeterType:
    made = Meter()
    made.enable_statements()
    return made


@pytest.fixture
def shop(meter: MeterType) -> Iterator[Any]:
    """An in-memory SQLite database with two tables, counting into ``meter``."""
    raw = sqlite3.connect(":memory:", check_same_thread=False)
    connection = querymeter.dbapi.wrap_connection(raw, meter=meter)
    connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
    connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    for i in range(50):
        connection.execute("INSERT INTO orders (total) VALUES (?)", (i,))
        connection.execute("INSERT INTO users (name) VALUES (?)", (f"u{i}",))
    yield connection
    connection.close()


def during(seconds: float, work: Callable[[], None]) -> Callable[[], None]:
    """Run ``work`` in a loop on a thread for ``seconds``; returns the join."""
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            work()

    thread = threading.Thread(target=loop)
    thread.start()
    return thread.join


def test_a_quiet_meter_is_ok(meter: MeterType) -> None:
    """Nothing counted and no engine: OK, with the window and the unchecked connection said."""
    found = health(meter, window=0.05)
    assert found.severity == "OK" and found.findings == ()
    assert found.connect.ok is None
    assert found.window is not None and found.window.queries == 0
    assert str(found).startswith("OK: no rule holds")


def test_failing_statement_is_sev1_and_the_scope_names_it(meter: MeterType, shop: Any) -> None:
    """Most queries failing on one missing table: SEV-1, and the errors are that statement's."""
    for _ in range(20):
        shop.execute("SELECT total FROM orders WHERE id = ?", (1,)).fetchall()

    def failing() -> None:
        with pytest.raises(sqlite3.OperationalError):
            shop.execute("SELECT * FROM invoices WHERE id = ?", (1,))
        time.sleep(0.001)

    join = during(0.3, failing)
    found = health(meter, window=0.2)
    join()
    assert found.severity == "SEV-1"
    assert found.rule == "most queries fail (error ratio at least 50 %)"
    assert found.error_ratio == 1.0
    top = found.scope.statements[0]
    assert top.name == "select * from invoices where id = ?"
    assert top.error_share == 1.0
    assert (
        "errors: one statement (100 %): select * from invoices where id = ?" in found.scope.summary
    )
    assert "errors: one table (100 %): invoices" in found.scope.summary
    assert str(found).startswith("SEV-1: most queries fail")


def test_slow_statement_against_its_own_past(meter: MeterType, shop: Any) -> None:
    """A statement three times slower than before: SEV-2, and the excess is that statement's."""
    slow = {"seconds": 0.0}

    def sleep(seconds: float) -> int:
        time.sleep(seconds)
        return 1

    raw = shop.__wrapped__ if hasattr(shop, "__wrapped__") else shop
    raw.create_function("pause", 1, lambda _: sleep(slow["seconds"]))
    for _ in range(30):
        shop.execute("SELECT pause(?) FROM users WHERE id = 1", (0,)).fetchall()
    # Each query now pauses 10 ms: far beyond 3x the microseconds it took before.
    slow["seconds"] = 0.010
    join = during(
        0.5, lambda: shop.execute("SELECT pause(?) FROM users WHERE id = 1", (0,)).fetchall()
    )
    found = health(meter, window=0.3)
    join()
    assert found.severity == "SEV-2", found
    assert found.rule == "response time at least 3 times the baseline's"
    assert found.baseline.source == "since the meter started"
    assert found.response_time is not None and found.response_time >= 0.010
    assert found.scope.statements[0].name == "select pause(?) from users where id = ?"
    assert any(
        s.startswith("latency excess: one table (100 %): users") for s in found.scope.summary
    )


def test_tags_from_samples_name_the_route(meter: MeterType, shop: Any) -> None:
    """With sampling, errors broken down by scope tag point at the one route that fails."""
    meter.enable_sampling(rate=1.0)

    def requests() -> None:
        with querymeter.scope(route="/orders"):
            shop.execute("SELECT total FROM orders WHERE id = ?", (2,)).fetchall()
        with querymeter.scope(route="/invoices"), pytest.raises(sqlite3.OperationalError):
            shop.execute("SELECT * FROM invoices")
        time.sleep(0.001)

    join = during(0.3, requests)
    found = health(meter, window=0.2)
    join()
    assert "errors: one route (100 %): /invoices" in found.scope.summary
    routes = {p.name: p for p in found.scope.tags if p.kind == "route"}
    assert routes["/invoices"].errors > 0
    assert "/orders" not in routes or routes["/orders"].errors == 0


def test_markers_are_listed(meter: MeterType) -> None:
    """The last change markers appear in the assessment and its summary."""
    mark("deploy triage-test", version="9.9")
    found = health(meter, window=0.01)
    assert found.markers[-1].label == "deploy triage-test"
    assert "deploy triage-test" in str(found)
    assert found.as_dict()["markers"][-1]["attrs"] == {"version": "9.9"}


def test_bad_arguments_are_named(meter: MeterType) -> None:
    """Windows, stuck_after and timeouts must be positive seconds; engine must be an engine."""
    with pytest.raises(ValueError, match="window must be more than 0"):
        health(meter, window=0)
    with pytest.raises(TypeError, match="stuck_after must be a number"):
        health(meter, stuck_after="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connect_timeout"):
        health(meter, connect_timeout=float("nan"))
    with pytest.raises(TypeError, match="engine must be a SQLAlchemy Engine"):
        health(meter, engine=object(), window=0.01)
    with pytest.raises(TypeError):
        health("meter")  # type: ignore[arg-type]


# ------------------------------------------------------------- the connection


@pytest.fixture
def engines() -> Iterator[Callable[..., Any]]:
    import querymeter.sqlalchemy as qs

    made: list[Any] = []

    def make(url: str, **kwargs: Any) -> Any:
        made.append(sqlalchemy.create_engine(url, **kwargs))
        return made[-1]

    yield make
    for engine in made:
        qs.uninstrument(engine)
        engine.dispose()


def pg_url() -> str:
    parts = dict(item.split("=", 1) for item in postgres_dsn().split())
    return (
        f"postgresql+psycopg://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
        f"{parts.get('port', '5432')}/{parts.get('dbname', 'test')}"
    )


@pytest.mark.servers
def test_connect_check_through_the_pool_counts_nothing(
    meter: MeterType, engines: Callable[..., Any]
) -> None:
    """The SELECT 1 answers through the instrumented engine's pool and moves no counter."""
    import querymeter.sqlalchemy as qs

    driver("psycopg")
    engine = engines(pg_url(), pool_size=2, max_overflow=0)
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    before = meter.snapshot()
    found = health(meter, engine, window=0.01)
    assert found.connect.ok is True and found.connect.seconds is not None
    assert meter.snapshot().queries == before.queries
    assert engine.pool.checkedout() == 0
    assert found.severity == "OK"
    assert [p.limit for p in found.pools] == [2]


def test_unreachable_database_is_sev1(meter: MeterType, engines: Callable[..., Any]) -> None:
    """A server that refuses the connection: SEV-1, cannot connect, with the driver's reason."""
    driver("psycopg")
    engine = engines("postgresql+psycopg://nobody@127.0.0.1:9/none", pool_size=1, max_overflow=0)
    found = health(meter, engine, window=0.01, connect_timeout=5)
    assert found.connect.ok is False
    assert "OperationalError" in found.connect.detail
    assert (found.severity, found.rule) == ("SEV-1", "cannot connect to the database")


@pytest.mark.servers
def test_full_pool_with_waiters_is_sev1_and_not_checked(
    meter: MeterType, engines: Callable[..., Any]
) -> None:
    """Every pool connection held and a checkout waiting: SEV-1; the check opens nothing more."""
    import querymeter.sqlalchemy as qs

    driver("psycopg")
    engine = engines(pg_url(), pool_size=2, max_overflow=0, pool_timeout=5)
    qs.instrument(engine, meter=meter)
    held = [engine.connect(), engine.connect()]
    waiter = threading.Thread(target=lambda: engine.connect().close())
    waiter.start()
    deadline = time.monotonic() + 5
    while qs.pool_snapshot(engine).waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        found = health(meter, engine, window=0.01)
        assert found.connect.ok is None and "no connection free" in found.connect.detail
        assert (found.severity, found.rule) == (
            "SEV-1",
            "the pool is out of connections and requests wait",
        )
        assert found.pools[0].in_use == 2 and found.pools[0].waiting == 1
        assert engine.pool.checkedout() == 2
    finally:
        for connection in held:
            connection.close()
        waiter.join()


# ------------------------------------------------------ the recorder, stuck queries


def simulate(
    meter: MeterType, clock: Any, recorder: Any, seconds: int, duration_ns: int, sql: str
) -> None:
    """``seconds`` simulated seconds of 10 queries each lasting ``duration_ns``, a step each."""
    for _ in range(seconds):
        for _ in range(10):
            with meter.track(sql=sql):
                clock.advance(duration_ns)
        clock.advance(1_000_000_000 - 10 * duration_ns)
        recorder.take()


def test_the_recorder_gives_the_window_and_the_baseline(fake_meter: MeterType, clock: Any) -> None:
    """With a recorder, the last 60 s are graded against its baseline: 10x slower is SEV-2."""
    from querymeter.recorder import FlightRecorder

    fake_meter.enable_statements()
    recorder = FlightRecorder(fake_meter, resolutions=((1.0, 900), (60.0, 1440)))
    recorder.take()
    sql = "SELECT name FROM users WHERE id = 1"
    simulate(fake_meter, clock, recorder, 14 * 60, 10_000_000, sql)  # 14 min at 10 ms
    simulate(fake_meter, clock, recorder, 60, 100_000_000, sql)  # the last minute at 100 ms
    found = health(fake_meter, recorder=recorder)
    assert found.window is not None and found.window.duration == pytest.approx(60.0)
    assert found.response_time == pytest.approx(0.100)
    assert found.baseline.source.startswith("the flight recorder's")
    assert found.baseline.response_time == pytest.approx(0.010)
    assert (found.severity, found.rule) == (
        "SEV-2",
        "response time at least 3 times the baseline's",
    )
    top = found.scope.statements[0]
    assert top.name == "select name from users where id = ?"
    # Excess: 600 calls each 90 ms beyond the recorder's median of 10 ms.
    assert top.excess_s == pytest.approx(600 * 0.090)


@pytest.mark.servers
def test_a_query_running_longer_than_stuck_after(meter: MeterType) -> None:
    """A pg_sleep still running after stuck_after: SEV-2, with its age."""
    psycopg = driver("psycopg")
    connection = querymeter.dbapi.wrap_connection(
        psycopg.connect(postgres_dsn(), autocommit=True), meter=meter
    )
    sleeper = threading.Thread(target=lambda: connection.execute("SELECT pg_sleep(1.5)"))
    sleeper.start()
    try:
        time.sleep(0.6)
        found = health(meter, window=0.01, stuck_after=0.5)
        assert found.in_flight == 1
        assert found.oldest_in_flight is not None and 0.5 <= found.oldest_in_flight < 1.5
        assert (found.severity, found.rule) == (
            "SEV-2",
            "a query in flight longer than stuck_after",
        )
    finally:
        sleeper.join()
        connection.close()
    assert health(meter, window=0.01, stuck_after=0.5).oldest_in_flight is None
