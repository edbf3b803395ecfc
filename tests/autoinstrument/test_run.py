"""querymeter run -- COMMAND and QUERYMETER_AUTO=1: real programs, measured without a change."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import querymeter
from querymeter import Report
from querymeter.autoinstrument import bootstrap_path

from ..servers import driver, pg_digest, postgres_dsn, require_pg_stat_statements
from ._child import RUN, TIMEOUT_S, clean_environment, run, write_program

# A program that counts its own statements and prints the count: the oracle.
SQLITE_PROGRAM = """
import sqlite3, sys
connection = sqlite3.connect(":memory:")
sent = 0
connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"); sent += 1
for i in range(40):
    connection.execute("INSERT INTO items (name) VALUES (?)", (f"item {i}",)); sent += 1
for i in range(25):
    connection.execute("SELECT name FROM items WHERE id = ?", (i,)).fetchall(); sent += 1
try:
    connection.execute("SELECT * FROM no_such_table")
except sqlite3.OperationalError:
    sent += 1
print(f"sent {sent}")
sys.stdout.buffer.write(bytes(range(256)))   # not text: stdout must pass byte for byte
sys.stdout.flush()
sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
"""

INSERT_ITEMS = querymeter.fingerprint("INSERT INTO items (name) VALUES (?)")
INSERT_ORDERS = querymeter.fingerprint("INSERT INTO h5b_orders VALUES (?, ?)")

SUMMARY = re.compile(r"^querymeter: (\d[\d,]*) queries, (\d[\d,]*) errors in ", re.MULTILINE)


def summary_queries(stderr: bytes) -> list[tuple[int, int]]:
    """The (queries, errors) of every summary printed on stderr."""
    return [
        (int(q.replace(",", "")), int(e.replace(",", "")))
        for q, e in SUMMARY.findall(stderr.decode())
    ]


def test_stdout_is_the_programs_byte_for_byte_and_the_report_agrees_with_it(
    implementation: str, tmp_path: Path
) -> None:
    """The program's stdout is the same with querymeter; the report counts what the program sent."""
    app = write_program(tmp_path, SQLITE_PROGRAM)
    env = clean_environment(implementation)
    plain = run([sys.executable, str(app)], env)
    report = tmp_path / "run.json"
    measured = run(
        [*RUN, "--statements", "--report", str(report), "--", sys.executable, str(app)], env
    )
    assert plain.returncode == measured.returncode == 0
    assert measured.stdout == plain.stdout
    assert plain.stderr == b""
    sent = int(plain.stdout.split(b"\n")[0].split()[1])  # the program's own count: 67
    assert summary_queries(measured.stderr) == [(sent, 1)]
    text = measured.stderr.decode()
    for law in ("X  throughput", "N  concurrency", "R  response time", "U  utilization"):
        assert law in text
    assert "S  service time" in text
    assert INSERT_ITEMS in text
    assert f"querymeter: report saved to {report}" in text

    saved = querymeter.Report.load(report)
    assert saved.figures["queries"] == sent
    assert saved.figures["errors"] == 1
    calls = {s["fingerprint"]: s["calls"] for s in saved.statements}
    assert calls[INSERT_ITEMS] == 40
    assert calls[querymeter.fingerprint("SELECT name FROM items WHERE id = ?")] == 25
    assert sum(calls.values()) == sent
    assert saved.settings["core"] == implementation
    assert saved.ended_by == "exit"


def test_exit_status_passes_through(tmp_path: Path) -> None:
    """The program's exit status is the command's: 0 and 3 alike, with the summary printed."""
    app = write_program(tmp_path, SQLITE_PROGRAM)
    env = clean_environment()
    for status in (0, 3):
        result = run([*RUN, "--", sys.executable, str(app), str(status)], env)
        assert result.returncode == status
        assert len(summary_queries(result.stderr)) == 1


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_program_killed_by_a_signal_is_seen_as_killed_by_it(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A program that a signal kills: the caller sees that signal, the shell 128 + N."""
    # Whatever this test's runner left the signal as (SIGKILL cannot be changed).
    default_disposition = (
        "" if signum == signal.SIGKILL else f"signal.signal({int(signum)}, signal.SIG_DFL)"
    )
    app = write_program(
        tmp_path,
        f"""
        import os, signal, sqlite3
        {default_disposition}
        sqlite3.connect(":memory:").execute("SELECT 1")
        print("before", flush=True)
        os.kill(os.getpid(), {int(signum)})
        print("after")
        """,
    )
    env = clean_environment()
    result = run([*RUN, "--", sys.executable, str(app)], env)
    assert result.returncode == -signum
    assert result.stdout == b"before\n"
    in_shell = ["sh", "-c", '"$@"; echo "status $?"', "sh"]
    shell = run([*in_shell, *RUN, "--", sys.executable, str(app)], env)
    assert shell.stdout == f"before\nstatus {128 + signum}\n".encode()


@pytest.mark.parametrize(
    ("signum", "answer", "status"),
    [(signal.SIGTERM, "terminated", 0), (signal.SIGINT, "interrupted", 4)],
)
def test_signals_sent_to_querymeter_run_reach_the_program(
    tmp_path: Path, signum: signal.Signals, answer: str, status: int
) -> None:
    """SIGTERM and SIGINT sent to querymeter run's process reach the program's handlers."""
    app = write_program(
        tmp_path,
        """
        import signal, sqlite3, sys, time
        def terminated(signum, frame):
            print("terminated", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, terminated)
        # Whatever this test's runner left SIGINT as (ignored in a background job).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        connection = sqlite3.connect(":memory:")
        connection.execute("SELECT 1")
        try:
            print("ready", flush=True)  # inside: SIGINT may come as soon as it is read
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            connection.execute("SELECT 2")
            print("interrupted", flush=True)
            sys.exit(4)
        """,
    )
    process = subprocess.Popen(
        [*RUN, "--", sys.executable, str(app)],
        env=clean_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert stdout == f"{answer}\n".encode()
    assert process.returncode == status
    # The program ended by itself, so it reported: what it ran, and nothing else.
    assert summary_queries(stderr) == [(1 if signum == signal.SIGTERM else 2, 0)]


PG_PROGRAM = """
import sys
import psycopg
dsn, table = sys.argv[1:3]
sent = 0
with psycopg.connect(dsn, autocommit=True) as connection:
    connection.execute(f"CREATE TABLE {table} (id int, name text)"); sent += 1
    for i in range(30):
        connection.execute(f"INSERT INTO {table} VALUES (%s, %s)", (i, str(i))); sent += 1
    with connection.cursor() as cursor:
        for i in range(12):
            cursor.execute(f"SELECT name FROM {table} WHERE id = %s", (i,)); sent += 1
            cursor.fetchall()
print(f"sent {sent}")
"""


def run_pg_program(dsn: str, implementation: str, tmp_path: Path) -> tuple[str, int, Report]:
    """Run the PostgreSQL program measured: its table, its own count, and the saved report."""
    table = f"h5b_auto_{uuid.uuid4().hex[:10]}"
    app = write_program(tmp_path, PG_PROGRAM)
    report = tmp_path / "pg.json"
    result = run(
        [*RUN, "--statements", "--report", str(report), "--", sys.executable, str(app), dsn, table],
        clean_environment(implementation),
    )
    assert result.returncode == 0, result.stderr.decode()
    return table, int(result.stdout.split()[1]), querymeter.Report.load(report)


def drop(dsn: str, table: str) -> None:
    psycopg = driver("psycopg")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {table}")


def test_postgresql_report_agrees_with_the_programs_own_count(
    implementation: str, tmp_path: Path
) -> None:
    """Through psycopg, the report counts every statement the program says it sent."""
    dsn = postgres_dsn()
    table, sent, saved = run_pg_program(dsn, implementation, tmp_path)
    drop(dsn, table)
    assert sent == 43
    assert saved.figures["queries"] == sent
    assert sum(s["calls"] for s in saved.statements if table in s["fingerprint"]) == sent
    assert saved.environment["versions"]["psycopg"]


def test_postgresql_report_agrees_with_pg_stat_statements(
    implementation: str, tmp_path: Path
) -> None:
    """Through psycopg, the report's calls on the program's table equal pg_stat_statements'."""
    dsn = require_pg_stat_statements()
    table, sent, saved = run_pg_program(dsn, implementation, tmp_path)
    try:
        server = pg_digest(dsn, table)
        ours = sum(s["calls"] for s in saved.statements if table in s["fingerprint"])
        assert ours == server.calls == sent
    finally:
        drop(dsn, table)


def test_sqlalchemy_program_html_report(implementation: str, tmp_path: Path) -> None:
    """A SQLAlchemy program is measured (each statement once) and the HTML report names them."""
    app = write_program(
        tmp_path,
        """
        import sqlalchemy
        engine = sqlalchemy.create_engine("sqlite://")
        sent = 0
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE h5b_orders (id int, total int)"); sent += 1
            for i in range(9):
                connection.execute(
                    sqlalchemy.text("INSERT INTO h5b_orders VALUES (:i, :t)"), {"i": i, "t": i * 10}
                ); sent += 1
            total = connection.exec_driver_sql("SELECT sum(total) FROM h5b_orders").scalar()
            sent += 1
        print(f"sent {sent} total {total}")
        """,
    )
    html = tmp_path / "orders.html"
    data = tmp_path / "orders.json"
    env = clean_environment(implementation)
    result = run([*RUN, "--statements", "--report", str(html), "--", sys.executable, str(app)], env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"sent 11 total 360\n"
    page = html.read_text()
    assert page.lstrip().lower().startswith("<!doctype html")
    assert INSERT_ORDERS in page
    run([*RUN, "--statements", "--report", str(data), "--", sys.executable, str(app)], env)
    calls = {
        s["fingerprint"]: s["calls"]
        for s in querymeter.Report.load(data).statements
        if "h5b_orders" in s["fingerprint"]
    }
    assert sum(calls.values()) == 11
    assert calls[INSERT_ORDERS] == 9


def test_sample_captures_the_share_asked_for(tmp_path: Path) -> None:
    """--sample 1 captures every query, with its text, into the report."""
    app = write_program(tmp_path, SQLITE_PROGRAM)
    report = tmp_path / "sampled.json"
    result = run(
        [*RUN, "--sample", "1", "--report", str(report), "--", sys.executable, str(app)],
        clean_environment(),
    )
    assert result.returncode == 0
    saved = querymeter.Report.load(report)
    assert len(saved.samples) == saved.figures["queries"] == 67
    assert saved.statements == []  # kept only with --statements
    assert any("--statements" in note for note in saved.notes)
    assert sum(1 for s in saved.samples if s.error) == 1
    assert "67 queries sampled at 1 (in the report)" in result.stderr.decode()


def test_querymeter_auto_in_the_environment_measures_a_program(
    implementation: str, tmp_path: Path
) -> None:
    """PYTHONPATH=<bootstrap> and QUERYMETER_AUTO=1 measure a program started by other means."""
    app = write_program(tmp_path, SQLITE_PROGRAM)
    env = clean_environment(implementation)
    printed = run([sys.executable, "-m", "querymeter.autoinstrument", "--pythonpath"], env)
    assert printed.stdout.decode().strip() == bootstrap_path()
    env["PYTHONPATH"] = bootstrap_path()
    plain = run([sys.executable, str(app)], env)  # on the path, but not asked: nothing
    assert plain.stderr == b""
    for not_one in ("true", "yes", "0", " 1"):
        assert run([sys.executable, str(app)], {**env, "QUERYMETER_AUTO": not_one}).stderr == b""
    report = tmp_path / "auto-{pid}.json"
    measured = run(
        [sys.executable, str(app)],
        {
            **env,
            "QUERYMETER_AUTO": "1",
            "QUERYMETER_AUTO_STATEMENTS": "1",
            "QUERYMETER_AUTO_REPORT": str(report),
        },
    )
    assert measured.stdout == plain.stdout
    assert summary_queries(measured.stderr) == [(67, 1)]
    (saved,) = tmp_path.glob("auto-*.json")
    assert re.fullmatch(r"auto-\d+\.json", saved.name)
    assert querymeter.Report.load(saved).figures["queries"] == 67


def test_a_bad_setting_in_the_environment_leaves_the_program_alone(tmp_path: Path) -> None:
    """QUERYMETER_AUTO_SAMPLE not a rate: one line on stderr; the program runs, unmeasured."""
    app = write_program(tmp_path, SQLITE_PROGRAM)
    env = {
        **clean_environment(),
        "PYTHONPATH": bootstrap_path(),
        "QUERYMETER_AUTO": "1",
        "QUERYMETER_AUTO_SAMPLE": "often",
    }
    result = run([sys.executable, str(app), "3"], env)
    assert result.returncode == 3
    assert result.stderr.decode() == (
        "querymeter: QUERYMETER_AUTO_SAMPLE: a sampling rate is a number from 0 to 1, "
        "not 'often'; not measuring this program\n"
    )


def test_a_report_that_cannot_be_written_spoils_nothing(tmp_path: Path) -> None:
    """A report path in a missing folder: the summary says so, the exit status is the program's."""
    app = write_program(tmp_path, SQLITE_PROGRAM)
    report = tmp_path / "missing" / "run.json"
    command = [*RUN, "--report", str(report), "--", sys.executable, str(app), "5"]
    result = run(command, clean_environment())
    assert result.returncode == 5
    assert len(summary_queries(result.stderr)) == 1
    assert "querymeter: could not save the report" in result.stderr.decode()


def test_an_existing_sitecustomize_still_runs(tmp_path: Path) -> None:
    """The environment's own sitecustomize is imported after querymeter's, as it would be alone."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text(
        "import sys\nMARK = 'their sitecustomize'\nsys.stderr.write('theirs ran\\n')\n"
    )
    app = write_program(
        tmp_path,
        """
        import sqlite3, sitecustomize
        sqlite3.connect(":memory:").execute("SELECT 1")
        print(sitecustomize.MARK)
        """,
    )
    env = {**clean_environment(), "PYTHONPATH": str(theirs)}
    plain = run([sys.executable, str(app)], env)
    measured = run([*RUN, "--", sys.executable, str(app)], env)
    assert plain.stdout == measured.stdout == b"their sitecustomize\n"
    assert measured.stderr.decode().startswith("theirs ran\n")
    assert summary_queries(measured.stderr) == [(1, 0)]


def test_programs_the_program_starts_run_without_querymeter(tmp_path: Path) -> None:
    """querymeter run measures its program only: the environment it passes on is the original."""
    app = write_program(
        tmp_path,
        """
        import json, os, subprocess, sys
        child = subprocess.run(
            [sys.executable, "-c",
             "import json, os, sys; print(json.dumps({k: v for k, v in os.environ.items()"
             " if k.startswith(('QUERYMETER_AUTO', 'PYTHONPATH'))}));"
             " print(json.dumps(sys.path[1:2]))"],
            capture_output=True, text=True, check=True,
        )
        print(child.stdout, end="")
        sys.stderr.write(child.stderr)
        """,
    )
    for pythonpath in (None, "/opt/h5b-their-path"):
        env = clean_environment()
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
        result = run([*RUN, "--", sys.executable, str(app)], env)
        assert result.returncode == 0, result.stderr.decode()
        seen = json.loads(result.stdout.decode().splitlines()[0])
        assert seen == ({} if pythonpath is None else {"PYTHONPATH": pythonpath})
        assert len(summary_queries(result.stderr)) == 1  # the program's; not its child's


def test_run_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    """No command: usage error 2; a command not found: 127; a bad report suffix: 2, said why."""
    env = clean_environment()
    missing = run([*RUN], env)
    assert missing.returncode == 2
    assert b"give the program to run after --" in missing.stderr
    not_found = run([*RUN, "--", "h5b-no-such-program"], env)
    assert not_found.returncode == 127
    assert b"cannot run 'h5b-no-such-program'" in not_found.stderr
    suffix = run([*RUN, "--report", "run.txt", "--", sys.executable, "-c", "pass"], env)
    assert suffix.returncode == 2
    assert b"cannot tell the report's format" in suffix.stderr
    sample = run([*RUN, "--sample", "2", "--", sys.executable, "-c", "pass"], env)
    assert sample.returncode == 2
    assert b"from 0 to 1" in sample.stderr


def test_a_forked_child_that_exits_normally_prints_no_second_summary(tmp_path: Path) -> None:
    """Only the process that started reports: a forked child running atexit stays quiet."""
    app = write_program(
        tmp_path,
        """
        import os, sqlite3, sys
        connection = sqlite3.connect(":memory:")
        connection.execute("SELECT 1")
        pid = os.fork()
        if pid == 0:
            sqlite3.connect(":memory:").execute("SELECT 2")
            sys.exit(0)   # through atexit, unlike multiprocessing's os._exit
        os.waitpid(pid, 0)
        connection.execute("SELECT 3")
        print("parent done")
        """,
    )
    result = run([*RUN, "--", sys.executable, str(app)], clean_environment())
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"parent done\n"
    assert summary_queries(result.stderr) == [(2, 0)]


def test_drivers_option_restricts_what_the_program_counts(tmp_path: Path) -> None:
    """--drivers psycopg leaves a sqlite3 program uncounted; --drivers sqlite3 counts it."""
    app = write_program(tmp_path, SQLITE_PROGRAM)
    env = clean_environment()
    for drivers, counted in (("psycopg,sqlalchemy", (0, 0)), ("sqlite3", (67, 1))):
        result = run([*RUN, "--drivers", drivers, "--", sys.executable, str(app)], env)
        assert result.returncode == 0, result.stderr.decode()
        assert summary_queries(result.stderr) == [counted]
    unknown = run([*RUN, "--drivers", "oracledb", "--", sys.executable, str(app)], env)
    assert unknown.returncode == 2
    assert b"does not know the driver 'oracledb'" in unknown.stderr


def test_the_report_shows_the_markers_the_program_made(tmp_path: Path) -> None:
    """A change marker the program makes while it runs is in its saved report and its summary."""
    app = write_program(
        tmp_path,
        "import sqlite3, querymeter\n"
        "sqlite3.connect(':memory:').execute('SELECT 1')\n"
        "querymeter.mark('migrate v7', step=3)\n",
    )
    report = tmp_path / "run.json"
    result = run(
        [*RUN, "--report", str(report), "--", sys.executable, str(app)], clean_environment()
    )
    assert result.returncode == 0, result.stderr
    saved = querymeter.Report.load(report)
    assert [(m.label, dict(m.attrs)) for m in saved.markers] == [("migrate v7", {"step": 3})]
    assert saved.started.timestamp() <= saved.markers[0].wall <= saved.ended.timestamp()
    # The summary on stderr lists it too, as str(marker) gives it.
    lines = result.stderr.decode().splitlines()
    assert "  change markers (1 of 1, newest last):" in lines
    assert f"    {saved.markers[0]}" in lines
