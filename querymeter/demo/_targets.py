"""The demo's databases: where its workload runs, and the --dsn URLs that name them.

An embedded SQLite database in a temporary file, a PostgreSQL server
(psycopg 3) or a MariaDB/MySQL server (PyMySQL), each holding the shop's
tables (customers, products, orders, order items), seeded once, in a place
of its own that closing drops.  Each gives an instrumented connection per
worker thread and places an order as one transaction in its own dialect.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

CUSTOMERS = 1000
PRODUCTS = 500
HISTORY_ORDERS = 2000  # seeded, so that the reports have rows to read from the start


class Database(Protocol):
    """Where the workload runs: an instrumented connection per worker thread."""

    description: str
    placeholder: str

    def driver(self) -> Any: ...
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

    def driver(self) -> Any:
        return sqlite3

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

    def driver(self) -> Any:
        return self._psycopg

    def _connect(self) -> Any:
        return self._psycopg.connect(
            self._dsn, autocommit=True, options=f"-c search_path={self._schema}"
        )

    def setup(self) -> None:
        with self._psycopg.connect(self._dsn, autocommit=True) as connection:
            connection.execute(f"CREATE SCHEMA {self._schema}")
        with self._connect() as connection, connection.transaction():
            _create_and_seed(connection, self.placeholder, "BIGSERIAL PRIMARY KEY")
            # The seeded orders took explicit ids, which do not advance the
            # sequence: without this, the workload's first inserts would
            # collide with them (UniqueViolation) until it caught up.
            connection.execute(
                "SELECT setval(pg_get_serial_sequence('shop_order', 'id'), "
                "(SELECT max(id) FROM shop_order))"
            )

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


class MySQLDatabase:
    """A MariaDB or MySQL server through PyMySQL, in a database of its own, dropped afterwards."""

    placeholder = "%s"

    def __init__(self, params: dict[str, Any], shown: str) -> None:
        import pymysql

        self._pymysql = pymysql
        # The URL's database is only where to connect first: the demo's
        # tables go into a database of their own.
        self._params = {key: value for key, value in params.items() if key != "database"}
        self._database = f"querymeter_demo_{uuid.uuid4().hex[:12]}"
        connection = pymysql.connect(connect_timeout=10, **params)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT VERSION()")
                row = cursor.fetchone()
        finally:
            connection.close()
        version = str(row[0]) if row else "?"
        product = "MariaDB" if "mariadb" in version.lower() else "MySQL"
        self.description = f"{product} {version} ({shown})"

    def driver(self) -> Any:
        return self._pymysql

    def setup(self) -> None:
        connection = self._pymysql.connect(connect_timeout=10, **self._params)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {self._database}")
        finally:
            connection.close()
        connection = self._pymysql.connect(database=self._database, **self._params)
        try:
            connection.begin()
            _create_and_seed(connection, self.placeholder, "BIGINT AUTO_INCREMENT PRIMARY KEY")
            connection.commit()
        finally:
            connection.close()

    def connect(self) -> Any:
        # READ COMMITTED, as PostgreSQL's default: under InnoDB's REPEATABLE
        # READ, INSERT ... SELECT and the subquery of an UPDATE lock the rows
        # and gaps they read, and concurrent orders would deadlock.
        return self._pymysql.connect(
            database=self._database,
            autocommit=True,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            **self._params,
        )

    def place_order(self, connection: Any, customer: int, lines: list[tuple[int, int]]) -> None:
        connection.begin()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "INSERT INTO shop_order (customer_id, created_ns, total_cents) "
                    "VALUES (%s, %s, 0)",
                    (customer, time.time_ns()),
                )
                _write_lines(cursor, "%s", cursor.lastrowid, lines)
            connection.commit()
        except BaseException:
            connection.rollback()
            raise

    def close(self) -> None:
        connection = self._pymysql.connect(connect_timeout=10, **self._params)
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {self._database}")
        finally:
            connection.close()


@dataclass(frozen=True)
class DatabaseURL:
    """A --dsn URL, read: which server, how to reach it, and how to show it."""

    kind: Literal["postgresql", "mysql"]
    #: For PostgreSQL, the URL as libpq reads it (postgresql://...).
    url: str
    #: For MariaDB/MySQL, PyMySQL's connect() arguments.
    params: dict[str, Any]
    #: The URL without its password, for printing.
    shown: str


_POSTGRESQL_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_MYSQL_SCHEMES = ("mysql", "mariadb", "mysql+pymysql", "mariadb+pymysql")
_MYSQL_QUERY = {"charset": str, "unix_socket": str, "connect_timeout": int}


def parse_database_url(text: str) -> DatabaseURL:
    """Read a database URL; raise ValueError saying what is wrong with it.

    ``postgresql://`` (or ``postgres://``, or SQLAlchemy's
    ``postgresql+psycopg://``) goes to psycopg 3; ``mysql://``, ``mariadb://``
    (or ``mysql+pymysql://``, ``mariadb+pymysql://``) to PyMySQL.  Another
    driver after ``+`` is refused rather than silently replaced.
    """
    scheme, separator, _ = text.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in _POSTGRESQL_SCHEMES + _MYSQL_SCHEMES:
        dialect, plus, driver = scheme.partition("+")
        if separator and plus and dialect in ("postgresql", "postgres", "mysql", "mariadb"):
            wanted = "psycopg" if dialect.startswith("postgres") else "pymysql"
            raise ValueError(
                f"the demo connects through {wanted}, not {driver}: write "
                f"{dialect}+{wanted}:// or {dialect}:// (got {_redacted(text)!r})"
            )
        raise ValueError(
            "expected a database URL: postgresql://user@host/db, mysql://user@host/db "
            "or mariadb://user@host/db (SQLAlchemy's postgresql+psycopg:// and "
            f"mysql+pymysql:// too), got {_redacted(text)!r}"
        )
    shown = _redacted(text)
    if scheme in _POSTGRESQL_SCHEMES:
        return DatabaseURL("postgresql", "postgresql://" + text.partition("://")[2], {}, shown)
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in {shown!r}: {exc}") from None
    params: dict[str, Any] = {
        "host": unquote(parts.hostname or "localhost"),
        "port": port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
    }
    database = unquote(parts.path.lstrip("/"))
    if database:
        params["database"] = database
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        convert = _MYSQL_QUERY.get(key)
        if convert is None:
            known = ", ".join(_MYSQL_QUERY)
            raise ValueError(f"unknown parameter {key!r} in {shown!r} (known: {known})")
        try:
            params[key] = convert(value)
        except ValueError:
            raise ValueError(f"bad value {value!r} for {key!r} in {shown!r}") from None
    return DatabaseURL("mysql", text, params, shown)


def open_database(url: DatabaseURL | None) -> SQLiteDatabase | PostgresDatabase | MySQLDatabase:
    """The database a demo runs on: SQLite without a URL; connects once to check a server.

    Raises ImportError without the driver, and the driver's error when the
    server cannot be reached.
    """
    if url is None:
        return SQLiteDatabase()
    if url.kind == "postgresql":
        return PostgresDatabase(url.url)
    return MySQLDatabase(url.params, url.shown)


def _redacted(dsn: str) -> str:
    """The DSN without its password, for printing."""
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
