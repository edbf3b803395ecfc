"""The middleware tests' fixtures: a counted SQLite file, the scopes that ended, the header."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import querymeter
from querymeter import dbapi, scopes
from querymeter.meter import Meter as MeterType

from ..conftest import load_meter_class

# The statement every view runs, and its fingerprint as pt-fingerprint writes it.
QUERY = "SELECT owner FROM qm_mw_items WHERE id = ?"
FINGERPRINT = "select owner from qm_mw_items where id = ?"

_SERVER_TIMING = re.compile(r'db;dur=(\d+\.\d{3});desc="(\d+) queries"')


@pytest.fixture(scope="module")
def counting_meter(implementation: str) -> Iterator[MeterType]:
    """A meter of the core under test that sqlite3 counts into, for the module's tests."""
    meter = load_meter_class(implementation)()
    dbapi.instrument(sqlite3, meter=meter)
    try:
        yield meter
    finally:
        dbapi.uninstrument(sqlite3)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with the table the views read (20 rows)."""
    path = tmp_path_factory.mktemp("middleware") / "qm_mw.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE qm_mw_items (id INTEGER PRIMARY KEY, owner INTEGER)")
    connection.executemany("INSERT INTO qm_mw_items VALUES (?, ?)", [(i, i % 3) for i in range(20)])
    connection.commit()
    connection.close()
    return path


def run_queries(connection: sqlite3.Connection, count: int) -> int:
    """Run QUERY count times on the connection; how many ran, counted here."""
    ran = 0
    for item in range(count):
        connection.execute(QUERY, (item,)).fetchall()
        ran += 1
    return ran


@pytest.fixture
def ended_scopes() -> Iterator[list[querymeter.Scope]]:
    """The scopes that end during the test, in order."""
    ended: list[querymeter.Scope] = []
    scopes.add_exit_listener(ended.append)
    try:
        yield ended
    finally:
        scopes.remove_exit_listener(ended.append)


def server_timing(value: str | None) -> tuple[float, int]:
    """The DB time in ms and the query count of a Server-Timing header of ours."""
    assert value is not None, "no Server-Timing header"
    match = _SERVER_TIMING.fullmatch(value)
    assert match is not None, value
    return float(match[1]), int(match[2])


def assert_timing_fits(value: str | None, queries: int, wall_ns: int) -> None:
    """The header counts the queries, and its DB time lies within the request's wall time."""
    dur_ms, counted = server_timing(value)
    assert counted == queries
    assert 0 <= dur_ms * 1_000_000 <= wall_ns
    if queries:
        assert dur_ms > 0
