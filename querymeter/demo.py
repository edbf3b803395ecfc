"""The demo workload: a small shop database, driven at increasing concurrency and metered.

A few tables (customers, products, orders, order items), seeded once; each
worker thread runs a mix of reads and writes through the instrumented
DB-API driver, against an embedded SQLite database in a temporary file or a
PostgreSQL server (psycopg 3).  Each concurrency level runs for a fixed time
and gives one Interval of the meter: one (N, X) point for the Universal
Scalability Law.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from . import dbapi
from .interval import Interval
from .meter import Meter
from .sampler import Sampler

__all__ = [
    "DEFAULT_DURATION_S",
    "DEFAULT_LEVELS",
    "Level",
    "PostgresDatabase",
    "SQLiteDatabase",
    "run_levels",
]

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32)
DEFAULT_DURATION_S = 3.0
WARM_UP_S = 0.3
CUSTOMERS = 1000
PRODUCTS = 500
HISTORY_ORDERS = 2000  # seeded, so that the reports have rows to read from the start
RECENT_ORDERS = 1000  # the reports' window: their work stays the same as orders pile up


class Database(Protocol):
    """Where the workload runs: an instrumented connection per worker thread."""

    description: str
    placeholder: str

    def setup(self) -> None: ...
    def connect(self) -> Any: ...
    def place_order(self, connection: Any, customer: int, lines: list[tuple[int, int]]) -> None: ...
    def close(self) -> None: ...


def _create_and_seed(connection: Any, placeholder: str, autoincrement: str) -> None:
    p = placeholder
    statements = [
        "CREATE TABLE customer (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL)",
        "CREATE TABLE product (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "price_cents INTEGER NOT NULL, stock INTEGER NOT NULL)",
        f"CREATE TABLE shop_order (id {autoincrement}, customer_id INTEGER NOT NULL, "
        "created_ns BIGINT NOT NULL, total_cents INTEGER NOT NULL)",
        "CREATE TABLE order_line (order_id INTEGER NOT NULL, product_id INTEGER NOT NULL, "
        "quantity INTEGER NOT NULL, price_cents INTEGER NOT NULL)",
        "CREATE INDEX order_by_customer ON shop_order (customer_id)",
        "CREATE INDEX line_by_order ON order_line (order_id)",
    ]
    cursor = connection.cursor()
    for statement in statements:
        cursor.execute(statement)
    rng = random.Random(7)
    cursor.executemany(
        f"INSERT INTO customer (id, name, email) VALUES ({p}, {p}, {p})",
        [(n, f"customer {n}", f"c{n}@example.invalid") for n in range(1, CUSTOMERS + 1)],
    )
    cursor.executemany(
        f"INSERT INTO product (id, name, price_cents, stock) VALUES ({p}, {p}, {p}, {p})",
        [(n, f"product {n}", rng.randint(100, 10_000), 1_000_000) for n in range(1, PRODUCTS + 1)],
    )
    cursor.executemany(
        f"INSERT INTO shop_order (id, customer_id, created_ns, total_cents) "
        f"VALUES ({p}, {p}, {p}, 0)",
        [(n, rng.randint(1, CUSTOMERS), n) for n in range(1, HISTORY_ORDERS + 1)],
    )
    cursor.executemany(
        f"INSERT INTO order_line (order_id, product_id, quantity, price_cents) "
        f"VALUES ({p}, {p}, {p}, 100)",
        [
            (order, rng.randint(1, PRODUCTS), rng.randint(1, 3))
            for order in range(1, HISTORY_ORDERS + 1)
            for _ in range(3)
        ],
    )


class SQLiteDatabase:
    """An embedded SQLite database in a temporary file (WAL: readers never wait on writers)."""

    placeholder = "?"

    def __init__(self) -> None:
        self._directory = tempfile.mkdtemp(prefix="querymeter-demo-")
        self.path = os.path.join(self._directory, "shop.db")
        self.description = f"SQLite {sqlite3.sqlite_version} (embedded, {self.path})"

    def setup(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None)
        try:
            # WAL, so that readers never wait for writers; synchronous=NORMAL is
            # the durable setting for WAL that SQLite recommends.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("BEGIN")
            _create_and_seed(connection, self.placeholder, "INTEGER PRIMARY KEY")
            connection.execute("COMMIT")
        finally:
            connection.close()

    def connect(self) -> Any:
        # Autocommit, with explicit write transactions: BEGIN IMMEDIATE takes
        # the write lock up front, so writers queue instead of failing.
        connection = sqlite3.connect(
            self.path, timeout=60, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def place_order(self, connection: Any, customer: int, lines: list[tuple[int, int]]) -> None:
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            cursor.execute(
                "INSERT INTO shop_order (customer_id, created_ns, total_cents) VALUES (?, ?, 0)",
                (customer, time.time_ns()),
            )
            _write_lines(cursor, "?", cursor.lastrowid, lines)
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise

    def close(self) -> None:
        shutil.rmtree(self._directory, ignore_errors=True)


class PostgresDatabase:
    """A PostgreSQL server through psycopg 3, in a schema of its own, dropped afterwards."""

    placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self._dsn = dsn
        self._schema = f"querymeter_demo_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as connection:
            version = connection.execute("SHOW server_version").fetchone()
        self.description = f"PostgreSQL {version[0] if version else '?'} ({_redacted(dsn)})"

    def _connect(self) -> Any:
        return self._psycopg.connect(
            self._dsn, autocommit=True, options=f"-c search_path={self._schema}"
        )

    def setup(self) -> None:
        with self._psycopg.connect(self._dsn, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {self._schema}")
        with self._connect() as connection, connection.transaction():
            _create_and_seed(connection, self.placeholder, "BIGSERIAL PRIMARY KEY")

    def connect(self) -> Any:
        return self._connect()

    def place_order(self, connection: Any, customer: int, lines: list[tuple[int, int]]) -> None:
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO shop_order (customer_id, created_ns, total_cents) "
                "VALUES (%s, %s, 0) RETURNING id",
                (customer, time.time_ns()),
            )
            row = cursor.fetchone()
            _write_lines(cursor, "%s", row[0], lines)

    def close(self) -> None:
        with self._psycopg.connect(self._dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {self._schema} CASCADE")


def _redacted(dsn: str) -> str:
    """The DSN without its password, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _write_lines(cursor: Any, p: str, order_id: int, lines: list[tuple[int, int]]) -> None:
    cursor.executemany(
        f"INSERT INTO order_line (order_id, product_id, quantity, price_cents) "
        f"SELECT {p}, id, {p}, price_cents FROM product WHERE id = {p}",
        [(order_id, quantity, product) for product, quantity in lines],
    )
    for product, quantity in lines:
        cursor.execute(
            f"UPDATE product SET stock = stock - {p} WHERE id = {p}", (quantity, product)
        )
    cursor.execute(
        f"UPDATE shop_order SET total_cents = (SELECT sum(quantity * price_cents) "
        f"FROM order_line WHERE order_id = {p}) WHERE id = {p}",
        (order_id, order_id),
    )


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
) -> Iterator[Level]:
    """Run the workload at each concurrency level in turn, yielding one Level as each ends.

    Each level starts its threads, lets them warm up, then measures for
    ``duration_s`` seconds.  Worker errors other than the database's own
    (which the meter counts) stop the run and are raised.
    """
    module = sqlite3 if isinstance(database, SQLiteDatabase) else _psycopg_module()
    with _instrumented(module, meter):
        for index, threads in enumerate(levels):
            yield _run_level(database, meter, index, len(levels), threads, duration_s, progress)


def _psycopg_module() -> Any:
    import psycopg

    return psycopg


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

    workers = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(threads)]
    try:
        for thread in workers:
            thread.start()
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
        for thread in workers:
            thread.join()
        for connection in connections:
            connection.close()
    if failures:
        raise failures[0]
    return Level(threads, after - before)


def _is_database_error(exc: Exception) -> bool:
    """A PEP 249 error of the driver (deadlock, busy): counted by the meter, not fatal."""
    return any(cls.__name__ == "DatabaseError" for cls in type(exc).__mro__)
