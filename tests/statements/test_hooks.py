"""Every hook's statements, on real workloads: the table's figures and the samples, per driver.

Each test runs a small workload through one driver (or SQLAlchemy) with the
statement table and sampling (rate 1.0) on, and writes down, call by call,
what it sent: the text, the driver's ``rowcount`` after the call, the
exception's type.  That record is the oracle: its fingerprints are computed
with ``querymeter.fingerprint(text, dialect)`` on the text sent (a few are
written out), and the table's calls, errors and rows per fingerprint, its
totals, and the samples one by one must agree with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import querymeter
import querymeter.dbapi as dbapi
from querymeter.meter import Meter as MeterType

from ..servers import driver, mysql_params, postgres_dsn

TABLE = "qm_stmt_hooks_items"
MISSING = "qm_stmt_hooks_missing"  # never created: statements on it fail
# Parameters of the parametrized workloads, and what redaction makes of them.
PARAMS_MODES: list[bool | str] = [False, True, "raw"]


# ------------------------------------------------------------------ the oracle


@dataclass(frozen=True)
class Sent:
    """One call the workload made: what it sent and what the driver answered."""

    sql: str
    dialect: str | None
    error: str | None = None  # the exception's type, "module.QualName", if it raised
    rows: int | None = None  # the rowcount the driver reported, where the hook can read it
    params: Any = None  # the parameters as passed
    redacted: Any = None  # the parameters as a redacted sample shows them

    @property
    def fingerprint(self) -> str:
        return querymeter.fingerprint(self.sql, self.dialect)


@dataclass
class Record:
    """The calls of a workload, in order."""

    dialect: str | None
    sent: list[Sent] = field(default_factory=list)

    def ok(
        self,
        sql: str,
        rows: int | None = None,
        params: Any = None,
        redacted: Any = None,
    ) -> None:
        """A call that returned; rows is the driver's rowcount (negative: not known)."""
        known = None if rows is None or rows < 0 else rows
        self.sent.append(Sent(sql, self.dialect, None, known, params, redacted))

    def failed(
        self, sql: str, error: BaseException, params: Any = None, redacted: Any = None
    ) -> None:
        """A call the driver rejected with ``error``."""
        kind = type(error)
        self.sent.append(
            Sent(
                sql, self.dialect, f"{kind.__module__}.{kind.__qualname__}", None, params, redacted
            )
        )

    def expected(self) -> dict[str, tuple[int, int, int | None]]:
        """Per fingerprint: calls, errors, and rows (None where no call's rowcount was known)."""
        figures: dict[str, tuple[int, int, int | None]] = {}
        for sent in self.sent:
            calls, errors, rows = figures.get(sent.fingerprint, (0, 0, None))
            if sent.rows is not None:
                rows = (rows or 0) + sent.rows
            figures[sent.fingerprint] = (calls + 1, errors + (sent.error is not None), rows)
        return figures


def kinds(params: Any) -> Any:
    """Redaction as documented, written out: each item as its type, and its length if sized."""

    def kind(value: Any) -> str:
        if value is None:
            return "None"
        if isinstance(value, str | bytes | list | tuple | dict):
            return f"{type(value).__name__}[{len(value)}]"
        return type(value).__name__

    if params is None:
        return None
    if isinstance(params, dict):
        return {key: kind(value) for key, value in params.items()}
    if isinstance(params, list | tuple):
        return [kind(value) for value in params]
    return kind(params)


@dataclass(frozen=True)
class Observed:
    """What the meter made of a workload: the table's reading, the samples, its own counts."""

    reading: Any
    samples: list[Any]
    queries: int
    errors: int
    params_mode: bool | str


def observe(meter: MeterType, workload: Callable[[], None], params: bool | str = False) -> Observed:
    """Run the workload with statements and sampling (every query) on; what the meter saw."""
    before = meter.snapshot()
    table = meter.enable_statements(max_statements=5000)
    log = meter.enable_sampling(rate=1.0, capacity=10_000, params=params)
    try:
        workload()
        reading = table.snapshot()
        after = meter.snapshot()
        samples = log.samples()
    finally:
        meter.disable_sampling()
        meter.disable_statements()
    return Observed(
        reading, samples, after.queries - before.queries, after.errors - before.errors, params
    )


def check(observed: Observed, record: Record) -> None:
    """The table, its totals and the samples agree with the record, call by call."""
    reading = observed.reading
    expected = record.expected()
    found = {
        stats.fingerprint: (stats.calls, stats.errors, stats.rows) for stats in reading.statements
    }
    assert found == expected
    # The first text of each statement is its sample text.
    first: dict[str, str] = {}
    for sent in record.sent:
        first.setdefault(sent.fingerprint, sent.sql)
    assert {fp: reading[fp].sample_sql for fp in expected} == first
    assert (reading.untexted.calls, reading.evicted.calls, reading.dropped) == (0, 0, 0)
    # The table's totals are the meter's own counts over the same span.
    assert (reading.calls, reading.errors) == (observed.queries, observed.errors)
    assert reading.calls == len(record.sent)
    samples = [(s.sql, s.fingerprint, s.error, s.rows) for s in observed.samples]
    assert samples == [(s.sql, s.fingerprint, s.error, s.rows) for s in record.sent]
    for sample in observed.samples:
        assert sample.statement_id == querymeter.statements.statement_id(sample.fingerprint)
        assert sample.duration_ns >= 0
    params = [sample.params for sample in observed.samples]
    if observed.params_mode == "raw":
        assert params == [raw_as_kept(s.params) for s in record.sent]
    elif observed.params_mode:
        assert params == [s.redacted for s in record.sent]
    else:
        assert params == [None] * len(record.sent)


def raw_as_kept(params: Any) -> Any:
    """Raw parameters as a sample keeps them: as passed, but an iterator by its type only."""
    if isinstance(params, Iterator):
        return type(params).__name__
    return params


@pytest.fixture
def meter(Meter: type[MeterType]) -> MeterType:
    """A fresh meter of the core under test."""
    return Meter()


@pytest.fixture(autouse=True)
def uninstrument_everything() -> Iterator[None]:
    """No test leaves a driver instrumented for the next one."""
    yield
    import sys

    for name in dbapi.SUPPORTED_DRIVERS:
        module = sys.modules.get(name)
        if module is not None:
            dbapi.uninstrument(module)


# ------------------------------------------------ one workload for DB-API cursors


@dataclass(frozen=True)
class Flavour:
    """What differs between sync DB-API drivers for the shared workload."""

    dialect: str
    placeholder: str  # "?" or "%s"
    # The keyword names of execute(sql, params), where the driver accepts them.
    keywords: tuple[str, str] | None


def run_cursor_workload(cursor: Any, flavour: Flavour, record: Record, errors: Any) -> None:
    """The shared workload on a DB-API cursor, each call recorded with the driver's rowcount."""
    mark = flavour.placeholder

    def execute(sql: str, params: Any = None) -> None:
        if params is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, params)
        record.ok(sql, cursor.rowcount, params, kinds(params))

    execute("SELECT 1")
    for number in range(3):
        execute(f"INSERT INTO {TABLE} (id, note) VALUES ({number}, 'n{number}')")
    for number in range(2):
        execute(f"UPDATE {TABLE} SET note = {mark} WHERE id = {mark}", ("abc", number))
    rows = [(10, "b10"), (11, "b11"), (12, "b12")]
    batch = f"INSERT INTO {TABLE} (id, note) VALUES ({mark}, {mark})"
    cursor.executemany(batch, rows)
    record.ok(batch, cursor.rowcount, rows, ["tuple[2]", "tuple[2]", "tuple[2]"])
    # A generator reaches the driver unconsumed: every row it yields is inserted.
    generated = ((number, f"g{number}") for number in (20, 21))
    cursor.executemany(batch, generated)
    record.ok(batch, cursor.rowcount, generated, "generator")
    count = f"SELECT count(*) FROM {TABLE} WHERE id >= {mark}"
    execute(count, (20,))
    assert [tuple(row) for row in cursor.fetchall()] == [(2,)]
    if flavour.keywords is not None:
        sql_name, params_name = flavour.keywords
        by_keyword = f"SELECT note FROM {TABLE} WHERE id = {mark}"
        cursor.execute(**{sql_name: by_keyword, params_name: (1,)})
        record.ok(by_keyword, cursor.rowcount, (1,), ["int"])
        assert [tuple(row) for row in cursor.fetchall()] == [("abc",)]
    for broken in (f"SELECT * FROM {MISSING}", "SELEC 1"):
        try:
            cursor.execute(broken)
        except errors as exc:
            record.failed(broken, exc)
        else:
            pytest.fail(f"{broken!r} did not fail")
    execute("SELECT 1")


def test_a_few_fingerprints_written_out() -> None:
    """The fingerprints the workloads' statements should get, written out by hand."""
    assert querymeter.fingerprint("SELECT 1", "sqlite") == "select ?"
    assert (
        querymeter.fingerprint(f"INSERT INTO {TABLE} (id, note) VALUES (2, 'n2')", "sqlite")
        == f"insert into {TABLE} (id, note) values(?+)"
    )
    assert (
        querymeter.fingerprint(f"UPDATE {TABLE} SET note = %s WHERE id = %s", "postgresql")
        == f"update {TABLE} set note = ? where id = ?"
    )
    assert (
        querymeter.fingerprint(f'COPY "{TABLE}" (id, note) FROM STDIN', "postgresql")
        == f'copy "{TABLE}" (id, note) from stdin'
    )


# ------------------------------------------------------------------------ sqlite3


SQLITE = Flavour("sqlite", "?", None)


def sqlite_table(connection: Any) -> None:
    connection.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, note text)")


@pytest.mark.parametrize("params", PARAMS_MODES)
def test_sqlite3(meter: MeterType, params: bool | str) -> None:
    """sqlite3's cursor and connection shortcuts: per-statement figures and samples."""
    record = Record("sqlite")

    def workload() -> None:
        dbapi.instrument(sqlite3, meter=meter)
        connection = sqlite3.connect(":memory:", isolation_level=None)
        try:
            connection.execute(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, note text)")
            record.ok(f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, note text)", -1)
            run_cursor_workload(connection.cursor(), SQLITE, record, sqlite3.Error)
            # The connection's shortcuts run on a cursor of their own, counted too.
            cursor = connection.execute(f"DELETE FROM {TABLE} WHERE id = ?", (0,))
            record.ok(f"DELETE FROM {TABLE} WHERE id = ?", cursor.rowcount, (0,), ["int"])
            script = f"DELETE FROM {TABLE} WHERE id = 1; DELETE FROM {TABLE} WHERE id = 2;"
            cursor = connection.executescript(script)
            # A fresh cursor's rowcount stays -1 after a script: not known.
            record.ok(script, cursor.rowcount)
        finally:
            connection.close()

    observed = observe(meter, workload, params)
    check(observed, record)
    # Written out: the three literal INSERTs are one statement, with their rows.
    assert observed.reading[f"insert into {TABLE} (id, note) values(?+)"].calls == 3 + 2
    errors = [sample.error for sample in observed.samples if sample.error]
    assert errors == ["sqlite3.OperationalError", "sqlite3.OperationalError"]


def test_sqlite3_executescript_has_no_rows_of_an_earlier_statement(meter: MeterType) -> None:
    """A script run on a cursor that inserted rows before is not credited with those rows."""
    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(":memory:", isolation_level=None)
    try:
        sqlite_table(connection)
        cursor = connection.cursor()
        cursor.executemany(f"INSERT INTO {TABLE} (id) VALUES (?)", [(1,), (2,), (3,)])
        table = meter.enable_statements()
        script = f"INSERT INTO {TABLE} (id) VALUES (9);"
        cursor.executescript(script)
        # sqlite3 leaves the batch's count in place; the script inserted one row.
        assert cursor.rowcount == 3
        assert cursor.execute(f"SELECT count(*) FROM {TABLE}").fetchone() == (4,)
        assert table.snapshot()[querymeter.fingerprint(script, "sqlite")].rows in (None, 1)
    finally:
        meter.disable_statements()
        connection.close()


# ---------------------------------------------------------------------- aiosqlite


def test_aiosqlite(meter: MeterType) -> None:
    """aiosqlite's cursors (rows known) and connection shortcuts (rows not known)."""
    aiosqlite = driver("aiosqlite")
    record = Record("sqlite")

    async def main() -> None:
        dbapi.instrument(aiosqlite, meter=meter)
        async with aiosqlite.connect(":memory:", isolation_level=None) as connection:
            create = f"CREATE TABLE {TABLE} (id integer PRIMARY KEY, note text)"
            await connection.execute(create)
            record.ok(create)
            cursor = await connection.cursor()
            insert = f"INSERT INTO {TABLE} (id, note) VALUES (?, ?)"
            await cursor.execute(insert, (1, "abc"))
            record.ok(insert, cursor.rowcount, (1, "abc"), ["int", "str[3]"])
            generated = ((number, "g") for number in (2, 3, 4))
            await cursor.executemany(insert, generated)
            record.ok(insert, cursor.rowcount, generated, "generator")
            select = f"SELECT count(*) FROM {TABLE}"
            await cursor.execute(sql=select)
            record.ok(select, cursor.rowcount)
            assert await cursor.fetchall() == [(4,)]
            with pytest.raises(sqlite3.OperationalError) as raised:
                await cursor.execute(f"SELECT * FROM {MISSING}")
            record.failed(f"SELECT * FROM {MISSING}", raised.value)
            # Shortcuts: the hook has no cursor to read rowcount from.
            await connection.execute(f"DELETE FROM {TABLE} WHERE id = ?", (1,))
            record.ok(f"DELETE FROM {TABLE} WHERE id = ?", None, (1,), ["int"])
            await connection.executemany(insert, [(5, "x")])
            record.ok(insert, None, [(5, "x")], ["tuple[2]"])
            with pytest.raises(sqlite3.OperationalError) as raised:
                await connection.execute("SELEC 1")
            record.failed("SELEC 1", raised.value)

    for params in PARAMS_MODES:
        record.sent.clear()
        check(observe(meter, lambda: asyncio.run(main()), params), record)


# -------------------------------------------------------------------- PostgreSQL


@contextlib.contextmanager
def pg_table() -> Iterator[str]:
    """The workload's table on PostgreSQL, dropped after; the DSN."""
    psycopg = driver("psycopg")
    dsn = postgres_dsn()
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(f"DROP TABLE IF EXISTS {TABLE}")
        setup.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text)")
        try:
            yield dsn
        finally:
            setup.execute(f"DROP TABLE IF EXISTS {TABLE}")


POSTGRES = Flavour("postgresql", "%s", ("query", "params"))


@pytest.mark.servers
@pytest.mark.parametrize("params", PARAMS_MODES)
def test_psycopg(meter: MeterType, params: bool | str) -> None:
    """psycopg 3, sync: cursors, connection.execute, stream and copy."""
    psycopg = driver("psycopg")
    record = Record("postgresql")
    with pg_table() as dsn:

        def workload() -> None:
            dbapi.instrument(psycopg, meter=meter)
            with psycopg.connect(dsn, autocommit=True) as connection:
                run_cursor_workload(connection.cursor(), POSTGRES, record, psycopg.Error)
                cursor = connection.execute(f"DELETE FROM {TABLE} WHERE id = %s", (0,))
                record.ok(f"DELETE FROM {TABLE} WHERE id = %s", cursor.rowcount, (0,), ["int"])
                stream = f"SELECT id FROM {TABLE} WHERE id < %s ORDER BY id"
                ids = [row[0] for row in connection.cursor().stream(stream, (3,))]
                assert ids == [1, 2]
                # Rows come one by one: no rowcount at the end for the hook.
                record.ok(stream, None, (3,), ["int"])
                copy = f"COPY {TABLE} (id, note) FROM STDIN"
                with connection.cursor().copy(copy) as copying:
                    copying.write_row((30, "c30"))
                record.ok(copy, None)

        observed = observe(meter, workload, params)
    check(observed, record)
    errors = [sample.error for sample in observed.samples if sample.error]
    assert errors == ["psycopg.errors.UndefinedTable", "psycopg.errors.SyntaxError"]


@pytest.mark.servers
def test_psycopg_copy_is_fingerprinted_as_postgresql(meter: MeterType) -> None:
    """A COPY naming a quoted table keeps the table's name in its fingerprint."""
    psycopg = driver("psycopg")
    with pg_table() as dsn:
        dbapi.instrument(psycopg, meter=meter)
        table = meter.enable_statements()
        try:
            with psycopg.connect(dsn, autocommit=True) as connection:
                copy = f'COPY "{TABLE}" (id, note) FROM STDIN'
                with connection.cursor().copy(copy) as copying:
                    copying.write_row((1, "a"))
            fingerprints = [stats.fingerprint for stats in table.snapshot().statements]
        finally:
            meter.disable_statements()
    assert fingerprints == [f'copy "{TABLE}" (id, note) from stdin']


@pytest.mark.servers
def test_psycopg_copy_statement_by_keyword(meter: MeterType) -> None:
    """copy(statement=...) is recorded under its text, as copy(text) is."""
    psycopg = driver("psycopg")
    with pg_table() as dsn:
        dbapi.instrument(psycopg, meter=meter)
        table = meter.enable_statements()
        try:
            with psycopg.connect(dsn, autocommit=True) as connection:
                copy = f"COPY {TABLE} (id, note) FROM STDIN"
                with connection.cursor().copy(statement=copy) as copying:
                    copying.write_row((1, "a"))
            reading = table.snapshot()
        finally:
            meter.disable_statements()
    assert reading.untexted.calls == 0
    assert [(s.fingerprint, s.calls) for s in reading.statements] == [
        (f"copy {TABLE} (id, note) from stdin", 1)
    ]


@pytest.mark.servers
@pytest.mark.parametrize("params", PARAMS_MODES)
def test_psycopg_async(meter: MeterType, params: bool | str) -> None:
    """psycopg 3, async: cursors (rows known), stream and copy."""
    psycopg = driver("psycopg")
    record = Record("postgresql")
    with pg_table() as dsn:

        async def main() -> None:
            dbapi.instrument(psycopg, meter=meter)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as connection:
                cursor = connection.cursor()
                insert = f"INSERT INTO {TABLE} (id, note) VALUES (%s, %s)"
                await cursor.execute(insert, (1, "abc"))
                record.ok(insert, cursor.rowcount, (1, "abc"), ["int", "str[3]"])
                generated = ((number, "g") for number in (2, 3))
                await cursor.executemany(insert, generated)
                record.ok(insert, cursor.rowcount, generated, "generator")
                rows = [(4, "x"), (5, "y")]
                await cursor.executemany(query=insert, params_seq=rows)
                record.ok(insert, cursor.rowcount, rows, ["tuple[2]", "tuple[2]"])
                select = f"SELECT id FROM {TABLE} WHERE id > %s"
                await cursor.execute(query=select, params=(1,))
                record.ok(select, cursor.rowcount, (1,), ["int"])
                assert len(await cursor.fetchall()) == 4
                with pytest.raises(psycopg.errors.UndefinedTable) as raised:
                    await cursor.execute(f"SELECT * FROM {MISSING}")
                record.failed(f"SELECT * FROM {MISSING}", raised.value)
                stream = f"SELECT id FROM {TABLE} ORDER BY id"
                assert [row[0] async for row in connection.cursor().stream(stream)] == [
                    1,
                    2,
                    3,
                    4,
                    5,
                ]
                record.ok(stream)
                copy = f"COPY {TABLE} (id, note) FROM STDIN"
                async with connection.cursor().copy(copy) as copying:
                    await copying.write_row((30, "c30"))
                record.ok(copy)

        observed = observe(meter, lambda: asyncio.run(main()), params)
    check(observed, record)


@pytest.mark.servers
@pytest.mark.parametrize("params", PARAMS_MODES)
def test_psycopg2(meter: MeterType, params: bool | str) -> None:
    """psycopg2's cursors: per-statement figures and samples."""
    psycopg2 = driver("psycopg2")
    record = Record("postgresql")
    flavour = Flavour("postgresql", "%s", ("query", "vars"))
    with pg_table() as dsn:

        def workload() -> None:
            dbapi.instrument(psycopg2, meter=meter)
            connection = psycopg2.connect(dsn)
            connection.autocommit = True
            try:
                run_cursor_workload(connection.cursor(), flavour, record, psycopg2.Error)
                cursor = connection.cursor()
                copy = f"COPY {TABLE} (id, note) TO STDOUT"
                out = io.StringIO()
                cursor.copy_expert(copy, out)
                assert out.getvalue().count("\n") == 8
                # (sql, file): copy_expert has no parameters after its text.
                record.ok(copy, cursor.rowcount)
            finally:
                connection.close()

        observed = observe(meter, workload, params)
    check(observed, record)
    errors = [sample.error for sample in observed.samples if sample.error]
    assert errors == ["psycopg2.errors.UndefinedTable", "psycopg2.errors.SyntaxError"]


@pytest.mark.servers
def test_psycopg2_executemany_parameters_by_keyword(meter: MeterType) -> None:
    """executemany(query=..., vars_list=...) is sampled with its rows, as by position."""
    psycopg2 = driver("psycopg2")
    with pg_table() as dsn:
        dbapi.instrument(psycopg2, meter=meter)
        meter.enable_sampling(rate=1.0, params="raw")
        connection = psycopg2.connect(dsn)
        connection.autocommit = True
        try:
            rows = [(1, "a"), (2, "b")]
            insert = f"INSERT INTO {TABLE} (id, note) VALUES (%s, %s)"
            connection.cursor().executemany(query=insert, vars_list=rows)
        finally:
            connection.close()
            meter.disable_sampling()
    assert [(s.sql, s.rows, s.params) for s in meter.samples()] == [(insert, 2, rows)]


# ------------------------------------------------------------------------ asyncpg


def asyncpg_params(dsn: str) -> dict[str, Any]:
    """asyncpg.connect() arguments for the libpq DSN the tests use."""
    parts = dict(item.split("=", 1) for item in dsn.split())
    names = {"host": "host", "port": "port", "user": "user", "dbname": "database"}
    arguments: dict[str, Any] = {names[k]: v for k, v in parts.items() if k in names}
    if "port" in arguments:
        arguments["port"] = int(arguments["port"])
    if "password" in parts:
        arguments["password"] = parts["password"]
    return arguments


@pytest.mark.servers
@pytest.mark.parametrize("params", PARAMS_MODES)
def test_asyncpg(meter: MeterType, params: bool | str) -> None:
    """asyncpg's connection methods, prepared statements and cursors (no rowcount: rows unknown)."""
    asyncpg = driver("asyncpg")
    record = Record("postgresql")
    with pg_table() as dsn:

        async def main() -> None:
            dbapi.instrument(asyncpg, meter=meter)
            connection = await asyncpg.connect(**asyncpg_params(dsn))
            try:
                insert = f"INSERT INTO {TABLE} (id, note) VALUES ($1, $2)"
                await connection.execute(insert, 1, "abc")
                record.ok(insert, None, (1, "abc"), ["int", "str[3]"])
                rows = [(2, "b"), (3, "c")]
                await connection.executemany(insert, rows)
                # executemany's parameters are its rows, one entry per row, as elsewhere.
                record.ok(insert, None, rows, ["tuple[2]", "tuple[2]"])
                generated = ((number, "g") for number in (4, 5))
                await connection.executemany(command=insert, args=generated)
                record.ok(insert, None, generated, "generator")
                select = f"SELECT id FROM {TABLE} WHERE id >= $1 ORDER BY id"
                count = f"SELECT count(*) FROM {TABLE}"
                assert await connection.fetchval(query=count) == 5
                record.ok(count)
                assert (await connection.fetchrow(select, 5))[0] == 5
                record.ok(select, None, (5,), ["int"])
                with pytest.raises(asyncpg.exceptions.UndefinedTableError) as raised:
                    await connection.execute(f"SELECT * FROM {MISSING}")
                record.failed(f"SELECT * FROM {MISSING}", raised.value)
                prepared = await connection.prepare(select)
                assert [r[0] for r in await prepared.fetch(4)] == [4, 5]
                record.ok(select, None, (4,), ["int"])
                assert await prepared.fetchval(5) == 5
                record.ok(select, None, (5,), ["int"])
                async with connection.transaction():
                    assert [r[0] async for r in connection.cursor(select, 3)] == [3, 4, 5]
                    record.ok(select, None, (3,), ["int"])
                    cursor = await connection.cursor(select, 1)
                    assert len(await cursor.fetch(2)) == 2
                    record.ok(select, None, (2,), ["int"])
                    assert (await cursor.fetchrow())[0] == 3
                    record.ok(select, None, None, None)
                with pytest.raises(asyncpg.exceptions.PostgresSyntaxError) as raised:
                    await connection.fetch("SELEC 1")
                record.failed("SELEC 1", raised.value)
            finally:
                await connection.close()

        observed = observe(meter, lambda: asyncio.run(main()), params)
    check(observed, record)


# -------------------------------------------------------------------- MariaDB/MySQL


@contextlib.contextmanager
def mysql_table(module: Any) -> Iterator[dict[str, Any]]:
    """The workload's table on MariaDB, dropped after; connect() arguments."""
    params = mysql_params()
    setup = module.connect(autocommit=True, **params)
    try:
        cursor = setup.cursor()
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cursor.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note varchar(20))")
        yield params
    finally:
        setup.cursor().execute(f"DROP TABLE IF EXISTS {TABLE}")
        setup.close()


MYSQL = Flavour("mysql", "%s", ("query", "args"))


@pytest.mark.servers
@pytest.mark.parametrize("name", ["pymysql", "MySQLdb"])
@pytest.mark.parametrize("params", PARAMS_MODES)
def test_mysql_drivers(meter: MeterType, name: str, params: bool | str) -> None:
    """PyMySQL and mysqlclient: cursors, executemany (one call), callproc-free workload."""
    module = driver(name)
    record = Record("mysql")
    with mysql_table(module) as connect_params:

        def workload() -> None:
            dbapi.instrument(module, meter=meter)
            connection = module.connect(autocommit=True, **connect_params)
            try:
                run_cursor_workload(connection.cursor(), MYSQL, record, module.Error)
            finally:
                connection.close()

        observed = observe(meter, workload, params)
    check(observed, record)
    errors = [sample.error for sample in observed.samples if sample.error]
    if name == "pymysql":
        assert errors == ["pymysql.err.ProgrammingError", "pymysql.err.ProgrammingError"]
    else:
        assert errors == ["MySQLdb.ProgrammingError", "MySQLdb.ProgrammingError"]


# --------------------------------------------------------------------- SQLAlchemy


def sqlalchemy_record(engine: Any, dialect: str) -> tuple[Record, Callable[[], None]]:
    """A record filled by SQLAlchemy's own cursor events, and how to stop listening.

    ``before_cursor_execute`` sees the text the dialect sends, ``after_cursor_execute``
    the cursor's rowcount, ``handle_error`` the DB-API exception.
    """
    sqlalchemy = driver("sqlalchemy")
    record = Record(dialect)
    pending: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        pending.append((statement, parameters))

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        sql, params = pending.pop()
        record.ok(sql, cursor.rowcount, params, kinds(params))

    def error(context: Any) -> None:
        sql, params = pending.pop()
        record.failed(sql, context.original_exception, params, kinds(params))

    events: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", before),
        ("after_cursor_execute", after),
        ("handle_error", error),
    ]
    for name, listener in events:
        sqlalchemy.event.listen(engine, name, listener)

    def stop() -> None:
        for name, listener in events:
            sqlalchemy.event.remove(engine, name, listener)

    return record, stop


def sqlalchemy_workload(connection: Any, sqlalchemy: Any, marks: str) -> None:
    """Driver SQL and a Core construct through one SQLAlchemy connection."""
    connection.exec_driver_sql("SELECT 1")
    for number in range(3):
        connection.exec_driver_sql(f"INSERT INTO {TABLE} (id, note) VALUES ({number}, 'n{number}')")
    connection.exec_driver_sql(
        f"INSERT INTO {TABLE} (id, note) VALUES ({marks})", [(10, "a"), (11, "b")]
    )
    connection.execute(
        sqlalchemy.text(f"UPDATE {TABLE} SET note = :note WHERE id = :id"),
        {"note": "abc", "id": 1},
    )
    rows = connection.execute(
        sqlalchemy.text(f"SELECT id FROM {TABLE} WHERE id > :low"), {"low": 0}
    )
    assert len(rows.fetchall()) == 4
    with pytest.raises(sqlalchemy.exc.DBAPIError):
        connection.exec_driver_sql(f"SELECT * FROM {MISSING}")
    connection.exec_driver_sql("SELECT 2")


def run_sqlalchemy(meter: MeterType, engine: Any, dialect: str, marks: str, params: Any) -> None:
    """The workload through an instrumented engine, warmed up first; checked against its events."""
    sqlalchemy = driver("sqlalchemy")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    qs.instrument(engine, meter=meter)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
            connection.exec_driver_sql(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text)")
            connection.commit()
        record, stop = sqlalchemy_record(engine, dialect)
        try:

            def workload() -> None:
                with engine.connect() as connection:
                    connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                    sqlalchemy_workload(connection, sqlalchemy, marks)

            observed = observe(meter, workload, params)
        finally:
            stop()
        check(observed, record)
        assert observed.reading[f"insert into {TABLE} (id, note) values(?+)"].calls == 4
    finally:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
            connection.commit()
        qs.uninstrument(engine)
        engine.dispose()


@pytest.mark.parametrize("params", PARAMS_MODES)
def test_sqlalchemy_sqlite(meter: MeterType, params: bool | str, tmp_path: Any) -> None:
    """A SQLite engine: do_execute and do_executemany, under the sqlite dialect."""
    sqlalchemy = driver("sqlalchemy")
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'hooks.db'}")
    run_sqlalchemy(meter, engine, "sqlite", "?, ?", params)


@pytest.mark.servers
@pytest.mark.parametrize("params", PARAMS_MODES)
def test_sqlalchemy_postgresql(meter: MeterType, params: bool | str) -> None:
    """A PostgreSQL engine on psycopg2: do_execute and do_executemany, under postgresql."""
    sqlalchemy = driver("sqlalchemy")
    driver("psycopg2")
    engine = sqlalchemy.create_engine("postgresql+psycopg2://", creator=pg_creator)
    run_sqlalchemy(meter, engine, "postgresql", "%s, %s", params)


def pg_creator() -> Any:
    psycopg2 = driver("psycopg2")
    return psycopg2.connect(postgres_dsn())


@pytest.mark.servers
def test_sqlalchemy_async_asyncpg(meter: MeterType) -> None:
    """An AsyncEngine on asyncpg: the adapted cursor's statements, rows from its rowcount."""
    sqlalchemy = driver("sqlalchemy")
    driver("greenlet")
    driver("asyncpg")
    asyncio_ext = driver("sqlalchemy.ext.asyncio")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    dsn = postgres_dsn()
    parts = dict(item.split("=", 1) for item in dsn.split())
    url = sqlalchemy.engine.URL.create(
        "postgresql+asyncpg",
        username=parts.get("user"),
        password=parts.get("password"),
        host=parts.get("host"),
        port=int(parts["port"]) if "port" in parts else None,
        database=parts.get("dbname"),
    )

    async def main() -> None:
        engine = asyncio_ext.create_async_engine(url)
        qs.instrument(engine, meter=meter)
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
                await connection.exec_driver_sql(
                    f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text)"
                )
            record, stop = sqlalchemy_record(engine.sync_engine, "postgresql")
            before = meter.snapshot()
            table = meter.enable_statements()
            log = meter.enable_sampling(rate=1.0)
            try:
                async with engine.connect() as connection:
                    connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
                    await connection.run_sync(
                        lambda sync: sqlalchemy_workload(sync, sqlalchemy, "$1, $2")
                    )
                reading = table.snapshot()
                after = meter.snapshot()
                samples = log.samples()
            finally:
                meter.disable_sampling()
                meter.disable_statements()
                stop()
            observed = Observed(
                reading,
                samples,
                after.queries - before.queries,
                after.errors - before.errors,
                False,
            )
            check(observed, record)
            assert reading[f"insert into {TABLE} (id, note) values(?+)"].calls == 4
        finally:
            async with engine.begin() as connection:
                await connection.exec_driver_sql(f"DROP TABLE IF EXISTS {TABLE}")
            qs.uninstrument(engine)
            await engine.dispose()

    asyncio.run(main())
