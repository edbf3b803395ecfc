"""FlightRecorder: a meter read at fixed resolutions into fixed-size rings, on a daemon thread.

Each resolution r (seconds) has a ring of the last ``capacity`` steps.  Step
k of resolution r covers the meter's uptime [k·r, (k+1)·r): a reading whose
uptime is in a later step than the ring's last boundary closes a step, the
:class:`~querymeter.Interval` from that boundary to the reading.  Every
resolution is a whole multiple of the finer one, so a reading that closes a
coarse step closes a fine step too, with the same snapshot: the coarse step is
exactly the sum of the fine steps it spans, counter by counter, and the steps
of one ring add up to the interval over the ring's whole span (the snapshots
are cumulative: the steps telescope).  A late reading makes a longer step, it
loses nothing.

What a step keeps of the statement table (when the meter has one and
``statements`` is on) is a :class:`StepStatements`: the ``top`` statements of
that step by time (default 10, each with its figures over the step, its
latency histogram included), the rest summed in one row (``rest``, with how
many statements it holds), the statements evicted and those without text.  The
step is computed from two cumulative raw readings of the table (the one at the
ring's last boundary and the one now), so a coarse step's statements are exact
too, not a sum of truncated fine steps.  Memory is therefore fixed by the rings
and by two readings of the table (see docs/incident-response.md for the
figures); the recorder does no disk I/O.

The rings advance by the meter's clock (snapshot ``uptime_ns``), so a meter on
an injected clock (``Meter(clock=...)``) drives simulated days through
:meth:`FlightRecorder.take`.  A step's wall time is derived from that clock
too: the wall time of the recorder's first reading plus the uptime since.

The hooks never touch the recorder: it reads the meter with one ``snapshot()``
and the table with one read per finest step, as any exporter does; its own
lock is held only by the recorder and by its readers.
"""

from __future__ import annotations

import array
import dataclasses
import importlib
import math
import operator
import os
import queue
import signal
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import _faults
from ..markers import Marker
from ..markers import markers as _all_markers
from ..meter import Meter, meter_argument
from ..readings import Interval, Snapshot
from ..statements import StatementsInterval, StatementStats
from ..statements._readings import _empty, _minus, _stats, _trim

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "DEFAULT_STATEMENTS_PER_STEP",
    "FlightRecorder",
    "StepStatements",
    "running_recorder",
]

#: 1 s for 15 minutes, 1 min for 24 hours.
DEFAULT_RESOLUTIONS: tuple[tuple[float, int], ...] = ((1.0, 900), (60.0, 1440))
#: How many statements a step keeps by name (the rest are summed).
DEFAULT_STATEMENTS_PER_STEP = 10

_NS_PER_S = 1_000_000_000
# The thread wakes this long after a boundary of the finest grid, so that its
# reading falls in the new step even if the sleep ends a little early.
_WAKE_SLACK_NS = 2_000_000
# How long stop() waits for the thread to finish its current reading.
_JOIN_TIMEOUT_S = 10.0

# A raw row of the core's table reading (see statements._readings._stats):
# (fingerprint, sample, serial, calls, errors, total, total_sq, min, max,
#  rows, rows_calls, first_seen, last_seen, histogram_lo, histogram); the
# fields read here:
_FP, _SERIAL, _CALLS, _ERRORS, _TOTAL, _TOTAL_SQ = 0, 2, 3, 4, 5, 6
_ROWS, _ROWS_CALLS, _HISTOGRAM = 9, 10, 14
# The fields a table's totals sum: calls, errors, total, total_sq, rows, rows_calls.
_SUMMED = (_CALLS, _ERRORS, _TOTAL, _TOTAL_SQ, _ROWS, _ROWS_CALLS)
_EMPTY_ROW: tuple[Any, ...] = ("", "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"")
_REST_LABEL = "(other statements)"


class StepStatements(StatementsInterval):
    """The statements of one recorder step: the top ones by time, and the rest summed.

    A :class:`~querymeter.StatementsInterval` whose ``statements`` are the
    step's top statements by total time (each with its figures over the step);
    ``rest`` sums the calls, errors, time and rows of the other statements that
    ran in the step (``rest_statements`` of them; no histogram), so that
    ``calls``, ``errors`` and ``total_ns`` count every completed query of the
    step that the table saw.
    """

    __slots__ = ("rest", "rest_statements")

    #: The other statements of the step, summed (fingerprint "").
    rest: StatementStats
    #: How many statements ``rest`` sums.
    rest_statements: int

    def __init__(
        self,
        statements: tuple[StatementStats, ...],
        evicted: StatementStats,
        untexted: StatementStats,
        dropped: int,
        table_id: int,
        start_wall_ns: int,
        end_wall_ns: int,
        rest: StatementStats,
        rest_statements: int,
    ) -> None:
        super().__init__(
            statements, evicted, untexted, dropped, table_id, start_wall_ns, end_wall_ns
        )
        self.rest = rest
        self.rest_statements = rest_statements

    @property
    def calls(self) -> int:
        """All calls of the step: the top statements', the rest's, evicted and untexted."""
        return super().calls + self.rest.calls

    @property
    def errors(self) -> int:
        """All errors of the step, as ``calls`` counts them."""
        return super().errors + self.rest.errors

    @property
    def total_ns(self) -> int:
        """All time of the step's completed queries, ns, as ``calls`` counts it."""
        return super().total_ns + self.rest.total_ns

    def as_dict(self) -> dict[str, Any]:
        """The step's statements as plain data (for JSON)."""
        data = super().as_dict()
        data["rest"] = self.rest.as_dict()
        data["rest_statements"] = self.rest_statements
        data["start_wall_ns"] = self.start_wall_ns
        data["end_wall_ns"] = self.end_wall_ns
        return data


@dataclasses.dataclass(frozen=True, slots=True)
class _TableReading:
    """One cumulative raw reading of a statement table."""

    table_id: int
    dropped: int
    evicted: tuple[Any, ...]
    untexted: tuple[Any, ...]
    rows: dict[str, tuple[Any, ...]]
    #: The rows' and the evicted row's totals (see _SUMMED).
    sums: tuple[int, ...]
    #: The table's core, which compares two of its readings (``_changed``).
    core: Any


class _Ring:
    """The steps of one resolution, and the boundary the next step starts from."""

    __slots__ = ("boundary", "boundary_table", "capacity", "resolution", "resolution_ns", "steps")

    def __init__(self, resolution: float, resolution_ns: int, capacity: int) -> None:
        self.resolution = resolution
        self.resolution_ns = resolution_ns
        self.capacity = capacity
        self.steps: deque[tuple[Interval, StepStatements | None]] = deque(maxlen=capacity)
        self.boundary: Snapshot | None = None
        self.boundary_table: _TableReading | None = None


def _check_resolutions(resolutions: object) -> tuple[tuple[tuple[float, int], ...], list[int]]:
    if isinstance(resolutions, str | bytes) or not isinstance(resolutions, Iterable):
        raise TypeError(
            "resolutions must be a sequence of (seconds, steps) pairs, "
            f"not {type(resolutions).__name__}"
        )
    pairs: list[tuple[float, int]] = []
    grid: list[int] = []
    for pair in resolutions:
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise TypeError(f"each resolution must be a (seconds, steps) pair, not {pair!r}")
        seconds, steps = pair
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"a resolution's seconds must be a number, not {seconds!r}")
        if not math.isfinite(seconds) or seconds < 0.001:
            raise ValueError(f"a resolution must be at least 0.001 s, not {seconds!r}")
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"a resolution's steps must be an int, not {steps!r}")
        if steps < 1:
            raise ValueError(f"a resolution must keep at least 1 step, not {steps}")
        resolution_ns = round(seconds * _NS_PER_S)
        if grid:
            if resolution_ns <= grid[-1]:
                raise ValueError(
                    f"resolutions must be given finest first, each coarser than the last: "
                    f"{seconds!r} s after {pairs[-1][0]!r} s"
                )
            if resolution_ns % grid[-1]:
                raise ValueError(
                    f"each resolution must be a whole multiple of the finer one (so that a "
                    f"coarse step is the exact sum of fine steps): {seconds!r} s is not a "
                    f"multiple of {pairs[-1][0]!r} s"
                )
        pairs.append((float(seconds), steps))
        grid.append(resolution_ns)
    if not pairs:
        raise ValueError("resolutions must name at least one (seconds, steps) pair")
    return tuple(pairs), grid


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def _full(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row of the core's ``_read_rows``, whose histogram is (buffer, start, end), as
    ``_read`` gives it, with its own histogram: made only for the few rows a step keeps."""
    return (*row[:_HISTOGRAM], row[_HISTOGRAM][row[_HISTOGRAM + 1] : row[_HISTOGRAM + 2]])


def _delta_stats(row: tuple[Any, ...], earlier: tuple[Any, ...] | None) -> StatementStats:
    """A statement's figures between two raw readings of its row (``earlier`` None:
    all of ``row`` is new), as ``StatementStats.__sub__`` gives them, the histogram
    cut to its non-empty buckets."""
    stats = _stats(row)
    if earlier is not None:
        return _minus(stats, _stats(earlier))
    if not stats.calls:
        return _empty(stats)  # the evicted or untexted row, before any call
    lo, counts = _trim(stats.histogram_lo, list(memoryview(stats.histogram).cast("Q")))
    return dataclasses.replace(stats, histogram_lo=lo, histogram=array.array("Q", counts).tobytes())


class FlightRecorder:
    """FlightRecorder(meter=None, resolutions=((1.0, 900), (60.0, 1440)), *, statements=True,
    statements_per_step=10, restart_after_fork=False): a meter's recent history in memory.

    ``resolutions`` are (seconds, steps) pairs, finest first, each a whole
    multiple of the finer one.  ``start()`` runs a daemon thread that reads the
    meter at the finest resolution; ``take()`` does one such reading by hand
    (simulations).  A fault inside the recorder is counted in
    ``querymeter.faults()`` and the thread carries on.  After ``os.fork()`` the
    child's recorder is stopped (its parent's steps readable, its locks new)
    unless ``restart_after_fork`` is true: then it starts again there, from
    empty rings.
    """

    def __init__(
        self,
        meter: Meter | None = None,
        resolutions: Iterable[tuple[float, int]] = DEFAULT_RESOLUTIONS,
        *,
        statements: bool = True,
        statements_per_step: int = DEFAULT_STATEMENTS_PER_STEP,
        restart_after_fork: bool = False,
    ) -> None:
        self._meter = meter_argument(meter)
        pairs, grid = _check_resolutions(resolutions)
        if not isinstance(statements, bool):
            raise TypeError(f"statements must be a bool, not {type(statements).__name__}")
        if not isinstance(restart_after_fork, bool):
            raise TypeError(
                f"restart_after_fork must be a bool, not {type(restart_after_fork).__name__}"
            )
        self.resolutions: tuple[tuple[float, int], ...] = pairs
        self.statements = statements
        self.statements_per_step = _check_int("statements_per_step", statements_per_step, 1)
        self.restart_after_fork = restart_after_fork
        self._rings = [
            _Ring(seconds, resolution_ns, steps)
            for (seconds, steps), resolution_ns in zip(pairs, grid, strict=True)
        ]
        # _take_lock serializes readings (the thread's and take()'s callers');
        # _lock guards the rings for readers, held only to append or to copy.
        self._take_lock = threading.Lock()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[FlightRecorder, float], None]] = []
        # The calendar: the wall time and uptime of the first reading.
        self._anchor_wall_ns = 0
        self._anchor_uptime_ns = 0
        self._anchored = False
        self._last_uptime_ns = 0
        self._thread: threading.Thread | None = None
        self._stop_event = threading.Event()
        self._forked = False
        # dump_on_signal: a queue the handler puts into, read by a dumper thread.
        self._dump_requests: queue.SimpleQueue[int] | None = None
        self._dump_directory: Path | None = None
        self._dump_pid = 0
        self._dump_thread: threading.Thread | None = None
        _recorders.add(self)

    # ------------------------------------------------------------ life cycle

    @property
    def meter(self) -> Meter:
        """The meter recorded."""
        return self._meter

    @property
    def running(self) -> bool:
        """Whether the recorder's thread is running."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> FlightRecorder:
        """Start the thread (a no-op if it runs); returns the recorder."""
        with _registry_lock:
            if self.running:
                return self
            if self._forked:
                # The parent's steps are of a meter that restarted from zero here.
                self._forked = False
                self._clear()
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(stop,), name="querymeter-flight-recorder", daemon=True
            )
            self._stop_event = stop
            self._thread = thread
            thread.start()
            _running[id(self._meter)] = self
        return self

    def stop(self) -> None:
        """Stop the thread after its current reading (a no-op if it is not running)."""
        with _registry_lock:
            thread, self._thread = self._thread, None
            self._stop_event.set()
            if _running.get(id(self._meter)) is self:
                del _running[id(self._meter)]
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_TIMEOUT_S)

    def __enter__(self) -> FlightRecorder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, stop: threading.Event) -> None:
        finest_ns = self._rings[0].resolution_ns
        while not stop.is_set():
            try:
                self.take()
            except Exception as exc:  # noqa: BLE001 - the thread must survive its own faults
                _faults.report("flight recorder: a reading failed", exc)
            # Sleep to just after the next boundary of the finest grid, by the
            # meter's own uptime, so that each wake-up closes one step.
            try:
                wait_ns = finest_ns - self._last_uptime_ns % finest_ns + _WAKE_SLACK_NS
                wait_ns = min(max(wait_ns, finest_ns // 100), finest_ns + _WAKE_SLACK_NS)
            except Exception:  # noqa: BLE001 - never let the arithmetic stop the thread
                wait_ns = finest_ns
            stop.wait(wait_ns / _NS_PER_S)

    def _clear(self) -> None:
        with self._lock:
            for ring in self._rings:
                ring.steps.clear()
                ring.boundary = None
                ring.boundary_table = None
            self._anchored = False

    # --------------------------------------------------------------- readings

    def take(self) -> None:
        """Read the meter now and close the steps this reading ends (what the thread does).

        The first reading (and the first after the meter was reset, by a fork)
        only sets the boundaries the next steps start from.
        """
        closed: list[float] = []
        with self._take_lock:
            reading = self._meter.snapshot()
            self._last_uptime_ns = reading.uptime_ns
            finest = self._rings[0]
            boundary = finest.boundary
            if (
                not self._anchored
                or boundary is None
                or boundary.meter_id != reading.meter_id
                or reading.uptime_ns < boundary.uptime_ns
            ):
                table = self._read_table()
                with self._lock:
                    self._anchor_wall_ns = reading.wall_ns
                    self._anchor_uptime_ns = reading.uptime_ns
                    self._anchored = True
                    for ring in self._rings:
                        ring.boundary = reading
                        ring.boundary_table = table
                return
            grid = finest.resolution_ns
            if reading.uptime_ns // grid <= boundary.uptime_ns // grid:
                return
            table = self._read_table()
            for ring in self._rings:
                start = ring.boundary
                if start is None:  # pragma: no cover - every ring is anchored together
                    continue
                grid = ring.resolution_ns
                if reading.uptime_ns // grid <= start.uptime_ns // grid:
                    # Coarser rings close only where this one did: none further.
                    break
                interval = Interval(start, reading)
                step_statements = None
                if table is not None:
                    step_statements = self._step_statements(
                        ring.boundary_table, table, start, reading
                    )
                with self._lock:
                    ring.steps.append((interval, step_statements))
                    ring.boundary = reading
                    ring.boundary_table = table
                closed.append(ring.resolution)
        for resolution in closed:
            self._notify(resolution)

    def _read_table(self) -> _TableReading | None:
        if not self.statements:
            return None
        table = self._meter.statements
        if table is None:
            return None
        core = table._core
        dropped, evicted, untexted, rows = core._read_rows()
        evicted, untexted = _full(evicted), _full(untexted)
        # The table's cumulative totals: every row's and the evicted row's.
        sums = core._totals(rows)
        return _TableReading(
            table.table_id,
            dropped,
            evicted,
            untexted,
            dict(zip(map(operator.itemgetter(_FP), rows), rows, strict=True)),
            tuple(sums[k] + evicted[field] for k, field in enumerate(_SUMMED)),
            core,
        )

    def _step_statements(
        self,
        before: _TableReading | None,
        now: _TableReading,
        start: Snapshot,
        end: Snapshot,
    ) -> StepStatements:
        """What ran between two cumulative readings of the table: top by time, the rest summed.

        One pass over the rows (the core's ``_changed``: in C on the C core)
        finds those that changed and the top of them by time gained; the top
        are made from their two raw rows (the only full rows made); the rest is
        what remains of the table's totals (rows and evicted, whose sum only
        grows by the step's calls, eviction moving counts from a row to the
        evicted row).
        """
        same_table = before is not None and before.table_id == now.table_id
        earlier_rows = before.rows if before is not None and same_table else {}
        get = earlier_rows.get
        # The pass over every row runs in the core (C in the C core): the rows
        # that changed, and the top of them by time gained.
        top, changed, changed_with_rows = now.core._changed(
            now.rows, earlier_rows, self.statements_per_step
        )
        statements = []
        for fingerprint in top:
            row = now.rows[fingerprint]
            earlier = get(fingerprint)
            if earlier is not None and earlier[_SERIAL] != row[_SERIAL]:
                earlier = None
            statements.append(_delta_stats(_full(row), None if earlier is None else _full(earlier)))
        if same_table and before is not None:
            evicted = _delta_stats(now.evicted, before.evicted)
            evicted_rows_calls = now.evicted[_ROWS_CALLS] - before.evicted[_ROWS_CALLS]
            if now.dropped != before.dropped:
                # A statement evicted in the step took its calls from before
                # the step into `evicted` too: those are not the step's.
                for fingerprint, earlier in before.rows.items():
                    current = now.rows.get(fingerprint)
                    if current is None or current[_SERIAL] != earlier[_SERIAL]:
                        evicted = _minus(evicted, _stats(_full(earlier)))
                        evicted_rows_calls -= earlier[_ROWS_CALLS]
            untexted = _delta_stats(now.untexted, before.untexted)
            dropped = now.dropped - before.dropped
            step_sums = [a - b for a, b in zip(now.sums, before.sums, strict=True)]
        else:
            evicted = _delta_stats(now.evicted, None)
            evicted_rows_calls = now.evicted[_ROWS_CALLS]
            untexted = _delta_stats(now.untexted, None)
            dropped = now.dropped
            step_sums = list(now.sums)
        # What is not in the top statements nor evicted: the rest.
        for stats in (*statements, evicted):
            step_sums[0] -= stats.calls
            step_sums[1] -= stats.errors
            step_sums[2] -= stats.total_ns
            step_sums[3] -= stats.total_sq
            step_sums[4] -= stats.rows or 0
        for stats in statements:
            row = now.rows[stats.fingerprint]
            earlier = get(stats.fingerprint)
            if earlier is None or earlier[_SERIAL] != row[_SERIAL]:
                earlier = _EMPTY_ROW
            step_sums[5] -= row[_ROWS_CALLS] - earlier[_ROWS_CALLS]
        step_sums[5] -= evicted_rows_calls
        rest_calls, rest_errors, rest_total, rest_total_sq, rest_rows, rest_rows_calls = step_sums
        # The rest has rows, as a statement does, if one of its statements ever
        # reported rows (in this step or before it).
        rest_has_rows = rest_rows_calls > 0 or changed_with_rows > sum(
            1 for fingerprint in top if now.rows[fingerprint][_ROWS_CALLS]
        )
        start_wall_ns = self._wall_ns(start.uptime_ns)
        end_wall_ns = self._wall_ns(end.uptime_ns)
        rest = StatementStats(
            fingerprint="",
            sample_sql=_REST_LABEL,
            calls=rest_calls,
            errors=rest_errors,
            total_ns=rest_total,
            min_ns=0,
            max_ns=0,
            rows=rest_rows if rest_has_rows else None,
            first_seen_ns=start_wall_ns if rest_calls else 0,
            last_seen_ns=end_wall_ns if rest_calls else 0,
            total_sq=rest_total_sq,
            histogram_lo=0,
            histogram=b"",
        )
        return StepStatements(
            tuple(statements),
            evicted,
            untexted,
            dropped,
            now.table_id,
            start_wall_ns,
            end_wall_ns,
            rest,
            changed - len(statements),
        )

    def _wall_ns(self, uptime_ns: int) -> int:
        return self._anchor_wall_ns + (uptime_ns - self._anchor_uptime_ns)

    def step_wall_ns(self, interval: Interval) -> int:
        """Unix time of the end of a step, ns, on the meter's clock: the wall time of
        the recorder's first reading plus the uptime since (a simulated clock gives
        a simulated calendar)."""
        if not isinstance(interval, Interval):
            raise TypeError(f"step_wall_ns() takes an Interval, not {type(interval).__name__}")
        with self._lock:
            if not self._anchored:
                raise ValueError("the recorder has no reading yet: take() or start() it first")
            return self._wall_ns(interval.later.uptime_ns)

    def _ring(self, resolution: float | None) -> _Ring:
        if resolution is None:
            return self._rings[0]
        if isinstance(resolution, bool) or not isinstance(resolution, int | float):
            raise TypeError(f"resolution must be a number of seconds, not {resolution!r}")
        for ring in self._rings:
            if ring.resolution == resolution:
                return ring
        known = ", ".join(f"{ring.resolution:g}" for ring in self._rings)
        raise ValueError(f"the recorder has no resolution of {resolution!r} s (it has {known})")

    def _since_ns(self, since: object) -> int | None:
        if since is None:
            return None
        if isinstance(since, Marker):
            return since.wall_ns
        if (
            isinstance(since, bool)
            or not isinstance(since, int | float)
            or not math.isfinite(since)
        ):
            raise TypeError(
                f"since must be a wall time in seconds (time.time()), a Marker or None, "
                f"not {since!r}"
            )
        return round(since * _NS_PER_S)

    def _steps(
        self, since: object, resolution: float | None
    ) -> list[tuple[Interval, StepStatements | None]]:
        ring = self._ring(resolution)
        since_ns = self._since_ns(since)
        with self._lock:
            steps = list(ring.steps)
            if since_ns is None or not steps:
                return steps
            cut = since_ns - self._anchor_wall_ns + self._anchor_uptime_ns
        return [step for step in steps if step[0].later.uptime_ns > cut]

    def timeline(self, since: object = None, resolution: float | None = None) -> list[Interval]:
        """The steps of one resolution (the finest by default), oldest first, as Intervals.

        ``since``, a wall time in seconds (``time.time()``) or a Marker, keeps the
        steps that end after it.
        """
        return [interval for interval, _ in self._steps(since, resolution)]

    def statement_timeline(
        self, since: object = None, resolution: float | None = None
    ) -> list[StepStatements | None]:
        """Each step's statements, aligned one to one with ``timeline()``; None for a step
        without a statement table."""
        return [statements for _, statements in self._steps(since, resolution)]

    def span_wall_ns(self) -> tuple[int, int] | None:
        """The wall times (ns) of the start of the oldest kept step and of the latest
        reading's boundary, or None before the first step."""
        with self._lock:
            starts = [ring.steps[0][0].earlier.uptime_ns for ring in self._rings if ring.steps]
            ends = [ring.steps[-1][0].later.uptime_ns for ring in self._rings if ring.steps]
            if not starts:
                return None
            return self._wall_ns(min(starts)), self._wall_ns(max(ends))

    def markers(self, since: object = None) -> list[Marker]:
        """The change markers from the start of the recorder's oldest step on (all kept
        markers before it has one), or from ``since`` (seconds or a Marker)."""
        since_ns = self._since_ns(since)
        if since_ns is None:
            span = self.span_wall_ns()
            since_ns = None if span is None else span[0]
        return _all_markers(since_ns)

    # -------------------------------------------------------------- listeners

    def add_step_listener(
        self, listener: Callable[[FlightRecorder, float], None]
    ) -> Callable[[], None]:
        """Call ``listener(recorder, resolution_seconds)`` after each new step, on the thread
        that took it; its exceptions are counted as faults, never raised.  Returns a
        function that removes it."""
        if not callable(listener):
            raise TypeError(f"a step listener must be callable, not {type(listener).__name__}")
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _notify(self, resolution: float) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(self, resolution)
            except Exception as exc:  # noqa: BLE001 - a listener's fault is counted, not raised
                _faults.report("flight recorder: a step listener raised", exc)

    # ------------------------------------------------------------------ dumps

    def dump(self, path: str | os.PathLike[str]) -> Path:
        """Write the recorder's steps and markers to ``path``: JSON for ``.json``, a
        self-contained HTML timeline for ``.html``; returns the path."""
        from ._dump import write_dump

        return write_dump(self, path)

    def dump_on_signal(self, signum: int, directory: str | os.PathLike[str]) -> None:
        """On signal ``signum``, write a JSON and an HTML dump into ``directory``
        (``querymeter-<pid>-<UTC time>.json/.html``) without stopping the process.

        The handler only hands the request to a dumper thread, then calls the
        handler that was installed before (if it was a Python function).  Must be
        called from the main thread (Python's rule for signal handlers).
        """
        if isinstance(signum, bool) or not isinstance(signum, int):
            raise TypeError(f"signum must be a signal number, not {signum!r}")
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "dump_on_signal() must be called from the main thread: only the main "
                "thread may install signal handlers"
            )
        folder = Path(directory)
        if not folder.is_dir():
            raise ValueError(f"dump_on_signal(): {str(folder)!r} is not an existing directory")
        previous = signal.getsignal(signum)
        requests: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._dump_directory = folder
        self._dump_requests = requests
        self._dump_pid = os.getpid()
        self._start_dumper()

        def handler(received: int, frame: types.FrameType | None) -> None:
            # Little work here: SimpleQueue.put is safe in a signal handler.
            if os.getpid() == self._dump_pid and self._dump_requests is requests:
                requests.put(received)
            if callable(previous):
                previous(received, frame)

        signal.signal(signum, handler)

    def _start_dumper(self) -> None:
        requests = self._dump_requests
        if requests is None:
            return
        thread = threading.Thread(
            target=self._dumper, args=(requests,), name="querymeter-recorder-dump", daemon=True
        )
        self._dump_thread = thread
        thread.start()

    def _dumper(self, requests: queue.SimpleQueue[int]) -> None:
        while self._dump_requests is requests:
            requests.get()
            try:
                self.dump_now()
            except Exception as exc:  # noqa: BLE001 - a failed dump must not stop the process
                _faults.report("flight recorder: a dump on signal failed", exc)

    def dump_now(self) -> list[Path]:
        """Write a JSON and an HTML dump into the ``dump_on_signal`` directory now."""
        folder = self._dump_directory
        if folder is None:
            raise RuntimeError("dump_now() needs dump_on_signal(signum, directory) first")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = folder / f"querymeter-{os.getpid()}-{stamp}-{time.time_ns() % 1_000_000_000:09d}"
        return [self.dump(base.with_suffix(".json")), self.dump(base.with_suffix(".html"))]

    # ------------------------------------------ baselines and the rest (recorder/_*.py)

    def baseline(self, **kwargs: Any) -> Any:
        """Robust baselines per metric and per top statement (see docs/continuous-profiling.md)."""
        return _part("_baseline").baseline(self, **kwargs)

    def anomalies(self, **kwargs: Any) -> Any:
        """The steps outside the baseline's band, with the markers just before them."""
        return _part("_baseline").anomalies(self, **kwargs)

    def trends(self, **kwargs: Any) -> Any:
        """The statements whose mean latency grows (Theil-Sen trends)."""
        return _part("_trends").trends(self, **kwargs)

    def forecast(self, **kwargs: Any) -> Any:
        """When utilization (or the pool) would reach a level at the current growth."""
        return _part("_forecast").forecast(self, **kwargs)

    def alert(self, callback: Callable[..., Any], **kwargs: Any) -> Any:
        """Call ``callback`` once per episode of a symptom (see docs/continuous-profiling.md)."""
        return _part("_alerts").alert(self, callback, **kwargs)

    # ------------------------------------------------------------------- fork

    def _after_fork_in_child(self) -> None:
        was_running = self._thread is not None
        dumping = self._dump_requests is not None
        self._take_lock = threading.Lock()
        self._lock = threading.Lock()
        self._thread = None
        self._stop_event = threading.Event()
        self._dump_thread = None
        # The meter starts again from zero in the child: its next reading
        # starts new steps, and a start() there forgets the parent's.
        self._forked = True
        for ring in self._rings:
            ring.boundary = None
            ring.boundary_table = None
        self._anchored = False
        if was_running and self.restart_after_fork:
            try:
                self.start()
                if dumping:
                    self._dump_requests = queue.SimpleQueue()
                    self._dump_pid = os.getpid()
                    self._start_dumper()
            except Exception as exc:  # noqa: BLE001 - a fork must never fail because of us
                _faults.report("flight recorder: restarting after fork failed", exc)

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{ring.resolution:g} s: {len(ring.steps)}/{ring.capacity}" for ring in self._rings
        )
        state = "running" if self.running else "stopped"
        return f"<querymeter.FlightRecorder {state} {sizes}>"


def _part(name: str) -> Any:
    """One of the recorder's analysis modules (baselines, trends, forecasts, alerts)."""
    return importlib.import_module(f"{__package__}.{name}")


_recorders: weakref.WeakSet[FlightRecorder] = weakref.WeakSet()
_registry_lock = threading.RLock()
# The running recorder of each meter, by the meter's id (a running recorder
# holds its meter, so the id cannot be reused meanwhile).
_running: dict[int, FlightRecorder] = {}


def running_recorder(meter: Meter | None = None) -> FlightRecorder | None:
    """The running recorder of a meter (the default meter if None), or None."""
    chosen = meter_argument(meter)
    with _registry_lock:
        recorder = _running.get(id(chosen))
    return recorder if recorder is not None and recorder.running else None


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.RLock()
    _running.clear()
    for recorder in list(_recorders):
        recorder._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
