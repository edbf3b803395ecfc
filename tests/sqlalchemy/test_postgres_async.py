"""PostgreSQL through AsyncEngine, with asyncpg and with psycopg async.

Counts, overlap, cancellation, waits in the AsyncAdaptedQueuePool, timeouts, and the
hand-over with querymeter.dbapi.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest

import querymeter.dbapi as dbapi
import querymeter.sqlalchemy as qs
from querymeter.meter import Meter as MeterType

from ..dbapi import overlap
from ..servers import driver
from .conftest import pg_url

pytestmark = pytest.mark.servers

sqlalchemy = driver("sqlalchemy")
driver("greenlet")
asyncio_ext = driver("sqlalchemy.ext.asyncio")
orm = driver("sqlalchemy.orm")

HOLD_S = 0.2
MS = 1_000_000


@pytest.fixture(params=["asyncpg", "psycopg"])
def async_driver(request: pytest.FixtureRequest) -> str:
    """The async driver under test."""
    driver(request.param)
    return str(request.param)


@asynccontextmanager
async def instrumented(
    drivername: str, meter: MeterType, connections: int = 1, **kwargs: Any
) -> AsyncIterator[Any]:
    """An instrumented AsyncEngine, with ``connections`` connections opened once, then disposed."""
    engine = asyncio_ext.create_async_engine(pg_url(drivername), **kwargs)
    try:
        qs.instrument(engine, meter=meter)
        held = [await engine.connect() for _ in range(connections)]
        for connection in held:
            await connection.close()
        yield engine
    finally:
        qs.uninstrument(engine)
        await engine.dispose()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(main())  # type: ignore[arg-type]


def test_core_and_orm_statements_count_once_each(async_driver: str, meter: MeterType) -> None:
    """Core and AsyncSession statements count once each; executemany once, each batch once."""

    class Base(orm.DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "qm_sa_async_item"
        __table_args__: ClassVar[dict[str, Any]] = {"prefixes": ["TEMPORARY"]}
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str | None]

    async def main() -> None:
        async with instrumented(async_driver, meter, insertmanyvalues_page_size=2) as engine:
            before = meter.snapshot()
            async with asyncio_ext.AsyncSession(engine) as session:
                connection = await session.connection()
                await connection.run_sync(Base.metadata.create_all)  # has_table + CREATE
                await connection.execute(
                    Item.__table__.insert(), [{"name": f"core{n}"} for n in range(3)]
                )
                session.add_all([Item(name=f"orm{n}") for n in range(5)])
                await session.flush()  # 3 batches
                items = (await session.scalars(sqlalchemy.select(Item))).all()
                assert len(items) == 8
                items[0].name = "renamed"
                await session.flush()
                await session.rollback()
            interval = meter.snapshot() - before
            assert (interval.queries, interval.errors, interval.later.concurrency) == (8, 0, 0)

    run(main)


def test_four_tasks_overlap(async_driver: str, meter: MeterType) -> None:
    """4 tasks sleeping 0.3 s on the server through one engine: concurrency 4, Δtotal ≈ 1.2 s."""

    async def main() -> None:
        async with instrumented(
            async_driver, meter, overlap.QUERIES, pool_size=overlap.QUERIES
        ) as engine:

            async def query() -> None:
                async with engine.connect() as connection:
                    await connection.exec_driver_sql(f"SELECT pg_sleep({overlap.SLEEP_S})")

            overlap.check(await overlap.in_tasks(meter, [query] * overlap.QUERIES))

    run(main)


def test_cancellation_mid_statement_is_an_error_and_leaves_nothing_in_flight(
    async_driver: str, meter: MeterType
) -> None:
    """A task cancelled during a statement: one error query, concurrency 0, its connection
    invalidated and given back, and the CancelledError reaches the task unchanged."""

    async def main() -> None:
        async with instrumented(async_driver, meter) as engine:
            before, pool_before = meter.snapshot(), qs.pool_snapshot(engine)

            async def victim() -> None:
                async with engine.connect() as connection:
                    await connection.exec_driver_sql("SELECT pg_sleep(5)")

            task = asyncio.ensure_future(victim())
            while meter.snapshot().concurrency == 0:
                await asyncio.sleep(0.005)
            task.cancel("cancelled by the test")
            with pytest.raises(asyncio.CancelledError, match="cancelled by the test"):
                await task
            interval = meter.snapshot() - before
            pool = qs.pool_snapshot(engine) - pool_before
            assert (interval.queries, interval.errors, interval.later.concurrency) == (1, 1, 0)
            assert (pool.checkouts, pool.releases, pool.invalidations) == (1, 1, 1)
            assert pool.later.in_use == 0
            async with engine.connect() as connection:
                assert (await connection.exec_driver_sql("SELECT 42")).scalar() == 42

    run(main)


def test_pool_waits_match_what_the_tasks_measured(async_driver: str, meter: MeterType) -> None:
    """pool_size=2, 6 tasks holding a connection 0.2 s: 4 waits in the AsyncAdaptedQueuePool,
    their total time as the tasks saw it."""

    async def main() -> None:
        async with instrumented(async_driver, meter, 2, pool_size=2, max_overflow=0) as engine:
            checkout_ns: list[int] = []

            async def hold() -> None:
                start = time.perf_counter_ns()
                async with engine.connect() as connection:
                    checkout_ns.append(time.perf_counter_ns() - start)
                    await connection.exec_driver_sql("SELECT 1")
                    await asyncio.sleep(HOLD_S)

            before = qs.pool_snapshot(engine)
            tasks = [asyncio.ensure_future(hold()) for _ in range(6)]
            await asyncio.sleep(HOLD_S / 2)
            during = qs.pool_snapshot(engine)
            await asyncio.gather(*tasks)
            interval = qs.pool_snapshot(engine) - before
            assert (during.waiting, during.in_use) == (4, 2)
            waited = [ns for ns in checkout_ns if ns > HOLD_S * 1e9 / 4]
            assert (interval.waits, len(waited), interval.checkouts) == (4, 4, 6)
            assert 0 <= sum(waited) - interval.wait_ns <= len(waited) * 20 * MS
            assert interval.later.waiting == interval.later.in_use == 0

    run(main)


def test_an_async_checkout_timeout_is_counted_and_reaches_the_caller(meter: MeterType) -> None:
    """An exhausted AsyncAdaptedQueuePool times out: one wait, one timeout, TimeoutError raised."""
    driver("asyncpg")

    async def main() -> None:
        async with instrumented(
            "asyncpg", meter, pool_size=1, max_overflow=0, pool_timeout=0.2
        ) as engine:
            before = qs.pool_snapshot(engine)
            async with engine.connect():
                with pytest.raises(sqlalchemy.exc.TimeoutError, match="QueuePool limit"):
                    await engine.connect()
            interval = qs.pool_snapshot(engine) - before
            assert (interval.timeouts, interval.waits, interval.checkout_failures) == (1, 1, 1)
            assert 0.2 <= interval.wait_ns / 1e9 <= 0.3

    run(main)


def test_a_task_cancelled_while_waiting_is_not_a_timeout(meter: MeterType) -> None:
    """A checkout cancelled while it waits for a connection ends its wait, and is no timeout."""
    driver("asyncpg")

    async def main() -> None:
        async with instrumented("asyncpg", meter, pool_size=1, max_overflow=0) as engine:
            before = qs.pool_snapshot(engine)
            async with engine.connect():
                waiter = asyncio.ensure_future(engine.connect())
                while qs.pool_snapshot(engine).waiting == 0:
                    await asyncio.sleep(0.005)
                waiter.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiter
            interval = qs.pool_snapshot(engine) - before
            assert (interval.waits, interval.timeouts, interval.checkout_failures) == (1, 0, 1)
            assert interval.later.waiting == interval.later.in_use == 0

    run(main)


def test_psycopg_async_dbapi_and_engine_on_one_meter_count_once(meter: MeterType) -> None:
    """psycopg instrumented with the engine's meter: its async connections are counted by the
    engine only, and by the driver again after uninstrument."""
    psycopg = driver("psycopg")
    dbapi.instrument(psycopg, meter=meter)

    async def main() -> None:
        engine = asyncio_ext.create_async_engine(pg_url("psycopg"))
        try:
            qs.instrument(engine, meter=meter)
            async with engine.connect() as connection:
                raw = await connection.get_raw_connection()
                driver_connection = raw.driver_connection
                before = meter.snapshot().queries
                for _ in range(3):
                    await connection.exec_driver_sql("SELECT 1")
                assert meter.snapshot().queries == before + 3
                assert dbapi.meter_of(driver_connection) is None
            qs.uninstrument(engine)
            assert dbapi.meter_of(driver_connection) is meter
            async with engine.connect() as connection:
                before = meter.snapshot().queries
                await connection.exec_driver_sql("SELECT 1")
                assert meter.snapshot().queries == before + 1
        finally:
            await engine.dispose()

    run(main)


def test_psycopg_async_dbapi_and_engine_on_two_meters_count_once_in_each(
    Meter: type[MeterType],
) -> None:
    """psycopg instrumented with another meter: each meter counts every async statement once."""
    psycopg = driver("psycopg")
    driver_meter, engine_meter = Meter(), Meter()
    dbapi.instrument(psycopg, meter=driver_meter)

    async def main() -> None:
        async with instrumented("psycopg", engine_meter) as engine:
            async with engine.connect() as connection:
                before = driver_meter.snapshot().queries, engine_meter.snapshot().queries
                for _ in range(3):
                    await connection.exec_driver_sql("SELECT 1")
                after = driver_meter.snapshot().queries, engine_meter.snapshot().queries
            assert (after[0] - before[0], after[1] - before[1]) == (3, 3)

    run(main)


def test_instrument_all_counts_a_psycopg_async_engine_once(meter: MeterType) -> None:
    """create_async_engine with psycopg calls engine_created twice; statements still count once."""
    driver("psycopg")
    qs.instrument_all(meter=meter)

    async def main() -> None:
        engine = asyncio_ext.create_async_engine(pg_url("psycopg"))
        try:
            assert qs.instrumented_meter(engine) is meter
            async with engine.connect() as connection:
                before = meter.snapshot().queries
                for _ in range(3):
                    await connection.exec_driver_sql("SELECT 1")
                assert meter.snapshot().queries == before + 3
        finally:
            qs.uninstrument(engine)
            await engine.dispose()

    run(main)


def test_async_dispose_keeps_the_pool_accounted(meter: MeterType) -> None:
    """After AsyncEngine.dispose(), the new pool is wrapped and its checkouts and waits count."""
    driver("asyncpg")

    async def main() -> None:
        async with instrumented("asyncpg", meter, pool_size=1, max_overflow=0) as engine:
            old_pool = engine.sync_engine.pool
            await engine.dispose()
            assert engine.sync_engine.pool is not old_pool
            before = qs.pool_snapshot(engine)
            async with engine.connect() as connection:
                await connection.exec_driver_sql("SELECT 1")
                waiter = asyncio.ensure_future(engine.connect())
                await asyncio.sleep(0.05)
            await (await waiter).close()
            interval = qs.pool_snapshot(engine) - before
            assert (interval.checkouts, interval.creations, interval.waits) == (2, 1, 1)
            assert (interval.later.size, interval.later.in_use) == (1, 0)

    run(main)
