"""The demo's workload: a small shop, driven at increasing concurrency and metered.

Each worker thread runs a mix of reads and writes through the instrumented
DB-API driver on one of the demo's databases.  Each concurrency level runs
for a fixed time and gives one Interval of the meter: one (N, X) point for
the Universal Scalability Law.  The runner is :mod:`querymeter.scaling`'s,
the one a benchmark suite uses.

The workload is written to raise no error on any database: an error in a
level's count is a fault of the demo, and the first one is kept to show it.
"""

from __future__ import annotations

import queue
import random
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any

from .. import dbapi, scaling
from ..meter import Meter
from ..readings import Interval
from ._targets import CUSTOMERS, PRODUCTS, Database

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32)
DEFAULT_DURATION_S = 3.0
WARM_UP_S = 0.3
RECENT_ORDERS = 1000  # the reports' window: their work stays the same as orders pile up


def _one_transaction(database: Database, connection: Any, rng: random.Random) -> None:
    """One unit of work of a shop: product pages, order histories, a sales report, orders."""
    p = database.placeholder
    roll = rng.random()
    cursor = connection.cursor()
    recent = f"(SELECT coalesce(max(id), 0) - {RECENT_ORDERS} FROM shop_order)"
    if roll < 0.35:
        # A product page: the product and its recent sales.
        cursor.execute(
            "SELECT p.name, p.price_cents, count(l.order_id), coalesce(sum(l.quantity), 0) "
            f"FROM product p LEFT JOIN order_line l ON l.product_id = p.id "
            f"AND l.order_id > {recent} WHERE p.id = {p} GROUP BY p.name, p.price_cents",
            (rng.randint(1, PRODUCTS),),
        )
        cursor.fetchall()
    elif roll < 0.55:
        # A customer's order history.
        cursor.execute(
            "SELECT o.id, o.total_cents, count(l.product_id) FROM shop_order o "
            f"LEFT JOIN order_line l ON l.order_id = o.id WHERE o.customer_id = {p} "
            "GROUP BY o.id, o.total_cents ORDER BY o.id DESC LIMIT 5",
            (rng.randint(1, CUSTOMERS),),
        )
        cursor.fetchall()
    elif roll < 0.7:
        # The best sellers of late.
        cursor.execute(
            f"SELECT product_id, sum(quantity) FROM order_line WHERE order_id > {recent} "
            "GROUP BY product_id ORDER BY 2 DESC LIMIT 5"
        )
        cursor.fetchall()
    else:
        # Lines in product order, as a shop would: concurrent orders then lock
        # their products in the same order and cannot deadlock.
        lines = sorted(
            (rng.randint(1, PRODUCTS), rng.randint(1, 3)) for _ in range(rng.randint(1, 3))
        )
        database.place_order(connection, rng.randint(1, CUSTOMERS), lines)


@dataclass(frozen=True)
class Level:
    """One concurrency level of the run: its worker threads and what the meter saw."""

    threads: int
    interval: Interval
    #: The first error the workload raised in this level, as "Type: message";
    #: None when there was none (as there should be).
    first_error: str | None = None


@dataclass(frozen=True)
class Progress:
    """Where a run is, for a progress display."""

    level_index: int
    levels: int
    threads: int
    elapsed_s: float
    duration_s: float
    latest: Interval | None


@contextmanager
def _instrumented(module: Any, meter: Meter) -> Iterator[None]:
    dbapi.instrument(module, meter=meter)
    try:
        yield
    finally:
        dbapi.uninstrument(module)


class _Shop:
    """One level of the shop: a connection and a random stream per worker thread, lent out per call.

    There are as many connections as worker threads, so a call never waits
    for one: each worker keeps using a connection of its own, as before.
    """

    def __init__(self, database: Database, threads: int) -> None:
        self.database = database
        self._idle: queue.SimpleQueue[tuple[Any, random.Random]] = queue.SimpleQueue()
        self._connections: list[Any] = []
        #: The first database error (which the meter counts), as "Type: message".
        self.first_database_error: str | None = None
        #: The first error that is not the database's: a fault of the demo, raised after the level.
        self.failure: BaseException | None = None
        try:
            for number in range(threads):
                connection = database.connect()
                self._connections.append(connection)
                self._idle.put((connection, random.Random(number * 7919 + threads)))
        except BaseException:
            self.close()
            raise

    def transaction(self) -> None:
        connection, rng = self._idle.get()
        try:
            _one_transaction(self.database, connection, rng)
        except Exception as exc:
            if not _is_database_error(exc):
                if self.failure is None:
                    self.failure = exc
                raise
            # A database error is data (the meter counts it), not a failed call.
            if self.first_database_error is None:
                self.first_database_error = f"{type(exc).__name__}: {exc}".strip()
        finally:
            self._idle.put((connection, rng))

    def close(self) -> None:
        for connection in self._connections:
            connection.close()


def run_levels(
    database: Database,
    meter: Meter,
    levels: tuple[int, ...] = DEFAULT_LEVELS,
    duration_s: float = DEFAULT_DURATION_S,
    progress: Callable[[Progress], None] | None = None,
) -> Generator[Level, None, None]:
    """Run the workload at each concurrency level in turn, yielding one Level as each ends.

    The runner is :func:`querymeter.scaling.measure`: each level starts its
    threads, lets them warm up, then measures for ``duration_s`` seconds.
    Worker errors other than the database's own (which the meter counts)
    stop the run and are raised.
    """
    shops: list[_Shop] = []

    @contextmanager
    def level(threads: int) -> Iterator[_Shop]:
        shop = _Shop(database, threads)
        shops.append(shop)
        try:
            yield shop
        finally:
            shop.close()

    def report(where: scaling.Progress) -> None:
        if progress is not None:
            progress(
                Progress(
                    where.level_index,
                    where.levels,
                    where.workers,
                    where.elapsed_s,
                    where.duration_s,
                    where.latest,
                )
            )

    with _instrumented(database.driver(), meter):
        measured = scaling.measure(
            _Shop.transaction,
            levels=levels,
            duration=duration_s,
            warmup=WARM_UP_S,
            meter=meter,
            setup=level,
            progress=report,
        )
        with closing(measured):
            for step in measured:
                shop = shops[-1]
                if shop.failure is not None:
                    raise shop.failure
                yield Level(step.workers, step.interval, shop.first_database_error)


def _is_database_error(exc: Exception) -> bool:
    """A PEP 249 error of the driver (deadlock, busy): counted by the meter, not fatal."""
    return any(cls.__name__ == "DatabaseError" for cls in type(exc).__mro__)
