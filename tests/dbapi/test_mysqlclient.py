"""mysqlclient (MySQLdb) on a real MariaDB server."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import pytest

import querymeter.dbapi as dbapi
from querymeter.meter import Meter as MeterType

from ..servers import driver
from . import overlap, transparency

MySQLdb = driver("MySQLdb")
driver("MySQLdb.connections")
driver("MySQLdb.cursors")

Connection = MySQLdb.connections.Connection
BaseCursor = MySQLdb.cursors.BaseCursor
# Every method patched, with what MySQLdb had there before.
ORIGINALS = {
    (Connection, "__init__"): vars(Connection)["__init__"],
    (Connection, "query"): vars(Connection)["query"],
    **{
        (BaseCursor, name): vars(BaseCursor)[name]
        for name in ("execute", "executemany", "callproc")
    },
}

outcome = functools.partial(transparency.outcome, cursor_types=(MySQLdb.cursors.BaseCursor,))


@pytest.fixture
def counted(meter: MeterType, mysql: dict[str, Any]) -> Iterator[Any]:
    dbapi.instrument(MySQLdb, meter=meter)
    connection = MySQLdb.connect(autocommit=True, **mysql)
    yield connection
    if connection.open:
        connection.close()


def counts(meter: MeterType) -> tuple[int, int, int]:
    snap = meter.snapshot()
    return snap.queries, snap.errors, snap.concurrency


def assert_originals_back() -> None:
    for (cls, name), original in ORIGINALS.items():
        assert vars(cls)[name] is original, (cls, name)


# ----------------------------------------------------------- what is counted


def test_every_statement_sending_call_counts_once(counted: Any, meter: MeterType) -> None:
    """execute, callproc, executemany (a batch: one query) and connection.query count once
    each; MySQLdb's own BEGIN does not."""
    procedure = f"querymeter_twice_{os.getpid()}"
    with counted.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE item (id int, name varchar(10))")  # 1
        # INSERT ... VALUES: MySQLdb sends one multi-row INSERT per chunk.
        cursor.executemany("INSERT INTO item VALUES (%s, %s)", [(n, f"n{n}") for n in range(50)])
        # Anything else: one statement per row.
        cursor.executemany("UPDATE item SET name = %s WHERE id = %s", [("x", 1), ("y", 2)])
        cursor.execute("SELECT count(*) FROM item")  # 4
        assert cursor.fetchone() == (50,)
        cursor.execute(f"DROP PROCEDURE IF EXISTS {procedure}")
        cursor.execute(f"CREATE PROCEDURE {procedure}(IN x INT) SELECT 2 * x")
        try:
            cursor.callproc(procedure, (21,))  # 7: SET and CALL, one query
            assert cursor.fetchone() == (42,)
            while cursor.nextset():
                pass
        finally:
            cursor.execute(f"DROP PROCEDURE {procedure}")  # 8
    counted.query("SELECT 3")  # 9
    assert counted.store_result().fetch_row() == ((3,),)
    counted.begin()
    counted.commit()
    assert counts(meter) == (9, 0, 0)


def test_a_multi_statement_batch_counts_once(meter: MeterType, mysql: dict[str, Any]) -> None:
    """executemany_fallback="multi" sends DML joined into multi-statements: one query."""
    dbapi.instrument(MySQLdb, meter=meter)
    connection = MySQLdb.connect(autocommit=True, executemany_fallback="multi", **mysql)
    try:
        cursor = connection.cursor()
        cursor.execute("CREATE TEMPORARY TABLE item (id int, name varchar(10))")
        cursor.execute("INSERT INTO item VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        assert cursor.executemany("UPDATE item SET name = %s WHERE id = %s", [("x", 1), ("y", 2)])
        cursor.execute("SELECT name FROM item ORDER BY id")
        assert cursor.fetchall() == (("x",), ("y",), ("c",))
    finally:
        connection.close()
    assert counts(meter) == (4, 0, 0)


def test_execute_inside_a_batch_is_the_drivers_own_again_afterwards(
    counted: Any, meter: MeterType
) -> None:
    """After executemany, the cursor's execute counts again and the cursor keeps no trace."""
    with counted.cursor() as cursor:
        cursor.executemany("SELECT %s", [(1,), (2,), (3,)])
        assert not any(
            name.startswith("__querymeter") or name == "execute" for name in vars(cursor)
        )
        cursor.execute("SELECT 1")
        with pytest.raises(MySQLdb.ProgrammingError):
            cursor.executemany("SELEKT %s", [(1,), (2,)])
        assert not any(
            name.startswith("__querymeter") or name == "execute" for name in vars(cursor)
        )
    assert counts(meter)[:2] == (3, 1)


def test_cursor_classes_are_kept_and_counted(counted: Any, meter: MeterType) -> None:
    """DictCursor, SSCursor and SSDictCursor, asked for per call or as cursorclass, are
    those very classes, and count."""
    with counted.cursor(MySQLdb.cursors.DictCursor) as cursor:
        assert type(cursor) is MySQLdb.cursors.DictCursor
        cursor.execute("SELECT 1 AS one")
        assert cursor.fetchone() == {"one": 1}
    with counted.cursor(cursorclass=MySQLdb.cursors.SSDictCursor) as cursor:
        assert type(cursor) is MySQLdb.cursors.SSDictCursor
        cursor.execute("SELECT 2 AS two")
        assert list(cursor.fetchall()) == [{"two": 2}]
    counted.cursorclass = MySQLdb.cursors.SSCursor
    with counted.cursor() as cursor:
        assert type(cursor) is MySQLdb.cursors.SSCursor
        cursor.execute("SELECT 3")
        assert list(cursor.fetchall()) == [(3,)]
    assert type(counted) is Connection
    assert counts(meter) == (3, 0, 0)


def test_the_applications_cursor_classes_count_and_none_of_their_code_runs(
    counted: Any, meter: MeterType
) -> None:
    """Cursor classes of the application's keep their class and count once, an override
    that calls MySQLdb's execute included; none is subclassed (no __init_subclass__ runs)."""
    subclassed: list[type] = []

    class Watchful(MySQLdb.cursors.Cursor):  # type: ignore[misc]
        def __init_subclass__(cls, **kwargs: Any) -> None:
            subclassed.append(cls)
            super().__init_subclass__(**kwargs)

    class AppCursor(Watchful):
        def execute(self, query: Any, args: Any = None) -> Any:
            return super().execute(query, args)

    subclassed.clear()
    for cursor_class in (Watchful, AppCursor):
        with counted.cursor(cursor_class) as cursor:
            assert type(cursor) is cursor_class
            cursor.execute("SELECT 1")
            cursor.executemany("SELECT %s", [(1,), (2,)])
            assert cursor.fetchall() == ((2,),)
    assert subclassed == []
    assert counts(meter) == (4, 0, 0)


def test_every_way_to_connect_is_counted(meter: MeterType, mysql: dict[str, Any]) -> None:
    """MySQLdb.connect, MySQLdb.Connect, MySQLdb.connections.Connection and a subclass of it
    give MySQLdb's classes (or the subclass), counted."""

    class AppConnection(Connection):  # type: ignore[misc]
        pass

    dbapi.instrument(MySQLdb, meter=meter)
    for connect in (MySQLdb.connect, MySQLdb.Connect, Connection, AppConnection):
        connection = connect(**mysql)
        try:
            assert type(connection) is (AppConnection if connect is AppConnection else Connection)
            assert dbapi.meter_of(connection) is meter
            connection.cursor().execute("SELECT 1")
        finally:
            connection.close()
    assert counts(meter) == (4, 0, 0)


def test_transparency_against_an_uninstrumented_connection(
    meter: MeterType, mysql: dict[str, Any]
) -> None:
    """Results, rowcount, lastrowid, description and errors equal the raw driver's."""
    raw = MySQLdb.connect(autocommit=True, **mysql)
    dbapi.instrument(MySQLdb, meter=meter)
    counted = MySQLdb.connect(autocommit=True, **mysql)

    def script(connection: Any) -> list[tuple[Any, ...]]:
        cursor = connection.cursor()
        create = "CREATE TEMPORARY TABLE item (id int AUTO_INCREMENT PRIMARY KEY, n int)"
        return [
            outcome(lambda: cursor.execute(create)),
            outcome(lambda: cursor.executemany("INSERT INTO item (n) VALUES (%s)", [(1,), (2,)])),
            outcome(lambda: (cursor.rowcount, cursor.lastrowid)),
            outcome(lambda: cursor.execute("INSERT INTO item (n) VALUES (%(n)s)", {"n": 3})),
            outcome(lambda: cursor.lastrowid),
            outcome(lambda: cursor.execute("SELECT id, n FROM item ORDER BY id")),
            outcome(lambda: cursor.fetchmany(2)),
            outcome(lambda: list(cursor)),
            outcome(lambda: [tuple(d)[:2] for d in cursor.description]),
            outcome(lambda: cursor.execute("INSERT INTO item VALUES (1, 1)")),
            outcome(lambda: cursor.execute("SELEKT 1")),
            outcome(lambda: cursor.execute("")),
            outcome(lambda: cursor.execute("-- nothing")),
            outcome(lambda: cursor.execute(b"SELECT 1")),
            outcome(lambda: cursor.execute("SELECT 1 -- " + "x" * 1_000_000)),
            outcome(lambda: cursor.execute("SELECT %s", (1, 2))),
            outcome(lambda: cursor.executemany("SELECT 1", [])),
            outcome(lambda: cursor.callproc("querymeter_no_such_procedure")),
            outcome(lambda: connection.query("SELECT 1") or connection.store_result().fetch_row()),
            outcome(lambda: connection.query("SELEKT")),
            outcome(lambda: cursor.mogrify("SELECT %s", ("a'b",))),
        ]

    try:
        assert script(counted) == script(raw)
    finally:
        raw.close()
        counted.close()
    assert counts(meter)[0] == 15


def test_a_generator_reaches_executemany_unconsumed(counted: Any, meter: MeterType) -> None:
    """The caller's generator reaches MySQLdb's executemany itself."""
    with counted.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE item (id int)")
        rows = ((n,) for n in range(10))
        cursor.executemany("INSERT INTO item VALUES (%s)", rows)
        assert next(rows, None) is None
        cursor.execute("SELECT count(*) FROM item")
        assert cursor.fetchone() == (10,)
    assert counts(meter) == (3, 0, 0)


# ----------------------------------------------------------------- errors


def test_errors_pass_through_and_count(counted: Any, meter: MeterType) -> None:
    """A duplicate key, a syntax error, a bad query() and a closed connection raise
    MySQLdb's errors and count as errors."""
    cursor = counted.cursor()
    cursor.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")
    cursor.execute("INSERT INTO item VALUES (1)")
    with pytest.raises(MySQLdb.IntegrityError):
        cursor.execute("INSERT INTO item VALUES (1)")
    with pytest.raises(MySQLdb.ProgrammingError):
        cursor.execute("SELEKT 1")
    with pytest.raises(MySQLdb.ProgrammingError):
        counted.query("SELEKT 1")
    counted.close()
    with pytest.raises(MySQLdb.Error):
        cursor.execute("SELECT 1")
    assert counts(meter) == (6, 4, 0)


# ----------------------------------------------------------------- overlap


def test_threads_overlap_on_the_server(meter: MeterType, mysql: dict[str, Any]) -> None:
    """4 threads in SLEEP(0.3) at once: concurrency 4 mid-flight, total ≈1.2 s, busy ≈0.3 s."""
    dbapi.instrument(MySQLdb, meter=meter)
    overlap.check_on_connections(
        meter,
        [MySQLdb.connect(**mysql) for _ in range(overlap.QUERIES)],
        lambda connection: connection.cursor().execute(f"SELECT SLEEP({overlap.SLEEP_S})"),
    )


# ------------------------------------------------------ the server's count


def test_the_count_matches_what_the_server_saw(counted: Any, meter: MeterType) -> None:
    """Statements counted equal the session's Questions counter on the server."""

    def questions() -> int:
        with counted.cursor() as cursor:  # this statement is a question too
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            return int(cursor.fetchone()[1])

    first = questions()
    before = meter.snapshot()
    with counted.cursor(MySQLdb.cursors.DictCursor) as cursor:
        cursor.execute("CREATE TEMPORARY TABLE item (id int)")
        for n in range(30):
            cursor.execute("SELECT %s", (n,))
        # One multi-row INSERT: one statement for the server too.
        cursor.executemany("INSERT INTO item VALUES (%s)", [(n,) for n in range(20)])
        for _ in range(3):
            with pytest.raises(MySQLdb.ProgrammingError):
                cursor.execute("SELEKT 1")
    for n in range(5):
        counted.query(f"SELECT {n}")
        counted.store_result()
    counted.begin()
    counted.commit()
    ours = (meter.snapshot() - before).queries
    server = questions() - first - 1  # less this reading's own statement
    # MySQLdb's BEGIN and COMMIT are statements for the server, not queries.
    assert server - 2 == ours == 40


# ---------------------------------------- instrument, wrap, and undoing them


def test_uninstrument_restores_mysqldbs_own_functions(
    meter: MeterType, mysql: dict[str, Any]
) -> None:
    """uninstrument puts back Connection.__init__ and query and the cursors' execute,
    executemany and callproc, the very objects."""
    dbapi.instrument(MySQLdb, meter=meter)
    assert vars(BaseCursor)["execute"] is not ORIGINALS[(BaseCursor, "execute")]
    connection = MySQLdb.connect(**mysql)
    connection.cursor().execute("SELECT 1")
    connection.close()
    dbapi.uninstrument(MySQLdb)
    assert_originals_back()
    assert counts(meter) == (1, 0, 0)


def test_an_open_connection_counts_after_uninstrument_until_unwrapped(
    meter: MeterType, mysql: dict[str, Any]
) -> None:
    """A connection still open at uninstrument keeps counting; unwrapping it puts every
    method back, and it stops counting."""
    dbapi.instrument(MySQLdb, meter=meter)
    connection = MySQLdb.connect(**mysql)
    try:
        dbapi.uninstrument(MySQLdb)
        assert vars(Connection)["__init__"] is ORIGINALS[(Connection, "__init__")]
        connection.cursor().execute("SELECT 1")
        assert dbapi.unwrap_connection(connection) is connection
        assert_originals_back()
        connection.cursor().execute("SELECT 1")
    finally:
        connection.close()
    assert counts(meter) == (1, 0, 0)


def test_wrap_and_unwrap_an_existing_connection(meter: MeterType, mysql: dict[str, Any]) -> None:
    """wrap_connection counts an open connection in place, its type unchanged; unwrap stops it;
    another connection is not counted meanwhile."""
    connection = MySQLdb.connect(**mysql)
    other = MySQLdb.connect(**mysql)
    try:
        assert dbapi.wrap_connection(connection, meter=meter) is connection
        assert type(connection) is Connection
        connection.cursor().execute("SELECT 1")
        other.cursor().execute("SELECT 1")
        other.query("SELECT 1")
        other.store_result()
        dbapi.unwrap_connection(connection)
        assert dbapi.meter_of(connection) is None
        connection.cursor().execute("SELECT 1")
    finally:
        connection.close()
        other.close()
    assert_originals_back()
    assert counts(meter) == (1, 0, 0)


def test_a_connection_counts_into_one_meter_only(
    Meter: type[MeterType], mysql: dict[str, Any]
) -> None:
    """Wrapping a counting connection with another meter raises; with the same, nothing."""
    first, second = Meter(), Meter()
    connection = MySQLdb.connect(**mysql)
    try:
        dbapi.wrap_connection(connection, meter=first)
        dbapi.wrap_connection(connection, meter=first)
        with pytest.raises(ValueError, match="another meter"):
            dbapi.wrap_connection(connection, meter=second)
        connection.cursor().execute("SELECT 1")
    finally:
        dbapi.unwrap_connection(connection)
        connection.close()
    assert first.snapshot().queries == 1 and second.snapshot().queries == 0


def test_another_wrapper_installed_later_stays_and_ours_stands_aside(
    meter: MeterType, mysql: dict[str, Any]
) -> None:
    """A wrapper another tool puts over a counted method stays at uninstrument, and ours
    inside it stops counting."""
    dbapi.instrument(MySQLdb, meter=meter)
    ours = vars(BaseCursor)["execute"]
    calls: list[str] = []

    def theirs(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("theirs")
        return ours(self, *args, **kwargs)

    BaseCursor.execute = theirs
    try:
        connection = MySQLdb.connect(**mysql)
        try:
            connection.cursor().execute("SELECT 1")
            dbapi.uninstrument(MySQLdb)
            dbapi.unwrap_connection(connection)
            assert vars(BaseCursor)["execute"] is theirs
            dbapi.wrap_connection(connection, meter=meter)  # ours again, over theirs
            connection.cursor().execute("SELECT 1")
            dbapi.unwrap_connection(connection)
            connection.cursor().execute("SELECT 1")
        finally:
            connection.close()
    finally:
        BaseCursor.execute = ORIGINALS[(BaseCursor, "execute")]
    assert calls == ["theirs"] * 3
    assert counts(meter) == (2, 0, 0)


def test_pymysql_installed_as_mysqldb_is_left_to_the_pymysql_hooks() -> None:
    """Where PyMySQL stands in for MySQLdb, wrap_connection of something else still raises
    TypeError, and instrumenting "MySQLdb" instruments PyMySQL."""
    import subprocess
    import sys

    script = (
        "import pymysql; pymysql.install_as_MySQLdb()\n"
        "import MySQLdb, querymeter, querymeter.dbapi as dbapi\n"
        "try:\n"
        "    dbapi.wrap_connection(object())\n"
        "except TypeError:\n"
        "    pass\n"
        "dbapi.instrument(MySQLdb, meter=querymeter.Meter())\n"
        "assert dbapi.instrumented_meter(pymysql) is not None\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
