"""What every format of the report says: the levels, what their columns mean, the model in words.

:func:`read_fit` (from the laws, :mod:`querymeter.usl._reading`, where
:mod:`querymeter.scaling` reads it too) says whether a Universal
Scalability Law model describes the measured points, what it means if it
does, and what to measure next; the text, the JSON, the Markdown and the
HTML all say the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..readings import Interval
from ..usl._reading import (
    ABOVE_MAX_TOLERANCE,
    FAR_PEAK,
    FLAT_GROWTH,
    POOR_R_SQUARED,
    ROUGH_R_SQUARED,
    FitReading,
    qps,
    read_fit,
)

__all__ = [
    "ABOVE_MAX_TOLERANCE",
    "COLUMNS",
    "FAR_PEAK",
    "FLAT_GROWTH",
    "POOR_R_SQUARED",
    "ROUGH_R_SQUARED",
    "FitReading",
    "Measurement",
    "level_points",
    "qps",
    "read_fit",
]


@dataclass(frozen=True)
class Measurement:
    """One measured level, as the report shows it: its worker threads and the interval seen."""

    threads: int
    interval: Interval
    #: The first error raised during the level, as "Type: message"; None when there was none.
    first_error: str | None = None


#: What each column of the levels table means, in the terminal and in the report.
COLUMNS = (
    ("threads", "worker threads running the shop workload"),
    (
        "N",
        "mean concurrency: queries in flight on average, the load the database saw "
        "(total query time / elapsed time)",
    ),
    ("X", "throughput: queries completed per second"),
    ("R", "mean response time of a query, ms (total query time / queries); Little's Law: N = X·R"),
    (
        "U",
        "utilization: the share of the time at least one query was running "
        "(busy time / elapsed time)",
    ),
    ("S", "mean service time: busy time per query, ms; Utilization Law: U = X·S"),
    ("queries", "queries completed in the level's measured time"),
    ("errors", "queries that raised an error (the workload is written to raise none)"),
)


def level_points(levels: Sequence[Measurement]) -> list[tuple[float, float]]:
    """The (N, X) points of the levels that completed queries: what the model is fitted to."""
    return [
        (level.interval.concurrency, level.interval.throughput)
        for level in levels
        if level.interval.queries
        and level.interval.concurrency is not None
        and level.interval.throughput is not None
    ]
