"""querymeter's own faults: a misbehaving clock never raises and is logged once."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

import querymeter
from querymeter import _faults
from querymeter.meter import Meter as MeterType

from .conftest import check_invariants
from .servers import driver


class BrokenClock:
    """A clock that works, then misbehaves in a chosen way, then works again."""

    def __init__(self, failure: object) -> None:
        self.now = 1_000
        self.failure = failure
        self.broken = False

    def __call__(self) -> int:
        if not self.broken:
            return self.now
        if isinstance(self.failure, BaseException):
            raise self.failure
        return self.failure  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("failure", "cause"),
    [
        (RuntimeError("clock is down"), "clock raised"),
        (1.5, "clock returned a non-int"),
        ("12", "clock returned a non-int"),
        (2**70, "clock overflowed"),
    ],
    ids=["raises", "float", "str", "too-big"],
)
def test_a_faulty_clock_counts_as_no_time_passed(
    Meter: type[MeterType], caplog: pytest.LogCaptureFixture, failure: object, cause: str
) -> None:
    """A clock fault never raises: the reading counts as no time passed, logged once, counted."""
    clock = BrokenClock(failure)
    meter = Meter(clock=clock)
    before = querymeter.faults().get(cause, 0)
    token = meter.begin()
    clock.now += 100
    clock.broken = True
    with caplog.at_level(logging.WARNING, logger="querymeter"):
        assert meter.end(token) == 0  # the end was read as "no time since the stamp"
        with meter.track():
            pass
        snap = meter.snapshot()
    check_invariants(snap)
    assert (snap.queries, snap.concurrency, snap.total_ns, snap.busy_ns) == (2, 0, 0, 0)
    assert querymeter.faults()[cause] - before == 4  # end, enter, exit, snapshot
    logged = [r for r in caplog.records if cause in r.getMessage()]
    assert len(logged) <= 1  # once per process: an earlier test may have logged it
    clock.broken = False
    clock.now += 50
    token = meter.begin()
    clock.now += 25
    assert meter.end(token) == 25


def test_a_clock_running_backwards_never_runs_the_counters_back(
    Meter: type[MeterType],
) -> None:
    """Readings earlier than the last one count as no time passed."""
    readings = iter([1_000, 5_000, 2_000, 3_000, 9_000])
    meter = Meter(clock=lambda: next(readings))  # 1_000 is the start
    token = meter.begin()  # 5_000
    assert meter.end(token) == 0  # 2_000: clamped to 5_000
    snap = meter.snapshot()  # 3_000: clamped to 5_000
    assert (snap.uptime_ns, snap.total_ns, snap.busy_ns) == (4_000, 0, 0)
    assert meter.snapshot().uptime_ns == 8_000


def test_report_logs_once_per_cause_and_counts_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first fault of a cause is one line naming the exception; later ones are only counted."""
    cause = "test cause logged once"
    with caplog.at_level(logging.WARNING, logger="querymeter"):
        for _ in range(3):
            _faults.report(cause, ValueError("detail\non two lines"))
    logged = [r for r in caplog.records if cause in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is None
    message = logged[0].getMessage()
    assert f"{cause}: ValueError: detail on two lines (" in message
    assert "\n" not in message
    assert querymeter.faults()[cause] == 3


def test_report_adds_the_traceback_only_under_debug(caplog: pytest.LogCaptureFixture) -> None:
    """With the querymeter logger enabled for DEBUG, a cause's first report has its traceback."""
    cause = "test cause logged with its traceback"
    try:
        raise KeyError("missing")
    except KeyError as exc:
        raised = exc
    with caplog.at_level(logging.DEBUG, logger="querymeter"):
        _faults.report(cause, raised)
    (record,) = [r for r in caplog.records if cause in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[1] is raised
    assert "Traceback (most recent call last)" in caplog.text
    assert f"{cause}: KeyError: 'missing'" in record.getMessage()


def test_an_exception_is_named_with_its_module_and_a_long_message_is_cut() -> None:
    """A non-builtin exception is named with its module; its message is cut to a bounded line."""

    class DriverError(Exception):
        pass

    described = _faults._describe(DriverError("x" * 1000))
    assert described.startswith(f": {__name__}.{DriverError.__qualname__}: xxx")
    assert described.endswith("...")
    assert len(described) < _faults._MAX_MESSAGE + 200
    assert _faults._describe(ValueError()) == ": ValueError"
    assert _faults._describe(None) == ""


def test_a_fault_prints_one_line_on_an_unconfigured_applications_stderr() -> None:
    """Without logging configured, a fault of a hook is one line on stderr, and the
    application's call still returns what the driver returned."""
    driver("psycopg2")
    code = (
        "import psycopg2, querymeter, querymeter.dbapi\n"
        "stub = object()  # no weak reference: counting the connection faults\n"
        "psycopg2._connect = lambda *args, **kwargs: stub\n"
        "querymeter.dbapi.instrument(psycopg2)\n"
        "for _ in range(3):\n"
        "    assert psycopg2.connect('dbname=unused') is stub\n"
        "print(querymeter.faults()['psycopg2: could not count a new connection'])\n"
    )
    quiet = _run(code)
    assert quiet.stdout == "3\n"
    lines = quiet.stderr.splitlines()
    assert len(lines) == 1, quiet.stderr
    assert lines[0].startswith(
        "querymeter fault: psycopg2: could not count a new connection: TypeError: "
        "cannot create weak reference to 'object' object ("
    )
    debug = _run("import logging\nlogging.getLogger('querymeter').setLevel(logging.DEBUG)\n" + code)
    assert debug.stdout == "3\n"
    assert debug.stderr.startswith(lines[0] + "\nTraceback (most recent call last):\n")


def test_a_non_class_sqlite3_factory_prints_one_line() -> None:
    """A sqlite3 factory that is not a class connects uncounted, with one line on stderr."""
    code = (
        "import sqlite3, querymeter, querymeter.dbapi\n"
        "querymeter.dbapi.instrument(sqlite3)\n"
        "def factory(*args, **kwargs):\n"
        "    return sqlite3.Connection(*args, **kwargs)\n"
        "for _ in range(3):\n"
        "    assert sqlite3.connect(':memory:', factory=factory).execute('SELECT 1')\n"
    )
    result = _run(code)
    assert result.stderr.splitlines() == [
        "querymeter fault: sqlite3: a connection factory that is not a Connection subclass "
        "(the application is unaffected; further faults of this cause are counted, not logged)"
    ]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=Path(__file__).parents[1],
    )


def test_report_never_raises_even_if_logging_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A logger that raises cannot make a fault report raise."""

    def broken_warning(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_faults._logger, "warning", broken_warning)
    _faults.report("test cause with broken logging")
    assert querymeter.faults()["test cause with broken logging"] == 1


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit], ids=["ctrl-c", "exit"])
def test_report_never_swallows_a_keyboard_interrupt_or_system_exit(
    monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    """A KeyboardInterrupt or SystemExit raised while a fault is logged reaches the application."""
    cause = f"test cause interrupted by {interrupt.__name__}"

    def interrupted(*args: object, **kwargs: object) -> None:
        raise interrupt

    monkeypatch.setattr(_faults._logger, "warning", interrupted)
    with pytest.raises(interrupt):
        _faults.report(cause)
    assert querymeter.faults()[cause] == 1


def test_the_cause_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the cap, new causes are counted under one overflow cause."""
    monkeypatch.setattr(_faults, "_counts", {})
    for n in range(_faults._MAX_CAUSES + 10):
        _faults.report(f"cause {n}")
    counts = querymeter.faults()
    assert len(counts) == _faults._MAX_CAUSES + 1
    assert counts[_faults._OVERFLOW_CAUSE] == 10
