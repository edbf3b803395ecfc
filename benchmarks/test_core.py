"""The counter core beside the floor: two time.perf_counter_ns() calls.

Goals (issue: counter core): the C begin+end pair at most 1.0x the floor,
``with meter.track():`` at most 2x, ``snapshot()`` at most 0.5 us.  Every
operation is called through a local name, floor included, so that attribute
lookups weigh the same on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from querymeter.meter import Meter

from .conftest import (
    OPS,
    interleaved_medians,
    load_meter_class,
    mark_baseline,
    print_interleaved,
    quick_mode,
)

pytestmark = pytest.mark.benchmark(group="core", min_rounds=20)

RANGE = range(OPS)


def test_floor_two_perf_counter_ns_calls(benchmark: Any) -> None:
    """The floor: two clock reads, the least any begin/end pair must do."""
    mark_baseline(benchmark)
    clock = time.perf_counter_ns

    def run() -> None:
        for _ in RANGE:
            clock()
            clock()

    benchmark(run)


def test_begin_end_pair(benchmark: Any, meter_type: type[Meter]) -> None:
    """token = begin(); end(token)."""
    meter = meter_type()
    begin, end = meter.begin, meter.end

    def run() -> None:
        for _ in RANGE:
            end(begin())

    benchmark(run)
    assert meter.snapshot().concurrency == 0


def test_with_track(benchmark: Any, meter_type: type[Meter]) -> None:
    """with meter.track(): pass."""
    meter = meter_type()

    def run() -> None:
        for _ in RANGE:
            with meter.track():
                pass

    benchmark(run)


def test_snapshot(benchmark: Any, meter_type: type[Meter]) -> None:
    """meter.snapshot() (goal: at most 0.5 us)."""
    meter = meter_type()
    snapshot = meter.snapshot

    def run() -> None:
        for _ in RANGE:
            snapshot()

    benchmark(run)


def test_tracked_call(benchmark: Any, meter_type: type[Meter]) -> None:
    """A call of a tracked no-op function (the wrapper the hooks install)."""
    meter = meter_type()

    def noop() -> None:
        return None

    tracked = meter.tracked(noop)

    def run() -> None:
        for _ in RANGE:
            tracked()

    benchmark(run)


def test_untracked_call(benchmark: Any) -> None:
    """A call of the same no-op function, untracked, for reference."""

    def noop() -> None:
        return None

    def run() -> None:
        for _ in RANGE:
            noop()

    benchmark(run)


def test_core_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """The C core's operations and the floor in turn, round after round."""
    meter = load_meter_class("c")()
    begin, end, snapshot, track = meter.begin, meter.end, meter.snapshot, meter.track
    clock = time.perf_counter_ns

    def floor() -> None:
        for _ in RANGE:
            clock()
            clock()

    def pair() -> None:
        for _ in RANGE:
            end(begin())

    def block() -> None:
        for _ in RANGE:
            with track():
                pass

    def read() -> None:
        for _ in RANGE:
            snapshot()

    runs: dict[str, Callable[[], None]] = {
        "two perf_counter_ns()": floor,
        "begin+end": pair,
        "with track()": block,
        "snapshot()": read,
    }
    rounds = 1 if quick_mode(request.config) else 101
    medians = interleaved_medians(runs, rounds)
    if not quick_mode(request.config):
        print_interleaved("core, C", medians, "two perf_counter_ns()", capsys)
