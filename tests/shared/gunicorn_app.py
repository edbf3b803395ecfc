"""A small WSGI app for the gunicorn tests: one counted PostgreSQL query a request, and its log.

Each worker opens the shared meter in gunicorn's ``post_fork`` (``open_meter``)
and counts psycopg's queries into it.  Independently of querymeter, it logs
every query's interval, ``time.monotonic_ns()`` read just before and just
after the query, to a file of its own (``<pid>.log``):

- ``Q <before> <after>``: an INSERT that completed;
- ``H <before>``: a ``SELECT pg_sleep(...)`` that hangs until the test
  SIGKILLs the worker, logged before it starts.

The settings come from the environment: ``H3TOP_METER`` (the shared meter's
path), ``H3TOP_LOGS`` (the directory of the logs), ``H3TOP_DSN``,
``H3TOP_TABLE`` (the table each INSERT adds a row to) and ``H3TOP_SLEEP_S``
(how long each INSERT's query sleeps on the server).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

import querymeter.dbapi
from querymeter.shared import SharedMeter

_worker: dict[str, Any] = {}


def open_meter() -> None:
    """In a new worker (gunicorn's post_fork): open the shared meter, count psycopg into it."""
    meter = SharedMeter(os.environ["H3TOP_METER"])
    querymeter.dbapi.instrument(psycopg, meter=meter)
    _worker["meter"] = meter
    pid = os.getpid()
    # Line-buffered: a line is in the file once written, even if SIGKILL follows.
    _worker["log"] = open(  # noqa: SIM115 - open for the worker's life
        os.path.join(os.environ["H3TOP_LOGS"], f"{pid}.log"), "a", buffering=1, encoding="ascii"
    )


def _connection() -> Any:
    connection = _worker.get("connection")
    if connection is None:
        connection = psycopg.connect(
            os.environ["H3TOP_DSN"],
            autocommit=True,
            application_name=f"{os.environ['H3TOP_TAG']}-{os.getpid()}",
        )
        _worker["connection"] = connection
    return connection


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """GET /query runs one INSERT, /hang a query that never ends, /ping none."""
    path = environ.get("PATH_INFO", "")
    if path == "/ping":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"pong"]
    log = _worker["log"]
    cursor = _connection().cursor()
    if path == "/hang":
        log.write(f"H {time.monotonic_ns()}\n")
        cursor.execute("SELECT pg_sleep(60)")
        body = b"woke up"
    else:
        table = os.environ["H3TOP_TABLE"]
        sleep_s = float(os.environ["H3TOP_SLEEP_S"])
        before = time.monotonic_ns()
        cursor.execute(
            f"INSERT INTO {table} (pid) SELECT %s FROM pg_sleep(%s)", (os.getpid(), sleep_s)
        )
        after = time.monotonic_ns()
        log.write(f"Q {before} {after}\n")
        body = b"ok"
    cursor.close()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
