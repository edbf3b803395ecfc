"""The flight recorder's cost: one 1 s step of a table of 5000 statements, its thread, its memory.

In one run, per core: the raw read of a table of 5000 statements (``_read``,
every row's histogram in a bytes object of its own: what an exporter's reading
pays), the recorder's read of it (``_read_rows``: the C core puts the
histograms into buffers of at most 64 KiB that rows share, and the recorder
slices out only the rows a step keeps), a full ``table.snapshot()`` (an
exporter that reads everything), and ``recorder.take()`` closing a 1 s step in
which every one of the 5000 statements ran (the recorder's worst step: the core
compares every row with the step's start, ``_changed``, and the recorder keeps
the top 10 and the rest summed).
The time of one such step over the 1 s it covers is the thread's share of a
core at the default resolution.

Two measurements run as a script (not under pytest: they take minutes):

    python -m benchmarks.test_recorder cpu [seconds] [c|python] [spread]
        a recorder at the defaults on a real meter whose 5000 statements all
        run every second (a workload thread recording them in the table, with
        durations of 0.01 ms to spread times that, 5000 by default: 50 ms);
        the recorder thread's own CPU time (its thread CPU clock) over the
        wall time;
    python -m benchmarks.test_recorder memory [c|python] [spread]
        the memory the recorder holds (tracemalloc: what deleting it frees)
        once both default rings are full (900 one-second and 1440 one-minute
        steps, each with its top 10 statements of a table of 5000), on a
        simulated clock, durations as for cpu; of it, the readings of the
        table the rings keep.

Goal: under 1 % of one core at 1 s resolution with 5000 statements.  Measured
(``cpu 60``): 0.86 % on the C core (1.8 to 2.1 % before the recorder read the
table with ``_read_rows`` and compared it with ``_changed``), 3.1 % on the
pure-Python core (as before); see docs/incident-response.md.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import time
import tracemalloc
from typing import Any

import pytest

from querymeter.meter import Meter, meter_class
from querymeter.recorder import FlightRecorder

from .conftest import mark_baseline

STATEMENTS = 5000
SECOND = 1_000_000_000


def texts(count: int = STATEMENTS) -> list[str]:
    """``count`` distinct statements (distinct fingerprints)."""
    return [
        f"SELECT c{n}, note FROM qm_h6_items_{n % 97} WHERE id = ? AND c{n} > 0"
        for n in range(count)
    ]


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def every_statement_once(
    meter: Meter, clock: Clock, held: list[str], rng: random.Random, spread: float = 5000.0
) -> None:
    """One simulated second in which each statement runs once, 0.01 ms to ``spread`` times
    that (50 ms by default)."""
    for sql in held:
        with meter.track(sql):
            clock.now += int(10_000 * spread ** rng.random())


@pytest.fixture(params=["c", "python"], ids=["c-extension", "pure-python"])
def busy(request: pytest.FixtureRequest) -> tuple[Meter, Clock, list[str]]:
    """A meter on a simulated clock with a table of 5000 statements, 20 s old (each
    row's histogram as wide as 20 calls of 0.01 to 50 ms make it, about 300 buckets)."""
    clock = Clock()
    try:
        meter = meter_class(request.param)(clock=clock)
    except ImportError as exc:
        pytest.skip(f"the C core is not built: {exc}")
    meter.enable_statements(max_statements=STATEMENTS)
    held = texts()
    rng = random.Random(1)
    for _ in range(20):
        every_statement_once(meter, clock, held, rng)
    return meter, clock, held


@pytest.mark.benchmark(group="recorder: a 1 s step of 5000 statements", min_rounds=20)
def test_floor_raw_read_of_the_table(benchmark: Any, busy: tuple[Meter, Clock, list[str]]) -> None:
    """The floor: one raw read of the table's 5000 rows (what any reader of it pays)."""
    mark_baseline(benchmark)
    benchmark.extra_info["ops"] = 1
    meter, _, _ = busy
    table = meter.statements
    assert table is not None
    benchmark(table._core._read)


@pytest.mark.benchmark(group="recorder: a 1 s step of 5000 statements", min_rounds=20)
def test_the_recorders_read_of_the_table(
    benchmark: Any, busy: tuple[Meter, Clock, list[str]]
) -> None:
    """The recorder's read of the table's 5000 rows (``_read_rows``: the histograms in
    buffers rows share), the previous reading freed as the recorder frees it."""
    benchmark.extra_info["ops"] = 1
    meter, _, _ = busy
    table = meter.statements
    assert table is not None
    held = [table._core._read_rows()]

    def read_and_replace() -> None:
        held[0] = table._core._read_rows()

    benchmark(read_and_replace)


@pytest.mark.benchmark(group="recorder: a 1 s step of 5000 statements", min_rounds=20)
def test_table_snapshot(benchmark: Any, busy: tuple[Meter, Clock, list[str]]) -> None:
    """A full table.snapshot(): every statement as StatementStats (an exporter reading all)."""
    benchmark.extra_info["ops"] = 1
    meter, _, _ = busy
    table = meter.statements
    assert table is not None
    benchmark(table.snapshot)


@pytest.mark.benchmark(group="recorder: a 1 s step of 5000 statements", min_rounds=20)
def test_recorder_step_where_every_statement_ran(
    benchmark: Any, busy: tuple[Meter, Clock, list[str]]
) -> None:
    """recorder.take() closing a 1 s step in which all 5000 statements ran."""
    benchmark.extra_info["ops"] = 1
    meter, clock, held = busy
    recorder = FlightRecorder(meter)
    recorder.take()
    rng = random.Random(2)

    def next_second() -> None:
        every_statement_once(meter, clock, held, rng)
        clock.now += SECOND

    benchmark.pedantic(recorder.take, setup=next_second, rounds=20, iterations=1)
    # --benchmark-disable (CI's quick mode) runs it once.
    assert len(recorder.timeline()) == (1 if benchmark.disabled else 20)


# ------------------------------------------------------------------ the script


def measure_cpu(
    seconds: float = 60.0, implementation: str = "c", spread: float = 5000.0
) -> dict[str, float]:
    """The recorder thread's CPU time over ``seconds`` of a busy meter of 5000 statements,
    whose durations range from 0.01 ms to ``spread`` times that (log-uniform)."""
    meter = meter_class(implementation)()
    meter.enable_statements(max_statements=STATEMENTS)
    held = texts()
    stop = threading.Event()
    done = {"queries": 0}

    table = meter.statements
    assert table is not None
    rng = random.Random(4)

    def workload() -> None:
        # Every statement once a second, so that all 5000 change in every step,
        # recorded as a hook records them (the table's own entry point) with
        # durations of 0.01 to 50 ms by default: each row's histogram as wide
        # as a long-lived statement's, which is what a reading of the table copies.
        while not stop.is_set():
            started = time.monotonic()
            for sql in held:
                table._core._record(sql, None, int(10_000 * spread ** rng.random()), False, 1)
            done["queries"] += len(held)
            stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    worker = threading.Thread(target=workload, daemon=True)
    worker.start()
    recorder = FlightRecorder(meter).start()
    thread = recorder._thread
    assert thread is not None and thread.ident is not None
    clock_id = time.pthread_getcpuclockid(thread.ident)
    time.sleep(2.0)  # past the first reading and a step or two
    cpu_start, wall_start = time.clock_gettime(clock_id), time.monotonic()
    steps_start = len(recorder.timeline())
    time.sleep(seconds)
    cpu, wall = time.clock_gettime(clock_id) - cpu_start, time.monotonic() - wall_start
    steps = len(recorder.timeline()) - steps_start
    recorder.stop()
    stop.set()
    worker.join()
    return {
        "wall_s": wall,
        "recorder_cpu_s": cpu,
        "share_of_one_core_percent": 100.0 * cpu / wall,
        "steps": float(steps),
        "cpu_ms_per_step": 1000.0 * cpu / max(steps, 1),
        "queries": float(done["queries"]),
    }


def measure_memory(implementation: str = "c", spread: float = 5000.0) -> dict[str, float]:
    """The memory held by a recorder at the defaults with both rings full, 5000 statements
    whose durations range from 0.01 ms to ``spread`` times that (log-uniform)."""
    clock = Clock()
    meter = meter_class(implementation)(clock=clock)
    meter.enable_statements(max_statements=STATEMENTS)
    held = texts()
    rng = random.Random(3)
    # Skewed: a few statements run often, with latencies spread over 0.01-50 ms
    # by default, so that each step's top 10 have wide histograms (the costly case).
    weights = [1.0 / (n + 1) for n in range(STATEMENTS)]
    every_statement_once(meter, clock, held, rng, spread)

    def step(length_ns: int) -> None:
        for sql in rng.choices(held, weights, k=400):
            with meter.track(sql):
                clock.now += int(10_000 * spread ** rng.random())
        clock.now += length_ns

    gc.collect()
    tracemalloc.start()
    try:
        recorder = FlightRecorder(meter)
        recorder.take()
        # One reading a minute fills the minute ring (and the second ring with
        # minute-long steps), then one a second fills the second ring.
        for _ in range(1440):
            step(60 * SECOND)
            recorder.take()
        for _ in range(900):
            step(SECOND)
            recorder.take()
        fine = recorder.statement_timeline()
        coarse = recorder.statement_timeline(resolution=60.0)
        widths = [len(s.histogram) // 8 for r in (*fine, *coarse) if r for s in r.statements]
        del fine, coarse
        gc.collect()
        with_recorder, _ = tracemalloc.get_traced_memory()
        # One more reading of the table, as the recorder keeps one per ring.
        reading = recorder._read_table()
        gc.collect()
        with_reading, _ = tracemalloc.get_traced_memory()
        del reading
        held_readings = len({id(ring.boundary_table) for ring in recorder._rings})
        steps = [len(recorder.timeline(resolution=seconds)) for seconds, _ in recorder.resolutions]
        del recorder
        gc.collect()
        without_recorder, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held = with_recorder - without_recorder
    one_reading = with_reading - with_recorder
    return {
        "recorder_mb": held / 1e6,
        "table_readings_held": float(held_readings),
        "one_table_reading_mb": one_reading / 1e6,
        "steps_mb": (held - held_readings * one_reading) / 1e6,
        "fine_steps": float(steps[0]),
        "coarse_steps": float(steps[1]),
        "mean_buckets_per_top_statement": sum(widths) / len(widths),
        "max_buckets_per_top_statement": float(max(widths)),
    }


def main(argv: list[str]) -> None:
    """``cpu [seconds] [c|python] [spread]`` or ``memory [c|python] [spread]``."""
    what = argv[0] if argv else "cpu"
    if what == "cpu":
        seconds = float(argv[1]) if len(argv) > 1 else 60.0
        implementation = argv[2] if len(argv) > 2 else "c"
        spread = float(argv[3]) if len(argv) > 3 else 5000.0
        result = measure_cpu(seconds, implementation, spread)
    elif what == "memory":
        implementation = argv[1] if len(argv) > 1 else "c"
        result = measure_memory(implementation, float(argv[2]) if len(argv) > 2 else 5000.0)
    else:
        raise SystemExit("usage: python -m benchmarks.test_recorder cpu|memory ...")
    for name, value in result.items():
        print(f"{name:>34}: {value:,.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
