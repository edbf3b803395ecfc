"""The shared statement table: one table for many processes, with a process's own figures."""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import random
import signal
import sqlite3
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from querymeter import dbapi, fingerprint
from querymeter.core import _py_statements as layout
from querymeter.meter import Meter as MeterType
from querymeter.meter import meter_class
from querymeter.shared import shared_meter_class
from querymeter.shared._statements import (
    RECORD_SIZE,
    SharedStatementTable,
    enable_shared_statements,
    file_size,
    shared_statements_max,
    statements_path,
)
from querymeter.statements import StatementTable

from ..conftest import load_meter_class

PREFIX = "h2_shared"


@pytest.fixture
def path(tmp_path: Path) -> str:
    """A fresh path for a shared statement table."""
    return str(tmp_path / "service.querymeter.statements")


def workload(seed: int, count: int, statements: int) -> list[tuple[Any, ...]]:
    """A fixed mix of queries: (sql, elapsed_ns, error, rows), some without text."""
    rng = random.Random(seed)
    queries: list[tuple[Any, ...]] = []
    for _ in range(count):
        which = rng.randrange(statements)
        sql = (
            None
            if which == 0
            else f"SELECT a, b FROM {PREFIX}_{which} WHERE id = {rng.randrange(9)}"
        )
        elapsed = int(rng.lognormvariate(11, 2))
        queries.append((sql, elapsed, rng.random() < 0.05, rng.randrange(-1, 20)))
    return queries


def run(table: Any, queries: list[tuple[Any, ...]]) -> None:
    for sql, elapsed, error, rows in queries:
        table._core._record(sql, None, elapsed, error, rows)


def figures(reading: Any) -> dict[str, tuple[Any, ...]]:
    """A reading's figures by fingerprint, the special rows included, without wall times."""

    def row(s: Any) -> tuple[Any, ...]:
        return (s.calls, s.errors, s.total_ns, s.total_sq, s.min_ns, s.max_ns, s.rows,
                s.histogram_lo, s.histogram, s.sample_sql)  # fmt: skip

    rows = {s.fingerprint: row(s) for s in reading}
    rows["(evicted)"] = row(reading.evicted)
    rows["(untexted)"] = row(reading.untexted)
    return rows


def core_type(implementation: str) -> Any:
    """The Statements type of a core."""
    module = "querymeter.core._c" if implementation == "c" else "querymeter.core._py"
    return importlib.import_module(module).Statements


def shared_table(implementation: str, path: str, max_statements: int) -> SharedStatementTable:
    return SharedStatementTable(path, max_statements, core_type=core_type(implementation))


# ---------------------------------------------------------------- one process


def test_same_figures_as_an_in_process_table(implementation: str, path: str) -> None:
    """Through evictions, a shared table holds exactly what a process's own table holds."""
    queries = workload(1, 3000, 60)
    own = StatementTable(20, core_type=core_type(implementation))
    shared = shared_table(implementation, path, 20)
    run(own, queries)
    run(shared, queries)
    mine, theirs = own.snapshot(), shared.snapshot()
    assert mine.dropped == theirs.dropped > 0
    assert len(shared) == len(own) == len(theirs) <= 20
    assert figures(theirs) == figures(mine)
    assert [s.serial for s in theirs] == [s.serial for s in mine]
    assert theirs.calls == len(queries)


def test_both_cores_make_the_same_table(tmp_path: Path) -> None:
    """The C core and the pure-Python core leave the same figures in their files."""
    load_meter_class("c")
    queries = workload(2, 2000, 40)
    readings = []
    for implementation in ("c", "python"):
        table = shared_table(implementation, str(tmp_path / implementation), 16)
        run(table, queries)
        dropped, evicted, untexted, rows = table._core._read()
        # All but the wall-clock times of first and last call.
        readings.append([dropped] + [row[:11] + row[13:] for row in (evicted, untexted, *rows)])
    assert readings[0] == readings[1]


def test_long_texts_are_cut_and_stay_apart(implementation: str, path: str) -> None:
    """Fingerprints longer than the file keeps are cut, marked, and stay distinct statements."""
    table = shared_table(implementation, path, 10)
    columns = ", ".join(f"column_{i}" for i in range(300))
    for tail in ("a", "b"):
        table._core._record(f"SELECT {columns} FROM {PREFIX}_{tail}", None, 10, False, 1)
    reading = table.snapshot()
    assert len(reading) == 2
    for stats in reading:
        assert len(stats.fingerprint.encode()) <= 1024
        assert len(stats.sample_sql.encode()) <= 1024
        assert "…" in stats.fingerprint


def test_file_size_is_fixed(implementation: str, path: str) -> None:
    """The file is the size its max_statements gives, however many statements come and go."""
    table = shared_table(implementation, path, 50)
    run(table, workload(3, 2000, 400))
    assert os.path.getsize(path) == file_size(50)
    assert file_size(5000) < 5002 * RECORD_SIZE + 5000 * 32 + 3 * 4096 + RECORD_SIZE
    assert shared_statements_max(path) == 50


# --------------------------------------------------------- opening the file


def test_bad_files_are_refused_at_open(implementation: str, path: str) -> None:
    """A foreign, truncated or other-version file, or another max_statements: a clear error."""
    Path(path).write_bytes(b"not a table" * 100)
    with pytest.raises(ValueError, match="not a querymeter shared statement table"):
        shared_table(implementation, path, 10)
    os.unlink(path)
    shared_table(implementation, path, 10)
    with pytest.raises(ValueError, match="max_statements=10, not 11"):
        shared_table(implementation, path, 11)
    data = bytearray(Path(path).read_bytes())
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        shared_table(implementation, path, 10)
    struct.pack_into("=I", data, 8, 99)
    Path(path).write_bytes(data)
    with pytest.raises(ValueError, match="another querymeter version"):
        shared_table(implementation, path, 10)


def test_an_empty_file_is_made_a_table(implementation: str, path: str) -> None:
    """A zero-length file (a process that died making it) becomes a new table."""
    Path(path).write_bytes(b"")
    table = shared_table(implementation, path, 10)
    table._core._record("SELECT 1", None, 10, False, 1)
    assert table.snapshot().calls == 1


def test_the_other_core_cannot_share_a_file(tmp_path: Path) -> None:
    """A file made by one core's processes is refused by the other's: their locks differ."""
    load_meter_class("c")
    for maker, other in (("c", "python"), ("python", "c")):
        path = str(tmp_path / maker)
        shared_table(maker, path, 10)
        with pytest.raises(ValueError, match=r"made by processes of the .* core; the .* core"):
            shared_table(other, path, 10)


def test_enable_shared_statements_names_the_meter_path(implementation: str, tmp_path: Path) -> None:
    """Enabled on a meter, the table is ``<path>.statements``, is the meter's, and is kept."""
    meter: Any = load_meter_class(implementation)()
    target = str(tmp_path / "app.querymeter")
    table = enable_shared_statements(meter, 10, path=statements_path(target))
    assert table.path == target + ".statements"
    assert meter.statements is table
    assert enable_shared_statements(meter, 10, path=statements_path(target)) is table
    with pytest.raises(ValueError, match="already enabled with max_statements=10"):
        enable_shared_statements(meter, 11, path=statements_path(target))
    with meter.track():
        pass
    assert table.snapshot().untexted.calls == 1
    meter.disable_statements()


# ------------------------------------------------------------ many processes


def worker(
    implementation: str, path: str, seed: int, count: int
) -> tuple[int, int, int, dict[str, int]]:
    """A process's queries on SQLite through the hooks: its meter's figures, and what it ran."""
    Meter = meter_class(implementation)
    meter = Meter()
    enable_shared_statements(meter, 200, path=path)
    connection = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    connection.execute(f"CREATE TABLE {PREFIX} (id integer, note text)")
    create = f"CREATE TABLE {PREFIX} (id integer, note text)"
    ran: Counter[str] = Counter({fingerprint(create, "sqlite"): 1})
    rng = random.Random(seed)
    for i in range(count):
        sql = rng.choice(
            [
                f"INSERT INTO {PREFIX} (id, note) VALUES ({i}, 'x')",
                f"SELECT count(*) FROM {PREFIX} WHERE id > {i % 7}",
                f"UPDATE {PREFIX} SET note = 'y' WHERE id = {i}",
                f"SELECT * FROM {PREFIX}_missing",
            ]
        )
        with contextlib.suppress(sqlite3.OperationalError):
            connection.execute(sql)
        ran[fingerprint(sql, "sqlite")] += 1
    connection.close()
    reading = meter.snapshot()
    return reading.queries, reading.errors, reading.total_ns, dict(ran)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_processes_add_up(implementation: str, path: str, start_method: str) -> None:
    """Statements of several processes add up, per statement and in all to their meters' counts."""
    context = multiprocessing.get_context(start_method)
    with context.Pool(3) as pool:
        results = pool.starmap(worker, [(implementation, path, seed, 300) for seed in range(6)])
    table = shared_table(implementation, path, 200)
    reading = table.snapshot()
    expected: Counter[str] = Counter()
    for _queries, _errors, _total, ran in results:
        expected.update(ran)
    assert {s.fingerprint: s.calls for s in reading} == dict(expected)
    assert reading.calls == sum(r[0] for r in results) == 6 * 301
    assert reading.errors == sum(r[1] for r in results) > 0
    assert reading.total_ns == sum(r[2] for r in results)
    assert reading.evicted.calls == reading.untexted.calls == 0


def churner(implementation: str, path: str, seed: int) -> int:
    """Records many distinct statements into a small table; returns how many queries."""
    table = shared_table(implementation, path, 20)
    queries = workload(seed, 1500, 120)
    run(table, queries)
    return len(queries)


def test_eviction_across_processes(implementation: str, path: str) -> None:
    """Processes running more statements than the table holds keep it bounded, losing nothing."""
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        counts = pool.starmap(churner, [(implementation, path, seed) for seed in range(4)])
    table = shared_table(implementation, path, 20)
    reading = table.snapshot()
    assert len(reading) <= 20
    assert reading.dropped > 0
    assert reading.calls == sum(counts)
    every = [q for seed in range(4) for q in workload(seed, 1500, 120)]
    assert reading.total_ns == sum(elapsed for _sql, elapsed, _e, _r in every)
    assert reading.errors == sum(1 for _sql, _elapsed, error, _r in every if error)
    assert os.path.getsize(path) == file_size(20)


def test_eviction_by_another_process_is_seen(implementation: str, path: str) -> None:
    """A statement this process cached but another evicted is recorded as a new life, not lost."""
    table = shared_table(implementation, path, 20)
    table._core._record("SELECT 1", None, 100, False, 1)
    first = table.snapshot()["select ?"]
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        pool.starmap(churner, [(implementation, path, 7)])
    assert "select ?" not in table.snapshot()
    table._core._record("SELECT 1", None, 100, False, 1)
    again = table.snapshot()["select ?"]
    assert again.calls == 1
    assert again.serial > first.serial


def test_readings_of_two_processes_make_an_interval(implementation: str, path: str) -> None:
    """A snapshot taken in one process subtracts from one taken in another: one table_id."""
    table = shared_table(implementation, path, 200)
    before = table.snapshot()
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        ((queries, _errors, total, ran),) = pool.starmap(worker, [(implementation, path, 3, 50)])
    other = shared_table(implementation, path, 200)
    interval = other.snapshot() - before
    assert interval.calls == queries == sum(ran.values())
    assert interval.total_ns == total


# ------------------------------------------------------------ a dead process


def _start_ticks() -> int:
    stat = Path("/proc/self/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def die_mid_update(implementation: str, path: str) -> None:
    """Takes the table's lock and dies half-way through recording a query, as SIGKILL leaves it."""
    table = shared_table(implementation, path, 10)
    core = table._core
    if implementation == "python":
        shared = core._shared
        shared.locked().__enter__()
    else:
        # What the C core's holder leaves: its token in the lock word.
        region = table._region
        token = (os.getpid() << 32) | (_start_ticks() & 0xFFFFFFFF)
        struct.pack_into("=Q", region, 32, token)
        shared = layout._Shared.__new__(layout._Shared)
        shared.n = 10
        shared.layout = layout.shared_layout(10)
        view = memoryview(region)
        shared.q, shared.d, shared.i32 = view.cast("Q"), view.cast("d"), view.cast("i")
        shared.s64 = view.cast("q")
    index = 10 + 1  # untexted: the record every query without text goes to
    shared._save(index)
    shared.q[layout._H_UNDO_KIND] = layout._UNDO_RECORD
    base = shared.word(index)
    shared.q[base + layout._R_CALLS] += 1000  # half an update: calls, not yet the time
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_process_killed_mid_update_is_rolled_back(implementation: str, path: str) -> None:
    """The lock of a process killed inside an update is taken over, and its update undone."""
    table = shared_table(implementation, path, 10)
    for _ in range(3):
        table._core._record(None, None, 50, False, -1)
    table._core._record("SELECT 1", None, 70, False, 1)
    process = multiprocessing.get_context("fork").Process(
        target=die_mid_update, args=(implementation, path)
    )
    process.start()
    process.join()
    assert process.exitcode == -signal.SIGKILL
    table._core._record(None, None, 50, False, -1)
    reading = table.snapshot()
    assert reading.untexted.calls == 4
    assert reading.untexted.total_ns == 200
    assert reading.calls == 5
    assert struct.unpack_from("=Q", table._region, layout._H_UNDO_KIND * 8) == (0,)


# --------------------------------------------------------------------- fork


def test_a_forked_child_records_into_the_same_table(implementation: str, path: str) -> None:
    """After fork, the child records into the table and mapping it inherited, as its parent."""
    table = shared_table(implementation, path, 10)
    table._core._record("SELECT 1", None, 10, False, 1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            table._core._record("SELECT 1", None, 10, False, 1)
            table._core._record("SELECT 2, 3", None, 10, False, 1)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    reading = table.snapshot()
    assert reading["select ?"].calls == 2
    assert reading["select ?, ?"].calls == 1


def test_a_meter_counts_into_the_shared_table(Meter: type[MeterType], path: str) -> None:
    """A meter's queries go to the shared table, and add up to its counters."""
    meter: Any = Meter()
    enable_shared_statements(meter, 10, path=path)
    connection = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    for i in range(20):
        connection.execute(f"SELECT {i}").fetchall()
    connection.close()
    reading = meter.statements.snapshot()
    counters = meter.snapshot()
    assert reading.calls == counters.queries == 20
    assert reading.total_ns == counters.total_ns
    meter.disable_statements()


# ------------------------------------------------------------ a SharedMeter


def shared_worker(implementation: str, meter_path: str, seed: int) -> dict[str, int]:
    """Opens the shared meter, runs queries on SQLite through the hooks, closes it."""
    with shared_meter_class(implementation)(meter_path) as meter:
        meter.enable_statements(100)
        connection = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
        ran: Counter[str] = Counter()
        rng = random.Random(seed)
        for i in range(200):
            sql = rng.choice([f"SELECT {i}", f"SELECT {i} FROM {PREFIX}_missing", "SELECT 1, 2"])
            with contextlib.suppress(sqlite3.OperationalError):
                connection.execute(sql).fetchall()
            ran[fingerprint(sql, "sqlite")] += 1
        connection.close()
    return dict(ran)


def test_totals_equal_the_shared_meters(implementation: str, tmp_path: Path) -> None:
    """Across processes, the table's calls, errors and time are the shared meter's counters."""
    meter_path = str(tmp_path / "service.querymeter")
    with multiprocessing.get_context("fork").Pool(3) as pool:
        ran = pool.starmap(shared_worker, [(implementation, meter_path, seed) for seed in range(5)])
    with shared_meter_class(implementation)(meter_path) as meter:
        table = meter.enable_statements(100)
        assert isinstance(table, SharedStatementTable)
        assert table.path == statements_path(meter_path)
        reading, counters = table.snapshot(), meter.snapshot()
    expected: Counter[str] = Counter()
    for one in ran:
        expected.update(one)
    assert {s.fingerprint: s.calls for s in reading} == dict(expected)
    assert reading.calls == counters.queries == 5 * 200
    assert reading.errors == counters.errors > 0
    assert reading.total_ns == counters.total_ns
