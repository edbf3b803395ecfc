"""The flight recorder: rings and exactness on a simulated clock, a real thread, faults, fork."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import querymeter
import querymeter.dbapi as dbapi
from querymeter import Interval, _faults, markers
from querymeter.meter import Meter as MeterType
from querymeter.recorder import FlightRecorder, StepStatements, running_recorder

from ..conftest import FakeClock

SECOND = 1_000_000_000
STATEMENTS = [f"SELECT c{i} FROM t{i} WHERE id = 1" for i in range(12)]


class Boom(Exception):
    """An error a query raises on purpose."""


@pytest.fixture(autouse=True)
def clean_markers() -> Iterator[None]:
    """Each test starts with an empty marker log."""
    markers.clear()
    yield
    markers.clear()


def run_second(
    meter: MeterType, clock: FakeClock, second: int, *, statements: list[str] = STATEMENTS
) -> None:
    """One simulated second: a varying number of queries of varying statements, some failing."""
    used = 0
    for k in range(second % 7 + 1):
        sql = statements[(second * 5 + k) % len(statements)]
        duration = 1_000_000 * (1 + (second + k) % 9)
        try:
            with meter.track(sql):
                clock.advance(duration)
                if (second + k) % 11 == 0:
                    raise Boom
        except Boom:
            pass
        used += duration
    clock.advance(SECOND - used)


def simulate(
    meter: MeterType, clock: FakeClock, recorder: FlightRecorder, seconds: int, **kw: list[str]
) -> None:
    """Take a reading, then run and read ``seconds`` simulated seconds."""
    recorder.take()
    for second in range(seconds):
        run_second(meter, clock, second, **kw)
        recorder.take()


COUNTERS = ("duration_ns", "queries", "errors", "total_ns", "busy_ns")


def sums(intervals: list[Interval]) -> dict[str, int]:
    """Each raw counter summed over the intervals."""
    return {name: sum(getattr(i, name) for i in intervals) for name in COUNTERS}


def whole(intervals: list[Interval]) -> dict[str, int]:
    """Each raw counter over the interval from the first step's start to the last one's end."""
    span = Interval(intervals[0].earlier, intervals[-1].later)
    return {name: getattr(span, name) for name in COUNTERS}


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("resolutions", "error", "match"),
    [
        ((), ValueError, "at least one"),
        ("1,900", TypeError, "sequence"),
        (((1.0, 900), (1.5, 10)), ValueError, "whole multiple"),
        (((60.0, 10), (1.0, 900)), ValueError, "finest first"),
        (((0.0, 10),), ValueError, "at least 0.001"),
        (((float("nan"), 10),), ValueError, "at least 0.001"),
        (((1.0, 0),), ValueError, "at least 1 step"),
        (((1.0, 9.5),), TypeError, "must be an int"),
        (((True, 9),), TypeError, "number"),
        (((1.0,),), TypeError, "pair"),
    ],
)
def test_bad_resolutions_are_refused_with_the_reason(
    resolutions: object, error: type[Exception], match: str
) -> None:
    """Resolutions are (seconds, steps) pairs, finest first, each a multiple of the finer."""
    with pytest.raises(error, match=match):
        FlightRecorder(resolutions=resolutions)  # type: ignore[arg-type]


def test_bad_options_are_refused() -> None:
    """The meter, statements, statements_per_step and restart_after_fork are checked."""
    with pytest.raises(TypeError, match="meter"):
        FlightRecorder(meter="db")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="statements"):
        FlightRecorder(statements=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="statements_per_step"):
        FlightRecorder(statements_per_step=0)
    with pytest.raises(TypeError, match="restart_after_fork"):
        FlightRecorder(restart_after_fork="yes")  # type: ignore[arg-type]


def test_defaults_are_one_second_for_15_minutes_and_one_minute_for_a_day() -> None:
    """The default rings: 1 s x 900 and 60 s x 1440, over the default meter."""
    recorder = FlightRecorder()
    assert recorder.resolutions == ((1.0, 900), (60.0, 1440))
    assert recorder.meter is querymeter.default_meter()
    assert not recorder.running


# ---------------------------------------------------------- ring arithmetic


def test_the_first_reading_only_sets_the_boundary(fake_meter: MeterType, clock: FakeClock) -> None:
    """No step before a second reading in a later step of the grid."""
    recorder = FlightRecorder(fake_meter)
    recorder.take()
    assert recorder.timeline() == []
    clock.advance(SECOND // 2)
    recorder.take()
    assert recorder.timeline() == []
    with pytest.raises(ValueError, match="no resolution of 5"):
        recorder.timeline(resolution=5.0)


def test_rings_keep_the_newest_steps_of_each_resolution(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """After 1000 s at 1 s readings: the last 900 one-second steps and 16 whole minutes."""
    fake_meter.enable_statements()
    recorder = FlightRecorder(fake_meter)
    simulate(fake_meter, clock, recorder, 1000)
    fine = recorder.timeline()
    coarse = recorder.timeline(resolution=60.0)
    assert len(fine) == 900
    assert all(step.duration_ns == SECOND for step in fine)
    assert [b.earlier for b in fine[1:]] == [a.later for a in fine[:-1]]
    # The clock started 1 ms into the meter's first second: the first minute
    # step is short, the others whole minutes on the grid of the meter's uptime.
    assert len(coarse) == 16
    assert all(step.later.uptime_ns % (60 * SECOND) < SECOND for step in coarse)
    assert all(step.duration_ns == 60 * SECOND for step in coarse[1:])
    assert (
        fine[-1].later == coarse[-1].later or fine[-1].later.uptime_ns > coarse[-1].later.uptime_ns
    )
    assert len(recorder.statement_timeline()) == 900
    assert "900/900" in repr(recorder)


def test_the_steps_add_up_to_the_whole_span_per_counter(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """The sum of a ring's steps equals the interval over its span, counter by counter."""
    recorder = FlightRecorder(fake_meter, ((1.0, 5000), (60.0, 100)))
    simulate(fake_meter, clock, recorder, 1500)
    for resolution in (1.0, 60.0):
        steps = recorder.timeline(resolution=resolution)
        assert sums(steps) == whole(steps)
    assert sums(recorder.timeline())["errors"] > 0


def test_a_coarse_step_is_the_sum_of_the_fine_steps_it_spans(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """Each minute equals the sum of its seconds, counter by counter, even with late readings."""
    recorder = FlightRecorder(fake_meter, ((1.0, 5000), (60.0, 100), (300.0, 10)))
    recorder.take()
    for second in range(1300):
        run_second(fake_meter, clock, second)
        if second % 13 == 5:
            clock.advance(SECOND * 2 + 123)  # a late reading: a longer step, nothing lost
        recorder.take()
    fine = recorder.timeline()
    for coarser in (60.0, 300.0):
        for step in recorder.timeline(resolution=coarser):
            inside = [
                f
                for f in fine
                if step.earlier.uptime_ns <= f.earlier.uptime_ns
                and f.later.uptime_ns <= step.later.uptime_ns
            ]
            assert inside[0].earlier == step.earlier
            assert inside[-1].later == step.later
            assert sums(inside) == {name: getattr(step, name) for name in COUNTERS}


def test_readings_within_a_step_change_nothing(fake_meter: MeterType, clock: FakeClock) -> None:
    """Extra take() calls inside the same grid step close no step."""
    recorder = FlightRecorder(fake_meter, ((1.0, 10),))
    recorder.take()
    for _ in range(5):
        clock.advance(SECOND // 10)
        recorder.take()
    clock.advance(SECOND // 2)
    recorder.take()
    (step,) = recorder.timeline()
    assert step.duration_ns == SECOND


# ------------------------------------------------------------- statements


def oracle_steps(
    meter: MeterType, clock: FakeClock, recorder: FlightRecorder, seconds: int
) -> list[querymeter.StatementsInterval]:
    """Run like simulate(), and the table's own snapshot differences at each fine step."""
    table = meter.statements
    assert table is not None
    recorder.take()
    readings = [table.snapshot()]
    for second in range(seconds):
        run_second(meter, clock, second)
        recorder.take()
        readings.append(table.snapshot())
    return [b - a for a, b in itertools.pairwise(readings)]


def test_each_step_holds_its_top_statements_and_the_rest_summed(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """A step's top statements by time equal the table's own difference; the rest adds up."""
    fake_meter.enable_statements()
    recorder = FlightRecorder(fake_meter, ((1.0, 100),), statements_per_step=2)
    oracle = oracle_steps(fake_meter, clock, recorder, 60)
    steps = recorder.statement_timeline()
    intervals = recorder.timeline()
    assert len(steps) == len(oracle) == len(intervals) == 60
    for step, expected, interval in zip(steps, oracle, intervals, strict=True):
        assert isinstance(step, StepStatements)
        assert step.calls == expected.calls == interval.queries
        assert step.errors == expected.errors == interval.errors
        assert step.total_ns == expected.total_ns == interval.total_ns
        top = expected.top(2)
        assert [s.fingerprint for s in step.statements] == [s.fingerprint for s in top]
        for got, want in zip(step.statements, top, strict=True):
            assert (got.calls, got.errors, got.total_ns, got.total_sq) == (
                want.calls,
                want.errors,
                want.total_ns,
                want.total_sq,
            )
            assert (got.p50_ns, got.p99_ns) == (want.p50_ns, want.p99_ns)
        assert step.rest_statements == len(expected) - len(top)
        assert step.rest.calls == sum(s.calls for s in expected.statements[len(top) :]) or (
            step.rest.calls == expected.calls - sum(s.calls for s in top)
        )


def test_coarse_step_statements_are_exact_not_sums_of_truncated_steps(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """A minute's top statements are the table's difference over the minute itself."""
    table = fake_meter.enable_statements()
    recorder = FlightRecorder(fake_meter, ((1.0, 500), (60.0, 10)), statements_per_step=3)
    recorder.take()
    # The table at each minute's first reading: the boundaries of the minutes.
    at_minutes = {0: table.snapshot()}
    for second in range(185):
        run_second(fake_meter, clock, second)
        recorder.take()
        at_minutes.setdefault(fake_meter.snapshot().uptime_ns // (60 * SECOND), table.snapshot())
    minutes = recorder.timeline(resolution=60.0)
    statements = recorder.statement_timeline(resolution=60.0)
    assert len(minutes) == 3
    for minute, step in zip(minutes[1:], statements[1:], strict=True):
        assert step is not None
        index = minute.later.uptime_ns // (60 * SECOND)
        expected = at_minutes[index] - at_minutes[index - 1]
        assert step.calls == expected.calls == minute.queries
        assert [(s.fingerprint, s.calls, s.total_ns) for s in step.statements] == [
            (s.fingerprint, s.calls, s.total_ns) for s in expected.top(3)
        ]


def test_statements_evicted_during_a_step_still_add_up(
    Meter: type[MeterType], clock: FakeClock
) -> None:
    """With a table too small for the statements, each step still counts every call once."""
    meter = Meter(clock=clock)
    meter.enable_statements(max_statements=5)
    many = [f"SELECT x{i} FROM wide{i}" for i in range(40)]
    recorder = FlightRecorder(meter, ((1.0, 200),), statements_per_step=3)
    simulate(meter, clock, recorder, 120, statements=many)
    for interval, step in zip(recorder.timeline(), recorder.statement_timeline(), strict=True):
        assert step is not None
        assert step.calls == interval.queries
        assert step.total_ns == interval.total_ns
    assert sum(step.dropped for step in recorder.statement_timeline() if step) > 0


WIDE = [f"SELECT v{i} FROM wide{i} WHERE k = ?" for i in range(30)]


def reports_rows(sql: str) -> bool:
    """Whether the test's cursor for this statement knows its row counts (two in three do)."""
    return WIDE.index(sql) % 3 != 0


def nonzero_buckets(stats: querymeter.StatementStats) -> dict[int, int]:
    """A histogram as {bucket: count} of its non-empty buckets (whatever its window)."""
    counts = memoryview(stats.histogram).cast("Q")
    return {stats.histogram_lo + i: count for i, count in enumerate(counts) if count}


def figures(stats: querymeter.StatementStats) -> dict[str, object]:
    """Every figure of a statement, its histogram by bucket."""
    data = dataclasses.asdict(stats)
    del data["histogram"], data["histogram_lo"]
    data["buckets"] = nonzero_buckets(stats)
    return data


def test_step_statements_equal_the_tables_difference_and_a_ledger_under_eviction(
    Meter: type[MeterType], clock: FakeClock
) -> None:
    """Each step's top, rest, evicted and untexted figures equal the table's own difference
    between the step's two readings, and add up to a ledger of the queries run in it."""
    meter = Meter(clock=clock)
    table = meter.enable_statements(max_statements=8)
    recorder = FlightRecorder(meter, ((1.0, 100), (5.0, 20)), statements_per_step=3)
    rng = random.Random(12)
    recorder.take()
    # The table's snapshot at each of the recorder's readings, by the reading's uptime.
    readings = {meter.snapshot().uptime_ns: table.snapshot()}
    # What the test ran, per second: calls, errors, time, time², rows (those reported).
    ledgers: list[list[int]] = []
    for second in range(60):
        ledger = [0, 0, 0, 0, 0]
        for _ in range(rng.randrange(0, 40)):
            sql = None if rng.random() < 0.05 else WIDE[min(int(rng.expovariate(0.2)), 29)]
            elapsed = int(10_000 * 1000 ** rng.random())
            error = rng.random() < 0.1
            if sql is None or not reports_rows(sql):
                rows = -1
            elif 40 <= second < 45:
                rows = -1  # statements that reported rows before, none in these steps
            else:
                rows = rng.choice((-1, 0, 2, 7))
            table._core._record(sql, None, elapsed, error, rows)
            ledger = [
                ledger[0] + 1,
                ledger[1] + error,
                ledger[2] + elapsed,
                ledger[3] + elapsed * elapsed,
                ledger[4] + max(rows, 0),
            ]
        ledgers.append(ledger)
        clock.advance(SECOND)
        recorder.take()
        readings[meter.snapshot().uptime_ns] = table.snapshot()
    evicted_before_the_step = rest_rows_without_new_rows = 0
    for resolution, seconds_per_step in ((1.0, 1), (5.0, 5)):
        intervals = recorder.timeline(resolution=resolution)
        steps = recorder.statement_timeline(resolution=resolution)
        assert len(intervals) == 60 // seconds_per_step
        for index, (interval, step) in enumerate(zip(intervals, steps, strict=True)):
            assert step is not None
            earlier = readings[interval.earlier.uptime_ns]
            later = readings[interval.later.uptime_ns]
            expected = later - earlier
            top = expected.top(3)
            assert [figures(s) for s in step.statements] == [figures(s) for s in top]
            assert figures(step.evicted) == figures(expected.evicted)
            assert figures(step.untexted) == figures(expected.untexted)
            assert step.dropped == expected.dropped
            others = expected.statements[len(top) :]
            assert step.rest_statements == len(others)
            known = [s.rows for s in others if s.rows is not None]
            assert (
                step.rest.calls,
                step.rest.errors,
                step.rest.total_ns,
                step.rest.total_sq,
                step.rest.rows,
            ) == (
                sum(s.calls for s in others),
                sum(s.errors for s in others),
                sum(s.total_ns for s in others),
                sum(s.total_sq for s in others),
                sum(known) if known else None,
            )
            # The ledger knows nothing of the table: every query of the step, once.
            seconds = ledgers[index * seconds_per_step : (index + 1) * seconds_per_step]
            parts = [*step.statements, step.rest, step.evicted, step.untexted]
            assert [
                sum(s.calls for s in parts),
                sum(s.errors for s in parts),
                sum(s.total_ns for s in parts),
                sum(s.total_sq for s in parts),
                sum(s.rows or 0 for s in parts),
            ] == [sum(column) for column in zip(*seconds, strict=True)]
            assert step.calls == sum(s[0] for s in seconds)
            evicted_meanwhile = later.evicted.calls - earlier.evicted.calls
            if step.evicted.calls < evicted_meanwhile:
                evicted_before_the_step += 1
            if (
                step.rest.rows == 0
                and not any(s.rows for s in others)
                and any(earlier.get(s.fingerprint) for s in others)
            ):
                rest_rows_without_new_rows += 1
    # The cases the arithmetic must get right did happen: statements evicted in
    # a step with calls from before it, and a rest with rows known but none new.
    assert evicted_before_the_step > 0
    assert rest_rows_without_new_rows > 0


def test_without_a_table_the_steps_have_no_statements(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """statement_timeline() is None per step when the meter has no table, or statements=False."""
    recorder = FlightRecorder(fake_meter, ((1.0, 10),))
    simulate(fake_meter, clock, recorder, 3)
    assert recorder.statement_timeline() == [None, None, None]
    fake_meter.enable_statements()
    off = FlightRecorder(fake_meter, ((1.0, 10),), statements=False)
    simulate(fake_meter, clock, off, 3)
    assert off.statement_timeline() == [None, None, None]
    # A table enabled mid-way: the step it appears in counts what it saw.
    simulate(fake_meter, clock, recorder, 3)
    assert all(step is not None for step in recorder.statement_timeline()[-3:])


# ------------------------------------------------------------ time and markers


def test_step_wall_times_follow_the_meters_clock(fake_meter: MeterType, clock: FakeClock) -> None:
    """A simulated day on a fake clock gives a simulated calendar, and since= cuts by it."""
    recorder = FlightRecorder(fake_meter, ((60.0, 1440),))
    recorder.take()
    anchor = recorder.step_wall_ns  # bound method: wall times are relative to the first reading
    for _ in range(24 * 60):
        clock.advance(60 * SECOND)
        recorder.take()
    steps = recorder.timeline()
    assert len(steps) == 1440
    first_end, last_end = anchor(steps[0]), anchor(steps[-1])
    assert last_end - first_end == steps[-1].later.uptime_ns - steps[0].later.uptime_ns
    assert last_end - first_end == 1439 * 60 * SECOND
    # Float seconds carry Unix time to about a microsecond: half a step in.
    since = (first_end + 600 * 60 * SECOND + 30 * SECOND) / 1e9
    later = recorder.timeline(since=since)
    assert len(later) == 1440 - 601
    assert recorder.step_wall_ns(later[0]) - first_end == 601 * 60 * SECOND
    marker = markers.add(querymeter.Marker("deploy", first_end + 1200 * 60 * SECOND - 1, 0))
    assert len(recorder.timeline(since=marker)) == 1440 - 1200
    assert recorder.markers() == [marker]
    assert recorder.markers(since=marker.wall_ns / 1e9 + 1) == []
    with pytest.raises(TypeError, match="since"):
        recorder.timeline(since="yesterday")
    with pytest.raises(TypeError):
        recorder.step_wall_ns("step")  # type: ignore[arg-type]


def test_markers_are_those_of_the_recorders_span(fake_meter: MeterType, clock: FakeClock) -> None:
    """recorder.markers() leaves out markers older than its oldest step."""
    old = markers.add(querymeter.Marker("long ago", 1, 0))
    recorder = FlightRecorder(fake_meter, ((1.0, 10),))
    assert recorder.markers() == [old]  # nothing recorded yet: all kept markers
    simulate(fake_meter, clock, recorder, 3)
    new = querymeter.mark("deploy")
    assert recorder.markers() == [new]


# ------------------------------------------------------------------ listeners


def test_step_listeners_hear_each_new_step_and_their_faults_are_counted(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """A listener gets (recorder, resolution) per step; one that raises is counted, not raised."""
    heard: list[tuple[FlightRecorder, float]] = []
    recorder = FlightRecorder(fake_meter, ((1.0, 100), (10.0, 10)))
    remove = recorder.add_step_listener(lambda r, res: heard.append((r, res)))

    def broken(recorder: FlightRecorder, resolution: float) -> None:
        raise RuntimeError("listener bug")

    recorder.add_step_listener(broken)
    before = _faults.counts().get("flight recorder: a step listener raised", 0)
    simulate(fake_meter, clock, recorder, 25)
    assert [res for _, res in heard].count(1.0) == 25
    assert [res for _, res in heard].count(10.0) == 2
    assert all(r is recorder for r, _ in heard)
    assert _faults.counts()["flight recorder: a step listener raised"] == before + 27
    remove()
    remove()
    simulate(fake_meter, clock, recorder, 2)
    assert len(heard) == 27
    with pytest.raises(TypeError):
        recorder.add_step_listener("not callable")  # type: ignore[arg-type]


# --------------------------------------------------------------- the thread


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll until the condition holds or the timeout passes (a deadline, not a timing test)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_real_thread_records_real_sqlite_queries(
    Meter: type[MeterType], tmp_path: os.PathLike[str]
) -> None:
    """The daemon thread records steps of real queries; they add up to the meter's counts."""
    meter = Meter()
    meter.enable_statements()
    dbapi.instrument(sqlite3, meter=meter)
    try:
        connection = sqlite3.connect(":memory:")
        connection.execute("CREATE TABLE h6_items (id INTEGER PRIMARY KEY, name TEXT)")
        with FlightRecorder(meter, ((0.1, 1000), (0.5, 100))) as recorder:
            assert recorder.running
            assert running_recorder(meter) is recorder
            thread = next(
                t for t in threading.enumerate() if t.name == "querymeter-flight-recorder"
            )
            assert thread.daemon
            stop = time.monotonic() + 2.0
            i = 0
            while time.monotonic() < stop:
                connection.execute("INSERT INTO h6_items (name) VALUES (?)", (f"n{i}",))
                connection.execute("SELECT count(*) FROM h6_items").fetchone()
                i += 1
            assert wait_for(lambda: len(recorder.timeline(resolution=0.5)) >= 3)
        assert not recorder.running
        assert running_recorder(meter) is None
        connection.close()
    finally:
        dbapi.uninstrument(sqlite3)
    fine = recorder.timeline()
    assert len(fine) >= 15
    assert sums(fine) == whole(fine)
    assert sum(step.queries for step in fine) > 0
    statements = [s for s in recorder.statement_timeline() if s is not None and s.calls]
    assert statements
    fingerprints = {s.fingerprint for step in statements for s in step.statements}
    assert any("h6_items" in f for f in fingerprints)
    for interval, step in zip(fine, recorder.statement_timeline(), strict=True):
        assert step is not None
        assert step.calls == interval.queries


def test_the_thread_survives_faults_in_itself(Meter: type[MeterType]) -> None:
    """A reading that raises is counted in querymeter.faults and the thread carries on."""
    meter = Meter()
    meter.enable_statements()
    recorder = FlightRecorder(meter, ((0.05, 1000),))
    original = recorder._read_table
    failures = {"left": 5}

    def flaky() -> object:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("injected fault")
        return original()

    recorder._read_table = flaky  # type: ignore[method-assign]
    cause = "flight recorder: a reading failed"
    before = querymeter.faults().get(cause, 0)
    with recorder:
        assert wait_for(lambda: failures["left"] == 0 and len(recorder.timeline()) >= 3)
        assert recorder.running
    assert querymeter.faults()[cause] == before + 5
    assert sums(recorder.timeline()) == whole(recorder.timeline())


def test_start_and_stop_are_idempotent(fake_meter: MeterType) -> None:
    """start() twice keeps one thread; stop() twice is harmless."""
    recorder = FlightRecorder(fake_meter, ((0.5, 10),))
    assert recorder.start() is recorder
    thread = recorder._thread
    assert recorder.start() is recorder
    assert recorder._thread is thread
    recorder.stop()
    recorder.stop()
    assert not recorder.running


# ----------------------------------------------------------------------- fork


def fork_and_check(child: Callable[[], bool]) -> int:
    """Fork; run ``child()`` in the child (exit 0 if true, 1 if false); the child's exit code."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            code = 0 if child() else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX")
def test_after_fork_the_child_has_a_stopped_recorder_unless_asked(Meter: type[MeterType]) -> None:
    """Without restart_after_fork the child's recorder is stopped, readable and usable."""
    meter = Meter()
    with FlightRecorder(meter, ((0.05, 1000),)) as recorder:
        assert wait_for(lambda: len(recorder.timeline()) >= 2)
        # Hold the recorder's locks across the fork: the child must not inherit them held.
        with recorder._lock:

            def child() -> bool:
                if recorder.running or running_recorder(meter) is not None:
                    return False
                kept = len(recorder.timeline())  # the parent's steps, readable
                with meter.track():
                    pass
                recorder.take()
                return kept >= 2 and not recorder.running

            code = fork_and_check(child)
    assert code == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX")
def test_after_fork_the_child_restarts_the_recorder_when_asked(Meter: type[MeterType]) -> None:
    """With restart_after_fork the child records its own steps from empty rings."""
    meter = Meter()
    with FlightRecorder(meter, ((0.05, 1000),), restart_after_fork=True) as recorder:
        assert wait_for(lambda: len(recorder.timeline()) >= 2)
        parent_id = meter.snapshot().meter_id

        def child() -> bool:
            if not recorder.running or running_recorder(meter) is not recorder:
                return False
            if not wait_for(lambda: len(recorder.timeline()) >= 3, timeout=15):
                return False
            steps = recorder.timeline()
            recorder.stop()
            return all(step.later.meter_id != parent_id for step in steps)

        code = fork_and_check(child)
        assert recorder.running
    assert code == 0
