"""asyncpg's own API on a real PostgreSQL server: counted in place, where the coroutine waits."""

from __future__ import annotations

import asyncio
import functools
import inspect
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import querymeter.dbapi as dbapi
from querymeter.meter import Meter as MeterType

from ..servers import driver
from . import overlap, transparency

asyncpg = driver("asyncpg")
driver("asyncpg.cursor")
driver("asyncpg.prepared_stmt")
driver("asyncpg.transaction")
psycopg = driver("psycopg")
conninfo = driver("psycopg.conninfo")

Connection = asyncpg.connection.Connection
# Every method counted in place, by class, with what asyncpg had there before.
COUNTED = {
    Connection: (
        "execute",
        "executemany",
        "fetch",
        "fetchrow",
        "fetchval",
        "fetchmany",
        "copy_from_table",
        "copy_from_query",
        "copy_to_table",
        "copy_records_to_table",
        "reset",
        "_reset",
    ),
    asyncpg.prepared_stmt.PreparedStatement: (
        "fetch",
        "fetchrow",
        "fetchval",
        "fetchmany",
        "executemany",
    ),
    asyncpg.cursor.Cursor: ("fetch", "fetchrow", "forward"),
    asyncpg.cursor.CursorFactory: ("__aiter__",),
    asyncpg.transaction.Transaction: ("start", "commit", "rollback", "__aexit__"),
}
ORIGINALS = {(cls, name): vars(cls)[name] for cls, names in COUNTED.items() for name in names}


def asyncpg_params(pg_dsn: str) -> dict[str, Any]:
    """asyncpg.connect() keyword arguments for the libpq DSN the tests use."""
    params = conninfo.conninfo_to_dict(pg_dsn)
    names = {"host": "host", "port": "port", "user": "user", "dbname": "database"}
    names["password"] = "password"
    arguments: dict[str, Any] = {names[k]: v for k, v in params.items() if k in names}
    if "port" in arguments:
        arguments["port"] = int(arguments["port"])
    return arguments


@pytest.fixture
def pg(pg_dsn: str) -> dict[str, Any]:
    return asyncpg_params(pg_dsn)


def counts(meter: MeterType) -> tuple[int, int, int]:
    snap = meter.snapshot()
    return snap.queries, snap.errors, snap.concurrency


def assert_originals_back() -> None:
    for (cls, name), original in ORIGINALS.items():
        assert vars(cls)[name] is original, (cls, name)


async def outcome(action: Callable[[], Awaitable[Any]]) -> tuple[Any, ...]:
    """What an awaited action gave, as transparency.outcome describes a call's."""
    try:
        result = await action()
    except Exception as exc:
        failure = exc

        def fail() -> Any:
            raise failure

        return transparency.outcome(fail, ())
    return transparency.outcome(lambda: result, ())


# ----------------------------------------------------------- what is counted


def test_every_query_method_counts_once(meter: MeterType, pg: dict[str, Any]) -> None:
    """Connection, prepared-statement, cursor and COPY methods count once each; BEGIN,
    COMMIT, savepoints, prepare() and opening a cursor do not."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> list[Any]:
        connection = await asyncpg.connect(**pg)
        try:
            seen: list[Any] = []
            await connection.execute("CREATE TEMPORARY TABLE item (id int, name text)")  # 1
            await connection.execute("INSERT INTO item VALUES ($1, $2)", 1, "one")  # 2
            await connection.executemany(
                "INSERT INTO item VALUES ($1, $2)", [(2, "two"), (3, "three")]
            )  # 3
            seen.append(await connection.fetchval("SELECT count(*) FROM item"))  # 4
            seen.append(await connection.fetchrow("SELECT name FROM item WHERE id = $1", 2))  # 5
            seen.append(len(await connection.fetch("SELECT * FROM item")))  # 6
            seen.append(await connection.fetchmany("SELECT $1::int", [(7,), (8,)]))  # 7
            statement = await connection.prepare("SELECT name FROM item WHERE id = $1")
            seen.append(await statement.fetchval(1))  # 8
            seen.append(await statement.fetchrow(3))  # 9
            seen.append(len(await statement.fetch(2)))  # 10
            seen.append(len(await statement.fetchmany([(1,), (2,)])))  # 11
            insert = await connection.prepare("INSERT INTO item VALUES ($1, $2)")
            await insert.executemany([(4, "four"), (5, "five")])  # 12
            seen.append(type(await statement.explain(1)).__name__)  # 13
            async with connection.transaction():
                seen.append(
                    [row[0] async for row in connection.cursor("SELECT id FROM item")]
                )  # 14
                async with connection.transaction():  # a savepoint
                    cursor = await connection.cursor("SELECT id FROM item ORDER BY id")
                    seen.append(await cursor.fetch(2))  # 15
                    seen.append(await cursor.forward(1))  # 16
                    seen.append(await cursor.fetchrow())  # 17
            buffer = io.BytesIO()
            await connection.copy_from_table("item", output=buffer)  # 18
            await connection.copy_from_query("SELECT 1", output=io.BytesIO())  # 19
            await connection.copy_to_table("item", source=io.BytesIO(b"6\tsix\n"))  # 20
            await connection.copy_records_to_table("item", records=[(7, "seven")])  # 21
            seen.append(buffer.getvalue().count(b"\n"))
            seen.append(await connection.fetchval("SELECT count(*) FROM item"))  # 22
            return seen
        finally:
            await connection.close()

    seen = asyncio.run(main())
    assert seen[0] == 3 and seen[-2] == 5 and seen[-1] == 7, seen
    assert counts(meter) == (22, 0, 0)


def test_pool_connections_count_and_shortcuts_count_once(
    meter: MeterType, pg: dict[str, Any]
) -> None:
    """A pool's connections count, keep the application's connection_class, and its
    shortcuts count one query each: the reset on release is not counted."""
    subclassed: list[type] = []

    class AppConnection(Connection):  # type: ignore[misc]
        def __init_subclass__(cls, **kwargs: Any) -> None:
            subclassed.append(cls)
            super().__init_subclass__(**kwargs)

    dbapi.instrument(asyncpg, meter=meter)

    async def setup(connection: Any) -> None:
        await connection.execute("SET application_name = 'querymeter'")

    async def main() -> list[Any]:
        async with asyncpg.create_pool(
            **pg, min_size=2, max_size=2, connection_class=AppConnection, init=setup
        ) as pool:
            assert counts(meter) == (2, 0, 0)  # init ran once per connection
            seen = [await pool.fetchval("SELECT 1"), await pool.execute("SELECT 2")]
            seen.append(len(await pool.fetch("SELECT generate_series(1, 3)")))
            seen.append(await pool.fetchrow("SELECT 4 AS four"))
            async with pool.acquire() as connection:
                assert isinstance(connection, Connection)
                async with connection.transaction():
                    seen.append(await connection.fetchval("SELECT 5"))
                seen.append(type(connection._con))
                assert dbapi.meter_of(connection._con) is meter
        return seen

    seen = asyncio.run(main())
    assert seen == [1, "SELECT 1", 3, (4,), 5, AppConnection]
    assert subclassed == []
    assert counts(meter) == (7, 0, 0)


def test_a_connection_class_is_kept(meter: MeterType, pg: dict[str, Any]) -> None:
    """connect(connection_class=...) gives that very class; overrides that call asyncpg's
    methods count once, through asyncpg's."""

    class AppConnection(Connection):  # type: ignore[misc]
        async def fetchval(self, query: str, *args: Any, **kwargs: Any) -> Any:
            return await super().fetchval(query, *args, **kwargs)

    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> Any:
        connection = await asyncpg.connect(**pg, connection_class=AppConnection)
        try:
            assert type(connection) is AppConnection
            return await connection.fetchval("SELECT $1::int", 6)
        finally:
            await connection.close()

    assert asyncio.run(main()) == 6
    assert counts(meter) == (1, 0, 0)


def test_a_cursor_left_early_ends_without_error(meter: MeterType, pg: dict[str, Any]) -> None:
    """Breaking out of an async for over a cursor ends its query, not as an error."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> Any:
        connection = await asyncpg.connect(**pg)
        try:
            async with connection.transaction():
                async for row in connection.cursor("SELECT generate_series(1, 1000)", prefetch=10):
                    assert row[0] == 1
                    break
                assert meter.snapshot().concurrency == 0
            return await connection.fetchval("SELECT 2")
        finally:
            await connection.close()

    assert asyncio.run(main()) == 2
    assert counts(meter) == (2, 0, 0)


def test_counted_calls_are_still_coroutines_to_asyncio(
    meter: MeterType, pg: dict[str, Any]
) -> None:
    """create_task, gather and wait_for take the counted calls, and keep their results."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> list[Any]:
        connections = [await asyncpg.connect(**pg) for _ in range(2)]
        try:
            first, second = connections
            call = first.fetchval("SELECT 1")
            assert asyncio.iscoroutine(call)
            task = asyncio.create_task(call)
            gathered = await asyncio.gather(task, second.fetchval("SELECT 2"))
            waited = await asyncio.wait_for(first.fetchval("SELECT 3"), timeout=10)
            return [*gathered, waited]
        finally:
            for connection in connections:
                await connection.close()

    assert asyncio.run(main()) == [1, 2, 3]
    assert counts(meter) == (3, 0, 0)
    assert inspect.signature(Connection.fetchval) == inspect.signature(
        ORIGINALS[(Connection, "fetchval")]
    )


# ------------------------------------------------- errors and cancellation


def test_errors_pass_through_and_count(meter: MeterType, pg: dict[str, Any]) -> None:
    """Constraint and syntax errors and a closed connection raise asyncpg's errors and
    count as errors; opening a cursor outside a transaction and asyncpg's ROLLBACK do not."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> None:
        connection = await asyncpg.connect(**pg)
        await connection.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")
        await connection.execute("INSERT INTO item VALUES (1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute("INSERT INTO item VALUES (1)")
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await connection.fetch("SELEKT 1")
        statement = await connection.prepare("SELECT 1 / $1::int")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await statement.fetchval(0)
        with pytest.raises(asyncpg.NoActiveSQLTransactionError):
            await (await connection.cursor("SELECT 1")).fetch(1)
        with pytest.raises(asyncpg.UniqueViolationError):
            async with connection.transaction():
                await connection.execute("INSERT INTO item VALUES (1)")
        await connection.close()
        with pytest.raises(asyncpg.InterfaceError, match="closed"):
            await connection.fetchval("SELECT 1")

    asyncio.run(main())
    assert counts(meter) == (7, 5, 0)


def test_the_drivers_exception_reaches_the_caller(meter: MeterType, pg: dict[str, Any]) -> None:
    """The error a counted call raises is asyncpg's, with asyncpg's frames in its traceback."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> BaseException:
        connection = await asyncpg.connect(**pg)
        try:
            await connection.fetchval("SELECT 1 / 0")
        except asyncpg.DivisionByZeroError as exc:
            return exc
        finally:
            await connection.close()
        raise AssertionError("no error")

    error = asyncio.run(main())
    frames = []
    traceback = error.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame.f_code.co_filename)
        traceback = traceback.tb_next
    assert any("asyncpg" in name for name in frames), frames
    assert counts(meter) == (1, 1, 0)


def test_a_cancelled_query_counts_an_error_and_ends(meter: MeterType, pg: dict[str, Any]) -> None:
    """Cancelling a task, or wait_for timing out, ends the query as an error at once;
    the connection is usable afterwards."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> Any:
        connection = await asyncpg.connect(**pg)
        try:
            task = asyncio.create_task(connection.execute("SELECT pg_sleep(10)"))
            await asyncio.sleep(0.3)
            assert meter.snapshot().concurrency == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert meter.snapshot().concurrency == 0
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(connection.fetchval("SELECT pg_sleep(10)"), timeout=0.3)
            assert time.monotonic() - started < 5
            assert meter.snapshot().concurrency == 0
            return await connection.fetchval("SELECT 42")
        finally:
            await connection.close()

    assert asyncio.run(main()) == 42
    assert counts(meter) == (3, 2, 0)


def test_a_cancelled_pool_query_ends_and_the_pool_recovers(
    meter: MeterType, pg: dict[str, Any]
) -> None:
    """A pool shortcut cancelled mid-query ends as an error; the next one counts once."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> Any:
        async with asyncpg.create_pool(**pg, min_size=1, max_size=1) as pool:
            task = asyncio.create_task(pool.fetchval("SELECT pg_sleep(10)"))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert meter.snapshot().concurrency == 0
            return await pool.fetchval("SELECT 7")

    assert asyncio.run(main()) == 7
    assert counts(meter) == (2, 1, 0)


# ------------------------------------------------------------------ overlap


def test_tasks_overlap_on_the_server(meter: MeterType, pg: dict[str, Any]) -> None:
    """4 tasks on one event loop in pg_sleep(0.3): concurrency 4 from one thread, exact totals."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> overlap.Overlap:
        connections = [await asyncpg.connect(**pg) for _ in range(overlap.QUERIES)]
        try:
            return await overlap.in_tasks(
                meter,
                [
                    functools.partial(c.fetchval, f"SELECT pg_sleep({overlap.SLEEP_S})")
                    for c in connections
                ],
            )
        finally:
            for connection in connections:
                await connection.close()

    overlap.check(asyncio.run(main()))


# ------------------------------------------------------------- transparency


def test_transparency_against_an_uninstrumented_connection(
    meter: MeterType, pg: dict[str, Any]
) -> None:
    """Results, status strings, records and errors equal the raw driver's, call by call."""

    async def script(connection: Any) -> list[tuple[Any, ...]]:
        c = connection
        return [
            await outcome(lambda: c.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")),
            await outcome(lambda: c.execute("INSERT INTO item SELECT generate_series(1, 5)")),
            await outcome(lambda: c.execute("INSERT INTO item VALUES ($1)", 6)),
            await outcome(lambda: c.executemany("INSERT INTO item VALUES ($1)", [(7,), (8,)])),
            await outcome(lambda: c.fetch("SELECT id FROM item ORDER BY id")),
            await outcome(lambda: c.fetchrow("SELECT id, id * 2 AS twice FROM item")),
            await outcome(lambda: c.fetchval("SELECT id FROM item WHERE id > $1", 100)),
            await outcome(lambda: c.fetchval("SELECT 1, 2", column=1)),
            await outcome(lambda: c.fetchmany("SELECT $1::int", [(1,), (2,)])),
            await outcome(lambda: c.execute("INSERT INTO item VALUES (1)")),
            await outcome(lambda: c.execute("SELEKT 1")),
            await outcome(lambda: c.execute("")),
            await outcome(lambda: c.fetch("")),
            await outcome(lambda: c.execute("-- nothing")),
            await outcome(lambda: c.fetchval("SELECT 1 -- " + "x" * 1_000_000)),
            await outcome(lambda: c.fetchval("SELECT $1::int", 1, 2)),
            await outcome(lambda: c.fetchval("SELECT $1::int", "not an int")),
            await outcome(lambda: c.executemany("SELECT 1", [])),
            await outcome(lambda: c.fetchval("SELECT 1", timeout=-1)),
        ]

    async def main() -> tuple[list[Any], list[Any]]:
        raw = await asyncpg.connect(**pg)
        dbapi.instrument(asyncpg, meter=meter)
        counted = await asyncpg.connect(**pg)
        try:
            return await script(counted), await script(raw)
        finally:
            await raw.close()
            await counted.close()

    counted, raw = asyncio.run(main())
    assert counted == raw
    snap = meter.snapshot()
    assert snap.queries == len(counted) and snap.concurrency == 0


# --------------------------------------------------------- the server's count


def test_the_count_matches_what_the_server_saw(meter: MeterType, pg: dict[str, Any]) -> None:
    """Queries counted in autocommit equal the transactions pg_stat_database counted.

    The server also counts one transaction when a session starts (measured on an
    empty session); preparing a statement, implicitly or with prepare(), is none.
    """
    database = "querymeter_asyncpg_stats"
    admin_dsn = conninfo.make_conninfo(
        **{"dbname" if k == "database" else k: v for k, v in pg.items()}
    )
    admin = psycopg.connect(admin_dsn, autocommit=True)
    try:
        if not admin.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone():
            admin.execute(f'CREATE DATABASE "{database}"')
        dbapi.instrument(asyncpg, meter=meter)
        target = {**pg, "database": database}
        # The server's count can only run ahead of ours, when another session
        # (autovacuum) touches the database in the window; one exact trial in
        # three proves the counts match.
        trials = [_count_on_both_sides(admin, target, database, meter) for _ in range(3)]
    finally:
        admin.close()
    assert all(server >= ours for ours, server in trials), trials
    assert any(server == ours for ours, server in trials), trials


def _count_on_both_sides(
    admin: Any, target: dict[str, Any], database: str, meter: MeterType
) -> tuple[int, int]:
    """(queries querymeter counted, transactions the server counted beyond a session's own)."""

    def server_count() -> int:
        admin.execute("SELECT pg_stat_clear_snapshot()")
        row = admin.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
        return int(row[0])

    def server_delta(workload: Callable[[Any], Awaitable[None]], at_least: int) -> int:
        async def session() -> None:
            connection = await asyncpg.connect(**target)
            try:
                await workload(connection)
                await connection.execute("SELECT pg_stat_force_next_flush()")
            finally:
                await connection.close()

        before = server_count()
        asyncio.run(session())
        # The backend reports its counts as it exits: wait for them to arrive.
        deadline = time.monotonic() + 10
        delta = server_count() - before
        while delta < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
            delta = server_count() - before
        time.sleep(0.1)
        return server_count() - before

    async def nothing(connection: Any) -> None:
        pass

    async def workload(connection: Any) -> None:
        # No temporary table: dropping it as the session ends is one more
        # transaction for the server.
        for n in range(20):
            await connection.execute(f"SELECT {n}")
        for n in range(10):
            await connection.fetchval("SELECT $1::int", n)
        await connection.executemany("SELECT $1::int", [(1,), (2,), (3,)])
        statement = await connection.prepare("SELECT $1::int * 2")
        for n in range(5):
            await statement.fetchval(n)
        await connection.copy_from_query("SELECT generate_series(1, 3)", output=io.BytesIO())
        for _ in range(3):
            with pytest.raises(asyncpg.DivisionByZeroError):
                await connection.execute("SELECT 1 / 0")

    session = server_delta(nothing, at_least=2) - 1  # less its flush statement
    before = meter.snapshot()
    server = server_delta(workload, at_least=42) - session
    ours = (meter.snapshot() - before).queries
    return ours, server


# ------------------------------------------- instrument, wrap, and undoing them


def test_uninstrument_restores_asyncpgs_own_functions(meter: MeterType, pg: dict[str, Any]) -> None:
    """uninstrument puts back connect and every method counted in place, the very objects."""
    connect, module_connect = asyncpg.connect, asyncpg.connection.connect
    dbapi.instrument(asyncpg, meter=meter)
    assert asyncpg.connect is not connect
    assert vars(Connection)["fetchval"] is not ORIGINALS[(Connection, "fetchval")]

    async def main() -> None:
        connection = await asyncpg.connect(**pg)
        await connection.fetchval("SELECT 1")
        await connection.close()

    asyncio.run(main())
    dbapi.uninstrument(asyncpg)
    assert asyncpg.connect is connect and asyncpg.connection.connect is module_connect
    assert_originals_back()
    assert counts(meter) == (1, 0, 0)


def test_an_open_connection_counts_after_uninstrument_until_unwrapped(
    meter: MeterType, pg: dict[str, Any]
) -> None:
    """A connection still open at uninstrument keeps counting; unwrapping it puts every
    method back, and it stops counting."""
    dbapi.instrument(asyncpg, meter=meter)

    async def main() -> None:
        connection = await asyncpg.connect(**pg)
        try:
            dbapi.uninstrument(asyncpg)
            await connection.fetchval("SELECT 1")
            assert dbapi.unwrap_connection(connection) is connection
            assert_originals_back()
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()

    asyncio.run(main())
    assert counts(meter) == (1, 0, 0)


def test_wrap_and_unwrap_an_existing_connection(meter: MeterType, pg: dict[str, Any]) -> None:
    """wrap_connection counts an open connection, its type unchanged; unwrap stops it."""

    async def main() -> None:
        connection = await asyncpg.connect(**pg)
        other = await asyncpg.connect(**pg)
        try:
            assert dbapi.wrap_connection(connection, meter=meter) is connection
            assert type(connection) is Connection
            assert dbapi.meter_of(connection) is meter
            await connection.fetchval("SELECT 1")
            await other.fetchval("SELECT 1")  # not wrapped: not counted
            dbapi.unwrap_connection(connection)
            assert dbapi.meter_of(connection) is None
            await connection.fetchval("SELECT 1")
        finally:
            await connection.close()
            await other.close()

    asyncio.run(main())
    assert_originals_back()
    assert counts(meter) == (1, 0, 0)


def test_wrap_a_pooled_connection_counts_the_connection_it_lends(
    meter: MeterType, pg: dict[str, Any]
) -> None:
    """wrap_connection on a pool's proxy counts the connection underneath; unwrap stops it."""

    async def main() -> None:
        async with asyncpg.create_pool(**pg, min_size=1, max_size=1) as pool:
            async with pool.acquire() as proxy:
                assert dbapi.wrap_connection(proxy, meter=meter) is proxy
                await proxy.fetchval("SELECT 1")
            assert await pool.fetchval("SELECT 2") == 2  # the same connection, lent again
            async with pool.acquire() as proxy:
                dbapi.unwrap_connection(proxy)
                await proxy.fetchval("SELECT 3")
            with pytest.raises(ValueError, match="released"):
                dbapi.wrap_connection(proxy, meter=meter)

    asyncio.run(main())
    assert counts(meter) == (2, 0, 0)


def test_a_connection_counts_into_one_meter_only(
    Meter: type[MeterType], pg: dict[str, Any]
) -> None:
    """Wrapping a counting connection with another meter raises; with the same, nothing."""
    first, second = Meter(), Meter()

    async def main() -> None:
        connection = await asyncpg.connect(**pg)
        try:
            dbapi.wrap_connection(connection, meter=first)
            dbapi.wrap_connection(connection, meter=first)
            with pytest.raises(ValueError, match="another meter"):
                dbapi.wrap_connection(connection, meter=second)
            await connection.fetchval("SELECT 1")
        finally:
            dbapi.unwrap_connection(connection)
            await connection.close()

    asyncio.run(main())
    assert first.snapshot().queries == 1 and second.snapshot().queries == 0


def test_another_wrapper_installed_later_stays_and_ours_stands_aside(
    meter: MeterType, pg: dict[str, Any]
) -> None:
    """A wrapper another tool puts over a counted method stays at uninstrument, and ours
    inside it stops counting."""
    dbapi.instrument(asyncpg, meter=meter)
    ours = vars(Connection)["fetchval"]
    calls: list[str] = []

    def theirs(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("theirs")
        return ours(self, *args, **kwargs)

    Connection.fetchval = theirs
    try:

        async def main() -> None:
            connection = await asyncpg.connect(**pg)
            try:
                await connection.fetchval("SELECT 1")
                dbapi.uninstrument(asyncpg)
                dbapi.unwrap_connection(connection)
                dbapi.wrap_connection(connection, meter=meter)  # ours again, over theirs
                await connection.fetchval("SELECT 1")
                dbapi.unwrap_connection(connection)
                assert vars(Connection)["fetchval"] is theirs
                await connection.fetchval("SELECT 1")
            finally:
                await connection.close()

        asyncio.run(main())
    finally:
        Connection.fetchval = ORIGINALS[(Connection, "fetchval")]
    assert calls == ["theirs"] * 3
    assert counts(meter) == (2, 0, 0)
