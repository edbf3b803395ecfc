"""Workloads whose figures are known beforehand: sleeps inside meter.track(), a lock in rounds."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from querymeter.meter import Meter


def sleeper(meter: Meter, seconds: float):  # type: ignore[no-untyped-def]
    """A workload of one query that sleeps ``seconds``: X = workers / seconds, N = workers."""

    def workload() -> None:
        with meter.track():
            time.sleep(seconds)

    return workload


@dataclass(frozen=True)
class Rounds:
    """The shared state of one level of the lock workload: a barrier of all workers and a lock."""

    barrier: threading.Barrier
    lock: threading.Lock


class LockInRounds:
    """Queries with a parallel part and a serial part under one lock, all workers in rounds.

    Each query, inside ``meter.track()``: wait at a barrier of all N workers,
    sleep ``parallel`` seconds (all at once), then sleep ``serial`` seconds
    holding the lock (one at a time).  A round lasts ``parallel + N * serial``
    and completes one query per worker, and every query lasts the whole round
    (the first to get the lock waits for the round's end at the next
    barrier).  So R(N) = parallel + N * serial and X(N) = N / R(N) =
    lam N / (1 + sigma (N - 1)): the Universal Scalability Law with

        lam = 1 / (parallel + serial), sigma = serial / (parallel + serial), kappa = 0.

    (Without the barrier, the workers would settle into a pipeline, and
    throughput would follow the sharper knee of mean value analysis, which
    is not a USL curve.)
    """

    def __init__(self, meter: Meter, parallel: float, serial: float) -> None:
        self.meter = meter
        self.parallel = parallel
        self.serial = serial

    @property
    def lam(self) -> float:
        return 1.0 / (self.parallel + self.serial)

    @property
    def sigma(self) -> float:
        return self.serial / (self.parallel + self.serial)

    @contextmanager
    def level(self, workers: int) -> Iterator[Rounds]:
        """One level's barrier and lock; the barrier is broken at the end, freeing the waiters."""
        rounds = Rounds(threading.Barrier(workers), threading.Lock())
        try:
            yield rounds
        finally:
            rounds.barrier.abort()

    def __call__(self, rounds: Rounds) -> None:
        with self.meter.track():
            # A timeout: at the level's end, the workers that stopped leave
            # the others waiting for a round that never fills.
            rounds.barrier.wait(timeout=0.5)
            time.sleep(self.parallel)
            with rounds.lock:
                time.sleep(self.serial)
