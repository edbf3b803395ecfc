"""``querymeter run -- python app.py``: a program run with autoinstrument on, its code unchanged.

The command becomes the program: querymeter sets the environment up
(``QUERYMETER_AUTO=1`` and the rest of ``_startup``'s variables, and its
bootstrap folder first on ``PYTHONPATH``) and then *executes* the program in
its own process (``os.execvpe``, as ``opentelemetry-instrument`` does).  So
the exit status, the signals and the process id are the program's own: a
signal sent to ``querymeter run`` reaches the program because it is the
program, and a program killed by signal N is what the shell sees (status
128+N); there is nothing to forward and nothing to re-raise.  The program's
``sitecustomize`` does the measuring, and prints at its exit, on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from pathlib import Path

from ._hooks import TARGETS, _targets
from ._startup import BOOTSTRAP, ENVIRONMENT, check_report_path, parse_sample

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_NEEDS_WRAPT",
    "EXIT_NOT_FOUND",
    "add_arguments",
    "environment",
    "run",
]

#: The shell's statuses for a command it found but could not run, and one it did not find.
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
#: querymeter run's status when wrapt is missing: the program did not run.
EXIT_NEEDS_WRAPT = 1


def _report_path(text: str) -> Path:
    try:
        check_report_path(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return Path(text)


def _sample(text: str) -> float:
    try:
        return parse_sample(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _drivers(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    try:
        _targets(names)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``querymeter run``."""
    parser.description = (
        "Run a program with every supported database driver and SQLAlchemy instrumented "
        "as it imports them, without changing its code. At the program's exit, querymeter "
        "prints the laws of the five counters (throughput, concurrency, response time, "
        "utilization, service time) and the top statements on stderr, and saves the report "
        "when asked; the program's stdout, exit status and signals are its own."
    )
    parser.usage = "querymeter run [options] -- COMMAND [ARGS...]"
    parser.add_argument(
        "--report",
        type=_report_path,
        metavar="PATH",
        help="save the report there at the program's exit: JSON, HTML or Markdown by the "
        "suffix (.json, .html, .md); {pid} in it becomes the process id",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="keep the figures of each statement (by fingerprint) and print the top ones",
    )
    parser.add_argument(
        "--sample",
        type=_sample,
        metavar="RATE",
        help="capture this share of the queries (0 to 1), with their text, for the report",
    )
    parser.add_argument(
        "--drivers",
        type=_drivers,
        metavar="NAME,...",
        help=f"instrument only these (default: all of {', '.join(TARGETS)})",
    )
    parser.add_argument(
        # Not "command": the top-level parser keeps the subcommand's name there.
        "program",
        nargs=argparse.REMAINDER,
        metavar="-- COMMAND [ARGS...]",
        help="the program to run, after --, like: -- python app.py",
    )


def environment(
    base: dict[str, str],
    *,
    report: Path | None = None,
    statements: bool = False,
    sample: float | None = None,
    drivers: tuple[str, ...] | None = None,
) -> dict[str, str]:
    """The program's environment: ``base`` with querymeter's variables and bootstrap folder."""
    env = {name: value for name, value in base.items() if name not in ENVIRONMENT}
    env["QUERYMETER_AUTO"] = "1"
    env["QUERYMETER_AUTO_RUN"] = "1"
    if report is not None:
        # Absolute: the program may change its directory before it exits.
        env["QUERYMETER_AUTO_REPORT"] = str(report.absolute())
    if statements:
        env["QUERYMETER_AUTO_STATEMENTS"] = "1"
    if sample is not None:
        env["QUERYMETER_AUTO_SAMPLE"] = repr(sample)
    if drivers is not None:
        env["QUERYMETER_AUTO_DRIVERS"] = ",".join(drivers)
    # Joined so that the program can take exactly this entry out again:
    # "bootstrap" alone when there was no PYTHONPATH, "bootstrap:<theirs>" else.
    theirs = base.get("PYTHONPATH")
    env["PYTHONPATH"] = str(BOOTSTRAP) if theirs is None else f"{BOOTSTRAP}{os.pathsep}{theirs}"
    return env


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Execute the program; returns only when it could not be started (126 or 127)."""
    command = list(args.program)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("give the program to run after --, like: querymeter run -- python app.py")
    if importlib.util.find_spec("wrapt") is None:
        # Told here, once, rather than by the program's sitecustomize as a fault.
        print(
            "querymeter run needs wrapt (its post-import hooks): pip install 'querymeter[auto]'",
            file=sys.stderr,
        )
        return EXIT_NEEDS_WRAPT
    env = environment(
        dict(os.environ),
        report=args.report,
        statements=args.statements,
        sample=args.sample,
        drivers=args.drivers,
    )
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # Python ignores SIGPIPE and SIGXFSZ for itself; an ignored signal stays
    # ignored across exec, and the program must get the defaults it would
    # have had (as subprocess's restore_signals does).
    saved = {}
    for name in ("SIGPIPE", "SIGXFSZ"):
        number = getattr(signal, name, None)
        if number is not None:
            saved[number] = signal.signal(number, signal.SIG_DFL)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        for number, handler in saved.items():
            signal.signal(number, handler)
        status = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
        print(f"querymeter run: cannot run {command[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return status
    raise AssertionError("os.execvpe returned")  # pragma: no cover - exec never returns
