"""SharedMeter: a meter in every respect, its counters shared by the processes opening its file."""

from __future__ import annotations

import ast
import os
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any

import pytest

import querymeter
from querymeter import Snapshot
from querymeter.meter import Meter as MeterType
from querymeter.meter import meter_argument
from querymeter.shared import SharedMeterError, SlotReading
from querymeter.shared._meter import HEADER_SIZE, SLOT_SIZE

from ..conftest import check_invariants
from .meters import SharedMeter, shared_path

__all__ = ["SharedMeter", "shared_path"]


def _in_child(work: Any) -> int:
    """Run ``work()`` in a forked child; its exit status (0: it returned)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            work()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_shared_meter_is_a_meter(
    SharedMeter: Any, Meter: type[MeterType], shared_path: Path
) -> None:
    """A shared meter is accepted wherever a meter is, and counts as one."""
    with SharedMeter(shared_path) as shared:
        assert isinstance(shared, Meter)
        assert meter_argument(shared) is shared
        token = shared.begin()
        shared.end(token)
        with shared.track():
            pass

        @shared.tracked
        def work() -> int:
            return 7

        assert work() == 7
        with pytest.raises(ZeroDivisionError), shared.track():
            1 / 0  # noqa: B018
        snap = shared.snapshot()
        check_invariants(snap)
        assert (snap.queries, snap.errors, snap.concurrency) == (4, 1, 0)
        assert shared.path == str(shared_path)
        assert shared.slot == 0
        assert "SharedMeter" in repr(shared)


def test_the_service_counts_every_slot(SharedMeter: Any, shared_path: Path) -> None:
    """Two slots' overlapping queries make one service: total counts both, busy their union."""
    first = SharedMeter(shared_path)
    second = SharedMeter(shared_path)
    try:
        assert (first.slot, second.slot) == (0, 1)
        a = first.begin()
        time.sleep(0.02)
        b = second.begin()
        time.sleep(0.02)
        first.end(a)
        time.sleep(0.02)
        second.end(b)
        snap = second.snapshot()
        check_invariants(snap)
        assert snap.queries == 2
        assert snap.concurrency == 0
        assert snap.busy_ns < snap.total_ns
        assert snap.meter_id == first.snapshot().meter_id
        readings = {slot.slot: slot for slot in first.slots()}
        assert set(readings) == {0, 1}
        own = [readings[0].snapshot, readings[1].snapshot]
        assert [s.queries for s in own] == [1, 1]
        for reading in readings.values():
            assert isinstance(reading, SlotReading)
            assert reading.pid == os.getpid()
            check_invariants(reading.snapshot)
        # The service's total is the slots' totals; its busy time is their union.
        service = first.snapshot()
        assert service.total_ns == own[0].total_ns + own[1].total_ns
        assert service.busy_ns < own[0].busy_ns + own[1].busy_ns
    finally:
        first.close()
        second.close()


def test_counters_stay_monotonic_across_slots(SharedMeter: Any, shared_path: Path) -> None:
    """Readings taken through any slot never go back, whoever counts meanwhile."""
    meters = [SharedMeter(shared_path) for _ in range(3)]
    try:
        earlier = meters[0].snapshot()
        for round_ in range(30):
            meter = meters[round_ % 3]
            with meter.track():
                later = meters[(round_ + 1) % 3].snapshot()
            check_invariants(later)
            for field in ("uptime_ns", "queries", "errors", "total_ns", "busy_ns"):
                assert getattr(later, field) >= getattr(earlier, field), field
            interval = later - earlier
            assert interval.busy_ns <= interval.duration_ns
            earlier = later
    finally:
        for meter in meters:
            meter.close()


def test_a_forked_child_takes_its_own_slot(SharedMeter: Any, shared_path: Path) -> None:
    """A forked child counts into a slot of its own; the parent's query in flight stays its own."""
    with SharedMeter(shared_path) as shared:
        token = shared.begin()
        read_end, write_end = os.pipe()

        def child() -> None:
            own = shared.slot
            assert own != 0
            with shared.track():
                pass
            readings = {slot.slot: slot for slot in shared.slots()}
            assert readings[own].pid == os.getpid()
            assert readings[own].snapshot.queries == 1
            assert readings[own].snapshot.concurrency == 0
            # The parent's query is in flight in the parent's slot only.
            assert readings[0].snapshot.concurrency == 1
            os.write(write_end, b"%d" % own)

        assert _in_child(child) == 0
        os.close(write_end)
        child_slot = int(os.read(read_end, 16))
        os.close(read_end)
        shared.end(token)
        snap = shared.snapshot()
        assert (snap.queries, snap.errors, snap.concurrency) == (2, 0, 0)
        # The child exited: its slot is settled and free again.
        assert [slot.slot for slot in shared.slots()] == [0]
        assert child_slot == 1


def test_close_gives_the_slot_back_and_settles_its_queries(
    SharedMeter: Any, shared_path: Path
) -> None:
    """close() frees the slot; its queries in flight end as errors in the service."""
    keeper = SharedMeter(shared_path)
    leaver = SharedMeter(shared_path)
    token = leaver.begin()
    leaver.close()
    leaver.close()
    assert leaver.closed
    snap = keeper.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (1, 1, 0)
    assert [slot.slot for slot in keeper.slots()] == [0]
    # The closed meter counts alone from then on; its old token is inert.
    leaver.end(token)
    with leaver.track():
        pass
    assert leaver.snapshot().queries == 1
    assert keeper.snapshot().queries == 1
    with pytest.raises(ValueError, match="closed"):
        leaver.slots()
    keeper.close()


def test_oldest_in_flight_across_processes(SharedMeter: Any, shared_path: Path) -> None:
    """The oldest query in flight is found in whichever process runs it."""
    with SharedMeter(shared_path) as shared:
        assert shared.oldest_in_flight_ns() is None
        ready_read, ready_write = os.pipe()
        done_read, done_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                with shared.track():
                    os.write(ready_write, b"x")
                    os.read(done_read, 1)
            finally:
                os._exit(0)
        try:
            os.read(ready_read, 1)
            # The child's query began before this: its age is at least the time since.
            before = time.monotonic_ns()
            time.sleep(0.02)
            with shared.track():
                at_least = time.monotonic_ns() - before
                age = shared.oldest_in_flight_ns()
                assert age is not None
                assert age >= at_least
            readings = {slot.pid: slot for slot in shared.slots()}
            assert readings[pid].oldest_in_flight_ns is not None
            assert readings[os.getpid()].oldest_in_flight_ns is None
        finally:
            os.write(done_write, b"x")
            os.waitpid(pid, 0)
            for fd in (ready_read, ready_write, done_read, done_write):
                os.close(fd)
        assert shared.oldest_in_flight_ns() is None


def test_oldest_in_flight_in_one_process(Meter: type[MeterType]) -> None:
    """A meter's oldest query in flight: its age while it runs, the next oldest's after it ends."""
    meter = Meter()
    assert meter.oldest_in_flight_ns() is None
    first = meter.begin()
    time.sleep(0.01)
    second = meter.begin()
    age = meter.oldest_in_flight_ns()
    assert age is not None and age >= 10_000_000
    meter.end(first)
    after = meter.oldest_in_flight_ns()
    assert after is not None and after < age
    meter.end(second)
    assert meter.oldest_in_flight_ns() is None
    with meter.track():
        inner = meter._timed(meter.oldest_in_flight_ns)()
        assert inner is not None
    assert meter.oldest_in_flight_ns() is None


def test_oldest_in_flight_follows_an_injected_clock(Meter: type[MeterType], clock: Any) -> None:
    """The age is read on the meter's own clock."""
    meter = Meter(clock=clock)
    with meter.track():
        clock.advance(5_000)
        with meter.track():
            clock.advance(1_000)
            assert meter.oldest_in_flight_ns() == 6_000
    assert meter.oldest_in_flight_ns() is None


def test_sqlite3_through_dbapi_counts_into_the_service(
    SharedMeter: Any, shared_path: Path, tmp_path: Path
) -> None:
    """sqlite3 instrumented with meter=shared counts real statements into the shared file."""
    from querymeter import dbapi

    with SharedMeter(shared_path) as shared:
        dbapi.instrument(sqlite3, meter=shared)
        try:
            connection = sqlite3.connect(str(tmp_path / "db.sqlite"))
            cursor = connection.cursor()
            cursor.execute("CREATE TABLE h1_items (id INTEGER PRIMARY KEY, name TEXT)")
            cursor.executemany("INSERT INTO h1_items (name) VALUES (?)", [("a",), ("b",)])
            cursor.execute("SELECT count(*) FROM h1_items")
            assert cursor.fetchone() == (2,)
            with pytest.raises(sqlite3.OperationalError):
                cursor.execute("SELECT * FROM h1_missing")
            connection.close()
        finally:
            dbapi.uninstrument(sqlite3)
        # Four statement-sending calls (executemany is one), one of them failing.
        snap = shared.snapshot()
        assert (snap.queries, snap.errors, snap.concurrency) == (4, 1, 0)
        assert shared.slots()[0].snapshot.queries == 4


def test_psycopg_through_dbapi_counts_into_the_service(SharedMeter: Any, shared_path: Path) -> None:
    """psycopg instrumented with meter=shared counts PostgreSQL statements, parent and child."""
    from querymeter import dbapi

    from ..servers import driver, postgres_dsn

    psycopg = driver("psycopg")
    dsn = postgres_dsn()
    with SharedMeter(shared_path) as shared:
        dbapi.instrument(psycopg, meter=shared)
        try:

            def child() -> None:
                with psycopg.connect(dsn) as connection:
                    connection.execute("SELECT 1").fetchall()
                    connection.execute("SELECT pg_sleep(0.01)").fetchall()

            before = shared.snapshot()
            assert _in_child(child) == 0
            with psycopg.connect(dsn) as connection:
                connection.execute("SELECT 2").fetchall()
        finally:
            dbapi.uninstrument(psycopg)
        interval = shared.snapshot() - before
        assert interval.queries == 3
        assert interval.errors == 0
        assert interval.busy_ns >= 10_000_000


def test_the_package_exports_it() -> None:
    """querymeter.SharedMeter is the shared meter over the chosen core."""
    assert issubclass(querymeter.SharedMeter, MeterType)
    assert issubclass(querymeter.SharedMeterError, OSError)


# ---------------------------------------------------------------- the file


def test_the_file_has_a_fixed_size(SharedMeter: Any, shared_path: Path) -> None:
    """The file is made at its full size, and opening or counting never grows it."""
    with SharedMeter(shared_path, slots=8) as shared:
        assert shared.slot_count == 8
        size = shared_path.stat().st_size
        assert size == HEADER_SIZE + 8 * SLOT_SIZE
        for _ in range(100):
            with shared.track():
                pass
        with SharedMeter(shared_path, slots=64) as other:
            # An existing file keeps its own slot count.
            assert other.slot_count == 8
        assert shared_path.stat().st_size == size


def test_a_zero_length_file_is_initialised(SharedMeter: Any, shared_path: Path) -> None:
    """An empty file (made by touch, or by another process that is about to) is initialised."""
    shared_path.touch()
    with SharedMeter(shared_path, slots=4) as shared:
        with shared.track():
            pass
        assert shared.snapshot().queries == 1


def test_processes_racing_to_initialise_one_empty_file(SharedMeter: Any, shared_path: Path) -> None:
    """Eight processes opening one empty file at once make one file and one service."""
    shared_path.touch()
    go_read, go_write = os.pipe()
    children = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.read(go_read, 1)
                with SharedMeter(shared_path, slots=16) as shared, shared.track():
                    pass
                status = 0
            finally:
                os._exit(status)
        children.append(pid)
    os.write(go_write, b"x" * 8)
    statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    os.close(go_read)
    os.close(go_write)
    assert statuses == [0] * 8
    with SharedMeter(shared_path) as shared:
        snap = shared.snapshot()
        assert (snap.queries, snap.errors, snap.concurrency) == (8, 0, 0)
        assert shared_path.stat().st_size == HEADER_SIZE + 16 * SLOT_SIZE


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a meter at all" * 300, "not a querymeter shared meter's file"),
        (b"QMSH", "not a querymeter shared meter's file"),
    ],
    ids=["foreign", "short"],
)
def test_a_foreign_file_is_refused(
    SharedMeter: Any, shared_path: Path, content: bytes, problem: str
) -> None:
    """A file that is not a shared meter's is refused, naming the problem and the path."""
    shared_path.write_bytes(content)
    with pytest.raises(SharedMeterError, match=problem) as info:
        SharedMeter(shared_path)
    assert str(shared_path) in str(info.value)
    assert shared_path.read_bytes() == content


def test_a_truncated_file_is_refused(SharedMeter: Any, shared_path: Path) -> None:
    """A file cut short is refused at open, not mapped (where it would crash a hook)."""
    with SharedMeter(shared_path, slots=4):
        pass
    data = shared_path.read_bytes()
    shared_path.write_bytes(data[: HEADER_SIZE + SLOT_SIZE])
    with pytest.raises(SharedMeterError, match="truncated") as info:
        SharedMeter(shared_path)
    assert str(shared_path) in str(info.value)


def test_a_file_of_another_version_is_refused(SharedMeter: Any, shared_path: Path) -> None:
    """A file of another layout version is refused, naming both versions."""
    with SharedMeter(shared_path, slots=4):
        pass
    with open(shared_path, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<I", 99))
    with pytest.raises(SharedMeterError, match="version 99"):
        SharedMeter(shared_path)


def test_a_file_of_the_other_core_is_refused(implementation: str, shared_path: Path) -> None:
    """A file counted under one core's lock is refused by the other core."""
    from querymeter.shared import shared_meter_class

    from ..conftest import load_meter_class

    load_meter_class("c")
    other = "python" if implementation == "c" else "c"
    with (
        shared_meter_class(implementation)(shared_path, slots=4),
        pytest.raises(SharedMeterError, match="same core"),
    ):
        shared_meter_class(other)(shared_path)


def test_a_full_slot_table_is_refused(SharedMeter: Any, shared_path: Path) -> None:
    """With every slot taken by a live process, opening says so."""
    first = SharedMeter(shared_path, slots=2)
    second = SharedMeter(shared_path)
    with pytest.raises(SharedMeterError, match="every one of its 2 slots is taken"):
        SharedMeter(shared_path)
    second.close()
    third = SharedMeter(shared_path)
    assert third.slot == 1
    third.close()
    first.close()


def test_a_half_initialised_file_is_made_anew(SharedMeter: Any, shared_path: Path) -> None:
    """A file whose maker died before marking it ready is initialised again."""
    with SharedMeter(shared_path, slots=4):
        pass
    with open(shared_path, "r+b") as f:
        f.seek(36)
        f.write(struct.pack("<I", 0))
    with SharedMeter(shared_path, slots=4) as shared:
        assert shared.snapshot().queries == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"slots": 0}, ValueError),
        ({"slots": "8"}, ValueError),
        ({"slots": True}, ValueError),
    ],
)
def test_bad_arguments_are_refused(
    SharedMeter: Any, shared_path: Path, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    """Explicit arguments are validated with a clear exception."""
    with pytest.raises(error, match="slots"):
        SharedMeter(shared_path, **kwargs)
    with pytest.raises(TypeError, match="path"):
        SharedMeter(42)


def test_an_unopenable_path_is_a_shared_meter_error(SharedMeter: Any, tmp_path: Path) -> None:
    """A path in a missing directory raises SharedMeterError naming the path."""
    path = tmp_path / "missing" / "service.querymeter"
    with pytest.raises(SharedMeterError) as info:
        SharedMeter(path)
    assert str(path) in str(info.value)


def test_snapshots_subtract_across_processes(SharedMeter: Any, shared_path: Path) -> None:
    """Snapshots taken in two processes are of one meter: their difference is an interval."""
    with SharedMeter(shared_path) as shared:
        read_end, write_end = os.pipe()

        def child() -> None:
            with shared.track():
                pass
            os.write(write_end, repr(tuple(shared.snapshot())).encode())

        before = shared.snapshot()
        assert _in_child(child) == 0
        os.close(write_end)
        child_snap = Snapshot(*ast.literal_eval(os.read(read_end, 4096).decode()))
        os.close(read_end)
        interval = child_snap - before
        assert interval.queries == 1
