"""Snapshot: every counter of one meter, read at one instant."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .interval import Interval

__all__ = ["Snapshot"]


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
        # Imported here: interval.py builds on snapshots, not the other way.
        from .interval import Interval

        return Interval.between(earlier, self)

    def __repr__(self) -> str:
        return (
            f"Snapshot(uptime_ns={self.uptime_ns}, queries={self.queries}, "
            f"errors={self.errors}, concurrency={self.concurrency}, "
            f"total_ns={self.total_ns}, busy_ns={self.busy_ns}, wall_ns={self.wall_ns}, "
            f"meter_id={self.meter_id:#x})"
        )
