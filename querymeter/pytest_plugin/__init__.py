"""querymeter's pytest plugin: the ``querymeter`` fixture, query budgets, N+1 checks, a summary.

Registered through the ``pytest11`` entry point, and inert unless used:
loading it imports no driver, starts no thread and instruments nothing.  A
test is metered when it asks for the ``querymeter`` fixture, carries the
``max_queries`` or ``no_n_plus_one`` marker, or when ``--querymeter``,
``--querymeter-json`` or ``--querymeter-n-plus-one`` is given (then every
test).  A metered test gets a fresh meter, and the drivers and SQLAlchemy are
lent to it for the test's duration, then given back exactly (see
``_lending``).  The checks count the test function's own statements, not
those of its fixtures' set-up and teardown.  See docs/pytest.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from . import _lending
from ._checks import TRANSACTION_CONTROL, IgnorePatterns, check_count

if TYPE_CHECKING:
    from ._benchmark import RoundReadings
    from ._recording import QueryMeter, Recording

__all__ = ["TRANSACTION_CONTROL", "IgnorePatterns"]

_RECORDING = pytest.StashKey["Recording"]()
_RUN = pytest.StashKey["_Run"]()

#: The JSON file's format name and version (docs/pytest.md describes the schema).
JSON_FORMAT = "querymeter-pytest"
JSON_VERSION = 1


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("querymeter", "querymeter: the database queries of each test")
    group.addoption(
        "--querymeter",
        action="store_true",
        default=False,
        help="count every test's queries and print a summary after the run (the worst tests); "
        "with pytest-benchmark, each benchmark's extra_info gets queries_per_round and "
        "db_seconds_per_round",
    )
    group.addoption(
        "--querymeter-json",
        metavar="PATH",
        default=None,
        help="count every test's queries and write them to PATH as JSON (for CI trends)",
    )
    group.addoption(
        "--querymeter-n-plus-one",
        metavar="N",
        type=int,
        default=None,
        help="fail every test in which one statement (by fingerprint) runs more than N "
        "times in one scope",
    )
    group.addoption(
        "--querymeter-worst",
        metavar="K",
        type=int,
        default=10,
        help="how many of the worst tests the --querymeter summary lists (default 10)",
    )
    parser.addini(
        "querymeter_ignore",
        type="linelist",
        default=[],
        help="fingerprint patterns that no querymeter check counts (one per line), "
        "e.g. savepoint and release",
    )


def pytest_configure(config: pytest.Config) -> None:
    _lending.new_session()
    config.addinivalue_line(
        "markers",
        "max_queries(n, ignore=()): fail the test if it runs more than n statements, "
        "leaving out those whose fingerprint an ignore pattern matches (querymeter)",
    )
    config.addinivalue_line(
        "markers",
        "no_n_plus_one(threshold=5, ignore=()): fail the test if one statement runs more "
        "than threshold times in one scope (querymeter)",
    )
    n_plus_one = config.getoption("querymeter_n_plus_one", None)
    if n_plus_one is not None and n_plus_one < 1:
        raise pytest.UsageError(f"--querymeter-n-plus-one must be at least 1, not {n_plus_one}")
    worst = config.getoption("querymeter_worst", 10)
    if worst < 1:
        raise pytest.UsageError(f"--querymeter-worst must be at least 1, not {worst}")
    if (
        config.getoption("querymeter", False)
        or config.getoption("querymeter_json", None)
        or n_plus_one is not None
    ):
        run = _Run(config)
        config.stash[_RUN] = run
        config.pluginmanager.register(run, "querymeter-run")


# ------------------------------------------------------------------ the fixture


@pytest.fixture
def querymeter(request: pytest.FixtureRequest) -> Iterator[QueryMeter]:
    """A fresh querymeter Meter counting this test's queries (see docs/pytest.md).

    Drivers imported before the test and SQLAlchemy engines created in it
    count into it for the test's duration; ``querymeter.assert_queries(max=3)``
    checks a block.
    """
    recording = request.node.stash.get(_RECORDING, None)
    if recording is not None:
        yield recording.meter
        return
    # Asked for where the plugin could not see it coming (getfixturevalue):
    # counted from now on, no marker checked.
    recording = _recording_for(request.node, forced=True)
    assert recording is not None
    recording.start()
    try:
        yield recording.meter
    finally:
        recording.stop()


# ------------------------------------------------------------------ each test


def _ignore_setting(config: pytest.Config) -> IgnorePatterns:
    return IgnorePatterns(config.getini("querymeter_ignore"))


def _marker_argument(marker: pytest.Mark, name: str, default: object) -> object:
    if len(marker.args) > 1:
        raise TypeError(f"{marker.name}() takes one positional argument ({name}), not more")
    unknown = set(marker.kwargs) - {name, "ignore"}
    if unknown:
        raise TypeError(f"{marker.name}() got unexpected keyword arguments: {sorted(unknown)}")
    if marker.args and name in marker.kwargs:
        raise TypeError(f"{marker.name}() got {name} twice")
    if marker.args:
        return marker.args[0]
    return marker.kwargs.get(name, default)


def _uses_our_fixture(item: pytest.Item) -> bool:
    if "querymeter" not in getattr(item, "fixturenames", ()):
        return False
    info = getattr(item, "_fixtureinfo", None)
    definitions = getattr(info, "name2fixturedefs", {}).get("querymeter") if info else None
    if not definitions:
        return False  # parametrized directly, or a name pytest could not resolve
    # The closest definition is the one the test gets: a conftest's own
    # fixture called querymeter is not ours.
    return getattr(definitions[-1].func, "__module__", None) == __name__


def _recording_for(item: pytest.Item, *, forced: bool = False) -> Recording | None:
    """The recording a test needs, or None if nothing meters it."""
    run = item.config.stash.get(_RUN, None)
    max_marker = item.get_closest_marker("max_queries")
    n_plus_one_marker = item.get_closest_marker("no_n_plus_one")
    if not (
        forced
        or run is not None
        or max_marker is not None
        or n_plus_one_marker is not None
        or _uses_our_fixture(item)
    ):
        return None
    ignore = _ignore_setting(item.config)
    max_queries = None
    if max_marker is not None:
        allowed = _marker_argument(max_marker, "n", None)
        if allowed is None:
            raise TypeError("max_queries() needs n, the most statements the test may run")
        max_queries = (
            check_count("max_queries n", allowed, minimum=0),
            ignore + IgnorePatterns(max_marker.kwargs.get("ignore", ())),
        )
    n_plus_one = None
    if n_plus_one_marker is not None:
        threshold = _marker_argument(n_plus_one_marker, "threshold", 5)
        n_plus_one = (
            check_count("no_n_plus_one threshold", threshold, minimum=1),
            ignore + IgnorePatterns(n_plus_one_marker.kwargs.get("ignore", ())),
        )
    elif run is not None and run.n_plus_one is not None:
        n_plus_one = (run.n_plus_one, ignore)
    from ._recording import Recording

    return Recording(item.nodeid, ignore=ignore, max_queries=max_queries, n_plus_one=n_plus_one)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    # First of all, before the fixtures: connections they open are counted.
    # A marker's bad argument is raised after the other plugins' set-up, whose
    # teardown expects it to have run.
    problem: Exception | None = None
    try:
        recording = _recording_for(item)
    except Exception as exc:  # noqa: BLE001 - raised below, once set-up has run
        problem, recording = exc, None
    if recording is not None:
        item.stash[_RECORDING] = recording
        recording.start()
    result = yield
    if problem is not None:
        # The marker's fault, not the plugin's: the message without a traceback.
        _fail(f"{type(problem).__name__}: {problem}")
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    recording = item.stash.get(_RECORDING, None)
    if recording is None or not recording.active:
        return (yield)
    readings = _benchmark_readings(item, recording)
    recording.call_started()
    try:
        result = yield
    finally:
        recording.call_ended()
        if readings is not None:
            _finish_benchmark(readings)
    failures = [
        message
        for message in (recording.check_max_queries(), recording.check_n_plus_one())
        if message
    ]
    if failures:
        _fail("\n\n".join(failures))
    return result


def _fail(message: str) -> NoReturn:
    """Fail the test with ``message`` alone: no traceback, and no exception the thread
    was left handling (a leak elsewhere) shown as its context."""
    raise pytest.fail.Exception(message, pytrace=False) from None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        recording = item.stash.get(_RECORDING, None)
        if recording is not None:
            del item.stash[_RECORDING]
            try:
                recording.stop()
            finally:
                run = item.config.stash.get(_RUN, None)
                if run is not None:
                    run.add(recording.summary())


# ------------------------------------------------------------------ pytest-benchmark


def _benchmark_readings(item: pytest.Item, recording: Recording) -> RoundReadings | None:
    """The benchmark fixture's rounds read by the test's meter, under --querymeter."""
    if not item.config.getoption("querymeter", False):
        return None
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    if fixture is None or not type(fixture).__module__.startswith("pytest_benchmark"):
        return None
    if getattr(fixture, "disabled", True) or not hasattr(fixture, "_timer"):
        return None
    from ._benchmark import RoundReadings

    try:
        return RoundReadings(fixture, recording.meter)
    except Exception as exc:  # noqa: BLE001 - pytest-benchmark changed: the benchmark still runs
        _report_fault("pytest plugin: could not read pytest-benchmark's rounds", exc)
        return None


def _finish_benchmark(readings: RoundReadings) -> None:
    try:
        extra = readings.finish()
    except Exception as exc:  # noqa: BLE001 - the benchmark's own results stand
        _report_fault("pytest plugin: could not read pytest-benchmark's rounds", exc)
        return
    if extra is not None:
        readings.fixture.extra_info.update(extra)


def _report_fault(cause: str, exc: BaseException) -> None:
    from .. import _faults

    _faults.report(cause, exc)


# ------------------------------------------------------------------ the run's summary


class _Run:
    """Every metered test's figures, for the summary and the JSON file (a plugin of the run)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.n_plus_one: int | None = config.getoption("querymeter_n_plus_one", None)
        self.json_path: str | None = config.getoption("querymeter_json", None)
        self.worst: int = config.getoption("querymeter_worst", 10)
        self.records: list[dict[str, Any]] = []
        self.outcomes: dict[str, str] = {}
        self.started_ns = time.time_ns()
        self.json_problem: str | None = None

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if hasattr(report, "wasxfail"):
            outcome = "xpassed" if report.passed else "xfailed"
        elif report.when != "call" and report.failed:
            outcome = "error"
        else:
            outcome = report.outcome
        # The first outcome other than "passed" is the test's.
        current = self.outcomes.get(report.nodeid)
        if current is None or (current == "passed" and outcome != "passed"):
            self.outcomes[report.nodeid] = outcome

    def document(self) -> dict[str, Any]:
        """The run as plain data: what --querymeter-json writes."""
        from .. import __version__
        from ..core import IMPLEMENTATION

        tests = [
            {**record, "outcome": self.outcomes.get(record["nodeid"], "unknown")}
            for record in self.records
        ]
        return {
            "format": JSON_FORMAT,
            "version": JSON_VERSION,
            "querymeter": __version__,
            "core": IMPLEMENTATION,
            "started_ns": self.started_ns,
            "totals": {
                "tests": len(tests),
                "queries": sum(test["queries"] for test in tests),
                "errors": sum(test["errors"] for test in tests),
                "db_seconds": sum(test["db_seconds"] for test in tests),
                "fixture_queries": sum(test["fixture_queries"] for test in tests),
            },
            "tests": tests,
        }

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.json_path:
            return
        path = Path(self.json_path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + f".{os.getpid()}.partial")
            partial.write_text(json.dumps(self.document(), indent=2) + "\n", encoding="utf-8")
            partial.replace(path)
        except OSError as exc:
            self.json_problem = f"querymeter: could not write {path}: {exc}"
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.json_problem:
            terminalreporter.write_line(self.json_problem, red=True, bold=True)
        if not self.config.getoption("querymeter", False):
            return
        from ._report import summary_lines

        terminalreporter.section("querymeter: queries per test")
        for line in summary_lines(self.document(), self.worst):
            terminalreporter.write_line(line)
        if self.json_path and not self.json_problem:
            terminalreporter.write_line(f"written to {self.json_path}")
