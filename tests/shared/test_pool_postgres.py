"""A shared meter in multiprocessing pools (fork and spawn) querying PostgreSQL, against oracles.

Each task opens a psycopg connection counted into the pool process's
``SharedMeter`` and runs INSERTs, logging each query's interval with
``time.monotonic_ns()`` just outside ``cursor.execute`` (which the meter
wraps, so the logged interval holds the meter's).  Pool processes are
recycled (``maxtasksperchild``).  The service's counters must agree with the
server (the rows the INSERTs added) and with the merged logs: the same
queries, busy time at most the union of the logged intervals and total time
at most their sum, each short by no more than the slack a query may spend
between the app's clock and the core's.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from querymeter.shared import shared_meter_class

from ..conftest import load_meter_class
from ..servers import driver, postgres_dsn
from .test_gunicorn import SLACK_PER_QUERY_NS, union_ns

pytestmark = pytest.mark.servers

PROCESSES = 3
TASKS = 8
QUERIES_PER_TASK = 15
SLEEP_S = 0.002

# The pool process's meter, opened by the initializer (spawn) or inherited (fork).
_process: dict[str, Any] = {}


def open_in_process(path: str, implementation: str) -> None:
    """A spawned pool process's initializer: open the shared meter, count psycopg into it."""
    import psycopg

    import querymeter.dbapi

    meter = shared_meter_class(implementation)(path)
    querymeter.dbapi.instrument(psycopg, meter=meter)
    _process["meter"] = meter


def task(dsn: str, table: str) -> tuple[int, list[tuple[int, int]]]:
    """QUERIES_PER_TASK counted INSERTs; (pid, each query's logged interval)."""
    import time

    import psycopg

    logged = []
    with psycopg.connect(dsn, autocommit=True) as connection:
        cursor = connection.cursor()
        for _ in range(QUERIES_PER_TASK):
            before = time.monotonic_ns()
            cursor.execute(
                f"INSERT INTO {table} (pid) SELECT %s FROM pg_sleep(%s)", (os.getpid(), SLEEP_S)
            )
            after = time.monotonic_ns()
            logged.append((before, after))
    return os.getpid(), logged


@pytest.fixture
def table() -> Iterator[str]:
    """A table of this test's own that each INSERT adds a row to."""
    psycopg = driver("psycopg")
    name = f"h3top_pool_{secrets.token_hex(4)}"
    dsn = postgres_dsn()
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE TABLE {name} (id bigserial PRIMARY KEY, pid integer)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_pool_processes_count_into_one_service(
    tmp_path: Path, table: str, start_method: str, implementation: str
) -> None:
    """Recycled pool processes (fork: the parent's meter inherited; spawn: opened in the
    initializer) count every PostgreSQL query once, busy and total as their logs say."""
    psycopg = driver("psycopg")
    import querymeter.dbapi

    dsn = postgres_dsn()
    path = str(tmp_path / "pool.querymeter")
    context = multiprocessing.get_context(start_method)
    load_meter_class(implementation)
    with shared_meter_class(implementation)(path) as meter:
        if start_method == "fork":
            # Forked pool processes inherit the instrumented driver, and take a
            # slot of their own at the fork.
            querymeter.dbapi.instrument(psycopg, meter=meter)
            options: dict[str, Any] = {}
        else:
            options = {"initializer": open_in_process, "initargs": (path, implementation)}
        try:
            start = meter.snapshot()
            with context.Pool(PROCESSES, maxtasksperchild=2, **options) as pool:
                results = pool.starmap(task, [(dsn, table)] * TASKS)
                pool.close()
                pool.join()
            meter.reap()
            end = meter.snapshot()
            others = [slot for slot in meter.slots() if slot.pid != os.getpid()]
        finally:
            if start_method == "fork":
                querymeter.dbapi.uninstrument(psycopg)

    logged = [interval for _, intervals in results for interval in intervals]
    assert len({pid for pid, _ in results}) > PROCESSES  # recycled
    assert others == []
    with psycopg.connect(dsn, autocommit=True) as connection:
        (rows,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    interval = end - start
    assert rows == len(logged) == TASKS * QUERIES_PER_TASK
    assert interval.queries == len(logged)
    assert interval.errors == 0
    assert end.concurrency == 0
    slack = len(logged) * SLACK_PER_QUERY_NS[implementation]
    busy = union_ns(logged)
    assert busy - slack <= interval.busy_ns <= busy
    total = sum(after - before for before, after in logged)
    assert total - slack <= interval.total_ns <= total
    assert interval.busy_ns < interval.total_ns  # the processes' queries overlapped
