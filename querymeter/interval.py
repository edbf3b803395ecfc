"""Interval: what one meter counted between two snapshots, and the operational laws.

From two snapshots a (earlier) and b (later) of one meter, with Δt = Δuptime,
the operational laws give (DESIGN §2):

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

from .snapshot import Snapshot

__all__ = ["Interval"]

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True, repr=False)
class Interval:
    """What one meter counted between two of its snapshots (DESIGN §2).

    Build it with ``later - earlier`` or ``Interval(earlier, later)``.  The raw
    deltas are exact integers of nanoseconds; the derived figures are floats
    in SI units (seconds, per second), or None where the interval does not
    define them.
    """

    earlier: Snapshot
    later: Snapshot

    def __post_init__(self) -> None:
        earlier, later = self.earlier, self.later
        if not isinstance(earlier, Snapshot) or not isinstance(later, Snapshot):
            raise TypeError(
                "an Interval is made of two Snapshots, not "
                f"{type(earlier).__name__} and {type(later).__name__}"
            )
        if earlier.meter_id != later.meter_id:
            raise ValueError(
                "cannot take an interval between snapshots of different meters "
                f"(meter_id {earlier.meter_id:#x} and {later.meter_id:#x})"
            )
        if later.uptime_ns < earlier.uptime_ns:
            raise ValueError(
                "snapshots in the wrong order: the 'later' one was read "
                f"{earlier.uptime_ns - later.uptime_ns} ns before the 'earlier' one "
                "(write later - earlier)"
            )
        for name in ("queries", "errors", "total_ns", "busy_ns"):
            if getattr(later, name) < getattr(earlier, name):
                raise ValueError(
                    f"{name} decreased between the snapshots: they are not two "
                    "readings of one meter"
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
