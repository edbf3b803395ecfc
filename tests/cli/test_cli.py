"""The command line: python -m querymeter demo on SQLite, PostgreSQL and MariaDB, and its errors."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import querymeter
from querymeter import usl
from querymeter.demo import parse_database_url

from ..servers import MYSQL, driver, mysql_params, postgres_dsn

QUICK = ["--duration", "0.3", "--levels", "1,2,4"]
COLUMN_NAMES = ("threads", "N", "X", "R", "U", "S", "errors")


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """python -m querymeter ARGS, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "querymeter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def level_lines(stdout: str) -> list[list[str]]:
    """The table rows the demo printed, one per level."""
    rows = []
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) == 7 and all(re.fullmatch(r"[\d,.]+", cell) for cell in cells):
            rows.append(cells)
    return rows


def postgres_url() -> str:
    """The test PostgreSQL server as a postgresql:// URL."""
    psycopg = driver("psycopg")
    parts = psycopg.conninfo.conninfo_to_dict(postgres_dsn())
    password = f":{parts['password']}" if parts.get("password") else ""
    return (
        f"postgresql://{parts.get('user', 'postgres')}{password}@{parts.get('host', '127.0.0.1')}:"
        f"{parts.get('port', 5432)}/{parts.get('dbname', 'test')}"
    )


def mysql_url(scheme: str = "mariadb") -> str:
    """The test MariaDB/MySQL server as a URL of the given scheme."""
    params = mysql_params()
    password = f":{params['password']}" if params["password"] else ""
    return (
        f"{scheme}://{params['user']}{password}@{params['host']}:{params['port']}/"
        f"{params['database']}"
    )


def demo_schemas(kind: str) -> set[str]:
    """The demo's schemas (PostgreSQL) or databases (MariaDB) on the test server now."""
    if kind == "postgresql":
        psycopg = driver("psycopg")
        with psycopg.connect(postgres_dsn(), autocommit=True) as connection:
            rows = connection.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'querymeter_demo_%'"
            ).fetchall()
        return {row[0] for row in rows}
    pymysql = driver("pymysql")
    connection = pymysql.connect(**mysql_params())
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW DATABASES LIKE 'querymeter\\_demo\\_%'")
            return {row[0] for row in cursor.fetchall()}
    finally:
        connection.close()


def dsn_arguments(kind: str) -> list[str]:
    """The --dsn arguments that run the demo on one kind of database."""
    if kind == "sqlite":
        return []
    return ["--dsn", postgres_url() if kind == "postgresql" else mysql_url()]


def test_the_demo_measures_each_level_fits_and_writes_a_report(tmp_path: Path) -> None:
    """Each level is printed with figures that obey Little's Law, then the model and the report."""
    report = tmp_path / "report.html"
    result = run("demo", *QUICK, "--report", str(report), cwd=tmp_path, env=_tmpdir(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = level_lines(result.stdout)
    assert [row[0] for row in rows] == ["1", "2", "4"]
    for _, n, x, r_ms, u, s_ms, _errors in rows:
        concurrency, throughput = float(n), float(x.replace(",", ""))
        response_time, utilization = float(r_ms) / 1e3, float(u)
        service_time = float(s_ms) / 1e3
        # Little's Law and the Utilization Law, to the printed precision.
        assert concurrency == pytest.approx(throughput * response_time, rel=0.02, abs=0.01)
        assert utilization == pytest.approx(throughput * service_time, rel=0.02, abs=0.01)
        assert 0 < utilization <= 1
    assert "SQLite" in result.stdout
    assert "Universal Scalability Law" in result.stdout
    # Three points for three coefficients: the fit tests nothing, and says so.
    assert "does not describe these measurements" in result.stdout
    assert "3 points for 3 coefficients" in result.stdout
    assert f"report: {report}" in result.stdout
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    assert not list(tmp_path.glob("querymeter-demo-*"))  # its SQLite directory is gone


def test_the_terminal_explains_every_column(tmp_path: Path) -> None:
    """Before the table, one line per column says what it means, as the report does."""
    result = run("demo", *QUICK, "--no-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    legend = result.stdout.split("What the columns mean:\n", 1)[1].split("\n\n", 1)[0]
    named = [
        line.split()[0] for line in legend.splitlines() if line.startswith("  ") and line[2] != " "
    ]
    assert named == list(COLUMN_NAMES)
    assert "Little's Law" in legend and "Utilization Law" in legend
    assert not list(tmp_path.iterdir())  # --no-report: nothing written


def _tmpdir(path: Path) -> dict[str, str]:
    """The environment with TMPDIR at ``path``: the SQLite demo's files go there."""
    return {**os.environ, "TMPDIR": str(path)}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_the_workload_raises_no_error_at_any_level(tmp_path: Path, kind: str) -> None:
    """On SQLite, PostgreSQL and MariaDB the demo's own queries raise nothing, at every level."""
    arguments = dsn_arguments(kind)
    before = set() if kind == "sqlite" else demo_schemas(kind)
    result = run(
        "demo",
        *arguments,
        "--levels",
        "1,2,4,8",
        "--duration",
        "0.5",
        "--json",
        "--no-report",
        cwd=tmp_path,
        env=_tmpdir(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [level["threads"] for level in document["levels"]] == [1, 2, 4, 8]
    for level in document["levels"]:
        assert level["queries"] > 0
        assert (level["errors"], level["first_error"]) == (0, None), (
            f"{level['errors']} errors at {level['threads']} threads; "
            f"the first: {level['first_error']}"
        )
    expected = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mariadb": "MariaDB"}[kind]
    assert document["database"].startswith(expected)
    if kind == "sqlite":
        assert not list(tmp_path.glob("querymeter-demo-*"))
    else:
        assert demo_schemas(kind) - before == set()  # its schema or database is dropped


def test_json_holds_the_levels_the_model_and_the_fit(tmp_path: Path) -> None:
    """--json prints one document whose figures follow from its counters and refit to its model."""
    report = tmp_path / "r.html"
    result = run(
        "demo",
        "--levels",
        "1,2,3,4",
        "--duration",
        "0.3",
        "--json",
        "--report",
        str(report),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # the whole output is the JSON document
    assert document["querymeter"] == querymeter.__version__
    assert document["core"] == querymeter.IMPLEMENTATION
    assert document["levels_requested"] == [1, 2, 3, 4]
    assert document["interrupted"] is False
    assert document["report"] == str(report) and report.is_file()
    points = []
    for level in document["levels"]:
        seconds = level["duration_ns"] / 1e9
        assert level["throughput"] == pytest.approx(level["queries"] / seconds, rel=1e-12)
        assert level["concurrency"] == pytest.approx(level["total_ns"] / level["duration_ns"])
        assert level["utilization"] == pytest.approx(level["busy_ns"] / level["duration_ns"])
        assert level["response_time_s"] == pytest.approx(level["total_ns"] / level["queries"] / 1e9)
        assert level["service_time_s"] == pytest.approx(level["busy_ns"] / level["queries"] / 1e9)
        assert level["busy_ns"] <= level["total_ns"] and level["busy_ns"] <= level["duration_ns"]
        points.append((level["concurrency"], level["throughput"]))
    model = usl.fit(points)
    assert document["model"]["sigma"] == pytest.approx(model.sigma, rel=1e-9, abs=1e-12)
    assert document["model"]["kappa"] == pytest.approx(model.kappa, rel=1e-9, abs=1e-12)
    assert document["model"]["lambda"] == pytest.approx(model.lam, rel=1e-9)
    assert document["model"]["r_squared"] == pytest.approx(model.r_squared, rel=1e-9, abs=1e-12)
    assert document["model"]["n_points"] == 4
    assert document["model"]["limiting_factor"] in ("contention", "coherency", "none")
    fit = document["fit"]
    assert isinstance(fit["describes_data"], bool) and fit["summary"]
    assert all(
        isinstance(item, str) for key in ("problems", "cautions", "advice") for item in fit[key]
    )
    assert fit["describes_data"] == (fit["problems"] == [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--levels", "1,2"], "at least 3 different levels"),
        (["demo", "--levels", "1,x,4"], "thread counts from 1 to 256"),
        (["demo", "--levels", "0,1,2"], "thread counts from 1 to 256"),
        (["demo", "--duration", "0"], "expected seconds"),
        (["demo", "--duration", "soon"], "expected seconds"),
        (["demo", "--dsn", "sqlite:///shop.db"], "expected a database URL"),
        (["demo", "--dsn", "host=localhost dbname=test"], "expected a database URL"),
        (["demo", "--dsn", "postgresql+psycopg2://u:secret@h/db"], "not psycopg2"),
        (["demo", "--dsn", "mysql+mysqldb://u@h/db"], "not mysqldb"),
        (["demo", "--dsn", "mysql://u@h:port/db"], "bad port"),
        (["demo", "--dsn", "mysql://u@h/db?sslmode=require"], "unknown parameter 'sslmode'"),
        (["demo", "--report", "/no/such/directory/report.html"], "directory does not exist"),
        (["demo", "--report", "."], "is a directory"),
        (["demo", "--report", "/proc/querymeter.html"], "cannot write it"),
        (["demo", "--report", "r.html", "--no-report"], "not allowed with argument"),
        (["demo", "--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_demo_arguments_show_the_demo_usage(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A bad demo argument exits at once with status 2 and the demo's usage naming the problem."""
    started = time.monotonic()
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: querymeter demo ")
    assert message in result.stderr
    assert "secret" not in result.stderr  # a password is never echoed
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing was run
    assert time.monotonic() - started < 30


def test_a_missing_command_shows_the_top_level_usage(tmp_path: Path) -> None:
    """Without a command, the usage is the program's and names the missing command."""
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: querymeter [-h]")
    assert "required: COMMAND" in result.stderr


@pytest.mark.parametrize(
    ("url", "kind", "expected"),
    [
        ("postgresql://u@h/db", "postgresql", "postgresql://u@h/db"),
        ("postgres://u@h:5433/db", "postgresql", "postgresql://u@h:5433/db"),
        (
            "postgresql+psycopg://u:p%40ss@h/db?sslmode=disable",
            "postgresql",
            "postgresql://u:p%40ss@h/db?sslmode=disable",
        ),
        (
            "mysql://app:p%40ss@db.example:3307/shop?charset=utf8mb4",
            "mysql",
            {
                "host": "db.example",
                "port": 3307,
                "user": "app",
                "password": "p@ss",
                "database": "shop",
                "charset": "utf8mb4",
            },
        ),
        (
            "mariadb://root@127.0.0.1",
            "mysql",
            {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""},
        ),
        (
            "mysql+pymysql://u@h/d?unix_socket=/run/mysqld/mysqld.sock",
            "mysql",
            {
                "host": "h",
                "port": 3306,
                "user": "u",
                "password": "",
                "database": "d",
                "unix_socket": "/run/mysqld/mysqld.sock",
            },
        ),
        (
            "MariaDB+PyMySQL://u@h/d",
            "mysql",
            {"host": "h", "port": 3306, "user": "u", "password": "", "database": "d"},
        ),
    ],
)
def test_database_urls_are_read_into_connection_arguments(
    url: str, kind: str, expected: str | dict[str, Any]
) -> None:
    """PostgreSQL URLs become libpq URLs, MariaDB/MySQL URLs PyMySQL's arguments, unquoted."""
    parsed = parse_database_url(url)
    assert parsed.kind == kind
    assert (parsed.url if kind == "postgresql" else parsed.params) == expected
    assert "p%40ss" not in parsed.shown and "p@ss" not in parsed.shown


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql", "mariadb", "mysql+pymysql"])
def test_the_demo_runs_on_each_url_form(tmp_path: Path, scheme: str) -> None:
    """Each accepted URL form runs the demo on the real server it names, and cleans up."""
    kind = "postgresql" if scheme.startswith("postgresql") else "mariadb"
    if kind == "postgresql":
        url = postgres_url().replace("postgresql://", f"{scheme}://", 1)
    else:
        url = mysql_url(scheme)
    before = demo_schemas(kind)
    result = run("demo", "--dsn", url, *QUICK, "--no-report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("PostgreSQL " if kind == "postgresql" else "MariaDB ") in result.stdout
    assert [row[0] for row in level_lines(result.stdout)] == ["1", "2", "4"]
    assert demo_schemas(kind) - before == set()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "cannot use the PostgreSQL database"),
        (f"mysql://root@{MYSQL['host']}:1/test", "cannot use the MariaDB/MySQL database"),
    ],
)
def test_an_unreachable_server_is_a_clear_error(tmp_path: Path, url: str, message: str) -> None:
    """A server that does not answer gives a one-line error and status 1, no traceback."""
    driver("psycopg" if url.startswith("postgresql") else "pymysql")
    result = run("demo", "--dsn", url, *QUICK, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "querymeter-demo.html").exists()


def test_a_closed_pipe_ends_the_demo_quietly(tmp_path: Path) -> None:
    """`querymeter demo | head -1` prints one line; the demo stops without a word, cleaned up."""
    errors, status = tmp_path / "stderr.txt", tmp_path / "status.txt"
    command = (
        f"{shlex.quote(sys.executable)} -m querymeter demo --levels 1,2,4,8,16,32 --duration 1 "
        f'--report r.html 2>{errors} | head -1; echo "${{PIPESTATUS[0]}}" >{status}'
    )
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        env=_tmpdir(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.stdout.startswith("querymeter ") and result.stdout.count("\n") == 1
    assert errors.read_text() == ""
    assert status.read_text().strip() == "141"  # 128 + SIGPIPE, as a shell reports it
    assert elapsed < 7  # stopped early: six levels take 6 x (1 s + 0.3 s warm-up)
    assert not (tmp_path / "r.html").exists()
    assert not list(tmp_path.glob("querymeter-demo-*"))


def test_help_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`querymeter demo --help | head -1` shows the usage line and no error."""
    command = f"{shlex.quote(sys.executable)} -m querymeter demo --help | head -1"
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.startswith("usage: querymeter demo")
    assert result.stderr == ""


# Python keeps SIGINT ignored when it starts with it ignored (a background job
# of a script, say): the child restores the default handler so that the test
# sends what a terminal's Ctrl-C sends, whoever started the tests.
_MAIN_WITH_CTRL_C = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from querymeter.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _lines_until(stream: Any, count: int) -> Iterator[str]:
    """Lines of the stream up to and including the count-th level row."""
    seen = 0
    for line in stream:
        yield line
        if level_lines(line):
            seen += 1
            if seen == count:
                return


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_ctrl_c_keeps_the_levels_measured_and_writes_the_partial_report(
    tmp_path: Path, kind: str
) -> None:
    """SIGINT after two levels: they are printed, reported and the run exits 130, cleaned up."""
    arguments = dsn_arguments(kind)
    before = set() if kind == "sqlite" else demo_schemas(kind)
    report = tmp_path / "partial.html"
    command = [sys.executable, "-c", _MAIN_WITH_CTRL_C, "demo", *arguments]
    command += ["--levels", "1,2,4,8,16,32", "--duration", "0.5", "--report", str(report)]
    with subprocess.Popen(
        command,
        cwd=tmp_path,
        env=_tmpdir(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        try:
            head = "".join(_lines_until(process.stdout, 2))
            process.send_signal(signal.SIGINT)
            # Read through the same buffered streams: communicate() would skip
            # what the line reads above buffered.
            rest = process.stdout.read()
            errors = process.stderr.read()
            process.wait(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 130, errors
    assert "Traceback" not in errors
    assert "interrupted; 2 of 6 levels measured" in errors
    assert [row[0] for row in level_lines(head + rest)] == ["1", "2"]
    assert "2 levels measured, and a model needs at least 3" in rest
    assert f"report: {report}" in rest
    page = report.read_text()
    assert "Interrupted during level 3 of 6" in page
    assert page.count("<tr><td>") == 2
    if kind == "sqlite":
        assert not list(tmp_path.glob("querymeter-demo-*"))
    else:
        assert demo_schemas(kind) - before == set()


def test_version_names_the_core_in_use(tmp_path: Path) -> None:
    """--version prints the version and which core is in use."""
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == (
        f"querymeter {querymeter.__version__} ({querymeter.IMPLEMENTATION} core)"
    )


def test_the_console_script_is_installed(tmp_path: Path) -> None:
    """The querymeter console script runs the same command line."""
    script = Path(sys.executable).with_name("querymeter")
    if not script.exists():
        pytest.skip("querymeter is not installed in this environment (no console script)")
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert re.match(r"querymeter \S+ \((c|python) core\)", result.stdout)
