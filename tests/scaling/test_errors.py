"""Errors: a call that raises is counted, a workload that always raises or counts nothing stops."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from querymeter import scaling
from querymeter.meter import Meter as MeterType

LEVELS = (1, 2, 3)


def every_third(meter: MeterType, *, inside_query: bool):  # type: ignore[no-untyped-def]
    """A workload of one 2 ms query a call, every third call raising (inside the query or after)."""
    numbers = itertools.count(1)
    lock = threading.Lock()

    def workload() -> None:
        with lock:
            number = next(numbers)
        with meter.track():
            time.sleep(0.002)
            if inside_query and number % 3 == 0:
                raise ValueError(f"call {number}")
        if not inside_query and number % 3 == 0:
            raise KeyError(f"call {number}")

    return workload


def test_a_call_that_raises_after_its_queries_counts_in_errors_not_in_the_meter(
    Meter: type[MeterType],
) -> None:
    """The workload's own exception counts in level.errors; the meter's queries stay error-free."""
    meter = Meter()
    result = scaling.run(
        every_third(meter, inside_query=False),
        levels=LEVELS,
        duration=0.4,
        warmup=0.05,
        meter=meter,
    )
    assert [level.workers for level in result.levels] == list(LEVELS)
    for level in result.levels:
        assert level.interval.errors == 0
        assert level.calls > 0
        # Every third call raised: of any run of calls, a third, give or take one per worker.
        assert abs(level.errors - level.calls / 3) <= level.workers + 1, level
        assert level.first_error is not None and level.first_error.startswith("KeyError: ")
    assert result.model is not None


def test_a_query_that_raises_counts_in_both(Meter: type[MeterType]) -> None:
    """An exception out of a query counts in the meter's errors and in the calls that raised."""
    meter = Meter()
    result = scaling.run(
        every_third(meter, inside_query=True),
        levels=LEVELS,
        duration=0.4,
        warmup=0.05,
        meter=meter,
    )
    for level in result.levels:
        interval = level.interval
        assert interval.queries > 0
        # One query a call: the two counts differ only by the calls cut at the
        # window's edges, at most one a worker at each end.
        assert abs(interval.queries - level.calls) <= 2 * level.workers, level
        assert abs(interval.errors - level.errors) <= 2 * level.workers, level
        assert abs(interval.errors - interval.queries / 3) <= level.workers + 1, level
        assert level.first_error is not None and level.first_error.startswith("ValueError: call")


def test_a_workload_that_raises_at_every_call_stops_the_run(Meter: type[MeterType]) -> None:
    """Every call raising ends the run in its first level, with the first exception as the cause."""
    meter = Meter()
    workers_seen: set[str] = set()

    def workload() -> None:
        workers_seen.add(threading.current_thread().name)
        with meter.track():
            pass
        raise ZeroDivisionError("no luck")

    with pytest.raises(scaling.WorkloadError, match="raised at every call") as caught:
        scaling.run(workload, levels=(1, 2, 4), duration=30, warmup=0.05, meter=meter)
    assert "at 1 workers, the first: ZeroDivisionError: no luck" in str(caught.value)
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    assert workers_seen == {"querymeter-scaling-1-0"}
    assert not [t for t in threading.enumerate() if t.name.startswith("querymeter-scaling")]
    assert meter.snapshot().concurrency == 0


@pytest.mark.parametrize("before_await", [True, False])
def test_an_async_workload_that_raises_at_every_call_stops_the_run(
    Meter: type[MeterType], before_await: bool
) -> None:
    """An async workload raising at every call, even before its first await, stops the run."""
    meter = Meter()

    async def workload() -> None:
        if not before_await:
            await asyncio.sleep(0)
        raise OSError("refused")

    with pytest.raises(scaling.WorkloadError, match="the first: OSError: refused") as caught:
        scaling.run(workload, levels=(2, 4), duration=30, warmup=0, meter=meter)
    assert isinstance(caught.value.__cause__, OSError)


def test_a_workload_whose_queries_are_counted_elsewhere_is_refused(
    Meter: type[MeterType],
) -> None:
    """A workload that runs while the meter counts no query raises WorkloadError saying so."""
    meter, other = Meter(), Meter()

    def workload() -> None:
        with other.track():
            time.sleep(0.001)

    with pytest.raises(scaling.WorkloadError, match="the meter counted no query"):
        scaling.run(workload, levels=(1, 2), duration=0.2, warmup=0, meter=meter)


def test_a_plain_callable_returning_a_coroutine_is_refused(Meter: type[MeterType]) -> None:
    """A lambda around an async function raises TypeError: pass the async function itself."""
    meter = Meter()

    async def query() -> None:
        with meter.track():
            await asyncio.sleep(0)

    with pytest.raises(TypeError, match="pass the async def function itself"):
        scaling.run(lambda: query(), levels=(1,), duration=0.2, warmup=0, meter=meter)


def test_an_async_workload_that_never_suspends_still_ends(Meter: type[MeterType]) -> None:
    """A coroutine that awaits nothing would starve the loop; the run still measures and ends."""
    meter = Meter()

    async def workload() -> None:
        with meter.track():
            pass

    result = scaling.run(workload, levels=(1, 2, 3), duration=0.2, warmup=0, meter=meter)
    assert all(level.interval.queries > 0 for level in result.levels)
    assert all(level.errors == 0 for level in result.levels)


def test_a_slow_workload_that_raises_at_every_call_stops_at_the_levels_end(
    Meter: type[MeterType],
) -> None:
    """Fewer calls than the early stop needs, all raising: the level ends, then the run stops."""
    meter = Meter()
    calls = itertools.count(1)

    def workload() -> None:
        number = next(calls)
        with meter.track():
            time.sleep(0.02)
        raise LookupError(f"call {number}")

    started = time.monotonic()
    with pytest.raises(scaling.WorkloadError, match="raised at every call") as caught:
        scaling.run(workload, levels=(1, 2), duration=0.3, warmup=0, meter=meter)
    # About 15 calls in the level's 0.3 s, far from the early stop's count.
    assert next(calls) - 1 < scaling.ALL_FAILED_AFTER
    assert "at 1 workers, the first: LookupError: call 1" in str(caught.value)
    assert isinstance(caught.value.__cause__, LookupError)
    assert time.monotonic() - started < 5  # one level, not two; a guard against a hang
    assert meter.snapshot().concurrency == 0


def test_an_async_workload_that_raises_sometimes_is_counted_not_fatal(
    Meter: type[MeterType],
) -> None:
    """An async call that raises every third time counts in level.errors and the run goes on."""
    meter = Meter()
    numbers = itertools.count(1)

    @meter.tracked
    async def query(number: int) -> None:
        await asyncio.sleep(0.002)
        if number % 3 == 0:
            raise ValueError(f"call {number}")

    async def workload() -> None:
        await query(next(numbers))

    result = scaling.run(workload, levels=LEVELS, duration=0.4, warmup=0.05, meter=meter)
    assert [level.workers for level in result.levels] == list(LEVELS)
    for level in result.levels:
        interval = level.interval
        assert level.calls > 0 and interval.queries > 0
        assert abs(level.errors - level.calls / 3) <= level.workers + 1, level
        assert abs(interval.errors - level.errors) <= 2 * level.workers, level
        assert level.first_error is not None and level.first_error.startswith("ValueError: call")
    assert result.model is not None
