"""Helpers for the shared meter's tests: the class over each core, a fresh path, an oracle."""

from __future__ import annotations

from pathlib import Path

import pytest

from querymeter.shared import SharedMeter as SharedMeterType
from querymeter.shared import shared_meter_class

from ..conftest import load_meter_class


@pytest.fixture
def SharedMeter(implementation: str) -> type[SharedMeterType]:
    """The SharedMeter class over the core under test."""
    load_meter_class(implementation)
    return shared_meter_class(implementation)


@pytest.fixture
def shared_path(tmp_path: Path) -> Path:
    """A path for a new shared meter's file."""
    return tmp_path / "service.querymeter"


def union_ns(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of [start, end) intervals, ns: the oracle's busy time."""
    covered = 0
    reach = None
    for start, end in sorted(intervals):
        if reach is None or start > reach:
            covered += end - start
            reach = end
        elif end > reach:
            covered += end - reach
            reach = end
    return covered
