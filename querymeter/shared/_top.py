"""``querymeter top PATH``: a live view of a shared meter, per worker and for the service.

Like ``iostat -x 1``: every interval, one line for the service and one per
live worker with the interval's throughput X, mean concurrency N, response
time R, utilization U, service time S and error rate, then the statements
that took the most time in the interval (when the shared statement table is
on).  The rendering is a pure function of two readings (:func:`render`); the
terminal (curses) and the plain-text mode for scripts only print its lines.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from ..meter import core_module
from ..readings import Interval, Snapshot
from ..statements import StatementsInterval, StatementsSnapshot, StatementTable
from ._meter import SharedMeter, SharedMeterError
from ._statements import SharedStatementTable, shared_statements_max, statements_path

__all__ = [
    "DEFAULT_INTERVAL_S",
    "DEFAULT_STATEMENTS",
    "Reading",
    "Source",
    "TopError",
    "WorkerReading",
    "add_top_arguments",
    "read",
    "render",
    "run_top",
]

DEFAULT_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 3600.0
DEFAULT_STATEMENTS = 5
MAX_STATEMENTS = 100
#: Width of a report in plain mode (a terminal's width in the live view).
PLAIN_WIDTH = 100
#: The exit status of a bad PATH or argument, as argparse gives for usage errors.
EXIT_USAGE = 2
#: The exit status of a plain-mode run stopped by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

_NS_PER_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class WorkerReading:
    """One live worker's slot at one instant: who holds it and its own counters."""

    slot: int
    pid: int
    #: When the worker took the slot, Unix time in ns: with the pid, names the
    #: worker's life in the slot (a pid reused by another worker is told apart).
    opened_wall_ns: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class Reading:
    """Everything ``top`` shows, read from a shared meter at one instant: plain data."""

    service: Snapshot
    workers: tuple[WorkerReading, ...]
    #: The shared statement table's reading, None while the table is off.
    statements: StatementsSnapshot | None = None


# -- rendering: readings in, lines out ---------------------------------------------


def _number(value: float | None, spec: str, width: int) -> str:
    text = "-" if value is None else format(value, spec)
    return text.rjust(width)


#: The figure columns: heading, width, and how to show an interval's figure.
_COLUMNS: tuple[tuple[str, int, Callable[[Interval], str]], ...] = (
    ("X/s", 10, lambda i: _number(i.throughput, ",.1f", 10)),
    ("N", 7, lambda i: _number(i.concurrency, ".2f", 7)),
    ("R ms", 9, lambda i: _number(_ms(i.response_time), ".3f", 9)),
    ("U %", 6, lambda i: _number(_percent(i.utilization), ".1f", 6)),
    ("S ms", 9, lambda i: _number(_ms(i.service_time), ".3f", 9)),
    ("err/s", 8, lambda i: _number(i.error_rate, ",.1f", 8)),
)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _percent(fraction: float | None) -> float | None:
    return None if fraction is None else fraction * 100


def _heading() -> str:
    figures = "".join(f" {name:>{width}}" for name, width, _ in _COLUMNS)
    return f"{'worker':<8} {'pid':>8}{figures} {'now':>5}"


def _row(label: str, pid: str, interval: Interval | None, now: int) -> str:
    if interval is None:
        figures = "".join(f" {'-':>{width}}" for _, width, _ in _COLUMNS)
    else:
        figures = "".join(f" {show(interval)}" for _, _, show in _COLUMNS)
    return f"{label:<8} {pid:>8}{figures} {now:>5}"


def _worker_interval(earlier: WorkerReading | None, later: WorkerReading) -> Interval | None:
    """The worker's interval since the earlier reading; since it started if it is new."""
    if earlier is None:
        # Started after the earlier reading: all its counts are the interval's.
        start = later.snapshot._replace(
            uptime_ns=0, queries=0, errors=0, concurrency=0, total_ns=0, busy_ns=0
        )
        return Interval(start, later.snapshot)
    try:
        return Interval(earlier.snapshot, later.snapshot)
    except ValueError:  # not two readings of one worker's counters after all
        return None


def _statement_lines(
    interval: StatementsInterval, duration_ns: int, count: int, width: int
) -> list[str]:
    lines = [
        "",
        f"{'calls/s':>10} {'N':>7} {'R ms':>9} {'err/s':>8}  statement (the most time first)",
    ]
    chosen = interval.top(count, by="total") if len(interval) else []
    for stats in chosen:
        seconds = duration_ns / _NS_PER_S
        calls_per_s = stats.calls / seconds if seconds else None
        share = stats.total_ns / duration_ns if duration_ns else None
        mean = None if stats.mean_ns is None else stats.mean_ns / 1e6
        errors_per_s = stats.errors / seconds if seconds else None
        text = " ".join(stats.fingerprint.split())
        head = (
            f"{_number(calls_per_s, ',.1f', 10)} {_number(share, '.2f', 7)} "
            f"{_number(mean, '.3f', 9)} {_number(errors_per_s, ',.1f', 8)}  "
        )
        room = max(width - len(head), 10)
        if len(text) > room:
            text = text[: room - 1] + "…"
        lines.append(head + text)
    if not chosen:
        lines.append(f"{'':>38}(no statement ran in the interval)")
    return lines


def render(
    path: str,
    earlier: Reading | None,
    later: Reading,
    *,
    width: int = PLAIN_WIDTH,
    statements: int = DEFAULT_STATEMENTS,
) -> list[str]:
    """The report of the interval from ``earlier`` to ``later``, as lines of text.

    One line for the service and one per live worker (by slot), each with the
    interval's X (queries/s), N (mean concurrency), R (mean response time, ms),
    U (utilization, %), S (mean service time, ms) and errors/s, and the
    queries running at the later reading ("now"); a worker that started in
    the interval is marked ``+`` and measured from its start.  Then the
    ``statements`` statements with the most time in the interval, when both
    readings have the statement table.  Without ``earlier`` (the first
    reading) the figures are ``-``.  Figures an interval does not define
    (R and S without a completed query) are ``-``, never 0.
    """
    service: Interval | None = None
    if earlier is not None:
        try:
            service = Interval(earlier.service, later.service)
        except ValueError:  # another file at the same path, say: start afresh
            earlier = None
    duration_ns = 0 if service is None else service.duration_ns
    clock = time.strftime("%H:%M:%S", time.localtime(later.service.wall_ns / _NS_PER_S))
    span = "first reading" if service is None else f"{duration_ns / _NS_PER_S:.2f} s"
    previous = {} if earlier is None else {w.slot: w for w in earlier.workers}
    live = {(w.slot, w.pid, w.opened_wall_ns) for w in later.workers}
    gone = 0
    if earlier is not None:
        gone = sum((w.slot, w.pid, w.opened_wall_ns) not in live for w in earlier.workers)
    summary = f"{len(later.workers)} workers"
    if gone:
        summary += f", {gone} gone"
    lines = [f"querymeter top  {path}  {clock}  {span}  {summary}", _heading()]
    lines.append(_row("service", "", service, later.service.concurrency))
    for worker in sorted(later.workers, key=lambda w: w.slot):
        label = str(worker.slot)
        interval: Interval | None = None
        if service is not None:
            before = previous.get(worker.slot)
            if before is not None and (before.pid, before.opened_wall_ns) != (
                worker.pid,
                worker.opened_wall_ns,
            ):
                before = None  # the slot was taken by another worker meanwhile
            if before is None:
                label += "+"
            interval = _worker_interval(before, worker)
        lines.append(_row(label, str(worker.pid), interval, worker.snapshot.concurrency))
    if service is None:
        lines.append("")
        lines.append("(the first interval is being measured)")
    elif statements > 0 and earlier is not None:
        during = _statements_between(earlier.statements, later.statements)
        if during is not None:
            lines.extend(_statement_lines(during, duration_ns, statements, width))
    return lines


def _statements_between(
    earlier: StatementsSnapshot | None, later: StatementsSnapshot | None
) -> StatementsInterval | None:
    """The statements of the interval; None unless both readings have one table."""
    if earlier is None or later is None:
        return None
    try:
        return later - earlier
    except ValueError:  # the table was enabled again meanwhile
        return None


# -- reading a shared meter --------------------------------------------------------


def read(meter: SharedMeter, statements: StatementTable | None = None) -> Reading:
    """One reading of a shared meter: the service, each live worker, the statements.

    ``statements`` is the meter's shared statement table, if it has one.  The
    reading process's own slot, if it holds one, is not a worker.
    """
    service = meter.snapshot()
    own = os.getpid()
    workers = []
    for slot in meter.slots():
        if slot.pid != own:
            workers.append(WorkerReading(slot.slot, slot.pid, slot.opened_wall_ns, slot.snapshot))
    return Reading(service, tuple(workers), None if statements is None else statements.snapshot())


class TopError(Exception):
    """PATH cannot be read as a shared meter: the message says why."""


def _path_problem(path: str) -> str | None:
    """Why ``path`` is no shared meter's file, or None (it may still be corrupt)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return "no such file (the shared meter creates it when a worker opens it)"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    if stat.S_ISDIR(status.st_mode):
        return "it is a directory"
    if not stat.S_ISREG(status.st_mode):
        return "it is not a regular file"
    if status.st_size == 0:
        # SharedMeter would make it one; top reads, it makes no meter.
        return "it is empty: no worker has opened it as a shared meter yet"
    if not os.access(path, os.R_OK | os.W_OK):
        return "cannot open it for reading and writing (a shared meter maps it so)"
    return None


class Source:
    """The shared meter at a path, and its statement table once a worker has made one."""

    def __init__(self, path: str) -> None:
        problem = _path_problem(path)
        if problem is not None:
            raise TopError(f"{path}: {problem}")
        self.path = path
        try:
            self.meter = SharedMeter(path)
        except SharedMeterError as exc:  # its message names the path and the problem
            raise TopError(str(exc)) from None
        except OSError as exc:
            raise TopError(f"{path}: {exc.strerror or exc}") from None
        self._statements: SharedStatementTable | None = None

    def _statement_table(self) -> SharedStatementTable | None:
        """The shared statement table, opened once some worker has enabled it."""
        if self._statements is None:
            where = statements_path(self.path)
            try:
                max_statements = shared_statements_max(where)
                if max_statements is not None:
                    self._statements = SharedStatementTable(
                        where, max_statements, core_type=core_module(self.meter).Statements
                    )
            except (OSError, ValueError):  # a table being made, or of another core: none
                return None
        return self._statements

    def read(self) -> Reading:
        """One reading of the meter and its statements."""
        return read(self.meter, self._statement_table())

    def close(self) -> None:
        """Give the meter's slot back."""
        self.meter.close()


# -- the command ------------------------------------------------------------------


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and MIN_INTERVAL_S <= value <= MAX_INTERVAL_S):
        raise argparse.ArgumentTypeError(
            f"expected seconds from {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g}, got {text!r}"
        )
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of reports, at least 1, got {text!r}")
    return value


def _statements(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_STATEMENTS:
        raise argparse.ArgumentTypeError(
            f"expected a number of statements from 0 to {MAX_STATEMENTS}, got {text!r}"
        )
    return value


def add_top_arguments(top: argparse.ArgumentParser) -> None:
    """The arguments of ``querymeter top``."""
    top.description = (
        "Show a shared meter (querymeter.SharedMeter) live, like iostat -x 1: every "
        "interval, for the service and for each worker, X (queries/s), N (mean "
        "concurrency), R (response time, ms), U (utilization, %), S (service time, ms), "
        "errors/s and the queries running now, then the statements with the most time "
        "in the interval. On a terminal the view redraws in place; q or Ctrl-C quits. "
        "With --once or --count, or when the output is not a terminal, it prints one "
        "report per interval as plain text."
    )
    top.add_argument("path", metavar="PATH", help="the shared meter's file")
    top.add_argument(
        "--interval",
        type=_interval,
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help=f"time between reports (default {DEFAULT_INTERVAL_S:g})",
    )
    how_many = top.add_mutually_exclusive_group()
    how_many.add_argument(
        "--count",
        type=_count,
        metavar="N",
        help="print N reports as plain text, then exit (default: until interrupted)",
    )
    how_many.add_argument(
        "--once",
        action="store_true",
        help="print one report (of one interval) as plain text, then exit",
    )
    top.add_argument(
        "--statements",
        type=_statements,
        default=DEFAULT_STATEMENTS,
        metavar="N",
        help=f"statements shown per report (default {DEFAULT_STATEMENTS}; 0 for none)",
    )


def _readings(source: Source, interval_s: float) -> Iterator[tuple[Reading, Reading]]:
    """(earlier, later) every ``interval_s``, the first pair one interval after the start."""
    earlier = source.read()
    deadline = time.monotonic()
    while True:
        deadline += interval_s
        time.sleep(max(0.0, deadline - time.monotonic()))
        later = source.read()
        yield earlier, later
        earlier = later


def _plain(source: Source, args: argparse.Namespace, out: TextIO) -> int:
    count: int | None = 1 if args.once else args.count
    for reports, (earlier, later) in enumerate(_readings(source, args.interval), 1):
        if reports > 1:
            out.write("\n")
        lines = render(args.path, earlier, later, statements=args.statements)
        out.write("\n".join(lines) + "\n")
        out.flush()
        if count is not None and reports >= count:
            break
    return 0


def _live(source: Source, args: argparse.Namespace) -> int:
    import curses

    def view(screen: Any) -> None:
        curses.curs_set(0)
        earlier: Reading | None = None
        later = source.read()

        def draw() -> None:
            height, width = screen.getmaxyx()
            lines = render(args.path, earlier, later, width=width - 1, statements=args.statements)
            lines += ["", "q quits"]
            screen.erase()
            for row, line in enumerate(lines[: max(height - 1, 0)]):
                screen.addnstr(row, 0, line, max(width - 1, 0))
            screen.refresh()

        deadline = time.monotonic()
        while True:
            draw()
            deadline += args.interval
            while (left_s := deadline - time.monotonic()) > 0:
                screen.timeout(max(1, math.ceil(left_s * 1000)))
                key = screen.getch()
                if key in (ord("q"), ord("Q")):
                    return
                if key == curses.KEY_RESIZE:
                    draw()  # the same figures at the new size
            earlier, later = later, source.read()

    # Ctrl-C is the other way to quit the view; the wrapper restores the
    # terminal however the view ends.
    with contextlib.suppress(KeyboardInterrupt):
        curses.wrapper(view)
    return 0


def run_top(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``querymeter top`` as the arguments ask; returns the exit status."""
    try:
        source = Source(args.path)
    except TopError as exc:
        print(f"querymeter top: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.once or args.count is not None or not sys.stdout.isatty():
            try:
                return _plain(source, args, sys.stdout)
            except KeyboardInterrupt:
                return EXIT_INTERRUPTED
        return _live(source, args)
    finally:
        source.close()
