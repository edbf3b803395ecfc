"""docs/processes.md: its programs run as written (the path moved to a test directory),
printing what the page says, and its gunicorn.conf.py counts a real gunicorn's workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from querymeter.shared import shared_meter_class

from ..servers import driver, postgres_dsn
from .test_gunicorn import DEADLINE_S, free_port, get

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "processes.md"


def section(title: str) -> str:
    """The text of the page's section under the heading ``title`` (level 2 or deeper)."""
    text = PAGE.read_text(encoding="utf-8")
    match = re.search(rf"^##+ {re.escape(title)}\n(.*?)(?=^##+ )", text, re.S | re.M)
    assert match, title
    return match.group(1)


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of one language in ``text``, in order."""
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def core_environment(implementation: str) -> dict[str, str]:
    """The environment of a process that counts with the core under test."""
    return {**os.environ, "QUERYMETER_PURE_PYTHON": "1" if implementation == "python" else "0"}


def run_program(source: str, path: Path, implementation: str, cwd: Path) -> str:
    """Run a program of the page, its /dev/shm path replaced by ``path``; its output."""
    assert "/dev/shm/" in source
    program = cwd / "program.py"
    program.write_text(re.sub(r"/dev/shm/[\w.]+", str(path), source), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=core_environment(implementation),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_first_program_prints_what_the_page_says(implementation: str, tmp_path: Path) -> None:
    """The fork example counts both processes' queries, and prints the page's output."""
    text = section("A shared meter")
    (source,) = blocks(text, "python")
    (printed,) = blocks(text, "text")
    path = tmp_path / "example.querymeter"
    assert run_program(source, path, implementation, tmp_path) == printed
    # Run again on the same file: its counters continue, the interval is the same.
    assert run_program(source, path, implementation, tmp_path) == printed


def test_the_pool_program_prints_what_the_page_says(implementation: str, tmp_path: Path) -> None:
    """The spawn pool with its initializer counts every task's query into the shared meter."""
    text = section("multiprocessing pools")
    (source,) = blocks(text, "python")
    assert "prints `4950` and `100`" in text
    path = tmp_path / "myapp.querymeter"
    assert run_program(source, path, implementation, tmp_path) == "4950\n100\n"


@pytest.mark.servers
def test_the_gunicorn_config_counts_every_worker(implementation: str, tmp_path: Path) -> None:
    """gunicorn with the page's gunicorn.conf.py: every worker's queries in one shared meter."""
    driver("psycopg")
    dsn = postgres_dsn()
    (config,) = blocks(section("gunicorn"), "python")
    path = tmp_path / "myapp.querymeter"
    port = free_port()
    (tmp_path / "gunicorn.conf.py").write_text(
        re.sub(r"/dev/shm/[\w.]+", str(path), config)
        + f"\nbind = '127.0.0.1:{port}'\nworkers = 2\ngraceful_timeout = 2\n",
        encoding="utf-8",
    )
    (tmp_path / "docs_app.py").write_text(
        textwrap.dedent(
            """
            import os

            import psycopg


            def app(environ, start_response):
                if environ.get("PATH_INFO") != "/ping":
                    with psycopg.connect(os.environ["DOCS_DSN"], autocommit=True) as connection:
                        connection.execute("SELECT 1").fetchall()
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok"]
            """
        ),
        encoding="utf-8",
    )
    output = tmp_path / "gunicorn.out"
    with output.open("wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "docs_app:app"],
            cwd=tmp_path,
            env={**core_environment(implementation), "DOCS_DSN": dsn},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                if get(port, "/ping", timeout=5) == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not start:\n{output.read_text(errors='replace')}")
            time.sleep(0.05)
        # Both workers booted (the first may answer before the second has its slot).
        with shared_meter_class(implementation)(path) as meter:
            while len(meter.slots()) < 3:
                assert time.monotonic() < deadline, output.read_text(errors="replace")
                time.sleep(0.05)
            before = meter.snapshot()
            statuses = [get(port, "/query", timeout=30) for _ in range(40)]
            assert statuses == [200] * 40
            interval = meter.snapshot() - before
            assert (interval.queries, interval.errors) == (40, 0)
            pids = {reading.pid for reading in meter.slots()} - {os.getpid()}
            assert len(pids) == 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
