"""The counter core (C and Python): bookkeeping against an independent oracle."""

from __future__ import annotations

import itertools
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import querymeter
from querymeter import Snapshot
from querymeter.meter import Meter as MeterType

from ..conftest import FakeClock, check_invariants, load_meter_class

# ---------------------------------------------------------------- the oracle


@dataclass
class Oracle:
    """The five counters computed from the list of query intervals, not incrementally."""

    start: int
    intervals: list[list[int | None]] = field(default_factory=list)
    errors: int = 0

    def begin(self, now: int) -> int:
        self.intervals.append([now, None])
        return len(self.intervals) - 1

    def end(self, index: int, now: int, error: bool) -> int:
        begun = self.intervals[index][0]
        assert begun is not None
        self.intervals[index][1] = now
        self.errors += error
        return now - begun

    def clipped(self, now: int) -> list[tuple[int, int]]:
        spans = []
        for begun, ended in self.intervals:
            assert begun is not None
            spans.append((begun, now if ended is None else min(ended, now)))
        return spans

    def busy(self, now: int) -> int:
        """Length of the union of all intervals up to now."""
        union = 0
        reach = None
        for begun, ended in sorted(self.clipped(now)):
            if reach is None or begun > reach:
                union += ended - begun
                reach = ended
            elif ended > reach:
                union += ended - reach
                reach = ended
        return union

    def total(self, now: int) -> int:
        """Sum of all intervals clipped to now."""
        return sum(ended - begun for begun, ended in self.clipped(now))

    def expect(self, now: int) -> dict[str, int]:
        done = sum(1 for _, ended in self.intervals if ended is not None)
        return {
            "uptime_ns": now - self.start,
            "queries": done,
            "errors": self.errors,
            "concurrency": len(self.intervals) - done,
            "total_ns": self.total(now),
            "busy_ns": self.busy(now),
        }


def counters(snap: Snapshot) -> dict[str, int]:
    """The counters of a snapshot, without the wall clock and the meter's identity."""
    return {
        "uptime_ns": snap.uptime_ns,
        "queries": snap.queries,
        "errors": snap.errors,
        "concurrency": snap.concurrency,
        "total_ns": snap.total_ns,
        "busy_ns": snap.busy_ns,
    }


operations = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 10**12)),
        st.tuples(st.just("begin"), st.booleans()),
        st.tuples(st.just("end"), st.integers(0, 10**6), st.booleans()),
        st.tuples(st.just("read")),
        st.tuples(st.just("misuse"), st.integers(0, 3)),
    ),
    max_size=80,
)


def run_schedule(meter: MeterType, clock: FakeClock, ops: list[tuple[Any, ...]]) -> list[Any]:
    """Drive a meter through a schedule, checking it against the oracle at every read.

    Queries are opened either as begin() tokens or as track() blocks, and end
    in any order; misuse (ending twice, foreign tokens, garbage) is mixed in and
    must change nothing.  Returns what was observed, for comparing two cores.
    """
    oracle = Oracle(start=clock.now)
    stranger = type(meter)()
    token_type = type(stranger.begin())
    open_queries: list[tuple[Any, int]] = []
    ended_tokens: list[Any] = []
    observed: list[Any] = []

    def read() -> None:
        snap = meter.snapshot()
        check_invariants(snap)
        assert counters(snap) == oracle.expect(clock.now)
        observed.append(counters(snap))

    for op in ops:
        if op[0] == "advance":
            clock.advance(op[1])
        elif op[0] == "begin":
            if op[1]:
                handle: Any = meter.begin()
            else:
                handle = meter.track()
                handle.__enter__()
            open_queries.append((handle, oracle.begin(clock.now)))
        elif op[0] == "end" and open_queries:
            handle, index = open_queries.pop(op[1] % len(open_queries))
            error = op[2]
            expected = oracle.end(index, clock.now, error)
            if isinstance(handle, token_type):
                elapsed = meter.end(handle, error=error)
                ended_tokens.append(handle)
            else:
                handle.__exit__(ValueError if error else None, None, None)
                elapsed = handle.elapsed_ns
            assert elapsed == expected
            observed.append(elapsed)
        elif op[0] == "misuse":
            kind = op[1]
            with pytest.raises((ValueError, TypeError)):
                if kind == 0 and ended_tokens:
                    meter.end(ended_tokens[-1])
                elif kind == 1:
                    meter.end(stranger.begin())
                elif kind == 2:
                    meter.end(object())  # type: ignore[arg-type]
                else:
                    meter.end(meter.track())  # type: ignore[arg-type]
        read()
    return observed


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_counters_match_the_oracle_on_random_schedules(implementation: str, ops: list[Any]) -> None:
    """Random overlapping queries give exactly the busy and total time of their intervals."""
    clock = FakeClock()
    meter = load_meter_class(implementation)(clock=clock)
    run_schedule(meter, clock, ops)


@settings(max_examples=100, deadline=None)
@given(ops=operations)
def test_c_and_python_cores_observe_identical_schedules_identically(ops: list[Any]) -> None:
    """The two cores give identical snapshots and elapsed times, reading the clock as often."""
    results = []
    for implementation in ("c", "python"):
        clock = FakeClock()
        meter = load_meter_class(implementation)(clock=clock)
        observed = run_schedule(meter, clock, ops)
        results.append((observed, clock.reads))
    assert results[0] == results[1]


def test_overlapping_queries_give_busy_below_total(fake_meter: MeterType, clock: FakeClock) -> None:
    """Two overlapping 1 s queries give 2 s of total time and less than 2 s busy."""
    first = fake_meter.begin()
    clock.advance(500_000_000)
    second = fake_meter.begin()
    clock.advance(500_000_000)
    fake_meter.end(first)
    clock.advance(500_000_000)
    fake_meter.end(second)
    snap = fake_meter.snapshot()
    assert snap.total_ns == 2_000_000_000
    assert snap.busy_ns == 1_500_000_000
    assert snap.queries == 2
    assert snap.concurrency == 0


def test_sequential_queries_give_busy_equal_to_total(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """Two 1 s queries one after the other give 2 s of both total and busy time."""
    for _ in range(2):
        token = fake_meter.begin()
        clock.advance(1_000_000_000)
        fake_meter.end(token)
        clock.advance(250_000_000)
    snap = fake_meter.snapshot()
    assert (snap.total_ns, snap.busy_ns, snap.uptime_ns) == (2 * 10**9, 2 * 10**9, 2_500_000_000)


def test_snapshot_does_not_change_the_state(fake_meter: MeterType, clock: FakeClock) -> None:
    """Reading mid-query brings the figures up to now without moving the stored state."""
    token = fake_meter.begin()
    clock.advance(300)
    first = fake_meter.snapshot()
    second = fake_meter.snapshot()
    assert counters(first) == counters(second)
    assert (first.total_ns, first.busy_ns) == (300, 300)
    clock.advance(200)
    assert fake_meter.end(token) == 500
    assert fake_meter.snapshot().total_ns == 500


# ------------------------------------------------------------- exactness


def test_total_stays_exact_past_64_bits(fake_meter: MeterType, clock: FakeClock) -> None:
    """10,000 queries in flight while the clock jumps 10^15 ns at a time keep exact totals."""
    tokens = [fake_meter.begin() for _ in range(10_000)]
    steps = 50
    for step in range(1, steps + 1):
        clock.advance(10**15)
        snap = fake_meter.snapshot()
        assert snap.total_ns == 10_000 * step * 10**15
        assert snap.busy_ns == step * 10**15
        assert snap.concurrency == 10_000
    for token in tokens:
        assert fake_meter.end(token) == steps * 10**15
    snap = fake_meter.snapshot()
    assert snap.total_ns == 10_000 * steps * 10**15
    assert snap.total_ns > 2**64
    assert (snap.queries, snap.concurrency) == (10_000, 0)


def test_a_century_at_concurrency_ten_thousand_stays_exact(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """100 years at concurrency 10,000, read as it goes, stays exact to the nanosecond."""
    century_ns = 36_525 * 86_400 * 10**9  # 100 Julian years
    tokens = [fake_meter.begin() for _ in range(10_000)]
    elapsed = 0
    step = 10**15 + 12_345  # not a round number, so no bits line up by luck
    while elapsed < century_ns:
        advance = min(step, century_ns - elapsed)
        clock.advance(advance)
        elapsed += advance
        assert fake_meter.snapshot().total_ns == 10_000 * elapsed
    for token in tokens[:-1]:
        fake_meter.end(token)
    clock.advance(1)
    snap = fake_meter.snapshot()
    assert snap.total_ns == 10_000 * century_ns + 1
    assert snap.busy_ns == century_ns + 1
    assert snap.uptime_ns == century_ns + 1


# ---------------------------------------------------------------- tokens


def test_ending_a_token_twice_raises_and_changes_nothing(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """A second end() of one token raises ValueError and leaves the counters as they were."""
    token = fake_meter.begin()
    clock.advance(10)
    fake_meter.end(token)
    before = fake_meter.snapshot()
    with pytest.raises(ValueError, match="already ended"):
        fake_meter.end(token)
    with pytest.raises(ValueError, match="already ended"):
        fake_meter.end(token, error=True)
    assert counters(fake_meter.snapshot()) == counters(before)


def test_a_token_of_another_meter_is_refused(Meter: type[MeterType], clock: FakeClock) -> None:
    """A token from another meter raises ValueError there and still ends on its own meter."""
    meter, other = Meter(clock=clock), Meter(clock=clock)
    foreign = other.begin()
    with pytest.raises(ValueError, match="another meter"):
        meter.end(foreign)
    assert meter.snapshot().concurrency == 0
    assert other.snapshot().concurrency == 1
    other.end(foreign)
    assert other.snapshot().queries == 1


@pytest.mark.parametrize("garbage", [None, 0, 12345, "token", object(), 1.5, (1, 2)], ids=repr)
def test_garbage_tokens_raise_type_error(fake_meter: MeterType, garbage: object) -> None:
    """Anything that is not a token raises TypeError and changes nothing."""
    running = fake_meter.begin()
    with pytest.raises(TypeError, match="token returned by begin"):
        fake_meter.end(garbage)  # type: ignore[arg-type]
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.concurrency) == (0, 1)
    fake_meter.end(running)


def test_a_tracker_is_not_a_token(fake_meter: MeterType) -> None:
    """Passing a track() object to end() raises TypeError."""
    with pytest.raises(TypeError):
        fake_meter.end(fake_meter.track())  # type: ignore[arg-type]


def test_a_failing_error_flag_leaves_the_token_usable(fake_meter: MeterType) -> None:
    """If the error flag cannot be read as a bool, end() raises and the token can end later."""

    class Unreadable:
        def __bool__(self) -> bool:
            raise ZeroDivisionError("no truth here")

    token = fake_meter.begin()
    with pytest.raises(ZeroDivisionError):
        fake_meter.end(token, error=Unreadable())  # type: ignore[arg-type]
    assert fake_meter.snapshot().concurrency == 1
    fake_meter.end(token, error=True)
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)


def test_end_argument_errors_are_type_errors(fake_meter: MeterType) -> None:
    """end() without a token, with too many arguments or an unknown keyword raises TypeError."""
    token = fake_meter.begin()
    with pytest.raises(TypeError):
        fake_meter.end()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fake_meter.end(token, False, None)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fake_meter.end(token, failed=True)  # type: ignore[call-arg]
    assert fake_meter.end(token=token, error=False) >= 0
    assert fake_meter.snapshot().concurrency == 0


def test_tokens_cannot_be_made_by_hand(fake_meter: MeterType) -> None:
    """The token type cannot be instantiated: only begin() makes tokens."""
    token_type = type(fake_meter.begin())
    with pytest.raises(TypeError):
        token_type()


def test_tokens_from_before_a_reset_are_inert(fake_meter: MeterType, clock: FakeClock) -> None:
    """After a reset (what fork does), an older token ends without touching the new counters."""
    old = fake_meter.begin()
    clock.advance(100)
    fake_meter._reset(7)
    clock.advance(50)
    assert fake_meter.end(old) == 150
    snap = fake_meter.snapshot()
    assert counters(snap) == {
        "uptime_ns": 50,
        "queries": 0,
        "errors": 0,
        "concurrency": 0,
        "total_ns": 0,
        "busy_ns": 0,
    }
    assert snap.meter_id == 7


def test_a_meter_cannot_be_initialised_twice(Meter: type[MeterType]) -> None:
    """Calling __init__ again raises instead of silently restarting the counters."""
    meter = Meter()
    with pytest.raises(RuntimeError, match="twice"):
        meter.__init__()  # type: ignore[misc]


def test_a_non_callable_clock_is_refused(Meter: type[MeterType]) -> None:
    """A clock that is not callable raises TypeError naming its type."""
    with pytest.raises(TypeError, match="clock must be a callable"):
        Meter(clock=12345)  # type: ignore[arg-type]


# ------------------------------------------------------------ track() blocks


def test_track_counts_a_block_and_reports_its_time(fake_meter: MeterType, clock: FakeClock) -> None:
    """A track() block is one query, and elapsed_ns tells its duration once it ends."""
    tracker = fake_meter.track()
    assert tracker.elapsed_ns is None
    with tracker as entered:
        assert entered is tracker
        clock.advance(42)
        assert fake_meter.snapshot().concurrency == 1
    assert tracker.elapsed_ns == 42
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.total_ns) == (1, 0, 42)


def test_track_counts_an_exception_as_an_error_and_passes_it_on(fake_meter: MeterType) -> None:
    """The block's exception reaches the caller as the same object, counted as an error."""
    raised = KeyError("boom")
    with pytest.raises(KeyError) as caught, fake_meter.track():
        raise raised
    assert caught.value is raised
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)


def test_track_counts_keyboard_interrupt_as_an_error(fake_meter: MeterType) -> None:
    """KeyboardInterrupt inside a block ends the query as an error and propagates."""
    with pytest.raises(KeyboardInterrupt), fake_meter.track():
        raise KeyboardInterrupt
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)


def test_a_tracker_cannot_run_twice_at_once(fake_meter: MeterType) -> None:
    """Entering a running tracker raises RuntimeError; reusing it afterwards works."""
    tracker = fake_meter.track()
    with tracker:
        with pytest.raises(RuntimeError, match="already running"), tracker:
            pass
        assert fake_meter.snapshot().concurrency == 1
    with tracker:
        pass
    snap = fake_meter.snapshot()
    assert (snap.queries, snap.concurrency) == (2, 0)


def test_exiting_a_tracker_that_is_not_running_raises(fake_meter: MeterType) -> None:
    """__exit__ without __enter__ raises RuntimeError and counts nothing."""
    with pytest.raises(RuntimeError, match="not running"):
        fake_meter.track().__exit__(None, None, None)
    assert fake_meter.snapshot().queries == 0


# ------------------------------------------------------------ real clock


def test_the_default_clock_is_time_monotonic_ns(Meter: type[MeterType]) -> None:
    """Elapsed times and uptime lie between time.monotonic_ns() readings taken around them."""
    before_start = time.monotonic_ns()
    meter = Meter()
    after_start = time.monotonic_ns()
    outer_begin = time.monotonic_ns()
    token = meter.begin()
    inner_begin = time.monotonic_ns()
    time.sleep(0.01)
    inner_end = time.monotonic_ns()
    elapsed = meter.end(token)
    outer_end = time.monotonic_ns()
    assert inner_end - inner_begin <= elapsed <= outer_end - outer_begin
    before_read = time.monotonic_ns()
    uptime = meter.snapshot().uptime_ns
    after_read = time.monotonic_ns()
    assert before_read - after_start <= uptime <= after_read - before_start


def test_wall_ns_is_unix_time(Meter: type[MeterType]) -> None:
    """wall_ns is the Unix time of the reading."""
    before = time.time_ns()
    wall = Meter().snapshot().wall_ns
    after = time.time_ns()
    assert before <= wall <= after


def test_a_query_in_flight_is_visible_mid_flight(Meter: type[MeterType]) -> None:
    """A 0.2 s query read at 0.1 s shows concurrency 1 and its 0.1 s so far."""
    meter = Meter()
    started = time.monotonic_ns()
    done = threading.Event()

    def query() -> None:
        with meter.track():
            done.wait(0.2)

    worker = threading.Thread(target=query)
    worker.start()
    time.sleep(0.1)
    snap = meter.snapshot()
    read_at = time.monotonic_ns()
    worker.join()
    assert snap.concurrency == 1
    # Bounded by independent readings: the query began after `started` and
    # had run at least the 0.1 s slept, less thread start-up (under 50 ms).
    assert 50_000_000 <= snap.total_ns <= read_at - started
    assert snap.busy_ns == snap.total_ns
    final = meter.snapshot()
    assert (final.queries, final.concurrency) == (1, 0)
    assert final.total_ns >= 200_000_000


# ---------------------------------------------------------------- threads


def test_threads_keep_exact_counts_and_every_invariant(Meter: type[MeterType]) -> None:
    """8 threads x 20,000 queries with random errors, read all along, end exact and idle."""
    meter = Meter()
    threads, per_thread = 8, 20_000
    errors_raised = [0] * threads
    start = threading.Barrier(threads + 1)
    stop_reading = threading.Event()
    problems: list[str] = []
    reads = [0]

    @meter.tracked
    def tracked_query(fail: bool) -> None:
        if fail:
            raise ValueError("tracked failure")

    def worker(index: int) -> None:
        rng = random.Random(index)
        start.wait()
        for n in range(per_thread):
            fail = rng.random() < 0.1
            errors_raised[index] += fail
            kind = n % 3
            try:
                if kind == 0:
                    with meter.track():
                        if fail:
                            raise ValueError("block failure")
                elif kind == 1:
                    token = meter.begin()
                    meter.end(token, error=fail)
                else:
                    tracked_query(fail)
            except ValueError:
                pass

    def reader() -> None:
        previous = meter.snapshot()
        max_concurrency = previous.concurrency
        start.wait()
        while not stop_reading.is_set():
            snap = meter.snapshot()
            reads[0] += 1
            try:
                check_invariants(snap)
                assert snap.concurrency <= threads
                for name in ("uptime_ns", "queries", "errors", "total_ns", "busy_ns"):
                    assert getattr(snap, name) >= getattr(previous, name), name
                max_concurrency = max(max_concurrency, snap.concurrency, previous.concurrency)
                assert snap.busy_ns - previous.busy_ns <= snap.uptime_ns - previous.uptime_ns
                assert (
                    snap.total_ns - previous.total_ns <= (snap.busy_ns - previous.busy_ns) * threads
                )
            except AssertionError as exc:
                problems.append(f"{exc!r}: {previous} -> {snap}")
                return
            previous = snap

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    watcher = threading.Thread(target=reader)
    for thread in [*workers, watcher]:
        thread.start()
    for thread in workers:
        thread.join()
    stop_reading.set()
    watcher.join()
    assert not problems, problems[:3]
    assert reads[0] > 0
    final = meter.snapshot()
    check_invariants(final)
    assert final.queries == threads * per_thread
    assert final.errors == sum(errors_raised)
    assert final.concurrency == 0


# ------------------------------------------------- clocks and readings, any clock


class ScriptedClock:
    """A clock that returns the readings given, then the last one; an exception is raised."""

    def __init__(self, *readings: Any) -> None:
        self.readings = list(readings)

    def __call__(self) -> int:
        reading = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        if isinstance(reading, BaseException) or (
            isinstance(reading, type) and issubclass(reading, BaseException)
        ):
            raise reading
        return reading  # type: ignore[no-any-return]


def test_a_clock_failing_at_start_leaves_every_invariant_true(Meter: type[MeterType]) -> None:
    """A meter whose clock fails when it starts starts at its first good reading."""
    meter = Meter(clock=ScriptedClock(RuntimeError("down"), 1_000, 1_500, 2_000))
    first = meter.snapshot()
    assert first.uptime_ns == 0
    with meter.track():
        pass
    later = meter.snapshot()
    for snap in (first, later):
        check_invariants(snap)
    assert later.uptime_ns == 1_000
    assert later.busy_ns == 500 and later.total_ns == 500


def test_a_clock_failing_at_reset_leaves_every_invariant_true(Meter: type[MeterType]) -> None:
    """A reset whose clock reading fails leaves uptime at zero until a good reading."""
    clock = ScriptedClock(10, RuntimeError("down"), 50, 80)
    meter = Meter(clock=clock)
    meter._reset(3)
    snap = meter.snapshot()
    check_invariants(snap)
    assert snap.uptime_ns == 0
    assert meter.snapshot().uptime_ns == 30


def test_readings_spanning_more_than_two_to_the_63_ns_stay_exact(Meter: type[MeterType]) -> None:
    """Differences are exact even between the most negative and most positive readings."""
    low, high = -(2**63) + 1, 2**63 - 1
    meter = Meter(clock=ScriptedClock(low, low, high, high))
    with meter.track():
        pass
    snap = meter.snapshot()
    check_invariants(snap)
    assert snap.uptime_ns == high - low
    assert snap.busy_ns == snap.total_ns == high - low


def test_both_cores_agree_on_hostile_clocks() -> None:
    """The C core and the Python twin give identical readings on a clock that jumps and fails."""
    script = (5, 2**62, RuntimeError("x"), -(2**62), 2**63 - 1, "not an int", 7, 2**63 - 1)
    results = []
    for implementation in ("c", "python"):
        meter = load_meter_class(implementation)(clock=ScriptedClock(*script))
        token = meter.begin()
        first = meter.snapshot()
        with meter.track():
            pass
        meter.end(token)
        results.append([tuple(s)[:6] for s in (first, meter.snapshot())])
        for snap in (first, meter.snapshot()):
            check_invariants(snap)
    assert results[0] == results[1]


def test_a_stale_reading_applied_after_a_snapshot_hands_back_nothing(
    Meter: type[MeterType],
) -> None:
    """A reading taken before a snapshot but applied after it cannot make counters run back."""
    snapshots: list[Snapshot] = []
    state = {"now": 0, "inside": False}

    def clock() -> int:
        if state["inside"] or state["now"] != 150:
            return state["now"]
        # The end's reading is 150, but another thread snapshots at 200
        # before the end is applied.
        state["inside"] = True
        state["now"] = 200
        snapshots.append(meter.snapshot())
        state["inside"] = False
        return 150

    meter = Meter(clock=clock)
    token = meter.begin()
    state["now"] = 150
    meter.end(token)
    state["now"] = 210
    snapshots.append(meter.snapshot())
    earlier, later = snapshots
    assert earlier.busy_ns == 200
    assert later.busy_ns >= earlier.busy_ns and later.total_ns >= earlier.total_ns
    interval = later - earlier
    assert interval.queries == 1


def test_readers_interleaved_at_every_step_see_monotonic_counters(Meter: type[MeterType]) -> None:
    """Snapshots taken between any two steps of a schedule never decrease, on any core."""
    schedule = [("begin", 10), ("begin", 20), ("end", 35), ("begin", 40), ("end", 60), ("end", 90)]
    for reader_at in range(len(schedule) + 1):
        for stale in (0, 5, 25):
            clock = FakeClock(0)
            meter = Meter(clock=clock)
            tokens: list[Any] = []
            readings: list[Snapshot] = []
            for step, (action, at) in enumerate(schedule):
                if step == reader_at:
                    clock.now = at + stale
                    readings.append(meter.snapshot())
                clock.now = at
                if action == "begin":
                    tokens.append(meter.begin())
                else:
                    meter.end(tokens.pop(0))
                readings.append(meter.snapshot())
            for earlier, later in itertools.pairwise(readings):
                check_invariants(later)
                for name in ("uptime_ns", "queries", "errors", "total_ns", "busy_ns"):
                    assert getattr(later, name) >= getattr(earlier, name), (reader_at, stale, name)


def test_keyboard_interrupt_in_the_clock_propagates_and_leaves_nothing_in_flight(
    Meter: type[MeterType],
) -> None:
    """A clock raising KeyboardInterrupt is not a fault: it propagates, and counts stay balanced."""
    clock = ScriptedClock(0, KeyboardInterrupt, 5)
    meter = Meter(clock=clock)
    faults_before = dict(querymeter.faults())
    with pytest.raises(KeyboardInterrupt):
        meter.begin()
    assert meter.snapshot().concurrency == 0
    clock.readings = [10, KeyboardInterrupt, 20]
    token = meter.begin()
    with pytest.raises(KeyboardInterrupt):
        meter.end(token)
    snap = meter.snapshot()
    assert (snap.queries, snap.concurrency) == (1, 0)
    with pytest.raises(ValueError, match="already ended"):
        meter.end(token)
    clock.readings = [30, 35, SystemExit, 40]
    tracked = meter.tracked(lambda: "ran")
    assert tracked() == "ran"
    with pytest.raises(SystemExit):
        tracked()
    assert meter.snapshot().concurrency == 0
    assert querymeter.faults() == faults_before


def test_trackers_cannot_be_made_by_hand(Meter: type[MeterType]) -> None:
    """Tracker refuses direct construction on both cores, as Token does."""
    tracker_type = type(Meter().track())
    with pytest.raises(TypeError):
        tracker_type(Meter())


def test_keyboard_interrupt_while_a_clock_fault_is_reported_propagates(
    Meter: type[MeterType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt while a faulty clock is reported propagates, and the query still ends."""
    meter = Meter(clock=ScriptedClock(0, 5, RuntimeError("clock"), 9))
    token = meter.begin()

    def interrupted(cause: str, exc: BaseException | None = None) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(querymeter._faults, "report", interrupted)
    with pytest.raises(KeyboardInterrupt):
        meter.end(token)
    snap = meter.snapshot()
    assert (snap.queries, snap.concurrency) == (1, 0)
