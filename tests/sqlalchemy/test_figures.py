"""PoolSnapshot and PoolInterval: frozen readings, validated intervals, the derived figures."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import querymeter.sqlalchemy as qs
from querymeter.meter import Meter as MeterType

NS = 1_000_000_000


@pytest.fixture
def reading(meter: MeterType, make_engine: Callable[..., Any], tmp_path: Path) -> qs.PoolSnapshot:
    """A pool snapshot of an instrumented SQLite file engine (a QueuePool) after one checkout."""
    engine = make_engine(f"sqlite:///{tmp_path / 'figures.db'}", pool_size=3, max_overflow=2)
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
    return qs.pool_snapshot(engine)


def test_a_pool_snapshot_has_the_gauges_limits_and_counters(reading: qs.PoolSnapshot) -> None:
    """A QueuePool's snapshot gives its gauges and limits, and the checkout it served."""
    assert (reading.in_use, reading.idle, reading.overflow, reading.waiting) == (0, 1, 0, 0)
    assert (reading.size, reading.max_overflow, reading.timeout_ns) == (3, 2, 30 * NS)
    assert (reading.checkouts, reading.releases, reading.creations, reading.waits) == (1, 1, 1, 0)
    assert 0 < reading.creation_ns <= reading.checkout_ns <= reading.uptime_ns
    assert 0 < reading.in_use_ns <= reading.uptime_ns
    assert reading.wall_ns > 0


def test_a_pool_snapshot_is_frozen_and_picklable(reading: qs.PoolSnapshot) -> None:
    """A pool snapshot cannot be changed, and survives pickling equal to itself."""
    with pytest.raises(AttributeError):
        reading.checkouts = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(reading)) == reading
    assert f"pool_id={reading.pool_id:#x}" in repr(reading)


def test_a_pool_snapshot_without_a_queue_has_no_gauges(
    meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """NullPool (and other pools without a queue) give None for idle, overflow and the limits."""
    from sqlalchemy.pool import NullPool

    engine = make_engine("sqlite://", poolclass=NullPool)
    qs.instrument(engine, meter=meter)
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
        held = qs.pool_snapshot(engine)
    released = qs.pool_snapshot(engine)
    assert (held.idle, held.overflow, held.size, held.max_overflow, held.timeout_ns) == (None,) * 5
    assert (held.in_use, released.in_use, released.releases) == (1, 0, 1)
    assert released.creations == released.closes == 1


def test_later_minus_earlier_is_a_pool_interval(reading: qs.PoolSnapshot, meter: MeterType) -> None:
    """later - earlier gives the deltas and the derived figures by their formulas."""
    later = reading._replace(
        uptime_ns=reading.uptime_ns + 2 * NS,
        checkouts=reading.checkouts + 8,
        checkout_failures=reading.checkout_failures + 2,
        checkout_ns=reading.checkout_ns + 3 * NS,
        waits=reading.waits + 4,
        wait_ns=reading.wait_ns + 2 * NS,
        timeouts=reading.timeouts + 1,
        creations=reading.creations + 3,
        creation_failures=reading.creation_failures + 1,
        creation_ns=reading.creation_ns + NS // 10,
        releases=reading.releases + 8,
        in_use_ns=reading.in_use_ns + 4 * NS,
    )
    interval = later - reading
    assert isinstance(interval, qs.PoolInterval)
    assert (interval.duration_ns, interval.requests, interval.waits) == (2 * NS, 10, 4)
    assert interval.checkout_rate == pytest.approx(4.0)
    assert interval.waited_fraction == pytest.approx(0.4)
    assert interval.wait_per_checkout == pytest.approx(0.2)
    assert interval.mean_wait == pytest.approx(0.5)
    assert interval.mean_waiting == pytest.approx(1.0)
    assert interval.mean_checkout_time == pytest.approx(0.3)
    assert interval.timeout_rate == pytest.approx(0.5)
    assert interval.creation_rate == pytest.approx(1.5)
    assert interval.mean_creation_time == pytest.approx(0.025)
    assert interval.mean_in_use == pytest.approx(2.0)
    assert interval.mean_hold_time == pytest.approx(0.5)
    assert interval.utilization == pytest.approx(2.0 / 5)
    # Little's Law, by construction: waiting = arrival rate x mean wait per checkout.
    assert interval.mean_waiting == pytest.approx(
        interval.requests / interval.duration * interval.wait_per_checkout
    )
    assert "waited_fraction=0.4" in repr(interval)


def test_figures_without_a_denominator_are_none(reading: qs.PoolSnapshot) -> None:
    """With no time, checkout, wait, creation or release in between, the figures are None, not 0."""
    interval = reading - reading
    for figure in (
        "checkout_rate",
        "waited_fraction",
        "wait_per_checkout",
        "mean_wait",
        "mean_waiting",
        "mean_checkout_time",
        "timeout_rate",
        "creation_rate",
        "mean_creation_time",
        "mean_in_use",
        "mean_hold_time",
        "utilization",
    ):
        assert getattr(interval, figure) is None, figure
    unlimited = reading._replace(uptime_ns=reading.uptime_ns + NS, max_overflow=-1)
    assert (unlimited - reading).utilization is None
    assert (unlimited - reading).mean_in_use == 0.0


def test_snapshots_of_two_engines_cannot_be_subtracted(
    reading: qs.PoolSnapshot, meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """Pool snapshots of different engines raise ValueError naming both identities."""
    other = make_engine("sqlite://")
    qs.instrument(other, meter=meter)
    with pytest.raises(ValueError, match="different engines"):
        qs.pool_snapshot(other) - reading


def test_snapshots_in_the_wrong_order_cannot_be_subtracted(reading: qs.PoolSnapshot) -> None:
    """earlier - later raises ValueError telling the right order."""
    later = reading._replace(uptime_ns=reading.uptime_ns + 1)
    with pytest.raises(ValueError, match="wrong order"):
        reading - later


def test_a_counter_that_decreased_is_refused(reading: qs.PoolSnapshot) -> None:
    """Two readings where a counter went down are not of one engine: ValueError naming it."""
    later = reading._replace(uptime_ns=reading.uptime_ns + 1, checkouts=reading.checkouts - 1)
    with pytest.raises(ValueError, match="checkouts decreased"):
        later - reading


def test_a_pool_interval_needs_two_pool_snapshots(reading: qs.PoolSnapshot, meter: Any) -> None:
    """Anything but two PoolSnapshots raises TypeError; subtracting a meter Snapshot is refused."""
    with pytest.raises(TypeError, match="two PoolSnapshots"):
        qs.PoolInterval(reading, meter.snapshot())
    with pytest.raises(TypeError):
        reading - meter.snapshot()
    with pytest.raises(TypeError):
        reading - 1
