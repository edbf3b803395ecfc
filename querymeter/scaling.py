"""Scalability runs: a workload at each concurrency level, each an Interval, fitted to the USL.

:func:`run` calls a workload (any callable that runs queries counted on a
meter) from ``level`` workers at once, for each level in turn: threads for a
plain callable, tasks on an event loop of the level's own for a coroutine
function.  Each level warms up, then is measured as one
:class:`~querymeter.Interval` of the meter: one (N, X) point, mean
concurrency and throughput, for the Universal Scalability Law.  The
:class:`ScalingResult` holds the levels, the fitted
:class:`~querymeter.usl.Model` (None when it cannot be fitted), and what the
model means in plain words (:func:`querymeter.usl.read_fit`);
``result.render("text" | "json" | "html")`` and ``result.save(path)`` turn
it into a report (``querymeter.report.render_scaling_text``, ``_json``,
``_html``).
:func:`measure` yields the levels one by one as each ends, for a live display.

Two error counts, kept apart: a query that raises is counted by the meter's
hooks (``level.interval.errors``); a call of the workload that raises,
whatever raised (a query's error that the workload let through, or the
workload's own code), is counted in ``level.errors``.  Neither stops the
run; a workload that raises at every call does, with :class:`WorkloadError`.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import report, usl
from .meter import Meter, meter_argument
from .readings import Interval, Snapshot

__all__ = [
    "DEFAULT_LEVELS",
    "MAX_WORKERS",
    "Level",
    "Progress",
    "ScalingResult",
    "WorkloadError",
    "fit",
    "measure",
    "run",
]

DEFAULT_LEVELS = (1, 2, 4, 8, 16, 32)
#: The most workers one level may run: more threads than this is a typo, not a test.
MAX_WORKERS = 10_000
#: A level stops at once when this many calls raised and none returned: the
#: workload raises at every call, and waiting out the level would tell nothing more.
ALL_FAILED_AFTER = 100
#: How often the measuring thread wakes: to check the workers and report progress, s.
_TICK_S = 0.1
#: The span of a progress report's latest interval, s.
_LATEST_S = 0.25

Setup = Callable[[int], "AbstractContextManager[Any] | AbstractAsyncContextManager[Any]"]


class WorkloadError(RuntimeError):
    """The workload cannot be measured: it raised at every call, or ran no query on the meter.

    When it raised, the first exception is the ``__cause__``.
    """


@dataclass(frozen=True)
class Level:
    """One concurrency level of a run: its workers and what the meter counted while it was measured.

    ``interval`` is the meter's :class:`~querymeter.Interval` over the
    measured time (the warm-up excluded); its ``queries`` and ``errors`` are
    queries, as the hooks counted them.  ``calls`` counts the workload's
    calls that ended in the measured time and ``errors`` those of them that
    raised; ``first_error`` is the first call that raised in the level (the
    warm-up included), as ``"Type: message"``, or None.
    """

    workers: int
    interval: Interval
    calls: int = 0
    errors: int = 0
    first_error: str | None = None


@dataclass(frozen=True)
class Progress:
    """Where a run is, for a live display: given to ``progress`` every 0.1 s or so."""

    level_index: int
    levels: int
    workers: int
    elapsed_s: float
    duration_s: float
    #: The meter over about the last 0.25 s; None at the level's start.
    latest: Interval | None


@dataclass(frozen=True)
class ScalingResult:
    """A scalability run: the levels measured, the USL model fitted to them, and what it means.

    ``model`` is None when it could not be fitted (``fit_problem`` says
    why: fewer than 3 levels that completed queries, say).  ``reading`` is
    :func:`querymeter.usl.read_fit` of the model against the levels' points:
    whether the model describes them (``describes_data``), its problems,
    cautions and advice; ``verdict`` is its summary, one or two sentences.
    The fit's quality is the model's: ``model.r_squared``, the standard
    errors and confidence intervals of its coefficients.
    """

    levels: tuple[Level, ...]
    model: usl.Model | None
    reading: usl.FitReading
    duration_s: float
    warmup_s: float
    fit_problem: str | None = None
    #: The worker counts asked for, in order (the levels measured are all of them).
    levels_requested: tuple[int, ...] = field(default=())

    @property
    def points(self) -> list[tuple[float, float]]:
        """The (N, X) points the model was fitted to: the levels that completed queries."""
        return _points(self.levels)

    @property
    def verdict(self) -> str:
        """What the fit means, or why there is no usable model, in one or two sentences."""
        return self.reading.summary

    @property
    def describes_data(self) -> bool:
        """Whether the model describes the measurements well enough to read predictions from it."""
        return self.reading.describes_data

    def render(self, format: str = "text") -> str:
        """The run as ``"text"`` (a terminal's 88 columns), ``"json"`` or ``"html"`` (one page).

        The text is the levels table and the model in words; the JSON, every
        counter and figure of each level, the model with its confidence
        intervals, and the reading; the HTML, both and two SVG charts.
        Raises ValueError for another format.
        """
        renderer = _RENDERERS.get(format) if isinstance(format, str) else None
        if renderer is None:
            raise ValueError(
                f"format must be one of {', '.join(map(repr, _RENDERERS))}, got {format!r}"
            )
        return renderer(self)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`render` to ``path``, the format chosen by its suffix.

        ``.txt``, ``.json`` or ``.html``; the text and JSON end with a newline.
        Returns the path.  Raises ValueError for another suffix and OSError
        where the file cannot be written.
        """
        target = Path(path)
        kind = _SUFFIXES.get(target.suffix.lower())
        if kind is None:
            raise ValueError(
                f"cannot tell the format of {str(target)!r}: use one of {', '.join(_SUFFIXES)}"
            )
        text = self.render(kind)
        target.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        return target


_RENDERERS: dict[str, Callable[[ScalingResult], str]] = {
    "text": report.render_scaling_text,
    "json": report.render_scaling_json,
    "html": report.render_scaling_html,
}
_SUFFIXES = {".txt": "text", ".json": "json", ".html": "html"}


# -- validation -----------------------------------------------------------------


def _check_levels(levels: object) -> tuple[int, ...]:
    example = "like (1, 2, 4, 8)"
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Iterable):
        raise TypeError(
            f"levels must be a sequence of worker counts {example}, got {type(levels).__name__}"
        )
    items = tuple(levels)
    if not items:
        raise ValueError(f"levels is empty: give at least one worker count, {example}")
    checked: list[int] = []
    for index, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(
                f"levels[{index}] must be a whole number of workers (int), "
                f"got {type(item).__name__} {item!r}"
            )
        level = int(item)
        if level < 1:
            raise ValueError(f"levels[{index}] must be at least 1 worker, got {item!r}")
        if level > MAX_WORKERS:
            raise ValueError(f"levels[{index}] is {item!r} workers, more than {MAX_WORKERS:,}")
        checked.append(level)
    return tuple(checked)


def _check_seconds(value: object, name: str, *, zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        wanted = "0 or more" if zero else "more than 0"
        raise ValueError(f"{name} must be finite and {wanted} seconds, got {value!r}")
    return seconds


def _is_async(workload: Callable[..., Any]) -> bool:
    # A callable object's __call__ counts: iscoroutinefunction() looks at the object only.
    return inspect.iscoroutinefunction(workload) or inspect.iscoroutinefunction(
        getattr(workload, "__call__", None)  # noqa: B004 - the method, not callable()
    )


# -- the run --------------------------------------------------------------------------


def run(
    workload: Callable[..., Any],
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    duration: float = 3.0,
    warmup: float = 0.5,
    meter: Meter | None = None,
    setup: Setup | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> ScalingResult:
    """Run ``workload`` at each concurrency level, measure each, and fit the USL to them.

    ``workload`` is called again and again, with no argument, from
    ``level`` workers at once: threads when it is a plain callable, tasks on
    a new event loop per level when it is a coroutine function (``async
    def``).  Its queries must be counted on ``meter`` (the default meter when
    None): an instrumented driver or SQLAlchemy engine, or ``meter.track()``.
    Each level starts its workers, lets them run ``warmup`` seconds, then
    measures ``duration`` seconds as one Interval of the meter; the workers
    finish the call they are in and stop before the next level starts.

    ``setup``, if given, is called with each level's worker count and
    returns a context manager (an async one too, for an async workload),
    entered before the level's workers start and left after they stop, in
    the level's thread or event loop; the value it gives is passed to each
    call of the workload: ``workload(value)``.  Use it for what belongs to
    one level: a pool sized to it, an asyncpg pool (which is bound to the
    event loop it was made in), a connection per worker.  ``progress`` is
    called about every 0.1 s while a level is measured.

    A call that raises is counted in its level's ``errors`` and the run goes
    on.  Raises TypeError or ValueError naming a bad argument;
    :class:`WorkloadError` when every call of a level raised (the first
    exception is its cause) or when the meter counted no query while the
    workload ran; TypeError when a plain callable returns a coroutine (pass
    the ``async def`` function itself).  KeyboardInterrupt stops the run:
    the workers finish their call and are joined, ``setup``'s context is
    left, and the interrupt goes on.
    """
    requested = _check_levels(levels)
    measured = tuple(
        measure(
            workload,
            levels=requested,
            duration=duration,
            warmup=warmup,
            meter=meter,
            setup=setup,
            progress=progress,
        )
    )
    return fit(measured, duration=float(duration), warmup=float(warmup))


def fit(levels: Sequence[Level], *, duration: float, warmup: float) -> ScalingResult:
    """The USL fitted to measured levels, and read in words: what :func:`run` returns.

    For levels gathered from :func:`measure` (an interrupted run's, say).
    """
    points = _points(levels)
    model: usl.Model | None = None
    problem: str | None = None
    if len(points) < 3:
        problem = f"{len(points)} levels completed queries, and a model needs at least 3"
    else:
        try:
            model = usl.fit(points)
        except ValueError as exc:
            problem = str(exc)
    reading = usl.read_fit(
        model, points, cores=os.cpu_count(), fit_problem=problem, options="python"
    )
    return ScalingResult(
        tuple(levels),
        model,
        reading,
        duration,
        warmup,
        problem,
        tuple(level.workers for level in levels),
    )


def measure(
    workload: Callable[..., Any],
    *,
    levels: Sequence[int] = DEFAULT_LEVELS,
    duration: float = 3.0,
    warmup: float = 0.5,
    meter: Meter | None = None,
    setup: Setup | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Generator[Level, None, None]:
    """Measure ``workload`` at each level in turn, yielding each :class:`Level` as it ends.

    The arguments are :func:`run`'s and are checked here, before any level
    starts.  No worker runs between two levels: closing the iterator there
    (``contextlib.closing``) ends the run.
    """
    requested = _check_levels(levels)
    duration_s = _check_seconds(duration, "duration", zero=False)
    warmup_s = _check_seconds(warmup, "warmup", zero=True)
    if not callable(workload):
        raise TypeError(f"workload must be callable, got {type(workload).__name__} {workload!r}")
    if setup is not None and not callable(setup):
        raise TypeError(f"setup must be callable, got {type(setup).__name__} {setup!r}")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {type(progress).__name__} {progress!r}")
    counted_on = meter_argument(meter)
    is_async = _is_async(workload)
    if is_async:
        _check_no_running_loop()
    return _levels(workload, requested, duration_s, warmup_s, counted_on, setup, progress, is_async)


def _levels(
    workload: Callable[..., Any],
    levels: tuple[int, ...],
    duration_s: float,
    warmup_s: float,
    meter: Meter,
    setup: Setup | None,
    progress: Callable[[Progress], None] | None,
    is_async: bool,
) -> Generator[Level, None, None]:
    for index, workers in enumerate(levels):
        plan = _Plan(meter, index, len(levels), workers, duration_s, warmup_s, progress)
        if is_async:
            level = _async_level(plan, workload, setup)
        else:
            level = _thread_level(plan, workload, setup)
        yield level


def _check_no_running_loop() -> None:
    import asyncio  # here: `import querymeter` stays free of asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        "scaling runs an async workload on an event loop of its own per level, and cannot "
        "from inside a running one: call it from synchronous code, or in a thread "
        "(await asyncio.to_thread(querymeter.scaling.run, workload, ...))"
    )


def _points(levels: Iterable[Level]) -> list[tuple[float, float]]:
    return [
        (level.interval.concurrency, level.interval.throughput)
        for level in levels
        if level.interval.queries
        and level.interval.concurrency is not None
        and level.interval.throughput is not None
    ]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip().rstrip(":")


# -- one level ----------------------------------------------------------------------


@dataclass
class _Plan:
    """One level to measure, and the counts its workers keep while it runs."""

    meter: Meter
    index: int
    count: int
    workers: int
    duration_s: float
    warmup_s: float
    progress: Callable[[Progress], None] | None
    # Each worker counts in its own slot, so no lock is needed: one writer each.
    returned: list[int] = field(default_factory=list)
    raised: list[int] = field(default_factory=list)
    first_error: BaseException | None = None
    #: A misuse found by a worker (a coroutine returned by a plain callable): ends the run.
    misuse: BaseException | None = None

    def __post_init__(self) -> None:
        self.returned = [0] * self.workers
        self.raised = [0] * self.workers

    def failed(self, worker: int, exc: BaseException) -> None:
        self.raised[worker] += 1
        if self.first_error is None:  # racy, harmless: one of the first errors is kept
            self.first_error = exc

    def calls(self) -> tuple[int, int]:
        """Calls ended so far, and those of them that raised."""
        raised = sum(self.raised)
        return sum(self.returned) + raised, raised

    def check(self) -> None:
        """Raise if the level cannot go on: a misuse, or a workload raising at every call."""
        if self.misuse is not None:
            raise self.misuse
        calls, raised = self.calls()
        if raised >= ALL_FAILED_AFTER and calls == raised:
            self.all_failed()

    def all_failed(self) -> None:
        calls, raised = self.calls()
        first = self.first_error
        raise WorkloadError(
            f"the workload raised at every call: {raised:,} of {calls:,} calls at "
            f"{self.workers} workers, the first: {_describe(first) if first else '?'}"
        ) from first

    def level(
        self, before: Snapshot, after: Snapshot, at_start: tuple[int, int], at_end: tuple[int, int]
    ) -> Level:
        """The level measured from ``before`` to ``after``, once its workers stopped.

        ``at_start`` and ``at_end`` are :meth:`calls` read next to the snapshots.
        """
        if self.misuse is not None:
            raise self.misuse
        calls, raised = self.calls()
        if calls and calls == raised:
            self.all_failed()
        interval = after - before
        window_calls = at_end[0] - at_start[0]
        if window_calls and not interval.queries and not interval.total_ns:
            raise WorkloadError(
                f"the meter counted no query while the workload ran {window_calls:,} calls at "
                f"{self.workers} workers: count its queries on this meter (instrument its "
                "driver with meter=..., or pass the meter they are counted on as meter=)"
            )
        first = None if self.first_error is None else _describe(self.first_error)
        return Level(self.workers, interval, window_calls, at_end[1] - at_start[1], first)


class _Ticker:
    """The measuring side of a level: when it ends, and the progress reports on the way."""

    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._started = time.monotonic()
        self._latest_from = plan.meter.snapshot()
        self._latest_at = self._started
        self._latest: Interval | None = None

    def remaining(self) -> float:
        return self._plan.duration_s - (time.monotonic() - self._started)

    def report(self) -> None:
        plan = self._plan
        if plan.progress is None:
            return
        now = time.monotonic()
        if now - self._latest_at >= _LATEST_S:
            reading = plan.meter.snapshot()
            self._latest = reading - self._latest_from
            self._latest_from, self._latest_at = reading, now
        plan.progress(
            Progress(
                plan.index,
                plan.count,
                plan.workers,
                min(now - self._started, plan.duration_s),
                plan.duration_s,
                self._latest,
            )
        )


def _thread_level(plan: _Plan, workload: Callable[..., Any], setup: Setup | None) -> Level:
    if setup is None:
        return _run_threads(plan, workload, ())
    context = setup(plan.workers)
    if not isinstance(context, AbstractContextManager):
        raise TypeError(
            "setup must return a context manager (for a plain workload, not an async one), "
            f"got {type(context).__name__}"
        )
    with context as value:
        return _run_threads(plan, workload, (value,))


def _run_threads(plan: _Plan, workload: Callable[..., Any], args: tuple[Any, ...]) -> Level:
    stop = threading.Event()

    def worker(number: int) -> None:
        returned = plan.returned
        while not stop.is_set():
            try:
                result = workload(*args)
            except Exception as exc:  # noqa: BLE001 - counted: a workload's error is data
                plan.failed(number, exc)
                continue
            except BaseException as exc:  # noqa: BLE001 - SystemExit in a worker: end the run, say why
                plan.misuse = exc
                stop.set()
                return
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: closed, without the warning
                plan.misuse = TypeError(
                    f"the workload {workload!r} returned {type(result).__name__}, an awaitable: "
                    "pass the async def function itself, so that it runs on an event loop"
                )
                stop.set()
                return
            returned[number] += 1

    threads = [
        threading.Thread(
            target=worker,
            args=(number,),
            name=f"querymeter-scaling-{plan.workers}-{number}",
            daemon=True,
        )
        for number in range(plan.workers)
    ]
    running: list[threading.Thread] = []
    try:
        for thread in threads:
            thread.start()
            running.append(thread)
        warm_until = time.monotonic() + plan.warmup_s
        while (left := warm_until - time.monotonic()) > 0:
            stop.wait(min(_TICK_S, left))
            plan.check()
        at_start = plan.calls()
        before = plan.meter.snapshot()
        ticker = _Ticker(plan)
        while (left := ticker.remaining()) > 0:
            ticker.report()
            stop.wait(min(_TICK_S, left))
            plan.check()
        after = plan.meter.snapshot()
        at_end = plan.calls()
    finally:
        stop.set()
        # Only those started: an interrupt can come while they are being started.
        for thread in running:
            thread.join()
    return plan.level(before, after, at_start, at_end)


def _async_level(plan: _Plan, workload: Callable[..., Any], setup: Setup | None) -> Level:
    import asyncio

    # asyncio.run: a new loop, closed at the end, and on Ctrl-C the level's
    # main task is cancelled (its workers are stopped and awaited) before
    # KeyboardInterrupt is raised here.
    return asyncio.run(_async_main(plan, workload, setup))


async def _async_main(plan: _Plan, workload: Callable[..., Any], setup: Setup | None) -> Level:
    if setup is None:
        return await _run_tasks(plan, workload, ())
    context = setup(plan.workers)
    if isinstance(context, AbstractAsyncContextManager):
        async with context as value:
            return await _run_tasks(plan, workload, (value,))
    if isinstance(context, AbstractContextManager):
        with context as value:
            return await _run_tasks(plan, workload, (value,))
    raise TypeError(f"setup must return a context manager, got {type(context).__name__}")


async def _run_tasks(plan: _Plan, workload: Callable[..., Any], args: tuple[Any, ...]) -> Level:
    import asyncio

    stopping = asyncio.Event()

    async def worker(number: int) -> None:
        returned = plan.returned
        while not stopping.is_set():
            try:
                call: Awaitable[Any] = workload(*args)
                await call
            except Exception as exc:  # noqa: BLE001 - counted: a workload's error is data
                plan.failed(number, exc)
            else:
                returned[number] += 1
            # A call that never suspends (it raised before its first await,
            # or awaited nothing that waits) would keep the loop from the
            # other tasks and from the measuring one: yield to them.
            await asyncio.sleep(0)

    tasks = [
        asyncio.create_task(worker(number), name=f"querymeter-scaling-{plan.workers}-{number}")
        for number in range(plan.workers)
    ]
    try:
        warm_until = time.monotonic() + plan.warmup_s
        while (left := warm_until - time.monotonic()) > 0:
            await asyncio.sleep(min(_TICK_S, left))
            plan.check()
        at_start = plan.calls()
        before = plan.meter.snapshot()
        ticker = _Ticker(plan)
        while (left := ticker.remaining()) > 0:
            ticker.report()
            await asyncio.sleep(min(_TICK_S, left))
            plan.check()
        after = plan.meter.snapshot()
        at_end = plan.calls()
    finally:
        # The workers end the call they are in (a query cut off by
        # cancellation could leave a connection mid-protocol); a second
        # interrupt cancels them.
        stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return plan.level(before, after, at_start, at_end)
