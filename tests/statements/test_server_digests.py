"""Per-statement figures against the servers' own digests, on one workload per driver.

The oracle is the server: PostgreSQL's pg_stat_statements and MariaDB's
performance_schema digest summary count and time the same statements on their
side.  Each statement shape of the workload touches its own table, and both
sides are summed per table, because the two sides group statements differently
(PostgreSQL by query id, MariaDB by digest, querymeter by its fingerprint).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

import querymeter.dbapi as dbapi
from querymeter.meter import Meter as MeterType

from ..servers import (
    ServerDigest,
    driver,
    mysql_digest,
    pg_digest,
    require_performance_schema,
    require_pg_stat_statements,
    reset_mysql_digests,
    reset_pg_digests,
)

pytestmark = pytest.mark.servers

# The workload: one statement shape per table, each run a different number of times.
LITERAL = "qm_digest_literal"  # INSERT with literal values, different each time
LITERAL_CALLS = 7
PARAM = "qm_digest_param"  # UPDATE with parameters, one existing row each time
PARAM_CALLS = 13
BATCH = "qm_digest_batch"  # executemany INSERT, in batches of these sizes
BATCH_ROWS = (29, 3)
SELECT = "qm_digest_select"  # SELECT with a parameter
SELECT_CALLS = 5
FAIL = "qm_digest_fail"  # the same INSERT of one key: the first succeeds, the rest fail
FAIL_CALLS = 4
TABLES = (LITERAL, PARAM, BATCH, SELECT, FAIL)
OTHER_CALLS = 3  # statements on none of the tables
WORKLOAD_CALLS = (
    OTHER_CALLS + LITERAL_CALLS + PARAM_CALLS + len(BATCH_ROWS) + SELECT_CALLS + FAIL_CALLS
)

CREATE_TABLES = (
    f"CREATE TABLE {LITERAL} (id int PRIMARY KEY, note varchar(20))",
    f"CREATE TABLE {PARAM} (id int PRIMARY KEY, hits int NOT NULL)",
    f"CREATE TABLE {BATCH} (id int PRIMARY KEY, note varchar(20))",
    f"CREATE TABLE {SELECT} (id int PRIMARY KEY)",
    f"CREATE TABLE {FAIL} (id int PRIMARY KEY)",
    f"INSERT INTO {PARAM} (id, hits) VALUES " + ", ".join(f"({n}, 0)" for n in range(PARAM_CALLS)),
    f"INSERT INTO {SELECT} (id) VALUES " + ", ".join(f"({n})" for n in range(10)),
)


class Session:
    """What the workload needs of a connection: execute and executemany, paramstyle %s."""

    def __init__(
        self,
        execute: Callable[[str, Sequence[object] | None], object],
        executemany: Callable[[str, Sequence[Sequence[object]]], object],
        integrity_error: type[Exception],
    ) -> None:
        self.execute = execute
        self.executemany = executemany
        self.integrity_error = integrity_error


def run_workload(session: Session) -> None:
    """The same statements on every driver; a few that touch none of the tables."""
    session.execute("SELECT 1", None)
    for n in range(LITERAL_CALLS):
        session.execute(f"INSERT INTO {LITERAL} (id, note) VALUES ({n}, 'n{n}')", None)
    session.execute("SELECT %s + %s", (2, 3))
    for n in range(PARAM_CALLS):
        # + n + 1, never + 0: MariaDB counts only rows whose value changed as affected.
        session.execute(f"UPDATE {PARAM} SET hits = hits + %s WHERE id = %s", (n + 1, n))
    start = 0
    for size in BATCH_ROWS:
        rows = [(start + n, f"b{start + n}") for n in range(size)]
        session.executemany(f"INSERT INTO {BATCH} (id, note) VALUES (%s, %s)", rows)
        start += size
    for n in range(SELECT_CALLS):
        session.execute(f"SELECT count(*) FROM {SELECT} WHERE id < %s", (n,))
    for _ in range(FAIL_CALLS):
        with contextlib.suppress(session.integrity_error):
            session.execute(f"INSERT INTO {FAIL} (id) VALUES (1)", None)
    # Last, a statement on none of the tables: a server may record a statement
    # just after its reply, but surely before it reads the next one, so every
    # table's statements are in the server's figures once this one has returned.
    session.execute("SELECT 2", None)


def cursor_session(connection: Any, integrity_error: type[Exception]) -> Session:
    """A DB-API connection's cursor as a Session."""
    cursor = connection.cursor()
    return Session(cursor.execute, cursor.executemany, integrity_error)


@dataclass(frozen=True)
class ClientFigures:
    """The client's per-statement rows that name one table, summed."""

    fingerprints: int
    calls: int
    errors: int
    rows: int
    total_ns: int


def client_figures(reading: Any, table: str) -> ClientFigures:
    """Sum the reading's rows whose fingerprint or sample names ``table`` (as a whole word)."""
    word = re.compile(rf"\b{table}\b")
    rows = [
        row
        for row in reading.top(n=100, by="calls")
        if word.search(f"{row.fingerprint} {row.sample_sql or ''}")
    ]
    return ClientFigures(
        fingerprints=len(rows),
        calls=sum(row.calls for row in rows),
        errors=sum(row.errors for row in rows),
        rows=sum(row.rows for row in rows),
        total_ns=sum(row.total_ns for row in rows),
    )


@dataclass(frozen=True)
class Server:
    """One server and driver: how to reach it, reset and read its digests, and what it counts."""

    connect: Callable[[], Any]  # a new connection, in autocommit mode
    reset: Callable[[], None]
    digest: Callable[[str], ServerDigest]
    module: Any  # the driver
    integrity_error: type[Exception]
    # psycopg runs executemany as one statement per row (in a pipeline), where
    # PyMySQL and mysqlclient rewrite an INSERT's batch into one multi-row INSERT.
    batch_is_one_statement: bool
    # PostgreSQL records a statement when it completes: a failed one leaves no
    # trace; MariaDB counts it, and counts it in SUM_ERRORS too.
    counts_failures: bool
    # How many times the client's time the server's may be.  PostgreSQL times
    # the executor, inside the request: the client's time covers it (1).
    # MariaDB stops a statement's timer only after it has sent the reply
    # (dispatch_command: protocol->end_statement(), then log_slow_statement()
    # and MYSQL_END_STATEMENT), so its time can exceed the client's: measured
    # on autocommit INSERTs timed by hand around PyMySQL's execute, in most
    # calls, by up to 0.2 ms on 0.35 ms.  Twice still catches a wrong unit.
    time_factor: int


def postgres(name: str) -> Server:
    """PostgreSQL through psycopg 3, with pg_stat_statements."""
    module = driver(name)
    dsn = require_pg_stat_statements()
    return Server(
        connect=lambda: module.connect(dsn, autocommit=True),
        reset=lambda: reset_pg_digests(dsn),
        digest=lambda table: pg_digest(dsn, table),
        module=module,
        integrity_error=module.errors.UniqueViolation,
        batch_is_one_statement=False,
        counts_failures=False,
        time_factor=1,
    )


def mariadb(name: str) -> Server:
    """MariaDB through PyMySQL or mysqlclient, with performance_schema."""
    module = driver(name)
    params = require_performance_schema()
    return Server(
        connect=lambda: module.connect(autocommit=True, **params),
        reset=lambda: reset_mysql_digests(params),
        digest=lambda table: mysql_digest(params, table),
        module=module,
        integrity_error=module.IntegrityError,
        batch_is_one_statement=True,
        counts_failures=True,
        time_factor=2,
    )


SERVERS: dict[str, Callable[[], Server]] = {
    "postgres-psycopg": lambda: postgres("psycopg"),
    "mariadb-pymysql": lambda: mariadb("pymysql"),
    "mariadb-mysqlclient": lambda: mariadb("MySQLdb"),
}


@contextlib.contextmanager
def workload_tables(server: Server) -> Iterator[None]:
    """The workload's tables, created and filled; dropped after, with the driver uninstrumented."""
    connection = server.connect()
    try:
        cursor = connection.cursor()
        for table in TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in CREATE_TABLES:
            cursor.execute(statement)
        yield
    finally:
        dbapi.uninstrument(server.module)
        cursor = connection.cursor()
        for table in TABLES:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        connection.close()


@pytest.fixture(params=list(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server and driver, with the workload's tables for the length of the test."""
    chosen = SERVERS[request.param]()
    with workload_tables(chosen):
        yield chosen


def measure(meter: MeterType, server: Server, workload: Callable[[], None]) -> Any:
    """Run the workload with the statements table on and the server's digests reset; the reading."""
    server.reset()
    meter.enable_statements(max_statements=5000)
    try:
        workload()
        return meter.statements.snapshot()
    finally:
        meter.disable_statements()


def check_against_server(reading: Any, server: Server) -> None:
    """Per table: calls, errors, rows and time on the client agree with the server's digest."""
    for table in TABLES:
        client = client_figures(reading, table)
        digest = server.digest(table)
        where = f"{table}: client {client}, server {digest}"
        assert client.fingerprints >= 1, where
        # The server timed what it ran: a time of 0 would make the comparison void.
        assert digest.time_ns > 0, where
        # The client's time runs from the call to the return: it includes the
        # server's execution time, and the round trips around it.
        assert client.total_ns * server.time_factor >= digest.time_ns, where
        if table == LITERAL:
            assert (client.calls, client.errors, client.rows) == (LITERAL_CALLS, 0, LITERAL_CALLS)
            assert (digest.calls, digest.rows) == (client.calls, client.rows), where
        elif table == PARAM:
            assert (client.calls, client.errors, client.rows) == (PARAM_CALLS, 0, PARAM_CALLS)
            assert (digest.calls, digest.rows) == (client.calls, client.rows), where
        elif table == BATCH:
            # One executemany is one call on the client, whatever the driver sends.
            assert (client.calls, client.errors) == (len(BATCH_ROWS), 0), where
            assert client.rows == sum(BATCH_ROWS) == digest.rows, where
            if server.batch_is_one_statement:
                assert digest.calls == client.calls, where
            else:
                assert digest.calls == sum(BATCH_ROWS), where
        elif table == SELECT:
            assert (client.calls, client.errors) == (SELECT_CALLS, 0), where
            assert digest.calls == client.calls, where
        elif table == FAIL:
            assert (client.calls, client.errors) == (FAIL_CALLS, FAIL_CALLS - 1), where
            if server.counts_failures:
                assert (digest.calls, digest.errors) == (client.calls, client.errors), where
            else:
                assert digest.calls == client.calls - client.errors == 1, where


def test_each_tables_calls_rows_and_time_agree_with_the_servers_digest(
    Meter: type[MeterType], server: Server
) -> None:
    """Per table, calls, errors and rows equal the server's digest, and time covers the server's."""
    meter = Meter()

    def workload() -> None:
        dbapi.instrument(server.module, meter=meter)
        try:
            connection = server.connect()
            try:
                run_workload(cursor_session(connection, server.integrity_error))
            finally:
                connection.close()
        finally:
            dbapi.uninstrument(server.module)

    reading = measure(meter, server, workload)
    check_against_server(reading, server)
    # What the drivers send on their own (PyMySQL's SET AUTOCOMMIT on connect,
    # psycopg's BEGIN outside autocommit) goes through no cursor: not counted.
    assert sum(row.calls for row in reading.top(n=100, by="calls")) == WORKLOAD_CALLS


def test_through_sqlalchemy_on_postgres(Meter: type[MeterType]) -> None:
    """Through a SQLAlchemy engine on psycopg, the figures agree with pg_stat_statements too."""
    sqlalchemy = driver("sqlalchemy")
    server = postgres("psycopg")
    meter = Meter()

    def workload() -> None:
        dbapi.instrument(server.module, meter=meter)
        # The engine's connections come from the counted psycopg.connect; the
        # queries SQLAlchemy sends on its own name none of the tables.
        engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=server.connect)
        try:
            with engine.connect() as connection:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                run_workload(
                    Session(
                        # exec_driver_sql: the driver's paramstyle, as in the other tests.
                        lambda sql, params: connection.exec_driver_sql(sql, tuple(params or ())),
                        lambda sql, rows: connection.exec_driver_sql(sql, list(rows)),
                        sqlalchemy.exc.IntegrityError,
                    )
                )
        finally:
            engine.dispose()
            dbapi.uninstrument(server.module)

    with workload_tables(server):
        reading = measure(meter, server, workload)
        check_against_server(reading, server)
