"""Shared fixtures: every behaviour test runs against both cores, by name."""

from __future__ import annotations

import os

import pytest

from querymeter import Snapshot
from querymeter.meter import Meter as MeterType
from querymeter.meter import meter_class

# Strict, as every switch of ours: only "1" turns it on.  CI sets it, so that a
# C core that failed to build fails the run instead of skipping half of it.
REQUIRE_C = os.environ.get("QUERYMETER_REQUIRE_C", "0") == "1"

IMPLEMENTATIONS = {"c-extension": "c", "pure-python": "python"}


def load_meter_class(implementation: str) -> type[MeterType]:
    """The Meter class over one core; a missing C core skips, or fails under REQUIRE_C."""
    try:
        return meter_class(implementation)
    except ImportError as exc:
        if REQUIRE_C:
            pytest.fail(f"the C core is not built but QUERYMETER_REQUIRE_C=1: {exc}")
        pytest.skip(f"the C core is not built: {exc}")


@pytest.fixture(scope="session", params=list(IMPLEMENTATIONS), ids=list(IMPLEMENTATIONS))
def implementation(request: pytest.FixtureRequest) -> str:
    """The name of the core under test: "c" or "python"."""
    name = IMPLEMENTATIONS[request.param]
    load_meter_class(name)
    return name


@pytest.fixture
def Meter(implementation: str) -> type[MeterType]:
    """The Meter class over the core under test."""
    return load_meter_class(implementation)


class FakeClock:
    """A monotonic clock that moves only when told: for exact schedules."""

    def __init__(self, start: int = 1_000_000) -> None:
        self.now = start
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.now

    def advance(self, ns: int) -> None:
        self.now += ns


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock for exact schedules."""
    return FakeClock()


@pytest.fixture
def fake_meter(Meter: type[MeterType], clock: FakeClock) -> MeterType:
    """A meter of the core under test, on the fake clock."""
    return Meter(clock=clock)


def check_invariants(snap: object) -> None:
    """Assert every invariant docs/concepts.md states for one snapshot."""
    assert isinstance(snap, Snapshot)
    assert 0 <= snap.busy_ns <= snap.uptime_ns, snap
    assert snap.busy_ns <= snap.total_ns, snap
    assert snap.concurrency >= 0, snap
    assert 0 <= snap.errors <= snap.queries, snap
