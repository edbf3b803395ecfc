"""Benchmark helpers: querymeter's overhead on a suite's own workload, as a ratio from one run.

>>> import sqlite3, querymeter, querymeter.dbapi
>>> from querymeter.benchmark import overhead
>>> querymeter.dbapi.instrument(sqlite3, meter=querymeter.Meter())
>>> cursor = sqlite3.connect(":memory:").cursor()
>>> result = overhead(lambda: cursor.execute("SELECT 1"))
>>> result.ratio > 0
True

Timings on a shared machine drift over seconds, so the two variants are
measured in turn, round after round, and each one's median is taken: the
drift falls on both alike and the ratio stays meaningful where absolute
times are not.  For the cost per query of the hooks alone (an in-memory
SQLite ``SELECT 1``), see ``querymeter.overhead(meter)``.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import switch

__all__ = ["Overhead", "overhead"]

# A round is calibrated to last about this long, so that the timer's
# resolution and the loop's own cost are small beside it.
_ROUND_SECONDS = 0.01
_MAX_NUMBER = 1_000_000


@dataclass(frozen=True)
class Overhead:
    """What counting adds to a workload: medians per call, ns, and their ratio.

    ``ratio = counted_ns / baseline_ns`` (1.0: no overhead); ``added_ns =
    counted_ns - baseline_ns``, ns per call (negative within noise).
    ``baseline`` says what the baseline was: ``"disabled"`` (the same workload
    with querymeter's kill switch off) or ``"baseline"`` (a callable given).
    """

    counted_ns: float
    baseline_ns: float
    rounds: int
    number: int
    baseline: str

    @property
    def ratio(self) -> float:
        """counted / baseline, dimensionless; inf for a baseline of zero time."""
        return self.counted_ns / self.baseline_ns if self.baseline_ns > 0 else math.inf

    @property
    def added_ns(self) -> float:
        """Nanoseconds per call that counting adds (counted - baseline)."""
        return self.counted_ns - self.baseline_ns

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain data: ``benchmark.extra_info.update(result.as_dict())``."""
        return {
            "overhead_ratio": self.ratio,
            "overhead_added_ns": self.added_ns,
            "overhead_counted_ns": self.counted_ns,
            "overhead_baseline_ns": self.baseline_ns,
            "overhead_rounds": self.rounds,
            "overhead_number": self.number,
            "overhead_baseline": self.baseline,
        }

    def __str__(self) -> str:
        return (
            f"{self.ratio:.3f}x ({self.added_ns:+.1f} ns per call: {self.counted_ns:.1f} ns "
            f"against {self.baseline_ns:.1f} ns, medians of {self.rounds} rounds of "
            f"{self.number} calls)"
        )


def overhead(
    workload: Callable[[], object],
    *,
    baseline: Callable[[], object] | None = None,
    rounds: int = 15,
    number: int | None = None,
) -> Overhead:
    """Measure ``workload`` counted against its baseline, interleaved, in this one run.

    Without ``baseline``, the baseline is ``workload`` itself with querymeter's
    kill switch off (``querymeter.disable()``: every hook a pass-through, and
    running profiling sessions end), switched between rounds, outside the
    timing, and left as it was found.  With ``baseline``, that callable is
    the baseline (the same work on an uninstrumented connection, say) and the
    switch is not touched.  Each round calls a variant ``number`` times
    (calibrated to about 10 ms a round when None); the figures are the
    medians of ``rounds`` rounds per variant, in ns per call.
    """
    if not callable(workload):
        raise TypeError(f"workload must be callable, not {type(workload).__name__}")
    if baseline is not None and not callable(baseline):
        raise TypeError(f"baseline must be callable or None, not {type(baseline).__name__}")
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise TypeError(f"rounds must be an int, not {type(rounds).__name__}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    if number is not None:
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"number must be an int or None, not {type(number).__name__}")
        if number < 1:
            raise ValueError(f"number must be at least 1, not {number}")
    was_enabled = switch.is_enabled()
    if baseline is None and not was_enabled:
        raise RuntimeError(
            "querymeter is disabled (the kill switch is off): nothing is counted to compare; "
            "call querymeter.enable() first, or pass baseline="
        )
    try:
        calls = number if number is not None else _calibrate(workload)
        counted: list[float] = []
        plain: list[float] = []
        for _ in range(rounds):
            if baseline is None:
                switch.enable()
                counted.append(_round(workload, calls))
                switch.disable()
                plain.append(_round(workload, calls))
            else:
                counted.append(_round(workload, calls))
                plain.append(_round(baseline, calls))
    finally:
        if baseline is None:
            switch.enable()
    return Overhead(
        counted_ns=statistics.median(counted),
        baseline_ns=statistics.median(plain),
        rounds=rounds,
        number=calls,
        baseline="disabled" if baseline is None else "baseline",
    )


def _calibrate(workload: Callable[[], object]) -> int:
    """Calls per round for a round of about _ROUND_SECONDS (at least one)."""
    calls = 1
    while True:
        elapsed_ns = _round(workload, calls) * calls
        if elapsed_ns >= _ROUND_SECONDS * 1e9 / 10 or calls >= _MAX_NUMBER:
            per_call = max(elapsed_ns / calls, 1.0)
            return max(1, min(_MAX_NUMBER, round(_ROUND_SECONDS * 1e9 / per_call)))
        calls *= 10


def _round(run: Callable[[], object], calls: int) -> float:
    """One round: ns per call."""
    loop = range(calls)
    start = time.perf_counter_ns()
    for _ in loop:
        run()
    return (time.perf_counter_ns() - start) / calls
