"""querymeter's command line: ``python -m querymeter demo`` (also the ``querymeter`` script)."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from . import __version__, usl
from .core import IMPLEMENTATION
from .demo import (
    DEFAULT_DURATION_S,
    DEFAULT_LEVELS,
    Level,
    PostgresDatabase,
    Progress,
    SQLiteDatabase,
    run_levels,
)
from .meter import Meter
from .report import render_html

__all__ = ["main"]

MAX_THREADS = 256
MAX_DURATION_S = 3600.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_DURATION_S):
        raise argparse.ArgumentTypeError(
            f"expected seconds, more than 0 and at most {MAX_DURATION_S:g}, got {text!r}"
        )
    return value


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        levels = ()
    if not levels or any(not 1 <= level <= MAX_THREADS for level in levels):
        raise argparse.ArgumentTypeError(
            f"expected thread counts from 1 to {MAX_THREADS} separated by commas, "
            f"like 1,2,4,8, got {text!r}"
        )
    if len(set(levels)) < 3:
        raise argparse.ArgumentTypeError(
            f"a scalability model needs at least 3 different levels, got {text!r}"
        )
    return levels


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="querymeter",
        description="Count every database query with five exact counters, and read them as laws.",
    )
    parser.add_argument(
        "--version", action="version", version=f"querymeter {__version__} ({IMPLEMENTATION} core)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="measure a small workload at increasing concurrency and fit the USL",
        description="Run a small shop workload (reads and writes on a few tables, through "
        "the instrumented DB-API) at increasing concurrency; print throughput, concurrency, "
        "response time, utilization and service time per level, fit the Universal "
        "Scalability Law, and write an HTML report with charts.",
    )
    demo.add_argument(
        "--dsn",
        metavar="URL",
        help="a PostgreSQL URL (postgresql://user@host/db) to run against, through psycopg 3; "
        "default: an embedded SQLite database in a temporary file",
    )
    demo.add_argument(
        "--duration",
        type=_seconds,
        default=DEFAULT_DURATION_S,
        metavar="SECONDS",
        help=f"measured time per level (default {DEFAULT_DURATION_S:g})",
    )
    demo.add_argument(
        "--levels",
        type=_levels,
        default=DEFAULT_LEVELS,
        metavar="N,N,...",
        help=f"worker threads per level (default {','.join(map(str, DEFAULT_LEVELS))})",
    )
    demo.add_argument(
        "--report",
        type=Path,
        default=Path("querymeter-demo.html"),
        metavar="PATH",
        help="where to write the HTML report (default ./querymeter-demo.html)",
    )
    return parser


def _row(threads: object, *cells: str) -> str:
    return f"{threads!s:>8} " + " ".join(f"{cell:>13}" for cell in cells)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _level_line(level: Level) -> str:
    interval = level.interval
    return _row(
        level.threads,
        _number(interval.concurrency, ".2f"),
        _number(interval.throughput, ",.0f"),
        _number(None if interval.response_time is None else interval.response_time * 1e3, ".3f"),
        _number(interval.utilization, ".2f"),
        _number(None if interval.service_time is None else interval.service_time * 1e3, ".3f"),
        f"{interval.errors:,}",
    )


class _ProgressLine:
    """A one-line live status on a terminal; silent when the output is not one."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._live = stream.isatty()

    def __call__(self, progress: Progress) -> None:
        if not self._live:
            return
        latest = progress.latest
        now = ""
        if latest is not None and latest.throughput is not None:
            now = f"  X {latest.throughput:,.0f}/s  N {latest.concurrency or 0:.2f}"
        done = int(20 * progress.elapsed_s / progress.duration_s)
        self._stream.write(
            f"\r  level {progress.level_index + 1}/{progress.levels}: "
            f"{progress.threads} threads [{'#' * done}{'.' * (20 - done)}]{now}\x1b[K"
        )
        self._stream.flush()

    def clear(self) -> None:
        if self._live:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def _print_model(model: usl.Model, out: TextIO) -> None:
    r_squared = "-" if model.r_squared is None else f"{model.r_squared:.4f}"
    peak = (
        "none (kappa is 0)"
        if math.isinf(model.peak_concurrency)
        else (f"{model.peak_concurrency:.1f}")
    )
    max_x = (
        "unbounded"
        if math.isinf(model.max_throughput)
        else (f"{model.max_throughput:,.0f} queries/s")
    )
    print(
        f"\nUniversal Scalability Law, fitted to {model.n_points} points (R² {r_squared}):",
        file=out,
    )
    for name, value in (
        ("sigma (contention)", f"{model.sigma:.4g}"),
        ("kappa (coherency)", f"{model.kappa:.4g}"),
        ("lambda", f"{model.lam:,.0f} queries/s"),
        ("N* (peak)", peak),
        ("X max", max_x),
        ("limiting factor", model.limiting_factor),
    ):
        print(f"  {name:<20} {value}", file=out)


def run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    out = sys.stdout
    report_path: Path = args.report
    if report_path.is_dir():
        parser.error(f"argument --report: {str(report_path)!r} is a directory")
    if not report_path.absolute().parent.is_dir():
        parser.error(f"argument --report: the directory of {str(report_path)!r} does not exist")
    if args.dsn is not None:
        if not args.dsn.startswith(("postgresql://", "postgres://")):
            parser.error(
                "argument --dsn: expected a PostgreSQL URL (postgresql://...); "
                "leave --dsn out to use the embedded SQLite database"
            )
        try:
            database: SQLiteDatabase | PostgresDatabase = PostgresDatabase(args.dsn)
        except ImportError:
            parser.error(
                "argument --dsn: the PostgreSQL demo needs psycopg: pip install 'psycopg[binary]'"
            )
        except Exception as exc:  # noqa: BLE001 - any connection failure is the user's to fix
            print(f"querymeter demo: cannot use the PostgreSQL database: {exc}", file=sys.stderr)
            return 1
    else:
        database = SQLiteDatabase()

    levels: tuple[int, ...] = args.levels
    print(
        f"querymeter {__version__} demo: {database.description}, {IMPLEMENTATION} core\n"
        f"{len(levels)} levels ({','.join(map(str, levels))} threads), "
        f"{args.duration:g} s each\n",
        file=out,
    )
    print(_row("threads", "N", "X (queries/s)", "R (ms)", "U", "S (ms)", "errors"), file=out)
    progress = _ProgressLine(sys.stderr)
    measured: list[Level] = []
    try:
        database.setup()
        for level in run_levels(database, Meter(), levels, args.duration, progress):
            progress.clear()
            measured.append(level)
            print(_level_line(level), file=out, flush=True)
    except KeyboardInterrupt:
        progress.clear()
        print("querymeter demo: interrupted", file=sys.stderr)
        return 130
    finally:
        database.close()

    points = [
        (level.interval.concurrency, level.interval.throughput)
        for level in measured
        if level.interval.queries
    ]
    model: usl.Model | None = None
    fit_problem: str | None = None
    try:
        model = usl.fit(points)
    except ValueError as exc:
        fit_problem = str(exc)
        print(f"\nNo scalability model: {fit_problem}", file=out)
    if model is not None:
        _print_model(model, out)

    report_path.write_text(
        render_html(
            measured,
            model,
            database=database.description,
            implementation=IMPLEMENTATION,
            duration_s=args.duration,
            generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            fit_problem=fit_problem,
        ),
        encoding="utf-8",
    )
    print(f"\nreport: {os.path.abspath(report_path)}", file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args, parser)
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks it
    return 2
