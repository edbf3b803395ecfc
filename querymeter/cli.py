"""querymeter's command line: ``python -m querymeter demo`` (also the ``querymeter`` script)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TextIO

from . import __version__, usl
from .core import IMPLEMENTATION
from .demo import (
    DEFAULT_DURATION_S,
    DEFAULT_LEVELS,
    DatabaseURL,
    Level,
    MySQLDatabase,
    PostgresDatabase,
    Progress,
    SQLiteDatabase,
    open_database,
    parse_database_url,
    run_levels,
)
from .meter import Meter
from .report import COLUMNS, FitReading, Measurement, level_points, read_fit, render_html

__all__ = ["main"]

MAX_THREADS = 256
MAX_DURATION_S = 3600.0
#: The exit status of an interrupted run (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
#: The exit status when the output's reader went away (128 + SIGPIPE): what a
#: shell reports for a program that the closed pipe's signal ended.
EXIT_BROKEN_PIPE = 141
WIDTH = 88


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


def _database_url(text: str) -> DatabaseURL:
    try:
        return parse_database_url(text)
    except ValueError as exc:
        # ArgumentTypeError: argparse shows the message as it is, under the
        # usage of the subcommand whose argument it is.
        raise argparse.ArgumentTypeError(
            f"{exc}; leave --dsn out to use the embedded SQLite database"
        ) from None


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
        "Scalability Law and say whether it describes the measurements, and write an HTML "
        "report with charts. Ctrl-C stops the run and keeps the levels measured so far.",
    )
    demo.add_argument(
        "--dsn",
        type=_database_url,
        metavar="URL",
        help="a database server to run against, in a schema (or database) of its own that "
        "is dropped afterwards: postgresql://user@host/db through psycopg 3, or "
        "mysql://user@host/db or mariadb://... through PyMySQL (SQLAlchemy's "
        "postgresql+psycopg:// and mysql+pymysql:// work too); "
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
    where = demo.add_mutually_exclusive_group()
    where.add_argument(
        "--report",
        type=Path,
        default=Path("querymeter-demo.html"),
        metavar="PATH",
        help="where to write the HTML report (default ./querymeter-demo.html)",
    )
    where.add_argument("--no-report", action="store_true", help="write no HTML report")
    demo.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document (the levels, the model and how well it fits) "
        "instead of the tables, for scripts and CI",
    )
    demo.set_defaults(command_parser=demo)
    return parser


# -- the terminal ------------------------------------------------------------


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


def _measurements(levels: Sequence[Level]) -> list[Measurement]:
    """The demo's levels as the report takes them: plain data, no workload."""
    return [Measurement(level.threads, level.interval, level.first_error) for level in levels]


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


def _error_line(level: Level) -> str | None:
    if not level.interval.errors:
        return None
    first = f"; the first: {_first_line(level.first_error)}" if level.first_error else ""
    return f"{'':>9}! {level.interval.errors:,} queries raised an error{first}"


def _legend() -> str:
    lines = ["What the columns mean:"]
    for name, meaning in COLUMNS:
        if name == "queries":  # a column of the report only
            continue
        lines.append(
            textwrap.fill(meaning, WIDTH, initial_indent=f"  {name:<9}", subsequent_indent=" " * 11)
        )
    return "\n".join(lines)


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

    def note(self, text: str) -> None:
        if self._live:
            self._stream.write(f"\r  {text}\x1b[K")
            self._stream.flush()

    def clear(self) -> None:
        if self._live:
            self._stream.write("\r\x1b[K")
            self._stream.flush()


def _paragraph(text: str, bullet: str = "", indent: str = "  ") -> str:
    indent += bullet
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=" " * len(indent))


def fit_text(model: usl.Model | None, reading: FitReading) -> str:
    """The terminal's account of the model: what it means, or why it means nothing, and advice."""
    out: list[str] = []
    if model is None:
        out.append(f"No scalability model.\n{_paragraph(reading.summary)}")
    else:
        r_squared = "-" if model.r_squared is None else f"{model.r_squared:.4f}"
        out.append(
            f"Universal Scalability Law, fitted to {model.n_points} points "
            f"(R² {r_squared}; 1 is a perfect fit):\n{_paragraph(reading.summary)}"
        )
    for problem in reading.problems:
        out.append(_paragraph(problem, "- "))
    if model is not None and reading.describes_data:
        peak = (
            "none (kappa is 0)"
            if math.isinf(model.peak_concurrency)
            else f"{model.peak_concurrency:.1f}"
        )
        max_x = (
            "unbounded"
            if math.isinf(model.max_throughput)
            else f"{model.max_throughput:,.0f} queries/s"
        )
        out.append("")
        for name, value, meaning in (
            ("sigma", f"{model.sigma:.4g}", "contention: the share of work done one at a time"),
            ("kappa", f"{model.kappa:.4g}", "coherency: the cost of agreeing, per pair"),
            ("lambda", f"{model.lam:,.0f} queries/s", "one query at a time, without overhead"),
            ("N*", peak, "the concurrency of highest throughput"),
            ("X max", max_x, "the highest throughput"),
            ("limited by", model.limiting_factor, ""),
        ):
            out.append(f"  {name:<11} {value:<18} {meaning}".rstrip())
        for caution in reading.cautions:
            out.append(_paragraph(caution, "! "))
    if reading.advice:
        out.append("  What to do:")
        for advice in reading.advice:
            out.append(_paragraph(advice, "- ", "    "))
    if model is not None and not reading.describes_data:
        out.append(
            _paragraph(
                f"The fitted coefficients, for the record only: sigma {model.sigma:.4g}, "
                f"kappa {model.kappa:.4g}, lambda {model.lam:,.0f} queries/s."
            )
        )
    return "\n".join(out)


# -- JSON ----------------------------------------------------------------------


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded figure is null."""
    return None if value is None or not math.isfinite(value) else value


def _json_document(
    *,
    database: str,
    duration_s: float,
    levels: tuple[int, ...],
    measured: Sequence[Level],
    model: usl.Model | None,
    reading: FitReading,
    interrupted: bool,
    report: str | None,
) -> dict[str, Any]:
    return {
        "querymeter": __version__,
        "core": IMPLEMENTATION,
        "database": database,
        "duration_s": duration_s,
        "levels_requested": list(levels),
        "interrupted": interrupted,
        "levels": [
            {
                "threads": level.threads,
                "duration_ns": level.interval.duration_ns,
                "queries": level.interval.queries,
                "errors": level.interval.errors,
                "total_ns": level.interval.total_ns,
                "busy_ns": level.interval.busy_ns,
                "concurrency": level.interval.concurrency,
                "throughput": level.interval.throughput,
                "response_time_s": level.interval.response_time,
                "utilization": level.interval.utilization,
                "service_time_s": level.interval.service_time,
                "first_error": level.first_error,
            }
            for level in measured
        ],
        "model": None
        if model is None
        else {
            "sigma": model.sigma,
            "kappa": model.kappa,
            "lambda": model.lam,
            "peak_concurrency": _finite(model.peak_concurrency),
            "max_throughput": _finite(model.max_throughput),
            "limiting_factor": model.limiting_factor,
            "n_points": model.n_points,
            "r_squared": model.r_squared,
            "at_bound": list(model.at_bound),
            "converged": model.converged,
        },
        "fit": {
            "describes_data": reading.describes_data,
            "summary": reading.summary,
            "problems": list(reading.problems),
            "cautions": list(reading.cautions),
            "advice": list(reading.advice),
        },
        "report": report,
    }


# -- the run -------------------------------------------------------------------


def _report_path_problem(path: Path) -> str | None:
    """Why the report cannot be written at ``path``, or None; leaves no new file behind."""
    if path.is_dir():
        return "it is a directory"
    if not path.absolute().parent.is_dir():
        return "its directory does not exist"
    existed = path.exists()
    try:
        # O_NONBLOCK: a FIFO without a reader fails at once instead of waiting.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o666)
    except OSError as exc:
        return f"cannot write it: {exc.strerror or exc}"
    os.close(descriptor)
    if not existed:
        path.unlink(missing_ok=True)
    return None


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C is ignored in the block: cleaning up (dropping the demo's schema) is not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _close(database: SQLiteDatabase | PostgresDatabase | MySQLDatabase) -> None:
    with _interrupts_deferred():
        try:
            database.close()
        except Exception as exc:  # noqa: BLE001 - the results stand; say what was left behind
            print(f"querymeter demo: could not clean up the database: {exc}", file=sys.stderr)


def _kind(url: DatabaseURL | None) -> str:
    if url is None:
        return "SQLite"
    return "PostgreSQL" if url.kind == "postgresql" else "MariaDB/MySQL"


def run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the demo as the arguments ask; returns the exit status."""
    out = sys.stdout
    human = not args.json
    report_path: Path | None = None if args.no_report else args.report
    if report_path is not None:
        problem = _report_path_problem(report_path)
        if problem is not None:
            parser.error(f"argument --report: {str(report_path)!r}: {problem}")
    url: DatabaseURL | None = args.dsn
    try:
        database = open_database(url)
    except ImportError:
        postgresql = url is not None and url.kind == "postgresql"
        needs = (
            "psycopg: pip install 'psycopg[binary]'"
            if postgresql
            else "PyMySQL: pip install PyMySQL"
        )
        parser.error(f"argument --dsn: the {_kind(url)} demo needs {needs}")
    except Exception as exc:  # noqa: BLE001 - any connection failure is the user's to fix
        print(f"querymeter demo: cannot use the {_kind(url)} database: {exc}", file=sys.stderr)
        return 1

    levels: tuple[int, ...] = args.levels
    progress = _ProgressLine(sys.stderr)
    measured: list[Level] = []
    interrupted = False
    status = 0
    # Everything from here on is inside the try whose finally drops the demo's
    # tables: even the first print, which a closed pipe can fail.
    try:
        if human:
            print(
                f"querymeter {__version__} demo: {database.description}, {IMPLEMENTATION} core\n"
                f"{len(levels)} levels ({','.join(map(str, levels))} threads), "
                f"{args.duration:g} s each\n\n{_legend()}\n",
                file=out,
                flush=True,
            )
            print(
                _row("threads", "N", "X (queries/s)", "R (ms)", "U", "S (ms)", "errors"), file=out
            )
        progress.note("creating the demo's tables...")
        try:
            database.setup()
        except Exception as exc:  # noqa: BLE001 - a server that refuses is the user's to fix
            print(f"querymeter demo: cannot create the demo's tables: {exc}", file=sys.stderr)
            return 1
        with closing(run_levels(database, Meter(), levels, args.duration, progress)) as run:
            for level in run:
                progress.clear()
                measured.append(level)
                if human:
                    print(_level_line(level), file=out)
                    if (line := _error_line(level)) is not None:
                        print(line, file=out)
                    out.flush()
    except KeyboardInterrupt:
        progress.clear()
        interrupted = True
    finally:
        _close(database)

    if interrupted:
        print(
            f"querymeter demo: interrupted; {len(measured)} of {len(levels)} levels measured",
            file=sys.stderr,
        )
    shown = _measurements(measured)
    points = level_points(shown)
    model: usl.Model | None = None
    fit_problem: str | None = None
    if len(points) < 3:
        fit_problem = f"{len(points)} levels measured, and a model needs at least 3"
    else:
        try:
            model = usl.fit(points)
        except ValueError as exc:
            fit_problem = str(exc)
    reading = read_fit(model, points, cores=os.cpu_count(), fit_problem=fit_problem)
    if human:
        print(f"\n{fit_text(model, reading)}", file=out)

    written: str | None = None
    if report_path is not None and measured:
        notice = (
            f"Interrupted during level {len(measured) + 1} of {len(levels)}: "
            f"this report shows the {len(measured)} levels measured before."
            if interrupted
            else None
        )
        try:
            report_path.write_text(
                render_html(
                    shown,
                    model,
                    database=database.description,
                    implementation=IMPLEMENTATION,
                    duration_s=args.duration,
                    generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                    reading=reading,
                    notice=notice,
                ),
                encoding="utf-8",
            )
            written = os.path.abspath(report_path)
        except OSError as exc:
            print(f"querymeter demo: cannot write the report: {exc}", file=sys.stderr)
            status = 1
    if args.json:
        document = _json_document(
            database=database.description,
            duration_s=args.duration,
            levels=levels,
            measured=measured,
            model=model,
            reading=reading,
            interrupted=interrupted,
            report=written,
        )
        json.dump(document, out, indent=2, allow_nan=False)
        print(file=out)
    elif written is not None:
        print(f"\nreport: {written}", file=out)
    elif report_path is not None:
        print("\nno report: no level was measured", file=out)
    return EXIT_INTERRUPTED if interrupted else status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # parse_args() would blame the program's usage; the command's is the helpful one.
        command_parser: argparse.ArgumentParser = getattr(args, "command_parser", parser)
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    if args.command == "demo":
        return run_demo(args, args.command_parser)
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks it
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        try:
            status = _main(argv)
        except SystemExit as exit_:  # argparse: --help, --version, a usage error
            status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except KeyboardInterrupt:  # before or after the run, which keeps what it measured
            print("querymeter: interrupted", file=sys.stderr)
            status = EXIT_INTERRUPTED
        # Flushed here, where a closed pipe can still be handled quietly.
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        # The reader went away (| head): stop quietly.  Python would flush
        # stdout again at exit and complain, so point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
