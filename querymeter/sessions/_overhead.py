"""The observer effect: what querymeter's hooks add to each query, measured here and now."""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from ..meter import Meter, meter_argument

__all__ = ["overhead", "settings_overhead"]

_ROUNDS = 7
_PER_ROUND = 2_000
_cache: dict[tuple[Any, ...], float] = {}
_lock = threading.Lock()


def overhead(meter: Meter | None = None) -> float:
    """The ns per query the hooks add, with ``meter``'s settings (statements, sampling).

    Measured at run time on this machine: an in-memory SQLite ``SELECT 1`` on
    a counted cursor against the same on a plain one, in interleaved rounds,
    the median difference; with a meter of the same core observing as
    ``meter`` does.  Cached per settings after the first call (about 50 ms).
    """
    meter = meter_argument(meter)
    statements, sampling = meter.statements, meter.sampling
    return settings_overhead(
        type(meter),
        statements=statements is not None,
        rate=None if sampling is None else sampling.rate,
        slower_than=None if sampling is None else sampling.slower_than,
    )


def settings_overhead(
    meter_type: type[Meter], *, statements: bool, rate: float | None, slower_than: float | None
) -> float:
    """overhead() for a meter of ``meter_type`` with these settings (a session's)."""
    settings = (meter_type, statements, rate, slower_than)
    with _lock:
        cached = _cache.get(settings)
    if cached is not None:
        return cached
    probe = meter_type()
    if statements:
        probe.enable_statements()
    if rate is not None:
        probe.enable_sampling(rate=rate, slower_than=slower_than, capacity=1)
    added = _measure(probe)
    with _lock:
        _cache[settings] = added
    return added


def _measure(probe: Meter) -> float:
    # One connection each: on a shared one, sqlite3 would find the statement
    # of the other cursor still in use and compile it anew every time.  Made
    # by the class itself, never by sqlite3.connect, which an instrumented
    # application's meter would count.
    plain_connection = sqlite3.Connection(":memory:")
    counted_connection = sqlite3.Connection(":memory:")
    try:
        plain = plain_connection.cursor()
        counted = counted_connection.cursor(_counted_cursor_class(probe))
        differences = []
        for _ in range(_ROUNDS):
            raw_ns = _round(plain)
            counted_ns = _round(counted)
            differences.append((counted_ns - raw_ns) / _PER_ROUND)
        differences.sort()
        return max(0.0, differences[len(differences) // 2])
    finally:
        plain_connection.close()
        counted_connection.close()


def _counted_cursor_class(probe: Meter) -> type:
    """A sqlite3 cursor class counted as querymeter.dbapi counts one: its execute the
    core's call wrapper, observed under its statement."""
    execute = probe._timed_statement(sqlite3.Cursor.execute, "sqlite")
    return type("Cursor", (sqlite3.Cursor,), {"__slots__": (), "execute": execute})


def _round(cursor: Any) -> int:
    execute = cursor.execute
    start = time.perf_counter_ns()
    for _ in range(_PER_ROUND):
        execute("SELECT 1")
    return time.perf_counter_ns() - start
