"""The kill switch, scopes and a profiling session on sqlite3 in memory, beside the raw driver.

``cursor.execute("SELECT 1")`` on a reused cursor, C core, in one run:

- raw sqlite3 (the baseline);
- querymeter instrumented and disabled (``querymeter.disable()``);
- instrumented, counting (the reference for the next ones);
- inside a ``querymeter.scope()``;
- statements on; statements on and a profiling session at ``sample=0.05``.

Goals: disabled within 2 % of uninstrumented; a scope at most 0.3 us per query
over no scope; a session at sample=0.05 at most 1 us per query over statements
alone.  Each variant runs with the switch and the scope it needs, set around
its own rounds, so that interleaving them changes nothing else.
"""

from __future__ import annotations

import contextlib
import sqlite3
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter
import querymeter.dbapi
from querymeter.meter import Meter

from .conftest import OPS, interleaved_medians, load_meter_class, mark_baseline, quick_mode

RANGE = range(OPS)
SQL = "SELECT 1"


def counted_cursor(meter: Meter) -> Any:
    querymeter.dbapi.instrument(sqlite3, meter=meter)
    try:
        return sqlite3.connect(":memory:").cursor()
    finally:
        querymeter.dbapi.uninstrument(sqlite3)


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    querymeter.disable()
    try:
        yield
    finally:
        querymeter.enable()


def variants() -> dict[str, tuple[Any, Callable[[], contextlib.AbstractContextManager[Any]]]]:
    """name -> (cursor, the context its rounds run in)."""
    counting = load_meter_class("c")()
    with_statements = load_meter_class("c")()
    with_statements.enable_statements()
    in_session = load_meter_class("c")()
    in_session.enable_statements()
    SESSION_METER.append(in_session)
    return {
        "raw": (sqlite3.connect(":memory:").cursor(), nothing),
        "disabled": (counted_cursor(load_meter_class("c")()), nothing),
        "counting": (counted_cursor(counting), nothing),
        "in a scope": (counted_cursor(counting), lambda: querymeter.scope(job="bench")),
        "statements on": (counted_cursor(with_statements), nothing),
        "statements on, session at 0.05": (counted_cursor(in_session), nothing),
    }


def execute_alone(cursor: Any, context: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        with context():
            # Looked up inside the context, as an application's call looks it up.
            execute = cursor.execute
            for _ in RANGE:
                execute(SQL)

    return run


SESSION_METER: list[Meter] = []
VARIANTS = variants()
SESSION_VARIANT = "statements on, session at 0.05"


@contextlib.contextmanager
def session_running() -> Iterator[None]:
    """The session of the session variant, started once around all its rounds (its start
    and report are not a per-query cost), never beside the disabled variant: the kill
    switch ends sessions."""
    session = querymeter.profile(
        3600, sample=0.05, max_samples=10**9, meter=SESSION_METER[0]
    ).start()
    try:
        yield
    finally:
        session.stop()


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest, benchmark: Any) -> Iterator[Callable[[], None]]:
    if request.param == "raw":
        mark_baseline(benchmark)
    around = {SESSION_VARIANT: session_running, "disabled": disabled}.get(request.param, nothing)
    with around():
        yield execute_alone(*VARIANTS[request.param])


@pytest.mark.benchmark(group="sessions: execute SELECT 1", min_rounds=20)
def test_execute(benchmark: Any, variant: Callable[[], None]) -> None:
    """cursor.execute("SELECT 1") on a reused cursor, per variant."""
    benchmark(variant)


def disabled_medians(rounds: int) -> dict[str, float]:
    """raw, disabled and counting in turn: the switch is turned off and on around each
    disabled round, outside its timing (the switch is global, and costs what it costs
    once, not per query)."""
    times: dict[str, list[float]] = {"raw": [], "disabled": [], "counting": []}
    for _ in range(rounds):
        for name in times:
            cursor = VARIANTS[name][0]
            with disabled() if name == "disabled" else nothing():
                execute = cursor.execute
                start = time.perf_counter_ns()
                for _ in RANGE:
                    execute(SQL)
                times[name].append((time.perf_counter_ns() - start) / OPS)
    return {name: statistics.median(values) for name, values in times.items()}


def test_added_cost_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every variant in turn, round after round: the figures to judge the goals by."""
    rounds = 1 if quick_mode(request.config) else 41
    runs = {name: execute_alone(*pair) for name, pair in VARIANTS.items()}
    medians = disabled_medians(rounds)
    with session_running():
        medians.update(
            interleaved_medians(
                {
                    name: runs[name]
                    for name in ("counting", "in a scope", "statements on", SESSION_VARIANT)
                },
                rounds,
            )
        )
    if quick_mode(request.config):
        return
    raw, counting = medians["raw"], medians["counting"]
    statements = medians["statements on"]
    session = medians[SESSION_VARIANT]
    with capsys.disabled():
        print("\nsessions, SELECT 1 (interleaved, medians per operation):")
        for name, median in medians.items():
            print(f"  {name:34s} {median:8.1f} ns/op  {median / raw:5.3f}x raw")
        print(
            f"  disabled / raw: {medians['disabled'] / raw:.3f};"
            f" scope - counting: {medians['in a scope'] - counting:+.1f} ns;"
            f" session - statements: {session - statements:+.1f} ns"
        )
