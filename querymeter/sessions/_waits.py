"""What the database server waited for while it ran the application's queries, sampled.

A :class:`ServerWaitSampler` looks, a few times per second, at what each of
the application's server sessions is doing, on one read-only connection of
its own, and counts each active session it finds under a wait class and the
fingerprint of the statement it runs.  Each observation stands for one
sampling interval of database time, so ``count * interval_s`` estimates the
server time spent in each class (active session sampling, as Oracle's ASH
and PostgreSQL's pg_wait_sampling do).

Wait classes, and what each server reports for them:

========== ============================================ ===========================================
class      PostgreSQL (``pg_stat_activity``)             MariaDB / MySQL (``performance_schema``)
========== ============================================ ===========================================
CPU        active, no ``wait_event_type``               active, no wait in progress, or only the
                                                        storage engine's row call
                                                        (``wait/io/table/%``)
Lock       ``Lock`` (heavyweight: rows, tables,         InnoDB's ``LOCK WAIT``
           transaction ids), ``LWLock`` (the server's   (``information_schema.INNODB_TRX``),
           internal locks), ``BufferPin`` (waiting for  ``wait/lock/%``, ``wait/synch/mutex|rwlock|
           other sessions' pins)                        sxlock|prlock/%``, a state "Waiting for
                                                        ... lock"
IO         ``IO``                                       ``wait/io/file/%``
Client     ``Client``                                   ``wait/io/socket/%``, a state
                                                        "Sending to client", "Writing to net",
                                                        "Reading from net"
IPC        ``IPC``                                      ``wait/synch/cond/%``
Timeout    ``Timeout`` (``pg_sleep``: ``PgSleep``)      the state "User sleep" (``SLEEP()``)
Extension  ``Extension``                                (none)
Other      anything else (``Activity``)                 anything else
========== ============================================ ===========================================

Lock means waiting for another session to let go of something, whether the
lock is the application's (a row) or the server's own (a latch): the
contention the application can cause and remove.  MariaDB's performance_schema
shows a session stuck on an InnoDB row lock as an open ``wait/io/table/sql/
handler`` fetch, the same event as any row read, so the sampler asks InnoDB
(``INNODB_TRX``, which needs the PROCESS privilege) who is in ``LOCK WAIT``;
without that privilege, row lock waits count as CPU and a note says so.

The sampler only reads; a server that refuses (no connection, no privilege,
performance_schema or its consumers off) leaves a note in the profile, never
an exception.  Its thread does not survive ``fork``: in a child process the
sampler has stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import _faults
from ..meter import Meter
from ..statements import fingerprint

__all__ = [
    "DIALECTS",
    "WAIT_CLASSES",
    "ServerWaitSampler",
    "WaitProfile",
    "backend_id",
    "backend_ids_for",
    "mysql_wait_class",
    "postgresql_wait_class",
]

WAIT_CLASSES = ("CPU", "Lock", "IO", "Client", "IPC", "Timeout", "Extension", "Other")
DIALECTS = ("postgresql", "mysql", "mariadb")

# Bounded: statements beyond this many distinct fingerprints count under one key.
MAX_FINGERPRINTS = 1000
OTHER_FINGERPRINTS = "(other statements)"
MAX_NOTES = 20
# A sampler stuck in a query this long is abandoned by stop() (it is a daemon thread).
_STOP_TIMEOUT_S = 10.0
# Each sampling query is cheap; this bounds one that is not (a server under duress).
_STATEMENT_TIMEOUT_S = 2

_PG_CLASSES = {
    "Lock": "Lock",
    "LWLock": "Lock",
    "BufferPin": "Lock",
    "IO": "IO",
    "Client": "Client",
    "IPC": "IPC",
    "Timeout": "Timeout",
    "Extension": "Extension",
}

# MySQL commands of a session that is running a statement (not 'Sleep', not a daemon).
_MYSQL_ACTIVE_COMMANDS = frozenset({"Query", "Execute", "Fetch", "Prepare"})
_MYSQL_CLIENT_STATES = ("sending to client", "writing to net", "reading from net")


def postgresql_wait_class(wait_event_type: str | None, wait_event: str | None = None) -> str:
    """The wait class of an active PostgreSQL backend, from ``pg_stat_activity``."""
    if wait_event_type is None:
        return "CPU"
    return _PG_CLASSES.get(wait_event_type, "Other")


def mysql_wait_class(
    event_name: str | None, state: str | None = None, *, innodb_lock_wait: bool = False
) -> str:
    """The wait class of an active MariaDB/MySQL session.

    ``event_name`` is the innermost wait in progress (``events_waits_current``)
    or None, ``state`` the session's ``PROCESSLIST_STATE``, ``innodb_lock_wait``
    whether InnoDB has its transaction in ``LOCK WAIT``.
    """
    if innodb_lock_wait:
        return "Lock"
    name = event_name or ""
    if name.startswith("wait/lock/"):
        return "Lock"
    if name.startswith("wait/synch/cond/"):
        return "IPC"
    if name.startswith("wait/synch/"):
        return "Lock"
    if name.startswith("wait/io/file/"):
        return "IO"
    if name.startswith("wait/io/socket/"):
        return "Client"
    if name and not name.startswith("wait/io/table/"):
        return "Other"
    # No wait the server instruments: the session's state is the best evidence left.
    lowered = (state or "").lower()
    if lowered == "user sleep":
        return "Timeout"
    if lowered.startswith("waiting for") and "lock" in lowered:
        return "Lock"
    if lowered.startswith(_MYSQL_CLIENT_STATES):
        return "Client"
    return "CPU"


@dataclass(frozen=True)
class WaitProfile:
    """What the server's sessions for the application were doing, sampled.

    ``samples``: sampling rounds taken, each ``interval_s`` seconds apart, each
    looking once at every session of the application.  ``by_class``: active
    sessions seen per wait class; ``by_fingerprint``: the same per statement
    fingerprint, then per class.  One observation stands for ``interval_s``
    seconds of database time.  ``notes``: what limited the sampling.
    """

    samples: int
    interval_s: float
    by_class: dict[str, int] = field(default_factory=dict)
    by_fingerprint: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def observations(self) -> int:
        """Active sessions seen over all rounds (the sum of ``by_class``)."""
        return sum(self.by_class.values())

    def time_by_class(self) -> dict[str, float]:
        """Estimated database time per wait class, seconds: observations * interval_s."""
        return {name: count * self.interval_s for name, count in self.by_class.items()}

    def time_by_fingerprint(self) -> dict[str, dict[str, float]]:
        """Estimated database time per fingerprint and wait class, seconds."""
        return {
            text: {name: count * self.interval_s for name, count in classes.items()}
            for text, classes in self.by_fingerprint.items()
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON: the fields as they are."""
        return {
            "samples": self.samples,
            "interval_s": self.interval_s,
            "by_class": dict(self.by_class),
            "by_fingerprint": {text: dict(c) for text, c in self.by_fingerprint.items()},
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WaitProfile:
        """The profile ``as_dict()`` gave; ValueError naming the field that is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a wait profile is a mapping, not {type(data).__name__}")
        try:
            samples, interval_s = data["samples"], data["interval_s"]
            by_class, by_fingerprint, notes = (
                data["by_class"],
                data["by_fingerprint"],
                data["notes"],
            )
        except KeyError as exc:
            raise ValueError(f"a wait profile needs the field {exc.args[0]!r}") from None
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ValueError(f"samples must be an int >= 0, got {samples!r}")
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)):
            raise ValueError(f"interval_s must be a number of seconds, got {interval_s!r}")
        if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
            raise ValueError(f"notes must be a list of strings, got {notes!r}")
        if not isinstance(by_fingerprint, Mapping):
            raise ValueError(f"by_fingerprint must be a mapping, got {by_fingerprint!r}")
        return cls(
            samples=samples,
            interval_s=float(interval_s),
            by_class=_counts("by_class", by_class),
            by_fingerprint={
                str(text): _counts(f"by_fingerprint[{text!r}]", classes)
                for text, classes in by_fingerprint.items()
            },
            notes=list(notes),
        )


def _counts(name: str, value: object) -> dict[str, int]:
    """A mapping of class names to counts, checked."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping of wait classes to counts, got {value!r}")
    for key, count in value.items():
        if not isinstance(key, str) or isinstance(count, bool) or not isinstance(count, int):
            raise ValueError(f"{name} must map wait classes to ints, got {key!r}: {count!r}")
    return dict(value)


class _Refused(Exception):
    """The server will not let the sampler see what it needs: a note, not a fault."""


class ServerWaitSampler:
    """ServerWaitSampler(connect, *, dialect, backend_ids, interval=0.2)

    Samples, every ``interval`` seconds in a daemon thread, what the server
    sessions ``backend_ids()`` names (PostgreSQL backend pids, MariaDB/MySQL
    connection ids) are waiting for, on one connection that ``connect()``
    opens when sampling starts and that is closed when it stops.
    ``backend_ids`` is called every round (connections come and go); the
    sampler's own session is never counted.  :meth:`stop` returns the
    :class:`WaitProfile`.  A sampler runs once.
    """

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        dialect: str,
        backend_ids: Callable[[], set[int]],
        interval: float = 0.2,
    ) -> None:
        if not callable(connect):
            raise TypeError(f"connect must be callable, not {type(connect).__name__}")
        if not callable(backend_ids):
            raise TypeError(f"backend_ids must be callable, not {type(backend_ids).__name__}")
        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
        if isinstance(interval, bool) or not isinstance(interval, (int, float)):
            raise TypeError(f"interval must be a number of seconds, not {type(interval).__name__}")
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be finite and > 0 seconds, got {interval!r}")
        self._connect = connect
        self._dialect = dialect
        self._backend_ids = backend_ids
        self._interval_s = float(interval)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._forked = False
        self._samples = 0
        self._by_class: dict[str, int] = {}
        self._by_fingerprint: dict[str, dict[str, int]] = {}
        self._notes: list[str] = []
        self._skipped_rounds = 0
        _live_samplers.add(self)

    @property
    def dialect(self) -> str:
        """The server's dialect: "postgresql", "mysql" or "mariadb"."""
        return self._dialect

    @property
    def interval(self) -> float:
        """Seconds between two sampling rounds."""
        return self._interval_s

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> ServerWaitSampler:
        """Start sampling in a daemon thread; returns the sampler.  A sampler runs once."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this wait sampler has already been started; it runs once")
            self._thread = threading.Thread(
                target=self._run, name="querymeter-wait-sampler", daemon=True
            )
        self._thread.start()
        return self

    def stop(self) -> WaitProfile:
        """Stop sampling, close the connection, and return what was found."""
        self._stopping.set()
        thread = self._thread
        if thread is None:
            self._note("the wait sampler was never started")
        elif thread is not threading.current_thread():
            thread.join(_STOP_TIMEOUT_S)
            if thread.is_alive():
                self._note(
                    f"the wait sampler's query had not returned after {_STOP_TIMEOUT_S:g} s;"
                    " its connection is closed when it does"
                )
        with self._lock:
            return self._snapshot()

    def profile(self) -> WaitProfile:
        """What has been found so far (sampling goes on)."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> WaitProfile:
        notes = list(self._notes)
        if self._skipped_rounds:
            notes.append(
                f"{self._skipped_rounds} sampling rounds were skipped: the server answered"
                f" slower than every {self._interval_s:g} s"
            )
        return WaitProfile(
            samples=self._samples,
            interval_s=self._interval_s,
            by_class=dict(self._by_class),
            by_fingerprint={text: dict(c) for text, c in self._by_fingerprint.items()},
            notes=notes,
        )

    def _note(self, text: str) -> None:
        with self._lock:
            if text not in self._notes and len(self._notes) < MAX_NOTES:
                self._notes.append(text)

    # ------------------------------------------------------------ the thread

    def _run(self) -> None:
        connection: Any = None
        try:
            try:
                connection = self._connect()
                _stop_counting(connection)
                round_ = self._prepare(connection)
            except _Refused as exc:
                self._note(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - the server's refusal is a note
                self._note(f"the wait sampler could not start: {_describe(exc)}")
                return
            deadline = time.monotonic() + self._interval_s
            while not self._stopping.wait(max(0.0, deadline - time.monotonic())):
                ids = {int(pid) for pid in self._backend_ids()}
                try:
                    seen = round_(ids)
                except _Refused as exc:
                    self._note(str(exc))
                    return
                except Exception as exc:  # noqa: BLE001 - the server's refusal is a note
                    self._note(f"the server stopped answering the wait sampler: {_describe(exc)}")
                    return
                self._record(seen)
                deadline += self._interval_s
                now = time.monotonic()
                if deadline < now:
                    # Starved: skip the missed rounds instead of bursting through them.
                    missed = math.ceil((now - deadline) / self._interval_s)
                    deadline += missed * self._interval_s
                    with self._lock:
                        self._skipped_rounds += missed
        except Exception as exc:  # noqa: BLE001 - a fault of ours must not go unnoticed, nor raise
            _faults.report("wait sampler stopped on an error", exc)
            self._note(f"sampling ended early on an internal error: {_describe(exc)}")
        finally:
            if connection is not None and not self._forked:
                try:
                    connection.close()
                except Exception as exc:  # noqa: BLE001 - closing is best effort
                    self._note(f"the wait sampler's connection did not close: {_describe(exc)}")

    def _record(self, seen: list[tuple[str, str]]) -> None:
        """Count one round's active sessions: (statement text, wait class) each."""
        named = [(self._fingerprint(text), wait_class) for text, wait_class in seen]
        with self._lock:
            self._samples += 1
            for key, wait_class in named:
                self._by_class[wait_class] = self._by_class.get(wait_class, 0) + 1
                classes = self._by_fingerprint.get(key)
                if classes is None:
                    if len(self._by_fingerprint) >= MAX_FINGERPRINTS:
                        key = OTHER_FINGERPRINTS
                    classes = self._by_fingerprint.setdefault(key, {})
                classes[wait_class] = classes.get(wait_class, 0) + 1

    def _fingerprint(self, text: str) -> str:
        return fingerprint(text, self._dialect)

    def _prepare(self, connection: Any) -> Callable[[set[int]], list[tuple[str, str]]]:
        """Check that the server shows what is needed; the function that takes one round."""
        if self._dialect == "postgresql":
            return _PostgresRounds(connection, self._note).round
        return _MySQLRounds(connection, self._note).round

    def _after_fork_in_child(self) -> None:
        # The sampling thread is the parent's: in the child the sampler has
        # stopped.  Its connection's socket is the parent's too: the child
        # leaves it alone (closing it would end the parent's session).
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopping.set()
        self._forked = True
        if self._thread is not None:
            self._notes.append("stopped in a forked child process (threads do not survive fork)")


def _describe(exc: BaseException) -> str:
    message = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _stop_counting(connection: Any) -> None:
    """A connection from an instrumented driver would count the sampler's own queries."""
    import querymeter.dbapi  # lazily: importing the sessions loads no hook

    if querymeter.dbapi.meter_of(connection) is not None:
        querymeter.dbapi.unwrap_connection(connection)


def _query(connection: Any, sql: str) -> list[tuple[Any, ...]]:
    """Run one read on the sampler's connection, and end its transaction.

    Ending it matters on PostgreSQL: a transaction sees one frozen copy of
    pg_stat_activity.
    """
    cursor = connection.cursor()
    try:
        cursor.execute(sql)
        rows = [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()
    connection.rollback()
    return rows


def _try(connection: Any, sql: str) -> bool:
    """Run a session setting that the sampler can do without."""
    try:
        _query(connection, sql)
    except Exception:  # noqa: BLE001 - optional, a server may not know the setting
        _rollback(connection)
        return False
    return True


def _rollback(connection: Any) -> None:
    # Best effort: the next query reports a dead connection.
    with contextlib.suppress(Exception):
        connection.rollback()


def _id_list(ids: set[int]) -> str:
    # ints formatted by us, not text: no parameter style of any driver is needed.
    return ", ".join(str(int(pid)) for pid in sorted(ids))


class _PostgresRounds:
    def __init__(self, connection: Any, note: Callable[[str], None]) -> None:
        self._connection = connection
        self._note = note
        _try(connection, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        _try(connection, f"SET statement_timeout = '{_STATEMENT_TIMEOUT_S}s'")
        (own,) = _query(connection, "SELECT pg_backend_pid()")[0]
        self._own = int(own)

    def round(self, ids: set[int]) -> list[tuple[str, str]]:
        ids = ids - {self._own}
        if not ids:
            return []
        rows = _query(
            self._connection,
            "SELECT pid, state, wait_event_type, wait_event, query FROM pg_stat_activity"
            f" WHERE pid IN ({_id_list(ids)})",
        )
        seen = []
        for _pid, state, wait_event_type, wait_event, query in rows:
            if state is None:
                # Another role's session, which this role may not see.
                self._note(
                    "the sampler's role may not see other roles' sessions in"
                    " pg_stat_activity (grant it pg_read_all_stats): those were not sampled"
                )
                continue
            if state == "active":
                seen.append((str(query), postgresql_wait_class(wait_event_type, wait_event)))
        return seen


class _MySQLRounds:
    _NEEDED_CONSUMERS = ("global_instrumentation", "thread_instrumentation", "events_waits_current")

    def __init__(self, connection: Any, note: Callable[[str], None]) -> None:
        self._connection = connection
        self._note = note
        _try(connection, "SET SESSION TRANSACTION READ ONLY")
        # MariaDB's name, then MySQL's (milliseconds, for SELECTs).
        if not _try(connection, f"SET SESSION max_statement_time = {_STATEMENT_TIMEOUT_S}"):
            _try(connection, f"SET SESSION max_execution_time = {_STATEMENT_TIMEOUT_S * 1000}")
        (own,) = _query(connection, "SELECT CONNECTION_ID()")[0]
        self._own = int(own)
        try:
            (enabled,) = _query(connection, "SELECT @@performance_schema")[0]
            off = [
                str(name)
                for (name,) in _query(
                    connection,
                    "SELECT NAME FROM performance_schema.setup_consumers WHERE ENABLED <> 'YES'"
                    " AND NAME IN ('global_instrumentation', 'thread_instrumentation',"
                    " 'events_waits_current')",
                )
            ]
        except Exception as exc:  # noqa: BLE001 - a refusal is a note
            raise _Refused(f"performance_schema could not be read: {_describe(exc)}") from None
        if str(enabled) not in ("1", "ON"):
            raise _Refused("performance_schema is OFF on the server: no waits were sampled")
        if off:
            raise _Refused(
                "performance_schema's consumers "
                + ", ".join(sorted(off))
                + " are disabled: no waits were sampled (UPDATE"
                " performance_schema.setup_consumers SET ENABLED = 'YES' WHERE NAME IN (...))"
            )
        try:
            _query(connection, "SELECT count(*) FROM information_schema.INNODB_TRX")
            self._innodb = True
        except Exception as exc:  # noqa: BLE001 - without PROCESS, go on without it
            _rollback(connection)
            self._innodb = False
            note(
                "InnoDB's transactions could not be read (the PROCESS privilege):"
                f" row lock waits count as CPU ({_describe(exc)})"
            )

    def round(self, ids: set[int]) -> list[tuple[str, str]]:
        ids = ids - {self._own}
        if not ids:
            return []
        id_list = _id_list(ids)
        rows = _query(
            self._connection,
            "SELECT t.PROCESSLIST_ID, t.PROCESSLIST_COMMAND, t.PROCESSLIST_STATE,"
            " t.PROCESSLIST_INFO, w.EVENT_ID, w.EVENT_NAME"
            " FROM performance_schema.threads t"
            " LEFT JOIN performance_schema.events_waits_current w"
            " ON w.THREAD_ID = t.THREAD_ID AND w.END_EVENT_ID IS NULL"
            f" WHERE t.PROCESSLIST_ID IN ({id_list})",
        )
        lock_waits: set[int] = set()
        if self._innodb and rows:
            lock_waits = {
                int(pid)
                for (pid,) in _query(
                    self._connection,
                    "SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX"
                    f" WHERE trx_state = 'LOCK WAIT' AND trx_mysql_thread_id IN ({id_list})",
                )
            }
        # Several rows per session when waits nest: the innermost is the newest.
        innermost: dict[int, tuple[int, str | None, str | None, str, str | None]] = {}
        for pid, command, state, info, event_id, event_name in rows:
            if command not in _MYSQL_ACTIVE_COMMANDS or info is None:
                continue
            key, order = int(pid), -1 if event_id is None else int(event_id)
            current = innermost.get(key)
            if current is None or order > current[0]:
                innermost[key] = (order, event_name, state, str(info), command)
        return [
            (text, mysql_wait_class(event_name, state, innodb_lock_wait=pid in lock_waits))
            for pid, (_, event_name, state, text, _command) in innermost.items()
        ]


# ------------------------------------------------------------ backend ids


def _psycopg_id(connection: Any) -> int | None:
    return None if connection.closed else int(connection.info.backend_pid)


def _psycopg2_id(connection: Any) -> int | None:
    return None if connection.closed else int(connection.get_backend_pid())


def _asyncpg_id(connection: Any) -> int | None:
    return None if connection.is_closed() else int(connection.get_server_pid())


def _mysql_id(connection: Any) -> int | None:
    return int(connection.thread_id()) if connection.open else None


# By the top-level package of the connection's class (a counting subclass keeps
# its driver's module name).
_BACKEND_IDS: dict[str, tuple[str, Callable[[Any], int | None]]] = {
    "psycopg": ("postgresql", _psycopg_id),
    "psycopg2": ("postgresql", _psycopg2_id),
    "asyncpg": ("postgresql", _asyncpg_id),
    "pymysql": ("mysql", _mysql_id),
    "MySQLdb": ("mysql", _mysql_id),
}


def backend_ids_for(meter: Meter, *, dialect: str | None = None) -> set[int]:
    """The server session ids of the open connections that count into ``meter``.

    PostgreSQL backend pids (psycopg, psycopg2, asyncpg) and MariaDB/MySQL
    connection ids (PyMySQL, mysqlclient); only one server's kind with
    ``dialect``.  Connections of other drivers, and closed ones, are left out.
    """
    if dialect is not None and dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {', '.join(DIALECTS)}, got {dialect!r}")
    family = None if dialect is None else ("postgresql" if dialect == "postgresql" else "mysql")
    # querymeter.dbapi never imported: no connection counts through it (and
    # importing the sessions loads no hook).
    connections = sys.modules.get("querymeter.dbapi._connections")
    ids: set[int] = set()
    if connections is None:
        return ids
    for connection in connections.connections_of(meter):
        found = backend_id(connection, family)
        if found:
            ids.add(found)
    return ids


def backend_id(connection: Any, family: str | None = None) -> int | None:
    """A DB-API connection's id on its server (PostgreSQL's backend pid, MariaDB/MySQL's
    connection id), None for a closed one, another driver's, or another ``family``'s."""
    entry = _BACKEND_IDS.get(type(connection).__module__.partition(".")[0])
    if entry is None or (family is not None and entry[0] != family):
        return None
    try:
        return entry[1](connection)
    except Exception:  # noqa: BLE001 - a connection closing meanwhile has no id
        return None


# Every live sampler, so that a forked child can stop them.
_live_samplers: weakref.WeakSet[ServerWaitSampler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sampler in list(_live_samplers):
        sampler._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
