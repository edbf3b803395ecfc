"""Readings of a statement table: each statement's figures at one instant, or over an interval.

``table.snapshot()`` gives a :class:`StatementsSnapshot`; ``later - earlier``
gives a :class:`StatementsInterval`: the calls, errors, time, rows and
latency quantiles of what ran between the two.  Both are read with the same
``top()``.

Latency quantiles come from each statement's log-linear histogram: values
below 64 ns are exact, and above that every power of two is split into 32
buckets whose midpoint is within 1/64 (1.6 %) of any value in them.  A
quantile is the nearest-rank quantile of the recorded durations (the smallest
duration with at least that share of the calls at or below it), to within
that relative error, and never outside the statement's min and max.
"""

from __future__ import annotations

import array
import datetime
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._fingerprint import statement_id

__all__ = [
    "ORDERS",
    "StatementStats",
    "StatementsInterval",
    "StatementsSnapshot",
    "bucket_bounds",
]

SUB_BITS = 5
SUB = 1 << SUB_BITS
LINEAR = 2 * SUB
#: How far a quantile may be from the true one, relative to it.
RELATIVE_ERROR = 1 / 64

#: What ``top(by=...)`` sorts by: the figure, largest first.
ORDERS = ("total", "calls", "mean", "max", "p99", "errors", "rows")


def bucket_bounds(bucket: int) -> tuple[int, int]:
    """The durations a histogram bucket holds, ns: [low, high)."""
    if bucket < LINEAR:
        return bucket, bucket + 1
    power, sub = divmod(bucket - LINEAR, SUB)
    width = 1 << (power + 1)
    low = (SUB + sub) * width
    return low, low + width


def _midpoint(bucket: int) -> int:
    low, high = bucket_bounds(bucket)
    return (low + high - 1) // 2 if high - low > 1 else low


def _counts(histogram: bytes) -> memoryview:
    return memoryview(histogram).cast("Q")


@dataclass(frozen=True, slots=True)
class StatementStats:
    """The figures of one statement (one fingerprint), at an instant or over an interval.

    Times are integer nanoseconds as the meter counted them.  ``rows`` is the
    sum of the row counts the cursor reported (``rowcount`` ≥ 0), None when
    it never knew.  ``first_seen_ns``/``last_seen_ns`` are Unix times in ns of
    the first and last call (``first_seen``/``last_seen`` as datetimes).
    """

    fingerprint: str
    sample_sql: str
    calls: int
    errors: int
    total_ns: int
    min_ns: int
    max_ns: int
    rows: int | None
    first_seen_ns: int
    last_seen_ns: int
    #: Σ duration², exact: with calls and total_ns, the exact variance.
    total_sq: int = field(repr=False)
    #: The histogram: its lowest bucket and its counts (native uint64).
    histogram_lo: int = field(repr=False)
    histogram: bytes = field(repr=False)
    #: Tells a statement from one of the same fingerprint made again after eviction.
    serial: int = field(repr=False, default=0)

    @property
    def statement_id(self) -> str:
        """The fingerprint's stable short id (see :func:`querymeter.statement_id`)."""
        return statement_id(self.fingerprint)

    @property
    def mean_ns(self) -> float | None:
        """Mean duration, ns; None without calls."""
        return self.total_ns / self.calls if self.calls else None

    @property
    def stddev_ns(self) -> float | None:
        """Population standard deviation of the durations, ns (as pg_stat_statements gives it)."""
        n = self.calls
        if not n:
            return None
        # Exact in integers: n²·variance = n·Σx² - (Σx)².
        return math.sqrt(max(0, n * self.total_sq - self.total_ns * self.total_ns)) / n

    @property
    def first_seen(self) -> datetime.datetime | None:
        """Wall-clock time of the first call (UTC), None without calls."""
        return _datetime(self.first_seen_ns) if self.calls else None

    @property
    def last_seen(self) -> datetime.datetime | None:
        """Wall-clock time of the last call (UTC), None without calls."""
        return _datetime(self.last_seen_ns) if self.calls else None

    def quantile(self, q: float) -> int | None:
        """The q-quantile of the durations (0 < q ≤ 1), ns, within 1.6 %; None without calls."""
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q <= 1:
            raise ValueError(f"q must be a number in (0, 1], not {q!r}")
        counts = _counts(self.histogram)
        recorded = sum(counts)
        if not recorded:
            return None
        rank = max(1, math.ceil(q * recorded - 1e-9))
        seen = 0
        for index, count in enumerate(counts):
            seen += count
            if seen >= rank:
                value = _midpoint(self.histogram_lo + index)
                return min(max(value, self.min_ns), self.max_ns)
        return self.max_ns  # unreachable: the counts add up to `recorded`

    @property
    def p50_ns(self) -> int | None:
        """Median duration, ns (within 1.6 %)."""
        return self.quantile(0.5)

    @property
    def p95_ns(self) -> int | None:
        """95th percentile duration, ns (within 1.6 %)."""
        return self.quantile(0.95)

    @property
    def p99_ns(self) -> int | None:
        """99th percentile duration, ns (within 1.6 %)."""
        return self.quantile(0.99)

    @property
    def p999_ns(self) -> int | None:
        """99.9th percentile duration, ns (within 1.6 %)."""
        return self.quantile(0.999)

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain data (for JSON)."""
        return {
            "fingerprint": self.fingerprint,
            "statement_id": self.statement_id,
            "sample_sql": self.sample_sql,
            "calls": self.calls,
            "errors": self.errors,
            "total_ns": self.total_ns,
            "mean_ns": self.mean_ns,
            "stddev_ns": self.stddev_ns,
            "min_ns": self.min_ns,
            "max_ns": self.max_ns,
            "p50_ns": self.p50_ns,
            "p95_ns": self.p95_ns,
            "p99_ns": self.p99_ns,
            "p999_ns": self.p999_ns,
            "rows": self.rows,
            "first_seen_ns": self.first_seen_ns,
            "last_seen_ns": self.last_seen_ns,
        }

    def _sort_key(self, by: str) -> float:
        value: float | None
        if by == "total":
            value = self.total_ns
        elif by == "calls":
            value = self.calls
        elif by == "mean":
            value = self.mean_ns
        elif by == "max":
            value = self.max_ns
        elif by == "p99":
            value = self.p99_ns
        elif by == "errors":
            value = self.errors
        else:
            value = self.rows
        return -1.0 if value is None else float(value)

    def __sub__(self, earlier: StatementStats) -> StatementStats:
        """The figures of the calls between ``earlier`` and this reading of the same statement."""
        if not isinstance(earlier, StatementStats):
            return NotImplemented
        if earlier.fingerprint != self.fingerprint or earlier.serial != self.serial:
            # Another life of the fingerprint (evicted, then seen again): all of it is new.
            return self
        return _minus(self, earlier)


def _minus(later: StatementStats, earlier: StatementStats) -> StatementStats:
    """Later's figures less earlier's: what was added in between."""
    calls = later.calls - earlier.calls
    if calls <= 0:
        return _empty(later)
    lo, counts = _difference(later, earlier)
    min_ns, max_ns = later.min_ns, later.max_ns
    if earlier.calls and counts:
        # An interval's extremes are known to the histogram's precision only.
        min_ns = min(max(_midpoint(lo), later.min_ns), later.max_ns)
        max_ns = min(max(_midpoint(lo + len(counts) - 1), later.min_ns), later.max_ns)
    return StatementStats(
        fingerprint=later.fingerprint,
        sample_sql=later.sample_sql,
        calls=calls,
        errors=later.errors - earlier.errors,
        total_ns=later.total_ns - earlier.total_ns,
        min_ns=min_ns,
        max_ns=max_ns,
        rows=None if later.rows is None else later.rows - (earlier.rows or 0),
        first_seen_ns=later.first_seen_ns if not earlier.calls else earlier.last_seen_ns,
        last_seen_ns=later.last_seen_ns,
        total_sq=later.total_sq - earlier.total_sq,
        histogram_lo=lo,
        histogram=_pack(counts),
        serial=later.serial,
    )


def _datetime(ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)


def _pack(counts: list[int]) -> bytes:
    return array.array("Q", counts).tobytes()


def _difference(later: StatementStats, earlier: StatementStats) -> tuple[int, list[int]]:
    """Later's histogram minus earlier's, on later's window, cut to its non-empty buckets.

    Earlier's buckets below the later window were collapsed into its lowest
    bucket by the table meanwhile: they are here too, so the difference is exact.
    """
    lo = later.histogram_lo
    counts = list(_counts(later.histogram))
    before = _counts(earlier.histogram)
    offset = earlier.histogram_lo - lo
    if counts and offset < 0:
        # Earlier's buckets up to the window's lowest all count in that lowest.
        counts[0] -= sum(before[: 1 - offset])
        before, offset = before[1 - offset :], 1
    end = min(offset + len(before), len(counts))
    if end > offset:
        counts[offset:end] = [
            a - b for a, b in zip(counts[offset:end], before[: end - offset], strict=True)
        ]
    return _trim(lo, [count if count > 0 else 0 for count in counts])


def _trim(lo: int, counts: list[int]) -> tuple[int, list[int]]:
    """A histogram cut to its first and last non-empty bucket (all of them between)."""
    first = next((i for i, count in enumerate(counts) if count), None)
    if first is None:
        return 0, []
    last = len(counts) - 1
    while not counts[last]:
        last -= 1
    return lo + first, counts[first : last + 1]


def _empty(stats: StatementStats) -> StatementStats:
    return StatementStats(
        fingerprint=stats.fingerprint,
        sample_sql=stats.sample_sql,
        calls=0,
        errors=0,
        total_ns=0,
        min_ns=0,
        max_ns=0,
        rows=None,
        first_seen_ns=0,
        last_seen_ns=0,
        total_sq=0,
        histogram_lo=0,
        histogram=b"",
        serial=stats.serial,
    )


def _stats(row: tuple[Any, ...]) -> StatementStats:
    """A row of the core's reading as StatementStats."""
    (fingerprint, sample_sql, serial, calls, errors, total, total_sq, min_ns, max_ns, rows,
     rows_calls, first_seen, last_seen, lo, histogram) = row  # fmt: skip
    return StatementStats(
        fingerprint=fingerprint,
        sample_sql=sample_sql,
        calls=calls,
        errors=errors,
        total_ns=total,
        min_ns=min_ns,
        max_ns=max_ns,
        rows=rows if rows_calls else None,
        first_seen_ns=first_seen,
        last_seen_ns=last_seen,
        total_sq=total_sq,
        histogram_lo=lo,
        histogram=histogram,
        serial=serial,
    )


class _Reading:
    """What a snapshot and an interval of a statement table share: lookup and ``top()``."""

    __slots__ = ("_by_fingerprint", "dropped", "evicted", "statements", "table_id", "untexted")

    #: Every statement the table held, largest total time first.
    statements: tuple[StatementStats, ...]
    #: The figures of the statements evicted to keep the table bounded.
    evicted: StatementStats
    #: The queries counted without statement text (``meter.track()`` without sql, say).
    untexted: StatementStats
    #: How many statements were evicted.
    dropped: int
    #: Identity of the table read (a new table after disable/enable or fork).
    table_id: int

    def __init__(
        self,
        statements: tuple[StatementStats, ...],
        evicted: StatementStats,
        untexted: StatementStats,
        dropped: int,
        table_id: int,
    ) -> None:
        self.statements = tuple(sorted(statements, key=lambda s: (-s.total_ns, s.fingerprint)))
        self.evicted = evicted
        self.untexted = untexted
        self.dropped = dropped
        self.table_id = table_id
        self._by_fingerprint = {s.fingerprint: s for s in self.statements}

    def __len__(self) -> int:
        return len(self.statements)

    def __iter__(self) -> Iterator[StatementStats]:
        return iter(self.statements)

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._by_fingerprint

    def __getitem__(self, fingerprint: str) -> StatementStats:
        try:
            return self._by_fingerprint[fingerprint]
        except KeyError:
            raise KeyError(f"no statement with fingerprint {fingerprint!r}") from None

    def get(self, fingerprint: str) -> StatementStats | None:
        """The statement with this fingerprint, or None."""
        return self._by_fingerprint.get(fingerprint)

    @property
    def calls(self) -> int:
        """All calls: the statements', the evicted ones' and those without text."""
        return sum(s.calls for s in self.statements) + self.evicted.calls + self.untexted.calls

    @property
    def errors(self) -> int:
        """All errors, as ``calls`` counts them."""
        return sum(s.errors for s in self.statements) + self.evicted.errors + self.untexted.errors

    @property
    def total_ns(self) -> int:
        """All time, ns, as ``calls`` counts it."""
        return (
            sum(s.total_ns for s in self.statements)
            + self.evicted.total_ns
            + self.untexted.total_ns
        )

    def top(self, n: int = 10, by: str = "total") -> list[StatementStats]:
        """The ``n`` statements with the largest ``by``: "total" (time), "calls", "mean",
        "max", "p99", "errors" or "rows"; ties in fingerprint order."""
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n}")
        if by not in ORDERS:
            raise ValueError(f"by must be one of {', '.join(ORDERS)}, not {by!r}")
        ranked = sorted(self.statements, key=lambda s: (-s._sort_key(by), s.fingerprint))
        return ranked[:n]

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} statements={len(self.statements)} calls={self.calls} "
            f"dropped={self.dropped}>"
        )

    def as_dict(self) -> dict[str, Any]:
        """The reading as plain data (for JSON)."""
        return {
            "statements": [s.as_dict() for s in self.statements],
            "evicted": self.evicted.as_dict(),
            "untexted": self.untexted.as_dict(),
            "dropped": self.dropped,
        }


class StatementsSnapshot(_Reading):
    """Every statement's figures at one instant, since the table started.

    ``later - earlier`` (two snapshots of one table) gives a
    :class:`StatementsInterval`.
    """

    __slots__ = ("wall_ns",)

    #: Unix time of the reading, ns.
    wall_ns: int

    def __init__(
        self,
        statements: tuple[StatementStats, ...],
        evicted: StatementStats,
        untexted: StatementStats,
        dropped: int,
        table_id: int,
        wall_ns: int,
    ) -> None:
        super().__init__(statements, evicted, untexted, dropped, table_id)
        self.wall_ns = wall_ns

    def __sub__(self, earlier: StatementsSnapshot) -> StatementsInterval:
        if not isinstance(earlier, StatementsSnapshot):
            return NotImplemented
        if earlier.table_id != self.table_id:
            raise ValueError("cannot subtract readings of different statement tables")
        if earlier.wall_ns > self.wall_ns or earlier.dropped > self.dropped:
            raise ValueError("the earlier reading must be subtracted from the later one")
        statements = []
        for stats in self.statements:
            before = earlier.get(stats.fingerprint)
            during = stats - before if before is not None else stats
            if during.calls:
                statements.append(during)
        # A statement evicted meanwhile took its calls from before the interval
        # into `evicted` too: those are not the interval's.
        evicted = _minus(self.evicted, earlier.evicted)
        for before in earlier.statements:
            now = self.get(before.fingerprint)
            if now is None or now.serial != before.serial:
                evicted = _minus(evicted, before)
        return StatementsInterval(
            tuple(statements),
            evicted,
            _minus(self.untexted, earlier.untexted),
            self.dropped - earlier.dropped,
            self.table_id,
            earlier.wall_ns,
            self.wall_ns,
        )


class StatementsInterval(_Reading):
    """The statements that ran between two snapshots, with the figures of those calls only.

    A statement's ``min_ns`` and ``max_ns`` over an interval come from its
    histogram (within 1.6 %), unless it was first seen in the interval; its
    ``last_seen`` is its last call, and its ``first_seen`` its first call if
    that was in the interval, else its last call before the interval.
    ``evicted`` holds what was evicted meanwhile: a statement evicted during
    the interval has its calls there, not in ``statements``.
    """

    __slots__ = ("end_wall_ns", "start_wall_ns")

    start_wall_ns: int
    end_wall_ns: int

    def __init__(
        self,
        statements: tuple[StatementStats, ...],
        evicted: StatementStats,
        untexted: StatementStats,
        dropped: int,
        table_id: int,
        start_wall_ns: int,
        end_wall_ns: int,
    ) -> None:
        super().__init__(statements, evicted, untexted, dropped, table_id)
        self.start_wall_ns = start_wall_ns
        self.end_wall_ns = end_wall_ns
