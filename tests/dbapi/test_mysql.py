"""PyMySQL on a real MariaDB server."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pytest

import querymeter.dbapi as dbapi
from querymeter.meter import Meter as MeterType

from ..servers import driver
from . import overlap, transparency

pymysql = driver("pymysql")
driver("pymysql.connections")
driver("pymysql.cursors")


outcome = functools.partial(transparency.outcome, cursor_types=(pymysql.cursors.Cursor,))


@pytest.fixture
def counted(meter: MeterType, mysql: dict[str, Any]) -> Iterator[Any]:
    dbapi.instrument(pymysql, meter=meter)
    connection = pymysql.connect(autocommit=True, **mysql)
    yield connection
    if connection.open:
        connection.close()


def test_every_statement_sending_call_counts_once(counted: Any, meter: MeterType) -> None:
    """execute, callproc and executemany (a batch: one query) count once each."""
    with counted.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE item (id int, name varchar(10))")
        cursor.executemany("INSERT INTO item VALUES (%s, %s)", [(n, f"n{n}") for n in range(50)])
        cursor.executemany("UPDATE item SET name = %s WHERE id = %s", [("x", 1), ("y", 2)])
        cursor.execute("SELECT count(*) FROM item")
        assert cursor.fetchone() == (50,)
        cursor.execute("DROP PROCEDURE IF EXISTS querymeter_twice")
        cursor.execute("CREATE PROCEDURE querymeter_twice(IN x INT) SELECT 2 * x")
        cursor.callproc("querymeter_twice", (21,))
        assert cursor.fetchone() == (42,)
        cursor.nextset()
        cursor.execute("DROP PROCEDURE querymeter_twice")
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (8, 0, 0)


def test_execute_inside_a_batch_is_the_drivers_own_again_afterwards(
    counted: Any, meter: MeterType
) -> None:
    """After executemany, the cursor's execute counts again and the cursor keeps no trace."""
    with counted.cursor() as cursor:
        cursor.executemany("SELECT %s", [(1,), (2,), (3,)])
        assert "execute" not in vars(cursor)
        cursor.execute("SELECT 1")
        with pytest.raises(pymysql.err.ProgrammingError):
            cursor.executemany("SELEKT %s", [(1,), (2,)])
        assert "execute" not in vars(cursor)
    snap = meter.snapshot()
    assert (snap.queries, snap.errors) == (3, 1)


def test_cursor_classes_are_kept_and_counted(counted: Any, meter: MeterType) -> None:
    """DictCursor and SSCursor, asked for per call or as cursorclass, stay themselves and count."""
    with counted.cursor(pymysql.cursors.DictCursor) as cursor:
        assert isinstance(cursor, pymysql.cursors.DictCursor)
        cursor.execute("SELECT 1 AS one")
        assert cursor.fetchone() == {"one": 1}
    counted.cursorclass = pymysql.cursors.SSCursor
    with counted.cursor() as cursor:
        assert isinstance(cursor, pymysql.cursors.SSCursor)
        cursor.execute("SELECT 2")
        assert list(cursor.fetchall()) == [(2,)]
    assert isinstance(counted, pymysql.connections.Connection)
    assert meter.snapshot().queries == 2


def test_init_command_is_counted(meter: MeterType, mysql: dict[str, Any]) -> None:
    """The statement PyMySQL runs while connecting (init_command) is counted."""
    dbapi.instrument(pymysql, meter=meter)
    pymysql.connect(init_command="SET @querymeter = 1", **mysql).close()
    assert meter.snapshot().queries == 1


def test_transparency_against_an_uninstrumented_connection(
    meter: MeterType, mysql: dict[str, Any]
) -> None:
    """Results, rowcount, description and errors equal the raw driver's."""
    raw = pymysql.connect(autocommit=True, **mysql)
    dbapi.instrument(pymysql, meter=meter)
    counted = pymysql.connect(autocommit=True, **mysql)

    def script(connection: Any) -> list[tuple[Any, ...]]:
        cursor = connection.cursor()
        return [
            outcome(lambda: cursor.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")),
            outcome(lambda: cursor.executemany("INSERT INTO item VALUES (%s)", [(1,), (2,), (3,)])),
            outcome(lambda: cursor.rowcount),
            outcome(lambda: cursor.execute("SELECT id FROM item ORDER BY id")),
            outcome(lambda: cursor.fetchmany(2)),
            outcome(lambda: list(cursor)),
            outcome(lambda: [tuple(d)[:2] for d in cursor.description]),
            outcome(lambda: cursor.execute("INSERT INTO item VALUES (1)")),
            outcome(lambda: cursor.execute("SELEKT 1")),
            outcome(lambda: cursor.execute("")),
            outcome(lambda: cursor.execute("-- nothing")),
            outcome(lambda: cursor.execute(b"SELECT 1")),
            outcome(lambda: cursor.execute("SELECT 1 -- " + "x" * 1_000_000)),
            outcome(lambda: cursor.execute("SELECT %s", (1, 2))),
            outcome(lambda: cursor.executemany("SELECT 1", [])),
        ]

    try:
        assert script(counted) == script(raw)
    finally:
        raw.close()
        counted.close()


def test_a_generator_reaches_executemany_unconsumed(counted: Any, meter: MeterType) -> None:
    """The caller's generator reaches PyMySQL's executemany itself."""
    with counted.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE item (id int)")
        rows = ((n,) for n in range(10))
        cursor.executemany("INSERT INTO item VALUES (%s)", rows)
        assert next(rows, None) is None
        cursor.execute("SELECT count(*) FROM item")
        assert cursor.fetchone() == (10,)
    assert meter.snapshot().queries == 3


def test_errors_pass_through_and_count(counted: Any, meter: MeterType) -> None:
    """A duplicate key, a syntax error and a closed connection raise PyMySQL's errors."""
    cursor = counted.cursor()
    cursor.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")
    cursor.execute("INSERT INTO item VALUES (1)")
    with pytest.raises(pymysql.err.IntegrityError):
        cursor.execute("INSERT INTO item VALUES (1)")
    with pytest.raises(pymysql.err.ProgrammingError):
        cursor.execute("SELEKT 1")
    counted.close()
    with pytest.raises(pymysql.err.Error):
        cursor.execute("SELECT 1")
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (5, 3, 0)


def test_threads_overlap_on_the_server(meter: MeterType, mysql: dict[str, Any]) -> None:
    """4 threads in SLEEP(0.3) at once: concurrency 4 mid-flight, total ≈1.2 s, busy ≈0.3 s."""
    dbapi.instrument(pymysql, meter=meter)
    overlap.check_on_connections(
        meter,
        [pymysql.connect(**mysql) for _ in range(overlap.QUERIES)],
        lambda connection: connection.cursor().execute(f"SELECT SLEEP({overlap.SLEEP_S})"),
    )


def test_the_count_matches_what_the_server_saw(counted: Any, meter: MeterType) -> None:
    """Statements counted equal the session's Questions counter on the server."""

    def questions() -> int:
        with counted.cursor() as cursor:  # this statement is a question too
            cursor.execute("SHOW SESSION STATUS LIKE 'Questions'")
            return int(cursor.fetchone()[1])

    first = questions()
    before = meter.snapshot()
    with counted.cursor() as cursor:
        for n in range(30):
            cursor.execute("SELECT %s", (n,))
        for _ in range(3):
            with pytest.raises(pymysql.err.ProgrammingError):
                cursor.execute("SELEKT 1")
    ours = (meter.snapshot() - before).queries
    assert questions() - first - 1 == ours == 33


def test_wrap_and_unwrap_an_existing_connection(meter: MeterType, mysql: dict[str, Any]) -> None:
    """wrap_connection counts an open connection in place; unwrap restores its class."""
    connection = pymysql.connect(**mysql)
    try:
        original_type = type(connection)
        assert dbapi.wrap_connection(connection, meter=meter) is connection
        connection.cursor().execute("SELECT 1")
        dbapi.unwrap_connection(connection)
        assert type(connection) is original_type
        connection.cursor().execute("SELECT 1")
    finally:
        connection.close()
    assert meter.snapshot().queries == 1


def test_connections_and_cursors_stay_pymysqls_own(counted: Any, meter: MeterType) -> None:
    """type(connection), type(cursor) and cursorclass read back are PyMySQL's own classes."""
    assert type(counted) is pymysql.connections.Connection
    with counted.cursor() as cursor:
        assert type(cursor) is pymysql.cursors.Cursor
        cursor.execute("SELECT 1")
    for cursor_class in (pymysql.cursors.DictCursor, pymysql.cursors.SSCursor):
        with counted.cursor(cursor_class) as cursor:
            assert type(cursor) is cursor_class
    counted.cursorclass = pymysql.cursors.DictCursor
    with counted.cursor() as cursor:
        assert type(cursor) is pymysql.cursors.DictCursor
        cursor.execute("SELECT 2 AS two")
        assert cursor.fetchone() == {"two": 2}
    assert counted.cursorclass is pymysql.cursors.DictCursor
    assert meter.snapshot().queries == 2


def test_counting_runs_no_code_of_the_applications_classes(counted: Any, meter: MeterType) -> None:
    """An application's cursor class with class hooks is used as it is, counted, no hook run."""
    hooked = transparency.HookedClasses(pymysql.cursors.Cursor)
    with counted.cursor(hooked.Application) as cursor:
        assert type(cursor) is hooked.Application
        cursor.execute("SELECT 1")
        cursor.executemany("SELECT %s", [(1,), (2,)])
    assert hooked.state() == hooked.before
    assert hooked.Application.__subclasses__() == []
    assert meter.snapshot().queries == 2


def test_an_execute_of_the_applications_inside_a_batch_is_part_of_it(
    counted: Any, meter: MeterType
) -> None:
    """executemany of a cursor class whose execute calls PyMySQL's is one query, as is execute."""
    calls: list[Any] = []

    class Logged(pymysql.cursors.Cursor):  # type: ignore[misc]
        def execute(self, query: Any, args: Any = None) -> Any:
            calls.append(args)
            return super().execute(query, args)

    with counted.cursor(Logged) as cursor:
        cursor.executemany("SELECT %s", [(1,), (2,), (3,)])
        assert "__querymeter_batch__" not in vars(cursor)
        cursor.execute("SELECT 4")
    assert calls == [(1,), (2,), (3,), None]
    assert meter.snapshot().queries == 2


def test_errors_pass_through_one_frame_of_querymeter_at_most(
    counted: Any, meter: MeterType, mysql: dict[str, Any]
) -> None:
    """A driver's error reaches the caller through at most one frame of querymeter's hooks."""
    cursor = counted.cursor()
    cursor.execute("CREATE TEMPORARY TABLE item (id int PRIMARY KEY)")
    actions: list[Any] = [
        lambda: cursor.execute("SELEKT 1"),
        lambda: cursor.executemany("SELEKT %s", [(1,), (2,)]),
        lambda: cursor.executemany("INSERT INTO item VALUES (%s)", [(1,), (1,)]),
        lambda: cursor.callproc("querymeter_missing"),
        lambda: pymysql.connect(**{**mysql, "user": "querymeter_nobody", "password": "wrong"}),
    ]
    for action in actions:
        with pytest.raises(pymysql.err.MySQLError) as caught:
            action()
        assert len(transparency.hook_frames(caught.value)) <= 1, caught.traceback
    snap = meter.snapshot()
    assert (snap.queries, snap.errors) == (5, 4)


def test_an_open_connection_keeps_counting_after_uninstrument(
    meter: MeterType, mysql: dict[str, Any]
) -> None:
    """After uninstrument an open counted connection still counts; closed and unwrapped,
    PyMySQL's Cursor gets its very own methods back."""
    original = vars(pymysql.cursors.Cursor)["execute"]
    dbapi.instrument(pymysql, meter=meter)
    connection = pymysql.connect(**mysql)
    dbapi.uninstrument(pymysql)
    connection.cursor().execute("SELECT 1")
    connection.close()
    assert vars(pymysql.cursors.Cursor)["execute"] is not original
    dbapi.unwrap_connection(connection)
    assert vars(pymysql.cursors.Cursor)["execute"] is original
    assert meter.snapshot().queries == 1
