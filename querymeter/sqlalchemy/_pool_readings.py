"""The connection pool's readings: PoolSnapshot (one instant) and PoolInterval (between two).

They are to one engine's pool what querymeter.readings' Snapshot and
Interval are to a meter: plain immutable values, no hooks and no I/O.

A pool snapshot holds three kinds of figures.

- Gauges, "now": connections in use, idle and in overflow, checkouts waiting.
- Limits, from the pool's configuration: ``size``, ``max_overflow``, ``timeout_ns``.
- Counters that never decrease: checkouts, waits, timeouts, creations,
  invalidations..., and four times in integer nanoseconds that include the
  time so far of what is still under way, like the meter's ``total_ns``
  (see docs/concepts.md).  So ``Δwait_ns / Δt`` is the mean number of checkouts waiting
  (Little's Law), as ``Δtotal / Δt`` is a meter's mean concurrency.

From two snapshots a (earlier) and b of one instrumented engine, with Δt = Δuptime:

============================  ====================================  =============
figure                        formula                               unit
============================  ====================================  =============
checkout_rate                 Δcheckouts / Δt                       checkouts/s
waited_fraction               Δwaits / Δrequests                    0..1
wait_per_checkout             Δwait_ns / Δrequests                  s
mean_wait                     Δwait_ns / Δwaits                     s
mean_waiting                  Δwait_ns / Δt                         dimensionless
mean_checkout_time            Δcheckout_ns / Δrequests              s
timeout_rate                  Δtimeouts / Δt                        timeouts/s
creation_rate                 Δcreations / Δt                       creations/s
mean_creation_time            Δcreation_ns / Δcreation_attempts     s
mean_in_use                   Δin_use_ns / Δt                       dimensionless
mean_hold_time                Δin_use_ns / Δreleases                s
utilization                   mean_in_use / (size + max_overflow)   0..1
============================  ====================================  =============

where ``requests = checkouts + checkout_failures`` (checkouts that ended, with
a connection or with an exception) and ``creation_attempts = creations +
creation_failures``.  A figure the interval does not define (nothing counted
in its denominator, or Δt = 0, or a pool without limits) is None, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..readings import check_readings

__all__ = ["PoolInterval", "PoolSnapshot"]

_NS_PER_S = 1_000_000_000

# Counters of a PoolSnapshot: they never decrease between two readings of one engine.
_COUNTERS = (
    "checkouts",
    "checkout_failures",
    "checkout_ns",
    "waits",
    "wait_ns",
    "timeouts",
    "creations",
    "creation_failures",
    "creation_ns",
    "invalidations",
    "soft_invalidations",
    "closes",
    "releases",
    "in_use_ns",
)


class PoolSnapshot(NamedTuple):
    """One instrumented engine's pool accounting, read at one instant.

    The counters and ``in_use`` / ``waiting`` are read in one critical section,
    the time of waits, checkouts, creations and connections still under way
    included; ``idle``, ``overflow`` and the limits are read from the pool's
    public methods at the same moment, without the pool's lock, and are None
    for pools that do not have them (NullPool, StaticPool, SingletonThreadPool
    and other non-queue pools).  ``later - earlier`` gives a :class:`PoolInterval`.
    """

    #: Time since the engine was instrumented, ns (the clock of time.monotonic_ns()).
    uptime_ns: int
    #: Connections checked out now (held by the application).
    in_use: int
    #: Connections idle in the pool now; None for pools without a queue.
    idle: int | None
    #: Connections open beyond ``size`` now; None for pools without a queue.
    overflow: int | None
    #: Checkouts blocked waiting for a connection now.
    waiting: int
    #: The pool's size (connections kept open); None for pools without a queue.
    size: int | None
    #: Connections allowed beyond ``size``; -1 for no limit; None for pools without a queue.
    max_overflow: int | None
    #: How long a checkout waits before it times out, ns; None for pools without a queue.
    timeout_ns: int | None
    #: Checkouts that gave the application a connection.
    checkouts: int
    #: Checkouts that raised instead (timeouts included).
    checkout_failures: int
    #: Time spent in checkouts (waiting, creating, pinging), ns, those under way included.
    checkout_ns: int
    #: Checkouts that had to wait for a connection, counted when the wait ended.
    waits: int
    #: Time checkouts spent waiting for a connection, ns, waits under way included.
    wait_ns: int
    #: Checkouts that gave up waiting: ``sqlalchemy.exc.TimeoutError``.
    timeouts: int
    #: Connections the pool opened.
    creations: int
    #: Attempts to open a connection that raised.
    creation_failures: int
    #: Time spent opening connections, ns, attempts under way included.
    creation_ns: int
    #: Connections invalidated (hard: closed at once).
    invalidations: int
    #: Connections soft-invalidated (replaced at their next checkout).
    soft_invalidations: int
    #: Connections the pool closed (invalidated, recycled, overflow discarded, disposed).
    closes: int
    #: Connections the application gave back (checked in, or detached).
    releases: int
    #: Connection-time in use, summed over connections, ns, connections still out included.
    in_use_ns: int
    #: Unix time of the reading, ns (for exporters and reports, not for deltas).
    wall_ns: int
    #: Identity of the instrumented engine that was read: snapshots of different
    #: engines (or of one engine instrumented anew) cannot be subtracted.
    pool_id: int

    def __sub__(self, earlier: object) -> PoolInterval:
        """``later - earlier``: the interval between two snapshots of one engine's pool."""
        if not isinstance(earlier, PoolSnapshot):
            return NotImplemented
        return PoolInterval(earlier, self)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)}" for name in self._fields[:-1])
        return f"PoolSnapshot({fields}, pool_id={self.pool_id:#x})"


@dataclass(frozen=True, slots=True, repr=False)
class PoolInterval:
    """What one engine's pool did between two of its snapshots.

    Build it with ``later - earlier`` or ``PoolInterval(earlier, later)``.  The
    deltas are exact integers (nanoseconds for times); the derived figures are
    floats in SI units, or None where the interval does not define them.
    """

    earlier: PoolSnapshot
    later: PoolSnapshot

    def __post_init__(self) -> None:
        check_readings(
            self.earlier,
            self.later,
            reading=PoolSnapshot,
            interval="a PoolInterval",
            identity="pool_id",
            source="engine",
            counters=_COUNTERS,
        )

    # Raw deltas: exact integers.

    @property
    def duration_ns(self) -> int:
        """Δt = Δuptime, ns."""
        return self.later.uptime_ns - self.earlier.uptime_ns

    @property
    def duration(self) -> float:
        """Δt, s."""
        return self.duration_ns / _NS_PER_S

    @property
    def checkouts(self) -> int:
        """Δcheckouts: checkouts that gave a connection."""
        return self.later.checkouts - self.earlier.checkouts

    @property
    def checkout_failures(self) -> int:
        """Δcheckout_failures: checkouts that raised (timeouts included)."""
        return self.later.checkout_failures - self.earlier.checkout_failures

    @property
    def requests(self) -> int:
        """Δrequests = Δcheckouts + Δcheckout_failures: checkouts that ended either way."""
        return self.checkouts + self.checkout_failures

    @property
    def checkout_ns(self) -> int:
        """Δcheckout_ns: time spent in checkouts, ns."""
        return self.later.checkout_ns - self.earlier.checkout_ns

    @property
    def waits(self) -> int:
        """Δwaits: checkouts whose wait for a connection ended in the interval."""
        return self.later.waits - self.earlier.waits

    @property
    def wait_ns(self) -> int:
        """Δwait_ns: time spent waiting for a connection, summed over checkouts, ns."""
        return self.later.wait_ns - self.earlier.wait_ns

    @property
    def timeouts(self) -> int:
        """Δtimeouts: checkouts that gave up waiting."""
        return self.later.timeouts - self.earlier.timeouts

    @property
    def creations(self) -> int:
        """Δcreations: connections opened."""
        return self.later.creations - self.earlier.creations

    @property
    def creation_failures(self) -> int:
        """Δcreation_failures: attempts to open a connection that raised."""
        return self.later.creation_failures - self.earlier.creation_failures

    @property
    def creation_ns(self) -> int:
        """Δcreation_ns: time spent opening connections, ns."""
        return self.later.creation_ns - self.earlier.creation_ns

    @property
    def invalidations(self) -> int:
        """Δinvalidations: connections invalidated."""
        return self.later.invalidations - self.earlier.invalidations

    @property
    def soft_invalidations(self) -> int:
        """Δsoft_invalidations: connections soft-invalidated."""
        return self.later.soft_invalidations - self.earlier.soft_invalidations

    @property
    def closes(self) -> int:
        """Δcloses: connections the pool closed."""
        return self.later.closes - self.earlier.closes

    @property
    def releases(self) -> int:
        """Δreleases: connections the application gave back."""
        return self.later.releases - self.earlier.releases

    @property
    def in_use_ns(self) -> int:
        """Δin_use_ns: connection-time in use, summed over connections, ns."""
        return self.later.in_use_ns - self.earlier.in_use_ns

    # Derived figures.

    def _per_second(self, count: int) -> float | None:
        duration_ns = self.duration_ns
        return count * _NS_PER_S / duration_ns if duration_ns else None

    @staticmethod
    def _mean_s(total_ns: int, count: int) -> float | None:
        return total_ns / count / _NS_PER_S if count else None

    @property
    def checkout_rate(self) -> float | None:
        """Checkout rate = Δcheckouts / Δt, checkouts/s; None when Δt = 0."""
        return self._per_second(self.checkouts)

    @property
    def waited_fraction(self) -> float | None:
        """Fraction of checkouts that waited = Δwaits / Δrequests, 0..1.

        None when no checkout ended.  (A wait that ends in the interval for a
        checkout that ends after it can take a very short interval past 1.)
        """
        requests = self.requests
        return self.waits / requests if requests else None

    @property
    def wait_per_checkout(self) -> float | None:
        """Mean wait per checkout = Δwait_ns / Δrequests, s, those that did not wait included.

        The delay that waiting for a connection adds to an average checkout.
        None when no checkout ended.
        """
        return self._mean_s(self.wait_ns, self.requests)

    @property
    def mean_wait(self) -> float | None:
        """Mean length of a wait = Δwait_ns / Δwaits, s (Go's WaitDuration / WaitCount).

        None when no wait ended.
        """
        return self._mean_s(self.wait_ns, self.waits)

    @property
    def mean_waiting(self) -> float | None:
        """Mean number of checkouts waiting = Δwait_ns / Δt (Little's Law); None when Δt = 0."""
        duration_ns = self.duration_ns
        return self.wait_ns / duration_ns if duration_ns else None

    @property
    def mean_checkout_time(self) -> float | None:
        """Mean checkout time = Δcheckout_ns / Δrequests, s (waiting, creating, pinging).

        None when no checkout ended.
        """
        return self._mean_s(self.checkout_ns, self.requests)

    @property
    def timeout_rate(self) -> float | None:
        """Timeout rate = Δtimeouts / Δt, timeouts/s; None when Δt = 0."""
        return self._per_second(self.timeouts)

    @property
    def creation_rate(self) -> float | None:
        """Creation rate = Δcreations / Δt, connections/s; None when Δt = 0."""
        return self._per_second(self.creations)

    @property
    def mean_creation_time(self) -> float | None:
        """Mean time to open a connection = Δcreation_ns / (Δcreations + Δcreation_failures), s.

        None when no attempt to open one ended.
        """
        return self._mean_s(self.creation_ns, self.creations + self.creation_failures)

    @property
    def mean_in_use(self) -> float | None:
        """Mean connections in use = Δin_use_ns / Δt (Little's Law), dimensionless.

        None when Δt = 0.
        """
        duration_ns = self.duration_ns
        return self.in_use_ns / duration_ns if duration_ns else None

    @property
    def mean_hold_time(self) -> float | None:
        """Mean time the application holds a connection = Δin_use_ns / Δreleases, s.

        None when no connection was given back.
        """
        return self._mean_s(self.in_use_ns, self.releases)

    @property
    def utilization(self) -> float | None:
        """Pool utilization = mean_in_use / (size + max_overflow), 0..1.

        The capacity is the later snapshot's; None for a pool without a limit
        (no queue, ``max_overflow=-1``, or ``pool_size=0``) or when Δt = 0.
        """
        size, max_overflow = self.later.size, self.later.max_overflow
        mean_in_use = self.mean_in_use
        if size is None or max_overflow is None or max_overflow < 0 or mean_in_use is None:
            return None
        capacity = size + max_overflow
        return mean_in_use / capacity if capacity > 0 else None

    def __repr__(self) -> str:
        def show(value: float | None) -> str:
            return "None" if value is None else f"{value:.6g}"

        return (
            f"PoolInterval(duration={show(self.duration)} s, checkouts={self.checkouts}, "
            f"waits={self.waits}, timeouts={self.timeouts}, "
            f"waited_fraction={show(self.waited_fraction)}, "
            f"wait_per_checkout={show(self.wait_per_checkout)} s, "
            f"mean_in_use={show(self.mean_in_use)}, "
            f"mean_hold_time={show(self.mean_hold_time)} s, "
            f"creations={self.creations}, invalidations={self.invalidations})"
        )
