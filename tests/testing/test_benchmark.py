"""pytest-benchmark's extra_info under --querymeter, and querymeter.benchmark.overhead()."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import querymeter
import querymeter.dbapi
from querymeter.benchmark import Overhead, overhead
from querymeter.meter import Meter as MeterType

from ..servers import driver
from .conftest import read_json

pytest_plugins = ["pytester"]

TABLE = "h4_pytest_bench"

# The benchmarked body runs 1, 2, 3, 1, 2, 3, ... statements in turn, and
# notes each call's count: the oracle for the rounds pytest-benchmark measured.
PG_BENCH = f"""
import os

import psycopg
import pytest

DSN = os.environ["QM_H4_DSN"]
TABLE = "{TABLE}"
CALLS = []


@pytest.fixture
def connection():
    with psycopg.connect(DSN, autocommit=True) as connection:
        connection.execute(f"drop table if exists {{TABLE}}")
        connection.execute(f"create table {{TABLE}} (id int primary key)")
        yield connection
        connection.execute(f"drop table {{TABLE}}")


def body(connection):
    statements = len(CALLS) % 3 + 1
    CALLS.append(statements)
    for id in range(statements):
        connection.execute(f"select * from {{TABLE}} where id = %s", (id,)).fetchall()


def test_pedantic(connection, benchmark):
    benchmark.pedantic(body, args=(connection,), rounds=7, iterations=2, warmup_rounds=2)
    # pytest-benchmark's order: warm-up rounds, measured rounds, then one
    # untimed call for the result (iterations > 1).
    assert len(CALLS) == (2 + 7) * 2 + 1
    measured = CALLS[2 * 2 : (2 + 7) * 2]
    benchmark.extra_info["oracle_queries_per_round"] = sum(measured) / len(measured)
    benchmark.extra_info["oracle_calls"] = sum(CALLS)
"""


def benchmarks(path: Path) -> dict[str, Any]:
    """pytest-benchmark's JSON file: each benchmark's name, with its stats and extra_info."""
    return {item["name"]: item for item in read_json(path)["benchmarks"]}


def test_extra_info_holds_the_measured_rounds_queries(inner: pytest.Pytester, dsn: str) -> None:
    """With --querymeter, extra_info's queries_per_round is the statements of the measured
    rounds per call (as the body counted them), and the server saw every call's statements."""
    psycopg = driver("psycopg")
    pattern = f"select * from {TABLE} where id = $1"

    def server_calls() -> int:
        with psycopg.connect(dsn, autocommit=True) as connection:
            try:
                row = connection.execute(
                    "select coalesce(sum(calls), 0) from pg_stat_statements where query = %s",
                    (pattern,),
                ).fetchone()
            except psycopg.Error as exc:
                pytest.skip(f"pg_stat_statements is not usable: {exc}")
        assert row is not None
        return int(row[0])

    before = server_calls()
    inner.makepyfile(PG_BENCH)
    result = inner.runpytest("--querymeter", "--benchmark-json=bench.json")
    result.assert_outcomes(passed=1)
    bench = benchmarks(inner.path / "bench.json")["test_pedantic"]
    extra = bench["extra_info"]
    # The measured calls are the 5th to the 18th: 2, 3, 1, 2, 3, 1, ... 3, 29 statements.
    assert extra["oracle_queries_per_round"] == 29 / 14
    assert extra["queries_per_round"] == extra["oracle_queries_per_round"]
    assert server_calls() - before == extra["oracle_calls"]
    # DB time is part of each timed round: more than nothing, at most the round's time.
    assert 0 < extra["db_seconds_per_round"] <= bench["stats"]["mean"]


def test_extra_info_of_a_calibrated_benchmark_on_sqlite(inner: pytest.Pytester) -> None:
    """A benchmark pytest-benchmark calibrates itself (many rounds and iterations) gets the
    statements of one call of its body, and none without --querymeter."""
    inner.makepyfile(
        """
        import sqlite3

        def test_two_statements(benchmark):
            connection = sqlite3.connect(":memory:")

            def body():
                connection.execute("select 1")
                connection.execute("select 2")

            benchmark(body)

        def test_none(benchmark):
            benchmark(lambda: None)
        """
    )
    result = inner.runpytest(
        "--querymeter", "--benchmark-json=bench.json", "--benchmark-max-time=0.05"
    )
    result.assert_outcomes(passed=2)
    found = benchmarks(inner.path / "bench.json")
    two = found["test_two_statements"]
    assert two["extra_info"]["queries_per_round"] == 2.0
    assert two["stats"]["rounds"] > 1
    assert found["test_none"]["extra_info"] == {
        "queries_per_round": 0.0,
        "db_seconds_per_round": 0.0,
    }
    result = inner.runpytest("--benchmark-json=plain.json", "--benchmark-max-time=0.05")
    result.assert_outcomes(passed=2)
    plain = benchmarks(inner.path / "plain.json")
    assert [item["extra_info"] for item in plain.values()] == [{}, {}]


def test_the_benchmark_fixture_is_left_as_it_was(inner: pytest.Pytester) -> None:
    """After a metered benchmark its timer is pytest-benchmark's own again, and the
    results name that timer."""
    inner.makepyfile(
        """
        def test_timer(benchmark):
            timer = benchmark._timer
            benchmark(lambda: None)
            assert benchmark._timer is timer
        """
    )
    result = inner.runpytest(
        "--querymeter", "--benchmark-json=bench.json", "--benchmark-max-time=0.05"
    )
    result.assert_outcomes(passed=1)
    document = read_json(inner.path / "bench.json")
    (bench,) = document["benchmarks"]
    assert bench["options"]["timer"] == "perf_counter"


# ------------------------------------------------------------------ overhead()


@pytest.fixture
def counted(Meter: type[MeterType]) -> Iterator[tuple[MeterType, sqlite3.Connection]]:
    """A meter over the core under test and an in-memory SQLite connection counting into it."""
    meter = Meter()
    connection = querymeter.dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    yield meter, connection
    querymeter.dbapi.unwrap_connection(connection)


def test_overhead_counts_only_the_counted_rounds(
    counted: tuple[MeterType, sqlite3.Connection],
) -> None:
    """Without a baseline, the counted rounds count and the rounds with the switch off do not."""
    meter, connection = counted
    result = overhead(lambda: connection.execute("select 1"), rounds=5, number=40)
    assert meter.snapshot().queries == 5 * 40
    assert querymeter.is_enabled()
    assert (result.rounds, result.number, result.baseline) == (5, 40, "disabled")
    assert result.counted_ns > 0 and result.baseline_ns > 0
    assert result.ratio == result.counted_ns / result.baseline_ns
    assert result.added_ns == result.counted_ns - result.baseline_ns


def test_overhead_against_a_baseline_callable(
    counted: tuple[MeterType, sqlite3.Connection],
) -> None:
    """With a baseline callable, each variant runs number times a round and the switch stays on."""
    meter, connection = counted
    plain = sqlite3.connect(":memory:")
    baseline_calls = []

    def baseline() -> None:
        baseline_calls.append(1)
        plain.execute("select 1")

    result = overhead(lambda: connection.execute("select 1"), baseline=baseline, rounds=3, number=7)
    assert meter.snapshot().queries == 3 * 7
    assert len(baseline_calls) == 3 * 7
    assert result.baseline == "baseline"
    assert result.as_dict() == {
        "overhead_ratio": result.ratio,
        "overhead_added_ns": result.added_ns,
        "overhead_counted_ns": result.counted_ns,
        "overhead_baseline_ns": result.baseline_ns,
        "overhead_rounds": 3,
        "overhead_number": 7,
        "overhead_baseline": "baseline",
    }


def test_overhead_calibrates_rounds_of_about_ten_milliseconds() -> None:
    """Without number, the calls per round are calibrated and the same for every round."""
    calls = []
    result = overhead(lambda: calls.append(1), rounds=2)
    # Calibration's own calls come first (1, 10, 100, ...), then 2 rounds of 2 variants.
    assert result.number >= 1
    assert (len(calls) - 4 * result.number) in {sum(10**k for k in range(j)) for j in range(8)}


def test_overhead_is_enabled_again_after_a_workload_that_raises(
    counted: tuple[MeterType, sqlite3.Connection],
) -> None:
    """A workload's exception reaches the caller, and the kill switch is on again."""
    meter, connection = counted
    state = {"calls": 0}

    def workload() -> None:
        state["calls"] += 1
        if not querymeter.is_enabled():
            raise RuntimeError("raised with the switch off")
        connection.execute("select 1")

    with pytest.raises(RuntimeError, match="switch off"):
        overhead(workload, rounds=2, number=3)
    assert querymeter.is_enabled()
    assert state["calls"] == 3 + 1 and meter.snapshot().queries == 3


def test_overhead_refuses_to_compare_while_disabled() -> None:
    """With the kill switch off and no baseline, nothing would be counted: a clear error."""
    querymeter.disable()
    try:
        with pytest.raises(RuntimeError, match="querymeter is disabled"):
            overhead(lambda: None, rounds=1, number=1)
        assert not querymeter.is_enabled()
    finally:
        querymeter.enable()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"workload": 3}, TypeError, "workload must be callable, not int"),
        ({"baseline": 3}, TypeError, "baseline must be callable or None, not int"),
        ({"rounds": 0}, ValueError, "rounds must be at least 1, not 0"),
        ({"rounds": 2.0}, TypeError, "rounds must be an int, not float"),
        ({"rounds": True}, TypeError, "rounds must be an int, not bool"),
        ({"number": 0}, ValueError, "number must be at least 1, not 0"),
        ({"number": "5"}, TypeError, "number must be an int or None, not str"),
    ],
)
def test_overhead_validates_its_arguments(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """Bad arguments raise errors that name the argument and the problem."""
    arguments: dict[str, object] = {"workload": lambda: None, **kwargs}
    with pytest.raises(error, match=message):
        overhead(**arguments)  # type: ignore[arg-type]


def test_overhead_formats_its_figures() -> None:
    """str() gives the ratio, the ns added per call and the medians it came from."""
    result = Overhead(counted_ns=150.0, baseline_ns=100.0, rounds=15, number=1000, baseline="x")
    assert str(result) == (
        "1.500x (+50.0 ns per call: 150.0 ns against 100.0 ns, medians of 15 rounds of 1000 calls)"
    )
    assert Overhead(1.0, 0.0, 1, 1, "x").ratio == float("inf")


def test_the_module_docstring_example_runs() -> None:
    """The example at the top of querymeter.benchmark runs as shown."""
    import doctest

    import querymeter.benchmark

    try:
        failures, tests = doctest.testmod(querymeter.benchmark, verbose=False)
    finally:
        querymeter.dbapi.uninstrument(sqlite3)
    assert (failures, tests > 0) == (0, True)
