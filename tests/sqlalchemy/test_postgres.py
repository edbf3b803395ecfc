"""PostgreSQL through psycopg 3 (sync), and psycopg2 for its server-side cursors.

Counts, overlap, pool waits and timeouts, a failed pre-ping, a late error, and the
hand-over with querymeter.dbapi.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

import querymeter.dbapi as dbapi
import querymeter.sqlalchemy as qs
from querymeter.meter import Meter as MeterType

from ..dbapi import overlap
from ..servers import driver, postgres_dsn
from .conftest import pg_url

pytestmark = pytest.mark.servers

sqlalchemy = driver("sqlalchemy")
orm = driver("sqlalchemy.orm")
psycopg = driver("psycopg")
event = sqlalchemy.event

HOLD_S = 0.2  # how long each thread holds its connection in the pool test
MS = 1_000_000


@pytest.fixture
def pg_engine(make_engine: Callable[..., Any]) -> Callable[..., Any]:
    """create_engine() on the test server through psycopg 3."""

    def make(**kwargs: Any) -> Any:
        return make_engine(pg_url("psycopg"), **kwargs)

    return make


def warm_up(engine: Any, connections: int = 1) -> None:
    """Open ``connections`` connections at once and give them back: the first connect is done."""
    held = [engine.connect() for _ in range(connections)]
    for connection in held:
        connection.close()


# ---------------------------------------------------------------- counting


def test_first_connect_initialize_queries_are_counted(
    meter: MeterType, pg_engine: Callable[..., Any]
) -> None:
    """The dialect's initialize queries on the first connection are counted, once each."""
    engine = pg_engine()
    calls: list[str] = []
    # A DialectEvents listener sees every do_execute call the dispatch loop makes.
    event.listen(engine, "do_execute", lambda cursor, statement, *rest: calls.append(statement))
    qs.instrument(engine, meter=meter)
    warm_up(engine)
    snap = meter.snapshot()
    assert snap.queries == len(calls) >= 1
    assert any("version()" in statement for statement in calls)
    assert (snap.errors, snap.concurrency) == (0, 0)


def test_core_and_orm_statements_count_once_each(
    Meter: type[MeterType], pg_engine: Callable[..., Any]
) -> None:
    """Core and ORM statements count once each, equal to what the driver itself was asked."""
    engine_meter, driver_meter = Meter(), Meter()
    # The oracle: querymeter.dbapi counting the driver's cursors, into another meter.
    dbapi.instrument(psycopg, meter=driver_meter)
    engine = pg_engine(insertmanyvalues_page_size=2)
    qs.instrument(engine, meter=engine_meter)
    warm_up(engine)

    class Base(orm.DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "qm_sa_item"
        __table_args__: ClassVar[dict[str, Any]] = {"prefixes": ["TEMPORARY"]}
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str | None]

    before = engine_meter.snapshot().queries, driver_meter.snapshot().queries
    with orm.Session(engine) as session:
        connection = session.connection()
        Base.metadata.create_all(connection)  # one CREATE (checkfirst looks up pg_class first)
        table = Item.__table__
        connection.execute(table.insert(), [{"name": f"core{n}"} for n in range(3)])
        session.add_all([Item(name=f"orm{n}") for n in range(5)])
        session.flush()  # insertmanyvalues, 2 rows a batch: 3 batches
        items = session.scalars(sqlalchemy.select(Item).order_by(Item.id)).all()
        assert len(items) == 8
        items[0].name = "renamed"
        session.flush()
        session.execute(sqlalchemy.delete(Item).where(Item.name.like("core%")))
        session.rollback()
    after = engine_meter.snapshot().queries, driver_meter.snapshot().queries
    # has_table, CREATE, executemany, 3 batches, SELECT, UPDATE, DELETE.
    assert (after[0] - before[0], after[1] - before[1]) == (9, 9)
    snap = engine_meter.snapshot()
    assert (snap.errors, snap.concurrency) == (0, 0)


def test_failures_count_as_errors_with_concurrency_back_to_zero(
    meter: MeterType, pg_engine: Callable[..., Any]
) -> None:
    """A failing statement is an error query, its driver exception kept, concurrency back to 0."""
    engine = pg_engine()
    qs.instrument(engine, meter=meter)
    warm_up(engine)
    before = meter.snapshot()
    with engine.connect() as connection:
        with pytest.raises(sqlalchemy.exc.DataError) as caught:
            connection.exec_driver_sql("SELECT 1/0")
        assert isinstance(caught.value.orig, psycopg.errors.DivisionByZero)
        connection.rollback()
        with pytest.raises(sqlalchemy.exc.ProgrammingError):
            connection.exec_driver_sql("SELECT * FROM qm_no_such_table")
    interval = meter.snapshot() - before
    assert (interval.queries, interval.errors, interval.later.concurrency) == (2, 2, 0)


def test_four_threads_overlap(meter: MeterType, pg_engine: Callable[..., Any]) -> None:
    """4 threads sleeping 0.3 s on the server through one engine: concurrency 4, Δtotal ≈ 1.2 s."""
    engine = pg_engine(pool_size=overlap.QUERIES)
    qs.instrument(engine, meter=meter)
    warm_up(engine, overlap.QUERIES)

    def query() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"SELECT pg_sleep({overlap.SLEEP_S})")

    overlap.check(overlap.in_threads(meter, [query] * overlap.QUERIES))


# -------------------------------------------------------------------- pool


def test_pool_waits_match_what_the_threads_measured(
    meter: MeterType, pg_engine: Callable[..., Any]
) -> None:
    """pool_size=2, 6 threads holding a connection 0.2 s: 4 waits, timed as the threads saw them."""
    engine = pg_engine(pool_size=2, max_overflow=0)
    qs.instrument(engine, meter=meter)
    warm_up(engine, 2)
    threads_count = 6
    barrier = threading.Barrier(threads_count + 1)
    checkout_ns: list[int] = []
    lock = threading.Lock()

    def hold() -> None:
        barrier.wait()
        start = time.perf_counter_ns()
        with engine.connect() as connection:
            elapsed = time.perf_counter_ns() - start
            with lock:
                checkout_ns.append(elapsed)
            connection.exec_driver_sql("SELECT 1")
            time.sleep(HOLD_S)

    threads = [threading.Thread(target=hold) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    before = qs.pool_snapshot(engine)
    barrier.wait()
    deadline = time.monotonic() + HOLD_S * 0.75
    during = qs.pool_snapshot(engine)
    while during.waiting < 4 and time.monotonic() < deadline:
        time.sleep(0.002)
        during = qs.pool_snapshot(engine)
    for thread in threads:
        thread.join()
    interval = qs.pool_snapshot(engine) - before

    assert (during.waiting, during.in_use, during.idle) == (4, 2, 0)
    # The threads that waited are those whose checkout took longer than a small
    # fraction of a hold; the pool's wait is part of each such checkout, and the
    # rest of it (the non-blocking attempt, locks, scheduling) stays under 20 ms.
    waited = [ns for ns in checkout_ns if ns > HOLD_S * 1e9 / 4]
    assert (interval.waits, len(waited), interval.checkouts, interval.timeouts) == (4, 4, 6, 0)
    assert 0 <= sum(waited) - interval.wait_ns <= len(waited) * 20 * MS
    # Two waited one hold, two waited two holds: 1.2 s in all, give or take scheduling.
    assert 6 * HOLD_S - 0.1 <= interval.wait_ns / 1e9 <= 6 * HOLD_S + 0.25
    assert interval.waited_fraction == pytest.approx(4 / 6)
    assert interval.mean_wait == pytest.approx(interval.wait_ns / 4 / 1e9)
    assert interval.later.waiting == interval.later.in_use == 0


def test_a_checkout_timeout_is_counted_and_reaches_the_caller_unchanged(
    meter: MeterType, pg_engine: Callable[..., Any]
) -> None:
    """With the pool exhausted, pool_timeout counts a wait and a timeout; the very TimeoutError
    that the pool raised reaches the caller."""
    engine = pg_engine(pool_size=1, max_overflow=0, pool_timeout=0.2)
    raised: list[BaseException] = []
    do_get = engine.pool._do_get

    def spy() -> Any:
        try:
            return do_get()
        except BaseException as exc:
            raised.append(exc)
            raise

    engine.pool._do_get = spy
    qs.instrument(engine, meter=meter)
    held = engine.connect()
    before = qs.pool_snapshot(engine)
    started = time.monotonic_ns()
    with pytest.raises(sqlalchemy.exc.TimeoutError) as caught:
        engine.connect()
    elapsed_ns = time.monotonic_ns() - started
    after = qs.pool_snapshot(engine)
    held.close()
    assert caught.value is raised[0]
    interval = after - before
    assert (interval.timeouts, interval.waits, interval.checkout_failures) == (1, 1, 1)
    assert (interval.checkouts, after.in_use, after.waiting) == (0, 1, 0)
    # The wait lasted the pool's timeout at least, and no longer than the call
    # that waited (timed around it here, whatever the machine's load).
    assert 0.2e9 <= interval.wait_ns <= elapsed_ns
    assert interval.timeout_rate is not None and interval.timeout_rate > 0


def test_a_failed_pre_ping_is_an_error_query_and_the_reconnect_a_creation(
    meter: MeterType, pg_engine: Callable[..., Any]
) -> None:
    """A backend killed under a pooled connection: the ping fails as an error query, the pool
    reconnects (one creation, one invalidation), and nothing is left in flight."""
    engine = pg_engine(pool_size=1, pool_pre_ping=True)
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    with psycopg.connect(postgres_dsn(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone() != (0,):
            time.sleep(0.01)
    before, pool_before = meter.snapshot(), qs.pool_snapshot(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    interval, pool = meter.snapshot() - before, qs.pool_snapshot(engine) - pool_before
    assert (interval.queries, interval.errors, interval.later.concurrency) == (2, 1, 0)
    assert (pool.checkouts, pool.creations, pool.invalidations, pool.checkout_failures) == (
        1,
        1,
        1,
        0,
    )
    assert (pool.later.in_use, pool.later.idle) == (0, 1)


def test_a_server_side_cursor_error_after_after_cursor_execute_is_not_counted_again(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """psycopg2's streamed result failing in its first fetch fires handle_error after
    after_cursor_execute: the statement stays one query, counted once, nothing in flight."""
    driver("psycopg2")
    engine = make_engine(pg_url("psycopg2"))
    qs.instrument(engine, meter=meter)
    warm_up(engine)
    order: list[str] = []
    event.listen(engine, "after_cursor_execute", lambda *args: order.append("after"))
    event.listen(engine, "handle_error", lambda context: order.append("handle_error"))
    before = meter.snapshot()
    with engine.connect() as connection, pytest.raises(sqlalchemy.exc.DataError):
        connection.execution_options(stream_results=True).exec_driver_sql(
            "SELECT 1/(x-1) FROM generate_series(1, 10) x"
        ).all()
    interval = meter.snapshot() - before
    assert order == ["after", "handle_error"]
    # DECLARE succeeded; the division failed while fetching, after the call returned.
    assert (interval.queries, interval.errors, interval.later.concurrency) == (1, 0, 0)


# ----------------------------------------------------- with querymeter.dbapi


def test_dbapi_and_engine_on_one_meter_count_each_statement_once(
    meter: MeterType, pg_engine: Callable[..., Any]
) -> None:
    """psycopg instrumented with the engine's meter: each statement once, and the driver's
    counting comes back after uninstrument."""
    dbapi.instrument(psycopg, meter=meter)
    engine = pg_engine()
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        before = meter.snapshot().queries
        for _ in range(3):
            connection.exec_driver_sql("SELECT 1")
        assert meter.snapshot().queries == before + 3
    qs.uninstrument(engine)
    assert dbapi.meter_of(raw) is meter
    with engine.connect() as connection:
        before = meter.snapshot().queries
        connection.exec_driver_sql("SELECT 1")
        assert meter.snapshot().queries == before + 1
