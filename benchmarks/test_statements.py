"""The statement table and sampling on sqlite3 in memory, beside the raw driver and peers.

``cursor.execute("SELECT 1")`` and ``cursor.execute("SELECT ?", (1,))`` on a
reused cursor, C core, in one run:

- raw sqlite3 (the baseline);
- querymeter instrumented, statements off;
- statements on (a statement seen before: the cache hit);
- statements on and sampling at 0.01; sampling at 0.01 alone;
- a pg_stat_statements-like aggregation written in Python at the same hook
  point (a cursor subclass timing with perf_counter_ns, a cached fingerprint,
  a dict of calls, total, min, max and sum of squares under a lock);
- OpenTelemetry's dbapi instrumentation, which records the statement text
  (``db.statement``; it has no sanitizer) on spans: with a no-op tracer
  provider (nothing is recorded) and with an SDK TracerProvider.

Then the cost of a statement text seen for the first time (fingerprinted in
Python), and the memory a table holding 5000 statements takes.

Goals: statements on add at most 0.5 us per execute over statements off
(target 0.3 us); sampling at 0.01 at most 0.1 us more; 5000 statements in less
than 10 MB.
"""

from __future__ import annotations

import gc
import itertools
import math
import random
import sqlite3
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest

import querymeter
import querymeter.dbapi
from querymeter.meter import Meter
from querymeter.statements import _fingerprint

from .conftest import (
    OPS,
    interleaved_medians,
    load_meter_class,
    mark_baseline,
    print_interleaved,
    quick_mode,
)

RANGE = range(OPS)
SQL = "SELECT 1"
SQL_WITH_PARAMETER = "SELECT ?"
PARAMETER = (1,)
SAMPLING_RATE = 0.01


# ------------------------------------------------------------------ the variants


def raw_cursor() -> Any:
    return sqlite3.connect(":memory:").cursor()


def counted_cursor(meter: Meter) -> Any:
    """A cursor of a sqlite3 connection counted into ``meter`` (C core)."""
    querymeter.dbapi.instrument(sqlite3, meter=meter)
    try:
        return sqlite3.connect(":memory:").cursor()
    finally:
        querymeter.dbapi.uninstrument(sqlite3)


def querymeter_cursor(statements: bool, sampling: bool) -> Callable[[], Any]:
    def make() -> Any:
        meter = load_meter_class("c")()
        if statements:
            meter.enable_statements(max_statements=5000)
        if sampling:
            meter.enable_sampling(rate=SAMPLING_RATE)
        cursor = counted_cursor(meter)
        # The statements are in the table (and its cache) before timing starts.
        cursor.execute(SQL)
        cursor.execute(SQL_WITH_PARAMETER, PARAMETER)
        return cursor

    return make


class StatementStats:
    """pg_stat_statements' figures of one statement, in Python."""

    __slots__ = ("calls", "errors", "max_ns", "min_ns", "total_ns", "total_sq")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.total_ns = 0
        self.total_sq = 0
        self.min_ns = 1 << 64
        self.max_ns = 0


def python_aggregation_cursor() -> Any:
    """A pg_stat_statements-like aggregation at the DB-API hook point, in plain Python."""
    lock = threading.Lock()
    table: dict[str, StatementStats] = {}
    fingerprints: dict[str, str] = {}
    clock = time.perf_counter_ns

    def record(sql: Any, elapsed: int, failed: bool) -> None:
        shape = fingerprints.get(sql)
        if shape is None:
            shape = fingerprints[sql] = querymeter.fingerprint(sql, "sqlite")
        with lock:
            stats = table.get(shape)
            if stats is None:
                stats = table[shape] = StatementStats()
            stats.calls += 1
            stats.errors += failed
            stats.total_ns += elapsed
            stats.total_sq += elapsed * elapsed
            if elapsed < stats.min_ns:
                stats.min_ns = elapsed
            if elapsed > stats.max_ns:
                stats.max_ns = elapsed

    class AggregatingCursor(sqlite3.Cursor):
        def execute(self, sql: Any, *args: Any) -> Any:
            start = clock()
            try:
                result = super().execute(sql, *args)
            except BaseException:
                record(sql, clock() - start, True)
                raise
            record(sql, clock() - start, False)
            return result

    return sqlite3.connect(":memory:").cursor(AggregatingCursor)


def opentelemetry_cursor(with_sdk: bool) -> Callable[[], Any]:
    """OpenTelemetry's dbapi instrumentation: the statement text goes on each recorded span."""

    def make() -> Any:
        from opentelemetry import metrics, trace
        from opentelemetry.instrumentation.dbapi import instrument_connection

        if with_sdk:
            from opentelemetry.sdk.trace import TracerProvider

            tracer_provider: Any = TracerProvider()
        else:
            tracer_provider = trace.NoOpTracerProvider()
        connection = instrument_connection(
            "querymeter-benchmark",
            sqlite3.connect(":memory:"),
            "sqlite",
            tracer_provider=tracer_provider,
            meter_provider=metrics.NoOpMeterProvider(),
        )
        return connection.cursor()

    return make


VARIANTS: dict[str, Callable[[], Any]] = {
    "raw": raw_cursor,
    "statements-off": querymeter_cursor(statements=False, sampling=False),
    "statements-on": querymeter_cursor(statements=True, sampling=False),
    "statements-on+sampling-0.01": querymeter_cursor(statements=True, sampling=True),
    "sampling-0.01-only": querymeter_cursor(statements=False, sampling=True),
    "python-aggregation": python_aggregation_cursor,
    "opentelemetry-no-sdk": opentelemetry_cursor(with_sdk=False),
    "opentelemetry-sdk": opentelemetry_cursor(with_sdk=True),
}


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest, benchmark: Any) -> Any:
    name = request.param
    if name == "raw":
        mark_baseline(benchmark)
    return VARIANTS[name]()


def execute_alone(cursor: Any) -> Callable[[], None]:
    execute = cursor.execute

    def run() -> None:
        for _ in RANGE:
            execute(SQL)

    return run


def execute_with_parameter(cursor: Any) -> Callable[[], None]:
    execute = cursor.execute

    def run() -> None:
        for _ in RANGE:
            execute(SQL_WITH_PARAMETER, PARAMETER)

    return run


@pytest.mark.benchmark(group="statements: execute SELECT 1", min_rounds=20)
def test_execute(benchmark: Any, variant: Any) -> None:
    """cursor.execute("SELECT 1") on a reused cursor."""
    benchmark(execute_alone(variant))


@pytest.mark.benchmark(group="statements: execute SELECT ? with one parameter", min_rounds=20)
def test_execute_with_parameter(benchmark: Any, variant: Any) -> None:
    """cursor.execute("SELECT ?", (1,)) on a reused cursor."""
    benchmark(execute_with_parameter(variant))


def test_added_cost_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every variant in turn, round after round, for both statements: the figures to judge by."""
    cursors = {name: make() for name, make in VARIANTS.items()}
    rounds = 1 if quick_mode(request.config) else 41
    for title, workload in (
        ("SELECT 1", execute_alone),
        ("SELECT ? with one parameter", execute_with_parameter),
    ):
        medians = interleaved_medians(
            {name: workload(cursor) for name, cursor in cursors.items()}, rounds
        )
        if not quick_mode(request.config):
            print_interleaved(f"statements, {title}", medians, "raw", capsys)
            off = medians["statements-off"]
            on = medians["statements-on"]
            with capsys.disabled():
                print(
                    f"  statements on - off: {on - off:+.1f} ns/op;"
                    f" sampling 0.01 on top: {medians['statements-on+sampling-0.01'] - on:+.1f}"
                    f" ns/op; sampling alone - off: {medians['sampling-0.01-only'] - off:+.1f}"
                    " ns/op"
                )


# ------------------------------------------------------- a statement seen for the first time

# About 200 characters, an application's query: a join, strings, an IN list, ORDER BY, LIMIT.
# {number} makes each text new; {shape} (where it is a name) makes each a new statement.
NEW_STATEMENT = (
    "SELECT t.one AS first_column{shape}, 'customer' AS kind, upper('abc') AS code"
    " FROM (SELECT 1 AS one) AS t WHERE t.one = 1 AND {number} > 0"
    " AND 'x' NOT IN ('a', 'b', 'c') ORDER BY first_column{shape} LIMIT 10"
)
_serial = itertools.count()


def new_texts(new_shape: bool) -> list[str]:
    """OPS texts never sent before: new literals, and new names too if ``new_shape``."""
    texts = []
    for _ in RANGE:
        number = next(_serial)
        texts.append(NEW_STATEMENT.format(number=number, shape=number if new_shape else ""))
    return texts


assert 190 <= len(NEW_STATEMENT.format(number=123456, shape="")) <= 210


NEW_VARIANTS: dict[str, tuple[Callable[[], Any], bool]] = {
    "raw": (raw_cursor, False),
    "statements-off": (querymeter_cursor(statements=False, sampling=False), False),
    "statements-on, new text of a known statement": (
        querymeter_cursor(statements=True, sampling=False),
        False,
    ),
    "statements-on, new statement (5000 held, evicting)": (
        querymeter_cursor(statements=True, sampling=False),
        True,
    ),
    "raw, new statement": (raw_cursor, True),
}


@pytest.mark.benchmark(group="statements: a new 200-character text per execute")
@pytest.mark.parametrize("name", list(NEW_VARIANTS))
def test_new_statement(benchmark: Any, name: str) -> None:
    """cursor.execute(text) where every text is new: sqlite3 prepares it, the table fingerprints it.

    The ratio to raw sqlite3 (which prepares each new text too) is the cost of
    fingerprinting and entering a statement; the texts are made outside the timing.
    """
    make, new_shape = NEW_VARIANTS[name]
    if name == "raw":
        mark_baseline(benchmark)
    cursor = make()

    def setup() -> tuple[tuple[list[str]], dict[str, Any]]:
        return (new_texts(new_shape),), {}

    def run(texts: list[str]) -> None:
        execute = cursor.execute
        for text in texts:
            execute(text)

    benchmark.pedantic(run, setup=setup, rounds=15, iterations=1)


# ------------------------------------------------------------------------ memory

HELD = 5000
CALLS_PER_STATEMENT = 20
# Latencies log-uniform over two decades, 20 us to 2 ms: each statement's histogram
# spans most of the range, as it would in a real application.
LOW_NS, HIGH_NS = 20_000, 2_000_000


def fill_table(table: Any, texts: list[str], latencies: list[int]) -> None:
    """Record each statement's calls, as the hooks do at each query's end."""
    record = table._core._record
    for number, text in enumerate(texts):
        for call in range(CALLS_PER_STATEMENT):
            record(text, "sqlite", latencies[number * CALLS_PER_STATEMENT + call], False, 1)


@pytest.mark.benchmark(group="statements: 5000 statements held (memory in extra_info)")
@pytest.mark.parametrize("implementation", ["c", "python"])
def test_memory_of_5000_statements(
    benchmark: Any,
    implementation: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A table filled with 5000 distinct statements, 20 calls each: time to fill, and its size.

    The size is the growth of traced memory from before the table was made to
    after it was filled, with the statement texts held only by the table; the
    fingerprint function's own cache (bounded, shared by all tables) is
    emptied before and counted apart.  In quick mode, 500 statements: checked, not measured.
    """
    held_count = 500 if quick_mode(request.config) else HELD
    meter = load_meter_class(implementation)()
    rng = random.Random(5000)
    spread = math.log(HIGH_NS / LOW_NS)
    latencies = [
        round(LOW_NS * math.exp(rng.random() * spread))
        for _ in range(held_count * CALLS_PER_STATEMENT)
    ]

    def texts() -> list[str]:
        return [
            f"SELECT c{n}, note FROM qm_items_{n % 97} WHERE id = {n} AND c{n} > 0"
            for n in range(held_count)
        ]

    # Measured once, outside the timing, with tracemalloc on.
    _fingerprint._cache.clear()
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        table = meter.enable_statements(max_statements=HELD)
        held = texts()
        fill_table(table, held, latencies)
        del held
        gc.collect()
        with_cache, _ = tracemalloc.get_traced_memory()
        cache_entries = len(_fingerprint._cache)
        _fingerprint._cache.clear()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    reading = table.snapshot()
    assert len(reading) == held_count
    assert reading.calls == held_count * CALLS_PER_STATEMENT
    table_bytes = after - before
    cache_bytes = with_cache - after
    benchmark.extra_info["table_bytes"] = table_bytes
    benchmark.extra_info["fingerprint_cache_bytes"] = cache_bytes
    benchmark.extra_info["ops"] = held_count * CALLS_PER_STATEMENT
    p99 = sorted(stats.p99_ns or 0 for stats in reading.statements)[held_count // 2]
    with capsys.disabled():
        print(
            f"\nstatements, {implementation} core: {held_count} statements x {CALLS_PER_STATEMENT}"
            f" calls: table {table_bytes / 1e6:.2f} MB ({table_bytes / held_count:.0f} B each),"
            f" fingerprint cache {cache_bytes / 1e6:.2f} MB ({cache_entries} entries);"
            f" median statement's p99 {p99 / 1000:.0f} us"
        )
    meter.disable_statements()

    def setup() -> tuple[tuple[Any, list[str]], dict[str, Any]]:
        _fingerprint._cache.clear()
        return (meter.enable_statements(max_statements=HELD), texts()), {}

    def run(table: Any, held: list[str]) -> None:
        fill_table(table, held, latencies)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    meter.disable_statements()
    _fingerprint._cache.clear()
