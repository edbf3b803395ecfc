"""Server wait sampling on real servers: what PostgreSQL and MariaDB say their sessions wait for."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter.dbapi as dbapi
from querymeter import _faults
from querymeter.dbapi._connections import connections_of
from querymeter.meter import Meter as MeterType
from querymeter.sessions._waits import (
    ServerWaitSampler,
    WaitProfile,
    backend_ids_for,
    mysql_wait_class,
    postgresql_wait_class,
)

from ..servers import driver, postgres_dsn, require_performance_schema

# Fast rounds: a second of waiting gives enough samples to be sure of the class.
INTERVAL_S = 0.05
# Per process: two runs of these tests at once must not share (or drop) a table.
TABLE = f"qm_waits_rows_{os.getpid()}"
# Fingerprints written out by hand (the statement module's rules): the oracle.
UPDATE_FINGERPRINT = f"update {TABLE} set v = v + ? where id = ?"


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, poll_s: float = 0.02
) -> None:
    """Poll until ``condition()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the server"
        time.sleep(poll_s)


@pytest.fixture
def meter(Meter: type[MeterType]) -> MeterType:
    """A fresh meter of the core under test."""
    return Meter()


# ------------------------------------------------------------ plain data and validation


@pytest.mark.parametrize(
    ("wait_event_type", "wait_event", "expected"),
    [
        (None, None, "CPU"),
        ("Lock", "transactionid", "Lock"),
        ("Lock", "relation", "Lock"),
        ("LWLock", "WALWrite", "Lock"),
        ("BufferPin", "BufferPin", "Lock"),
        ("IO", "DataFileRead", "IO"),
        ("Client", "ClientWrite", "Client"),
        ("IPC", "MessageQueueSend", "IPC"),
        ("Timeout", "PgSleep", "Timeout"),
        ("Extension", "Extension", "Extension"),
        ("Activity", "WalWriterMain", "Other"),
    ],
)
def test_postgresql_wait_types_map_to_the_documented_classes(
    wait_event_type: str | None, wait_event: str | None, expected: str
) -> None:
    """Each of pg_stat_activity's wait_event_type values falls in the class the module documents."""
    assert postgresql_wait_class(wait_event_type, wait_event) == expected


@pytest.mark.parametrize(
    ("event_name", "state", "innodb_lock_wait", "expected"),
    [
        (None, "Sending data", False, "CPU"),
        ("wait/io/table/sql/handler", "Updating", False, "CPU"),
        ("wait/io/table/sql/handler", "Updating", True, "Lock"),
        ("wait/lock/table/sql/handler", None, False, "Lock"),
        ("wait/lock/metadata/sql/mdl", None, False, "Lock"),
        ("wait/synch/mutex/innodb/buf_pool_mutex", None, False, "Lock"),
        ("wait/synch/rwlock/innodb/lock_latch", None, False, "Lock"),
        ("wait/synch/cond/sql/COND_thread_count", None, False, "IPC"),
        ("wait/io/file/innodb/innodb_data_file", None, False, "IO"),
        ("wait/io/socket/sql/client_connection", None, False, "Client"),
        (None, "User sleep", False, "Timeout"),
        (None, "Waiting for table metadata lock", False, "Lock"),
        (None, "Sending to client", False, "Client"),
        ("idle", None, False, "Other"),
    ],
)
def test_mysql_waits_and_states_map_to_the_documented_classes(
    event_name: str | None, state: str | None, innodb_lock_wait: bool, expected: str
) -> None:
    """Wait events, the session's state and InnoDB's LOCK WAIT give the documented class."""
    assert mysql_wait_class(event_name, state, innodb_lock_wait=innodb_lock_wait) == expected


def test_a_profile_round_trips_through_json_and_estimates_time() -> None:
    """as_dict() survives JSON and from_dict() gives the profile back; time is count * interval."""
    profile = WaitProfile(
        samples=10,
        interval_s=0.25,
        by_class={"Lock": 6, "CPU": 2},
        by_fingerprint={"select ?": {"Lock": 6, "CPU": 2}},
        notes=["a note"],
    )
    assert WaitProfile.from_dict(json.loads(json.dumps(profile.as_dict()))) == profile
    assert profile.time_by_class() == {"Lock": 1.5, "CPU": 0.5}
    assert profile.time_by_fingerprint() == {"select ?": {"Lock": 1.5, "CPU": 0.5}}
    assert profile.observations == 8


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"samples": -1}, "samples"),
        ({"interval_s": "fast"}, "interval_s"),
        ({"by_class": {"Lock": 1.5}}, "by_class"),
        ({"by_fingerprint": {"select ?": []}}, "by_fingerprint"),
        ({"notes": "a note"}, "notes"),
    ],
)
def test_from_dict_names_the_bad_field(change: dict[str, Any], named: str) -> None:
    """A malformed profile is a ValueError that names the field."""
    data = {**WaitProfile(samples=1, interval_s=0.2).as_dict(), **change}
    with pytest.raises(ValueError, match=named):
        WaitProfile.from_dict(data)


def test_from_dict_names_a_missing_field() -> None:
    """A profile without a field is a ValueError that names it."""
    data = WaitProfile(samples=1, interval_s=0.2).as_dict()
    del data["by_class"]
    with pytest.raises(ValueError, match="by_class"):
        WaitProfile.from_dict(data)


@pytest.mark.parametrize("interval", [0, -0.2, float("nan"), float("inf")])
def test_a_bad_interval_is_refused(interval: float) -> None:
    """An interval that is not a finite positive number of seconds is a ValueError."""
    with pytest.raises(ValueError, match="interval"):
        ServerWaitSampler(sqlite3.connect, dialect="postgresql", backend_ids=set, interval=interval)


def test_an_unknown_dialect_is_refused() -> None:
    """A dialect with no wait views (or misspelt) is a ValueError naming the dialects known."""
    with pytest.raises(ValueError, match="postgresql, mysql, mariadb"):
        ServerWaitSampler(sqlite3.connect, dialect="sqlite", backend_ids=set)


def test_a_connect_that_raises_is_a_note() -> None:
    """A connection that cannot be made is a note; neither start nor stop raises."""

    def refuse() -> Any:
        raise OSError("connection refused")

    sampler = ServerWaitSampler(refuse, dialect="postgresql", backend_ids=set, interval=0.01)
    sampler.start()
    wait_until(lambda: not sampler.running)
    profile = sampler.stop()
    assert profile.samples == 0
    assert profile.by_class == {}
    assert any("OSError: connection refused" in note for note in profile.notes), profile.notes


def test_stop_without_start_is_a_note() -> None:
    """A sampler stopped before it started gives an empty profile that says so."""
    sampler = ServerWaitSampler(sqlite3.connect, dialect="mariadb", backend_ids=set)
    profile = sampler.stop()
    assert profile.samples == 0
    assert profile.notes == ["the wait sampler was never started"]


def test_connections_of_lists_the_live_connections_of_one_meter(
    Meter: type[MeterType],
) -> None:
    """connections_of(meter) is the open connections counting into that meter, and no other's."""
    first, second = Meter(), Meter()
    mine = [dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=first) for _ in range(2)]
    theirs = dbapi.wrap_connection(sqlite3.connect(":memory:"), meter=second)
    uncounted = sqlite3.connect(":memory:")
    try:
        assert {id(c) for c in connections_of(first)} == {id(c) for c in mine}
        assert [id(c) for c in connections_of(second)] == [id(theirs)]
        dbapi.unwrap_connection(mine[0])
        assert [id(c) for c in connections_of(first)] == [id(mine[1])]
        mine[1].close()
        del mine[1]
        gc.collect()
        assert connections_of(first) == []
    finally:
        for connection in [*mine, theirs, uncounted]:
            connection.close()


# ------------------------------------------------------------ PostgreSQL

psycopg = driver("psycopg")


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """The PostgreSQL DSN, with a one-row table of this module's."""
    dsn = postgres_dsn()
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {TABLE}")
        admin.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v int NOT NULL)")
        admin.execute(f"INSERT INTO {TABLE} VALUES (1, 0)")
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f"DROP TABLE IF EXISTS {TABLE}")


def pg_activity(dsn: str, pid: int) -> tuple[Any, ...] | None:
    """(state, wait_event_type, wait_event) of one backend, read by a fresh superuser session."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        row: tuple[Any, ...] | None = admin.execute(
            "SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
            (pid,),
        ).fetchone()
    return row


def pg_sampler(dsn: str, meter: MeterType, **kwargs: Any) -> ServerWaitSampler:
    return ServerWaitSampler(
        lambda: psycopg.connect(dsn, **kwargs),
        dialect="postgresql",
        backend_ids=lambda: backend_ids_for(meter, dialect="postgresql"),
        interval=INTERVAL_S,
    )


def run_in_thread(call: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_postgresql_row_lock_wait_is_lock(pg_dsn: str, meter: MeterType) -> None:
    """An UPDATE waiting on another session's FOR UPDATE row lock is sampled as Lock."""
    with (
        psycopg.connect(pg_dsn) as holder,
        psycopg.connect(pg_dsn, autocommit=True) as raw_app,
    ):
        app = dbapi.wrap_connection(raw_app, meter=meter)
        holder.execute(f"SELECT v FROM {TABLE} WHERE id = 1 FOR UPDATE")
        sampler = pg_sampler(pg_dsn, meter).start()
        update = run_in_thread(
            lambda: app.execute(f"UPDATE {TABLE} SET v = v + %s WHERE id = %s", (1, 1))
        )
        pid = app.info.backend_pid
        wait_until(lambda: pg_activity(pg_dsn, pid) == ("active", "Lock", "transactionid"))
        time.sleep(20 * INTERVAL_S)
        holder.rollback()
        update.join(10)
        profile = sampler.stop()
    assert not update.is_alive()
    classes = profile.by_fingerprint[UPDATE_FINGERPRINT]
    assert classes.get("Lock", 0) >= 10, profile
    assert classes["Lock"] > sum(classes.values()) / 2, profile
    assert profile.by_class["Lock"] == classes["Lock"], profile
    assert profile.notes == [], profile.notes


def test_postgresql_pg_sleep_is_timeout(pg_dsn: str, meter: MeterType) -> None:
    """pg_sleep() shows as wait_event_type Timeout (PgSleep), and is sampled as Timeout."""
    with psycopg.connect(pg_dsn, autocommit=True) as raw_app:
        app = dbapi.wrap_connection(raw_app, meter=meter)
        sampler = pg_sampler(pg_dsn, meter).start()
        sleeper = run_in_thread(lambda: app.execute("SELECT pg_sleep(1)"))
        pid = app.info.backend_pid
        wait_until(lambda: pg_activity(pg_dsn, pid) == ("active", "Timeout", "PgSleep"))
        sleeper.join(10)
        profile = sampler.stop()
    classes = profile.by_fingerprint["select pg_sleep(?)"]
    assert classes.get("Timeout", 0) >= 10, profile
    assert classes["Timeout"] > sum(classes.values()) / 2, profile


def test_postgresql_samples_only_the_applications_sessions(pg_dsn: str, meter: MeterType) -> None:
    """Only the application's sessions are sampled; its CPU-bound query is CPU."""
    cpu_query = "SELECT count(*) FROM generate_series(1, 8000) a, generate_series(1, 8000) b"
    with (
        psycopg.connect(pg_dsn, autocommit=True) as raw_app,
        psycopg.connect(pg_dsn, autocommit=True) as other,
    ):
        app = dbapi.wrap_connection(raw_app, meter=meter)
        sampler = pg_sampler(pg_dsn, meter).start()
        bystander = run_in_thread(lambda: other.execute("SELECT pg_sleep(1.5)"))
        wait_until(
            lambda: pg_activity(pg_dsn, other.info.backend_pid) == ("active", "Timeout", "PgSleep")
        )
        app.execute(cpu_query)
        bystander.join(10)
        profile = sampler.stop()
    assert set(profile.by_fingerprint) == {
        "select count(*) from generate_series(?, ?) a, generate_series(?, ?) b"
    }, profile
    assert "Timeout" not in profile.by_class, profile
    assert profile.by_class.get("CPU", 0) >= 5, profile
    assert profile.by_class["CPU"] > profile.observations / 2, profile


def test_postgresql_sampler_uses_one_connection_and_closes_it(
    pg_dsn: str, meter: MeterType
) -> None:
    """However many rounds, the sampler opens one connection, and its session is gone after stop."""
    opened: list[Any] = []

    def connect() -> Any:
        opened.append(psycopg.connect(pg_dsn))
        return opened[-1]

    with psycopg.connect(pg_dsn, autocommit=True) as raw_app:
        dbapi.wrap_connection(raw_app, meter=meter)
        sampler = ServerWaitSampler(
            connect,
            dialect="postgresql",
            backend_ids=lambda: backend_ids_for(meter),
            interval=0.01,
        ).start()
        wait_until(lambda: sampler.profile().samples >= 20)
        sampler_pid = opened[0].info.backend_pid
        profile = sampler.stop()
    assert len(opened) == 1
    assert opened[0].closed
    assert pg_activity(pg_dsn, sampler_pid) is None
    assert profile.samples >= 20
    assert profile.by_class == {}  # the application sat idle


def test_postgresql_sampler_on_an_instrumented_driver_counts_nothing(
    pg_dsn: str, meter: MeterType
) -> None:
    """On a driver counting into the meter, the sampler's queries are not counted nor sampled."""
    dbapi.instrument(psycopg, meter=meter)
    try:
        sampler = pg_sampler(pg_dsn, meter).start()
        wait_until(lambda: sampler.profile().samples >= 10)
        before = meter.snapshot().queries
        wait_until(lambda: sampler.profile().samples >= 20)
        after = meter.snapshot().queries
        profile = sampler.stop()
    finally:
        dbapi.uninstrument(psycopg)
    assert after == before
    assert profile.by_class == {}, profile


def test_postgresql_role_that_cannot_see_other_sessions_gives_a_note(
    pg_dsn: str, meter: MeterType
) -> None:
    """A sampling role without pg_read_all_stats sees no other role's activity: a note says so."""
    role = f"qm_waits_watcher_{os.getpid()}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        watcher_dsn = psycopg.conninfo.make_conninfo(pg_dsn, user=role)
        with psycopg.connect(pg_dsn, autocommit=True) as raw_app:
            app = dbapi.wrap_connection(raw_app, meter=meter)
            sampler = ServerWaitSampler(
                lambda: psycopg.connect(watcher_dsn),
                dialect="postgresql",
                backend_ids=lambda: backend_ids_for(meter),
                interval=INTERVAL_S,
            ).start()
            app.execute("SELECT pg_sleep(0.5)")
            profile = sampler.stop()
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")
    assert profile.by_class == {}, profile
    assert profile.samples >= 5
    assert any("pg_read_all_stats" in note for note in profile.notes), profile.notes


def test_a_fault_in_the_thread_is_reported_and_ends_sampling(pg_dsn: str) -> None:
    """A backend_ids() that raises is a fault: counted, noted, and the connection closed."""
    opened: list[Any] = []

    def connect() -> Any:
        opened.append(psycopg.connect(pg_dsn))
        return opened[-1]

    def broken() -> set[int]:
        raise RuntimeError("no ids today")

    cause = "wait sampler stopped on an error"
    before = _faults.counts().get(cause, 0)
    sampler = ServerWaitSampler(
        connect, dialect="postgresql", backend_ids=broken, interval=0.01
    ).start()
    wait_until(lambda: not sampler.running)
    profile = sampler.stop()
    assert _faults.counts().get(cause, 0) == before + 1
    assert any("RuntimeError: no ids today" in note for note in profile.notes), profile.notes
    assert opened[0].closed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_finds_the_sampler_stopped(pg_dsn: str, meter: MeterType) -> None:
    """In a forked child the sampler has stopped (and says so); the parent's goes on sampling."""
    sampler = pg_sampler(pg_dsn, meter).start()
    wait_until(lambda: sampler.profile().samples >= 2)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and leave without running any cleanup
        try:
            profile = sampler.stop()
            message = json.dumps({"running": sampler.running, "notes": profile.notes})
            os.write(write_end, message.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    counted = sampler.profile().samples
    wait_until(lambda: sampler.profile().samples >= counted + 5)
    profile = sampler.stop()
    assert child["running"] is False
    assert any("forked child" in note for note in child["notes"]), child
    assert profile.notes == [], profile.notes


# ------------------------------------------------------------ MariaDB / MySQL

pymysql = driver("pymysql")
# Slower: InnoDB refreshes INNODB_TRX only when it was last read over 0.1 s ago, so
# reading it every 0.05 s would show a LOCK WAIT to no one (the oracle included).
MYSQL_INTERVAL_S = 0.15
CONSUMERS = ("global_instrumentation", "thread_instrumentation", "events_waits_current")


def mysql_admin(params: dict[str, Any]) -> Any:
    return pymysql.connect(autocommit=True, **params)


def set_consumers(params: dict[str, Any], states: dict[str, str]) -> None:
    """Turn performance_schema consumers on or off (at run time only)."""
    admin = mysql_admin(params)
    try:
        with admin.cursor() as cursor:
            for name, enabled in states.items():
                cursor.execute(
                    "UPDATE performance_schema.setup_consumers SET ENABLED = %s WHERE NAME = %s",
                    (enabled, name),
                )
    finally:
        admin.close()


@pytest.fixture
def mysql() -> Iterator[dict[str, Any]]:
    """PyMySQL arguments; the current-waits consumers on meanwhile, and a one-row InnoDB table."""
    params = require_performance_schema()
    admin = mysql_admin(params)
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT NAME, ENABLED FROM performance_schema.setup_consumers"
                f" WHERE NAME IN {CONSUMERS!r}"
            )
            before = dict(cursor.fetchall())
            cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
            cursor.execute(
                f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v int NOT NULL) ENGINE=InnoDB"
            )
            cursor.execute(f"INSERT INTO {TABLE} VALUES (1, 0)")
    finally:
        admin.close()
    set_consumers(params, dict.fromkeys(CONSUMERS, "YES"))
    try:
        yield params
    finally:
        set_consumers(params, before)
        admin = mysql_admin(params)
        try:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")
        finally:
            admin.close()


def mysql_sampler(params: dict[str, Any], meter: MeterType, **changes: Any) -> ServerWaitSampler:
    return ServerWaitSampler(
        lambda: pymysql.connect(**{**params, **changes}),
        dialect="mariadb",
        backend_ids=lambda: backend_ids_for(meter, dialect="mariadb"),
        interval=MYSQL_INTERVAL_S,
    )


def innodb_lock_waiting(params: dict[str, Any], thread_id: int) -> bool:
    """Whether InnoDB has the session's transaction in LOCK WAIT (read by a fresh session)."""
    admin = mysql_admin(params)
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM information_schema.INNODB_TRX"
                " WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id = %s",
                (thread_id,),
            )
            return bool(cursor.fetchone()[0])
    finally:
        admin.close()


def current_waits(params: dict[str, Any], thread_id: int) -> list[tuple[Any, ...]]:
    """The session's waits in progress in events_waits_current: (EVENT_NAME, OPERATION)."""
    admin = mysql_admin(params)
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT w.EVENT_NAME, w.OPERATION FROM performance_schema.threads t"
                " JOIN performance_schema.events_waits_current w ON w.THREAD_ID = t.THREAD_ID"
                " WHERE t.PROCESSLIST_ID = %s AND w.END_EVENT_ID IS NULL",
                (thread_id,),
            )
            return list(cursor.fetchall())
    finally:
        admin.close()


class RowLockWait:
    """The application's UPDATE waiting on another session's FOR UPDATE lock of the same row."""

    def __init__(self, params: dict[str, Any], meter: MeterType) -> None:
        self.holder = pymysql.connect(**params)
        self.app = dbapi.wrap_connection(pymysql.connect(autocommit=True, **params), meter=meter)
        with self.holder.cursor() as cursor:
            cursor.execute(f"SELECT v FROM {TABLE} WHERE id = 1 FOR UPDATE")
        self.thread_id = self.app.thread_id()

        def update() -> None:
            with self.app.cursor() as cursor:
                cursor.execute(f"UPDATE {TABLE} SET v = v + %s WHERE id = %s", (1, 1))

        self.update = run_in_thread(update)
        try:
            wait_until(lambda: innodb_lock_waiting(params, self.thread_id), poll_s=0.25)
        except BaseException:
            # Never leave the row (and the table's metadata lock) held: teardown drops it.
            self.release()
            raise

    def release(self) -> None:
        self.holder.rollback()
        self.update.join(10)
        assert not self.update.is_alive()
        self.holder.close()
        self.app.close()


def test_mariadb_row_lock_wait_is_lock(mysql: dict[str, Any], meter: MeterType) -> None:
    """An UPDATE waiting on an InnoDB row lock is sampled as Lock under its fingerprint."""
    sampler = mysql_sampler(mysql, meter).start()
    waiting = RowLockWait(mysql, meter)
    try:
        time.sleep(10 * MYSQL_INTERVAL_S)
    finally:
        waiting.release()
    profile = sampler.stop()
    classes = profile.by_fingerprint[UPDATE_FINGERPRINT]
    assert classes.get("Lock", 0) >= 5, profile
    assert classes["Lock"] > sum(classes.values()) / 2, profile
    assert profile.notes == [], profile.notes


def test_mariadb_performance_schema_shows_a_row_lock_wait_as_table_io(
    mysql: dict[str, Any], meter: MeterType
) -> None:
    """performance_schema shows an InnoDB row lock wait as an open table-I/O fetch."""
    waiting = RowLockWait(mysql, meter)
    try:
        waits = current_waits(mysql, waiting.thread_id)
    finally:
        waiting.release()
    assert waits == [("wait/io/table/sql/handler", "fetch")]


def test_mariadb_sleep_is_timeout(mysql: dict[str, Any], meter: MeterType) -> None:
    """SLEEP() runs with no wait in progress and the state 'User sleep': sampled as Timeout."""
    app = dbapi.wrap_connection(pymysql.connect(autocommit=True, **mysql), meter=meter)
    try:
        sampler = mysql_sampler(mysql, meter).start()
        with app.cursor() as cursor:
            cursor.execute("SELECT SLEEP(1)")
        profile = sampler.stop()
    finally:
        app.close()
    classes = profile.by_fingerprint["select sleep(?)"]
    assert classes.get("Timeout", 0) >= 4, profile
    assert classes["Timeout"] > sum(classes.values()) / 2, profile


def test_mariadb_consumers_off_is_a_note(mysql: dict[str, Any], meter: MeterType) -> None:
    """With events_waits_current disabled nothing is sampled, and a note names the consumer."""
    set_consumers(mysql, {"events_waits_current": "NO"})
    sampler = mysql_sampler(mysql, meter).start()
    wait_until(lambda: not sampler.running)
    profile = sampler.stop()
    assert profile.samples == 0
    assert any("events_waits_current" in note for note in profile.notes), profile.notes


@pytest.fixture
def mysql_user(mysql: dict[str, Any]) -> Iterator[tuple[str, Callable[[str], None]]]:
    """A user of this module's, with no privilege until granted one."""
    user = f"qm_waits_watcher_{os.getpid()}"
    admin = mysql_admin(mysql)
    cursor = admin.cursor()
    cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
    cursor.execute(f"CREATE USER '{user}'@'%'")
    try:
        yield user, cursor.execute
    finally:
        cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        admin.close()


def test_mariadb_user_without_privileges_is_a_note(
    mysql: dict[str, Any], meter: MeterType, mysql_user: tuple[str, Callable[[str], None]]
) -> None:
    """A user who may not read performance_schema samples nothing, and a note says why."""
    user, _ = mysql_user
    sampler = mysql_sampler(mysql, meter, user=user, password="", database=None).start()
    wait_until(lambda: not sampler.running)
    profile = sampler.stop()
    assert profile.samples == 0
    assert any("performance_schema could not be read" in note for note in profile.notes)


def test_mariadb_user_without_process_cannot_tell_a_row_lock(
    mysql: dict[str, Any], meter: MeterType, mysql_user: tuple[str, Callable[[str], None]]
) -> None:
    """Without PROCESS, InnoDB's LOCK WAIT is unseen: a row lock wait counts as CPU, with a note."""
    user, execute = mysql_user
    execute(f"GRANT SELECT ON performance_schema.* TO '{user}'@'%'")
    sampler = mysql_sampler(mysql, meter, user=user, password="", database=None).start()
    waiting = RowLockWait(mysql, meter)
    try:
        time.sleep(10 * MYSQL_INTERVAL_S)
    finally:
        waiting.release()
    profile = sampler.stop()
    assert profile.by_fingerprint[UPDATE_FINGERPRINT].get("CPU", 0) >= 5, profile
    assert "Lock" not in profile.by_class, profile
    assert any("PROCESS privilege" in note for note in profile.notes), profile.notes


# ------------------------------------------------------------ backend ids of a meter


def test_backend_ids_for_are_the_servers_own_ids(
    Meter: type[MeterType], mysql: dict[str, Any]
) -> None:
    """backend_ids_for(meter) is each open counted connection's id, as its server reports it."""
    psycopg2 = driver("psycopg2")
    mysqldb = driver("MySQLdb")
    asyncpg = driver("asyncpg")
    dsn = postgres_dsn()
    meter, other = Meter(), Meter()
    pg3 = dbapi.wrap_connection(psycopg.connect(dsn, autocommit=True), meter=meter)
    pg2 = dbapi.wrap_connection(psycopg2.connect(dsn), meter=meter)
    my1 = dbapi.wrap_connection(pymysql.connect(**mysql), meter=meter)
    my2 = dbapi.wrap_connection(
        mysqldb.connect(
            host=mysql["host"],
            port=mysql["port"],
            user=mysql["user"],
            password=mysql["password"],
            database=mysql["database"],
        ),
        meter=meter,
    )
    elsewhere = dbapi.wrap_connection(psycopg.connect(dsn, autocommit=True), meter=other)
    uncounted = psycopg.connect(dsn, autocommit=True)
    try:
        pg_ids = {
            pg3.execute("SELECT pg_backend_pid()").fetchone()[0],
            _one(pg2, "SELECT pg_backend_pid()"),
        }
        my_ids = {_one(my1, "SELECT CONNECTION_ID()"), _one(my2, "SELECT CONNECTION_ID()")}

        async def with_asyncpg() -> tuple[int, set[int]]:
            options = psycopg.conninfo.conninfo_to_dict(dsn)
            options["database"] = options.pop("dbname", None)
            connection = dbapi.wrap_connection(await asyncpg.connect(**options), meter=meter)
            try:
                server_pid = await connection.fetchval("SELECT pg_backend_pid()")
                return int(server_pid), backend_ids_for(meter, dialect="postgresql")
            finally:
                await connection.close()

        asyncpg_id, with_asyncpg_ids = asyncio.run(with_asyncpg())
        assert with_asyncpg_ids == pg_ids | {asyncpg_id}
        assert backend_ids_for(meter) == pg_ids | my_ids
        assert backend_ids_for(meter, dialect="postgresql") == pg_ids
        assert backend_ids_for(meter, dialect="mysql") == my_ids
        assert backend_ids_for(other) == {elsewhere.info.backend_pid}
        pg2_id, my1_id = pg2.get_backend_pid(), my1.thread_id()
        pg2.close()
        my1.close()
        assert backend_ids_for(meter) == (pg_ids | my_ids) - {pg2_id, my1_id}
    finally:
        for connection in (pg3, pg2, my2, elsewhere, uncounted):
            connection.close()
        if my1.open:
            my1.close()


def _one(connection: Any, sql: str) -> int:
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
        return int(cursor.fetchone()[0])
    finally:
        cursor.close()
