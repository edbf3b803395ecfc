"""The pytest plugin against PostgreSQL (psycopg) and SQLAlchemy engines created inside tests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ..servers import driver
from .conftest import failure_text, read_json

pytest_plugins = ["pytester"]

TABLE = "h4_pytest_items"


PG_PREAMBLE = f"""
import os
import threading

import psycopg
import pytest

import querymeter as qm
import querymeter.dbapi

DSN = os.environ["QM_H4_DSN"]
TABLE = "{TABLE}" + os.environ.get("QM_H4_SUFFIX", "")


@pytest.fixture
def connection():
    with psycopg.connect(DSN, autocommit=True) as connection:
        connection.execute(f"drop table if exists {{TABLE}}")
        connection.execute(f"create table {{TABLE}} (id serial primary key, order_id int)")
        connection.execute(
            f"insert into {{TABLE}} (order_id) select g from generate_series(1, 10) g"
        )
        yield connection
        connection.execute(f"drop table {{TABLE}}")


def by_order(connection, n):
    for order_id in range(1, n + 1):
        connection.execute(
            f"select * from {{TABLE}} where order_id = %s", (order_id,)
        ).fetchall()
"""


def pg_module(body: str) -> str:
    return PG_PREAMBLE + textwrap.dedent(body)


def test_postgresql_statements_are_counted_and_checked(inner: pytest.Pytester, dsn: str) -> None:
    """On PostgreSQL the fixture counts psycopg's statements, the markers fail with their list."""
    inner.makepyfile(
        pg_module(
            """
            def test_counts(connection, querymeter):
                with querymeter.assert_queries(exactly=7):
                    by_order(connection, 7)
                calls = {s.fingerprint: s.calls for s in querymeter.statements.snapshot()}
                assert calls[f"select * from {TABLE} where order_id = ?"] == 7

            @pytest.mark.max_queries(3)
            def test_budget(connection):
                connection.execute(f"select count(*) from {TABLE}")
                by_order(connection, 4)

            @pytest.mark.no_n_plus_one(threshold=3)
            def test_n_plus_one(connection):
                by_order(connection, 5)

            def test_restored():
                assert querymeter.dbapi.instrumented_meter(psycopg) is None
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=2, failed=2)
    lines = [line.strip() for line in failure_text(result, "test_budget").splitlines()]
    assert lines == [
        "5 statements ran, more than the 3 of max_queries:",
        f"4 x select * from {TABLE} where order_id = ?",
        f"1 x select count(*) from {TABLE}",
    ]
    assert f"5 x select * from {TABLE} where order_id = ?" in failure_text(
        result, "test_n_plus_one"
    )


def test_postgresql_counts_agree_with_pg_stat_statements(
    inner: pytest.Pytester, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls a test's JSON entry gives for a statement are the calls the server counted."""
    psycopg = driver("psycopg")
    pattern = f"select * from {TABLE}_oracle where order_id = $1"

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
    inner.makepyfile(
        pg_module(
            """
            def test_oracle(connection):
                by_order(connection, 9)
            """
        )
    )
    monkeypatch.setenv("QM_H4_SUFFIX", "_oracle")
    result = inner.runpytest("--querymeter-json=out.json")
    result.assert_outcomes(passed=1)
    (test,) = read_json(inner.path / "out.json")["tests"]
    ours = {s["fingerprint"]: s["calls"] for s in test["statements"]}
    assert ours == {f"select * from {TABLE}_oracle where order_id = ?": 9}
    assert server_calls() - before == 9


def test_psycopg_threads_count_into_the_test_and_another_meter_apart(
    inner: pytest.Pytester, dsn: str
) -> None:
    """Threads on their own PostgreSQL connections count into the test's meter, and a
    connection wrapped with another meter counts only there."""
    inner.makepyfile(
        pg_module(
            """
            def test_threads(connection, querymeter):
                other = qm.Meter()
                barrier = threading.Barrier(3, timeout=60)

                def work(n, meter=None):
                    with psycopg.connect(DSN, autocommit=True) as own:
                        if meter is not None:
                            qm.dbapi.unwrap_connection(own)
                            qm.dbapi.wrap_connection(own, meter=meter)
                        barrier.wait()
                        by_order(own, n)

                before = querymeter.snapshot().queries
                threads = [
                    threading.Thread(target=work, args=(4,)),
                    threading.Thread(target=work, args=(6,)),
                    threading.Thread(target=work, args=(5, other)),
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert querymeter.snapshot().queries - before == 10
                assert other.snapshot().queries == 5
            """
        )
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_scopes_of_parallel_threads_are_judged_apart(inner: pytest.Pytester, dsn: str) -> None:
    """Two threads querying in turn, each in its own scope, are judged each on its own
    statements: the one over the threshold is named with its own count, the other passes."""
    inner.makepyfile(
        pg_module(
            """
            @pytest.mark.no_n_plus_one(threshold=5)
            def test_two_workers(connection):
                turn = threading.Barrier(2, timeout=60)

                def worker(name, n):
                    with psycopg.connect(DSN, autocommit=True) as own, qm.scope(worker=name):
                        for order_id in range(1, 7):
                            turn.wait()  # the two threads' statements alternate
                            if order_id <= n:
                                own.execute(
                                    f"select * from {TABLE} where order_id = %s", (order_id,)
                                ).fetchall()

                threads = [
                    threading.Thread(target=worker, args=("a", 6)),
                    threading.Thread(target=worker, args=("b", 5)),
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1)
    lines = [line.strip() for line in failure_text(result, "test_two_workers").splitlines()]
    assert lines == [
        "N+1: a statement ran more than 5 times in one scope:",
        "in scope(worker='a'):",
        f"6 x select * from {TABLE} where order_id = ?",
    ]


def test_two_runs_at_once_never_mix(inner: pytest.Pytester, dsn: str) -> None:
    """Two pytest processes whose tests query one server at the same time each count only
    their own statements."""
    inner.makepyfile(
        pg_module(
            """
            import time

            N = int(os.environ["QM_H4_N"])
            RUNS = ("_run_a", "_run_b")


            def meet(point):
                # Neither run goes on before both are here: each run's queries
                # span the moment both stood at "middle", so they overlap.
                open(point + os.environ["QM_H4_SUFFIX"], "w").close()
                deadline = time.monotonic() + 120
                while not all(os.path.exists(point + run) for run in RUNS):
                    assert time.monotonic() < deadline, f"the other run never reached {point}"
                    time.sleep(0.005)


            @pytest.mark.max_queries(N)
            def test_run(connection, querymeter):
                before = querymeter.snapshot().queries
                meet("start")
                by_order(connection, N // 2)
                meet("middle")
                by_order(connection, N - N // 2)
                assert querymeter.snapshot().queries - before == N
            """
        )
    )
    counts = {"_run_a": 300, "_run_b": 170}
    runs = []
    for suffix, n in counts.items():
        env = {**os.environ, "QM_H4_SUFFIX": suffix, "QM_H4_N": str(n)}
        runs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pytest", "-q", f"--querymeter-json={suffix}.json"],
                cwd=inner.path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    for suffix, n in counts.items():
        (test,) = read_json(inner.path / f"{suffix}.json")["tests"]
        # The fixture: drop, create and insert on its own table before, drop after.
        assert (test["queries"], test["fixture_queries"]) == (n, 4)
        assert [(s["fingerprint"], s["calls"]) for s in test["statements"]] == [
            (f"select * from {TABLE}{suffix} where order_id = ?", n)
        ]


# ------------------------------------------------------------------ SQLAlchemy

SA_PREAMBLE = """
import os

import pytest
import sqlalchemy
from sqlalchemy import text
from sqlalchemy.engine.interfaces import Dialect

import querymeter as qm
import querymeter.sqlalchemy
from querymeter.pytest_plugin import TRANSACTION_CONTROL

ENGINE_CREATED = vars(Dialect)["engine_created"]
ENGINES = []
"""


def test_an_engine_created_in_the_test_counts_then_is_given_back(inner: pytest.Pytester) -> None:
    """An engine made in the test counts into its meter, then it and SQLAlchemy are as before."""
    driver("sqlalchemy")
    inner.makepyfile(
        SA_PREAMBLE
        + textwrap.dedent(
            """
            def test_engine(querymeter):
                engine = sqlalchemy.create_engine("sqlite://")
                ENGINES.append(engine)
                assert qm.sqlalchemy.instrumented_meter(engine) is querymeter
                with engine.connect() as connection:
                    with querymeter.assert_queries(exactly=3):
                        for value in range(3):
                            connection.execute(text("select :value"), {"value": value})

            def test_given_back():
                (engine,) = ENGINES
                assert qm.sqlalchemy.instrumented_meter(engine) is None
                assert vars(Dialect)["engine_created"] is ENGINE_CREATED
                assert qm.sqlalchemy.instrumented_engines() == []
            """
        )
    )
    inner.runpytest().assert_outcomes(passed=2)


def test_instrument_all_of_the_application_is_taken_over_and_restored(
    inner: pytest.Pytester,
) -> None:
    """With instrument_all on for the application's meter, a test's engine counts into the
    test's meter, then into the application's."""
    driver("sqlalchemy")
    inner.makeconftest(
        """
        import pytest
        import querymeter, querymeter.sqlalchemy

        APP_METER = querymeter.Meter()
        # The application's own instrumentation, made when it is imported.
        querymeter.sqlalchemy.instrument_all(meter=APP_METER)

        def pytest_unconfigure():
            querymeter.sqlalchemy.uninstrument_all()
        """
    )
    inner.makepyfile(
        SA_PREAMBLE
        + textwrap.dedent(
            """
            from conftest import APP_METER

            @pytest.mark.max_queries(2)
            def test_engine():
                engine = sqlalchemy.create_engine("sqlite://")
                ENGINES.append(engine)
                with engine.connect() as connection:
                    connection.execute(text("select 1"))
                    connection.execute(text("select 2"))

            def test_after():
                (engine,) = ENGINES
                assert APP_METER.snapshot().queries == 0  # the test's went to its meter only
                assert querymeter.sqlalchemy.instrumented_meter(engine) is APP_METER
                before = APP_METER.snapshot().queries
                with engine.connect() as connection:
                    connection.execute(text("select 3"))
                assert APP_METER.snapshot().queries == before + 1
                other = sqlalchemy.create_engine("sqlite://")
                assert querymeter.sqlalchemy.instrumented_meter(other) is APP_METER
            """
        )
    )
    inner.runpytest().assert_outcomes(passed=2)


def test_savepoints_of_a_postgresql_engine_can_be_ignored(
    inner: pytest.Pytester, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy's SAVEPOINT and RELEASE on PostgreSQL (nested transactions) are left out by
    ignore patterns and listed apart, and counted without them, as SQLAlchemy sent them."""
    sqlalchemy = driver("sqlalchemy")
    parts = dict(item.split("=", 1) for item in dsn.split())
    url = sqlalchemy.engine.URL.create(
        "postgresql+psycopg",
        username=parts.get("user"),
        password=parts.get("password"),
        host=parts.get("host"),
        port=int(parts["port"]) if "port" in parts else None,
        database=parts.get("dbname"),
    )
    monkeypatch.setenv("QM_H4_URL", url.render_as_string(hide_password=False))
    inner.makepyfile(
        SA_PREAMBLE
        + textwrap.dedent(
            f"""
            TABLE = "{TABLE}_sa"

            @pytest.fixture
            def engine():
                engine = sqlalchemy.create_engine(os.environ["QM_H4_URL"])
                # The oracle: every statement SQLAlchemy hands to the driver.
                sent = []
                sqlalchemy.event.listen(
                    engine,
                    "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: sent.append(statement),
                )
                with engine.connect() as connection:  # the dialect's first-connect queries
                    connection.execute(text("select 1"))
                engine.sent = sent
                yield engine
                engine.dispose()

            def nested_inserts(engine):
                with engine.begin() as connection:
                    connection.execute(text(f"create temporary table {{TABLE}} (x int)"))
                    for value in range(3):
                        with connection.begin_nested():
                            connection.execute(
                                text(f"insert into {{TABLE}} values (:x)"), {{"x": value}}
                            )

            def sent_in(engine, block):
                before = len(engine.sent)
                block()
                sent = [s.split()[0].lower() for s in engine.sent[before:]]
                return {{word: sent.count(word) for word in sent}}

            def test_ignored(engine, querymeter):
                with querymeter.assert_queries(exactly=4, ignore=TRANSACTION_CONTROL) as block:
                    sent = sent_in(engine, lambda: nested_inserts(engine))
                assert sent == {{"create": 1, "insert": 3, "savepoint": 3, "release": 3}}
                assert block.counts.ignored_queries == sent["savepoint"] + sent["release"]

            @pytest.mark.max_queries(4, ignore=("savepoint", "release savepoint"))
            def test_marker_ignores(engine):
                nested_inserts(engine)

            def test_counted(engine, querymeter):
                with querymeter.assert_queries(max=4):
                    nested_inserts(engine)
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=2, failed=1)
    lines = [line.strip() for line in failure_text(result, "test_counted").splitlines()]
    listed = [line.removeprefix("E").strip() for line in lines if line.startswith("E ")]
    assert listed[0] == "Failed: 10 statements ran, more than the 4 allowed:"
    assert listed[1] == f"3 x insert into {TABLE}_sa values(?+)"  # the most repeated first
    assert sorted(listed[1:]) == sorted(
        [
            f"3 x insert into {TABLE}_sa values(?+)",
            f"1 x create temporary table {TABLE}_sa (x int)",
            *(f"1 x savepoint sa_savepoint_{n}" for n in (1, 2, 3)),
            *(f"1 x release savepoint sa_savepoint_{n}" for n in (1, 2, 3)),
        ]
    )
