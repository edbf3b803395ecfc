"""Snapshots: immutable, named, picklable readings that know their meter."""

from __future__ import annotations

import pickle

import pytest

from querymeter import Interval, Snapshot
from querymeter.meter import Meter as MeterType

from .conftest import FakeClock


def test_a_snapshot_has_the_named_counters(fake_meter: MeterType, clock: FakeClock) -> None:
    """A snapshot exposes every counter by name, in a fixed order."""
    token = fake_meter.begin()
    clock.advance(10)
    snap = fake_meter.snapshot()
    fake_meter.end(token)
    assert Snapshot._fields == (
        "uptime_ns",
        "queries",
        "errors",
        "concurrency",
        "total_ns",
        "busy_ns",
        "wall_ns",
        "meter_id",
    )
    assert (snap.uptime_ns, snap.concurrency, snap.total_ns, snap.busy_ns) == (10, 1, 10, 10)
    assert snap.meter_id == fake_meter.meter_id
    assert all(type(value) is int for value in snap)


def test_a_snapshot_is_frozen(fake_meter: MeterType) -> None:
    """Assigning to a snapshot's field raises AttributeError."""
    snap = fake_meter.snapshot()
    with pytest.raises(AttributeError):
        snap.queries = 5  # type: ignore[misc]


def test_a_snapshot_survives_pickling(fake_meter: MeterType) -> None:
    """A pickled snapshot comes back equal, as a Snapshot."""
    snap = fake_meter.snapshot()
    copy = pickle.loads(pickle.dumps(snap))
    assert copy == snap
    assert type(copy) is Snapshot


def test_later_minus_earlier_is_an_interval(fake_meter: MeterType, clock: FakeClock) -> None:
    """Subtracting two snapshots of one meter gives the Interval between them."""
    earlier = fake_meter.snapshot()
    clock.advance(7)
    later = fake_meter.snapshot()
    interval = later - earlier
    assert isinstance(interval, Interval)
    assert (interval.earlier, interval.later, interval.duration_ns) == (earlier, later, 7)


def test_subtracting_something_else_is_a_type_error(fake_meter: MeterType) -> None:
    """A snapshot minus a non-snapshot raises TypeError."""
    with pytest.raises(TypeError):
        fake_meter.snapshot() - 5  # type: ignore[operator]


def test_snapshots_of_two_meters_cannot_be_subtracted(Meter: type[MeterType]) -> None:
    """Mixing meters raises ValueError naming the problem."""
    with pytest.raises(ValueError, match="different meters"):
        Meter().snapshot() - Meter().snapshot()


def test_snapshots_in_the_wrong_order_cannot_be_subtracted(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """earlier - later raises ValueError that says which way round to write it."""
    earlier = fake_meter.snapshot()
    clock.advance(1)
    later = fake_meter.snapshot()
    with pytest.raises(ValueError, match="wrong order"):
        earlier - later


def test_repr_names_every_counter(fake_meter: MeterType) -> None:
    """repr(snapshot) shows each counter by name."""
    text = repr(fake_meter.snapshot())
    for name in Snapshot._fields:
        assert f"{name}=" in text
