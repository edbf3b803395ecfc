"""EXPLAIN of the top statements: plans on SQLite, PostgreSQL and MariaDB, the read-only
guard, the pool left alone, once per fingerprint, and nothing counted."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import querymeter.dbapi as dbapi
import querymeter.sessions._explain as explain_module
from querymeter.meter import Meter as MeterType
from querymeter.sessions._explain import Plan, explain_statements

from ..servers import driver, mysql_params, postgres_dsn

TABLE = "qm_explain_t"
SELECT = f"SELECT * FROM {TABLE} WHERE name = 'b'"
# Every shape of write the guard refuses, with what must stay unchanged.
WRITES = [
    f"INSERT INTO {TABLE} (id, name) VALUES (100, 'x')",
    f"UPDATE {TABLE} SET name = 'x'",
    f"DELETE FROM {TABLE}",
    f"DROP TABLE {TABLE}",
    f"CREATE TABLE {TABLE}_2 (id int)",
    f"SELECT * FROM {TABLE}; DELETE FROM {TABLE}",
    f"SELECT * INTO {TABLE}_3 FROM {TABLE}",
    f"WITH gone AS (DELETE FROM {TABLE} RETURNING id) SELECT * FROM gone",
    f"/* SELECT */ DELETE FROM {TABLE}",
]


def pairs(*texts: str) -> list[tuple[str, str]]:
    """(fingerprint, text) pairs, each text its own fingerprint."""
    return [(f"fp{index}", text) for index, text in enumerate(texts)]


def counters(meter: MeterType) -> tuple[int, int, int, int, int]:
    """The counters an explain must leave alone (uptime moves by itself)."""
    snap = meter.snapshot()
    return snap.queries, snap.errors, snap.concurrency, snap.total_ns, snap.busy_ns


@pytest.fixture
def meter(Meter: type[MeterType]) -> MeterType:
    """A fresh meter of the core under test."""
    return Meter()


# ---------------------------------------------------------------------- SQLite


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    """A file database with the test table, three rows."""
    path = tmp_path / "explain.db"
    with sqlite3.connect(path) as connection:
        connection.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany(f"INSERT INTO {TABLE} VALUES (?, ?)", [(1, "a"), (2, "b"), (3, "c")])
    connection.close()
    return path


def sqlite_state(path: Path) -> tuple[list[Any], list[Any]]:
    """The test table's rows and the schema, read on a connection of the test's own."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(f"SELECT * FROM {TABLE} ORDER BY id").fetchall()
        schema = connection.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        connection.close()
    return rows, schema


class RecordingCursor(sqlite3.Cursor):
    """A sqlite3 cursor that records each text it is asked to execute."""

    def execute(self, sql: str, *args: Any) -> Any:
        self.connection.sent.append(sql)  # type: ignore[attr-defined]
        return super().execute(sql, *args)


class RecordingConnection(sqlite3.Connection):
    """A sqlite3 connection whose cursors record what they execute (SQLite's trace
    callback does not see EXPLAIN programs)."""

    sent: list[str]

    def cursor(self, factory: Any = RecordingCursor) -> Any:
        return super().cursor(factory)


@pytest.fixture
def traced(sqlite_path: Path) -> Iterator[tuple[sqlite3.Connection, list[str]]]:
    """A connection to the file database, and every text sent through its cursors."""
    connection = sqlite3.connect(sqlite_path, factory=RecordingConnection)
    connection.sent = []
    yield connection, connection.sent
    connection.close()


def test_sqlite_connection_gets_the_plan_and_stays_open(
    traced: tuple[sqlite3.Connection, list[str]],
) -> None:
    """A literal SELECT on a given sqlite3 connection gets its plan; the connection stays open."""
    connection, _ = traced
    [plan] = explain_statements([("fp", SELECT)], connection)
    assert plan.note is None
    assert plan.dialect == "sqlite"
    assert plan.plan is not None and f"SCAN {TABLE}" in plan.plan
    assert plan.sql == SELECT and plan.fingerprint == "fp"
    assert connection.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (3,)


def test_sqlite_index_use_shows_in_the_plan(
    traced: tuple[sqlite3.Connection, list[str]],
) -> None:
    """A lookup by primary key is planned as a SEARCH, not a SCAN."""
    connection, _ = traced
    [plan] = explain_statements([("fp", f"SELECT name FROM {TABLE} WHERE id = 2")], connection)
    assert plan.plan is not None and f"SEARCH {TABLE}" in plan.plan, plan


def test_sqlite_placeholders_are_bound_to_nulls(
    traced: tuple[sqlite3.Connection, list[str]],
) -> None:
    """Positional and named placeholders are explained, with NULLs bound."""
    connection, _ = traced
    plans = explain_statements(
        pairs(
            f"SELECT * FROM {TABLE} WHERE id = ? AND name = ?",
            f"SELECT * FROM {TABLE} WHERE id = :id OR id = :id",
            f"SELECT * FROM {TABLE} WHERE id = ?2 AND name = ?1",
        ),
        connection,
    )
    for plan in plans:
        assert plan.note is None, plan
        assert plan.plan is not None and TABLE in plan.plan


def test_sqlite_writes_are_refused_and_never_run(
    sqlite_path: Path, traced: tuple[sqlite3.Connection, list[str]]
) -> None:
    """Writes, DDL and several statements get a note, and SQLite never sees them."""
    connection, sent = traced
    ran: list[str] = []
    connection.set_trace_callback(ran.append)
    before = sqlite_state(sqlite_path)
    plans = explain_statements(pairs(*WRITES), connection, limit=len(WRITES))
    assert [plan.plan for plan in plans] == [None] * len(WRITES)
    for plan in plans:
        assert plan.note is not None and "not explained" in plan.note, plan
    # Not even a PRAGMA: nothing to explain, nothing sent, nothing run.
    assert sent == [] and ran == []
    assert sqlite_state(sqlite_path) == before


def test_sqlite_query_only_is_restored(traced: tuple[sqlite3.Connection, list[str]]) -> None:
    """PRAGMA query_only is on during the explain, and as it was after, on or off."""
    connection, statements = traced
    for setting in (0, 1):
        connection.execute(f"PRAGMA query_only = {setting}")
        statements.clear()
        explain_statements([("fp", SELECT)], connection)
        assert statements.index("PRAGMA query_only = ON") < statements.index(
            f"EXPLAIN QUERY PLAN {SELECT}"
        )
        assert connection.execute("PRAGMA query_only").fetchone() == (setting,)
    connection.execute("PRAGMA query_only = 0")
    connection.execute(f"INSERT INTO {TABLE} VALUES (9, 'z')")  # writable again


def test_a_missing_table_gives_a_note(traced: tuple[sqlite3.Connection, list[str]]) -> None:
    """A statement the server cannot plan gets the server's reason, and the next one its plan."""
    connection, _ = traced
    missing, found = explain_statements(
        pairs("SELECT * FROM qm_explain_missing", SELECT), connection
    )
    assert missing.plan is None
    assert missing.note is not None and "qm_explain_missing" in missing.note
    assert found.plan is not None and TABLE in found.plan


def test_each_fingerprint_is_explained_once(
    traced: tuple[sqlite3.Connection, list[str]],
) -> None:
    """Duplicated fingerprints give one plan, from their first text, and one EXPLAIN each."""
    connection, statements = traced
    other = f"SELECT id FROM {TABLE}"
    plans = explain_statements(
        [("a", SELECT), ("b", other), ("a", other), ("b", SELECT), ("a", SELECT)], connection
    )
    assert [(plan.fingerprint, plan.sql) for plan in plans] == [("a", SELECT), ("b", other)]
    explains = [text for text in statements if text.startswith("EXPLAIN")]
    assert explains == [f"EXPLAIN QUERY PLAN {SELECT}", f"EXPLAIN QUERY PLAN {other}"]


def test_limit_is_honoured(traced: tuple[sqlite3.Connection, list[str]]) -> None:
    """Only the first ``limit`` distinct statements are explained; limit=0 runs nothing."""
    connection, statements = traced
    texts = [f"SELECT id FROM {TABLE} WHERE id = {n}" for n in range(5)]
    plans = explain_statements(pairs(*texts), connection, limit=2)
    assert [plan.sql for plan in plans] == texts[:2]
    assert len([text for text in statements if text.startswith("EXPLAIN")]) == 2
    statements.clear()
    assert explain_statements(pairs(*texts), connection, limit=0) == []
    assert statements == []


def test_a_counted_sqlite3_connection_counts_nothing_and_counts_again_after(
    meter: MeterType, sqlite_path: Path
) -> None:
    """The explain on a connection counted by querymeter.dbapi moves no counter of its meter."""
    connection = dbapi.wrap_connection(sqlite3.connect(sqlite_path), meter=meter)
    try:
        connection.cursor().execute("SELECT 1")
        before = counters(meter)
        assert before[0] == 1
        [plan] = explain_statements([("fp", SELECT)], connection)
        assert plan.plan is not None
        assert counters(meter) == before
        assert dbapi.meter_of(connection) is meter
        connection.cursor().execute("SELECT 1")
        assert meter.snapshot().queries == 2
    finally:
        dbapi.unwrap_connection(connection).close()


def test_a_factory_connection_is_closed(sqlite_path: Path) -> None:
    """A connection from a factory is closed after the explain."""
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        opened.append(sqlite3.connect(sqlite_path))
        return opened[-1]

    [plan] = explain_statements([("fp", SELECT)], connect, dialect="sqlite")
    assert plan.plan is not None and TABLE in plan.plan
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")


def test_a_factory_that_fails_gives_notes() -> None:
    """A factory that raises gives every plan a note instead of raising."""

    def connect() -> Any:
        raise ConnectionRefusedError("no server here")

    plans = explain_statements(pairs(SELECT, "DELETE FROM t"), connect, dialect="postgresql")
    assert plans[0].note is not None and "no server here" in plans[0].note
    assert plans[1].note is not None and "read-only SELECT" in plans[1].note


# --------------------------------------------------------- SQLite through SQLAlchemy

sqlalchemy = pytest.importorskip("sqlalchemy")


@pytest.fixture
def engines() -> Iterator[Callable[..., Any]]:
    """create_engine(), each engine uninstrumented and disposed after the test."""
    import querymeter.sqlalchemy as qs

    made: list[Any] = []

    def make(url: Any, **kwargs: Any) -> Any:
        made.append(sqlalchemy.create_engine(url, **kwargs))
        return made[-1]

    yield make
    for engine in made:
        qs.uninstrument(engine)
        engine.dispose()


def test_sqlite_engine_lends_a_pool_connection_and_gets_it_back(
    meter: MeterType, sqlite_path: Path, engines: Callable[..., Any]
) -> None:
    """An instrumented SQLite engine lends one pool connection; its meter's counters do not move."""
    import querymeter.sqlalchemy as qs

    engine = engines(f"sqlite:///{sqlite_path}")
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    before = counters(meter)
    assert before[0] >= 1
    plans = explain_statements(pairs(SELECT, "SELECT * FROM qm_explain_missing"), engine)
    assert plans[0].plan is not None and f"SCAN {TABLE}" in plans[0].plan
    assert plans[1].note is not None and "qm_explain_missing" in plans[1].note
    assert counters(meter) == before
    assert engine.pool.checkedout() == 0
    assert qs.pool_snapshot(engine).in_use == 0


def test_a_full_pool_gives_a_note_without_waiting(
    sqlite_path: Path, engines: Callable[..., Any]
) -> None:
    """With the only connection of the pool held, the explain returns a note, not waiting."""
    engine = engines(f"sqlite:///{sqlite_path}", pool_size=1, max_overflow=0, pool_timeout=30)
    with engine.connect() as held:
        held.exec_driver_sql("SELECT 1")
        started = time.monotonic()
        [plan] = explain_statements([("fp", SELECT)], engine, timeout=2.0)
        elapsed = time.monotonic() - started
        assert plan.plan is None
        assert plan.note is not None and "no connection free" in plan.note
        assert elapsed < 2.0  # not the pool's 30 s timeout
        assert engine.pool.checkedout() == 1
    [plan] = explain_statements([("fp", SELECT)], engine)
    assert plan.plan is not None  # the connection given back is lent


def test_an_idle_connection_of_a_full_pool_is_lent(
    sqlite_path: Path, engines: Callable[..., Any]
) -> None:
    """With no overflow left but one connection idle, that connection is lent and given back."""
    engine = engines(f"sqlite:///{sqlite_path}", pool_size=2, max_overflow=0, pool_timeout=30)
    first, second = engine.connect(), engine.connect()
    second.close()
    try:
        [plan] = explain_statements([("fp", SELECT)], engine)
        assert plan.plan is not None, plan
        assert engine.pool.checkedin() == 1
    finally:
        first.close()


def test_a_static_pool_is_not_borrowed(engines: Callable[..., Any]) -> None:
    """A pool that shares one connection with the application is not borrowed from."""
    engine = engines("sqlite://", poolclass=sqlalchemy.pool.StaticPool)
    [plan] = explain_statements([("fp", "SELECT 1")], engine)
    assert plan.plan is None and plan.note is not None and "StaticPool" in plan.note


def test_a_singleton_thread_pool_lends_only_a_connection_not_in_use(
    engines: Callable[..., Any],
) -> None:
    """In-memory SQLite: this thread's connection is lent when free, not while the test holds it."""
    engine = engines("sqlite://")
    assert isinstance(engine.pool, sqlalchemy.pool.SingletonThreadPool)
    with engine.connect() as held:
        held.exec_driver_sql(f"CREATE TABLE {TABLE} (id int)")
        [plan] = explain_statements([("fp", f"SELECT * FROM {TABLE}")], engine)
        assert plan.plan is None and plan.note is not None and "in use" in plan.note
    [plan] = explain_statements([("fp", f"SELECT * FROM {TABLE}")], engine)
    assert plan.plan == f"SCAN {TABLE}"


# ------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"limit": -1}, ValueError, "limit"),
        ({"limit": 1.5}, TypeError, "limit"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "2"}, TypeError, "timeout"),
        ({"dialect": "oracle"}, ValueError, "dialect"),
    ],
)
def test_bad_arguments_raise_naming_the_problem(
    traced: tuple[sqlite3.Connection, list[str]],
    arguments: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """A bad limit, timeout or dialect raises an exception that names it."""
    connection, _ = traced
    with pytest.raises(error, match=message):
        explain_statements([("fp", SELECT)], connection, **arguments)


def test_bad_statements_and_sources_raise() -> None:
    """Statements that are not pairs of strings, an unknown source, a factory without dialect."""
    with pytest.raises(TypeError, match=r"statements\[1\]"):
        explain_statements([("a", "SELECT 1"), ("b", 2)], lambda: None, dialect="sqlite")  # type: ignore[list-item]
    with pytest.raises(TypeError, match="statements"):
        explain_statements("SELECT 1", lambda: None, dialect="sqlite")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="source"):
        explain_statements([("a", "SELECT 1")], 42)
    with pytest.raises(ValueError, match="dialect="):
        explain_statements([("a", "SELECT 1")], lambda: None)


def test_a_plan_round_trips_through_plain_data() -> None:
    """as_dict() gives plain data that from_dict() reads back; a bad field raises, named."""
    plan = Plan("fp", "SELECT 1", "postgresql", "Result  (cost=0.00..0.01 rows=1 width=4)", None)
    assert plan.as_dict() == {
        "fingerprint": "fp",
        "sql": "SELECT 1",
        "dialect": "postgresql",
        "plan": "Result  (cost=0.00..0.01 rows=1 width=4)",
        "note": None,
    }
    assert Plan.from_dict(plan.as_dict()) == plan
    with pytest.raises(ValueError, match="'note'"):
        Plan.from_dict({k: v for k, v in plan.as_dict().items() if k != "note"})
    with pytest.raises(TypeError, match="'sql'"):
        Plan.from_dict({**plan.as_dict(), "sql": None})


# ------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg_table() -> Iterator[str]:
    """The test table on PostgreSQL, three rows, no index on name; dropped after."""
    dsn = postgres_dsn()
    psycopg = driver("psycopg")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_2, {TABLE}_3")
        connection.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text)")
        connection.execute(f"INSERT INTO {TABLE} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_2, {TABLE}_3")


def pg_state(dsn: str) -> tuple[list[Any], list[Any]]:
    """The table's rows, and which tables of the test's names exist."""
    psycopg = driver("psycopg")
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(f"SELECT * FROM {TABLE} ORDER BY id").fetchall()
        tables = connection.execute(
            "SELECT relname FROM pg_class WHERE relname LIKE 'qm_explain%' ORDER BY relname"
        ).fetchall()
    return rows, tables


def pg_url(drivername: str, dsn: str) -> Any:
    parts = dict(item.split("=", 1) for item in dsn.split())
    return sqlalchemy.engine.URL.create(
        f"postgresql+{drivername}",
        username=parts.get("user"),
        password=parts.get("password"),
        host=parts.get("host"),
        port=int(parts["port"]) if "port" in parts else None,
        database=parts.get("dbname"),
    )


@pytest.mark.servers
@pytest.mark.parametrize("drivername", ["psycopg", "psycopg2"])
def test_postgresql_engine_plans_and_counts_nothing(
    meter: MeterType, pg_table: str, engines: Callable[..., Any], drivername: str
) -> None:
    """An instrumented PostgreSQL engine lends a connection; plans come back, counters stay."""
    import querymeter.sqlalchemy as qs

    driver(drivername)
    engine = engines(pg_url(drivername, pg_table))
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql(f"SELECT count(*) FROM {TABLE}")
    before = counters(meter)
    plans = explain_statements(
        pairs(SELECT, f"SELECT name FROM {TABLE} WHERE id = %(id)s", "SELECT * FROM qm_explain_no"),
        engine,
    )
    assert plans[0].dialect == "postgresql"
    assert plans[0].plan is not None and f"Seq Scan on {TABLE}" in plans[0].plan
    assert plans[1].plan is not None and "$1" in plans[1].plan and TABLE in plans[1].plan
    assert plans[2].note is not None and "qm_explain_no" in plans[2].note
    assert counters(meter) == before
    assert engine.pool.checkedout() == 0


@pytest.mark.servers
def test_postgresql_factory_with_placeholders_leaves_no_prepared_statement(
    pg_table: str,
) -> None:
    """psycopg's %s and %(name)s texts get a generic plan; nothing stays prepared."""
    psycopg = driver("psycopg")
    given = psycopg.connect(pg_table)
    try:
        plans = explain_statements(
            pairs(
                f"SELECT * FROM {TABLE} WHERE id = %s AND name LIKE 'b%%'",
                f"SELECT * FROM {TABLE} WHERE id = %(id)s OR id = %(id)s + 1",
                f"SELECT * FROM {TABLE} WHERE id = $1",
            ),
            given,
        )
        for plan in plans:
            assert plan.note is None, plan
            assert plan.plan is not None and "$1" in plan.plan
        assert "'b%'" in (plans[0].plan or "")  # psycopg's "%%" is one "%"
        assert given.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert given.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    finally:
        given.close()
    factory_plans = explain_statements(
        [("fp", f"SELECT * FROM {TABLE} WHERE id = %s")],
        lambda: psycopg.connect(pg_table),
        dialect="postgresql",
    )
    assert factory_plans[0].plan is not None and "Index Scan" in factory_plans[0].plan


@pytest.mark.servers
def test_postgresql_writes_are_refused_and_never_run(pg_table: str) -> None:
    """Writes, DDL and several statements get a note; the table and the schema are unchanged."""
    psycopg = driver("psycopg")
    before = pg_state(pg_table)
    plans = explain_statements(
        pairs(*WRITES), lambda: psycopg.connect(pg_table), dialect="postgresql", limit=20
    )
    for plan in plans:
        assert plan.plan is None and plan.note is not None and "not explained" in plan.note
    assert pg_state(pg_table) == before


@pytest.mark.servers
def test_postgresql_read_only_transaction_stops_a_misclassified_write(
    pg_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the text guard fooled, EXPLAIN ANALYZE of an INSERT still cannot write."""
    psycopg = driver("psycopg")
    fooled = explain_module._Statement  # the guard, replaced by one that accepts anything
    monkeypatch.setattr(explain_module, "_verdict", lambda sql, family: fooled(sql, None, 0))
    before = pg_state(pg_table)
    for autocommit in (False, True):
        [plan] = explain_statements(
            [("fp", f"ANALYZE INSERT INTO {TABLE} VALUES (100, 'x')")],
            lambda autocommit=autocommit: psycopg.connect(pg_table, autocommit=autocommit),
            dialect="postgresql",
        )
        assert plan.note is not None and "read-only transaction" in plan.note, plan
    assert pg_state(pg_table) == before


@pytest.mark.servers
def test_postgresql_connection_in_a_transaction_is_left_alone(pg_table: str) -> None:
    """A given connection with a transaction open is not used; its transaction goes on."""
    psycopg = driver("psycopg")
    given = psycopg.connect(pg_table)
    try:
        given.execute(f"INSERT INTO {TABLE} VALUES (50, 'pending')")
        [plan] = explain_statements([("fp", SELECT)], given)
        assert plan.plan is None and plan.note is not None and "transaction open" in plan.note
        assert given.execute(f"SELECT name FROM {TABLE} WHERE id = 50").fetchone() == ("pending",)
        given.rollback()
    finally:
        given.close()


@pytest.mark.servers
def test_postgresql_counted_connection_counts_nothing(meter: MeterType, pg_table: str) -> None:
    """A psycopg connection counted by querymeter.dbapi: the explain moves none of its counters."""
    psycopg = driver("psycopg")
    given = dbapi.wrap_connection(psycopg.connect(pg_table, autocommit=True), meter=meter)
    try:
        given.cursor().execute("SELECT 1")
        before = counters(meter)
        assert before[0] == 1
        [plan] = explain_statements([("fp", SELECT)], given)
        assert plan.plan is not None and TABLE in plan.plan
        assert counters(meter) == before
        assert given.autocommit is True
        assert given.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        given.cursor().execute("SELECT 1")
        assert meter.snapshot().queries == 2
    finally:
        dbapi.unwrap_connection(given).close()


@pytest.mark.servers
def test_postgresql_full_pool_returns_at_once(pg_table: str, engines: Callable[..., Any]) -> None:
    """A PostgreSQL QueuePool of one held connection: a note, well before the timeout."""
    driver("psycopg")
    engine = engines(pg_url("psycopg", pg_table), pool_size=1, max_overflow=0, pool_timeout=30)
    with engine.connect() as held:
        held.exec_driver_sql("SELECT 1")
        started = time.monotonic()
        [plan] = explain_statements([("fp", SELECT)], engine, timeout=1.0)
        assert time.monotonic() - started < 1.0
    assert plan.note is not None and "no connection free" in plan.note


# ---------------------------------------------------------------------- MariaDB


@pytest.fixture
def mysql_table() -> Iterator[dict[str, Any]]:
    """The test table on MariaDB/MySQL, three rows; dropped after."""
    params = mysql_params()
    pymysql = driver("pymysql")
    connection = pymysql.connect(autocommit=True, **params)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_2, {TABLE}_3")
        cursor.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name varchar(20))")
        cursor.execute(f"INSERT INTO {TABLE} VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    yield params
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_2, {TABLE}_3")
    connection.close()


def mysql_state(params: dict[str, Any]) -> tuple[Any, Any]:
    pymysql = driver("pymysql")
    connection = pymysql.connect(**params)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {TABLE} ORDER BY id")
            rows = cursor.fetchall()
            cursor.execute("SHOW TABLES LIKE 'qm_explain%'")
            tables = cursor.fetchall()
    finally:
        connection.close()
    return rows, tables


@pytest.mark.servers
def test_mariadb_factory_plans_refuses_and_notes(mysql_table: dict[str, Any]) -> None:
    """PyMySQL: a literal SELECT's plan names the table; writes, placeholders, a missing
    table get notes."""
    pymysql = driver("pymysql")
    before = mysql_state(mysql_table)
    plans = explain_statements(
        pairs(
            SELECT,
            f"SELECT * FROM {TABLE} WHERE id = %s",
            "SELECT * FROM qm_explain_gone",
            *WRITES,
        ),
        lambda: pymysql.connect(**mysql_table),
        dialect="mysql",
        limit=20,
    )
    literal, placeholders, missing, *writes = plans
    assert literal.note is None and literal.plan is not None
    header, row = literal.plan.splitlines()
    assert header.split()[:3] == ["id", "select_type", "table"]
    assert row.split()[2] == TABLE and row.split()[3] == "ALL"  # a full scan: name has no index
    assert placeholders.note == "has parameters: not explained"
    assert missing.note is not None and "qm_explain_gone" in missing.note
    for plan in writes:
        assert plan.plan is None and plan.note is not None and "not explained" in plan.note
    assert mysql_state(mysql_table) == before


@pytest.mark.servers
def test_mariadb_engine_counts_nothing(
    meter: MeterType, mysql_table: dict[str, Any], engines: Callable[..., Any]
) -> None:
    """An instrumented mysql+pymysql engine: a plan by primary key, and no counter moves."""
    import querymeter.sqlalchemy as qs

    url = sqlalchemy.engine.URL.create(
        "mysql+pymysql",
        username=mysql_table["user"],
        password=mysql_table["password"] or None,
        host=mysql_table["host"],
        port=mysql_table["port"],
        database=mysql_table["database"],
    )
    engine = engines(url)
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    before = counters(meter)
    [plan] = explain_statements([("fp", f"SELECT name FROM {TABLE} WHERE id = 2")], engine)
    assert plan.plan is not None, plan
    row = plan.plan.splitlines()[1].split()
    assert row[2] == TABLE and row[3] == "const"
    assert plan.dialect in ("mariadb", "mysql")
    assert counters(meter) == before
    assert engine.pool.checkedout() == 0
