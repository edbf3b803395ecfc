"""The command line: python -m querymeter demo, on SQLite and PostgreSQL, and its usage errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import querymeter

from .servers import driver, postgres_dsn

QUICK = ["--duration", "0.3", "--levels", "1,2,4"]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """python -m querymeter ARGS, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "querymeter", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def level_lines(stdout: str) -> list[list[str]]:
    """The table rows the demo printed, one per level."""
    rows = []
    for line in stdout.splitlines():
        cells = line.split()
        if len(cells) == 7 and all(re.fullmatch(r"[\d,.]+", cell) for cell in cells):
            rows.append(cells)
    return rows


def test_the_demo_measures_each_level_fits_and_writes_a_report(tmp_path: Path) -> None:
    """Each level is printed with figures that obey Little's Law, then the model and the report."""
    report = tmp_path / "report.html"
    result = run("demo", *QUICK, "--report", str(report), cwd=tmp_path)
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
    assert "Universal Scalability Law" in result.stdout or "No scalability model" in result.stdout
    assert f"report: {report}" in result.stdout
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    assert not list(tmp_path.glob("querymeter-demo-*"))


def test_the_report_goes_to_the_current_directory_by_default(tmp_path: Path) -> None:
    """Without --report the page is querymeter-demo.html where the command runs."""
    result = run("demo", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "querymeter-demo.html").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--levels", "1,2"], "at least 3 different levels"),
        (["demo", "--levels", "1,x,4"], "thread counts from 1 to 256"),
        (["demo", "--levels", "0,1,2"], "thread counts from 1 to 256"),
        (["demo", "--duration", "0"], "expected seconds"),
        (["demo", "--duration", "soon"], "expected seconds"),
        (["demo", "--dsn", "mysql://root@localhost/test"], "expected a PostgreSQL URL"),
        (["demo", "--report", "/no/such/directory/report.html"], "does not exist"),
        (["demo", "--report", "."], "is a directory"),
        (["demo", "--frobnicate"], "unrecognized arguments"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    """A bad argument exits with status 2 and a usage message naming the problem."""
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: querymeter" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unreachable_postgresql_is_a_clear_error(tmp_path: Path) -> None:
    """A PostgreSQL that does not answer gives a one-line error and status 1, no traceback."""
    driver("psycopg")
    result = run("demo", "--dsn", "postgresql://postgres@127.0.0.1:1/test", *QUICK, cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot use the PostgreSQL database" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_demo_runs_on_postgresql_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """--dsn runs the same workload on PostgreSQL and drops its schema afterwards."""
    psycopg = driver("psycopg")
    dsn = postgres_dsn()
    parts = psycopg.conninfo.conninfo_to_dict(dsn)
    url = (
        f"postgresql://{parts.get('user', 'postgres')}@{parts.get('host', '127.0.0.1')}:"
        f"{parts.get('port', 5432)}/{parts.get('dbname', 'test')}"
    )
    result = run("demo", "--dsn", url, *QUICK, "--report", str(tmp_path / "r.html"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL" in result.stdout
    assert [row[0] for row in level_lines(result.stdout)] == ["1", "2", "4"]
    with psycopg.connect(dsn, autocommit=True) as connection:
        left = connection.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'querymeter_demo_%'"
        ).fetchall()
    assert left == []


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
