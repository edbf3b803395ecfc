"""Each level's Interval against workloads whose figures are known: sleeps, and a lock in rounds."""

from __future__ import annotations

import asyncio

import pytest

from querymeter import scaling
from querymeter.meter import Meter as MeterType

from .workloads import LockInRounds, sleeper

SLEEP_S = 0.02
DURATION_S = 1.0


def check_sleeping_level(level: scaling.Level) -> None:
    """One level of queries that each sleep SLEEP_S, back to back, from each worker.

    At most ``workers`` queries are in flight at any instant, so N <= workers
    exactly; each worker completes at most one query per SLEEP_S, plus one
    at the window's edge, which bounds X from above.  The lower bounds leave
    room for a loaded machine (sleeps that overrun, threads waiting for a CPU).
    """
    interval = level.interval
    workers = level.workers
    assert interval.concurrency is not None and interval.throughput is not None
    assert interval.concurrency <= workers * (1 + 1e-9)
    assert interval.concurrency >= 0.8 * workers
    ceiling = workers / SLEEP_S * (1 + SLEEP_S / interval.duration) + 1e-9
    assert 0.5 * workers / SLEEP_S <= interval.throughput <= ceiling
    assert interval.response_time is not None and interval.response_time >= 0.9 * SLEEP_S
    # The calls are the queries (one each), but for the calls cut at the edges.
    assert abs(level.calls - interval.queries) <= 2 * workers
    assert level.errors == 0 and interval.errors == 0
    assert interval.utilization is not None and interval.utilization <= 1.0


def test_threads_sleeping_inside_track_give_n_workers_and_x_workers_over_sleep(
    Meter: type[MeterType],
) -> None:
    """Threads of back-to-back sleeps: N is about the workers and X about workers / sleep."""
    meter = Meter()
    result = scaling.run(
        sleeper(meter, SLEEP_S), levels=(1, 2, 4, 8), duration=DURATION_S, warmup=0.1, meter=meter
    )
    assert [level.workers for level in result.levels] == [1, 2, 4, 8]
    for level in result.levels:
        check_sleeping_level(level)
        assert level.interval.duration == pytest.approx(DURATION_S, rel=0.2)
    assert meter.snapshot().concurrency == 0


def test_tasks_sleeping_inside_track_give_n_workers_and_x_workers_over_sleep(
    Meter: type[MeterType],
) -> None:
    """Tasks of back-to-back asyncio sleeps, an event loop per level: the same figures."""
    meter = Meter()
    loops: set[int] = set()

    @meter.tracked
    async def query() -> None:
        await asyncio.sleep(SLEEP_S)

    async def workload() -> None:
        loops.add(id(asyncio.get_running_loop()))
        await query()

    result = scaling.run(workload, levels=(1, 4, 16), duration=DURATION_S, warmup=0.1, meter=meter)
    for level in result.levels:
        check_sleeping_level(level)
    assert len(loops) == 3  # one loop per level (each closed before the next is made)


def test_the_fit_recovers_the_contention_of_a_lock(Meter: type[MeterType]) -> None:
    """A lock's serial share comes back as sigma, 1 / (parallel + serial) as lambda, kappa near 0.

    The truth is worked out in LockInRounds: R(N) = parallel + N * serial
    exactly, an Amdahl curve.  Sleeps overrun a little, the lock's hand-over
    adds a little to the serial part, and a window holds whole rounds give
    or take one (a round lasts up to 78 ms here), hence the tolerances;
    measured on this machine: sigma 0.161, kappa 0, lambda 26.4 against
    0.167, 0, 27.8.
    """
    meter = Meter()
    workload = LockInRounds(meter, parallel=0.030, serial=0.006)
    result = scaling.run(
        workload,
        levels=(1, 2, 3, 4, 6, 8),
        duration=2.0,
        warmup=0.2,
        meter=meter,
        setup=workload.level,
    )
    for level in result.levels:
        interval = level.interval
        assert interval.concurrency is not None and interval.response_time is not None
        assert interval.concurrency == pytest.approx(level.workers, rel=0.1)
        # Each query lasts its whole round.
        expected_r = workload.parallel + level.workers * workload.serial
        assert interval.response_time == pytest.approx(expected_r, rel=0.25)
    model = result.model
    assert model is not None, result.fit_problem
    assert model.sigma == pytest.approx(workload.sigma, abs=0.05)  # 1/6
    assert model.lam == pytest.approx(workload.lam, rel=0.15)  # 27.8 queries/s
    assert model.kappa < 0.005
    assert model.limiting_factor == "contention"
    # The ceiling of an Amdahl curve is lam / sigma = 1 / serial: the lock's capacity.
    assert model.max_throughput == pytest.approx(1 / workload.serial, rel=0.25)
    assert result.describes_data, result.reading
    assert result.verdict == result.reading.summary
