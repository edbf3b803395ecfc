"""Readings of a meter: a Snapshot (every counter at one instant) and an Interval (between two).

A Snapshot is what ``meter.snapshot()`` returns; ``later - earlier`` is the
Interval between two snapshots of one meter, with the operational laws.

From two snapshots a (earlier) and b (later) of one meter, with Δt = Δuptime,
the operational laws give (see docs/laws.md):

==========================  ============================  ==============
figure                      formula                       unit
==========================  ============================  ==============
throughput X                Δqueries / Δt                 queries/s
concurrency N               Δtotal / Δt                   dimensionless
response_time R             Δtotal / Δqueries             s
utilization U               Δbusy / Δt                    0..1
service_time S              Δbusy / Δqueries              s
error_rate E                Δerrors / Δt                  errors/s
concurrency_when_busy       Δtotal / Δbusy = N / U        dimensionless
==========================  ============================  ==============

Little's Law N = X·R and the Utilization Law U = X·S hold by construction.
A figure that the interval does not define (no completed query, or Δt = 0)
is None, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = ["Interval", "Snapshot", "check_readings"]


class Snapshot(NamedTuple):
    """Every counter of one meter, read at one instant (see docs/concepts.md).

    The time of queries still executing is included: a query that started 0.5 s
    ago shows in ``total_ns`` and ``busy_ns`` with its 0.5 s so far.  All times
    are integer nanoseconds of the meter's monotonic clock, except ``wall_ns``.
    A snapshot is an immutable tuple (like ``os.stat_result``): cheap to take,
    hashable, picklable.  ``later - earlier`` gives an :class:`Interval`.
    """

    #: Time since the meter started, ns; two readings bound an interval.
    uptime_ns: int
    #: Queries that have completed, successfully or with an error.
    queries: int
    #: Of those, the ones that raised.
    errors: int
    #: Queries executing at the instant of the reading.
    concurrency: int
    #: Sum of all queries' response times so far, ns, in-flight time included.
    total_ns: int
    #: Time with at least one query executing, ns, up to the reading.
    busy_ns: int
    #: Unix time of the reading, ns (for exporters and reports, not for deltas).
    wall_ns: int
    #: Identity of the meter (and of its life since the last fork) that was
    #: read; snapshots of different meters cannot be subtracted.
    meter_id: int

    def __sub__(self, earlier: object) -> Interval:
        """``later - earlier``: the interval between two snapshots of one meter."""
        if not isinstance(earlier, Snapshot):
            return NotImplemented
        return Interval.between(earlier, self)

    def __repr__(self) -> str:
        return (
            f"Snapshot(uptime_ns={self.uptime_ns}, queries={self.queries}, "
            f"errors={self.errors}, concurrency={self.concurrency}, "
            f"total_ns={self.total_ns}, busy_ns={self.busy_ns}, wall_ns={self.wall_ns}, "
            f"meter_id={self.meter_id:#x})"
        )


_NS_PER_S = 1_000_000_000


def check_readings(
    earlier: Any,
    later: Any,
    *,
    reading: type[Any],
    interval: str,
    identity: str,
    source: str,
    counters: tuple[str, ...],
) -> None:
    """Refuse two readings that are not two readings of one source, in this order.

    ``reading`` is their type, ``identity`` the field naming their source (a
    meter, an engine's pool), ``counters`` the fields that never decrease.
    """
    name = reading.__name__
    if not isinstance(earlier, reading) or not isinstance(later, reading):
        raise TypeError(
            f"{interval} is made of two {name}s, not "
            f"{type(earlier).__name__} and {type(later).__name__}"
        )
    first, second = getattr(earlier, identity), getattr(later, identity)
    if first != second:
        raise ValueError(
            f"cannot take an interval between {name}s of different {source}s "
            f"({identity} {first:#x} and {second:#x})"
        )
    gap_ns = earlier.uptime_ns - later.uptime_ns
    if gap_ns > 0:
        raise ValueError(
            f"{name}s in the wrong order: the 'later' one was read {gap_ns} ns before "
            "the 'earlier' one (write later - earlier)"
        )
    for counter in counters:
        if getattr(later, counter) < getattr(earlier, counter):
            raise ValueError(
                f"{counter} decreased between the {name}s: they are not two readings "
                f"of one {source}"
            )


@dataclass(frozen=True, slots=True, repr=False)
class Interval:
    """What one meter counted between two of its snapshots (see docs/laws.md).

    Build it with ``later - earlier`` or ``Interval(earlier, later)``.  The raw
    deltas are exact integers of nanoseconds; the derived figures are floats
    in SI units (seconds, per second), or None where the interval does not
    define them.
    """

    earlier: Snapshot
    later: Snapshot

    def __post_init__(self) -> None:
        check_readings(
            self.earlier,
            self.later,
            reading=Snapshot,
            interval="an Interval",
            identity="meter_id",
            source="meter",
            counters=("queries", "errors", "total_ns", "busy_ns"),
        )

    @classmethod
    def between(cls, earlier: Snapshot, later: Snapshot) -> Interval:
        """The interval from ``earlier`` to ``later`` (same as ``later - earlier``)."""
        return cls(earlier, later)

    # Raw deltas: exact integers.

    @property
    def duration_ns(self) -> int:
        """Δt = Δuptime, ns."""
        return self.later.uptime_ns - self.earlier.uptime_ns

    @property
    def queries(self) -> int:
        """Δqueries: queries completed in the interval."""
        return self.later.queries - self.earlier.queries

    @property
    def errors(self) -> int:
        """Δerrors: of those, the ones that raised."""
        return self.later.errors - self.earlier.errors

    @property
    def total_ns(self) -> int:
        """Δtotal: query time spent in the interval, summed over queries, ns."""
        return self.later.total_ns - self.earlier.total_ns

    @property
    def busy_ns(self) -> int:
        """Δbusy: time in the interval with at least one query executing, ns."""
        return self.later.busy_ns - self.earlier.busy_ns

    # Derived figures.

    @property
    def duration(self) -> float:
        """Δt, s."""
        return self.duration_ns / _NS_PER_S

    @property
    def throughput(self) -> float | None:
        """Throughput X = Δqueries / Δt, queries/s; None when Δt = 0."""
        duration_ns = self.duration_ns
        return self.queries * _NS_PER_S / duration_ns if duration_ns else None

    @property
    def concurrency(self) -> float | None:
        """Mean concurrency N = Δtotal / Δt (Little's Law), dimensionless; None when Δt = 0."""
        duration_ns = self.duration_ns
        return self.total_ns / duration_ns if duration_ns else None

    @property
    def response_time(self) -> float | None:
        """Mean response time R = Δtotal / Δqueries, s; None when no query completed."""
        queries = self.queries
        return self.total_ns / queries / _NS_PER_S if queries else None

    @property
    def utilization(self) -> float | None:
        """Utilization U = Δbusy / Δt, 0..1; None when Δt = 0."""
        duration_ns = self.duration_ns
        return self.busy_ns / duration_ns if duration_ns else None

    @property
    def service_time(self) -> float | None:
        """Mean service time S = Δbusy / Δqueries (Utilization Law), s.

        None when no query completed.
        """
        queries = self.queries
        return self.busy_ns / queries / _NS_PER_S if queries else None

    @property
    def error_rate(self) -> float | None:
        """Error rate E = Δerrors / Δt, errors/s; None when Δt = 0."""
        duration_ns = self.duration_ns
        return self.errors * _NS_PER_S / duration_ns if duration_ns else None

    @property
    def concurrency_when_busy(self) -> float | None:
        """Mean concurrency while busy N / U = Δtotal / Δbusy, dimensionless.

        None when no query ran in the interval.
        """
        busy_ns = self.busy_ns
        return self.total_ns / busy_ns if busy_ns else None

    def __repr__(self) -> str:
        def show(value: float | None) -> str:
            return "None" if value is None else f"{value:.6g}"

        return (
            f"Interval(duration={show(self.duration)} s, queries={self.queries}, "
            f"errors={self.errors}, throughput={show(self.throughput)}/s, "
            f"concurrency={show(self.concurrency)}, "
            f"response_time={show(self.response_time)} s, "
            f"utilization={show(self.utilization)}, "
            f"service_time={show(self.service_time)} s)"
        )
