"""Sampler: periodic intervals in a background thread, bounded, live, never in the way."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

import querymeter
from querymeter.meter import Meter as MeterType
from querymeter.sampler import Sampler


def test_intervals_are_contiguous_and_account_for_every_query(Meter: type[MeterType]) -> None:
    """Consecutive intervals join up, last once a period, and add up to all the queries."""
    meter = Meter()
    before = meter.snapshot()
    with Sampler(meter, period=0.02) as sampler:
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            with meter.track():
                pass
    intervals = sampler.intervals()
    assert len(intervals) >= 5
    for earlier, later in itertools.pairwise(intervals):
        assert later.earlier == earlier.later
    durations = [interval.duration for interval in intervals]
    assert sum(durations) / len(durations) == pytest.approx(0.02, rel=0.5)
    counted = sum(interval.queries for interval in intervals)
    after = intervals[-1].later
    assert counted == after.queries - intervals[0].earlier.queries
    assert intervals[0].earlier.uptime_ns >= before.uptime_ns
    assert not sampler.running


def test_memory_is_bounded_and_drops_are_counted(Meter: type[MeterType]) -> None:
    """Beyond capacity the oldest intervals go, and how many went is counted."""
    with Sampler(Meter(), period=0.005, capacity=3) as sampler:
        while sampler.dropped < 5:
            time.sleep(0.005)
    kept = sampler.intervals()
    assert len(kept) == 3
    assert sampler.dropped >= 5
    assert kept[1].earlier == kept[0].later


def test_iteration_yields_intervals_as_they_arrive_until_stopped(Meter: type[MeterType]) -> None:
    """Iterating a running sampler yields each new interval, and ends when it stops."""
    meter = Meter()
    sampler = Sampler(meter, period=0.01).start()
    received = []
    for interval in sampler:
        received.append(interval)
        if len(received) == 4:
            sampler.stop()
    assert len(received) >= 4
    assert received[:4] == sampler.intervals()[:4]


def test_a_reader_that_falls_behind_skips_what_was_dropped(Meter: type[MeterType]) -> None:
    """An iterator slower than the sampler continues from the oldest interval still kept."""
    sampler = Sampler(Meter(), period=0.002, capacity=2).start()
    iterator = iter(sampler)
    first = next(iterator)
    while sampler.dropped < 10:
        time.sleep(0.002)
    second = next(iterator)
    sampler.stop()
    assert second.earlier.uptime_ns > first.later.uptime_ns


def test_points_leave_out_idle_intervals(Meter: type[MeterType]) -> None:
    """points() gives (N, X) of the intervals with completed queries only."""
    meter = Meter()
    with Sampler(meter, period=0.02) as sampler:
        time.sleep(0.07)  # idle
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:
            with meter.track():
                time.sleep(0.001)
    points = sampler.points()
    busy = [i for i in sampler.intervals() if i.queries]
    assert len(points) == len(busy) < len(sampler.intervals())
    assert points == [(i.concurrency, i.throughput) for i in busy]


def test_the_default_meter_is_sampled_by_default() -> None:
    """Without a meter, the default meter is sampled."""
    assert Sampler(period=1).meter is querymeter.default_meter()


def test_a_sampler_runs_once(Meter: type[MeterType]) -> None:
    """Starting a sampler twice raises RuntimeError; stopping twice is fine."""
    sampler = Sampler(Meter(), period=0.01).start()
    with pytest.raises(RuntimeError, match="runs once"):
        sampler.start()
    sampler.stop()
    sampler.stop()
    with pytest.raises(RuntimeError, match="runs once"):
        sampler.start()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"period": 0}, ValueError, "period must be finite and > 0"),
        ({"period": -1.0}, ValueError, "period must be finite and > 0"),
        ({"period": float("nan")}, ValueError, "period must be finite and > 0"),
        ({"period": "1"}, TypeError, "period must be a number"),
        ({"capacity": 0}, ValueError, "capacity must be at least 1"),
        ({"capacity": 2.5}, TypeError, "capacity must be an int"),
        ({"meter": object()}, TypeError, "must be a querymeter.Meter"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], error: type, message: str) -> None:
    """Bad arguments raise TypeError or ValueError naming the problem."""
    with pytest.raises(error, match=message):
        Sampler(**kwargs)  # type: ignore[arg-type]


def test_the_sampler_feeds_a_usl_fit(Meter: type[MeterType]) -> None:
    """Points from a sampler fit a USL model without a loop of the user's."""
    from querymeter import usl

    meter = Meter()
    with Sampler(meter, period=0.02) as sampler:
        for concurrency in (1, 2, 4):
            stop = time.monotonic() + 0.06

            def worker(stop: float = stop) -> None:
                while time.monotonic() < stop:
                    with meter.track():
                        time.sleep(0.002)

            threads = [threading.Thread(target=worker) for _ in range(concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    model = usl.fit(sampler.points())
    assert model.n_points >= 3
    assert model.lam > 0
