"""Scalability runs of real drivers: sqlite3, psycopg through a pool, aiosqlite and asyncpg."""

from __future__ import annotations

import queue
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

import querymeter.dbapi as dbapi
from querymeter import scaling
from querymeter.meter import Meter as MeterType

from ..servers import driver, postgres_dsn

#: pg_sleep's length: a query that lasts at least this long, on the server.
PG_SLEEP_S = 0.005


@pytest.fixture
def meter(Meter: type[MeterType]) -> Iterator[MeterType]:
    """A fresh meter of the core under test; no driver is left instrumented afterwards."""
    yield Meter()
    import sys

    for name in dbapi.SUPPORTED_DRIVERS:
        module = sys.modules.get(name)
        if module is not None:
            dbapi.uninstrument(module)


def check_bounds(level: scaling.Level) -> None:
    """What holds of every level: no more queries in flight than workers, U at most 1."""
    interval = level.interval
    assert interval.queries > 0, level
    assert interval.concurrency is not None and interval.concurrency <= level.workers + 1e-9
    assert interval.utilization is not None and interval.utilization <= 1.0


def test_sqlite3_with_a_connection_per_worker(tmp_path: Path, meter: MeterType) -> None:
    """sqlite3 instrumented to the meter: one query a call, and every fifth call's error counted."""
    dbapi.instrument(sqlite3, meter=meter)
    path = tmp_path / "scaling.db"
    with sqlite3.connect(path, isolation_level=None) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE scaling_item (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany(
            "INSERT INTO scaling_item VALUES (?, ?)", [(n, f"item {n}") for n in range(100)]
        )
    connection.close()

    @contextmanager
    def connections(workers: int) -> Iterator[queue.SimpleQueue[list[Any]]]:
        idle: queue.SimpleQueue[list[Any]] = queue.SimpleQueue()
        opened = [
            sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            for _ in range(workers)
        ]
        for opened_connection in opened:
            idle.put([opened_connection, 0])
        try:
            yield idle
        finally:
            for opened_connection in opened:
                opened_connection.close()

    def workload(idle: queue.SimpleQueue[list[Any]]) -> None:
        held = idle.get()
        try:
            held[1] += 1
            cursor = held[0].cursor()
            cursor.execute("SELECT name FROM scaling_item WHERE id = ?", (held[1] % 100,))
            cursor.fetchall()
            if held[1] % 5 == 0:
                cursor.execute("SELECT * FROM scaling_missing_table")
        finally:
            idle.put(held)

    result = scaling.run(
        workload, levels=(1, 2, 4), duration=0.5, warmup=0.1, meter=meter, setup=connections
    )
    for level in result.levels:
        check_bounds(level)
        interval = level.interval
        # A call: one query, and every fifth call a second one that raises
        # out of the call.  Only the calls cut at the window's edges differ.
        edge = 2 * level.workers
        assert abs(interval.errors - level.errors) <= edge, level
        assert abs(interval.queries - (level.calls + level.errors)) <= 2 * edge, level
        assert abs(level.errors - level.calls / 5) <= edge, level
        assert level.first_error is not None
        assert level.first_error.startswith("OperationalError: no such table")


def test_psycopg_through_a_pool_caps_concurrency_at_the_pool_size(meter: MeterType) -> None:
    """psycopg through a pool of 3: at 6 workers N stays at most 3, and R at least pg_sleep's."""
    dsn = postgres_dsn()
    psycopg = driver("psycopg")
    psycopg_pool = driver("psycopg_pool")
    dbapi.instrument(psycopg, meter=meter)
    with psycopg_pool.ConnectionPool(dsn, min_size=3, max_size=3, open=True) as pool:
        pool.wait()

        def workload() -> None:
            with pool.connection() as connection:
                connection.execute("SELECT pg_sleep(%s)", (PG_SLEEP_S,))

        result = scaling.run(workload, levels=(1, 2, 3, 6), duration=0.6, warmup=0.1, meter=meter)
    for level in result.levels:
        check_bounds(level)
        interval = level.interval
        assert interval.response_time is not None and interval.response_time >= PG_SLEEP_S
        assert level.errors == 0 and interval.errors == 0
        assert abs(interval.queries - level.calls) <= 2 * level.workers
    six = result.levels[-1].interval
    assert six.concurrency is not None and six.concurrency <= 3 + 1e-9
    assert result.model is not None


def test_aiosqlite_on_a_connection_per_level(tmp_path: Path, meter: MeterType) -> None:
    """aiosqlite instrumented to the meter, a connection per level's loop: one query a call."""
    aiosqlite = driver("aiosqlite")
    dbapi.instrument(aiosqlite, meter=meter)
    path = tmp_path / "scaling-async.db"
    with sqlite3.connect(path) as setup_connection:
        setup_connection.execute("CREATE TABLE scaling_item (id INTEGER PRIMARY KEY)")
        setup_connection.executemany(
            "INSERT INTO scaling_item VALUES (?)", [(n,) for n in range(50)]
        )
    setup_connection.close()

    @asynccontextmanager
    async def connection(workers: int) -> AsyncIterator[Any]:
        async with aiosqlite.connect(path) as opened:
            yield opened

    async def workload(opened: Any) -> None:
        async with opened.execute("SELECT count(*) FROM scaling_item") as cursor:
            assert (await cursor.fetchone()) == (50,)

    result = scaling.run(
        workload, levels=(1, 2, 4), duration=0.5, warmup=0.1, meter=meter, setup=connection
    )
    for level in result.levels:
        check_bounds(level)
        assert level.errors == 0 and level.interval.errors == 0
        assert abs(level.interval.queries - level.calls) <= 2 * level.workers


def test_asyncpg_with_a_pool_per_level(meter: MeterType) -> None:
    """asyncpg instrumented to the meter, a pool made in each level's loop, pg_sleep counted."""
    dsn = postgres_dsn()
    asyncpg = driver("asyncpg")
    conninfo = driver("psycopg.conninfo")
    params = conninfo.conninfo_to_dict(dsn)
    arguments: dict[str, Any] = {
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "user": params.get("user", "postgres"),
        "database": params.get("dbname", "test"),
    }
    if "password" in params:
        arguments["password"] = params["password"]
    dbapi.instrument(asyncpg, meter=meter)
    statements = meter.enable_statements()

    def pool(workers: int) -> Any:
        # A pool is bound to the event loop it is made in: one per level.
        return asyncpg.create_pool(min_size=workers, max_size=workers, **arguments)

    async def workload(made: Any) -> None:
        async with made.acquire() as connection:
            await connection.fetchval("SELECT pg_sleep($1)", PG_SLEEP_S)

    result = scaling.run(
        workload, levels=(1, 2, 4), duration=0.5, warmup=0.1, meter=meter, setup=pool
    )
    for level in result.levels:
        check_bounds(level)
        assert level.errors == 0 and level.interval.errors == 0
        # The pool's own statements (the reset on release) count too: at least one a call.
        assert level.interval.queries >= level.calls - 2 * level.workers
    sleeps = [row for row in statements.top() if "pg_sleep" in row.fingerprint]
    assert len(sleeps) == 1
    total_calls = sum(level.calls for level in result.levels)
    assert sleeps[0].calls >= total_calls
