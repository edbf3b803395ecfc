"""aiosqlite: counted where the coroutine waits; many in flight from one thread."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import querymeter.dbapi as dbapi
from querymeter.meter import Meter as MeterType

from ..servers import driver
from . import transparency

aiosqlite = driver("aiosqlite")


def test_every_statement_sending_call_counts_once(meter: MeterType) -> None:
    """Connection and cursor execute, executemany, executescript, execute_fetchall and
    execute_insert count once each, also when sqlite3 is instrumented too."""
    dbapi.instrument(aiosqlite, meter=meter)
    dbapi.instrument(sqlite3, meter=meter)

    async def main() -> Any:
        async with aiosqlite.connect(":memory:") as db:
            assert isinstance(db, aiosqlite.Connection)
            await db.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
            await db.executemany("INSERT INTO item (name) VALUES (?)", [("a",), ("b",)])
            await db.executescript("INSERT INTO item (name) VALUES ('c');")
            assert await db.execute_insert("INSERT INTO item (name) VALUES ('d')") == (4,)
            assert len(await db.execute_fetchall("SELECT * FROM item")) == 4
            async with db.execute("SELECT name FROM item ORDER BY id") as cursor:
                assert isinstance(cursor, aiosqlite.Cursor)
                rows = [row[0] async for row in cursor]
                await cursor.execute("SELECT 1")  # a returned cursor counts too
            cursor = await db.cursor()
            await cursor.executemany("INSERT INTO item (name) VALUES (?)", [("e",)])
            await cursor.executescript("SELECT 1;")
            return rows

    assert asyncio.run(main()) == ["a", "b", "c", "d"]
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (9, 0, 0)


def test_many_coroutines_are_in_flight_at_once_from_one_thread(
    meter: MeterType, tmp_path: Path
) -> None:
    """Queries on several connections overlap in one event loop: concurrency above 1."""
    dbapi.instrument(aiosqlite, meter=meter)
    path = str(tmp_path / "shared.db")
    seen: list[int] = []

    async def main() -> None:
        connections = [await aiosqlite.connect(path) for _ in range(4)]
        try:
            # A slow query: a recursive count that the worker threads run
            # while the loop keeps reading the meter.
            slow = (
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                "WHERE x < 400000) SELECT count(*) FROM n"
            )
            tasks = [asyncio.ensure_future(c.execute_fetchall(slow)) for c in connections]
            while not all(task.done() for task in tasks):
                seen.append(meter.snapshot().concurrency)
                await asyncio.sleep(0.001)
            assert all(list(task.result()) == [(400000,)] for task in tasks)
        finally:
            for connection in connections:
                await connection.close()

    asyncio.run(main())
    assert max(seen) == 4
    snap = meter.snapshot()
    assert (snap.queries, snap.concurrency) == (4, 0)
    assert snap.total_ns > snap.busy_ns


def test_a_cancelled_query_counts_as_an_error_and_ends(meter: MeterType) -> None:
    """Cancelling a waiting query ends it as an error; CancelledError reaches the caller."""
    dbapi.instrument(aiosqlite, meter=meter)

    async def main() -> Any:
        async with aiosqlite.connect(":memory:") as db:
            slow = (
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                "WHERE x < 5000000) SELECT count(*) FROM n"
            )
            task = asyncio.ensure_future(db.execute_fetchall(slow))
            await asyncio.sleep(0.05)
            assert meter.snapshot().concurrency == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert meter.snapshot().concurrency == 0
            await db.interrupt()
            return await db.execute_fetchall("SELECT 42")

    assert list(asyncio.run(main())) == [(42,)]
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (2, 1, 0)


def test_driver_errors_pass_through_and_count(meter: MeterType) -> None:
    """sqlite3's errors reach the coroutine's caller unchanged, counted as errors."""
    dbapi.instrument(aiosqlite, meter=meter)

    async def main() -> None:
        async with aiosqlite.connect(":memory:") as db:
            with pytest.raises(sqlite3.OperationalError, match="SELEKT"):
                await db.execute("SELEKT 1")
            cursor = await db.cursor()
            with pytest.raises(sqlite3.OperationalError, match="no such table"):
                await cursor.execute("SELECT * FROM missing")

    asyncio.run(main())
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (2, 2, 0)


def test_wrap_and_unwrap_an_existing_connection(meter: MeterType) -> None:
    """wrap_connection counts an open connection in place; unwrap restores its class."""

    async def main() -> None:
        async with aiosqlite.connect(":memory:") as db:
            original_type = type(db)
            assert dbapi.wrap_connection(db, meter=meter) is db
            await db.execute("SELECT 1")
            dbapi.unwrap_connection(db)
            assert type(db) is original_type
            await db.execute("SELECT 1")

    asyncio.run(main())
    assert meter.snapshot().queries == 1


def test_connections_and_cursors_stay_aiosqlites_own(meter: MeterType) -> None:
    """type(connection) and type(cursor) are aiosqlite's own classes, counted or not."""
    dbapi.instrument(aiosqlite, meter=meter)

    async def main() -> None:
        async with aiosqlite.connect(":memory:") as db:
            assert type(db) is aiosqlite.Connection
            async with db.execute("SELECT 1") as cursor:
                assert type(cursor) is aiosqlite.Cursor
                assert await cursor.fetchone() == (1,)
            cursor = await db.cursor()
            assert type(cursor) is aiosqlite.Cursor
            assert type(await cursor.execute("SELECT 2")) is aiosqlite.Cursor

    asyncio.run(main())
    assert meter.snapshot().queries == 2


def test_driver_errors_pass_through_one_frame_of_querymeter_at_most(meter: MeterType) -> None:
    """A driver's error reaches the coroutine's caller through at most one frame of querymeter's."""
    dbapi.instrument(aiosqlite, meter=meter)

    async def main() -> list[list[str]]:
        frames = []
        async with aiosqlite.connect(":memory:") as db:
            cursor = await db.cursor()
            for attempt in (
                lambda: db.execute("SELEKT 1"),
                lambda: db.execute_fetchall("SELEKT 1"),
                lambda: db.executescript("SELEKT 1;"),
                lambda: cursor.execute("SELEKT 1"),
            ):
                with pytest.raises(sqlite3.OperationalError) as caught:
                    await attempt()
                frames.append(transparency.hook_frames(caught.value))
        return frames

    assert all(len(frames) <= 1 for frames in asyncio.run(main()))
    snap = meter.snapshot()
    assert (snap.queries, snap.errors) == (4, 4)


def test_an_open_connection_keeps_counting_after_uninstrument(meter: MeterType) -> None:
    """After uninstrument an open counted connection still counts; closed and unwrapped,
    aiosqlite's classes get their very own methods back."""
    original = vars(aiosqlite.Connection)["execute"]
    dbapi.instrument(aiosqlite, meter=meter)

    async def main() -> None:
        db = await aiosqlite.connect(":memory:")
        dbapi.uninstrument(aiosqlite)
        await db.execute("SELECT 1")
        await db.close()
        assert vars(aiosqlite.Connection)["execute"] is not original
        dbapi.unwrap_connection(db)
        assert vars(aiosqlite.Connection)["execute"] is original

    asyncio.run(main())
    assert meter.snapshot().queries == 1
