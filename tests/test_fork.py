"""Fork under load: a child forked while other threads hold querymeter's locks runs its queries.

Each test keeps several threads busy on a path that takes one of querymeter's
locks, forks ``CHILDREN`` children from the main thread meanwhile, and has each
child run a query through the same path.  A lock that a parent's thread held
at the fork and that is not renewed in the child is never released there: the
child hangs, and is killed after ``CHILD_TIMEOUT_S``.  Every child must exit 0
in time, having counted exactly what it ran.

SQLite itself is not fork-safe under threads: a thread inside SQLite at a
fork can leave one of SQLite's own mutexes (its allocator's, its list of open
files') held for ever in the child, and plain sqlite3, without querymeter,
hangs a third of the children of such a load.  So the load's threads enter
SQLite's C code only through ``GATE``, and a fork waits until none is inside;
querymeter's code and locks all stay outside the gate.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sqlite3
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import querymeter
import querymeter.dbapi as dbapi
from querymeter import _faults
from querymeter.meter import Meter as MeterType
from querymeter.sampler import Sampler

from .servers import driver

pytestmark = pytest.mark.skipif(
    not hasattr(os, "register_at_fork"), reason="os.fork() and os.register_at_fork() are POSIX"
)

CHILDREN = 100
LOAD_THREADS = 4
CHILD_TIMEOUT_S = 10.0  # each child's, from its fork; a child is one query, a few ms
FORK_GAP_S = 0.002  # lets the load move on between two forks


@dataclass
class Outcome:
    """What became of the children: exited 0, exited otherwise, or hung and killed."""

    ok: int = 0
    failed: dict[int, int] = field(default_factory=dict)  # pid -> exit status
    hung: list[int] = field(default_factory=list)
    load_iterations: int = 0

    def check(self) -> None:
        assert (len(self.hung), self.failed) == (0, {}), (
            f"{len(self.hung)} of {CHILDREN} children hung, "
            f"{len(self.failed)} failed (pid: status): {self.failed}"
        )
        assert self.ok == CHILDREN
        # The load ran all along, so that the forks met its locks in every state.
        assert self.load_iterations >= CHILDREN


class SQLiteGate:
    """Where the parent's threads enter SQLite's C code; a fork waits until none is inside."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._condition = threading.Condition()
        self._inside = 0
        self._forking = False

    @contextlib.contextmanager
    def sqlite(self) -> Iterator[None]:
        """A block of SQLite calls (a forked child, single-threaded, passes straight through)."""
        if os.getpid() != self._pid:
            yield
            return
        with self._condition:
            while self._forking:
                self._condition.wait()
            self._inside += 1
        try:
            yield
        finally:
            with self._condition:
                self._inside -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        """No thread of this process is inside SQLite during the block."""
        with self._condition:
            self._forking = True
            while self._inside:
                self._condition.wait()
        try:
            yield
        finally:
            if os.getpid() == self._pid:
                with self._condition:
                    self._forking = False
                    self._condition.notify_all()


GATE = SQLiteGate()


def gated_sqlite3_classes() -> tuple[type[sqlite3.Connection], type[sqlite3.Cursor]]:
    """New application classes of sqlite3's that enter SQLite only through the gate."""

    class Cursor(sqlite3.Cursor):
        def execute(self, *args: Any) -> Any:
            with GATE.sqlite():
                return super().execute(*args)

        def executemany(self, *args: Any) -> Any:
            with GATE.sqlite():
                return super().executemany(*args)

        def fetchone(self) -> Any:
            with GATE.sqlite():
                return super().fetchone()

        def fetchmany(self, *args: Any) -> Any:
            with GATE.sqlite():
                return super().fetchmany(*args)

        def fetchall(self) -> Any:
            with GATE.sqlite():
                return super().fetchall()

        def close(self) -> None:
            with GATE.sqlite():
                super().close()

    class Connection(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with GATE.sqlite():
                super().__init__(*args, **kwargs)

        def cursor(self, factory: Any = Cursor) -> Any:
            return super().cursor(factory)

        def create_function(self, *args: Any, **kwargs: Any) -> None:
            with GATE.sqlite():
                super().create_function(*args, **kwargs)

        def commit(self) -> None:
            with GATE.sqlite():
                super().commit()

        def rollback(self) -> None:
            with GATE.sqlite():
                super().rollback()

        def close(self) -> None:
            with GATE.sqlite():
                super().close()

    return Connection, Cursor


def fork_under_load(
    load: Callable[[int], None], in_child: Callable[[], bool], threads: int = LOAD_THREADS
) -> Outcome:
    """Run ``load(thread_number)`` in a loop in ``threads`` threads; fork CHILDREN children
    that each return ``in_child()`` as their exit status (0 if true); reap them."""
    stop = threading.Event()
    iterations = [0] * threads
    failures: list[BaseException] = []

    def loop(number: int) -> None:
        try:
            while not stop.is_set():
                load(number)
                iterations[number] += 1
        except BaseException as exc:  # reported by the test, in the parent
            failures.append(exc)

    workers = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    children: dict[int, float] = {}
    try:
        while min(iterations) == 0 and not failures:
            time.sleep(0.001)
        for _ in range(CHILDREN):
            pid = _fork()
            if pid == 0:
                _run_child(in_child)
            children[pid] = time.monotonic() + CHILD_TIMEOUT_S
            time.sleep(FORK_GAP_S)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        outcome = _reap(children)
    if failures:
        raise failures[0]
    outcome.load_iterations = sum(iterations)
    return outcome


def _fork() -> int:
    with warnings.catch_warnings(), GATE.closed():
        # Python 3.12 warns that fork() with threads may deadlock the child:
        # that is what these tests check does not happen.
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _run_child(in_child: Callable[[], bool]) -> None:
    """In the child: never return into pytest, exit with the outcome."""
    status = 2
    try:
        # An orphan (the parent died) must not hang for ever either.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(int(CHILD_TIMEOUT_S) + 10)
        # Where a child hangs, on stderr, shortly before the parent kills it.
        faulthandler.dump_traceback_later(CHILD_TIMEOUT_S - 1)
        status = 0 if in_child() else 1
    except BaseException:
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode())
    finally:
        os._exit(status)


def _reap(children: dict[int, float]) -> Outcome:
    outcome = Outcome()
    while children:
        for pid, deadline in list(children.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del children[pid]
                code = os.waitstatus_to_exitcode(status)
                if code == 0:
                    outcome.ok += 1
                else:
                    outcome.failed[pid] = code
            elif time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                del children[pid]
                outcome.hung.append(pid)
        time.sleep(0.005)
    return outcome


def queries_in_child(meter: MeterType, expected: int) -> bool:
    """The child's meter started from zero at the fork: it holds what the child ran."""
    snap = meter.snapshot()
    return (snap.queries, snap.errors, snap.concurrency) == (expected, 0, 0)


# ------------------------------------------------------------ querymeter.dbapi


def query_through_new_classes(statements: int = 1) -> None:
    """Connect and query through new factory classes: each counted class is made under a lock."""
    connection_class, cursor_class = gated_sqlite3_classes()
    connection = sqlite3.connect(":memory:", factory=connection_class)
    try:
        cursor = connection.cursor(cursor_class)
        for _ in range(statements):
            cursor.execute("SELECT 1")
        cursor.close()
    finally:
        connection.close()


@pytest.fixture
def instrumented_sqlite3(meter: MeterType) -> Iterator[MeterType]:
    """sqlite3 instrumented with the meter under test, uninstrumented afterwards."""
    dbapi.instrument(sqlite3, meter=meter)
    yield meter
    dbapi.uninstrument(sqlite3)


@pytest.fixture
def meter(Meter: type[MeterType]) -> MeterType:
    """A fresh meter of the core under test."""
    return Meter()


def test_dbapi_queries_fork_under_load(instrumented_sqlite3: MeterType) -> None:
    """Children forked while threads connect and query through querymeter.dbapi run theirs."""
    meter = instrumented_sqlite3

    def in_child() -> bool:
        query_through_new_classes(statements=2)
        return queries_in_child(meter, 2)

    fork_under_load(lambda _: query_through_new_classes(), in_child).check()


# ------------------------------------------------------------------ faults


class RaisingClock:
    """A clock that raises, so that every reading is a fault reported by the core."""

    def __call__(self) -> int:
        raise RuntimeError("clock unplugged")


def test_fault_reports_fork_under_load(Meter: type[MeterType]) -> None:
    """Children forked while threads report faults report theirs, counted, and go on."""
    faulty = Meter(clock=RaisingClock())
    cause = "clock raised"
    before = querymeter.faults().get(cause, 0)
    with faulty.track():
        pass
    faults_per_query = querymeter.faults()[cause] - before
    assert faults_per_query >= 1

    def load(_: int) -> None:
        with faulty.track():
            pass

    def in_child() -> bool:
        before = _faults.counts()[cause]
        with faulty.track():
            pass
        counted = _faults.counts()[cause] - before == faults_per_query
        return counted and faulty.snapshot().queries == 1

    fork_under_load(load, in_child).check()


# ------------------------------------------------------- instrument, uninstrument


def test_instrument_and_uninstrument_fork_under_load(meter: MeterType, tmp_path: Path) -> None:
    """Children forked while threads instrument and uninstrument drivers and engines do both."""
    sqlalchemy = driver("sqlalchemy")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    # One thread toggles each driver, so that no two undo each other's patches.
    modules = [sqlite3, driver("psycopg2"), driver("pymysql")]
    engines = [sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'load.db'}") for _ in range(2)]

    def load(number: int) -> None:
        if number < len(modules):
            dbapi.instrument(modules[number], meter=meter)
            dbapi.uninstrument(modules[number])
        else:
            engine = engines[number - len(modules)]
            qs.instrument(engine, meter=meter)
            qs.uninstrument(engine)

    def in_child() -> bool:
        dbapi.uninstrument(sqlite3)
        dbapi.instrument(sqlite3, meter=meter)
        query_through_new_classes()
        dbapi.uninstrument(sqlite3)
        engine = sqlalchemy.create_engine("sqlite://")
        qs.instrument(engine, meter=meter)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        qs.uninstrument(engine)
        return queries_in_child(meter, 2)

    try:
        outcome = fork_under_load(load, in_child, threads=len(modules) + len(engines))
    finally:
        for module in modules:
            dbapi.uninstrument(module)
        for engine in engines:
            qs.uninstrument(engine)
            engine.dispose()
    outcome.check()


# ----------------------------------------------------------------- SQLAlchemy


def test_sqlalchemy_engine_queries_fork_under_load(meter: MeterType, tmp_path: Path) -> None:
    """Children forked while threads query an instrumented engine query it too, after
    ``engine.dispose(close=False)`` as SQLAlchemy asks of a forked child."""
    sqlalchemy = driver("sqlalchemy")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    connection_class, _ = gated_sqlite3_classes()
    path = tmp_path / "engine.db"

    def creator() -> sqlite3.Connection:
        return sqlite3.connect(path, factory=connection_class, check_same_thread=False)

    engine = sqlalchemy.create_engine(
        "sqlite://",
        creator=creator,
        poolclass=sqlalchemy.pool.QueuePool,
        pool_size=LOAD_THREADS,
        max_overflow=0,
    )
    qs.instrument(engine, meter=meter)

    def query(_: int = 0) -> None:
        with engine.connect() as connection:
            # Fetched and closed: the driver's cursor is closed through the gate.
            assert connection.exec_driver_sql("SELECT 1").scalar() == 1

    def in_child() -> bool:
        engine.dispose(close=False)  # the parent's connections are the parent's
        query()
        return queries_in_child(meter, 1)

    try:
        # Every connection of the pool open before the load: the threads only
        # check out, query and check in.
        held = [engine.connect() for _ in range(LOAD_THREADS)]
        for connection in held:
            connection.close()
        outcome = fork_under_load(query, in_child)
    finally:
        qs.uninstrument(engine)
        engine.dispose()
    outcome.check()


# ------------------------------------------------------------------- Sampler


def test_a_sampler_fork_under_load(meter: MeterType) -> None:
    """Children forked while a sampler runs and threads read it find it stopped, and sample anew."""
    sampler = Sampler(meter, period=0.0005).start()

    def load(_: int) -> None:
        sampler.intervals()
        sampler.latest()
        with meter.track():
            pass

    def in_child() -> bool:
        sampler.intervals()
        stopped = not sampler.running and list(sampler) == sampler.intervals()
        sampler.stop()
        with Sampler(meter, period=0.001) as fresh:
            with meter.track():
                pass
            while fresh.latest() is None:
                time.sleep(0.001)
        return stopped and queries_in_child(meter, 1)

    try:
        outcome = fork_under_load(load, in_child)
    finally:
        sampler.stop()
    outcome.check()


def test_statements_and_sampling_fork_under_load(instrumented_sqlite3: MeterType) -> None:
    """Children forked while threads run new and repeated statements, take readings and
    samples, start with a table and a sample log of their own, empty, as their counters."""
    meter = instrumented_sqlite3
    meter.enable_statements(max_statements=50)
    meter.enable_sampling(rate=0.5, capacity=100)
    # Through sqlite3 classes gated against the fork: a child forked while
    # another thread is inside SQLite would inherit SQLite's own mutex held.
    connection_class, cursor_class = gated_sqlite3_classes()
    connections = [
        sqlite3.connect(":memory:", factory=connection_class, check_same_thread=False)
        for _ in range(3)
    ]

    def load(number: int) -> None:
        cursor = connections[number].cursor(cursor_class)
        cursor.execute(f"SELECT {number} + ?, 'text{time.monotonic_ns()}'", (1,))
        cursor.execute("SELECT 1")
        assert meter.statements is not None
        meter.statements.snapshot()
        meter.samples()

    def in_child() -> bool:
        table, log = meter.statements, meter.sampling
        if table is None or log is None or len(table) or len(log) or meter.samples():
            return False
        connection = sqlite3.connect(":memory:")
        for _ in range(3):
            connection.execute("SELECT 2")
        reading = table.snapshot()
        return (
            table.max_statements == 50
            and [(row.fingerprint, row.calls) for row in reading] == [("select ?", 3)]
            and reading.calls == meter.snapshot().queries == 3
            and len(log) <= 3
        )

    try:
        outcome = fork_under_load(load, in_child, threads=3)
    finally:
        for connection in connections:
            connection.close()
    outcome.check()


# ------------------------------------------------------- every lock at once


def test_a_child_forked_while_every_lock_is_held_renews_them_all(
    instrumented_sqlite3: MeterType,
) -> None:
    """A child forked while another thread holds every lock of querymeter's runs every path."""
    qs = pytest.importorskip("querymeter.sqlalchemy")
    sqlalchemy = driver("sqlalchemy")
    from querymeter.dbapi import _classes, _connections, _sqlite3

    meter = instrumented_sqlite3
    engine = sqlalchemy.create_engine("sqlite://")
    sampler = Sampler(meter, period=60)
    locks = [
        _faults._lock,
        dbapi._lock,
        _classes._classes_lock,
        _connections._connection_meters._lock,
        _sqlite3.connection_class._lock,
        qs._lock,
        sampler._condition,
    ]
    held, release = threading.Event(), threading.Event()

    def hold_every_lock() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            held.set()
            release.wait()

    def in_child() -> bool:
        _faults.report("test cause reported in a forked child")
        query_through_new_classes()  # a connection class, a cursor class, a connection's meter
        dbapi.uninstrument(sqlite3)
        qs.instrument(engine, meter=meter)
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        qs.uninstrument(engine)
        with meter.track():
            sampler.intervals()
        counted = _faults.counts()["test cause reported in a forked child"] == 1
        return counted and queries_in_child(meter, 3)

    holder = threading.Thread(target=hold_every_lock, daemon=True)
    holder.start()
    try:
        assert held.wait(10)
        pid = _fork()
        if pid == 0:
            _run_child(in_child)
    finally:
        release.set()
        holder.join()
        engine.dispose()
    outcome = _reap({pid: time.monotonic() + CHILD_TIMEOUT_S})
    assert (outcome.ok, outcome.failed, outcome.hung) == (1, {}, [])
