"""querymeter's command line: ``python -m querymeter demo`` (also the ``querymeter`` script)."""

from __future__ import annotations

import argparse
import datetime
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import NamedTuple, TextIO

from . import __version__, usl
from .autoinstrument import _run as _run_command
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
from .report import (
    TEXT_WIDTH,
    Measurement,
    fit_text,
    level_points,
    read_fit,
    render_html,
    render_json,
    text_header,
    text_legend,
    text_level,
)
from .shared import _top
from .triage import _command as _health_command

__all__ = ["COMMANDS", "Command", "main"]

MAX_THREADS = 256
MAX_DURATION_S = 3600.0
#: The exit status of an interrupted run (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130
#: The exit status when the output's reader went away (128 + SIGPIPE): what a
#: shell reports for a program that the closed pipe's signal ended.
EXIT_BROKEN_PIPE = 141
#: Kept for importers: the report's text is wrapped to this width.
WIDTH = TEXT_WIDTH


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


def _add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.description = (
        "Run a small shop workload (reads and writes on a few tables, through "
        "the instrumented DB-API) at increasing concurrency; print throughput, concurrency, "
        "response time, utilization and service time per level, fit the Universal "
        "Scalability Law and say whether it describes the measurements, and write an HTML "
        "report with charts. Ctrl-C stops the run and keeps the levels measured so far."
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


class Command(NamedTuple):
    """A subcommand: its one-line help, what adds its arguments, and what runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    #: Runs the parsed arguments; gets the subcommand's parser for usage errors,
    #: returns the exit status.
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="querymeter",
        description="Count every database query with five exact counters, and read them as laws.",
    )
    parser.add_argument(
        "--version", action="version", version=f"querymeter {__version__} ({IMPLEMENTATION} core)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        subparser = commands.add_parser(name, help=command.help)
        command.add_arguments(subparser)
        subparser.set_defaults(command_parser=subparser)
    return parser


# -- the terminal ------------------------------------------------------------


def _measurement(level: Level) -> Measurement:
    """A demo level as the report takes it: plain data, no workload."""
    return Measurement(level.threads, level.interval, level.first_error)


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
                f"{args.duration:g} s each\n\n{text_legend()}\n",
                file=out,
                flush=True,
            )
            print(text_header(), file=out)
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
                    print(text_level(_measurement(level)), file=out)
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
    shown = [_measurement(level) for level in measured]
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
        document = render_json(
            shown,
            model,
            version=__version__,
            implementation=IMPLEMENTATION,
            database=database.description,
            duration_s=args.duration,
            levels_requested=levels,
            interrupted=interrupted,
            report=written,
            reading=reading,
        )
        print(document, file=out)
    elif written is not None:
        print(f"\nreport: {written}", file=out)
    elif report_path is not None:
        print("\nno report: no level was measured", file=out)
    return EXIT_INTERRUPTED if interrupted else status


#: The subcommands, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {
    "demo": Command(
        "measure a small workload at increasing concurrency and fit the USL",
        _add_demo_arguments,
        run_demo,
    ),
    "run": Command(
        "run a program with its database drivers instrumented, changing none of its code",
        _run_command.add_arguments,
        _run_command.run,
    ),
    "health": Command(
        "check the database and grade what the meter saw: SEV-1, SEV-2, SEV-3 or OK",
        _health_command.add_arguments,
        _health_command.run,
    ),
    "top": Command(
        "show a shared meter live, per worker and for the service, like iostat -x 1",
        _top.add_top_arguments,
        _top.run_top,
    ),
}


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        # parse_args() would blame the program's usage; the command's is the helpful one.
        command_parser: argparse.ArgumentParser = getattr(args, "command_parser", parser)
        command_parser.error(f"unrecognized arguments: {' '.join(extras)}")
    command = COMMANDS[args.command]  # argparse accepts no other name
    return command.run(args, args.command_parser)


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
