"""SQLite: exact counts for Core and ORM against the driver's calls, failures, late errors, pings.

The oracle is independent of querymeter: a sqlite3 cursor subclass, handed to
SQLAlchemy through ``creator=``, that counts its own execute and executemany calls.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import querymeter.dbapi as dbapi
import querymeter.sqlalchemy as qs
from querymeter.meter import Meter as MeterType

from ..servers import driver

sqlalchemy = driver("sqlalchemy")
orm = driver("sqlalchemy.orm")
event = sqlalchemy.event
Column, Integer, String, Table = (
    sqlalchemy.Column,
    sqlalchemy.Integer,
    sqlalchemy.String,
    sqlalchemy.Table,
)
PAGE_SIZE = 2  # insertmanyvalues rows per batch: 5 rows make 3 batches


class DriverCalls:
    """What the driver was asked to do: the oracle."""

    def __init__(self) -> None:
        self.calls = 0


def counting_creator(path: Path, calls: DriverCalls) -> Callable[[], sqlite3.Connection]:
    class CountingCursor(sqlite3.Cursor):
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            calls.calls += 1
            return super().execute(*args, **kwargs)

        def executemany(self, *args: Any, **kwargs: Any) -> Any:
            calls.calls += 1
            return super().executemany(*args, **kwargs)

    class CountingConnection(sqlite3.Connection):
        def cursor(self, factory: Any = CountingCursor) -> Any:
            return super().cursor(factory)

    def create() -> sqlite3.Connection:
        return sqlite3.connect(path, factory=CountingConnection, check_same_thread=False)

    return create


@pytest.fixture
def oracle() -> DriverCalls:
    return DriverCalls()


@pytest.fixture
def engine(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path, oracle: DriverCalls
) -> Iterator[Any]:
    """An instrumented SQLite file engine whose driver calls the oracle counts; warmed up."""
    engine = make_engine(
        "sqlite://",
        creator=counting_creator(tmp_path / "test.db", oracle),
        insertmanyvalues_page_size=PAGE_SIZE,
    )
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
        connection.commit()
    yield engine


def counted(meter: MeterType, oracle: DriverCalls) -> tuple[int, int]:
    return meter.snapshot().queries, oracle.calls


def test_core_statements_count_once_each(
    engine: Any, meter: MeterType, oracle: DriverCalls
) -> None:
    """executemany is one query, each insertmanyvalues batch one, selects and updates one each."""
    metadata = sqlalchemy.MetaData()
    item = Table("item", metadata, Column("id", Integer, primary_key=True), Column("name", String))
    queries, calls = counted(meter, oracle)
    with engine.begin() as connection:
        connection.execute(item.insert(), [{"name": f"n{n}"} for n in range(4)])  # executemany
        returned = connection.execute(
            item.insert().returning(item.c.id), [{"name": f"r{n}"} for n in range(5)]
        )  # insertmanyvalues: 3 batches
        assert len(returned.all()) == 5
        assert connection.scalar(sqlalchemy.select(sqlalchemy.func.count()).select_from(item)) == 9
        connection.execute(item.update().where(item.c.id < 3).values(name="u"))
        connection.execute(sqlalchemy.text("DELETE FROM item WHERE name = :name"), {"name": "u"})
        connection.exec_driver_sql("SELECT 1", execution_options={"no_parameters": True})
    snap = meter.snapshot()
    assert (snap.queries - queries, oracle.calls - calls) == (8, 8)
    assert (snap.errors, snap.concurrency) == (0, 0)


def test_orm_session_statements_count_once_each(
    engine: Any, meter: MeterType, oracle: DriverCalls
) -> None:
    """An ORM flush of 5 new objects is 5 batches; query, update and delete are one each."""

    class Base(orm.DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "item"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str | None]

    queries, calls = counted(meter, oracle)
    with orm.Session(engine) as session:
        session.add_all([Item(name=f"n{n}") for n in range(5)])
        # insertmanyvalues with RETURNING for the keys, one row per batch: SQLite
        # does not promise RETURNING rows in the order of the parameters.
        session.flush()
        items = session.scalars(sqlalchemy.select(Item).order_by(Item.id)).all()
        assert [item.name for item in items] == [f"n{n}" for n in range(5)]
        items[0].name = "renamed"
        session.flush()  # one UPDATE
        session.delete(items[1])
        session.commit()  # one DELETE
    snap = meter.snapshot()
    assert (snap.queries - queries, oracle.calls - calls) == (8, 8)
    assert (snap.errors, snap.concurrency) == (0, 0)


def test_failures_count_as_errors_and_reach_the_caller(engine: Any, meter: MeterType) -> None:
    """A failing statement and a failing executemany are errors; the driver's exception is kept."""
    before = meter.snapshot()
    with engine.connect() as connection:
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:
            connection.exec_driver_sql("SELECT * FROM missing")
        assert isinstance(caught.value.orig, sqlite3.OperationalError)
        connection.rollback()
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            connection.exec_driver_sql(
                "INSERT INTO item (id, name) VALUES (?, ?)", [(1, "a"), (1, "b")]
            )
    interval = meter.snapshot() - before
    assert (interval.queries, interval.errors, interval.later.concurrency) == (2, 2, 0)


def test_the_drivers_exception_object_passes_through_unchanged(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """The exception the dialect's do_execute raised is the very one SQLAlchemy wraps."""
    engine = make_engine("sqlite://")
    raised: list[BaseException] = []
    original = engine.dialect.do_execute

    def spy(cursor: Any, statement: str, parameters: Any, context: Any = None) -> Any:
        try:
            return original(cursor, statement, parameters, context)
        except BaseException as exc:
            raised.append(exc)
            raise

    engine.dialect.do_execute = spy  # below querymeter's wrapper
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection, pytest.raises(sqlalchemy.exc.OperationalError) as caught:
        connection.exec_driver_sql("SELECT * FROM missing")
    assert caught.value.orig is raised[0]
    assert meter.snapshot().errors == 1


def test_an_error_after_after_cursor_execute_is_not_counted_again(
    engine: Any, meter: MeterType
) -> None:
    """handle_error after after_cursor_execute (a raising listener) leaves one query, balanced."""
    failure = RuntimeError("after_cursor_execute listener failed")

    def fail(*args: Any) -> None:
        raise failure

    event.listen(engine, "after_cursor_execute", fail)
    errors: list[Any] = []
    event.listen(engine, "handle_error", errors.append)
    before = meter.snapshot()
    try:
        with engine.connect() as connection, pytest.raises(RuntimeError) as caught:
            connection.exec_driver_sql("SELECT 1")
    finally:
        event.remove(engine, "after_cursor_execute", fail)
    assert caught.value is failure
    assert len(errors) == 1  # SQLAlchemy did fire handle_error, after after_cursor_execute
    interval = meter.snapshot() - before
    assert (interval.queries, interval.errors, interval.later.concurrency) == (1, 0, 0)


def test_a_failing_post_exec_is_not_counted_again(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """An execution context whose post_exec raises after the statement ran: one query, balanced."""
    engine = make_engine("sqlite://")
    failure = RuntimeError("post_exec failed")

    class FailingContext(engine.dialect.execution_ctx_cls):  # type: ignore[name-defined,misc]
        def post_exec(self) -> None:
            if self.statement == "SELECT 'fail in post_exec'":
                raise failure

    engine.dialect.execution_ctx_cls = FailingContext
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        before = meter.snapshot()
        with pytest.raises(RuntimeError) as caught:
            connection.exec_driver_sql("SELECT 'fail in post_exec'")
        interval = meter.snapshot() - before
    assert caught.value is failure
    assert (interval.queries, interval.errors, interval.later.concurrency) == (1, 0, 0)


def test_a_pre_ping_counts_as_a_query(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """With pool_pre_ping, each checkout of a pooled connection pings: one more query each."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ping.db'}", pool_pre_ping=True)
    qs.instrument(engine, meter=meter)
    with engine.connect():
        pass  # a fresh connection is not pinged
    before = meter.snapshot()
    for _ in range(3):
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    interval = meter.snapshot() - before
    assert (interval.queries, interval.errors) == (6, 0)


def test_dispose_keeps_the_pool_accounted(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """After engine.dispose(), the new pool is wrapped and counts into the same pool figures."""
    engine = make_engine(f"sqlite:///{tmp_path / 'dispose.db'}", pool_size=2)
    qs.instrument(engine, meter=meter)
    straggler = engine.connect()  # checked out across dispose()
    old_pool = engine.pool
    engine.dispose()
    assert engine.pool is not old_pool and "connect" in vars(engine.pool)
    before = qs.pool_snapshot(engine)
    assert before.in_use == 1
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
        during = qs.pool_snapshot(engine)
    straggler.close()
    after = qs.pool_snapshot(engine)
    assert (during.in_use, during.idle, after.in_use, after.idle) == (2, 0, 0, 1)
    interval = after - before
    assert (interval.checkouts, interval.creations, interval.releases) == (1, 1, 2)
    qs.uninstrument(engine)
    assert "connect" not in vars(engine.pool) and "connect" not in vars(old_pool)


# ------------------------------------------------------- with querymeter.dbapi


def test_dbapi_and_engine_on_one_meter_count_each_statement_once(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """sqlite3 instrumented with the engine's meter: the engine counts, the driver stands down."""
    dbapi.instrument(sqlite3, meter=meter)
    engine = make_engine(f"sqlite:///{tmp_path / 'once.db'}")
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        before = meter.snapshot().queries
        for _ in range(3):
            connection.exec_driver_sql("SELECT 1")
        assert meter.snapshot().queries == before + 3
        assert dbapi.meter_of(raw) is None
    qs.uninstrument(engine)
    # Given back: the driver counts the connection again, once.
    assert dbapi.meter_of(raw) is meter
    with engine.connect() as connection:
        before = meter.snapshot().queries
        connection.exec_driver_sql("SELECT 1")
        assert meter.snapshot().queries == before + 1


def test_dbapi_and_engine_on_two_meters_count_once_in_each(
    Meter: type[MeterType], make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """sqlite3 instrumented with another meter: each meter counts every statement once."""
    driver_meter, engine_meter = Meter(), Meter()
    dbapi.instrument(sqlite3, meter=driver_meter)
    engine = make_engine(f"sqlite:///{tmp_path / 'twice.db'}")
    qs.instrument(engine, meter=engine_meter)
    with engine.connect() as connection:
        before = driver_meter.snapshot().queries, engine_meter.snapshot().queries
        for _ in range(3):
            connection.exec_driver_sql("SELECT 1")
        after = driver_meter.snapshot().queries, engine_meter.snapshot().queries
    assert (after[0] - before[0], after[1] - before[1]) == (3, 3)


def test_invalidations_and_a_failed_reconnect_are_counted_and_in_use_never_goes_negative(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """Hard and soft invalidations are counted; a failed reconnect (a checkin without a checkout)
    is a creation failure and a checkout failure, and leaves nothing in use."""
    from sqlalchemy.pool import QueuePool

    unreachable = False

    def creator() -> sqlite3.Connection:
        if unreachable:
            raise sqlite3.OperationalError("simulated: the database cannot be opened")
        return sqlite3.connect(tmp_path / "reconnect.db", check_same_thread=False)

    engine = make_engine(
        "sqlite://", creator=creator, poolclass=QueuePool, pool_size=1, max_overflow=0
    )
    qs.instrument(engine, meter=meter)
    before = qs.pool_snapshot(engine)
    with engine.connect() as connection:
        connection.connection.invalidate(soft=True)
    with engine.connect() as connection:
        connection.invalidate()
    unreachable = True
    with pytest.raises(sqlalchemy.exc.OperationalError, match="simulated"):
        engine.connect()
    failed = qs.pool_snapshot(engine)
    unreachable = False
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
        held = qs.pool_snapshot(engine)
    interval = failed - before
    assert (interval.invalidations, interval.soft_invalidations) == (1, 1)
    assert (interval.creation_failures, interval.checkout_failures, interval.checkouts) == (1, 1, 2)
    # The first connection, then its replacement after the soft invalidation.
    assert interval.creations == 2
    assert (failed.in_use, held.in_use, qs.pool_snapshot(engine).in_use) == (0, 1, 0)


def test_a_connection_dropped_without_close_is_released_when_collected(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """A connection the application drops unclosed counts as released once the collector ends it."""
    import gc

    engine = make_engine(f"sqlite:///{tmp_path / 'dropped.db'}")
    qs.instrument(engine, meter=meter)
    connection = engine.connect()
    assert qs.pool_snapshot(engine).in_use == 1
    del connection
    gc.collect()
    after = qs.pool_snapshot(engine)
    assert (after.in_use, after.releases, after.idle) == (0, 1, 1)


# ------------------------------------------------------ class-level patches

# One call of each statement method, on an engine whose pooled connection is open.
TRIGGERS: dict[str, Callable[[Any], None]] = {
    "do_execute": lambda engine: _on_a_connection(engine, "SELECT 1"),
    "do_executemany": lambda engine: _on_a_connection(
        engine, "INSERT INTO item (name) VALUES (?)", [("a",), ("b",)]
    ),
    "do_execute_no_params": lambda engine: _on_a_connection(
        engine, "SELECT 1", execution_options={"no_parameters": True}
    ),
    "do_ping": lambda engine: engine.connect().close(),  # pool_pre_ping: one ping
}
PATCH_KINDS = ("function", "mock", "staticmethod")


def _on_a_connection(engine: Any, sql: str, *args: Any, **kwargs: Any) -> None:
    with engine.connect() as connection:
        connection.exec_driver_sql(sql, *args, **kwargs)
        connection.rollback()


def pooled_engine(make_engine: Callable[..., Any], path: Path, name: str = "do_execute") -> Any:
    """A SQLite file engine, its table made, its one connection pooled; pinging for do_ping."""
    engine = make_engine(f"sqlite:///{path}", pool_pre_ping=name == "do_ping")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, name)")
    return engine


@contextlib.contextmanager
def class_patch(kind: str, cls: type, name: str, dialect: Any) -> Iterator[mock.Mock]:
    """``mock.patch.object(cls, name, ...)`` whose spy calls the original for ``dialect``.

    ``function``: an autospecced function, bound like a method (it gets the
    dialect); ``mock``: a Mock, which is no descriptor (it does not);
    ``staticmethod``: a Mock in a staticmethod (it does not either).
    """
    original = getattr(cls, name)  # the function, unbound
    if kind == "function":
        with mock.patch.object(cls, name, autospec=True, side_effect=original) as spy:
            yield spy
        return
    spy = mock.Mock(side_effect=lambda *args: original(dialect, *args))
    new = spy if kind == "mock" else staticmethod(spy)
    with mock.patch.object(cls, name, new):
        yield spy


def call_shapes(spy: mock.Mock) -> list[tuple[str, ...]]:
    """The types of the arguments of each call the spy saw."""
    return [tuple(type(arg).__name__ for arg in call.args) for call in spy.call_args_list]


@pytest.mark.parametrize("kind", PATCH_KINDS)
@pytest.mark.parametrize("name", list(TRIGGERS))
def test_a_class_level_patch_made_after_instrumenting_runs_and_is_counted_once(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path, name: str, kind: str
) -> None:
    """A class-level patch of a statement method, made after instrument(), is called as on a
    plain engine, each call counted once; once undone, the dialect's own method runs again."""
    plain = pooled_engine(make_engine, tmp_path / "plain.db", name)
    engine = pooled_engine(make_engine, tmp_path / "counted.db", name)
    qs.instrument(engine, meter=meter)
    cls = type(engine.dialect)
    with class_patch(kind, cls, name, plain.dialect) as plain_spy:
        TRIGGERS[name](plain)  # the oracle: what the patch sees without querymeter
    with class_patch(kind, cls, name, engine.dialect) as spy:
        before = meter.snapshot()
        TRIGGERS[name](engine)
        during = meter.snapshot()
    assert call_shapes(spy) == call_shapes(plain_spy) != []
    TRIGGERS[name](engine)
    after = meter.snapshot()
    assert spy.call_count == 1  # not called once the patch was undone
    assert (during.queries - before.queries, after.queries - during.queries) == (1, 1)
    assert (after.errors, after.concurrency) == (0, 0)


@pytest.mark.parametrize("kind", PATCH_KINDS)
@pytest.mark.parametrize("name", list(TRIGGERS))
def test_an_engine_instrumented_during_a_class_level_patch_leaves_it_when_undone(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path, name: str, kind: str
) -> None:
    """An engine instrumented while a class-level patch is active calls the patch, counted once,
    and the dialect's own method once the patch is undone."""
    engine = pooled_engine(make_engine, tmp_path / "counted.db", name)
    with class_patch(kind, type(engine.dialect), name, engine.dialect) as spy:
        qs.instrument(engine, meter=meter)
        before = meter.snapshot()
        TRIGGERS[name](engine)
        during = meter.snapshot()
    assert spy.call_count == 1
    TRIGGERS[name](engine)
    after = meter.snapshot()
    assert spy.call_count == 1  # the patch is gone, and so is every call to it
    assert getattr(engine.dialect, name).__name__ == name
    assert (during.queries - before.queries, after.queries - during.queries) == (1, 1)


def test_a_patch_of_the_base_dialect_class_is_followed(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """A patch of DefaultDialect.do_execute, where the dialect's class inherits it, is called."""
    engine = pooled_engine(make_engine, tmp_path / "base.db")
    qs.instrument(engine, meter=meter)
    base = sqlalchemy.engine.default.DefaultDialect
    with class_patch("function", base, "do_execute", engine.dialect) as spy:
        before = meter.snapshot().queries
        TRIGGERS["do_execute"](engine)
        assert (spy.call_count, meter.snapshot().queries - before) == (1, 1)


def test_an_instance_attribute_set_before_instrumenting_still_shadows_a_class_patch(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """A do_execute another tool set on the dialect itself runs, counted once, as it would
    without querymeter, and a class-level patch made afterwards is not called."""
    engine = pooled_engine(make_engine, tmp_path / "own.db")
    original = engine.dialect.do_execute
    theirs = mock.Mock(side_effect=original)
    engine.dialect.do_execute = theirs
    qs.instrument(engine, meter=meter)
    with class_patch("function", type(engine.dialect), "do_execute", engine.dialect) as spy:
        before = meter.snapshot().queries
        TRIGGERS["do_execute"](engine)
        assert meter.snapshot().queries - before == 1
    assert (theirs.call_count, spy.call_count) == (1, 0)
    qs.uninstrument(engine)
    assert vars(engine.dialect)["do_execute"] is theirs
