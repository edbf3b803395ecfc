"""Record each test's outcome of a driver's own suite, and judge them against the expected failures.

Three uses, all driven by .ci/transparency/run:

- ``python -m qm_transparency unittest NAME...``: run unittest suites (a
  module, package or callable returning a suite, by dotted name) and write one
  JSON line per test to the file ``QUERYMETER_TRANSPARENCY_RESULTS`` names.
- ``pytest -p qm_transparency``: the same lines from a pytest run (this module
  is also a pytest plugin).
- ``python -m qm_transparency check --expected FILE SUITE:RESULTS[:REPORT]...``:
  one summary line per suite; exits 1 when a test not listed as an expected
  failure failed, when a listed test did not fail (the list stays honest), or
  when an instrumented run shows no counted query (instrumentation was off).

A test's outcome is ``passed``, ``failed`` (a failure or an error in any
phase, an unexpected success, a collection error) or ``skipped`` (skipped, or
an expected failure of the suite's own: those are the suite's business).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import textwrap
import traceback
import unittest
from dataclasses import dataclass, field
from typing import Any, TextIO

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
# Worst outcome wins when a test reports several (setup, call, teardown, subtests).
_RANK = {PASSED: 0, SKIPPED: 1, FAILED: 2}
_DETAIL_LINES = 12


class Outcomes:
    """Each test's worst outcome so far, with the message of its first failure."""

    def __init__(self) -> None:
        self.by_test: dict[str, dict[str, str]] = {}

    def add(self, test_id: str, outcome: str, message: str = "", detail: str = "") -> None:
        current = self.by_test.get(test_id)
        if current is None or _RANK[outcome] > _RANK[current["outcome"]]:
            self.by_test[test_id] = {
                "id": test_id,
                "outcome": outcome,
                "message": message,
                # The traceback's last lines: enough to see where, in a CI log.
                "detail": "\n".join(detail.rstrip().splitlines()[-_DETAIL_LINES:]),
            }

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as results:
            for record in self.by_test.values():
                results.write(json.dumps(record) + "\n")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _exception_line(err: Any) -> str:
    kind, value, _ = err
    return _one_line(traceback.format_exception_only(kind, value)[-1])


# -- unittest -----------------------------------------------------------------


class _RecordingResult(unittest.TextTestResult):
    outcomes = Outcomes()

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self.outcomes.add(test.id(), PASSED)

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._failed(test, err)

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._failed(test, err)

    def _failed(self, test: Any, err: Any, prefix: str = "") -> None:
        detail = "".join(traceback.format_exception(*err))
        self.outcomes.add(test.id(), FAILED, prefix + _exception_line(err), detail)

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self.outcomes.add(test.id(), SKIPPED, _one_line(reason))

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self.outcomes.add(test.id(), SKIPPED, "expected failure of the suite's own")

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self.outcomes.add(test.id(), FAILED, "unexpected success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            # Under the test's own id: a subtest's description carries parameters.
            self._failed(test, err, f"{subtest._subDescription()}: ")


def run_unittest(names: list[str], results: str) -> int:
    """Run the named suites in this process; write the outcomes; 0 whatever they were."""
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name in names:
        suite.addTest(loader.loadTestsFromName(name))
    runner = unittest.TextTestRunner(stream=sys.stderr, resultclass=_RecordingResult)  # type: ignore[arg-type]
    runner.run(suite)
    _RecordingResult.outcomes.write(results)
    return 0


# -- pytest plugin ------------------------------------------------------------

_pytest_outcomes = Outcomes()


def _crash_message(report: Any) -> str:
    crash = getattr(getattr(report, "longrepr", None), "reprcrash", None)
    if crash is not None:
        return _one_line(crash.message)
    text = getattr(report, "longreprtext", "") or str(getattr(report, "longrepr", ""))
    lines = [line for line in text.splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else ""


def pytest_runtest_logreport(report: Any) -> None:
    """Record the worst outcome of each test's phases."""
    if report.failed:
        message = f"{report.when}: {_crash_message(report)}"
        _pytest_outcomes.add(report.nodeid, FAILED, message, report.longreprtext)
    elif report.skipped:
        reason = "expected failure of the suite's own" if hasattr(report, "wasxfail") else ""
        if not reason and isinstance(report.longrepr, tuple):
            reason = _one_line(str(report.longrepr[2]))
        _pytest_outcomes.add(report.nodeid, SKIPPED, reason)
    elif report.when == "call":
        _pytest_outcomes.add(report.nodeid, PASSED)


def pytest_collectreport(report: Any) -> None:
    """A module that cannot be collected is a failure, under its own node id."""
    if report.failed:
        message = f"collection: {_crash_message(report)}"
        _pytest_outcomes.add(report.nodeid, FAILED, message, report.longreprtext)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get("QUERYMETER_TRANSPARENCY_RESULTS")
    if path:
        _pytest_outcomes.write(path)


# -- check --------------------------------------------------------------------

Results = dict[str, dict[str, str]]


@dataclass
class Entry:
    """One line of an expected-failures (or allow) file: a suite and a test id pattern."""

    suite: str
    pattern: str
    reason: str
    where: str
    regex: re.Pattern[str] = field(init=False)
    matched: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # '*' is the only wildcard: test ids are full of [ ] and other glob characters.
        self.regex = re.compile(".*".join(re.escape(part) for part in self.pattern.split("*")))

    def matches(self, test_id: str) -> bool:
        return self.regex.fullmatch(test_id) is not None


def read_entries(path: str, *, need_category: bool) -> list[Entry]:
    """``SUITE TEST-ID-PATTERN  # (a) or (b) why`` per line; blank lines and comments ignored."""
    entries = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            text, _, reason = line.partition("#")
            fields = text.split()
            if not fields:
                continue
            where = f"{os.path.basename(path)}:{number}"
            if len(fields) != 2:
                raise SystemExit(
                    f"{where}: expected 'SUITE TEST-ID  # reason', not {line.strip()!r}"
                )
            reason = reason.strip()
            if need_category and not reason.startswith(("(a)", "(b)")):
                raise SystemExit(
                    f"{where}: the reason must start with (a) (fails without querymeter too) "
                    "or (b) (a documented residual identity check)"
                )
            entries.append(Entry(fields[0], fields[1], reason, where))
    return entries


def read_results(path: str) -> Results:
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as lines:
        return {record["id"]: record for record in map(json.loads, lines)}


def read_reports(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


@dataclass
class Verdict:
    """What one suite's run shows, and the problems that fail the run."""

    suite: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    expected: int = 0
    allowed: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def judge(
    suite: str,
    results: Results,
    expected: list[Entry],
    allowed: list[Entry],
    reports: list[dict[str, Any]] | None,
) -> Verdict:
    """Count the outcomes; every failure must be listed, and every listed test must fail."""
    verdict = Verdict(suite)
    mine = [entry for entry in expected if entry.suite == suite]
    tolerated = [entry for entry in allowed if entry.suite == suite]
    for test_id, record in sorted(results.items()):
        outcome = record["outcome"]
        listed = [entry for entry in mine if entry.matches(test_id)]
        for entry in listed:
            entry.matched.append(test_id)
        if outcome == PASSED:
            verdict.passed += 1
        elif outcome == SKIPPED:
            verdict.skipped += 1
        else:
            verdict.failed += 1
        if listed and outcome != FAILED:
            verdict.problems.append(
                f"listed as an expected failure ({listed[0].where}) but {outcome}: {test_id}"
            )
        elif outcome == FAILED and listed:
            verdict.expected += 1
        elif outcome == FAILED and any(entry.matches(test_id) for entry in tolerated):
            verdict.allowed += 1
            verdict.notes.append(f"allowed meanwhile: {test_id}: {record['message']}")
        elif outcome == FAILED:
            problem = f"failed with querymeter: {test_id}: {record['message']}"
            if record.get("detail"):
                problem += "\n" + textwrap.indent(record["detail"], "        | ")
            verdict.problems.append(problem)
    for entry in mine:
        if not entry.matched:
            verdict.problems.append(
                f"listed as an expected failure but not run: {entry.pattern} ({entry.where})"
            )
    if not results:
        verdict.problems.append("no test ran (see the suite's output above)")
    if reports is not None:
        _judge_reports(verdict, reports)
    return verdict


def _judge_reports(verdict: Verdict, reports: list[dict[str, Any]]) -> None:
    """Instrumentation was active: the default meter counted queries, on the required core."""
    queries = sum(report["queries"] for report in reports)
    if queries <= 0:
        verdict.problems.append(
            f"instrumentation was not active: {len(reports)} processes reported, {queries} queries"
        )
        return
    cores = sorted({report["implementation"] for report in reports})
    if os.environ.get("QUERYMETER_REQUIRE_C") == "1" and cores != ["c"]:
        verdict.problems.append(f"QUERYMETER_REQUIRE_C=1, but the core was {'/'.join(cores)}")
    errors = sum(report["errors"] for report in reports)
    in_flight = sum(report["concurrency"] for report in reports)
    verdict.notes.append(
        f"querymeter counted {queries} queries ({errors} errors, {in_flight} in flight at exit) "
        f"in {len(reports)} processes, {'/'.join(cores)} core"
    )
    faults: dict[str, int] = {}
    for report in reports:
        for cause, count in report["faults"].items():
            faults[cause] = faults.get(cause, 0) + count
    for cause, count in sorted(faults.items()):
        verdict.notes.append(f"querymeter fault, {count}x: {cause}")


def _split(spec: str) -> tuple[str, str, str | None]:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"expected SUITE:RESULTS[:REPORT], not {spec!r}")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def compare_with_baseline(
    suite: str, instrumented: Results, baseline: Results, out: TextIO
) -> None:
    """Print, test by test, where the run with querymeter differs from the run without."""
    print(f"{suite}, with querymeter against without:", file=out)
    for test_id in sorted(set(instrumented) | set(baseline)):
        with_qm = instrumented.get(test_id, {"outcome": "not run", "message": ""})
        without = baseline.get(test_id, {"outcome": "not run", "message": ""})
        if with_qm["outcome"] != without["outcome"]:
            print(
                f"    {without['outcome']} without, {with_qm['outcome']} with: "
                f"{test_id}: {with_qm['message']}",
                file=out,
            )
        elif with_qm["outcome"] == FAILED:
            print(f"    failed both ways: {test_id}: {without['message']}", file=out)


def check(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    expected = read_entries(args.expected, need_category=True)
    allowed = read_entries(args.allow, need_category=False) if args.allow else []
    baselines = {suite: read_results(path) for suite, path, _ in map(_split, args.baseline or [])}
    verdicts = []
    for suite, results_path, report_path in map(_split, args.suites):
        results = read_results(results_path)
        reports = read_reports(report_path) if report_path else None
        verdict = judge(suite, results, expected, allowed, reports)
        verdicts.append(verdict)
        run = verdict.passed + verdict.failed + verdict.skipped
        print(
            f"{suite}: {run} run, {verdict.passed} passed, {verdict.failed} failed "
            f"({verdict.expected} expected, {verdict.allowed} allowed meanwhile), "
            f"{verdict.skipped} skipped: {'FAILED' if verdict.problems else 'ok'}",
            file=out,
        )
        for line in verdict.notes + verdict.problems:
            print(f"    {line}", file=out)
        if suite in baselines:
            compare_with_baseline(suite, results, baselines[suite], out)
    passed = sum(verdict.passed for verdict in verdicts)
    skipped = sum(verdict.skipped for verdict in verdicts)
    tolerated = sum(verdict.expected + verdict.allowed for verdict in verdicts)
    problems = sum(len(verdict.problems) for verdict in verdicts)
    print(f"transparency: {tolerated} failures expected, as listed", file=out)
    print(f"transparency: {passed} passed, {problems} failed, {skipped} skipped", file=out)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qm_transparency", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    unit = commands.add_parser(
        "unittest", help="run unittest suites and record each test's outcome"
    )
    unit.add_argument("names", nargs="+")
    judging = commands.add_parser(
        "check", help="judge recorded outcomes against the expected failures"
    )
    judging.add_argument("--expected", required=True)
    judging.add_argument("--allow", help="a local file of failures tolerated meanwhile")
    judging.add_argument(
        "--baseline", action="append", help="SUITE:RESULTS of a run without querymeter"
    )
    judging.add_argument("suites", nargs="+", help="SUITE:RESULTS[:REPORT]")
    args = parser.parse_args(argv)
    if args.command == "unittest":
        return run_unittest(args.names, os.environ["QUERYMETER_TRANSPARENCY_RESULTS"])
    return check(args)


if __name__ == "__main__":
    # Run as the module of its own name, not as __main__: its pytest plugin and
    # its unittest result then share one module's state.
    sys.exit(importlib.import_module("qm_transparency").main())
