"""A SharedMeter beside an in-process Meter, each core, one run.

Goals (issue: many processes):

- a shared meter's begin/end pair at most 1.5x the in-process meter's added cost
  (each pair's time over the empty loop's);
- an instrumented sqlite3 ``cursor.execute("SELECT 1")`` (in memory, reused
  cursor) at most 1.5x the in-process meter's added cost over raw sqlite3;
- reading the service's snapshot with 64 live slots at most 100 us (goal 20 us).

The 64 slots are held by live processes: this one and 63 forked children that
wait on a pipe, so that every read that looks at the slots (``slots()``,
``reap()``, the core's read of the whole table) visits 64 slots of live
processes and finds them alive.  ``snapshot()`` reads the service's counters
only, whatever the number of slots; once a second it also reaps (reads
/proc for every slot), which its median hides and its mean shows.

The shared files are on /dev/shm where there is one, as the docs recommend.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter.dbapi
from querymeter.meter import core_module
from querymeter.shared import SharedMeter, shared_meter_class

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
LIVE_SLOTS = 64
# Reads that visit every slot cost hundreds of microseconds: fewer per call.
SLOT_READ_OPS = 20


@pytest.fixture(scope="module")
def directory() -> Iterator[str]:
    """Where the shared files go: a memory file system, as the docs recommend, if there is one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="qm-bench-shared-", dir=base) as path:
        yield path


class LiveSlots:
    """A shared meter whose file has ``count`` slots held by live processes: this one and
    ``count - 1`` forked children, each in a slot of its own, waiting on a pipe."""

    def __init__(self, meter: SharedMeter, count: int) -> None:
        self.meter = meter
        hold_read, self._hold = os.pipe()
        self.children: list[int] = []
        for _ in range(count - 1):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child: its slot taken at the fork
                try:
                    os.close(self._hold)
                    os.read(hold_read, 1)
                finally:
                    os._exit(0)
            self.children.append(pid)
        os.close(hold_read)
        until = time.monotonic() + 60
        while len(meter.slots()) < count:
            assert time.monotonic() < until, "the children did not take their slots"
            time.sleep(0.01)

    def close(self) -> None:
        """The children read end of file and exit; their slots are given back."""
        os.close(self._hold)
        for pid in self.children:
            os.waitpid(pid, 0)


def pair_loop(meter: Any) -> Callable[[], None]:
    begin, end = meter.begin, meter.end

    def run() -> None:
        for _ in RANGE:
            end(begin())

    return run


def empty_loop() -> None:
    for _ in RANGE:
        pass


def counted_cursor(meter: Any) -> Any:
    querymeter.dbapi.instrument(sqlite3, meter=meter)
    try:
        return sqlite3.connect(":memory:").cursor()
    finally:
        querymeter.dbapi.uninstrument(sqlite3)


def execute_loop(cursor: Any) -> Callable[[], None]:
    execute = cursor.execute

    def run() -> None:
        for _ in RANGE:
            execute(SQL)

    return run


def call_loop(read: Callable[[], object], ops: int = OPS) -> Callable[[], None]:
    steps = range(ops)

    def run() -> None:
        for _ in steps:
            read()

    return run


# ------------------------------------------------------------ pytest-benchmark


@pytest.mark.parametrize("implementation", ["c", "python"])
@pytest.mark.parametrize("variant", ["in-process", "shared"])
def test_begin_end_pair(benchmark: Any, implementation: str, variant: str, directory: str) -> None:
    """end(begin()) on an in-process meter (the baseline) and on a shared meter."""
    benchmark.group = f"shared: begin/end pair, {implementation} core"
    if variant == "in-process":
        mark_baseline(benchmark)
        benchmark(pair_loop(load_meter_class(implementation)()))
        return
    load_meter_class(implementation)
    with shared_meter_class(implementation)(
        os.path.join(directory, f"pair-{implementation}")
    ) as meter:
        benchmark(pair_loop(meter))
        assert meter.snapshot().concurrency == 0


@pytest.mark.parametrize("implementation", ["c", "python"])
@pytest.mark.parametrize("variant", ["raw", "in-process", "shared"])
def test_sqlite3_execute(benchmark: Any, implementation: str, variant: str, directory: str) -> None:
    """cursor.execute("SELECT 1"): raw sqlite3 (the baseline), counted in-process, shared."""
    benchmark.group = f"shared: sqlite3 execute, {implementation} core"
    load_meter_class(implementation)
    if variant == "raw":
        mark_baseline(benchmark)
        benchmark(execute_loop(sqlite3.connect(":memory:").cursor()))
    elif variant == "in-process":
        benchmark(execute_loop(counted_cursor(load_meter_class(implementation)())))
    else:
        path = os.path.join(directory, f"execute-{implementation}")
        with shared_meter_class(implementation)(path) as meter:
            benchmark(execute_loop(counted_cursor(meter)))


@pytest.mark.parametrize("implementation", ["c", "python"])
@pytest.mark.parametrize("read", ["in-process snapshot()", "snapshot()", "slots()"])
def test_reading_64_live_slots(
    benchmark: Any, implementation: str, read: str, directory: str
) -> None:
    """A shared meter's snapshot() and slots() with 64 slots held by live processes."""
    benchmark.group = f"shared: reading, 64 live slots, {implementation} core"
    load_meter_class(implementation)
    if read == "in-process snapshot()":
        mark_baseline(benchmark)
        benchmark(call_loop(load_meter_class(implementation)().snapshot))
        return
    path = os.path.join(directory, f"read-{implementation}-{read}")
    meter = shared_meter_class(implementation)(path, slots=LIVE_SLOTS)
    live = LiveSlots(meter, LIVE_SLOTS)
    try:
        if read == "slots()":
            benchmark.extra_info["ops"] = SLOT_READ_OPS
            benchmark(call_loop(meter.slots, SLOT_READ_OPS))
            assert len(meter.slots()) == LIVE_SLOTS
        else:
            benchmark(call_loop(meter.snapshot))
    finally:
        live.close()
        meter.close()


# ------------------------------------------------------------ interleaved, one run


@pytest.mark.parametrize("implementation", ["c", "python"])
def test_added_cost_interleaved(
    implementation: str,
    directory: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every variant in turn, round after round: the shared meter's added cost beside a
    process's own, for the begin/end pair and for sqlite3's execute."""
    meter_type = load_meter_class(implementation)
    own = meter_type()
    shared = shared_meter_class(implementation)(os.path.join(directory, f"added-{implementation}"))
    try:
        runs = {
            "empty loop": empty_loop,
            "in-process begin+end": pair_loop(own),
            "shared begin+end": pair_loop(shared),
            "raw execute": execute_loop(sqlite3.connect(":memory:").cursor()),
            "in-process execute": execute_loop(counted_cursor(meter_type())),
            "shared execute": execute_loop(counted_cursor(shared)),
        }
        rounds = 1 if quick_mode(request.config) else (101 if implementation == "c" else 31)
        medians = interleaved_medians(runs, rounds)
    finally:
        shared.close()
    if quick_mode(request.config):
        return
    print_interleaved(f"shared meter, {implementation} core", medians, "empty loop", capsys)
    pair_own = medians["in-process begin+end"] - medians["empty loop"]
    pair_shared = medians["shared begin+end"] - medians["empty loop"]
    execute_own = medians["in-process execute"] - medians["raw execute"]
    execute_shared = medians["shared execute"] - medians["raw execute"]
    with capsys.disabled():
        print(
            f"  begin+end over the empty loop: in-process {pair_own:+.1f} ns,"
            f" shared {pair_shared:+.1f} ns ({pair_shared / pair_own:.2f}x, goal <= 1.5x)\n"
            f"  execute over raw sqlite3: in-process {execute_own:+.1f} ns,"
            f" shared {execute_shared:+.1f} ns ({execute_shared / execute_own:.2f}x,"
            " goal <= 1.5x)"
        )


@pytest.mark.parametrize("implementation", ["c", "python"])
def test_reading_64_live_slots_interleaved(
    implementation: str,
    directory: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """snapshot(), the core's read of the whole table, reap() and slots() with 64 live slots,
    in turn, round after round: median and mean per read."""
    load_meter_class(implementation)
    path = os.path.join(directory, f"interleaved-{implementation}")
    meter = shared_meter_class(implementation)(path, slots=LIVE_SLOTS)
    live = LiveSlots(meter, LIVE_SLOTS)
    core = core_module(meter)
    mapping, fd = meter._mapping, meter._file.fd  # type: ignore[union-attr]
    reads: dict[str, tuple[Callable[[], object], int]] = {
        "snapshot()": (meter.snapshot, OPS),
        "core read of the table": (lambda: core._shared_read(mapping, fd), SLOT_READ_OPS),
        "reap()": (meter.reap, SLOT_READ_OPS),
        "slots()": (meter.slots, SLOT_READ_OPS),
    }
    times: dict[str, list[float]] = {name: [] for name in reads}
    rounds = 1 if quick_mode(request.config) else 31
    try:
        for _ in range(rounds):
            for name, (read, ops) in reads.items():
                run = call_loop(read, ops)
                start = time.perf_counter_ns()
                run()
                times[name].append((time.perf_counter_ns() - start) / ops)
        assert len(meter.slots()) == LIVE_SLOTS
        assert meter.reaped() == (0, 0)
    finally:
        live.close()
        meter.close()
    if quick_mode(request.config):
        return
    lines = [f"reading a shared meter, {implementation} core, {LIVE_SLOTS} live slots:"]
    for name, values in times.items():
        lines.append(
            f"  {name:24s} median {statistics.median(values) / 1000:8.2f} us"
            f"  mean {statistics.fmean(values) / 1000:8.2f} us"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
