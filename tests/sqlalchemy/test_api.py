"""instrument, uninstrument, instrument_all, pool_snapshot: validation, idempotence, exact undo."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

import querymeter
import querymeter.sqlalchemy as qs
from querymeter.meter import Meter as MeterType

from ..servers import driver
from .conftest import pg_url

sqlalchemy = driver("sqlalchemy")
event = sqlalchemy.event
Dialect = sqlalchemy.engine.interfaces.Dialect
STATE = "_querymeter_instrumentation"
STATEMENT_METHODS = ("do_execute", "do_executemany", "do_execute_no_params", "do_ping")
LINGERING = (
    "sqlalchemy: uninstrument left a statement wrapper that another tool "
    "wrapped since; it keeps counting until that tool removes its wrapper"
)


def state_of(engine: Any) -> Any:
    return vars(engine.dialect)[STATE]


def file_engine(make_engine: Callable[..., Any], tmp_path: Path, **kwargs: Any) -> Any:
    """A SQLite file engine: a QueuePool, as for a server database."""
    return make_engine(f"sqlite:///{tmp_path / 'test.db'}", **kwargs)


def run_statements(engine: Any, count: int) -> None:
    with engine.connect() as connection:
        for _ in range(count):
            connection.exec_driver_sql("SELECT 1")


# ----------------------------------------------------------------- validation


def test_instrument_refuses_what_is_not_an_engine(meter: MeterType) -> None:
    """Something that is not an Engine or AsyncEngine raises TypeError naming what was passed."""
    with pytest.raises(TypeError, match=r"expected a SQLAlchemy Engine or AsyncEngine.*object"):
        qs.instrument(object(), meter=meter)


def test_instrument_refuses_a_connection(meter: MeterType, make_engine: Callable[..., Any]) -> None:
    """A Connection is not an engine: TypeError naming it."""
    engine = make_engine("sqlite://")
    with engine.connect() as connection, pytest.raises(TypeError, match="not Connection"):
        qs.instrument(connection, meter=meter)


def test_instrument_refuses_a_meter_that_is_not_one(make_engine: Callable[..., Any]) -> None:
    """A meter argument that is not a querymeter Meter raises TypeError; nothing is installed."""
    engine = make_engine("sqlite://")
    with pytest.raises(TypeError, match=r"querymeter\.Meter"):
        qs.instrument(engine, meter=object())  # type: ignore[arg-type]
    assert STATE not in vars(engine.dialect)


def test_pool_snapshot_of_an_engine_not_instrumented_is_a_lookup_error(
    make_engine: Callable[..., Any],
) -> None:
    """pool_snapshot() of an engine that is not instrumented raises LookupError saying so."""
    engine = make_engine("sqlite://")
    with pytest.raises(LookupError, match="not instrumented"):
        qs.pool_snapshot(engine)
    with pytest.raises(TypeError, match="Engine"):
        qs.pool_snapshot("sqlite://")


def test_instrument_defaults_to_the_default_meter(make_engine: Callable[..., Any]) -> None:
    """Without a meter, statements count into querymeter.default_meter()."""
    engine = make_engine("sqlite://")
    qs.instrument(engine)
    assert qs.instrumented_meter(engine) is querymeter.default_meter()
    with engine.connect() as connection:
        before = querymeter.snapshot().queries
        connection.exec_driver_sql("SELECT 1")
        assert querymeter.snapshot().queries == before + 1


# ---------------------------------------------------------------- idempotence


def test_instrumenting_twice_is_a_no_op(meter: MeterType, make_engine: Callable[..., Any]) -> None:
    """A second instrument() with the same meter changes nothing: statements count once."""
    engine = make_engine("sqlite://")
    qs.instrument(engine, meter=meter)
    wrapper = vars(engine.dialect)["do_execute"]
    qs.instrument(engine, meter=meter)
    qs.instrument(engine.execution_options(isolation_level="AUTOCOMMIT"), meter=meter)
    assert vars(engine.dialect)["do_execute"] is wrapper
    run_statements(engine, 3)
    assert meter.snapshot().queries == 3


def test_an_option_engine_shares_its_parents_instrumentation(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """Instrumenting an execution_options() engine instruments its parent once, for both."""
    engine = make_engine("sqlite://")
    option_engine = engine.execution_options(logging_token="replica")
    qs.instrument(option_engine, meter=meter)
    assert qs.instrumented_meter(engine) is meter
    run_statements(engine, 2)
    run_statements(option_engine, 2)
    assert meter.snapshot().queries == 4
    qs.uninstrument(engine)
    assert qs.instrumented_meter(option_engine) is None


def test_an_async_engine_and_its_sync_engine_count_once(meter: MeterType) -> None:
    """Instrumenting an AsyncEngine and its sync_engine counts every statement once."""
    driver("aiosqlite")
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        engine = create_async_engine("sqlite+aiosqlite://")
        try:
            qs.instrument(engine, meter=meter)
            qs.instrument(engine.sync_engine, meter=meter)
            assert qs.instrumented_meter(engine.sync_engine) is meter
            async with engine.connect() as connection:
                before = meter.snapshot().queries
                for _ in range(3):
                    await connection.exec_driver_sql("SELECT 1")
                assert meter.snapshot().queries == before + 3
            assert qs.pool_snapshot(engine).pool_id == qs.pool_snapshot(engine.sync_engine).pool_id
        finally:
            qs.uninstrument(engine)
            await engine.dispose()

    asyncio.run(main())


def test_instrumenting_with_a_second_meter_raises(
    Meter: type[MeterType], make_engine: Callable[..., Any]
) -> None:
    """instrument() with another meter raises ValueError instead of counting twice."""
    engine = make_engine("sqlite://")
    first = Meter()
    qs.instrument(engine, meter=first)
    with pytest.raises(ValueError, match="another meter"):
        qs.instrument(engine, meter=Meter())
    assert qs.instrumented_meter(engine) is first


def test_primary_and_replica_count_into_their_own_meters(
    Meter: type[MeterType], make_engine: Callable[..., Any]
) -> None:
    """Two engines instrumented with two meters count apart, and their pool figures too."""
    primary, replica = make_engine("sqlite://"), make_engine("sqlite://")
    primary_meter, replica_meter = Meter(), Meter()
    qs.instrument(primary, meter=primary_meter)
    qs.instrument(replica, meter=replica_meter)
    run_statements(primary, 2)
    run_statements(replica, 5)
    assert (primary_meter.snapshot().queries, replica_meter.snapshot().queries) == (2, 5)
    assert qs.pool_snapshot(primary).checkouts == qs.pool_snapshot(replica).checkouts == 1
    assert qs.pool_snapshot(primary).pool_id != qs.pool_snapshot(replica).pool_id


# ----------------------------------------------------------------- exact undo


def test_uninstrument_removes_exactly_what_was_added(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path
) -> None:
    """After uninstrument, dialect, pool and queue hold exactly what they held, and no listener."""
    engine = file_engine(make_engine, tmp_path)
    run_statements(engine, 1)  # the dialect keeps what its first connection told it
    dialect, pool, queue = engine.dialect, engine.pool, engine.pool._pool
    before = [dict(vars(target)) for target in (dialect, pool, queue)]
    qs.instrument(engine, meter=meter)
    listeners = state_of(engine).pool._listeners
    assert all(event.contains(engine, name, fn) for name, fn, _ in listeners)
    assert all(name in vars(dialect) for name in STATEMENT_METHODS)
    assert {"connect", "recreate"} <= set(vars(pool)) and "get" in vars(queue)
    run_statements(engine, 1)

    qs.uninstrument(engine)
    after = [dict(vars(target)) for target in (dialect, pool, queue)]
    for was, now in zip(before, after, strict=True):
        assert was.keys() == now.keys()
        assert all(was[key] is now[key] for key in was)
    assert not any(event.contains(engine, name, fn) for name, fn, _ in listeners)
    for name in STATEMENT_METHODS:
        assert getattr(dialect, name).__func__ is getattr(type(dialect), name)
    counted = meter.snapshot().queries
    run_statements(engine, 2)
    assert meter.snapshot().queries == counted
    assert qs.instrumented_meter(engine) is None


def test_uninstrument_of_an_engine_not_instrumented_does_nothing(
    make_engine: Callable[..., Any],
) -> None:
    """uninstrument() of an engine never instrumented changes nothing and raises nothing."""
    engine = make_engine("sqlite://")
    before = dict(vars(engine.dialect))
    qs.uninstrument(engine)
    qs.uninstrument(engine)
    assert vars(engine.dialect) == before


def test_uninstrument_under_another_wrapper_leaves_it_in_place(
    Meter: type[MeterType], make_engine: Callable[..., Any]
) -> None:
    """A tool that wrapped do_execute after querymeter keeps its wrapper; nothing counts twice."""
    engine = make_engine("sqlite://")
    meter = Meter()
    qs.instrument(engine, meter=meter)
    ours = engine.dialect.do_execute
    calls: list[str] = []

    def theirs(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        calls.append(statement)
        ours(cursor, statement, parameters, context)

    engine.dialect.do_execute = theirs
    faults_before = querymeter.faults().get(LINGERING, 0)
    qs.uninstrument(engine)
    assert engine.dialect.do_execute is theirs
    assert querymeter.faults()[LINGERING] == faults_before + 1
    with pytest.raises(ValueError, match="another tool"):
        qs.instrument(engine, meter=Meter())
    # The same meter takes the wrapper still in their chain back: once, not twice.
    qs.instrument(engine, meter=meter)
    run_statements(engine, 2)
    assert (meter.snapshot().queries, len(calls)) == (2, 2)


# --------------------------------------------------------- every new engine


def test_instrument_all_covers_every_way_to_create_an_engine(meter: MeterType) -> None:
    """Engines from create_engine, engine_from_config and create_async_engine are instrumented."""
    driver("aiosqlite")
    from sqlalchemy.ext.asyncio import create_async_engine

    qs.instrument_all(meter=meter)
    engines = [
        sqlalchemy.create_engine("sqlite://"),
        sqlalchemy.engine_from_config({"sqlalchemy.url": "sqlite://"}),
    ]
    async_engine = create_async_engine("sqlite+aiosqlite://")
    try:
        for engine in [*engines, async_engine]:
            assert qs.instrumented_meter(engine) is meter
        for engine in engines:
            run_statements(engine, 1)

        async def main() -> None:
            async with async_engine.connect() as connection:
                await connection.exec_driver_sql("SELECT 1")
            await async_engine.dispose()

        asyncio.run(main())
        assert meter.snapshot().queries == 3
    finally:
        for engine in [*engines, async_engine]:
            qs.uninstrument(engine)


def test_instrument_all_is_idempotent_and_refuses_a_second_meter(
    Meter: type[MeterType],
) -> None:
    """instrument_all() again with the same meter does nothing; with another, ValueError."""
    meter = Meter()
    qs.instrument_all(meter=meter)
    hook = vars(Dialect)["engine_created"]
    qs.instrument_all(meter=meter)
    assert vars(Dialect)["engine_created"] is hook
    with pytest.raises(ValueError, match="another meter"):
        qs.instrument_all(meter=Meter())


def test_uninstrument_all_restores_the_hook_and_keeps_engines_instrumented(
    meter: MeterType,
) -> None:
    """uninstrument_all() puts the original classmethod back; engines it instrumented stay so."""
    original = vars(Dialect)["engine_created"]
    qs.instrument_all(meter=meter)
    engine = sqlalchemy.create_engine("sqlite://")
    qs.uninstrument_all()
    assert vars(Dialect)["engine_created"] is original
    later = sqlalchemy.create_engine("sqlite://")
    try:
        assert qs.instrumented_meter(engine) is meter
        assert qs.instrumented_meter(later) is None
    finally:
        qs.uninstrument(engine)


def test_uninstrument_all_under_another_wrapper_leaves_a_pass_through(meter: MeterType) -> None:
    """A tool that wrapped engine_created after us keeps its wrapper; ours stops instrumenting."""
    original = vars(Dialect)["engine_created"]
    qs.instrument_all(meter=meter)
    ours = vars(Dialect)["engine_created"]
    seen: list[Any] = []

    def theirs(cls: type, engine: Any) -> None:
        seen.append(engine)
        ours.__get__(None, cls)(engine)

    Dialect.engine_created = classmethod(theirs)
    try:
        qs.uninstrument_all()
        engine = sqlalchemy.create_engine("sqlite://")
        assert seen == [engine]
        assert qs.instrumented_meter(engine) is None
    finally:
        Dialect.engine_created = original


# --------------------------------------------------------- dialect listeners


def test_a_users_do_execute_listener_keeps_working(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """A do_execute listener that does not take over sees every statement, each counted once."""
    engine = make_engine("sqlite://")
    seen: list[str] = []

    @event.listens_for(engine, "do_execute")
    def watch(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        seen.append(statement)

    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        start = len(seen)
        before = meter.snapshot().queries
        assert connection.exec_driver_sql("SELECT 41 + 1").scalar() == 42
        connection.exec_driver_sql("SELECT 2")
        assert meter.snapshot().queries - before == len(seen) - start == 2


def test_a_do_execute_listener_that_takes_over_is_not_counted(
    meter: MeterType, make_engine: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A do_execute listener returning True runs the statement uncounted (a documented limit)."""
    engine = make_engine("sqlite://")

    @event.listens_for(engine, "do_execute")
    def take_over(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        cursor.execute(statement, parameters)
        return True

    import querymeter.sqlalchemy._engine as engine_module

    engine_module._warned_about_listeners = False
    with caplog.at_level(logging.WARNING, logger="querymeter"):
        qs.instrument(engine, meter=meter)
    assert "returns True" in caplog.text
    with engine.connect() as connection:
        before = meter.snapshot().queries
        assert connection.exec_driver_sql("SELECT 7").scalar() == 7
        assert meter.snapshot().queries == before


# ------------------------------------------------------- class-level patches


CALL_SHAPES = [
    ((), {}),
    (("cursor",), {}),
    (("cursor", "statement"), {}),
    (("cursor", "statement", "parameters"), {}),
    (("cursor", "statement", "parameters", "context"), {}),
    (("cursor", "statement", "parameters", "context", "more"), {}),
    (("cursor", "statement"), {"parameters": "parameters", "context": "context"}),
    ((), {"first": "a keyword named like a parameter of querymeter's"}),
]


def test_a_statement_method_passes_every_call_shape_through_untouched(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """Positional, keyword and extra arguments reach the dialect's method exactly as passed,
    and its result comes back; each call is one query."""
    engine = make_engine("sqlite://")
    qs.instrument(engine, meter=meter)
    seen: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
    result = object()

    def recorder(self: Any, *args: Any, **kwargs: Any) -> object:
        seen.append((self, args, kwargs))
        return result

    with mock.patch.object(type(engine.dialect), "do_execute", recorder):
        for args, kwargs in CALL_SHAPES:
            before = meter.snapshot().queries
            assert engine.dialect.do_execute(*args, **kwargs) is result
            assert meter.snapshot().queries == before + 1
    assert seen == [(engine.dialect, args, kwargs) for args, kwargs in CALL_SHAPES]


@pytest.mark.servers
def test_class_level_patches_are_followed_on_postgresql(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """On PostgreSQL, a class-level patch active while instrumenting stops being called once
    undone, and one made afterwards is called; every call is counted once."""
    engine = make_engine(pg_url("psycopg"))
    cls = type(engine.dialect)
    original = cls.do_execute
    with mock.patch.object(cls, "do_execute", autospec=True, side_effect=original) as early:
        qs.instrument(engine, meter=meter)
        run_statements(engine, 2)  # with the first connect's initialize queries
    assert meter.snapshot().queries == early.call_count >= 2
    before = meter.snapshot().queries
    run_statements(engine, 3)
    assert meter.snapshot().queries - before == 3
    with mock.patch.object(cls, "do_execute", autospec=True, side_effect=original) as late:
        run_statements(engine, 4)
    assert meter.snapshot().queries - before == 3 + late.call_count == 7
    assert early.call_count == meter.snapshot().queries - 7
    assert late.call_args.args[0] is engine.dialect


# ------------------------------------------------------------------- faults


def test_a_fault_in_pool_accounting_never_reaches_the_application(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """A failure inside the pool accounting is a fault; checkouts and statements go on."""
    engine = make_engine("sqlite://")
    qs.instrument(engine, meter=meter)
    # Not a dict: the core refuses it at every checkout and checkin event.
    state_of(engine).pool._records = None
    before = sum(querymeter.faults().values())
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 3").scalar() == 3
    assert sum(querymeter.faults().values()) > before
    assert meter.snapshot().queries == 1


# ---------------------------------------------------------------- importing


def test_importing_querymeter_does_not_import_sqlalchemy() -> None:
    """`import querymeter` leaves SQLAlchemy unimported; `querymeter.sqlalchemy` imports it."""
    code = (
        "import sys, querymeter\n"
        "assert 'sqlalchemy' not in sys.modules\n"
        "import querymeter.sqlalchemy\n"
        "assert 'sqlalchemy' in sys.modules\n"
        "assert 'sqlalchemy.ext.asyncio' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
