"""Where the real database servers are, and what to do when one is missing."""

from __future__ import annotations

import importlib
import os
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
