"""Four queries that sleep 0.3 s on the server at the same moment, and what the meter saw."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from querymeter import Interval, Snapshot
from querymeter.meter import Meter

SLEEP_S = 0.3
QUERIES = 4
# Tolerances, from scheduling on a shared two-core machine: a query may run
# past its 0.3 s by the round trip and a late wake-up, and the four start
# within a short window of each other after the barrier.
OVERRUN_S = 0.25
START_SKEW_S = 0.15


@dataclass
class Overlap:
    mid_flight: Snapshot
    interval: Interval
    failures: list[BaseException]


def _first_with_all_in_flight(meter: Meter, deadline: float) -> Snapshot:
    snap = meter.snapshot()
    while snap.concurrency < QUERIES and time.monotonic() < deadline:
        time.sleep(0.002)
        snap = meter.snapshot()
    return snap


def in_threads(meter: Meter, queries: list[Callable[[], object]]) -> Overlap:
    """Run the queries in threads released together; read the meter while they run."""
    barrier = threading.Barrier(len(queries) + 1)
    failures: list[BaseException] = []

    def run(query: Callable[[], object]) -> None:
        barrier.wait()
        try:
            query()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(query,)) for query in queries]
    for thread in threads:
        thread.start()
    before = meter.snapshot()
    barrier.wait()
    mid_flight = _first_with_all_in_flight(meter, time.monotonic() + SLEEP_S * 0.8)
    for thread in threads:
        thread.join()
    return Overlap(mid_flight, meter.snapshot() - before, failures)


async def in_tasks(meter: Meter, queries: list[Callable[[], Awaitable[object]]]) -> Overlap:
    """Run the coroutines as tasks of one event loop; read the meter while they run."""
    failures: list[BaseException] = []
    before = meter.snapshot()
    tasks = [asyncio.ensure_future(query()) for query in queries]
    deadline = time.monotonic() + SLEEP_S * 0.8
    mid_flight = meter.snapshot()
    while mid_flight.concurrency < QUERIES and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
        mid_flight = meter.snapshot()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            failures.append(result)
    return Overlap(mid_flight, meter.snapshot() - before, failures)


def check_on_connections(
    meter: Meter, connections: list[Any], query: Callable[[Any], object]
) -> None:
    """Run ``query(connection)`` on each connection in threads released together, check
    the overlap, and close the connections whatever happens."""
    try:
        check(in_threads(meter, [functools.partial(query, c) for c in connections]))
    finally:
        for connection in connections:
            connection.close()


def check(overlap: Overlap) -> None:
    """Concurrency 4 mid-flight; Δtotal about 1.2 s and Δbusy about 0.3 s, within the tolerances."""
    assert not overlap.failures, overlap.failures
    assert overlap.mid_flight.concurrency == QUERIES, overlap.mid_flight
    interval = overlap.interval
    assert (interval.queries, interval.errors) == (QUERIES, 0)
    total_s = interval.total_ns / 1e9
    busy_s = interval.busy_ns / 1e9
    assert QUERIES * SLEEP_S <= total_s <= QUERIES * (SLEEP_S + OVERRUN_S), total_s
    assert SLEEP_S <= busy_s <= SLEEP_S + OVERRUN_S + START_SKEW_S, busy_s
    assert interval.later.concurrency == 0
