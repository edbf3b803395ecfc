"""A shared meter under gunicorn: prefork workers, killed and recycled, against two oracles.

gunicorn (sync workers) serves tests/shared/gunicorn_app.py, which counts one
PostgreSQL INSERT a request into ``SharedMeter(path)`` opened in ``post_fork``,
under a bounded load from threads on 127.0.0.1.  During the load, workers are
SIGKILLed in the middle of a query (gunicorn starts new ones), and
``max_requests`` recycles the others.  Afterwards the shared counters must
agree with

- the server: the rows the INSERTs added to a table of the test's own;
- the workers' own logs of their queries' intervals, merged: the same number
  of queries, the busy time of their union and the total of their durations.

What the oracle says of a killed worker's query: its log has the instant
before the query began, and nothing after.  A shared meter counts it in
flight until some process notices the death, and then settles it at that
instant, so its interval in the oracle runs from the logged start to the
moment of detection, which lies between the SIGKILL and the test's next
reading of the meter (a reading detects dead workers).  The oracle therefore
gives a lower and an upper bound, and the meter must fall between them.

The app's clock readings enclose the meter's (they are taken just outside
``cursor.execute``, which the meter wraps), so each logged interval holds the
meter's: busy and total can only be less than the logs say, by the time a
query spends between the app's clock reading and the core's, a few
microseconds (``SLACK_PER_QUERY_NS`` allows for a thread preempted there).
"""

from __future__ import annotations

import http.client
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from querymeter.shared import shared_meter_class

from ..conftest import load_meter_class
from ..servers import driver, postgres_dsn

pytestmark = pytest.mark.servers

HERE = Path(__file__).parent
WORKERS = 3
CLIENTS = 6
REQUESTS = 400
MAX_REQUESTS = 60
KILLS = 2
#: Each INSERT sleeps this long on the server, so that the workers' queries overlap.
SLEEP_S = 0.002
#: What one query may spend between the app's clock readings and the core's, at
#: most on average, by core: about 1 µs of Python calls over the C core
#: (measured), and now and then a preemption; the pure-Python core reads its
#: clock once it holds the file's fcntl lock, which processes contend for
#: (measured: about 70 µs a query with three processes on two busy cores).
SLACK_PER_QUERY_NS = {"c": 50_000, "python": 500_000}
#: How long a query runs before its worker is killed: far more than the slack.
HANG_S = 0.2
DEADLINE_S = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def get(port: int, path: str, timeout: float = 30.0) -> int:
    """GET path from the server; its HTTP status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@dataclass
class Server:
    """A gunicorn master and what the test knows of it."""

    process: subprocess.Popen[bytes]
    port: int
    tag: str
    output: Path


def start_gunicorn(tmp_path: Path, env: dict[str, str], *, preload: bool) -> Server:
    """gunicorn with WORKERS sync workers, each opening the shared meter in post_fork."""
    port = free_port()
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(
        f"bind = '127.0.0.1:{port}'\n"
        f"workers = {WORKERS}\n"
        "worker_class = 'sync'\n"
        f"max_requests = {MAX_REQUESTS}\n"
        f"max_requests_jitter = {MAX_REQUESTS // 4}\n"
        f"preload_app = {preload}\n"
        "timeout = 120\n"
        # A worker still booting when the master is told to stop can miss the
        # signal (gunicorn's handlers are not its own yet); the load is over
        # by then, so an idle worker is killed after this long.
        "graceful_timeout = 2\n"
        "\n"
        "def post_fork(server, worker):\n"
        "    import gunicorn_app\n"
        "    gunicorn_app.open_meter()\n",
        encoding="utf-8",
    )
    output = tmp_path / "gunicorn.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(config), "gunicorn_app:app"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(process, port, env["H3TOP_TAG"], output)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if get(port, "/ping", timeout=5) == 200:
                return server
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"gunicorn did not start:\n{output.read_text(errors='replace')}")
        time.sleep(0.05)


def stop_gunicorn(server: Server) -> None:
    """SIGTERM: the master stops its workers gracefully and exits."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
        pytest.fail("gunicorn did not stop on SIGTERM")


def load(port: int, requests: int, clients: int) -> list[int | str]:
    """Send ``requests`` GET /query from ``clients`` threads; every outcome."""
    outcomes: list[int | str] = []
    left = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if next(left, None) is None:
                    return
            try:
                outcome: int | str = get(port, "/query")
            except OSError as exc:
                outcome = repr(exc)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@dataclass
class Kill:
    """A worker SIGKILLed in the middle of a query: the bounds of its query's end."""

    pid: int
    #: Read just before the SIGKILL: the query cannot have been settled earlier.
    before_ns: int
    #: Read just after a reading of the meter once the worker was gone: settled by then.
    after_ns: int


def hanging_worker(dsn: str, tag: str, killed: list[Kill]) -> int:
    """The pid of a worker whose query now runs on the server (SELECT pg_sleep(60))."""
    psycopg = driver("psycopg")
    seen = {kill.pid for kill in killed}
    deadline = time.monotonic() + DEADLINE_S
    with psycopg.connect(dsn, autocommit=True) as connection:
        while time.monotonic() < deadline:
            rows = connection.execute(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE state = 'active' AND query = 'SELECT pg_sleep(60)'"
                " AND application_name LIKE %s",
                (f"{tag}-%",),
            ).fetchall()
            for (name,) in rows:
                pid = int(name.rsplit("-", 1)[1])
                if pid not in seen:
                    return pid
            time.sleep(0.01)
    pytest.fail("no worker's query reached the server")


def kill_in_a_query(server: Server, dsn: str, meter: Any, killed: list[Kill]) -> None:
    """Send /hang, SIGKILL the worker once its query runs on the server, read the meter."""
    outcome: list[object] = []

    def hang() -> None:
        try:
            outcome.append(get(server.port, "/hang", timeout=DEADLINE_S))
        except OSError as exc:  # the worker died with the connection open
            outcome.append(exc)

    thread = threading.Thread(target=hang)
    thread.start()
    pid = hanging_worker(dsn, server.tag, killed)
    # Let the query run a while: a meter that lost a killed worker's time in
    # flight would be short by more than the oracle's slack.
    time.sleep(HANG_S)
    before_ns = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + DEADLINE_S
    while not dead(pid):
        assert time.monotonic() < deadline, f"worker {pid} did not die"
        time.sleep(0.001)
    meter.reap()  # settles the dead worker's query now, if no process did before
    killed.append(Kill(pid, before_ns, time.monotonic_ns()))
    thread.join(DEADLINE_S)
    assert outcome and not isinstance(outcome[0], int), outcome


def dead(pid: int) -> bool:
    """Whether the process is gone or a zombie (dead, not yet reaped by gunicorn's master)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # reaped, even while being read
        return True
    return status[status.rindex(")") + 2] in "ZX"


@dataclass
class Logs:
    """The workers' own logs, merged."""

    #: (before, after) of every INSERT that completed, ns.
    queries: list[tuple[int, int]] = field(default_factory=list)
    #: pid -> the instant before its hanging query began, ns.
    hangs: dict[int, int] = field(default_factory=dict)
    pids: set[int] = field(default_factory=set)


def read_logs(directory: Path) -> Logs:
    """Every worker's log of its queries."""
    logs = Logs()
    for path in directory.glob("*.log"):
        pid = int(path.stem)
        logs.pids.add(pid)
        for line in path.read_text(encoding="ascii").splitlines():
            kind, *stamps = line.split()
            if kind == "Q":
                before, after = map(int, stamps)
                assert before <= after, line
                logs.queries.append((before, after))
            else:
                assert kind == "H", line
                logs.hangs[pid] = int(stamps[0])
    return logs


def union_ns(intervals: list[tuple[int, int]]) -> int:
    """The length of the union of closed intervals, ns."""
    covered = 0
    end = None
    start = 0
    for low, high in sorted(intervals):
        if end is None or low > end:
            if end is not None:
                covered += end - start
            start, end = low, high
        else:
            end = max(end, high)
    if end is not None:
        covered += end - start
    return covered


@pytest.fixture
def table() -> Iterator[str]:
    """A table of this test's own that each INSERT adds a row to."""
    psycopg = driver("psycopg")
    name = f"h3top_hits_{secrets.token_hex(4)}"
    dsn = postgres_dsn()
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE TABLE {name} (id bigserial PRIMARY KEY, pid integer)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {name}")


def end_hanging_backends(dsn: str, tag: str) -> None:
    """The server sessions of killed workers sleep on: end them."""
    psycopg = driver("psycopg")
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
            (f"{tag}-%",),
        )


@pytest.mark.parametrize("preload", [False, True], ids=["fork-per-worker", "preload"])
def test_gunicorn_workers_killed_and_recycled(
    tmp_path: Path, table: str, preload: bool, implementation: str
) -> None:
    """Across killed and recycled gunicorn workers, the shared counters match the server's rows
    and the workers' own logs: the same queries, busy time their union, total their sum."""
    pytest.importorskip("gunicorn", reason="the gunicorn tests need gunicorn (the test extra)")

    dsn = postgres_dsn()
    tag = f"h3top{secrets.token_hex(3)}"
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    meter_path = tmp_path / "app.querymeter"
    env = dict(os.environ)
    env.update(
        H3TOP_METER=str(meter_path),
        H3TOP_LOGS=str(logs_dir),
        H3TOP_DSN=dsn,
        H3TOP_TABLE=table,
        H3TOP_SLEEP_S=str(SLEEP_S),
        H3TOP_TAG=tag,
        # The workers count with the core under test, as this process does.
        QUERYMETER_PURE_PYTHON="1" if implementation == "python" else "0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
    )
    load_meter_class(implementation)
    meter = shared_meter_class(implementation)(meter_path)
    try:
        start = meter.snapshot()
        server = start_gunicorn(tmp_path, env, preload=preload)
        killed: list[Kill] = []
        try:
            outcomes: list[int | str] = []
            loader = threading.Thread(
                target=lambda: outcomes.extend(load(server.port, REQUESTS, CLIENTS))
            )
            loader.start()
            for _ in range(KILLS):
                kill_in_a_query(server, dsn, meter, killed)
            loader.join()
        finally:
            stop_gunicorn(server)
            end_hanging_backends(dsn, tag)
        end = meter.snapshot()
        slots = meter.slots()
    finally:
        meter.close()

    output = server.output.read_text(errors="replace")
    assert outcomes == [200] * REQUESTS, output
    logs = read_logs(logs_dir)
    # Recycled and replaced: more workers served than ever ran at once.
    assert len(logs.pids) > WORKERS + KILLS, output
    assert set(logs.hangs) == {kill.pid for kill in killed}
    assert [slot.pid for slot in slots if slot.pid != os.getpid()] == []

    psycopg = driver("psycopg")
    with psycopg.connect(dsn, autocommit=True) as connection:
        (rows,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    interval = end - start
    completed = len(logs.queries)
    assert rows == completed == REQUESTS
    # A killed worker's query is settled when its death is detected: counted
    # then as a query that failed (see docs/processes.md).
    assert interval.queries == completed + KILLS
    assert interval.errors == KILLS
    assert end.concurrency == 0

    settled_early = logs.queries + [(logs.hangs[k.pid], k.before_ns) for k in killed]
    settled_late = logs.queries + [(logs.hangs[k.pid], k.after_ns) for k in killed]
    slack = (completed + KILLS) * SLACK_PER_QUERY_NS[implementation]
    busy_low, busy_high = union_ns(settled_early), union_ns(settled_late)
    assert busy_low - slack <= interval.busy_ns <= busy_high, (busy_low, busy_high)
    total_low = sum(after - before for before, after in settled_early)
    total_high = sum(after - before for before, after in settled_late)
    assert total_low - slack <= interval.total_ns <= total_high, (total_low, total_high)
    # Queries of several workers overlapped: busy time is not the sum.
    assert interval.busy_ns < interval.total_ns
