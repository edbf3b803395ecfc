"""querymeter top's report: a pure function from two readings to lines, checked by hand."""

from __future__ import annotations

import sqlite3

import pytest

import querymeter.dbapi
from querymeter import Interval, Snapshot
from querymeter.meter import Meter as MeterType
from querymeter.shared._top import Reading, WorkerReading, render

from ..conftest import FakeClock

S = 1_000_000_000
MS = 1_000_000
SERVICE_ID = 0x5E
PATH = "/dev/shm/app.querymeter"


def snap(
    uptime_ns: int,
    queries: int,
    errors: int,
    concurrency: int,
    total_ns: int,
    busy_ns: int,
    meter_id: int = SERVICE_ID,
) -> Snapshot:
    """A snapshot with these counters (wall time: a fixed instant)."""
    return Snapshot(
        uptime_ns, queries, errors, concurrency, total_ns, busy_ns, 1_700_000_000 * S, meter_id
    )


def worker(slot: int, pid: int, opened_wall_ns: int, snapshot: Snapshot) -> WorkerReading:
    """A live worker's reading."""
    return WorkerReading(slot=slot, pid=pid, opened_wall_ns=opened_wall_ns, snapshot=snapshot)


def cells(lines: list[str], label: str) -> list[str]:
    """The cells of the row whose first cell is ``label``."""
    for line in lines:
        parts = line.split()
        if parts and parts[0] == label:
            return parts
    raise AssertionError(f"no row {label!r} in:\n" + "\n".join(lines))


def figures(interval: Interval) -> list[str]:
    """X, N, R ms, U %, S ms, err/s of an interval as the report prints them."""

    def show(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    r = interval.response_time
    s = interval.service_time
    u = interval.utilization
    return [
        show(interval.throughput, ",.1f"),
        show(interval.concurrency, ".2f"),
        show(None if r is None else r * 1000, ".3f"),
        show(None if u is None else u * 100, ".1f"),
        show(None if s is None else s * 1000, ".3f"),
        show(interval.error_rate, ",.1f"),
    ]


# Two workers for 2 s: worker 0 (pid 100) keeps its slot; worker 1 (pid 101)
# dies, and pid 102 takes slot 1 half-way through; pid 103 starts in slot 2.
EARLIER = Reading(
    service=snap(10 * S, 1000, 4, 1, 5 * S, 4 * S),
    workers=(
        worker(0, 100, 11, snap(10 * S, 600, 4, 1, 3 * S, 3 * S, meter_id=0xA)),
        worker(1, 101, 22, snap(9 * S, 400, 0, 0, 2 * S, 2 * S, meter_id=0xB)),
    ),
)
LATER = Reading(
    service=snap(12 * S, 1500, 5, 2, 6 * S, 5 * S),
    workers=(
        worker(0, 100, 11, snap(12 * S, 900, 5, 1, 3 * S + 600 * MS, 3 * S + 500 * MS, 0xA)),
        worker(1, 102, 33, snap(1 * S, 100, 0, 1, 200 * MS, 150 * MS, meter_id=0xC)),
        worker(2, 103, 44, snap(S // 2, 0, 0, 0, 0, 0, meter_id=0xD)),
    ),
)


def test_service_row_has_the_service_interval_figures() -> None:
    """The service row shows X, N, R, U, S and errors/s of the service's interval, and now."""
    lines = render(PATH, EARLIER, LATER)
    row = cells(lines, "service")
    interval = LATER.service - EARLIER.service
    assert row[1:7] == figures(interval)
    # 500 queries in 2 s, N = 1 s / 2 s, R = 1 s / 500, U = 1 s / 2 s, S = 2 ms, 0.5 err/s.
    assert row[1:7] == ["250.0", "0.50", "2.000", "50.0", "2.000", "0.5"]
    assert row[7] == "2"


def test_a_worker_that_kept_its_slot_shows_its_own_interval() -> None:
    """A worker seen in both readings shows the interval between its two readings."""
    row = cells(render(PATH, EARLIER, LATER), "0")
    assert row[1] == "100"
    assert row[2:8] == figures(LATER.workers[0].snapshot - EARLIER.workers[0].snapshot)
    assert row[2:8] == ["150.0", "0.30", "2.000", "25.0", "1.667", "0.5"]


def test_a_worker_new_in_the_interval_is_marked_and_measured_from_its_start() -> None:
    """A new worker (in a new slot or another's) shows '+' and its counts since it started."""
    lines = render(PATH, EARLIER, LATER)
    row = cells(lines, "1+")
    assert row[1] == "102"
    # 100 queries in its 1 s of life.
    assert row[2:8] == ["100.0", "0.20", "2.000", "15.0", "1.500", "0.0"]
    assert row[8] == "1"
    idle = cells(lines, "2+")
    # No query completed: R and S undefined, not zero.
    assert idle[2:8] == ["0.0", "0.00", "-", "0.0", "-", "0.0"]


def test_the_header_names_the_file_the_interval_and_the_workers() -> None:
    """The first line names the file, the interval's length, the workers live and gone."""
    header = render(PATH, EARLIER, LATER)[0]
    assert PATH in header
    assert "2.00 s" in header
    assert "3 workers, 1 gone" in header
    assert render(PATH, LATER, LATER)[0].endswith("0.00 s  3 workers")


def test_the_first_reading_has_no_figures() -> None:
    """Without an earlier reading every figure is '-' and the report says it is measuring."""
    lines = render(PATH, None, LATER)
    assert "first reading" in lines[0]
    assert cells(lines, "service")[1:7] == ["-"] * 6
    assert cells(lines, "0")[2:8] == ["-"] * 6
    assert lines[-1] == "(the first interval is being measured)"


def test_readings_of_another_meter_start_afresh() -> None:
    """Readings of two different files (a path reused) are not subtracted: it starts afresh."""
    other = Reading(service=EARLIER.service._replace(meter_id=0x77), workers=())
    lines = render(PATH, other, LATER)
    assert "first reading" in lines[0]


def test_columns_line_up_under_the_heading() -> None:
    """Every figure ends in the column of its heading, as in iostat."""
    lines = render(PATH, EARLIER, LATER)
    heading = lines[1]
    ends = [heading.index(name) + len(name) for name in ("X/s", "N", "R ms", "U %", "S ms")]
    for line in lines[2:5]:
        for end in ends:
            assert line[end - 1] != " ", (line, end)
            assert end == len(line) or line[end] == " ", (line, end)


class SteppingClock(FakeClock):
    """A clock that moves 1 ms on every reading: each query takes 1 ms."""

    def __call__(self) -> int:
        self.advance(MS)
        return super().__call__()


@pytest.fixture
def table_readings(Meter: type[MeterType]) -> tuple[Reading, Reading]:
    """Two readings around statements run through sqlite3 on a clock that ticks 1 ms a reading."""
    clock = SteppingClock()
    meter = Meter(clock=clock)
    table = meter.enable_statements()
    connection = querymeter.dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    timed = connection.execute
    timed("CREATE TABLE t (id INTEGER, name TEXT)")
    first = Reading(meter.snapshot(), (), table.snapshot())
    for number in range(4):
        timed(f"SELECT name FROM t WHERE id = {number}")
    columns = ", ".join(f"name AS a_rather_long_column_name_{n}" for n in range(5))
    timed(f"SELECT {columns} FROM t")
    clock.advance(S)
    second = Reading(meter.snapshot(), (), table.snapshot())
    return first, second


def test_top_statements_of_the_interval(table_readings: tuple[Reading, Reading]) -> None:
    """The statements that ran in the interval, the most time first, with their own figures."""
    first, second = table_readings
    lines = render(PATH, first, second, width=80)
    at = next(i for i, line in enumerate(lines) if "statement (the most time first)" in line)
    shown = lines[at + 1 :]
    assert len(shown) == 2, shown
    interval = second.service - first.service
    select = shown[0].split()
    assert select[0] == format(4 / interval.duration, ",.1f")
    assert select[1:4] == [format(4 * MS / interval.duration_ns, ".2f"), "1.000", "0.0"]
    assert " ".join(select[4:]).startswith("select name from t where id = ?")
    assert "create" not in "\n".join(shown)  # it ran before the interval
    assert all(len(line) <= 80 for line in shown)
    assert shown[1].endswith("…")


def test_statements_can_be_left_out(table_readings: tuple[Reading, Reading]) -> None:
    """statements=0 shows no statement section; a reading without the table shows none either."""
    first, second = table_readings
    assert not any("statement" in line for line in render(PATH, first, second, statements=0))
    without = Reading(first.service, first.workers, None)
    assert not any("statement" in line for line in render(PATH, without, second))


def test_a_quiet_interval_says_no_statement_ran(table_readings: tuple[Reading, Reading]) -> None:
    """With the table on and nothing run, the section says so."""
    _, second = table_readings
    lines = render(PATH, second, second)
    assert lines[-1].strip() == "(no statement ran in the interval)"
