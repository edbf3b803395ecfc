"""`querymeter health URL`: the triage from the command line, for a database URL.

It checks the connection through a pool of one connection of its own and,
with ``--meter PATH``, grades the figures a shared meter (many processes, see
docs/processes.md) holds for the whole service.  The exit status says the
severity, so that scripts and monitoring can act on it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from ._health import Health, health

__all__ = ["EXIT_STATUS", "add_arguments", "engine_url", "run"]

#: Exit status by severity; 2 stays argparse's for a usage error.
EXIT_STATUS = {"OK": 0, "SEV-1": 11, "SEV-2": 12, "SEV-3": 13}

# Drivers querymeter's tests use, for URLs that name none.
_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def engine_url(text: str) -> str:
    """A SQLAlchemy URL from ``text``; a URL that names no driver gets psycopg 3 or PyMySQL."""
    scheme, separator, rest = text.partition("://")
    if not separator:
        raise argparse.ArgumentTypeError(
            f"expected a database URL such as postgresql://user@host/db, got {text!r}"
        )
    return f"{_DRIVERS.get(scheme.lower(), scheme)}://{rest}"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 60):
        raise argparse.ArgumentTypeError(
            f"expected seconds, more than 0 and at most 60, got {text!r}"
        )
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Check that the database answers (a read-only SELECT 1), and grade what a shared "
        "meter holds: error ratio and response time against the meter's own history, "
        "pools, queries stuck in flight, the initial scope. Prints a summary that starts "
        "with the severity; the exit status is 0 (OK), 11 (SEV-1), 12 (SEV-2) or 13 (SEV-3)."
    )
    parser.add_argument(
        "url",
        type=engine_url,
        metavar="URL",
        help="the database: a SQLAlchemy URL; postgresql:// goes through psycopg 3 and "
        "mysql:// or mariadb:// through PyMySQL unless the URL names a driver",
    )
    parser.add_argument(
        "--meter",
        metavar="PATH",
        help="a shared meter's file (querymeter.SharedMeter): grade the service's figures",
    )
    parser.add_argument(
        "--window",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="how long to watch the figures (default 1)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="how long the SELECT 1 may take (default 2)",
    )
    parser.add_argument("--json", action="store_true", help="print the assessment as JSON")


def _engine(url: str, timeout: float) -> Any:
    from sqlalchemy import create_engine

    # One connection at most: the check must not add load to a database in trouble.
    return create_engine(url, pool_size=1, max_overflow=0, pool_timeout=timeout)


def _meter(path: str | None) -> Any:
    """The shared meter at ``path`` with its statement table, opened to read: never made."""
    if path is None:
        return None
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise ValueError(f"{path}: no shared meter there (a worker makes it when it opens it)")
    from ..shared import SharedMeter
    from ..shared._statements import shared_statements_max, statements_path

    meter = SharedMeter(path)
    max_statements = shared_statements_max(statements_path(path))
    if max_statements is not None:
        meter.enable_statements(max_statements)
    return meter


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        engine = _engine(args.url, args.timeout)
    except ImportError as exc:
        parser.error(f"cannot load the driver for {args.url.partition(':')[0]}: {exc}")
    except Exception as exc:  # noqa: BLE001 - a bad URL is the user's to fix
        parser.error(f"bad URL: {exc}")
    try:
        try:
            meter = _meter(args.meter)
        except (OSError, ValueError) as exc:
            parser.error(f"cannot open the shared meter: {exc}")
        try:
            assessed: Health = health(
                meter, engine, window=args.window, connect_timeout=args.timeout
            )
        finally:
            if meter is not None:
                meter.close()
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(assessed.as_dict(), indent=2))
    else:
        print(assessed)
    sys.stdout.flush()
    return EXIT_STATUS[assessed.severity]
