"""The pool accounting follows the pool's class, and counts on the meter's clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest

from querymeter.meter import Meter as MeterType

from .conftest import qs, sqlalchemy

QueuePool = sqlalchemy.pool.QueuePool


def test_a_class_level_patch_of_the_pool_made_later_runs(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Any
) -> None:
    """A patch of QueuePool.connect made after instrumenting runs, and stops when undone."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=QueuePool)
    qs.instrument(engine, meter=meter)
    calls: list[object] = []
    original = QueuePool.connect

    def spy(self: Any) -> Any:
        calls.append(self)
        return original(self)

    with mock.patch.object(QueuePool, "connect", spy), engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert calls == [engine.pool]
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert calls == [engine.pool]  # undone: the original runs again
    assert qs.pool_snapshot(engine).checkouts == 2


def test_an_engine_instrumented_under_a_patch_drops_it_when_undone(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Any
) -> None:
    """An engine instrumented while a class-level patch is active stops calling it once undone."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=QueuePool)
    calls: list[object] = []
    original = QueuePool.connect

    def spy(self: Any) -> Any:
        calls.append(self)
        return original(self)

    with mock.patch.object(QueuePool, "connect", spy):
        qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    assert calls == []
    assert qs.pool_snapshot(engine).checkouts == 1


def test_pool_times_share_the_meters_clock(
    Meter: type[MeterType], make_engine: Callable[..., Any], tmp_path: Any
) -> None:
    """Pool figures are read on the meter's injected clock: the same time base as statements."""
    now = [1_000]

    def clock() -> int:
        now[0] += 10
        return now[0]

    meter = Meter(clock=clock)
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=QueuePool)
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    snapshot = qs.pool_snapshot(engine)
    # Every duration is a whole number of the clock's 10 ns ticks.
    for figure in (snapshot.checkout_ns, snapshot.creation_ns, snapshot.in_use_ns):
        assert figure > 0 and figure % 10 == 0
    assert snapshot.uptime_ns % 10 == 0


@pytest.mark.parametrize("reading", ["before", "after"])
def test_pool_counters_restart_with_a_reset_meter(
    meter: MeterType, make_engine: Callable[..., Any], tmp_path: Any, reading: str
) -> None:
    """After the meter restarts (what fork does), the pool's counters start from zero too."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=QueuePool)
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    if reading == "before":
        assert qs.pool_snapshot(engine).checkouts == 1
    meter._reset(12345)
    snapshot = qs.pool_snapshot(engine)
    assert (snapshot.checkouts, snapshot.creations, snapshot.in_use) == (0, 0, 0)
