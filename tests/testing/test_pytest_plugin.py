"""The pytest plugin on SQLite: the fixture, the markers, N+1, the summary and JSON, inertness."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest

import querymeter.dbapi
from querymeter.meter import Meter

from .conftest import failure_text, read_json

pytest_plugins = ["pytester"]

# Inner test modules share this preamble: an in-memory table and a helper.
PREAMBLE = """
import sqlite3
import threading

import pytest

import querymeter as qm
import querymeter.dbapi


def items(connection, rows=10):
    connection.execute("create table item(id integer primary key, order_id int)")
    connection.executemany("insert into item(order_id) values (?)", [(i,) for i in range(rows)])
"""


def module(body: str) -> str:
    """An inner test module: the preamble, then ``body``."""
    return PREAMBLE + textwrap.dedent(body)


def test_the_fixture_counts_the_tests_queries_and_gives_sqlite3_back(
    inner: pytest.Pytester,
) -> None:
    """The fixture is a fresh Meter counting each query of the test; sqlite3 is as before after."""
    inner.makepyfile(
        module(
            """
            ORIGINAL_CONNECT = sqlite3.connect

            def test_counts(querymeter):
                assert isinstance(querymeter, qm.Meter)
                assert querymeter.snapshot().queries == 0
                assert querymeter_dbapi_meter() is querymeter
                connection = sqlite3.connect(":memory:")
                items(connection)
                for order_id in range(3):
                    connection.execute("select * from item where order_id = ?", (order_id,))
                # create, executemany, three selects
                assert querymeter.snapshot().queries == 5
                calls = {s.fingerprint: s.calls for s in querymeter.statements.snapshot()}
                assert calls["select * from item where order_id = ?"] == 3

            def test_restored():
                assert sqlite3.connect is ORIGINAL_CONNECT
                assert querymeter.dbapi.instrumented_meter(sqlite3) is None

            def test_fresh_each_time(querymeter):
                assert querymeter.snapshot().queries == 0

            def querymeter_dbapi_meter():
                return querymeter.dbapi.instrumented_meter(sqlite3)
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=3)
    assert querymeter.dbapi.instrumented_meter(sqlite3) is None


def test_a_driver_instrumented_before_is_lent_and_given_back(inner: pytest.Pytester) -> None:
    """A driver the application instrumented counts into the test's meter during the test only."""
    inner.makeconftest(
        """
        import sqlite3
        import pytest
        import querymeter, querymeter.dbapi

        APP_METER = querymeter.Meter()

        @pytest.fixture(autouse=True, scope="session")
        def application():
            querymeter.dbapi.instrument(sqlite3, meter=APP_METER)
            yield APP_METER
            querymeter.dbapi.uninstrument(sqlite3)
        """
    )
    inner.makepyfile(
        module(
            """
            from conftest import APP_METER

            def test_before():
                sqlite3.connect(":memory:").execute("select 1")
                assert APP_METER.snapshot().queries == 1

            @pytest.mark.max_queries(2)
            def test_metered():
                connection = sqlite3.connect(":memory:")
                connection.execute("select 1")
                connection.execute("select 2")
                assert querymeter.dbapi.instrumented_meter(sqlite3) is not APP_METER

            def test_after():
                assert querymeter.dbapi.instrumented_meter(sqlite3) is APP_METER
                sqlite3.connect(":memory:").execute("select 3")
                assert APP_METER.snapshot().queries == 2
            """
        )
    )
    inner.runpytest().assert_outcomes(passed=3)


def test_a_connection_opened_in_a_fixture_is_counted_but_not_charged(
    inner: pytest.Pytester,
) -> None:
    """A function fixture's connection counts into the meter; its set-up is not in the budget."""
    inner.makepyfile(
        module(
            """
            @pytest.fixture
            def connection():
                connection = sqlite3.connect(":memory:")
                items(connection, rows=50)
                yield connection
                connection.execute("drop table item")

            @pytest.mark.max_queries(1)
            def test_one(connection, querymeter):
                connection.execute("select count(*) from item")
                assert querymeter.snapshot().queries == 3  # create, insert, select
            """
        )
    )
    result = inner.runpytest("--querymeter-json=out.json")
    result.assert_outcomes(passed=1)
    (test,) = read_json(inner.path / "out.json")["tests"]
    assert (test["queries"], test["fixture_queries"]) == (1, 3)


def test_pooled_connections_count_in_every_test_that_uses_them(inner: pytest.Pytester) -> None:
    """A module-level SQLAlchemy engine's pooled connection, opened by one test, counts in
    the tests that use it next: a budget is never passed by counting nothing."""
    inner.makepyfile(
        module(
            """
            import sqlalchemy

            ENGINE = sqlalchemy.create_engine("sqlite:///" + __file__ + ".db")
            with ENGINE.begin() as setup:
                setup.exec_driver_sql("create table if not exists t (x int)")

            @pytest.mark.parametrize("run", range(3))
            def test_reads(querymeter, run):
                with ENGINE.connect() as connection:
                    for _ in range(run + 1):
                        connection.exec_driver_sql("select count(*) from t").all()
                assert querymeter.snapshot().queries == run + 1

            @pytest.mark.max_queries(1)
            def test_over_budget():
                with ENGINE.connect() as connection:
                    connection.exec_driver_sql("select 1").all()
                    connection.exec_driver_sql("select 2").all()
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=3, failed=1)
    assert "2 statements ran, more than the 1 of max_queries:" in failure_text(
        result, "test_over_budget"
    )


def test_an_applications_meter_gets_its_connections_back(inner: pytest.Pytester) -> None:
    """A connection the application counts into its own meter counts into the test's
    during a test, and into the application's again after it."""
    inner.makepyfile(
        module(
            """
            APP = qm.Meter()
            querymeter.dbapi.instrument(sqlite3, meter=APP)
            CONNECTION = sqlite3.connect(":memory:")

            def test_lent(querymeter):
                before = APP.snapshot().queries
                CONNECTION.execute("select 1")
                assert querymeter.snapshot().queries == 1
                assert APP.snapshot().queries == before

            def test_given_back():
                before = APP.snapshot().queries
                CONNECTION.execute("select 1")
                assert APP.snapshot().queries == before + 1

            def teardown_module():
                querymeter.dbapi.uninstrument(sqlite3)
            """
        )
    )
    inner.runpytest("-p", "no:randomly").assert_outcomes(passed=2)


def test_max_queries_lists_the_statements_the_repeated_first(inner: pytest.Pytester) -> None:
    """A test over its budget fails with every statement and its count, the most repeated first."""
    inner.makepyfile(
        module(
            """
            @pytest.mark.max_queries(3)
            def test_orders():
                connection = sqlite3.connect(":memory:")
                items(connection)
                connection.execute("select * from item")
                for order_id in range(7):
                    connection.execute("select * from item where order_id = ?", (order_id,))
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1)
    text = failure_text(result, "test_orders")
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "10 statements ran, more than the 3 of max_queries:"
    assert lines[1] == "7 x select * from item where order_id = ?"
    # The rest ran once each, in the order they first ran.
    assert lines[2:5] == [
        "1 x create table item(id integer primary key, order_id int)",
        "1 x insert into item(order_id) values(?+)",
        "1 x select * from item",
    ]
    # No traceback into the plugin: the message is the failure.
    assert "pytest_plugin" not in text


def test_a_failure_shows_no_exception_the_thread_was_left_handling(
    inner: pytest.Pytester,
) -> None:
    """An exception left set as handled in the thread (CPython leaks one when a tracer
    raises in an except block) is not shown as the failure's context."""
    inner.makepyfile(
        module(
            """
            import ctypes

            @pytest.mark.max_queries(1)
            def test_leaked():
                set_handled = ctypes.pythonapi.PyErr_SetHandledException
                set_handled.argtypes = [ctypes.py_object]
                set_handled(LookupError("left over"))
                connection = sqlite3.connect(":memory:")
                connection.execute("select 1")
                connection.execute("select 2")
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(failed=1)
    text = failure_text(result, "test_leaked")
    assert "left over" not in text and "During handling" not in text
    assert text.strip().splitlines()[0] == "2 statements ran, more than the 1 of max_queries:"


def test_max_queries_at_its_budget_passes(inner: pytest.Pytester) -> None:
    """A test that runs exactly its budget passes; zero is a budget too."""
    inner.makepyfile(
        module(
            """
            @pytest.mark.max_queries(2)
            def test_two():
                sqlite3.connect(":memory:").execute("select 1").execute("select 2")

            @pytest.mark.max_queries(0)
            def test_none():
                sqlite3.connect(":memory:")
            """
        )
    )
    inner.runpytest().assert_outcomes(passed=2)


def test_ignore_patterns_leave_out_savepoints_and_are_listed(inner: pytest.Pytester) -> None:
    """Savepoints matched by ignore patterns do not count, and the failure lists them apart."""
    inner.makepyfile(
        module(
            """
            def nested(connection, n):
                for i in range(n):
                    connection.execute(f"savepoint sp_{i}")
                    connection.execute("insert into item(order_id) values (?)", (i,))
                    connection.execute(f"release savepoint sp_{i}")

            @pytest.mark.max_queries(3, ignore=("savepoint", "release savepoint"))
            def test_within():
                connection = sqlite3.connect(":memory:")
                connection.execute("create table item(id integer primary key, order_id int)")
                nested(connection, 2)

            @pytest.mark.max_queries(2, ignore=qm.pytest_plugin.TRANSACTION_CONTROL)
            def test_over():
                connection = sqlite3.connect(":memory:")
                connection.execute("create table item(id integer primary key, order_id int)")
                nested(connection, 2)
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    lines = [line.strip() for line in failure_text(result, "test_over").splitlines()]
    assert lines[:3] == [
        "3 statements ran, more than the 2 of max_queries:",
        "2 x insert into item(order_id) values(?+)",
        "1 x create table item(id integer primary key, order_id int)",
    ]
    assert lines[3] == "ignored (4):"
    assert sorted(lines[4:8]) == [
        "1 x release savepoint sp_0",
        "1 x release savepoint sp_1",
        "1 x savepoint sp_0",
        "1 x savepoint sp_1",
    ]


def test_the_ini_ignore_patterns_apply_to_every_check(inner: pytest.Pytester) -> None:
    """querymeter_ignore in the ini file leaves its statements out of markers and assert_queries."""
    inner.makeini(
        """
        [pytest]
        addopts = -p no:cacheprovider --strict-markers --strict-config
        filterwarnings = error
        querymeter_ignore =
            savepoint
            release
        """
    )
    inner.makepyfile(
        module(
            """
            @pytest.mark.max_queries(1)
            def test_marker():
                connection = sqlite3.connect(":memory:")
                connection.execute("savepoint a")
                connection.execute("select 1")
                connection.execute("release a")

            def test_block(querymeter):
                connection = sqlite3.connect(":memory:")
                with querymeter.assert_queries(exactly=1):
                    connection.execute("savepoint a")
                    connection.execute("select 1")
                    connection.execute("release a")
            """
        )
    )
    inner.runpytest().assert_outcomes(passed=2)


def test_assert_queries_checks_only_its_block(inner: pytest.Pytester) -> None:
    """assert_queries counts its block's statements: max= and exactly= pass and fail as stated."""
    inner.makepyfile(
        module(
            """
            def test_within(querymeter):
                connection = sqlite3.connect(":memory:")
                items(connection)
                with querymeter.assert_queries(max=2) as block:
                    connection.execute("select 1")
                    connection.execute("select 2")
                assert block.counts.queries == 2
                with querymeter.assert_queries(exactly=0):
                    pass

            def test_over(querymeter):
                connection = sqlite3.connect(":memory:")
                with querymeter.assert_queries(max=1):
                    for i in range(4):
                        connection.execute("select ?", (i,))
                    connection.execute("select ?, ?", (1, 2))

            def test_not_exactly(querymeter):
                connection = sqlite3.connect(":memory:")
                with querymeter.assert_queries(exactly=3):
                    connection.execute("select 1")

            def test_own_error_first(querymeter):
                with querymeter.assert_queries(max=0):
                    sqlite3.connect(":memory:").execute("select 1")
                    raise KeyError("the test's own")
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, failed=3)
    over = failure_text(result, "test_over")
    assert "Failed: 5 statements ran, more than the 1 allowed:" in over
    assert "E         4 x select ?" in over
    assert "E         1 x select ?, ?" in over
    # The traceback stops at the test's own line.
    assert "with querymeter.assert_queries(max=1):" in over
    assert "_recording.py" not in over
    assert "Failed: 1 statement ran, not exactly 3:" in failure_text(result, "test_not_exactly")
    own = failure_text(result, "test_own_error_first")
    assert 'KeyError: "the test\'s own"' in own and "statements ran" not in own


def test_assert_queries_validates_its_arguments(inner: pytest.Pytester) -> None:
    """Bad arguments to assert_queries raise errors naming the problem."""
    inner.makepyfile(
        module(
            """
            @pytest.mark.parametrize(
                ("kwargs", "error", "message"),
                [
                    ({}, TypeError, "needs max= or exactly="),
                    ({"max": 1, "exactly": 1}, TypeError, "not both"),
                    ({"max": -1}, ValueError, "max must be at least 0, not -1"),
                    ({"max": True}, TypeError, "max must be an int, not bool"),
                    ({"exactly": 1.5}, TypeError, "exactly must be an int, not float"),
                    ({"max": 1, "ignore": 3}, TypeError, "ignore must be a pattern"),
                    ({"max": 1, "ignore": [""]}, ValueError, "must not be empty"),
                    ({"max": 1, "ignore": [b"x"]}, TypeError, "not bytes"),
                ],
            )
            def test_bad(querymeter, kwargs, error, message):
                with pytest.raises(error, match=message):
                    querymeter.assert_queries(**kwargs)
            """
        )
    )
    inner.runpytest().assert_outcomes(passed=8)


def test_bad_marker_arguments_are_errors_naming_the_problem(inner: pytest.Pytester) -> None:
    """A marker with bad arguments makes its test an error that says what is wrong."""
    inner.makepyfile(
        module(
            """
            @pytest.mark.max_queries()
            def test_no_n():
                pass

            @pytest.mark.max_queries(-1)
            def test_negative():
                pass

            @pytest.mark.max_queries(1, limit=2)
            def test_unknown():
                pass

            @pytest.mark.no_n_plus_one(threshold=0)
            def test_zero_threshold():
                pass
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*TypeError: max_queries() needs n*",
            "*ValueError: max_queries n must be at least 0, not -1*",
            "*TypeError: max_queries() got unexpected keyword arguments: *limit*",
            "*ValueError: no_n_plus_one threshold must be at least 1, not 0*",
        ]
    )


def test_n_plus_one_fails_above_the_threshold_only(inner: pytest.Pytester) -> None:
    """A statement run threshold times passes; once more fails, naming it and its count."""
    inner.makepyfile(
        module(
            """
            def loop(n):
                connection = sqlite3.connect(":memory:")
                items(connection)
                for order_id in range(n):
                    connection.execute("select * from item where order_id = ?", (order_id,))

            @pytest.mark.no_n_plus_one(threshold=3)
            def test_at_threshold():
                loop(3)

            @pytest.mark.no_n_plus_one(3)
            def test_above():
                loop(4)

            @pytest.mark.no_n_plus_one
            def test_default_five():
                loop(6)
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, failed=2)
    lines = [line.strip() for line in failure_text(result, "test_above").splitlines()]
    assert lines == [
        "N+1: a statement ran more than 3 times in one scope:",
        "in the test:",
        "4 x select * from item where order_id = ?",
    ]
    assert "6 x select * from item where order_id = ?" in failure_text(result, "test_default_five")


def test_n_plus_one_is_judged_per_scope(inner: pytest.Pytester) -> None:
    """A statement once per scope in many scopes passes; repeated inside one scope it fails."""
    inner.makepyfile(
        module(
            """
            def request(connection, route, n):
                with qm.scope(route=route):
                    for order_id in range(n):
                        connection.execute("select * from item where order_id = ?", (order_id,))

            @pytest.mark.no_n_plus_one(threshold=2)
            def test_once_per_request():
                connection = sqlite3.connect(":memory:")
                items(connection)
                for _ in range(10):
                    request(connection, "/orders", 1)

            @pytest.mark.no_n_plus_one(threshold=2)
            def test_repeated_in_a_request():
                connection = sqlite3.connect(":memory:")
                items(connection)
                request(connection, "/orders", 1)
                request(connection, "/orders/7/items", 3)

            @pytest.mark.no_n_plus_one(threshold=2)
            def test_request_in_a_thread():
                connection = sqlite3.connect(":memory:", check_same_thread=False)
                items(connection)
                # A server's thread: its scope has no parent in the test.
                worker = threading.Thread(target=request, args=(connection, "/thread", 4))
                worker.start()
                worker.join()
            """
        )
    )
    result = inner.runpytest()
    result.assert_outcomes(passed=1, failed=2)
    text = failure_text(result, "test_repeated_in_a_request")
    lines = [line.strip() for line in text.splitlines()]
    assert lines == [
        "N+1: a statement ran more than 2 times in one scope:",
        "in scope(route='/orders/7/items'):",
        "3 x select * from item where order_id = ?",
    ]
    assert "in scope(route='/thread'):" in failure_text(result, "test_request_in_a_thread")


def test_the_n_plus_one_option_checks_every_test(inner: pytest.Pytester) -> None:
    """--querymeter-n-plus-one fails any test over it, and a marker's own threshold wins."""
    inner.makepyfile(
        module(
            """
            def loop(n):
                connection = sqlite3.connect(":memory:")
                for i in range(n):
                    connection.execute("select ?", (i,))

            def test_fine():
                loop(2)

            def test_repeats():
                loop(3)

            @pytest.mark.no_n_plus_one(threshold=10)
            def test_allowed_more():
                loop(3)

            @pytest.mark.no_n_plus_one(threshold=2, ignore=["select ?"])
            def test_ignored():
                loop(9)
            """
        )
    )
    result = inner.runpytest("--querymeter-n-plus-one=2")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["FAILED *::test_repeats*"])
    inner.runpytest("--querymeter-n-plus-one=0").stderr.fnmatch_lines(
        ["*--querymeter-n-plus-one must be at least 1, not 0*"]
    )


def test_the_summary_lists_the_worst_tests(inner: pytest.Pytester) -> None:
    """--querymeter prints the totals and the tests with the most queries, the worst first."""
    inner.makepyfile(
        module(
            """
            @pytest.mark.parametrize("n", [3, 12, 7, 0])
            def test_queries(n):
                connection = sqlite3.connect(":memory:")
                for i in range(n):
                    connection.execute("select ?", (i,))
            """
        )
    )
    result = inner.runpytest("--querymeter", "--querymeter-worst=2")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*querymeter: queries per test*",
            "4 tests ran 22 queries (0 raised) in * ms of DB time; their fixtures ran 0 more",
            "the 2 tests with the most queries:",
            "*queries*raised*DB ms*N+1*test",
            "*12*0*0*test_*.py::test_queries[[]12[]]",
            "*7*0*0*test_*.py::test_queries[[]7[]]",
        ]
    )


def test_the_json_file_holds_every_test(inner: pytest.Pytester) -> None:
    """--querymeter-json writes each test's queries, DB time, statements, N+1 and outcome."""
    inner.makepyfile(
        module(
            """
            def run(n, fail=False):
                connection = sqlite3.connect(":memory:")
                items(connection)
                for order_id in range(n):
                    connection.execute("select * from item where order_id = ?", (order_id,))
                if fail:
                    connection.execute("select * from no_such_table")

            def test_passes():
                run(2)

            def test_fails():
                run(1, fail=True)

            @pytest.mark.no_n_plus_one(threshold=5)
            def test_n_plus_one():
                run(6)

            @pytest.mark.skip(reason="not today")
            def test_skipped():
                run(1)

            def test_no_queries():
                pass
            """
        )
    )
    result = inner.runpytest("--querymeter-json=reports/queries.json")
    result.assert_outcomes(passed=2, failed=2, skipped=1)
    # Without --querymeter, no summary is printed.
    assert "querymeter: queries per test" not in result.stdout.str()
    document = read_json(inner.path / "reports" / "queries.json")
    assert document["format"] == "querymeter-pytest" and document["version"] == 1
    assert document["core"] in ("c", "python")
    assert isinstance(document["started_ns"], int)
    tests = {test["nodeid"].rpartition("::")[2]: test for test in document["tests"]}
    assert set(tests) == {"test_passes", "test_fails", "test_n_plus_one", "test_skipped",
                          "test_no_queries"}  # fmt: skip
    assert {name: test["outcome"] for name, test in tests.items()} == {
        "test_passes": "passed",
        "test_fails": "failed",
        "test_n_plus_one": "failed",
        "test_skipped": "skipped",
        "test_no_queries": "passed",
    }
    # create, executemany, the selects (and the failed one, counted as an error)
    names = ("test_passes", "test_fails", "test_n_plus_one")
    assert [tests[name]["queries"] for name in names] == [4, 4, 8]
    assert tests["test_fails"]["errors"] == 1
    assert tests["test_skipped"]["queries"] == 0 and tests["test_no_queries"]["queries"] == 0
    for test in document["tests"]:
        assert set(test) == {
            "nodeid", "outcome", "queries", "errors", "db_seconds", "fixture_queries",
            "fixture_db_seconds", "statements", "n_plus_one",
        }  # fmt: skip
        assert test["db_seconds"] >= 0 and (test["db_seconds"] > 0) == (test["queries"] > 0)
        assert sum(s["calls"] for s in test["statements"]) == test["queries"]
        for statement in test["statements"]:
            assert set(statement) == {
                "fingerprint", "statement_id", "calls", "errors", "db_seconds"
            }  # fmt: skip
    first = tests["test_n_plus_one"]["statements"][0]
    assert (first["fingerprint"], first["calls"]) == ("select * from item where order_id = ?", 6)
    assert tests["test_n_plus_one"]["n_plus_one"] == [
        {"where": "the test", "fingerprint": "select * from item where order_id = ?", "calls": 6}
    ]
    totals = document["totals"]
    assert totals["tests"] == 5
    assert totals["queries"] == sum(test["queries"] for test in document["tests"]) == 16
    assert totals["errors"] == 1
    assert totals["db_seconds"] == pytest.approx(sum(t["db_seconds"] for t in document["tests"]))


def test_the_json_file_that_cannot_be_written_fails_the_run(inner: pytest.Pytester) -> None:
    """A JSON path that cannot be written is reported, and the run does not exit 0."""
    inner.makepyfile("def test_nothing():\n    pass\n")
    (inner.path / "occupied").write_text("a file, not a directory")
    result = inner.runpytest("--querymeter-json=occupied/out.json")
    result.stdout.fnmatch_lines(["querymeter: could not write occupied/out.json: *"])
    assert result.ret != 0


def test_the_markers_are_declared_for_strict_markers(inner: pytest.Pytester) -> None:
    """Both markers are registered, so --strict-markers accepts them, and listed by --markers."""
    result = inner.runpytest("--markers")
    result.stdout.fnmatch_lines_random(
        ["@pytest.mark.max_queries(n, ignore=()):*", "@pytest.mark.no_n_plus_one(threshold=5,*"]
    )


def test_loading_the_plugin_is_inert(inner: pytest.Pytester) -> None:
    """Loaded but unused, the plugin imports no hook or driver, starts no thread, patches none."""
    inner.makepyfile(
        """
        import sys
        import threading

        import pytest

        def test_untouched(request):
            assert request.config.pluginmanager.has_plugin("querymeter")
            loaded = [
                name for name in sys.modules
                if name.startswith(("querymeter.dbapi", "querymeter.sqlalchemy", "sqlalchemy",
                                    "psycopg", "pymysql", "MySQLdb", "asyncpg", "aiosqlite"))
            ]
            assert loaded == []
            assert threading.active_count() == 1

        @pytest.mark.parametrize("querymeter", [1, 2])
        def test_a_parameter_named_querymeter(querymeter):
            assert querymeter in (1, 2)
            assert "querymeter.dbapi" not in sys.modules
        """
    )
    result = inner.runpytest_subprocess()
    result.assert_outcomes(passed=3)


def test_a_fixture_of_the_same_name_wins_and_meters_nothing(inner: pytest.Pytester) -> None:
    """A conftest's own querymeter fixture is the one a test gets, and the plugin stays out."""
    inner.makeconftest(
        """
        import pytest

        @pytest.fixture
        def querymeter():
            return "the project's own"
        """
    )
    inner.makepyfile(
        """
        import sqlite3

        ORIGINAL_CONNECT = sqlite3.connect

        def test_own(querymeter):
            assert querymeter == "the project's own"
            assert sqlite3.connect is ORIGINAL_CONNECT
        """
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_threads_of_the_test_count_and_another_meter_stays_apart(inner: pytest.Pytester) -> None:
    """The test's threads count into its meter; a connection of another meter counts there only."""
    inner.makepyfile(
        module(
            """
            def test_threads(querymeter):
                other = qm.Meter()
                barrier = threading.Barrier(4)

                def work(n):
                    connection = sqlite3.connect(":memory:")
                    barrier.wait()
                    for i in range(n):
                        connection.execute("select ?", (i,))

                def elsewhere(n):
                    connection = querymeter_dbapi.wrap_connection(
                        sqlite3.Connection(":memory:"), meter=other
                    )
                    barrier.wait()
                    for i in range(n):
                        connection.execute("select ?", (i,))

                threads = [threading.Thread(target=work, args=(n,)) for n in (10, 20, 30)]
                threads.append(threading.Thread(target=elsewhere, args=(7,)))
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                assert querymeter.snapshot().queries == 60
                assert other.snapshot().queries == 7

            querymeter_dbapi = querymeter.dbapi
            """
        )
    )
    inner.runpytest().assert_outcomes(passed=1)


def test_two_runs_in_one_process_keep_their_figures_apart(inner: pytest.Pytester) -> None:
    """Two runs one after the other in one process each write only their own tests' figures."""
    inner.makepyfile(
        test_a=module(
            """
            def test_a():
                connection = sqlite3.connect(":memory:")
                for i in range(3):
                    connection.execute("select ?", (i,))
            """
        ),
        test_b=module(
            """
            def test_b():
                sqlite3.connect(":memory:").execute("select 1")
            """
        ),
    )
    inner.runpytest("test_a.py", "--querymeter-json=a.json").assert_outcomes(passed=1)
    inner.runpytest("test_b.py", "--querymeter-json=b.json").assert_outcomes(passed=1)
    a, b = read_json(inner.path / "a.json"), read_json(inner.path / "b.json")
    assert [(t["nodeid"], t["queries"]) for t in a["tests"]] == [("test_a.py::test_a", 3)]
    assert [(t["nodeid"], t["queries"]) for t in b["tests"]] == [("test_b.py::test_b", 1)]


def test_the_pure_python_core_counts_the_same(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under QUERYMETER_PURE_PYTHON=1 the plugin's meters use the Python core and count alike."""
    inner.makepyfile(
        module(
            """
            @pytest.mark.max_queries(2)
            def test_core(querymeter):
                assert qm.IMPLEMENTATION == "python"
                connection = sqlite3.connect(":memory:")
                for i in range(3):
                    connection.execute("select ?", (i,))
            """
        )
    )
    monkeypatch.setenv("QUERYMETER_PURE_PYTHON", "1")
    result = inner.runpytest_subprocess("--querymeter-json=out.json")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*3 statements ran, more than the 2 of max_queries:*"])
    document = read_json(inner.path / "out.json")
    assert document["core"] == "python" and document["tests"][0]["queries"] == 3


def test_the_outer_process_is_left_as_it_was() -> None:
    """After the inner runs, this process's sqlite3 is not instrumented any more."""
    assert querymeter.dbapi.instrumented_meter(sqlite3) is None
    assert Meter().snapshot().queries == 0
