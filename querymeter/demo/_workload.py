"""The demo's workload: a small shop, driven at increasing concurrency and metered.

Each worker thread runs a mix of reads and writes through the instrumented
DB-API driver on one of the demo's databases.  Each concurrency level runs
for a fixed time and gives one Interval of the meter: one (N, X) point for
the Universal Scalability Law.

The workload is written to raise no error on any database: an error in a
level's count is a fault of the demo, and the first one is kept to show it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .. import dbapi
from ..meter import Meter
from ..readings import Interval
from ..sampler import Sampler
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


def run_levels(
    database: Database,
    meter: Meter,
    levels: tuple[int, ...] = DEFAULT_LEVELS,
    duration_s: float = DEFAULT_DURATION_S,
    progress: Callable[[Progress], None] | None = None,
) -> Generator[Level, None, None]:
    """Run the workload at each concurrency level in turn, yielding one Level as each ends.

    Each level starts its threads, lets them warm up, then measures for
    ``duration_s`` seconds.  Worker errors other than the database's own
    (which the meter counts) stop the run and are raised.
    """
    with _instrumented(database.driver(), meter):
        for index, threads in enumerate(levels):
            yield _run_level(database, meter, index, len(levels), threads, duration_s, progress)


def _run_level(
    database: Database,
    meter: Meter,
    index: int,
    count: int,
    threads: int,
    duration_s: float,
    progress: Callable[[Progress], None] | None,
) -> Level:
    stop = threading.Event()
    failures: list[BaseException] = []
    database_errors: list[str] = []
    connections = [database.connect() for _ in range(threads)]

    def worker(number: int) -> None:
        rng = random.Random(number * 7919 + threads)
        connection = connections[number]
        while not stop.is_set():
            try:
                _one_transaction(database, connection, rng)
            except Exception as exc:  # noqa: BLE001 - a database error is data; ours is not
                if not _is_database_error(exc):
                    failures.append(exc)
                    stop.set()
                elif not database_errors:  # racy, so a few at most: one per thread
                    database_errors.append(f"{type(exc).__name__}: {exc}".strip())

    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    running: list[threading.Thread] = []
    try:
        for thread in workers:
            thread.start()
            running.append(thread)
        time.sleep(WARM_UP_S)
        before = meter.snapshot()
        started = time.monotonic()
        with Sampler(meter, period=0.25) as sampler:
            while (elapsed := time.monotonic() - started) < duration_s and not failures:
                if progress is not None:
                    progress(Progress(index, count, threads, elapsed, duration_s, sampler.latest()))
                time.sleep(min(0.1, max(0.0, duration_s - elapsed)))
        after = meter.snapshot()
    finally:
        stop.set()
        # Only those started: Ctrl-C can arrive while they are being started.
        for thread in running:
            thread.join()
        for connection in connections:
            connection.close()
    if failures:
        raise failures[0]
    return Level(threads, after - before, database_errors[0] if database_errors else None)


def _is_database_error(exc: Exception) -> bool:
    """A PEP 249 error of the driver (deadlock, busy): counted by the meter, not fatal."""
    return any(cls.__name__ == "DatabaseError" for cls in type(exc).__mro__)
