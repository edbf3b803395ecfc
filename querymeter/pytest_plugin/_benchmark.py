"""pytest-benchmark's rounds, read by the test's meter: queries and DB time per round.

pytest-benchmark times each round between two calls of its timer, and offers
no hook per round.  The timer of the test's ``benchmark`` fixture is wrapped
for the test's duration: a meter reading just before a round's start is
timed and just after its end, so that the readings stay outside the timed
stretch.  Calibration and warm-up rounds come first and are timed the same
way; the measured rounds are the last ``rounds`` stretches.
"""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

from ..meter import Meter

__all__ = ["RoundReadings"]


class RoundReadings:
    """The wrapped timer of one ``benchmark`` fixture; ``finish()`` puts the timer back."""

    def __init__(self, fixture: Any, meter: Meter) -> None:
        self.fixture = fixture
        self.meter = meter
        self.timer: Callable[[], float] = fixture._timer
        # pytest-benchmark names the timer in its results: the same name.
        self.__name__ = getattr(self.timer, "__name__", "timer")
        self.__module__ = getattr(self.timer, "__module__", __name__)
        # Per timed stretch: its queries and DB time, ns (16 bytes a round).
        self.queries = array.array("q")
        self.db_ns = array.array("q")
        self._start: tuple[int, int] | None = None
        precisions = type(fixture)._precisions
        # The precision is the real timer's: measured through this wrapper it
        # would be calls without pairs.
        precisions[self] = fixture._get_precision(self.timer)
        fixture._timer = self

    def __call__(self) -> float:
        if self._start is None:
            reading = self.meter.snapshot()
            self._start = (reading.queries, reading.total_ns)
            return self.timer()
        value = self.timer()
        reading = self.meter.snapshot()
        queries, total_ns = self._start
        self._start = None
        self.queries.append(reading.queries - queries)
        self.db_ns.append(reading.total_ns - total_ns)
        return value

    def finish(self) -> dict[str, float] | None:
        """Put the timer back; the ``extra_info`` entries, or None if no round was measured."""
        fixture = self.fixture
        fixture._timer = self.timer
        type(fixture)._precisions.pop(self, None)
        stats = getattr(fixture, "stats", None)
        if stats is None:
            return None
        options = getattr(stats, "options", None)
        if isinstance(options, dict) and options.get("timer") is self:
            options["timer"] = self.timer
        rounds = len(getattr(stats.stats, "data", ()))
        if not rounds or rounds > len(self.queries):
            return None
        # As pytest-benchmark's own times: per iteration (one call of the
        # benchmarked function), averaged over the measured rounds.
        calls = rounds * max(1, int(getattr(stats, "iterations", 1) or 1))
        return {
            "queries_per_round": sum(self.queries[-rounds:]) / calls,
            "db_seconds_per_round": sum(self.db_ns[-rounds:]) / calls / 1e9,
        }
