"""`querymeter health URL`: the summary on stdout, and the severity in the exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.servers import driver, postgres_dsn


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "querymeter", "health", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def pg_url() -> str:
    parts = dict(item.split("=", 1) for item in postgres_dsn().split())
    return (
        f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
        f"{parts.get('port', '5432')}/{parts.get('dbname', 'test')}"
    )


@pytest.mark.servers
def test_a_database_that_answers_is_ok() -> None:
    """PostgreSQL answering: "OK" first, the SELECT 1's time, exit status 0."""
    driver("psycopg")
    done = health(pg_url(), "--window", "0.1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("OK: no rule holds\n")
    assert "connect: SELECT 1 answered in" in done.stdout


def test_a_refused_connection_is_sev1_with_status_11() -> None:
    """Nothing listening on the port: SEV-1, cannot connect, exit status 11."""
    driver("psycopg")
    done = health("postgresql://nobody@127.0.0.1:9/none", "--window", "0.1")
    assert done.returncode == 11, done.stderr
    assert done.stdout.startswith("SEV-1: cannot connect to the database\n")


def test_json_output_is_the_assessment() -> None:
    """--json prints the assessment as one JSON document."""
    driver("psycopg")
    done = health("postgresql://nobody@127.0.0.1:9/none", "--window", "0.1", "--json")
    document = json.loads(done.stdout)
    assert document["severity"] == "SEV-1"
    assert document["connect"]["ok"] is False
    assert document["findings"][0]["rule"] == "cannot connect to the database"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["not-a-url"], "expected a database URL"),
        (["postgresql://x@127.0.0.1/db", "--window", "0"], "expected seconds"),
        (["nosuchdialect://x@127.0.0.1/db"], "bad URL"),
    ],
)
def test_usage_errors_exit_2_with_a_message(args: list[str], message: str) -> None:
    """A bad URL or window: exit status 2 and a message naming it, no traceback."""
    done = health(*args)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
