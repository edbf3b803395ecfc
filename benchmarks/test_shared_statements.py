"""The shared statement table beside a process's own: sqlite3 in memory, statements on, one run.

``cursor.execute("SELECT 1")`` on a reused cursor (the statement seen
before: a cache hit), for each core, interleaved round after round:

- raw sqlite3 (the baseline);
- an in-process meter, statements off and on;
- a SharedMeter, statements off and on (the shared table, in a file on
  /dev/shm where there is one).

The shared table's added cost is ``shared on - shared off`` beside
``in-process on - in-process off``: one dictionary lookup either way, then an
update under the table's lock in the mapped file instead of plain fields (C:
an atomic lock word; pure Python: an fcntl lock).  Then the memory: the bytes
of one record, the file for 5000 statements, and what of it is resident once
5000 statements with 20 calls each over two decades of latency are held.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter.dbapi
from querymeter.shared import shared_meter_class
from querymeter.shared._statements import RECORD_SIZE, file_size

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
HELD = 5000


@pytest.fixture(scope="module")
def directory() -> Iterator[str]:
    """Where the shared files go: a memory file system, as the docs recommend, if there is one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="qm-bench-shared-", dir=base) as path:
        yield path


def counted_cursor(meter: Any) -> Any:
    querymeter.dbapi.instrument(sqlite3, meter=meter)
    try:
        cursor = sqlite3.connect(":memory:").cursor()
    finally:
        querymeter.dbapi.uninstrument(sqlite3)
    cursor.execute(SQL)  # in the table and its cache before timing starts
    return cursor


def make_cursors(implementation: str, directory: str) -> tuple[dict[str, Any], list[Any]]:
    """One cursor per variant over one core; the shared meters, to close after."""
    load_meter_class(implementation)
    meter_class = load_meter_class(implementation)
    shared_class = shared_meter_class(implementation)
    cursors = {"raw": sqlite3.connect(":memory:").cursor()}
    cursors["in-process, statements off"] = counted_cursor(meter_class())
    own = meter_class()
    own.enable_statements(max_statements=HELD)
    cursors["in-process, statements on"] = counted_cursor(own)
    off = shared_class(os.path.join(directory, f"off-{implementation}"))
    cursors["shared, statements off"] = counted_cursor(off)
    on = shared_class(os.path.join(directory, f"on-{implementation}"))
    on.enable_statements(max_statements=HELD)
    cursors["shared, statements on"] = counted_cursor(on)
    return cursors, [off, on]


def execute_alone(cursor: Any) -> Callable[[], None]:
    execute = cursor.execute

    def run() -> None:
        for _ in RANGE:
            execute(SQL)

    return run


VARIANTS = [
    "raw",
    "in-process, statements off",
    "in-process, statements on",
    "shared, statements off",
    "shared, statements on",
]


@pytest.mark.benchmark(group="shared statements: execute SELECT 1, C core", min_rounds=20)
@pytest.mark.parametrize("name", VARIANTS)
def test_execute(benchmark: Any, name: str, directory: str) -> None:
    """cursor.execute("SELECT 1") on a reused cursor, C core."""
    if name == "raw":
        mark_baseline(benchmark)
    cursors, meters = make_cursors("c", directory)
    try:
        benchmark(execute_alone(cursors[name]))
    finally:
        for meter in meters:
            meter.close()


@pytest.mark.parametrize("implementation", ["c", "python"])
def test_added_cost_interleaved(
    implementation: str,
    directory: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every variant in turn, round after round: the shared table's cost beside a process's."""
    cursors, meters = make_cursors(implementation, directory)
    try:
        rounds = 1 if quick_mode(request.config) else (41 if implementation == "c" else 11)
        medians = interleaved_medians(
            {name: execute_alone(cursor) for name, cursor in cursors.items()}, rounds
        )
    finally:
        for meter in meters:
            meter.close()
    if quick_mode(request.config):
        return
    print_interleaved(f"shared statements, {implementation} core", medians, "raw", capsys)
    own = medians["in-process, statements on"] - medians["in-process, statements off"]
    shared = medians["shared, statements on"] - medians["shared, statements off"]
    whole_own = medians["in-process, statements on"] - medians["raw"]
    whole_shared = medians["shared, statements on"] - medians["raw"]
    with capsys.disabled():
        print(
            f"  statement table: in-process {own:+.1f} ns/op, shared {shared:+.1f} ns/op"
            f" ({shared / own:.2f}x);  statements on over raw: in-process {whole_own:+.1f},"
            f" shared {whole_shared:+.1f} ns/op ({whole_shared / whole_own:.2f}x)"
        )


@pytest.mark.parametrize("implementation", ["c", "python"])
def test_memory_of_5000_statements(
    implementation: str,
    directory: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """5000 statements of 20 calls each in the shared table: the file, and what is resident."""
    held = 200 if quick_mode(request.config) or implementation == "python" else HELD
    meter = shared_meter_class(implementation)(os.path.join(directory, f"memory-{implementation}"))
    try:
        table = meter.enable_statements(max_statements=HELD)
        rng = random.Random(5000)
        spread = math.log(100)
        record = table._core._record
        for n in range(held):
            text = f"SELECT c{n}, note FROM qm_items_{n % 97} WHERE id = {n} AND c{n} > 0"
            for _ in range(20):
                record(text, "sqlite", round(20_000 * math.exp(rng.random() * spread)), False, 1)
        reading = table.snapshot()
        assert len(reading) == held and reading.calls == held * 20
        path = table.path
        size = os.path.getsize(path)
        # A file on tmpfs takes memory for the pages written only.
        resident = os.stat(path).st_blocks * 512
    finally:
        meter.disable_statements()
        meter.close()
    assert size == file_size(HELD)
    if quick_mode(request.config):
        return
    with capsys.disabled():
        print(
            f"\nshared statement table, {implementation} core: {RECORD_SIZE} bytes a record;"
            f" the file for {HELD} statements {size / 2**20:.1f} MiB;"
            f" resident with {held} held: {resident / 2**20:.1f} MiB"
            f" ({resident / held:.0f} bytes a statement)"
        )
