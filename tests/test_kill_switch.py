"""The kill switch: disable() stops all counting at once, enable() resumes cleanly,
QUERYMETER_DISABLE=1 starts disabled, uninstrument_all() takes every hook out."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator

import pytest

import querymeter
from querymeter import dbapi
from querymeter.meter import Meter as MeterType


@pytest.fixture(autouse=True)
def enabled_after() -> Iterator[None]:
    yield
    querymeter.enable()
    querymeter.uninstrument_all()


def test_disabled_nothing_moves(Meter: type[MeterType]) -> None:
    meter = Meter()
    table = meter.enable_statements()
    meter.enable_sampling(rate=1.0)
    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(":memory:")
    connection.execute("create table t (a)")
    before = meter.snapshot()
    querymeter.disable()
    assert not querymeter.is_enabled()
    with querymeter.scope(a=1) as scope:
        assert connection.execute("select 2").fetchall() == [(2,)]
        connection.cursor().executemany("insert into t values (?)", [(1,), (2,)])
        with meter.track("select 3"):
            pass
        token = meter.begin()
        assert meter.end(token) == 0
        asyncio.run(meter._awaiting(asyncio.sleep(0), (None, "select 4", None)))
        meter.tracked(lambda: None)()
    after = meter.snapshot()
    assert (after.queries, after.errors, after.concurrency, after.total_ns) == (
        before.queries,
        before.errors,
        0,
        before.total_ns,
    )
    assert scope.queries == 0
    assert table.snapshot().calls == 1 and len(meter.samples()) == 1
    querymeter.enable()
    connection.execute("select 5")
    assert meter.snapshot().queries == before.queries + 1


def test_a_query_across_the_switch_is_never_left_half_counted(Meter: type[MeterType]) -> None:
    meter = Meter()
    with meter.track("begun enabled"):
        querymeter.disable()
    with meter.track("begun disabled"):
        querymeter.enable()
    reading = meter.snapshot()
    assert (reading.queries, reading.concurrency) == (1, 0), "the first counted, the second not"
    token = meter.begin()
    querymeter.disable()
    assert meter.end(token) >= 0
    querymeter.enable()
    assert (meter.snapshot().queries, meter.snapshot().concurrency) == (2, 0)


def test_the_environment_starts_it_disabled() -> None:
    code = (
        "import sqlite3, querymeter, querymeter.dbapi\n"
        "assert not querymeter.is_enabled()\n"
        "m = querymeter.Meter(); querymeter.dbapi.instrument(sqlite3, meter=m)\n"
        "c = sqlite3.connect(':memory:'); c.execute('select 1')\n"
        "assert m.snapshot().queries == 0\n"
        "querymeter.enable(); c.execute('select 1')\n"
        "assert m.snapshot().queries == 1\n"
    )
    env = {**os.environ, "QUERYMETER_DISABLE": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_uninstrument_all_takes_every_hook_out(Meter: type[MeterType]) -> None:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    import querymeter.sqlalchemy as qs

    meter = Meter()
    connect = sqlite3.connect
    dbapi.instrument(sqlite3, meter=meter)
    counting = sqlite3.connect(":memory:")
    engine = sqlalchemy.create_engine("sqlite://")
    qs.instrument(engine, meter=meter)
    qs.instrument_all(meter=meter)
    with engine.connect() as c:
        c.exec_driver_sql("select 1")
    counted = meter.snapshot().queries

    querymeter.uninstrument_all()
    assert sqlite3.connect is connect
    assert dbapi.instrumented_drivers() == [] and qs.instrumented_engines() == []
    assert dbapi.meter_of(counting) is None
    later = sqlalchemy.create_engine("sqlite://")
    for e in (engine, later):
        with e.connect() as c:
            c.exec_driver_sql("select 1")
    sqlite3.connect(":memory:").execute("select 1")
    counting.execute("select 1")
    assert meter.snapshot().queries == counted


def test_disabled_counted_classes_show_the_drivers_own_methods(Meter: type[MeterType]) -> None:
    """sqlite3's counted cursor class drops its wrappers while disabled (a call is the
    driver's own, nothing in between) and gets them back at enable()."""
    meter = Meter()
    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(":memory:")
    cursor = connection.cursor()
    counted = type(cursor)
    assert counted is not sqlite3.Cursor and counted.execute is not sqlite3.Cursor.execute
    querymeter.disable()
    assert counted.execute is sqlite3.Cursor.execute
    made_while_off = connection.cursor()
    made_while_off.execute("select 1")
    querymeter.enable()
    assert counted.execute is not sqlite3.Cursor.execute
    made_while_off.execute("select 1")
    cursor.execute("select 1")
    assert meter.snapshot().queries == 2
