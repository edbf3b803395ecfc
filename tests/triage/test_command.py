"""`querymeter health URL`: the summary on stdout, and the severity in the exit status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


WORKER = """
import sqlite3, sys, time
import querymeter, querymeter.dbapi
meter = querymeter.SharedMeter(sys.argv[1])
meter.enable_statements()
connection = querymeter.dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
connection.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
for _ in range(200):
    connection.execute("SELECT id FROM orders WHERE id = ?", (1,)).fetchall()
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        connection.execute("SELECT * FROM invoices WHERE id = ?", (1,))
    except sqlite3.OperationalError:
        pass
    time.sleep(0.002)
meter.close()
"""


def test_a_shared_meter_is_graded_for_the_whole_service(tmp_path: Path) -> None:
    """--meter PATH grades what another process counts: its failing statement is SEV-1."""
    path = str(tmp_path / "service.querymeter")
    with subprocess.Popen(
        [sys.executable, "-c", WORKER, path, "20"], stdout=subprocess.PIPE, text=True
    ) as worker:
        try:
            assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
            done = health(f"sqlite:///{tmp_path / 'check.db'}", "--meter", path, "--window", "0.5")
        finally:
            worker.kill()
    assert done.returncode == 11, done.stdout + done.stderr
    assert done.stdout.startswith("SEV-1: most queries fail (error ratio at least 50 %)\n")
    assert "connect: SELECT 1 answered in" in done.stdout
    assert (
        "scope: errors: one statement (100 %): select * from invoices where id = ?" in done.stdout
    )


def test_a_missing_shared_meter_is_a_usage_error(tmp_path: Path) -> None:
    """--meter naming no file: exit status 2, and no file made."""
    path = tmp_path / "none.querymeter"
    done = health(f"sqlite:///{tmp_path / 'check.db'}", "--meter", str(path))
    assert done.returncode == 2 and "no shared meter there" in done.stderr
    assert not path.exists()
