"""The statement table: exact figures per fingerprint, quantiles within the stated error,
bounded by pg_stat_statements' eviction, consistent readings, intervals; on both cores."""

from __future__ import annotations

import math
import random
import statistics
import threading
import time
from typing import Any

import pytest

import querymeter
from querymeter.meter import Meter as MeterType
from querymeter.statements import StatementsInterval, StatementStats

from ..conftest import FakeClock

SQL = "SELECT name FROM users WHERE id = 1"
SHAPE = "select name from users where id = ?"


def run(
    meter: MeterType, clock: FakeClock, sql: str | None, ns: int, *, fail: bool = False
) -> None:
    """One query of exactly ``ns`` on the fake clock, under ``sql``."""
    try:
        with meter.track(sql):
            clock.advance(ns)
            if fail:
                raise ValueError("the query failed")
    except ValueError:
        pass


def nearest_rank(values: list[int], q: float) -> int:
    """The textbook nearest-rank quantile: the oracle for the histogram's."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_a_statement_is_aggregated_under_its_fingerprint(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """Literals and placeholders give one row; its figures are exactly those of the calls."""
    table = fake_meter.enable_statements()
    durations = [1_200, 3_400, 900, 15_000, 2_000]
    texts = [SQL, "select name from users where id = 2", "SELECT name FROM users WHERE id = ?"]
    for i, ns in enumerate(durations):
        run(fake_meter, clock, texts[i % 3], ns, fail=i == 3)

    reading = table.snapshot()
    assert len(reading) == 1
    row = reading[SHAPE]
    assert row.fingerprint == querymeter.fingerprint(SQL) == SHAPE
    assert row.statement_id == querymeter.statement_id(SHAPE)
    assert row.sample_sql == SQL, "the first text seen"
    assert row.calls == 5 and row.errors == 1
    assert row.total_ns == sum(durations)
    assert (row.min_ns, row.max_ns) == (900, 15_000)
    assert row.mean_ns == pytest.approx(statistics.fmean(durations))
    assert row.stddev_ns == pytest.approx(statistics.pstdev(durations), rel=1e-12)
    assert row.rows is None, "no cursor reported rows"
    assert row.first_seen is not None and row.last_seen is not None
    assert row.first_seen <= row.last_seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_are_within_the_stated_relative_error(
    fake_meter: MeterType, clock: FakeClock, seed: int
) -> None:
    """p50/p95/p99/p99.9 from the histogram are within 1/64 of the exact nearest-rank ones."""
    table = fake_meter.enable_statements()
    rng = random.Random(seed)
    # Log-uniform over five decades, 10 ns to 1 ms, plus some repeats.
    durations = [int(10 ** rng.uniform(1, 6)) for _ in range(3000)]
    durations += [durations[0]] * 50
    for ns in durations:
        run(fake_meter, clock, "select 1", ns)
    row = table.snapshot()["select ?"]
    for q, estimate in [
        (0.5, row.p50_ns),
        (0.95, row.p95_ns),
        (0.99, row.p99_ns),
        (0.999, row.p999_ns),
        (0.25, row.quantile(0.25)),
        (1.0, row.quantile(1.0)),
    ]:
        exact = nearest_rank(durations, q)
        assert estimate is not None
        assert abs(estimate - exact) <= exact / 64, (q, estimate, exact)
    assert row.quantile(1.0) <= row.max_ns == max(durations)


def test_short_durations_have_exact_quantiles(fake_meter: MeterType, clock: FakeClock) -> None:
    """Below 64 ns every value has a bucket of its own."""
    table = fake_meter.enable_statements()
    durations = list(range(1, 61))
    for ns in durations:
        run(fake_meter, clock, "select 1", ns)
    row = table.snapshot()["select ?"]
    assert row.p50_ns == nearest_rank(durations, 0.5) == 30
    assert row.p95_ns == nearest_rank(durations, 0.95) == 57


def test_a_very_wide_spread_keeps_its_upper_quantiles(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """Beyond the window's 20 powers of two, low values are counted in its lowest bucket:
    the upper quantiles stay within the error, the low ones are never below the minimum."""
    table = fake_meter.enable_statements()
    durations = [2**k for k in range(4, 40)] * 10 + [3 * 2**38] * 200
    for ns in durations:
        run(fake_meter, clock, "select 1", ns)
    row = table.snapshot()["select ?"]
    for q in (0.99, 0.999):
        exact = nearest_rank(durations, q)
        estimate = row.quantile(q)
        assert estimate is not None and abs(estimate - exact) <= exact / 64
    low = row.quantile(0.01)
    assert low is not None and row.min_ns <= low <= row.max_ns
    assert row.calls == len(durations) and row.total_ns == sum(durations)


def test_the_rows_add_up_to_the_meters_counts(fake_meter: MeterType, clock: FakeClock) -> None:
    """Statements, `untexted` (no text) and `evicted` together are what the meter counted."""
    table = fake_meter.enable_statements()
    run(fake_meter, clock, "select 1", 100)
    run(fake_meter, clock, None, 200)  # track() without sql
    token = fake_meter.begin()
    clock.advance(300)
    fake_meter.end(token, error=True)
    fake_meter.tracked(lambda: clock.advance(400))()
    run(fake_meter, clock, "insert into t values (1)", 500, fail=True)

    reading = table.snapshot()
    meter = fake_meter.snapshot()
    assert reading.untexted.calls == 3 and reading.untexted.total_ns == 900
    assert reading.untexted.errors == 1
    assert reading.untexted.fingerprint == "(no statement text)"
    assert (reading.calls, reading.errors, reading.total_ns) == (
        meter.queries,
        meter.errors,
        meter.total_ns,
    )
    assert {row.fingerprint for row in reading} == {"select ?", "insert into t values(?+)"}


def test_a_full_table_evicts_the_least_used_and_stays_bounded(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """pg_stat_statements' rule: usage decays, the least used 5 % (at least one) go into
    `evicted`; the table never holds more than max_statements; nothing is lost."""
    table = fake_meter.enable_statements(max_statements=20)
    hot = [f"select * from hot{i} where a = 1" for i in range(5)]
    for _ in range(50):
        for sql in hot:
            run(fake_meter, clock, sql, 1_000)
    for i in range(100):
        run(fake_meter, clock, f"select * from cold{i}", 10)
        assert len(table) <= 20
        run(fake_meter, clock, hot[i % 5], 1_000)

    reading = table.snapshot()
    meter = fake_meter.snapshot()
    assert len(reading) == 20
    assert reading.dropped == 100 + 5 - 20, "every statement the table could not keep"
    for sql in hot:
        assert querymeter.fingerprint(sql) in reading, "a much-used statement stays"
    assert reading.evicted.fingerprint == "(evicted)"
    assert reading.evicted.calls == reading.dropped
    assert reading.evicted.total_ns == 10 * reading.dropped
    assert (reading.calls, reading.total_ns) == (meter.queries, meter.total_ns)


def test_eviction_drops_five_percent_of_a_large_table(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    table = fake_meter.enable_statements(max_statements=200)
    for i in range(201):
        run(fake_meter, clock, f"select * from t{i}", 10)
    reading = table.snapshot()
    assert reading.dropped == 10, "5 % of 200"
    assert len(reading) == 191


def test_an_interval_holds_only_what_ran_in_it(fake_meter: MeterType, clock: FakeClock) -> None:
    table = fake_meter.enable_statements()
    meter_before_start = fake_meter.snapshot()
    for _ in range(100):
        run(fake_meter, clock, "select 1", 1_000)
    earlier, meter_earlier = table.snapshot(), fake_meter.snapshot()
    for _ in range(10):
        run(fake_meter, clock, "select 1", 1_000_000)
    run(fake_meter, clock, "select 2 from t", 5_000, fail=True)
    later, meter_later = table.snapshot(), fake_meter.snapshot()

    interval = later - earlier
    row = interval["select ?"]
    assert (row.calls, row.total_ns, row.errors) == (10, 10_000_000, 0)
    assert row.p50_ns is not None and abs(row.p50_ns - 1_000_000) <= 1_000_000 / 64
    assert row.min_ns is not None and abs(row.min_ns - 1_000_000) <= 1_000_000 / 64
    assert row.stddev_ns == pytest.approx(0.0, abs=1e-6)
    new = interval["select ? from t"]
    assert (new.calls, new.errors, new.min_ns, new.max_ns) == (1, 1, 5_000, 5_000)
    assert interval.top(1, by="calls")[0].fingerprint == "select ?"
    expected = meter_later - meter_earlier
    assert (interval.calls, interval.errors, interval.total_ns) == (
        expected.queries,
        expected.errors,
        expected.total_ns,
    )
    assert meter_before_start.queries == 0


def test_an_interval_across_evictions_still_adds_up(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """A statement evicted during the interval took its earlier calls into `evicted`:
    the interval counts only the calls made in it."""
    table = fake_meter.enable_statements(max_statements=5)
    for i in range(5):
        for _ in range(i + 1):
            run(fake_meter, clock, f"select * from t{i}", 100)
    earlier, meter_earlier = table.snapshot(), fake_meter.snapshot()
    run(fake_meter, clock, "select * from t0", 100)  # its fifth... then it is evicted
    for i in range(5, 12):
        run(fake_meter, clock, f"select * from t{i}", 7)
    later, meter_later = table.snapshot(), fake_meter.snapshot()
    assert later.dropped > earlier.dropped

    interval = later - earlier
    expected = meter_later - meter_earlier
    assert (interval.calls, interval.total_ns) == (expected.queries, expected.total_ns)
    assert interval.dropped == later.dropped - earlier.dropped


def test_readings_of_different_tables_do_not_subtract(Meter: type[MeterType]) -> None:
    meter = Meter()
    first = meter.enable_statements().snapshot()
    meter.disable_statements()
    table = meter.enable_statements()
    earlier = table.snapshot()
    time.sleep(0.001)
    later = table.snapshot()
    with pytest.raises(ValueError, match="different statement tables"):
        later - first
    with pytest.raises(ValueError, match="earlier reading must be subtracted from the later"):
        earlier - later
    assert isinstance(later - earlier, StatementsInterval)


def test_top_sorts_by_each_figure(fake_meter: MeterType, clock: FakeClock) -> None:
    table = fake_meter.enable_statements()
    # a: many quick calls; b: few slow ones; c: one failing medium one.
    for _ in range(10):
        run(fake_meter, clock, "select a from t", 100)
    for _ in range(2):
        run(fake_meter, clock, "select b from t", 5_000)
    run(fake_meter, clock, "select c from t", 2_000, fail=True)
    reading = table.snapshot()

    def names(rows: list[StatementStats]) -> list[str]:
        return [row.fingerprint.split()[1] for row in rows]

    assert names(reading.top(3, by="total")) == ["b", "c", "a"]
    assert names(reading.top(3, by="calls")) == ["a", "b", "c"]
    assert names(reading.top(3, by="mean")) == ["b", "c", "a"]
    assert names(reading.top(3, by="max")) == ["b", "c", "a"]
    assert names(reading.top(3, by="p99")) == ["b", "c", "a"]
    assert names(reading.top(1, by="errors")) == ["c"]
    assert names(reading.top(2)) == ["b", "c"]
    assert table.top(1)[0].fingerprint == "select b from t"
    with pytest.raises(ValueError, match="by must be one of"):
        reading.top(by="slowest")
    with pytest.raises(ValueError, match="at least 1"):
        reading.top(0)
    with pytest.raises(TypeError, match="n must be an int"):
        reading.top(2.5)  # type: ignore[arg-type]


def test_enabling_and_disabling(Meter: type[MeterType]) -> None:
    meter = Meter()
    assert meter.statements is None
    table = meter.enable_statements(max_statements=100)
    assert meter.statements is table
    assert meter.enable_statements(max_statements=100) is table
    with pytest.raises(ValueError, match="already enabled with max_statements=100"):
        meter.enable_statements(max_statements=50)
    with meter.track("select 1"):
        pass
    assert meter.disable_statements() is table
    assert meter.statements is None
    with meter.track("select 1"):
        pass
    assert table.snapshot()["select ?"].calls == 1, "nothing counted once disabled"
    assert meter.disable_statements() is None
    for bad, error in [(0, ValueError), (-5, ValueError), (2.0, TypeError), (True, TypeError)]:
        with pytest.raises(error, match="max_statements"):
            meter.enable_statements(max_statements=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sql must be a str or None"):
        meter.track(sql=b"select 1")  # type: ignore[arg-type]


def test_a_failing_fingerprint_is_a_fault_and_nothing_is_lost(
    fake_meter: MeterType, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from querymeter.statements import _table

    def broken(sql: str, dialect: str | None = None) -> str:
        raise RuntimeError("fingerprinting broke")

    monkeypatch.setattr(_table, "fingerprint", broken)
    faults_before = querymeter.faults().get("could not record a statement", 0)
    table = fake_meter.enable_statements()
    run(fake_meter, clock, "select 1", 100)
    reading = table.snapshot()
    assert len(reading) == 0
    assert reading.untexted.calls == 1 and reading.untexted.total_ns == 100
    assert querymeter.faults()["could not record a statement"] == faults_before + 1


class _InterruptingCursor:
    """A cursor whose rowcount property is interrupted (a signal handler's KeyboardInterrupt)."""

    @property
    def rowcount(self) -> int:
        raise KeyboardInterrupt


def test_an_interrupt_while_reading_rows_propagates_after_recording(Meter: type[MeterType]) -> None:
    meter = Meter()
    table = meter.enable_statements()
    cursor = _InterruptingCursor()
    with pytest.raises(KeyboardInterrupt):
        meter._call_statement("sqlite", 0, lambda cursor, sql: None, cursor, "select 1")
    assert table.snapshot()["select ?"].calls == 1
    assert meter.snapshot().queries == 1 and meter.snapshot().concurrency == 0


class _Cursor:
    def __init__(self, rowcount: Any) -> None:
        self.rowcount = rowcount


@pytest.mark.parametrize(
    ("rowcount", "rows"), [(3, 3), (0, 0), (-1, None), (None, None), ("x", None)]
)
def test_rows_are_the_cursors_rowcount_where_it_knows(
    Meter: type[MeterType], rowcount: Any, rows: int | None
) -> None:
    meter = Meter()
    table = meter.enable_statements()
    for _ in range(2):
        meter._call_statement(
            "postgresql", 0, lambda cursor, sql: None, _Cursor(rowcount), "delete from t"
        )
    assert table.snapshot()["delete from t"].rows == (None if rows is None else 2 * rows)


def test_the_dialect_decides_what_double_quotes_are(Meter: type[MeterType]) -> None:
    meter = Meter()
    table = meter.enable_statements()
    sql = 'select "Name" from t'
    meter._call_statement("postgresql", 0, lambda cursor, sql: None, None, sql)
    meter._call_statement("mysql", 0, lambda cursor, sql: None, None, sql)
    reading = table.snapshot()
    assert reading['select "Name" from t'].calls == 1, "an identifier in PostgreSQL"
    assert reading["select ? from t"].calls == 1, "a string in MySQL"


def test_concurrent_updates_never_tear_a_reading(Meter: type[MeterType]) -> None:
    """Threads run queries while a reader checks every reading: each row's histogram
    holds exactly its calls, and no reading shows more than the meter counted after it."""
    meter = Meter()
    table = meter.enable_statements(max_statements=8)
    stop = threading.Event()
    problems: list[str] = []
    per_thread = 3000

    def work(n: int) -> None:
        for i in range(per_thread):
            with meter.track(f"select * from t{(i * 7 + n) % 12}"):
                pass

    def read() -> None:
        while not stop.is_set():
            reading = table.snapshot()
            after = meter.snapshot().queries
            for row in [*reading, reading.evicted, reading.untexted]:
                held = sum(memoryview(row.histogram).cast("Q"))
                if held != row.calls:
                    problems.append(f"{row.fingerprint}: {held} in histogram, {row.calls} calls")
            if reading.calls > after:
                problems.append(f"reading {reading.calls} > meter {after}")

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    stop.set()
    reader.join()
    assert problems == []
    final = table.snapshot()
    assert final.calls == 4 * per_thread == meter.snapshot().queries
    assert len(final) <= 8


def test_non_text_statements_are_named_by_their_type(Meter: type[MeterType]) -> None:
    """A composed statement object is not rendered (no code of it runs): its type names it."""

    class Composed:
        def __str__(self) -> str:
            raise AssertionError("instrumentation must not run the application's code")

    meter = Meter()
    table = meter.enable_statements()
    meter._call_statement(None, 0, lambda cursor, sql: None, None, Composed())
    meter._call_statement(None, 0, lambda cursor, sql: None, None, b"select 1")
    reading = table.snapshot()
    names = {row.fingerprint for row in reading}
    assert "select ?" in names
    assert any(name.endswith(".Composed)") for name in names), names


def test_both_cores_keep_the_same_table() -> None:
    """The same queries on the C core and on its twin: the same figures, histograms,
    evictions and order of eviction (everything but the wall-clock times)."""
    from ..conftest import load_meter_class

    readings = []
    for implementation in ("c", "python"):
        clock = FakeClock()
        meter = load_meter_class(implementation)(clock=clock)
        table = meter.enable_statements(max_statements=10)
        rng = random.Random(7)
        for _ in range(2000):
            n = int(rng.paretovariate(1.2)) % 40
            run(meter, clock, f"select * from t{n} where a = {rng.randint(0, 9)}",
                int(10 ** rng.uniform(1, 8)), fail=rng.random() < 0.05)  # fmt: skip
        reading = table.snapshot()
        readings.append(
            [
                (
                    row.fingerprint,
                    row.calls,
                    row.errors,
                    row.total_ns,
                    row.total_sq,
                    row.min_ns,
                    row.max_ns,
                    row.serial,
                    row.histogram_lo,
                    row.histogram,
                )
                for row in [*reading, reading.evicted, reading.untexted]
            ]
            + [reading.dropped]
        )
    assert readings[0] == readings[1]


def test_counts_past_32_bits_stay_exact(Meter: type[MeterType]) -> None:
    """A histogram's counts are 32-bit until one would overflow: then they widen, and
    nothing is lost, also when such an entry is evicted into `evicted`."""
    meter = Meter()
    table = meter.enable_statements(max_statements=1)
    core_table = table._core
    big = 2**32 - 5
    core_table._record("select 1", None, 1_000, False, 2, big)
    core_table._record("select 1", None, 1_000, False, 2, 10)
    core_table._record("select 1", None, 50, True, -1, 2**33)
    row = table.snapshot()["select ?"]
    counts = memoryview(row.histogram).cast("Q")
    assert row.calls == big + 10 + 2**33 == sum(counts)
    assert sorted(count for count in counts if count) == [big + 10, 2**33]
    assert row.errors == 2**33 and row.rows == 2 * (big + 10)
    assert row.total_ns == 1_000 * (big + 10) + 50 * 2**33
    assert row.p50_ns == 50 and row.p999_ns is not None and abs(row.p999_ns - 1_000) <= 1_000 / 64

    core_table._record("select 2 from t", None, 7, False, -1)  # evicts "select ?"
    evicted = table.snapshot().evicted
    assert evicted.calls == row.calls and sum(memoryview(evicted.histogram).cast("Q")) == row.calls
    assert evicted.total_ns == row.total_ns


@pytest.mark.parametrize("by", ["total", "calls", "mean", "max", "p99", "errors", "rows"])
def test_the_tables_top_is_the_readings_top(
    fake_meter: MeterType, clock: FakeClock, by: str
) -> None:
    """table.top() picks from the raw figures (a scrape of a full table builds n readings,
    not all): the same statements, in the same order, ties included."""
    table = fake_meter.enable_statements()
    rng = random.Random(3)
    for i in range(300):
        for _ in range(rng.randint(1, 4)):
            run(fake_meter, clock, f"select * from t{i % 120}", rng.choice([10, 20, 40]),
                fail=rng.random() < 0.2)  # fmt: skip
    fast = table.top(7, by)
    assert [s.fingerprint for s in fast] == [s.fingerprint for s in table.snapshot().top(7, by)]
    assert fast == table.snapshot().top(7, by)
