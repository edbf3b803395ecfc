"""docs/incident-response.md: its Python examples run in order and print what it shows."""

from __future__ import annotations

import contextlib
import io
import re
import signal
import sqlite3
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest

import querymeter
from querymeter import dbapi, markers
from querymeter.recorder import running_recorder
from querymeter.triage._rules import RULES

DOC = Path(__file__).resolve().parents[2] / "docs" / "incident-response.md"
FENCE = re.compile(r"```(\w+)\n(.*?)```", re.S)
# A line of the timeline example: the step's end, X, R, U and the markers in it.
STEP = re.compile(r"^\d\d:\d\d:\d\d +(\d+) queries/s R +([\d.]+) ms U +\d+%( <- deploy v1\.2)?$")


def examples() -> list[tuple[str, str | None]]:
    """Each Python block of the doc, with the text block that follows it (its output)."""
    fences = FENCE.findall(DOC.read_text())
    pairs = []
    for index, (language, body) in enumerate(fences):
        if language != "python":
            continue
        following = fences[index + 1] if index + 1 < len(fences) else None
        shown = following[1] if following is not None and following[0] == "text" else None
        pairs.append((body, shown))
    return pairs


def undated(line: str) -> str:
    """A line without its date and time (they are those of the run)."""
    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<when>", line)


@pytest.fixture
def clean_default_meter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The examples count into the default meter: leave it as it was, and SIGUSR1 too."""
    monkeypatch.chdir(tmp_path)
    previous = signal.getsignal(signal.SIGUSR1)
    meter = querymeter.default_meter()
    assert meter.statements is None and running_recorder(meter) is None
    markers.clear()
    try:
        yield
    finally:
        recorder = running_recorder(meter)
        if recorder is not None:
            recorder.stop()
        dbapi.uninstrument(sqlite3)
        meter.disable_statements()
        signal.signal(signal.SIGUSR1, previous)
        markers.clear()


@pytest.mark.usefixtures("clean_default_meter")
def test_the_docs_examples_run_and_print_what_they_show() -> None:
    """The recorder, markers, dumps, dump on signal and health() examples print the doc's lines."""
    namespace: dict[str, object] = {"__name__": "incident_response_doc"}
    printed: list[list[str]] = []
    shown: list[list[str]] = []
    for block, output in examples():
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(DOC), "exec"), namespace)
        printed.append(out.getvalue().splitlines())
        shown.append([] if output is None else output.splitlines())
    setup, timeline, statements, dumps, on_signal, health = printed
    assert setup == shown[0] == []

    # The marker, then a step a line: the deploy's step is the last fast one.
    assert [undated(line) for line in timeline[:1]] == [undated(line) for line in shown[1][:1]]
    steps = [STEP.match(line) for line in timeline[1:]]
    assert all(steps), timeline
    marked = [i for i, step in enumerate(steps) if step and step.group(3)]
    assert len(marked) == 1 and 3 <= marked[0] < len(steps) - 1, timeline
    # The first step is the part of a second from start(); a loaded machine may
    # slow any one step: the medians, before and after the deploy's step.
    before = [float(step.group(2)) for step in steps[1 : marked[0]] if step]
    after = [float(step.group(2)) for step in steps[marked[0] + 1 :] if step]
    assert statistics.median(after) > 5 * statistics.median(before), timeline
    assert all(STEP.match(line) for line in shown[1][1:])

    # The slow statement first, by time; the same statements as the doc shows.
    def sql(lines: list[str]) -> list[str]:
        return [line.partition(" ms: ")[2] for line in lines]

    assert (
        sql(statements)
        == sql(shown[2])
        == [
            "SELECT sum(total) FROM orders WHERE customer_id = ?",
            "SELECT total FROM orders WHERE id = ?",
        ]
    )

    keys, resolutions, loaded = dumps
    assert keys == shown[3][0]
    timelines = namespace["loaded"].timelines  # type: ignore[attr-defined]
    count, minutes = len(timelines[1.0]), len(timelines[60.0])
    # A minute's step closes when the meter's uptime crosses a minute, which a
    # run of a few seconds does now and then.
    assert minutes in (0, 1)
    assert resolutions == f"[(1.0, 900, {count}), (60.0, 1440, {minutes})]"
    assert loaded == f"{count} steps of 1 s, markers: ['deploy v1.2']"
    assert re.sub(r"\d+", "N", resolutions) == re.sub(r"\d+", "N", shown[3][1])
    assert re.sub(r"^\d+", "N", loaded) == re.sub(r"^\d+", "N", shown[3][2])
    assert Path("incident.html").read_text().count("deploy v1.2") >= 2

    assert on_signal == shown[4] == ["['.html', '.json']"]

    # health(): the grade, the rule, the scope and the marker are the doc's.
    assert health[0] == shown[5][0] == "SEV-2: response time at least 3 times the baseline's"
    stable = ("  connect:", "  scope:", "  marker")

    def share_free(lines: list[str]) -> list[str]:
        # The slow statement holds all but a sliver of the excess: 100 %, or 99 %
        # when the machine slows the other one too.
        return [re.sub(r"\(\d+ %\)", "(N %)", undated(x)) for x in lines if x.startswith(stable)]

    assert share_free(health) == share_free(shown[5])


def test_the_docs_triage_table_is_the_rules() -> None:
    """The doc's triage table lists every rule of the triage, worst first, in its words."""
    text = DOC.read_text()
    rows = re.findall(r"^\| (SEV-\d|OK) \| (.+) \|$", text, re.M)
    assert rows == [(rule.severity, rule.text) for rule in RULES] + [("OK", "no rule holds")]
