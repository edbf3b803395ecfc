"""Query observers: the core calls them with each query it counted, after its end."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

import querymeter
from querymeter import dbapi
from querymeter.meter import Meter as MeterType
from querymeter.meter import _observing, add_query_observer, remove_query_observer

from .conftest import FakeClock

MS = 1_000_000


class Calls:
    """An observer that keeps its calls: (sql, dialect, elapsed_ns, error, error_type)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(
        self, sql: Any, dialect: Any, elapsed_ns: int, error: bool, error_type: Any
    ) -> None:
        self.calls.append((sql, dialect, elapsed_ns, error, error_type))


class Raising:
    """An observer that raises ``exc`` at every call."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.calls = 0

    def __call__(self, *args: Any) -> None:
        self.calls += 1
        raise self.exc


@pytest.fixture
def connection(Meter: type[MeterType]) -> Iterator[tuple[MeterType, sqlite3.Connection]]:
    """A meter of the core under test and a SQLite connection counted into it."""
    meter = Meter()
    counted = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    yield meter, counted
    counted.close()


def test_each_counted_query_is_observed_after_its_end(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """The observer gets each query's exact elapsed time, its text where the shape has one,
    and whether it failed, with the class of the exception that ended it."""
    observer = Calls()
    add_query_observer(fake_meter, observer)
    token = fake_meter.begin()
    clock.advance(3 * MS)
    assert fake_meter.end(token) == 3 * MS
    with fake_meter.track("SELECT 1"):
        clock.advance(5 * MS)
    with pytest.raises(KeyError), fake_meter.track("SELECT 2"):
        clock.advance(7 * MS)
        raise KeyError("the application's")
    token = fake_meter.begin()
    clock.advance(11 * MS)
    fake_meter.end(token, error=True)
    assert observer.calls == [
        (None, None, 3 * MS, False, None),
        ("SELECT 1", None, 5 * MS, False, None),
        ("SELECT 2", None, 7 * MS, True, KeyError),
        # An error that was not an exception: no class to give.
        (None, None, 11 * MS, True, None),
    ]
    snapshot = fake_meter.snapshot()
    assert snapshot.queries == len(observer.calls)
    assert snapshot.total_ns == sum(call[2] for call in observer.calls)


def test_sqlite3_statements_reach_the_observer_with_their_dialect(
    connection: tuple[MeterType, sqlite3.Connection],
) -> None:
    """cursor.execute, executemany, executescript and the connection's shortcuts all pass
    their text and the dialect "sqlite"; a failed one its sqlite3 exception class."""
    meter, counted = connection
    observer = Calls()
    add_query_observer(meter, observer)
    cursor = counted.cursor()
    cursor.execute("CREATE TABLE t (a)")
    cursor.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    counted.execute("SELECT a FROM t")
    cursor.executescript("DELETE FROM t;")
    with pytest.raises(sqlite3.OperationalError):
        cursor.execute("SELECT * FROM missing")
    assert [(sql, dialect, error, kind) for sql, dialect, _, error, kind in observer.calls] == [
        ("CREATE TABLE t (a)", "sqlite", False, None),
        ("INSERT INTO t VALUES (?)", "sqlite", False, None),
        ("SELECT a FROM t", "sqlite", False, None),
        ("DELETE FROM t;", "sqlite", False, None),
        ("SELECT * FROM missing", "sqlite", True, sqlite3.OperationalError),
    ]
    assert meter.snapshot().queries == 5
    assert all(elapsed > 0 for _, _, elapsed, _, _ in observer.calls)


def test_an_observer_that_raises_is_a_fault_and_the_drivers_exception_is_unchanged(
    connection: tuple[MeterType, sqlite3.Connection],
) -> None:
    """Its exceptions are counted faults, never raised; the driver's exception reaches the
    caller as the same object, with no context added, and the query is counted."""
    meter, counted = connection
    failing = Raising(RuntimeError("the observer's own"))
    add_query_observer(meter, failing)
    cause = "could not call a query observer"
    before = querymeter.faults().get(cause, 0)
    assert counted.execute("SELECT 1").fetchall() == [(1,)]
    raised: list[BaseException] = []
    cursor = counted.cursor()
    try:
        cursor.execute("SELECT * FROM missing")
    except sqlite3.OperationalError as exc:
        raised.append(exc)
    assert len(raised) == 1
    assert str(raised[0]) == "no such table: missing"
    assert raised[0].__context__ is None
    assert querymeter.faults()[cause] == before + 2
    assert failing.calls == 2
    snapshot = meter.snapshot()
    assert (snapshot.queries, snapshot.errors, snapshot.concurrency) == (2, 1, 0)


def test_an_interrupt_in_the_observer_is_the_applications(fake_meter: MeterType) -> None:
    """A KeyboardInterrupt from the observer propagates, after the query has ended; on a
    failed query it is chained to the driver's exception."""
    add_query_observer(fake_meter, Raising(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        fake_meter.tracked(lambda: None)()
    driver_error = ValueError("the driver's")

    def failing() -> None:
        raise driver_error

    with pytest.raises(KeyboardInterrupt) as caught:
        fake_meter.tracked(failing)()
    assert caught.value.__context__ is driver_error
    snapshot = fake_meter.snapshot()
    assert (snapshot.queries, snapshot.errors, snapshot.concurrency) == (2, 1, 0)


def test_several_observers_are_each_called_and_one_fault_spares_the_others(
    connection: tuple[MeterType, sqlite3.Connection],
) -> None:
    """Two observers both see every query; a raising one between them is a fault."""
    meter, counted = connection
    first, last = Calls(), Calls()
    failing = Raising(RuntimeError("in the middle"))
    for observer in (first, failing, last):
        add_query_observer(meter, observer)
    cause = "could not call a query observer"
    before = querymeter.faults().get(cause, 0)
    counted.execute("SELECT 1")
    counted.execute("SELECT 2")
    assert [call[0] for call in first.calls] == ["SELECT 1", "SELECT 2"]
    assert last.calls == first.calls
    assert querymeter.faults()[cause] == before + 2
    assert remove_query_observer(meter, failing) is True
    assert remove_query_observer(meter, failing) is False
    counted.execute("SELECT 3")
    assert len(first.calls) == len(last.calls) == 3
    assert failing.calls == 2


def test_removing_the_last_observer_stops_the_calls(
    connection: tuple[MeterType, sqlite3.Connection],
) -> None:
    """After remove_query_observer() the observer is not called, and the meter has none."""
    meter, counted = connection
    observer = Calls()
    add_query_observer(meter, observer)
    counted.execute("SELECT 1")
    assert remove_query_observer(meter, observer) is True
    counted.execute("SELECT 2")
    assert [call[0] for call in observer.calls] == ["SELECT 1"]
    assert _observing(meter).observers == ()
    assert meter.snapshot().queries == 2


def test_observers_live_beside_statements_and_sampling(
    connection: tuple[MeterType, sqlite3.Connection],
) -> None:
    """Enabling and disabling the statement table and sampling keeps the observer, and
    the observer does not change what they record."""
    meter, counted = connection
    observer = Calls()
    add_query_observer(meter, observer)
    table = meter.enable_statements()
    meter.enable_sampling(rate=1.0)
    counted.execute("SELECT 1")
    meter.disable_sampling()
    meter.disable_statements()
    counted.execute("SELECT 2")
    assert [call[0] for call in observer.calls] == ["SELECT 1", "SELECT 2"]
    assert table.snapshot().calls == 1
    assert [sample.sql for sample in meter.samples()] == ["SELECT 1"]


def test_an_uncounted_query_is_not_observed(
    connection: tuple[MeterType, sqlite3.Connection],
) -> None:
    """While the kill switch is off nothing is counted, so nothing is observed."""
    meter, counted = connection
    observer = Calls()
    add_query_observer(meter, observer)
    querymeter.disable()
    try:
        counted.execute("SELECT 1")
    finally:
        querymeter.enable()
    counted.execute("SELECT 2")
    assert [call[0] for call in observer.calls] == ["SELECT 2"]


def test_a_cancelled_coroutine_is_observed_as_an_error(fake_meter: MeterType) -> None:
    """A tracked coroutine cancelled mid-way is observed as failed with CancelledError."""
    observer = Calls()
    add_query_observer(fake_meter, observer)

    @fake_meter.tracked
    async def query() -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.ensure_future(query())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [(call[3], call[4]) for call in observer.calls] == [(True, asyncio.CancelledError)]


@pytest.mark.parametrize("observer", [None, 42, "print"])
def test_an_observer_must_be_callable(Meter: type[MeterType], observer: Any) -> None:
    """add_query_observer refuses what cannot be called, naming its type."""
    meter = Meter()
    if observer is None:
        with pytest.raises(TypeError, match="observer must be callable, not NoneType"):
            add_query_observer(meter, observer)
    else:
        with pytest.raises(
            TypeError, match=f"observer must be callable, not {type(observer).__name__}"
        ):
            add_query_observer(meter, observer)
    with pytest.raises(TypeError, match="observer must be callable or None"):
        meter._observe(None, None, 42)
    assert _observing(meter).observers == ()


FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from querymeter.meter import add_query_observer, meter_class, remove_query_observer

    meter = meter_class(sys.argv[1])()
    kept, removed = [], []
    add_query_observer(meter, lambda *call: kept.append(call[0]))
    dropped = lambda *call: removed.append(call[0])
    add_query_observer(meter, dropped)
    with meter.track("before the fork"):
        pass
    remove_query_observer(meter, dropped)
    in_flight = meter.begin()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        meter.end(in_flight)   # the parent's query: not counted here, so not observed
        with meter.track("in the child"):
            pass
        os.write(write_end, json.dumps({"kept": kept, "removed": removed}).encode())
        os._exit(0)
    os.close(write_end)
    child = json.loads(os.read(read_end, 65536))
    os.waitpid(pid, 0)
    meter.end(in_flight)
    print(json.dumps({"child": child, "parent": {"kept": kept, "removed": removed}}))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")
def test_a_forked_child_keeps_the_observers_it_had_at_the_fork(implementation: str) -> None:
    """As the statement table and sampling go on in a child, so do the observers present at
    the fork; one removed before is not there, and the parent's query in flight is not
    observed in the child."""
    # A fresh interpreter: forking this multi-threaded test process is unsafe.
    output = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, implementation],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    result = json.loads(output)
    assert result["child"] == {
        "kept": ["before the fork", "in the child"],
        "removed": ["before the fork"],
    }
    assert result["parent"] == {"kept": ["before the fork", None], "removed": ["before the fork"]}
