"""Measured levels with counters chosen by hand, and the figures they must give, worked out here."""

from __future__ import annotations

from dataclasses import dataclass

from querymeter.readings import Interval, Snapshot
from querymeter.report import Measurement

SECOND = 10**9


@dataclass(frozen=True)
class Counters:
    """One level's counter deltas, and the figures the operational laws give for them."""

    threads: int
    duration_ns: int
    queries: int
    errors: int
    total_ns: int
    busy_ns: int
    first_error: str | None = None

    def measurement(self) -> Measurement:
        earlier = Snapshot(5 * SECOND, 7, 0, 0, 3 * SECOND, 2 * SECOND, 0, 1)
        later = Snapshot(
            earlier.uptime_ns + self.duration_ns,
            earlier.queries + self.queries,
            earlier.errors + self.errors,
            0,
            earlier.total_ns + self.total_ns,
            earlier.busy_ns + self.busy_ns,
            0,
            1,
        )
        return Measurement(self.threads, Interval(earlier, later), self.first_error)


#: Four levels of 2 s each; the last completed no query, so R and S are undefined there.
LEVELS = [
    Counters(1, 2 * SECOND, 1000, 0, 1 * SECOND, 1 * SECOND),
    Counters(2, 2 * SECOND, 3000, 0, 3 * SECOND, 2 * SECOND),
    Counters(4, 2 * SECOND, 5000, 3, 7 * SECOND, 2 * SECOND, "OperationalError: a|b `x`\nmore"),
    Counters(8, 2 * SECOND, 0, 0, 16 * SECOND, 2 * SECOND),
]
