"""sqlite3: every statement counted once, and nothing the application sees changes."""

from __future__ import annotations

import abc
import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import querymeter
import querymeter.dbapi as dbapi
from querymeter.meter import Meter as MeterType

from . import transparency

outcome = functools.partial(transparency.outcome, cursor_types=(sqlite3.Cursor,))


@pytest.fixture(params=["memory", "file"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An in-memory database, and one in a file."""
    return ":memory:" if request.param == "memory" else str(tmp_path / "test.db")


@pytest.fixture
def counted(meter: MeterType, database: str) -> Iterator[sqlite3.Connection]:
    """A connection opened by the instrumented sqlite3.connect."""
    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(database)
    yield connection
    connection.close()


def test_every_statement_sending_call_counts_once(
    counted: sqlite3.Connection, meter: MeterType
) -> None:
    """Cursor and connection execute, executemany and executescript count one query each."""
    cursor = counted.cursor()
    cursor.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
    cursor.executemany("INSERT INTO item (name) VALUES (?)", [("a",), ("b",)])
    cursor.executescript(
        "INSERT INTO item (name) VALUES ('c'); INSERT INTO item (name) VALUES ('d');"
    )
    reused = counted.execute("SELECT count(*) FROM item")
    assert reused.fetchone() == (4,)
    counted.executemany("INSERT INTO item (name) VALUES (?)", [("e",)])
    counted.executescript("SELECT 1; SELECT 2;")
    reused.execute("SELECT 1")  # the cursor a shortcut returned counts too
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (7, 0, 0)


def test_counted_objects_are_the_drivers_types(counted: sqlite3.Connection) -> None:
    """Connections and cursors stay instances of sqlite3's classes, with sqlite3's repr."""
    cursor = counted.cursor()
    assert isinstance(counted, sqlite3.Connection)
    assert isinstance(cursor, sqlite3.Cursor)
    assert isinstance(counted.execute("SELECT 1"), sqlite3.Cursor)
    assert repr(cursor).startswith("<sqlite3.Cursor object at")
    assert cursor.connection is counted


def test_user_factories_are_kept_and_counted(meter: MeterType, database: str) -> None:
    """A Connection factory and a Cursor factory of the user's keep their behaviour, counted."""

    class AppConnection(sqlite3.Connection):
        def greeting(self) -> str:
            return "hello"

    class AppCursor(sqlite3.Cursor):
        def first(self, sql: str) -> Any:
            return self.execute(sql).fetchone()

    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(database, factory=AppConnection)
    assert isinstance(connection, AppConnection)
    assert connection.greeting() == "hello"
    cursor = connection.cursor(AppCursor)
    assert isinstance(cursor, AppCursor)
    assert cursor.first("SELECT 5") == (5,)
    positional = sqlite3.connect(database, 5.0, 0, "DEFERRED", True, AppConnection)
    assert isinstance(positional, AppConnection)
    positional.execute("SELECT 1")
    assert meter.snapshot().queries == 2


def test_transparency_against_an_uninstrumented_connection(
    meter: MeterType, database: str, tmp_path: Path
) -> None:
    """Results, row factories, description, rowcount, iteration and errors are the raw driver's."""
    raw = sqlite3.connect(str(tmp_path / "raw.db") if database != ":memory:" else ":memory:")
    dbapi.instrument(sqlite3, meter=meter)
    counted = sqlite3.connect(database)
    for connection in (raw, counted):
        connection.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT UNIQUE)")
        connection.executemany("INSERT INTO item (name) VALUES (?)", [("a",), ("b",), ("c",)])

    def script(connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
        cursor = connection.cursor()
        results = [
            outcome(lambda: cursor.execute("SELECT id, name FROM item ORDER BY id").fetchall()),
            outcome(lambda: cursor.description),
            outcome(lambda: cursor.execute("UPDATE item SET name = name || '!'").rowcount),
            outcome(lambda: list(cursor.execute("SELECT name FROM item ORDER BY id"))),
            outcome(lambda: cursor.execute("SELECT name FROM item").fetchmany(2)),
            outcome(lambda: cursor.lastrowid),
            outcome(lambda: setattr(cursor, "arraysize", 7) or cursor.arraysize),
            outcome(lambda: cursor.execute("INSERT INTO item (name) VALUES ('a!')")),
            outcome(lambda: cursor.execute("SELEKT 1")),
            outcome(lambda: cursor.execute("")),
            outcome(lambda: cursor.execute("   \n\t ").fetchall()),
            outcome(lambda: cursor.execute("-- only a comment").fetchall()),
            outcome(lambda: cursor.execute(b"SELECT 1")),  # type: ignore[arg-type]
            outcome(lambda: cursor.execute("SELECT 1 -- " + "x" * 1_000_000).fetchall()),
            outcome(lambda: cursor.execute("SELECT ?", ("a", "b"))),
        ]
        connection.row_factory = sqlite3.Row
        results.append(outcome(lambda: dict(connection.execute("SELECT 1 AS one").fetchone())))
        connection.isolation_level = None
        results.append(outcome(lambda: connection.isolation_level))
        results.append(outcome(lambda: connection.in_transaction))
        return results

    assert script(counted) == script(raw)


def test_with_connection_returns_the_counted_connection(counted: sqlite3.Connection) -> None:
    """`with conn:` gives the same counted connection and returns the driver's __exit__ value."""
    counted.execute("CREATE TABLE item (x)")
    with counted as entered:
        assert entered is counted
        entered.execute("INSERT INTO item VALUES (1)")
    assert counted.__exit__(None, None, None) is False  # what sqlite3 itself returns


def test_a_generator_reaches_executemany_unconsumed(
    counted: sqlite3.Connection, meter: MeterType
) -> None:
    """executemany receives the caller's generator itself, not a copy."""
    counted.execute("CREATE TABLE item (x)")
    rows = ((n,) for n in range(100))
    counted.cursor().executemany("INSERT INTO item VALUES (?)", rows)
    assert counted.execute("SELECT count(*) FROM item").fetchone() == (100,)
    assert next(rows, None) is None
    assert meter.snapshot().queries == 3


def test_driver_errors_pass_through_as_the_same_object(
    counted: sqlite3.Connection, meter: MeterType
) -> None:
    """A driver's exception reaches the caller as its own object with its traceback, as an error."""
    counted.execute("CREATE TABLE item (x UNIQUE)")
    counted.execute("INSERT INTO item VALUES (1)")
    cursor = counted.cursor()
    with pytest.raises(sqlite3.IntegrityError) as constraint:
        cursor.execute("INSERT INTO item VALUES (1)")
    assert "UNIQUE constraint failed" in str(constraint.value)
    with pytest.raises(sqlite3.OperationalError) as syntax:
        cursor.execute("SELEKT 1")
    assert syntax.traceback[0].path == Path(__file__)
    assert 'near "SELEKT"' in str(syntax.value)
    counted.close()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        cursor.execute("SELECT 1")
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (5, 3, 0)


def test_the_raised_exception_object_itself_reaches_the_caller(
    meter: MeterType, database: str
) -> None:
    """The exception a cursor raises is the very object the caller catches."""
    raised = sqlite3.DatabaseError("from the driver")

    class FailingCursor(sqlite3.Cursor):
        def execute(self, *args: Any) -> Any:
            raise raised

    dbapi.instrument(sqlite3, meter=meter)
    with pytest.raises(sqlite3.DatabaseError) as caught:
        sqlite3.connect(database).cursor(FailingCursor).execute("SELECT 1")
    assert caught.value is raised
    assert caught.traceback[-1].name == "execute"  # the driver's frame is kept
    assert meter.snapshot().errors == 1


def test_keyboard_interrupt_in_a_cursor_counts_and_propagates(
    meter: MeterType, database: str
) -> None:
    """KeyboardInterrupt raised inside execute ends the query as an error and propagates."""

    class InterruptedCursor(sqlite3.Cursor):
        def execute(self, *args: Any) -> Any:
            raise KeyboardInterrupt

    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(database)
    with pytest.raises(KeyboardInterrupt):
        connection.cursor(InterruptedCursor).execute("SELECT 1")
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)


def test_wrap_connection_counts_an_existing_connection_through_a_proxy(
    meter: MeterType, database: str
) -> None:
    """An existing connection is counted through a proxy that behaves as the connection."""
    connection = sqlite3.connect(database)
    wrapped = dbapi.wrap_connection(connection, meter=meter)
    assert isinstance(wrapped, sqlite3.Connection)
    assert dbapi.wrap_connection(wrapped, meter=meter) is wrapped
    wrapped.execute("CREATE TABLE item (x)")
    cursor = wrapped.cursor()
    cursor.executemany("INSERT INTO item VALUES (?)", [(1,), (2,)])
    with wrapped as entered:
        assert entered is wrapped
        entered.executescript("INSERT INTO item VALUES (3);")
    wrapped.row_factory = sqlite3.Row
    assert connection.row_factory is sqlite3.Row
    assert wrapped.total_changes == connection.total_changes
    assert wrapped.in_transaction is False
    assert meter.snapshot().queries == 3
    assert dbapi.unwrap_connection(wrapped) is connection
    connection.execute("SELECT 1")
    cursor.execute("SELECT 1")  # a cursor opened while counted keeps counting
    assert meter.snapshot().queries == 4


def test_unwrap_stops_a_connection_opened_instrumented(
    counted: sqlite3.Connection, meter: MeterType
) -> None:
    """unwrap_connection stops counting a connection that cannot change class back."""
    counted.execute("SELECT 1")
    assert dbapi.unwrap_connection(counted) is counted
    counted.execute("SELECT 1")
    counted.cursor().execute("SELECT 1")
    assert meter.snapshot().queries == 1
    assert dbapi.meter_of(counted) is None


def test_connections_opened_before_instrumenting_are_not_counted(
    meter: MeterType, database: str
) -> None:
    """instrument() affects connections opened from then on only."""
    before = sqlite3.connect(database)
    dbapi.instrument(sqlite3, meter=meter)
    before.execute("SELECT 1")
    assert meter.snapshot().queries == 0


def test_counting_runs_no_code_of_the_applications_classes(meter: MeterType, database: str) -> None:
    """Counting an application's Cursor and Connection classes runs none of their class hooks."""
    cursors = transparency.HookedClasses(sqlite3.Cursor)
    connections = transparency.HookedClasses(sqlite3.Connection)
    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(database, factory=connections.Application)
    cursor = connection.cursor(cursors.Application)
    assert isinstance(connection, connections.Application)
    assert isinstance(cursor, cursors.Application)
    assert cursor.execute("SELECT 1").fetchone() == (1,)
    assert connection.execute("SELECT 2").fetchone() == (2,)
    assert cursors.state() == cursors.before
    assert connections.state() == connections.before
    assert meter.snapshot().queries == 2


def test_an_abstract_cursor_class_stays_abstract(meter: MeterType, database: str) -> None:
    """An abstract Cursor class refuses to make cursors, counted or not; a concrete one counts."""

    class Abstract(sqlite3.Cursor, metaclass=abc.ABCMeta):
        @abc.abstractmethod
        def first(self) -> Any: ...

    class Concrete(Abstract):
        def first(self) -> Any:
            return self.fetchone()

    raw = outcome(lambda: sqlite3.connect(database).cursor(Abstract))
    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(database)
    assert outcome(lambda: connection.cursor(Abstract)) == raw
    assert raw[:2] == ("raised", TypeError)
    cursor = connection.cursor(Concrete)
    assert isinstance(cursor, Abstract)
    assert cursor.execute("SELECT 3").first() == (3,)
    assert meter.snapshot().queries == 1


def test_a_class_that_cannot_be_subclassed_quietly_is_used_uncounted(
    meter: MeterType, database: str
) -> None:
    """A Cursor class whose metaclass has its own mro() is used as is, uncounted, with a fault."""
    ran: list[str] = []

    class OwnOrder(type):
        def mro(cls) -> list[type]:
            ran.append(cls.__name__)
            return super().mro()

    class Unusual(sqlite3.Cursor, metaclass=OwnOrder):
        pass

    ran.clear()
    before = querymeter.faults()
    dbapi.instrument(sqlite3, meter=meter)
    cursor = sqlite3.connect(database).cursor(Unusual)
    assert type(cursor) is Unusual
    assert cursor.execute("SELECT 4").fetchone() == (4,)
    assert ran == []
    assert meter.snapshot().queries == 0
    assert sum(querymeter.faults().values()) > sum(before.values())


def test_a_connection_factorys_own_cursor_default_is_kept(meter: MeterType, database: str) -> None:
    """A factory's cursor() keeps its own default; the shortcuts never call it, as sqlite3's own."""
    calls: list[Any] = []

    class RowCursor(sqlite3.Cursor):
        def __init__(self, connection: sqlite3.Connection) -> None:
            super().__init__(connection)
            self.row_factory = sqlite3.Row

    class RowConnection(sqlite3.Connection):
        def cursor(self, factory: Any = RowCursor) -> Any:  # type: ignore[override]
            calls.append(factory)
            return super().cursor(factory)

    def script() -> list[Any]:
        connection = sqlite3.connect(database, factory=RowConnection)
        cursor = connection.cursor()
        shortcut = connection.execute("SELECT 1 AS one")
        results = [
            isinstance(cursor, RowCursor),
            type(cursor.execute("SELECT 1 AS one").fetchone()),
            isinstance(connection.cursor(sqlite3.Cursor), RowCursor),
            isinstance(shortcut, RowCursor),
            type(shortcut.fetchone()),
            isinstance(connection.execute("CREATE TABLE IF NOT EXISTS item (x)"), RowCursor),
            isinstance(connection.executemany("INSERT INTO item VALUES (?)", [(1,)]), RowCursor),
            type(connection.executescript("SELECT 1;").execute("SELECT 1").fetchone()),
            len(calls),
        ]
        connection.close()
        calls.clear()
        return results

    raw = script()
    dbapi.instrument(sqlite3, meter=meter)
    assert script() == raw == [True, sqlite3.Row, False, False, tuple, False, False, tuple, 2]
    assert meter.snapshot().queries == 6


def test_driver_errors_pass_through_one_frame_of_querymeter_at_most(
    counted: sqlite3.Connection,
) -> None:
    """A driver's error reaches the caller through at most one frame of querymeter's hooks."""
    cursor = counted.cursor()
    actions = [
        lambda: counted.execute("SELEKT 1"),
        lambda: counted.executemany("SELEKT ?", [(1,)]),
        lambda: counted.executescript("SELEKT 1;"),
        lambda: cursor.execute("SELEKT 1"),
        lambda: cursor.executemany("SELEKT ?", [(1,)]),
    ]
    for action in actions:
        with pytest.raises(sqlite3.OperationalError) as caught:
            action()
        assert len(transparency.hook_frames(caught.value)) <= 1, caught.traceback
