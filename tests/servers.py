"""Where the real database servers are, and what to do when one is missing."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

# Strict, like every switch of ours.  CI sets it: a missing server or driver
# fails the run instead of silently skipping the tests that need it.
REQUIRE_SERVERS = os.environ.get("QUERYMETER_REQUIRE_SERVERS", "0") == "1"

PG_DSN = os.environ.get("QUERYMETER_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
MYSQL = {
    "host": os.environ.get("QUERYMETER_MYSQL_HOST", "127.0.0.1"),
    "port": int(os.environ.get("QUERYMETER_MYSQL_PORT", "3306")),
    "user": os.environ.get("QUERYMETER_MYSQL_USER", "root"),
    "password": os.environ.get("QUERYMETER_MYSQL_PASSWORD", ""),
    "database": os.environ.get("QUERYMETER_MYSQL_DATABASE", "test"),
}


def unavailable(reason: str) -> None:
    """Skip with the reason, or fail under QUERYMETER_REQUIRE_SERVERS=1."""
    if REQUIRE_SERVERS:
        pytest.fail(f"{reason} (and QUERYMETER_REQUIRE_SERVERS=1)")
    pytest.skip(reason)


def driver(name: str) -> ModuleType:
    """Import a driver the tests need, or skip (fail under REQUIRE_SERVERS) without it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"the {name} driver is not installed: {exc}")
        raise  # unreachable: unavailable() always raises


_checked: dict[str, str | None] = {}


def postgres_dsn() -> str:
    """The PostgreSQL DSN, once the server is known to answer."""
    if "pg" not in _checked:
        psycopg = driver("psycopg")
        try:
            psycopg.connect(PG_DSN, connect_timeout=5).close()
            _checked["pg"] = None
        except Exception as exc:
            _checked["pg"] = f"PostgreSQL at {PG_DSN!r} is not reachable: {exc}"
    if _checked["pg"]:
        unavailable(_checked["pg"])
    return PG_DSN


def mysql_params() -> dict[str, Any]:
    """PyMySQL connect() arguments, once the server is known to answer."""
    if "mysql" not in _checked:
        pymysql = driver("pymysql")
        try:
            pymysql.connect(connect_timeout=5, **MYSQL).close()
            _checked["mysql"] = None
        except Exception as exc:
            _checked["mysql"] = (
                f"MariaDB/MySQL at {MYSQL['host']}:{MYSQL['port']} is not reachable: {exc}"
            )
    if _checked["mysql"]:
        unavailable(_checked["mysql"])
    return dict(MYSQL)


# ------------------------------------------------ the servers' own statement digests
#
# Per-statement figures are checked against what the servers count themselves:
# PostgreSQL's pg_stat_statements and MariaDB's performance_schema digest summary
# (.ci/run turns both on).  Both are server-wide: a reset clears every session's
# figures, and a reading sums every session's.


@dataclass(frozen=True)
class ServerDigest:
    """A server's own figures, summed over the statements whose text names one table."""

    statements: tuple[str, ...]  # the server's normalized texts, for failure messages
    calls: int
    errors: int | None  # None: the server does not count failed statements (PostgreSQL)
    rows: int  # rows affected or returned, as the server counts them
    time_ns: int  # server execution time, converted to nanoseconds


def require_pg_stat_statements() -> str:
    """The PostgreSQL DSN, once pg_stat_statements is known to be loaded and created in it."""
    dsn = postgres_dsn()
    if "pg_stat_statements" not in _checked:
        psycopg = driver("psycopg")
        try:
            with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as connection:
                connection.execute("SELECT count(*) FROM pg_stat_statements")
            _checked["pg_stat_statements"] = None
        except Exception as exc:
            first_line = str(exc).splitlines()[0]
            _checked["pg_stat_statements"] = (
                f"pg_stat_statements is not usable at {dsn!r} (it needs"
                f" shared_preload_libraries and CREATE EXTENSION; see .ci/run): {first_line}"
            )
    if _checked["pg_stat_statements"]:
        unavailable(_checked["pg_stat_statements"])
    return dsn


def require_performance_schema() -> dict[str, Any]:
    """PyMySQL connect() arguments, once the server keeps timed statement digests."""
    params = mysql_params()
    if "performance_schema" not in _checked:
        problem = None
        try:
            problem = _performance_schema_problem(params)
        except Exception as exc:
            problem = str(exc)
        _checked["performance_schema"] = (
            None
            if problem is None
            else (
                f"MariaDB/MySQL at {params['host']}:{params['port']} keeps no statement"
                f" digests (performance_schema=ON and its consumers; see .ci/run): {problem}"
            )
        )
    if _checked["performance_schema"]:
        unavailable(_checked["performance_schema"])
    return params


def _performance_schema_problem(params: dict[str, Any]) -> str | None:
    """What stops the digest summary from counting and timing statements, if anything."""
    pymysql = driver("pymysql")
    connection = pymysql.connect(connect_timeout=5, **params)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT @@performance_schema")
            if cursor.fetchone()[0] != 1:
                return "performance_schema is OFF"
            cursor.execute(
                "SELECT NAME FROM performance_schema.setup_consumers WHERE ENABLED <> 'YES'"
                " AND NAME IN ('global_instrumentation', 'thread_instrumentation',"
                " 'statements_digest')"
            )
            if off := [name for (name,) in cursor.fetchall()]:
                return f"consumers disabled: {', '.join(off)}"
            # Untimed instruments would leave SUM_TIMER_WAIT at 0: a comparison
            # of times against it could not fail.
            cursor.execute(
                "SELECT count(*) FROM performance_schema.setup_instruments"
                " WHERE NAME LIKE 'statement/sql/%' AND (ENABLED <> 'YES' OR TIMED <> 'YES')"
            )
            if untimed := cursor.fetchone()[0]:
                return f"{untimed} statement/sql/ instruments are disabled or untimed"
    finally:
        connection.close()
    return None


def reset_pg_digests(dsn: str) -> None:
    """Clear pg_stat_statements (every database's figures) for a clean measurement."""
    psycopg = driver("psycopg")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_statements_reset()")


def reset_mysql_digests(params: dict[str, Any]) -> None:
    """Clear the digest summary (every schema's figures) for a clean measurement."""
    pymysql = driver("pymysql")
    connection = pymysql.connect(**params)
    try:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE performance_schema.events_statements_summary_by_digest")
    finally:
        connection.close()


def pg_digest(dsn: str, table: str) -> ServerDigest:
    """pg_stat_statements in the DSN's database, summed over the statements naming ``table``.

    ``table`` is matched as a whole word, so that ``t`` does not match ``t2``.
    PostgreSQL keeps one row per query id and counts only statements that
    completed: a failed statement leaves no trace in calls or time.
    Read it after the client's reading: a counted driver would count this query too.
    """
    psycopg = driver("psycopg")
    with psycopg.connect(dsn, autocommit=True) as connection:
        found = connection.execute(
            "SELECT s.query, s.calls, s.rows, s.total_exec_time"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE d.datname = current_database() AND s.query ~ ('\\m' || %s::text || '\\M')",
            (table,),
        ).fetchall()
    return ServerDigest(
        statements=tuple(query for query, _, _, _ in found),
        calls=sum(calls for _, calls, _, _ in found),
        errors=None,
        rows=sum(rows for _, _, rows, _ in found),
        # total_exec_time is in milliseconds (a float).
        time_ns=round(sum(ms for _, _, _, ms in found) * 1_000_000),
    )


def mysql_digest(params: dict[str, Any], table: str) -> ServerDigest:
    """The digest summary of the connection's schema, summed over the statements naming ``table``.

    ``table`` is matched as a whole word.  MariaDB counts failed statements too
    (COUNT_STAR, with SUM_ERRORS), and times in picoseconds (SUM_TIMER_WAIT).
    Read it after the client's reading: a counted driver would count this query too.
    """
    pymysql = driver("pymysql")
    connection = pymysql.connect(**params)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT DIGEST_TEXT, COUNT_STAR, SUM_ERRORS, SUM_ROWS_AFFECTED + SUM_ROWS_SENT,"
                " SUM_TIMER_WAIT FROM performance_schema.events_statements_summary_by_digest"
                " WHERE SCHEMA_NAME = %s AND DIGEST_TEXT REGEXP CONCAT('\\\\b', %s, '\\\\b')",
                (params["database"], table),
            )
            found = cursor.fetchall()
    finally:
        connection.close()
    return ServerDigest(
        statements=tuple(text for text, _, _, _, _ in found),
        calls=sum(int(calls) for _, calls, _, _, _ in found),
        errors=sum(int(errors) for _, _, errors, _, _ in found),
        rows=sum(int(rows) for _, _, _, rows, _ in found),
        time_ns=sum(int(ps) for _, _, _, _, ps in found) // 1000,
    )
