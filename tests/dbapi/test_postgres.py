"""psycopg 3 (sync and async) and psycopg2 on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter.dbapi as dbapi
from querymeter.meter import Meter as MeterType

from ..servers import driver
from . import overlap, transparency

psycopg = driver("psycopg")
psycopg2 = driver("psycopg2")
driver("psycopg2.extensions")
driver("psycopg2.extras")
sql = driver("psycopg.sql")
dict_row = driver("psycopg.rows").dict_row


outcome = functools.partial(
    transparency.outcome, cursor_types=(psycopg.Cursor, psycopg2.extensions.cursor)
)


# ------------------------------------------------------------------ psycopg 3


@pytest.fixture
def counted_psycopg(meter: MeterType, pg_dsn: str) -> Iterator[Any]:
    dbapi.instrument(psycopg, meter=meter)
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def test_psycopg_counts_every_statement_sending_call_once(
    counted_psycopg: Any, meter: MeterType
) -> None:
    """execute, executemany, stream, copy, Connection.execute and server cursors count once each."""
    connection = counted_psycopg
    connection.execute("CREATE TEMPORARY TABLE item (id int, name text)")
    with connection.cursor() as cursor:
        cursor.executemany("INSERT INTO item VALUES (%s, %s)", ((n, f"n{n}") for n in range(5)))
        cursor.execute("SELECT count(*) FROM item")
        assert cursor.fetchone() == (5,)
        assert [row[0] for row in cursor.stream("SELECT id FROM item ORDER BY id")] == [
            0,
            1,
            2,
            3,
            4,
        ]
        with cursor.copy("COPY item (id, name) FROM STDIN") as copy:
            copy.write_row((9, "nine"))
    with connection.transaction(), connection.cursor("server_side") as named:
        named.execute("SELECT id FROM item ORDER BY id")
        assert len(named.fetchall()) == 6
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (6, 0, 0)


def test_psycopg_a_stream_left_early_ends_without_error(
    counted_psycopg: Any, meter: MeterType
) -> None:
    """Breaking out of a stream ends its query, not as an error; the connection stays usable."""
    with counted_psycopg.cursor() as cursor:
        for row in cursor.stream("SELECT generate_series(1, 1000)"):
            assert row == (1,)
            break
        assert meter.snapshot().concurrency == 0
        assert cursor.execute("SELECT 2").fetchone() == (2,)
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (2, 0, 0)


def test_psycopg_async_stream_closed_early_ends_without_error(
    meter: MeterType, pg_dsn: str
) -> None:
    """Closing an async stream early ends its query, not as an error."""
    dbapi.instrument(psycopg, meter=meter)

    async def main() -> Any:
        connection = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        async with connection, connection.cursor() as cursor:
            rows = cursor.stream("SELECT generate_series(1, 1000)")
            assert await anext(rows) == (1,)
            await rows.aclose()
            assert meter.snapshot().concurrency == 0
            return await (await cursor.execute("SELECT 3")).fetchone()

    assert asyncio.run(main()) == (3,)
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (2, 0, 0)


def test_psycopg_objects_keep_their_types_and_sql_composition(
    counted_psycopg: Any, meter: MeterType
) -> None:
    """Connections and cursors stay psycopg's, sql.SQL composes against them, `with` gives them."""
    connection = counted_psycopg
    assert isinstance(connection, psycopg.Connection)
    query = sql.SQL("SELECT {} AS {}").format(sql.Literal(1), sql.Identifier("one"))
    assert query.as_string(connection) == 'SELECT 1 AS "one"'
    with connection.cursor() as cursor:
        assert isinstance(cursor, psycopg.Cursor)
        assert query.as_string(cursor) == 'SELECT 1 AS "one"'
        assert cursor.execute(query) is cursor
        assert cursor.fetchone() == (1,)
        assert [d.name for d in cursor.description] == ["one"]
    assert meter.snapshot().queries == 1


def test_psycopg_cursor_factories_chosen_later_are_counted(meter: MeterType, pg_dsn: str) -> None:
    """cursor_factory and row_factory given at connect, or assigned later, are kept and counted."""
    dbapi.instrument(psycopg, meter=meter)
    with psycopg.connect(
        pg_dsn, autocommit=True, cursor_factory=psycopg.ClientCursor, row_factory=dict_row
    ) as connection:
        with connection.cursor() as cursor:
            assert isinstance(cursor, psycopg.ClientCursor)
            assert cursor.execute("SELECT %s AS x", (1,)).fetchone() == {"x": 1}
        connection.cursor_factory = psycopg.RawCursor
        with connection.cursor() as cursor:
            assert isinstance(cursor, psycopg.RawCursor)
            cursor.execute("SELECT $1 AS y", (2,))
            assert cursor.fetchone() == {"y": 2}
    assert meter.snapshot().queries == 2


def test_psycopg_transparency_against_an_uninstrumented_connection(
    meter: MeterType, pg_dsn: str
) -> None:
    """Results, rowcount, status, description and errors equal the raw driver's."""
    raw = psycopg.connect(pg_dsn, autocommit=True)
    dbapi.instrument(psycopg, meter=meter)
    counted = psycopg.connect(pg_dsn, autocommit=True)

    def script(connection: Any) -> list[tuple[Any, ...]]:
        cursor = connection.cursor()
        return [
            outcome(lambda: cursor.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")),
            outcome(lambda: cursor.execute("INSERT INTO item SELECT generate_series(1, 5)")),
            outcome(lambda: (cursor.rowcount, cursor.statusmessage)),
            outcome(lambda: cursor.execute("SELECT id FROM item ORDER BY id").fetchmany(2)),
            outcome(lambda: [row for row in cursor]),
            outcome(lambda: [(d.name, d.type_code) for d in cursor.description]),
            outcome(lambda: cursor.execute("INSERT INTO item VALUES (1)")),
            outcome(lambda: cursor.execute("SELEKT 1")),
            outcome(lambda: cursor.execute("")),
            outcome(lambda: cursor.execute("   ")),
            outcome(lambda: cursor.execute("-- nothing")),
            outcome(lambda: cursor.execute(b"SELECT 1").fetchall()),
            outcome(lambda: cursor.execute("SELECT 1 -- " + "x" * 1_000_000).fetchall()),
            outcome(lambda: cursor.execute("SELECT %s", (1, 2))),
        ]

    try:
        assert script(counted) == script(raw)
    finally:
        raw.close()
        counted.close()


def test_psycopg_errors_pass_through_and_count(counted_psycopg: Any, meter: MeterType) -> None:
    """Syntax errors, constraint violations and a closed connection raise the driver's error."""
    connection = counted_psycopg
    cursor = connection.cursor()
    cursor.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")
    cursor.execute("INSERT INTO item VALUES (1)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        cursor.execute("INSERT INTO item VALUES (1)")
    with pytest.raises(psycopg.errors.SyntaxError):
        cursor.execute("SELEKT 1")
    connection.close()
    with pytest.raises(psycopg.OperationalError, match="closed"):
        cursor.execute("SELECT 1")
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (5, 3, 0)


def test_psycopg_keyboard_interrupt_mid_query_counts_and_propagates(
    counted_psycopg: Any, meter: MeterType
) -> None:
    """Ctrl-C during a running query reaches the caller; the query ends as an error."""
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            counted_psycopg.execute("SELECT pg_sleep(10)")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 9
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)


def test_psycopg_threads_overlap_on_the_server(meter: MeterType, pg_dsn: str) -> None:
    """4 threads in pg_sleep(0.3) at once: concurrency 4 mid-flight, total ≈1.2 s, busy ≈0.3 s."""
    dbapi.instrument(psycopg, meter=meter)
    overlap.check_on_connections(
        meter,
        [psycopg.connect(pg_dsn, autocommit=True) for _ in range(overlap.QUERIES)],
        lambda connection: connection.execute(f"SELECT pg_sleep({overlap.SLEEP_S})"),
    )


def test_psycopg_pool_connections_are_counted(meter: MeterType, pg_dsn: str) -> None:
    """Connections made through Connection.connect (as pools do) are counted."""
    dbapi.instrument(psycopg, meter=meter)

    class AppConnection(psycopg.Connection):  # type: ignore[type-arg]
        pass

    with AppConnection.connect(pg_dsn, autocommit=True) as connection:
        assert isinstance(connection, AppConnection)
        connection.execute("SELECT 1")
    assert meter.snapshot().queries == 1


def test_psycopg_wrap_and_unwrap_an_existing_connection(meter: MeterType, pg_dsn: str) -> None:
    """wrap_connection counts an open connection in place; unwrap_connection restores its class."""
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        original_type = type(connection)
        assert dbapi.wrap_connection(connection, meter=meter) is connection
        connection.execute("SELECT 1")
        assert dbapi.unwrap_connection(connection) is connection
        assert type(connection) is original_type
        assert connection.cursor_factory is psycopg.Cursor
        connection.execute("SELECT 1")
    assert meter.snapshot().queries == 1


# -------------------------------------------------------------- psycopg async


def test_psycopg_async_counts_and_overlaps_from_one_thread(meter: MeterType, pg_dsn: str) -> None:
    """4 tasks on one event loop in pg_sleep(0.3): concurrency 4 from one thread, exact totals."""
    dbapi.instrument(psycopg, meter=meter)

    async def main() -> overlap.Overlap:
        connections = [
            await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
            for _ in range(overlap.QUERIES)
        ]
        try:

            def query(connection: Any) -> Callable[[], Any]:
                async def run() -> Any:
                    async with connection.cursor() as cursor:
                        return await cursor.execute(f"SELECT pg_sleep({overlap.SLEEP_S})")

                return run

            return await overlap.in_tasks(meter, [query(c) for c in connections])
        finally:
            for connection in connections:
                await connection.close()

    overlap.check(asyncio.run(main()))


def test_psycopg_async_counts_stream_copy_and_shortcut(meter: MeterType, pg_dsn: str) -> None:
    """Async execute, executemany, stream, copy and Connection.execute count once each."""
    dbapi.instrument(psycopg, meter=meter)

    async def main() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as connection:
            assert isinstance(connection, psycopg.AsyncConnection)
            await connection.execute("CREATE TEMPORARY TABLE item (id int)")
            async with connection.cursor() as cursor:
                assert isinstance(cursor, psycopg.AsyncCursor)
                await cursor.executemany("INSERT INTO item VALUES (%s)", [(1,), (2,)])
                async with cursor.copy("COPY item FROM STDIN") as copy:
                    await copy.write_row((3,))
                return [row async for row in cursor.stream("SELECT id FROM item ORDER BY id")]

    assert asyncio.run(main()) == [(1,), (2,), (3,)]
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (4, 0, 0)


def test_psycopg_async_cancellation_counts_an_error_and_ends(meter: MeterType, pg_dsn: str) -> None:
    """Cancelling ends the query as an error; the connection is still usable afterwards."""
    dbapi.instrument(psycopg, meter=meter)

    async def main() -> Any:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as connection:
            task = asyncio.ensure_future(connection.execute("SELECT pg_sleep(10)"))
            await asyncio.sleep(0.3)
            assert meter.snapshot().concurrency == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await (await connection.execute("SELECT 42")).fetchone()

    assert asyncio.run(main()) == (42,)
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (2, 1, 0)


# ------------------------------------------------------------------- psycopg2


@pytest.fixture
def counted_psycopg2(meter: MeterType, pg_dsn: str) -> Iterator[Any]:
    dbapi.instrument(psycopg2, meter=meter)
    connection = psycopg2.connect(pg_dsn)
    connection.autocommit = True
    yield connection
    connection.close()


def test_psycopg2_counts_every_statement_sending_call_once(
    counted_psycopg2: Any, meter: MeterType
) -> None:
    """execute, executemany, callproc and the three copies count one query each."""
    import io

    connection = counted_psycopg2
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE item (id int, name text)")
        cursor.executemany("INSERT INTO item VALUES (%s, %s)", ((n, f"n{n}") for n in range(3)))
        cursor.execute(
            "CREATE OR REPLACE FUNCTION pg_temp.twice(x int) RETURNS int AS 'SELECT 2 * x' "
            "LANGUAGE sql"
        )
        cursor.callproc("pg_temp.twice", (21,))
        assert cursor.fetchone() == (42,)
        cursor.copy_from(io.StringIO("7\tseven\n"), "item")
        buffer = io.StringIO()
        cursor.copy_to(buffer, "item")
        cursor.copy_expert("COPY item TO STDOUT", io.StringIO())
        assert buffer.getvalue().count("\n") == 4
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (7, 0, 0)


def test_psycopg2_c_type_checks_accept_counted_objects(
    counted_psycopg2: Any, meter: MeterType
) -> None:
    """register_default_jsonb, register_type, quote_ident, execute_values and DictCursor work."""
    connection = counted_psycopg2
    assert isinstance(connection, psycopg2.extensions.connection)
    psycopg2.extras.register_default_jsonb(connection)
    money = psycopg2.extensions.new_type((790,), "MONEY_AS_TEXT", lambda value, cursor: value)
    psycopg2.extensions.register_type(money, connection)
    with connection.cursor() as cursor:
        assert psycopg2.extensions.quote_ident("a b", cursor) == '"a b"'
        cursor.execute("""SELECT '{"a": 1}'::jsonb, '12.5'::money""")
        document, amount = cursor.fetchone()
        assert document == {"a": 1}
        assert isinstance(amount, str)
        psycopg2.extras.execute_values(cursor, "SELECT * FROM (VALUES %s) AS v (x)", [(1,), (2,)])
    with connection.cursor(cursor_factory=psycopg2.extras.DictCursor) as cursor:
        assert isinstance(cursor, psycopg2.extras.DictCursor)
        cursor.execute("SELECT 1 AS one")
        assert cursor.fetchone()["one"] == 1
    with connection as entered:
        assert entered is connection
    assert meter.snapshot().queries == 3


def test_psycopg2_transparency_against_an_uninstrumented_connection(
    meter: MeterType, pg_dsn: str
) -> None:
    """Results, rowcount, status, description and errors equal the raw driver's."""
    raw = psycopg2.connect(pg_dsn)
    dbapi.instrument(psycopg2, meter=meter)
    counted = psycopg2.connect(pg_dsn)

    def script(connection: Any) -> list[tuple[Any, ...]]:
        connection.autocommit = True
        cursor = connection.cursor()
        return [
            outcome(lambda: cursor.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")),
            outcome(lambda: cursor.execute("INSERT INTO item SELECT generate_series(1, 5)")),
            outcome(lambda: (cursor.rowcount, cursor.statusmessage)),
            outcome(
                lambda: cursor.execute("SELECT id FROM item ORDER BY id") or cursor.fetchmany(2)
            ),
            outcome(lambda: list(cursor)),
            outcome(lambda: [tuple(d)[:2] for d in cursor.description]),
            outcome(lambda: cursor.execute("INSERT INTO item VALUES (1)")),
            outcome(lambda: cursor.execute("SELEKT 1")),
            outcome(lambda: cursor.execute("")),
            outcome(lambda: cursor.execute("-- nothing")),
            outcome(lambda: cursor.execute(b"SELECT 1") or cursor.fetchall()),
            outcome(lambda: cursor.execute("SELECT 1 -- " + "x" * 1_000_000) or cursor.fetchall()),
            outcome(lambda: cursor.execute("SELECT %s", (1, 2))),
            outcome(lambda: setattr(cursor, "arraysize", 3) or cursor.arraysize),
        ]

    try:
        assert script(counted) == script(raw)
    finally:
        raw.close()
        counted.close()


def test_psycopg2_errors_pass_through_and_count(counted_psycopg2: Any, meter: MeterType) -> None:
    """A constraint violation, a syntax error and a closed cursor raise the driver's errors."""
    with counted_psycopg2.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")
        cursor.execute("INSERT INTO item VALUES (1)")
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cursor.execute("INSERT INTO item VALUES (1)")
        with pytest.raises(psycopg2.errors.SyntaxError):
            cursor.execute("SELEKT 1")
    with pytest.raises(psycopg2.InterfaceError, match="closed"):
        cursor.execute("SELECT 1")
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (5, 3, 0)


def test_psycopg2_threads_overlap_on_the_server(meter: MeterType, pg_dsn: str) -> None:
    """4 threads in pg_sleep(0.3) at once: concurrency 4 mid-flight, total ≈1.2 s, busy ≈0.3 s."""
    dbapi.instrument(psycopg2, meter=meter)
    overlap.check_on_connections(
        meter,
        [psycopg2.connect(pg_dsn) for _ in range(overlap.QUERIES)],
        lambda connection: connection.cursor().execute(f"SELECT pg_sleep({overlap.SLEEP_S})"),
    )


def test_psycopg2_wrap_an_existing_connection(meter: MeterType, pg_dsn: str) -> None:
    """An open connection counts through its cursor_factory; unwrap puts the factory back."""
    connection = psycopg2.connect(pg_dsn, cursor_factory=psycopg2.extras.RealDictCursor)
    try:
        assert dbapi.wrap_connection(connection, meter=meter) is connection
        with connection.cursor() as cursor:
            assert isinstance(cursor, psycopg2.extras.RealDictCursor)
            cursor.execute("SELECT 1 AS one")
            assert cursor.fetchone() == {"one": 1}
        dbapi.unwrap_connection(connection)
        assert connection.cursor_factory is psycopg2.extras.RealDictCursor
        connection.cursor().execute("SELECT 1")
    finally:
        connection.close()
    assert meter.snapshot().queries == 1


# ------------------------------------------------------- what the server saw


def test_the_count_matches_what_the_server_saw(meter: MeterType, pg_dsn: str) -> None:
    """Statements counted in autocommit equal the transactions pg_stat_database counted.

    The server also counts a transaction when a session starts (measured here on
    an empty session) and one per automatic prepare (turned off here).
    """
    database = "querymeter_stats"
    admin = psycopg.connect(pg_dsn, autocommit=True)
    try:
        if not admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone():
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        target = psycopg.conninfo.make_conninfo(pg_dsn, dbname=database)
        dbapi.instrument(psycopg, meter=meter)
        # The server's count can only run ahead of ours, when another session
        # (autovacuum) touches the database in the window; one exact trial in
        # three proves the counts match.
        trials = [_count_on_both_sides(admin, target, database, meter) for _ in range(3)]
    finally:
        admin.close()
    assert all(server >= ours for ours, server in trials), trials
    assert any(server == ours for ours, server in trials), trials


def _count_on_both_sides(
    admin: Any, target: str, database: str, meter: MeterType
) -> tuple[int, int]:
    """(statements querymeter counted, transactions the server counted beyond a session's own)."""

    def server_count() -> int:
        admin.execute("SELECT pg_stat_clear_snapshot()")
        row = admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
        return int(row[0])

    def server_delta(workload: Callable[[Any], None], at_least: int) -> int:
        before = server_count()
        with psycopg.connect(target, autocommit=True, prepare_threshold=None) as connection:
            workload(connection)
            connection.execute("SELECT pg_stat_force_next_flush()")
        # The backend reports its counts as it exits: wait for them to arrive.
        deadline = time.monotonic() + 10
        delta = server_count() - before
        while delta < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
            delta = server_count() - before
        time.sleep(0.1)
        return server_count() - before

    def workload(connection: Any) -> None:
        for n in range(40):
            connection.execute("SELECT %s::int", (n,))
        for _ in range(3):
            with pytest.raises(psycopg.errors.DivisionByZero):
                connection.execute("SELECT 1 / 0")

    session = server_delta(lambda connection: None, at_least=2) - 1  # less its flush statement
    before = meter.snapshot()
    server = server_delta(workload, at_least=44) - session
    ours = (meter.snapshot() - before).queries
    return ours, server


# ------------------------------------------- psycopg 3: the application's own classes


def test_psycopg_classes_and_factories_stay_psycopgs_own(
    counted_psycopg: Any, meter: MeterType
) -> None:
    """type(connection), type(cursor) and the cursor factories read back are psycopg's classes."""
    connection = counted_psycopg
    assert type(connection) is psycopg.Connection
    with connection.cursor() as cursor:
        assert type(cursor) is psycopg.Cursor
        cursor.execute("SELECT 1")
    assert type(connection.execute("SELECT 2")) is psycopg.Cursor
    assert connection.cursor_factory is psycopg.Cursor
    for factory in (psycopg.ClientCursor, psycopg.RawCursor):
        connection.cursor_factory = factory
        assert type(connection.cursor()) is factory
        assert type(connection.execute("SELECT 3")) is factory
        assert connection.cursor_factory is factory
    with connection.transaction(), connection.cursor("server_side") as named:
        assert type(named) is psycopg.ServerCursor
        named.execute("SELECT 4")
        assert named.fetchall() == [(4,)]
    assert connection.server_cursor_factory is psycopg.ServerCursor
    snap = meter.snapshot()
    assert (snap.queries, snap.errors) == (5, 0)


def test_psycopg_async_classes_and_factories_stay_psycopgs_own(
    meter: MeterType, pg_dsn: str
) -> None:
    """The async connection, cursors and factories read back are psycopg's async classes."""
    dbapi.instrument(psycopg, meter=meter)

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as connection:
            assert type(connection) is psycopg.AsyncConnection
            assert type(await connection.execute("SELECT 1")) is psycopg.AsyncCursor
            connection.cursor_factory = psycopg.AsyncClientCursor
            cursor = await connection.execute("SELECT %s", (2,))
            assert type(cursor) is psycopg.AsyncClientCursor
            assert await cursor.fetchone() == (2,)
            assert connection.cursor_factory is psycopg.AsyncClientCursor
            async with connection.transaction(), connection.cursor("server_side") as named:
                assert type(named) is psycopg.AsyncServerCursor
                await named.execute("SELECT 3")
                assert await named.fetchall() == [(3,)]

    asyncio.run(main())
    snap = meter.snapshot()
    assert (snap.queries, snap.errors) == (3, 0)


def test_psycopg_application_cursor_classes_are_used_as_they_are(
    meter: MeterType, pg_dsn: str
) -> None:
    """An application's Cursor subclass with class hooks is used as it is, counted, no hook run."""
    hooked = transparency.HookedClasses(psycopg.Cursor)
    dbapi.instrument(psycopg, meter=meter)
    with psycopg.connect(pg_dsn, autocommit=True, cursor_factory=hooked.Application) as connection:
        assert connection.cursor_factory is hooked.Application
        cursor = connection.cursor()
        assert type(cursor) is hooked.Application
        assert cursor.execute("SELECT 1").fetchone() == (1,)
        assert type(connection.execute("SELECT 2")) is hooked.Application
        assert connection.cursor_factory is hooked.Application
    assert hooked.state() == hooked.before
    assert hooked.Application.__subclasses__() == []
    assert meter.snapshot().queries == 2


def test_psycopg_pool_connections_stay_the_pools_and_count(meter: MeterType, pg_dsn: str) -> None:
    """psycopg_pool's connections, of psycopg's class or the pool's, count and keep their type."""
    psycopg_pool = driver("psycopg_pool")

    class AppConnection(psycopg.Connection):  # type: ignore[type-arg]
        pass

    dbapi.instrument(psycopg, meter=meter)
    for connection_class in (psycopg.Connection, AppConnection):
        with psycopg_pool.ConnectionPool(
            pg_dsn,
            min_size=1,
            max_size=1,
            connection_class=connection_class,
            kwargs={"autocommit": True},
            open=True,
        ) as pool:
            with pool.connection() as connection:
                assert type(connection) is connection_class
                assert type(connection.execute("SELECT 1")) is psycopg.Cursor
                assert connection.cursor_factory is psycopg.Cursor
            assert pool.connection().__enter__().execute("SELECT 2").fetchone() == (2,)
    assert meter.snapshot().queries == 4


def test_psycopg_async_pool_connections_count(meter: MeterType, pg_dsn: str) -> None:
    """psycopg_pool's async pool lends psycopg's AsyncConnection, counted."""
    psycopg_pool = driver("psycopg_pool")
    dbapi.instrument(psycopg, meter=meter)

    async def main() -> Any:
        async with (
            psycopg_pool.AsyncConnectionPool(
                pg_dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
            ) as pool,
            pool.connection() as connection,
        ):
            assert type(connection) is psycopg.AsyncConnection
            cursor = await connection.execute("SELECT 5")
            assert type(cursor) is psycopg.AsyncCursor
            return await cursor.fetchone()

    assert asyncio.run(main()) == (5,)
    assert meter.snapshot().queries == 1


def test_psycopg_connections_opened_before_instrumenting_are_not_counted(
    meter: MeterType, pg_dsn: str
) -> None:
    """A connection opened before instrument() runs psycopg's own methods, uncounted."""
    with psycopg.connect(pg_dsn, autocommit=True) as before:
        dbapi.instrument(psycopg, meter=meter)
        assert before.execute("SELECT 1").fetchone() == (1,)
        assert [row for row in before.cursor().stream("SELECT 2")] == [(2,)]
    assert meter.snapshot().queries == 0


def test_psycopg_an_open_connection_keeps_counting_after_uninstrument(
    meter: MeterType, pg_dsn: str
) -> None:
    """After uninstrument an open counted connection still counts; closed and unwrapped, psycopg's
    classes get their very own methods back."""
    originals = {name: vars(psycopg.Cursor)[name] for name in ("execute", "stream")}
    dbapi.instrument(psycopg, meter=meter)
    connection = psycopg.connect(pg_dsn, autocommit=True)
    dbapi.uninstrument(psycopg)
    connection.execute("SELECT 1")
    assert meter.snapshot().queries == 1
    assert vars(psycopg.Cursor)["execute"] is not originals["execute"]
    connection.close()
    dbapi.unwrap_connection(connection)
    assert {name: vars(psycopg.Cursor)[name] for name in originals} == originals
    with psycopg.connect(pg_dsn, autocommit=True) as later:
        assert dbapi.wrap_connection(later, meter=meter) is later
        assert vars(psycopg.Cursor)["execute"] is not originals["execute"]
        later.execute("SELECT 2")
        dbapi.unwrap_connection(later)
        later.execute("SELECT 3")
    assert vars(psycopg.Cursor)["execute"] is originals["execute"]
    assert meter.snapshot().queries == 2


def test_psycopg_errors_pass_through_one_frame_of_querymeter_at_most(
    counted_psycopg: Any, meter: MeterType
) -> None:
    """A driver's error reaches the caller through at most one frame of querymeter's hooks."""
    connection = counted_psycopg
    cursor = connection.cursor()

    def copy() -> None:
        with cursor.copy("COPY querymeter_missing FROM STDIN") as block:
            block.write_row((1,))

    actions: list[Callable[[], Any]] = [
        lambda: cursor.execute("SELEKT 1"),
        lambda: cursor.executemany("SELEKT %s", [(1,)]),
        lambda: list(cursor.stream("SELEKT 1")),
        lambda: list(cursor.stream("SELECT 1 / (2 - n) FROM generate_series(1, 3) AS n")),
        copy,
        lambda: connection.execute("SELEKT 1"),
    ]
    for action in actions:
        with pytest.raises(psycopg.Error) as caught:
            action()
        assert len(transparency.hook_frames(caught.value)) <= 1, caught.traceback

    async def main() -> list[list[str]]:
        frames = []
        async with await psycopg.AsyncConnection.connect(
            connection.info.dsn, autocommit=True
        ) as asynchronous:
            cursor = asynchronous.cursor()
            for attempt in (
                lambda: cursor.execute("SELEKT 1"),
                lambda: asynchronous.execute("SELEKT 1"),
            ):
                with pytest.raises(psycopg.Error) as caught:
                    await attempt()
                frames.append(transparency.hook_frames(caught.value))
            with pytest.raises(psycopg.Error) as caught:
                _ = [row async for row in cursor.stream("SELEKT 1")]
            frames.append(transparency.hook_frames(caught.value))
        return frames

    assert all(len(frames) <= 1 for frames in asyncio.run(main()))
    snap = meter.snapshot()
    assert (snap.queries, snap.errors) == (9, 9)


# ------------------------------------- psycopg2: connection classes with a cursor()


@pytest.fixture
def hstore_dsn(pg_dsn: str) -> str:
    """A database of ours with the hstore extension (created once, left for the next run)."""
    database = "querymeter_dbapi_extras"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        if not admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone():
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    target = psycopg.conninfo.make_conninfo(pg_dsn, dbname=database)
    # Two runs at once may race to create it: the loser's error means it is there.
    with (
        psycopg.connect(target, autocommit=True) as connection,
        contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject),
    ):
        connection.execute("CREATE EXTENSION IF NOT EXISTS hstore")
    return target


EXTRAS = [
    ("DictConnection", "DictCursor"),
    ("RealDictConnection", "RealDictCursor"),
    ("NamedTupleConnection", "NamedTupleCursor"),
]


def _row(row: Any) -> Any:
    """A fetched row as comparable data, with the kind of row it was."""
    if row is None:
        return None
    kind = type(row).__name__
    if hasattr(row, "keys"):
        return (kind, sorted(row.items()))
    return (kind, tuple(row))


@pytest.mark.parametrize(("connection_name", "cursor_name"), EXTRAS)
def test_psycopg2_extras_connections_make_their_own_cursors(
    meter: MeterType, hstore_dsn: str, connection_name: str, cursor_name: str
) -> None:
    """DictConnection and its kin make their own cursors, counted; hstore and composite types
    register on them."""
    factory = getattr(psycopg2.extras, connection_name)
    cursor_class = getattr(psycopg2.extras, cursor_name)

    def script() -> list[Any]:
        connection = psycopg2.connect(hstore_dsn, connection_factory=factory)
        connection.autocommit = True
        try:
            cursor = connection.cursor()
            results: list[Any] = [isinstance(cursor, cursor_class)]
            cursor.execute("SELECT 1 AS one, 'a' AS letter")
            results.append(_row(cursor.fetchone()))
            plain = connection.cursor(cursor_factory=psycopg2.extensions.cursor)
            results.append(isinstance(plain, cursor_class))
            plain.execute("SELECT 2 AS two")
            results.append(_row(plain.fetchone()))
            psycopg2.extras.register_hstore(connection)
            cursor.execute("SELECT 'a=>1'::hstore AS pairs")
            results.append(_row(cursor.fetchone()))
            cursor.execute("CREATE TEMPORARY TABLE querymeter_pair (a int, b text)")
            plain.execute("SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()")
            (schema,) = plain.fetchone()
            psycopg2.extras.register_composite(f"{schema}.querymeter_pair", connection)
            cursor.execute("SELECT (3, 'c')::querymeter_pair AS pair")
            pair = cursor.fetchone()
            results.append(tuple(pair["pair"] if cursor_name != "NamedTupleCursor" else pair.pair))
            connection.autocommit = False
            with connection.cursor("querymeter_named") as named:
                results.append(isinstance(named, cursor_class))
                named.execute("SELECT generate_series(1, 3) AS n")
                results.append([_row(row) for row in named.fetchall()])
            connection.rollback()
            return results
        finally:
            connection.close()

    raw = script()
    dbapi.instrument(psycopg2, meter=meter)
    assert script() == raw
    assert raw[:3] == [True, raw[1], False]
    # Seven statements of the script's, and one each that register_hstore and
    # register_composite send on a cursor of their own.
    snap = meter.snapshot()
    assert (snap.queries, snap.errors) == (9, 0)


def test_psycopg2_a_connection_class_with_its_own_cursor_default_keeps_it(
    meter: MeterType, pg_dsn: str
) -> None:
    """A connection_factory whose cursor() has its own cursor_factory default keeps it, counted."""

    class AppConnection(psycopg2.extensions.connection):  # type: ignore[misc]
        def cursor(  # type: ignore[override]
            self, name: Any = None, cursor_factory: Any = psycopg2.extras.RealDictCursor, **kw: Any
        ) -> Any:
            return super().cursor(name, cursor_factory=cursor_factory, **kw)

    dbapi.instrument(psycopg2, meter=meter)
    connection = psycopg2.connect(pg_dsn, connection_factory=AppConnection)
    try:
        assert isinstance(connection, AppConnection)
        with connection.cursor() as cursor:
            assert isinstance(cursor, psycopg2.extras.RealDictCursor)
            cursor.execute("SELECT 1 AS one")
            assert cursor.fetchone() == {"one": 1}
        with connection.cursor(cursor_factory=psycopg2.extras.NamedTupleCursor) as cursor:
            cursor.execute("SELECT 2 AS two")
            assert cursor.fetchone().two == 2
    finally:
        connection.close()
    assert meter.snapshot().queries == 2


def test_psycopg2_counting_runs_no_code_of_the_applications_classes(
    meter: MeterType, pg_dsn: str
) -> None:
    """Counting an application's cursor and connection classes runs none of their class hooks."""
    cursors = transparency.HookedClasses(psycopg2.extensions.cursor)
    connections = transparency.HookedClasses(psycopg2.extensions.connection)
    dbapi.instrument(psycopg2, meter=meter)
    connection = psycopg2.connect(pg_dsn, connection_factory=connections.Application)
    try:
        assert isinstance(connection, connections.Application)
        with connection.cursor(cursor_factory=cursors.Application) as cursor:
            assert isinstance(cursor, cursors.Application)
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        connection.close()
    assert cursors.state() == cursors.before
    assert connections.state() == connections.before
    assert meter.snapshot().queries == 1


def test_psycopg2_wrapping_an_existing_dict_connection_without_a_factory_is_refused(
    meter: MeterType, pg_dsn: str
) -> None:
    """wrap_connection refuses an open DictConnection it could count only by changing its cursor."""
    connection = psycopg2.connect(pg_dsn, connection_factory=psycopg2.extras.DictConnection)
    try:
        with pytest.raises(ValueError, match="cursor_factory"):
            dbapi.wrap_connection(connection, meter=meter)
        assert connection.cursor_factory is None
        assert dbapi.meter_of(connection) is None
        assert isinstance(connection.cursor(), psycopg2.extras.DictCursor)
    finally:
        connection.close()


def test_psycopg2_errors_pass_through_one_frame_of_querymeter_at_most(
    counted_psycopg2: Any,
) -> None:
    """A driver's error reaches the caller through at most one frame of querymeter's hooks."""
    with counted_psycopg2.cursor() as cursor:
        for action in (
            lambda: cursor.execute("SELEKT 1"),
            lambda: cursor.executemany("SELEKT %s", [(1,)]),
            lambda: cursor.callproc("querymeter_missing"),
        ):
            with pytest.raises(psycopg2.Error) as caught:
                action()
            assert len(transparency.hook_frames(caught.value)) <= 1, caught.traceback
