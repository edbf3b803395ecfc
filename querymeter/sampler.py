"""Sampler: a meter's snapshots at a fixed period, in a background thread, as Intervals."""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from types import TracebackType

from . import _faults
from .meter import Meter, meter_argument
from .readings import Interval, Snapshot

__all__ = ["Sampler"]


class Sampler:
    """Sampler(meter=None, *, period=1.0, capacity=3600)

    Takes a snapshot of ``meter`` (the default meter unless given) every
    ``period`` seconds in a daemon thread and keeps the :class:`Interval`
    between each snapshot and the one before: one interval per period, in
    order, contiguous.  Memory is bounded: the newest ``capacity`` intervals
    are kept, older ones are dropped and counted in ``dropped``.  Taking a
    snapshot is all the sampler does to the meter, so it never blocks a query.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`::

        with Sampler(meter, period=0.5) as sampler:
            run_load()
        model = querymeter.usl.fit(sampler.points())

    Iterating a sampler yields its intervals as they arrive (those still kept
    first) until it stops.  A sampler runs once; in a child process forked
    while it runs, it has stopped (the meter starts again from zero there):
    start a new one in the child.
    """

    def __init__(
        self, meter: Meter | None = None, *, period: float = 1.0, capacity: int = 3600
    ) -> None:
        meter = meter_argument(meter)
        if isinstance(period, bool) or not isinstance(period, (int, float)):
            raise TypeError(f"period must be a number of seconds, not {type(period).__name__}")
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"period must be finite and > 0 seconds, got {period!r}")
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity!r}")
        self._meter = meter
        self._period_ns = max(1, round(period * 1e9))
        self._intervals: deque[Interval] = deque(maxlen=capacity)
        self._produced = 0
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        _live_samplers.add(self)

    @property
    def meter(self) -> Meter:
        """The meter being sampled."""
        return self._meter

    @property
    def period(self) -> float:
        """Seconds between two snapshots."""
        return self._period_ns / 1e9

    @property
    def dropped(self) -> int:
        """Intervals dropped because more than ``capacity`` were produced."""
        with self._condition:
            return self._produced - len(self._intervals)

    @property
    def running(self) -> bool:
        """Whether the sampler is taking snapshots."""
        return self._running

    def start(self) -> Sampler:
        """Start sampling; returns the sampler.  A sampler runs once."""
        with self._condition:
            if self._thread is not None:
                raise RuntimeError("this sampler has already been started; a sampler runs once")
            self._running = True
            first = self._meter.snapshot()
            self._thread = threading.Thread(
                target=self._run, args=(first,), name="querymeter-sampler", daemon=True
            )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling and wait for the thread to end; does nothing if not running."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def intervals(self) -> list[Interval]:
        """The intervals kept, oldest first."""
        with self._condition:
            return list(self._intervals)

    def latest(self) -> Interval | None:
        """The newest interval, or None before the first period has passed."""
        with self._condition:
            return self._intervals[-1] if self._intervals else None

    def points(self) -> list[tuple[float, float]]:
        """(concurrency N, throughput X) of each kept interval in which queries completed.

        The points a Universal Scalability Law fit takes (``usl.fit``); idle
        intervals say nothing about scalability and are left out.
        """
        points = []
        for interval in self.intervals():
            concurrency, throughput = interval.concurrency, interval.throughput
            if interval.queries and concurrency and throughput:
                points.append((concurrency, throughput))
        return points

    def __iter__(self) -> Iterator[Interval]:
        with self._condition:
            position = self._produced - len(self._intervals)
        while True:
            with self._condition:
                while position >= self._produced and self._running:
                    self._condition.wait()
                if position >= self._produced:
                    return
                oldest = self._produced - len(self._intervals)
                # A reader that fell behind by more than the capacity skips
                # what was dropped rather than stalling the sampler.
                position = max(position, oldest)
                interval = self._intervals[position - oldest]
            position += 1
            yield interval

    def _after_fork_in_child(self) -> None:
        # The sampling thread is the parent's: in the child the sampler has
        # stopped (its meter starts again from zero there), and a lock that
        # another thread of the parent held at the fork would never be released.
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self._stopping.set()
        self._running = False

    def _run(self, first: Snapshot) -> None:
        previous = first
        deadline = time.monotonic_ns() + self._period_ns
        try:
            while not self._stopping.wait(max(0, deadline - time.monotonic_ns()) / 1e9):
                current = self._meter.snapshot()
                interval = current - previous
                previous = current
                with self._condition:
                    self._intervals.append(interval)
                    self._produced += 1
                    self._condition.notify_all()
                deadline += self._period_ns
                now = time.monotonic_ns()
                if deadline < now:
                    # Starved (a long pause): skip the missed periods instead
                    # of bursting through them; the next interval is longer.
                    deadline = now + self._period_ns
        except Exception as exc:  # noqa: BLE001 - a sampler's fault must not go unnoticed, nor raise
            _faults.report("sampler stopped on an error", exc)
        finally:
            with self._condition:
                self._running = False
                self._condition.notify_all()


# Every live sampler, so that a forked child can renew their locks.
_live_samplers: weakref.WeakSet[Sampler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sampler in list(_live_samplers):
        sampler._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
