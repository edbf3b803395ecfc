"""querymeter's own faults: a misbehaving clock never raises and is logged once."""

from __future__ import annotations

import logging

import pytest

import querymeter
from querymeter import _faults
from querymeter.meter import Meter as MeterType

from .conftest import check_invariants


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
    """The first fault of a cause is logged with its exception; later ones are only counted."""
    cause = "test cause logged once"
    with caplog.at_level(logging.WARNING, logger="querymeter"):
        for _ in range(3):
            _faults.report(cause, ValueError("detail"))
    logged = [r for r in caplog.records if cause in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert querymeter.faults()[cause] == 3


def test_report_never_raises_even_if_logging_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A logger that raises cannot make a fault report raise."""

    def broken_warning(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_faults._logger, "warning", broken_warning)
    _faults.report("test cause with broken logging")
    assert querymeter.faults()["test cause with broken logging"] == 1


def test_the_cause_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the cap, new causes are counted under one overflow cause."""
    monkeypatch.setattr(_faults, "_counts", {})
    for n in range(_faults._MAX_CAUSES + 10):
        _faults.report(f"cause {n}")
    counts = querymeter.faults()
    assert len(counts) == _faults._MAX_CAUSES + 1
    assert counts[_faults._OVERFLOW_CAUSE] == 10
