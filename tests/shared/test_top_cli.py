"""querymeter top on a real shared meter that another process drives: plain text, and in tmux."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DEADLINE_S = 30.0

#: A process that opens the shared meter, turns its statement table on, and
#: runs queries on SQLite until its stdin closes.
DRIVER = textwrap.dedent(
    """
    import sqlite3, sys, threading
    import querymeter.dbapi
    from querymeter.shared import SharedMeter

    meter = SharedMeter(sys.argv[1])
    meter.enable_statements()
    connection = querymeter.dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=meter)
    connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    number = 0
    while not stop.wait(0.001):
        number += 1
        connection.execute("INSERT INTO t (name) VALUES (?)", (str(number),))
        connection.execute("SELECT count(*) FROM t WHERE name = ?", (str(number),)).fetchall()
    meter.close()
    """
)


def core_environment(implementation: str) -> dict[str, str]:
    """The environment of a process that counts with the core under test."""
    return {**os.environ, "QUERYMETER_PURE_PYTHON": "1" if implementation == "python" else "0"}


def top(
    *args: str, implementation: str = "c", timeout: float = DEADLINE_S
) -> subprocess.CompletedProcess[str]:
    """python -m querymeter top ARGS, its output captured (not a terminal: plain mode)."""
    return subprocess.run(
        [sys.executable, "-m", "querymeter", "top", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=core_environment(implementation),
    )


@pytest.fixture
def driven(tmp_path: Path, implementation: str) -> Iterator[tuple[Path, int]]:
    """A shared meter's path and the pid of the process that drives it (core under test)."""
    path = tmp_path / "app.querymeter"
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=core_environment(implementation),
    )
    assert driver.stdout is not None and driver.stdin is not None
    try:
        assert driver.stdout.readline() == "ready\n"
        yield path, driver.pid
    finally:
        driver.stdin.close()
        driver.wait(timeout=DEADLINE_S)
        driver.stdout.close()


def rows(report: str, label: str) -> list[list[str]]:
    """The cells of every row whose first cell is ``label``."""
    return [line.split() for line in report.splitlines() if line.split()[:1] == [label]]


# -- plain mode ---------------------------------------------------------------------


def test_plain_reports_per_interval(driven: tuple[Path, int], implementation: str) -> None:
    """--count prints that many reports: the service, the driving worker, the statements."""
    path, pid = driven
    result = top(str(path), "--count", "2", "--interval", "0.3", implementation=implementation)
    assert result.returncode == 0, result.stderr
    reports = re.split(r"\n\n(?=querymeter top  )", result.stdout)
    assert len(reports) == 2, result.stdout
    for report in reports:
        assert report.startswith(f"querymeter top  {path}  ")
        (service,) = rows(report, "service")
        assert float(service[1].replace(",", "")) > 0  # X, queries/s
        assert 0 < float(service[4]) <= 100  # U, %
        workers = [row for row in report.splitlines()[3:] if f" {pid} " in f" {row} "]
        assert len(workers) == 1, report
        assert "insert into t" in report and "select count(*) from t" in report


def test_once_is_one_report(driven: tuple[Path, int], implementation: str) -> None:
    """--once prints one report of one interval and exits 0."""
    path, _ = driven
    args = ("--once", "--interval", "0.2", "--statements", "0")
    result = top(str(path), *args, implementation=implementation)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("querymeter top") == 1
    assert "statement" not in result.stdout


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda path: None, "no such file"),
        (lambda path: path.mkdir(), "it is a directory"),
        (lambda path: path.touch(), "it is empty"),
        (lambda path: path.write_bytes(b"not a shared meter, just some text\n" * 200), ""),
    ],
    ids=["missing", "directory", "empty", "garbage"],
)
def test_a_bad_path_is_a_clear_error(
    tmp_path: Path, make: Callable[[Path], object], problem: str
) -> None:
    """A PATH that is no shared meter's file: exit status 2 and one line saying why."""
    path = tmp_path / "app.querymeter"
    make(path)
    before = path.read_bytes() if path.is_file() else None
    result = top(str(path), "--once")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"querymeter top: {path}: {problem}"), result.stderr
    assert "Traceback" not in result.stderr
    assert not path.exists() or path.is_dir() or path.read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [["--interval", "0"], ["--interval", "x"], ["--count", "0"], ["--once", "--count", "2"]],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    """Bad options: exit status 2 with top's usage, not a traceback."""
    result = top(str(tmp_path / "app.querymeter"), *args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: querymeter top")
    assert "Traceback" not in result.stderr


# -- in a real terminal -------------------------------------------------------------


class Tmux:
    """One tmux server of the test's own (its own socket), one session."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"querymeter-top-{secrets.token_hex(4)}"
        self.tmp_path = tmp_path

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            check=True,
        )
        return result.stdout

    def screen(self) -> str:
        """What the pane shows now."""
        return self("capture-pane", "-p", "-t", "top")

    def wait_for(self, what: str, ready: Callable[[str], bool]) -> str:
        """The screen, once ``ready`` says it is."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            screen = self.screen()
            if ready(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"tmux: no {what} in {DEADLINE_S:g} s; the screen:\n{screen}")
            time.sleep(0.1)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    """A tmux server for the test; skips where tmux is not installed."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux): top's terminal test needs it")
    server = Tmux(tmp_path)
    yield server
    subprocess.run(["tmux", "-L", server.socket, "kill-server"], capture_output=True, check=False)


def service_row(screen: str) -> list[str] | None:
    """The service row's figures on the screen, once they are numbers."""
    found = rows(screen, "service")
    if not found or not re.fullmatch(r"[\d,.]+", found[0][1]):
        return None
    return found[0]


@pytest.mark.parametrize("key", ["q", "C-c"])
def test_live_view_in_tmux(
    tmux: Tmux, driven: tuple[Path, int], tmp_path: Path, key: str, implementation: str
) -> None:
    """In a terminal, top redraws changing figures, and q or Ctrl-C quit it with status 0
    and the terminal as it was (modes and screen)."""
    path, pid = driven
    status, before, after = (tmp_path / name for name in ("status", "before", "after"))
    command = (
        f"stty -g > {before}; echo the shell was here; "
        f"{sys.executable} -m querymeter top {path} --interval 0.3; "
        f"echo $? > {status}; stty -g > {after}; exec sleep 600"
    )
    # The tmux server, started here, passes this process's environment on
    # (top counts with the core under test, as the driver does).
    tmux(
        "new-session",
        "-e",
        f"QUERYMETER_PURE_PYTHON={int(implementation == 'python')}",
        "-d",
        "-s",
        "top",
        "-x",
        "120",
        "-y",
        "40",
        "bash",
        "-c",
        command,
    )
    first = tmux.wait_for("figures", lambda screen: service_row(screen) is not None)
    assert first.startswith(f"querymeter top  {path}  ")
    assert "q quits" in first
    assert re.search(rf"^\d+\+?\s+{pid}\s", first, re.MULTILINE), first
    assert "insert into t" in first
    figures = service_row(first)
    tmux.wait_for("new figures", lambda screen: service_row(screen) not in (None, figures))
    assert not status.exists()

    tmux("send-keys", "-t", "top", key)
    deadline = time.monotonic() + DEADLINE_S
    while not after.exists():
        assert time.monotonic() < deadline, f"top did not quit on {key}:\n{tmux.screen()}"
        time.sleep(0.05)
    assert status.read_text().strip() == "0"
    assert after.read_text() == before.read_text()  # the terminal's modes
    screen = tmux.screen()
    assert "the shell was here" in screen  # the screen from before top, restored
    assert "querymeter top" not in screen
    assert "Traceback" not in screen
