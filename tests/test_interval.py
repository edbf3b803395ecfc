"""Interval: the deltas between two snapshots and the operational laws on them."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from querymeter import Interval, Snapshot
from querymeter.meter import Meter as MeterType

from .conftest import FakeClock, load_meter_class

schedules = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(1, 10**10)),
        st.tuples(st.just("begin")),
        st.tuples(st.just("end"), st.integers(0, 100), st.booleans()),
        st.tuples(st.just("read")),
    ),
    min_size=1,
    max_size=60,
)


def snapshots_of(implementation: str, ops: list[tuple[Any, ...]]) -> list[Snapshot]:
    """Run a schedule on a fake-clock meter and return the snapshots it read."""
    clock = FakeClock()
    meter = load_meter_class(implementation)(clock=clock)
    tokens: list[Any] = []
    snaps = [meter.snapshot()]
    for op in ops:
        if op[0] == "advance":
            clock.advance(op[1])
        elif op[0] == "begin":
            tokens.append(meter.begin())
        elif op[0] == "end" and tokens:
            meter.end(tokens.pop(op[1] % len(tokens)), error=op[2])
        elif op[0] == "read":
            snaps.append(meter.snapshot())
    snaps.append(meter.snapshot())
    return snaps


@settings(max_examples=200, deadline=None)
@given(ops=schedules, data=st.data())
def test_littles_law_and_the_utilization_law_hold_on_every_interval(
    implementation: str, ops: list[Any], data: st.DataObject
) -> None:
    """N = X·R and U = X·S on any interval; undefined figures are None, never 0."""
    snaps = snapshots_of(implementation, ops)
    first = data.draw(st.integers(0, len(snaps) - 1))
    second = data.draw(st.integers(first, len(snaps) - 1))
    interval = snaps[second] - snaps[first]
    if interval.duration_ns == 0:
        assert interval.throughput is None
        assert interval.concurrency is None
        assert interval.utilization is None
        assert interval.error_rate is None
    if interval.queries == 0:
        assert interval.response_time is None
        assert interval.service_time is None
    if interval.duration_ns and interval.queries:
        assert interval.throughput is not None and interval.response_time is not None
        assert interval.service_time is not None and interval.utilization is not None
        assert interval.concurrency is not None
        assert math.isclose(
            interval.concurrency, interval.throughput * interval.response_time, rel_tol=1e-12
        )
        assert math.isclose(
            interval.utilization, interval.throughput * interval.service_time, rel_tol=1e-12
        )
    if interval.duration_ns:
        assert interval.utilization is not None and interval.concurrency is not None
        assert 0 <= interval.utilization <= 1
        assert interval.concurrency >= interval.utilization
    if interval.busy_ns:
        assert interval.concurrency_when_busy is not None
        assert interval.utilization is not None and interval.concurrency is not None
        assert math.isclose(
            interval.concurrency_when_busy,
            interval.concurrency / interval.utilization,
            rel_tol=1e-12,
        )
    else:
        assert interval.concurrency_when_busy is None


def test_the_figures_of_a_known_interval(fake_meter: MeterType, clock: FakeClock) -> None:
    """Two overlapping 1 s queries in a 2 s interval: X = 1/s, N = 1, R = 1 s, U = 0.75."""
    earlier = fake_meter.snapshot()
    first = fake_meter.begin()
    clock.advance(500_000_000)
    second = fake_meter.begin()
    clock.advance(500_000_000)
    fake_meter.end(first)
    clock.advance(500_000_000)
    fake_meter.end(second, error=True)
    clock.advance(500_000_000)
    interval = fake_meter.snapshot() - earlier
    assert (interval.duration_ns, interval.queries, interval.errors) == (2 * 10**9, 2, 1)
    assert (interval.total_ns, interval.busy_ns) == (2 * 10**9, 1_500_000_000)
    assert interval.duration == 2.0
    assert interval.throughput == 1.0
    assert interval.concurrency == 1.0
    assert interval.response_time == 1.0
    assert interval.utilization == 0.75
    assert interval.service_time == 0.75
    assert interval.error_rate == 0.5
    assert interval.concurrency_when_busy == pytest.approx(4 / 3)


def test_an_interval_cut_mid_query_counts_only_its_own_part(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """A query running across both ends adds only the time inside the interval."""
    token = fake_meter.begin()
    clock.advance(100)
    earlier = fake_meter.snapshot()
    clock.advance(300)
    later = fake_meter.snapshot()
    fake_meter.end(token)
    interval = later - earlier
    assert (interval.total_ns, interval.busy_ns, interval.queries) == (300, 300, 0)
    assert interval.concurrency == 1.0
    assert interval.response_time is None


def test_an_interval_is_frozen(fake_meter: MeterType) -> None:
    """Assigning to an interval raises."""
    interval = Interval(fake_meter.snapshot(), fake_meter.snapshot())
    with pytest.raises(AttributeError):
        interval.earlier = interval.later  # type: ignore[misc]


def test_between_is_the_same_as_subtracting(fake_meter: MeterType, clock: FakeClock) -> None:
    """Interval.between(a, b) equals b - a."""
    earlier = fake_meter.snapshot()
    clock.advance(5)
    later = fake_meter.snapshot()
    assert Interval.between(earlier, later) == later - earlier


def test_intervals_refuse_other_types(fake_meter: MeterType) -> None:
    """An Interval of something that is not a Snapshot raises TypeError."""
    with pytest.raises(TypeError, match="two Snapshots"):
        Interval(fake_meter.snapshot(), (1, 2, 3))  # type: ignore[arg-type]


def test_decreasing_counters_are_refused(fake_meter: MeterType, clock: FakeClock) -> None:
    """A later snapshot with fewer queries is not a reading of the same meter: ValueError."""
    earlier = fake_meter.snapshot()
    clock.advance(5)
    forged = fake_meter.snapshot()._replace(queries=earlier.queries - 1)
    with pytest.raises(ValueError, match="queries decreased"):
        forged - earlier


def test_the_repr_shows_the_figures(fake_meter: MeterType, clock: FakeClock) -> None:
    """repr(interval) names the derived figures with their units."""
    earlier = fake_meter.snapshot()
    with fake_meter.track():
        clock.advance(10**6)
    text = repr(fake_meter.snapshot() - earlier)
    assert "throughput=1000/s" in text
    assert "response_time=0.001 s" in text


def test_the_old_module_path_still_works_with_a_deprecation_warning() -> None:
    """querymeter.interval still gives Interval, and says where it lives now."""
    code = (
        "import warnings, querymeter\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from querymeter.interval import Interval\n"
        "assert Interval is querymeter.Interval\n"
        "assert any(issubclass(w.category, DeprecationWarning) for w in caught), caught\n"
        "assert callable(querymeter.snapshot)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
