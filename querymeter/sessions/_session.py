"""Profiling sessions: detailed capture on a leash, focused, time-boxed, saved with its settings.

``with querymeter.profile(60, objective="why is checkout slow?") as session:``
runs a session: for its duration the meter also keeps the session's own
statement table and samples (of every query, or only of the scopes that
``focus`` names), then ``session.report()`` says what was found.  The
session never touches the meter's own settings (its statement table,
sampling), so it leaves nothing switched on behind it, and it ends by
itself when ``duration`` elapses (a timer), when ``max_samples`` are
captured (detailed capture stops; the counters go on), or at
``querymeter.disable()``.  One session at a time per meter.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from .. import _faults, scopes, switch
from ..meter import Meter, core_module, meter_argument
from ..readings import Interval, Snapshot
from ..statements import SampleLog, StatementTable
from ._explain import explain_statements
from ._overhead import settings_overhead
from ._report import FORMAT, Report, marker_dicts, sample_dicts
from ._waits import ServerWaitSampler, backend_id, backend_ids_for

__all__ = ["Session", "profile"]

# The session running on each meter (weakly: a meter that goes, goes).
_running: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()
_lock = threading.Lock()

_DRIVERS = ("sqlite3", "psycopg", "psycopg2", "pymysql", "MySQLdb", "aiosqlite", "asyncpg")


def profile(
    duration: float = 60.0,
    *,
    objective: str | None = None,
    sample: float = 0.05,
    slower_than: float | None = None,
    focus: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None = None,
    max_samples: int = 10_000,
    explain: bool = False,
    waits: bool = False,
    meter: Meter | None = None,
) -> Session:
    """A profiling session of ``meter`` (the default meter): start it with ``with`` or ``start()``.

    - ``duration``: seconds; the session ends itself then (the leash).
    - ``objective``: why it runs, kept in the report.
    - ``sample``: the share of queries captured as samples (0 to 1);
      ``slower_than``: seconds, every query at least that slow is captured too.
    - ``focus``: tags a scope must carry (a mapping: every item equal), or a
      predicate on a scope's tags: detailed capture only for queries in such
      scopes (opened after the session starts); the counters stay global.
    - ``max_samples``: the most samples kept; reaching it ends detailed capture.
    - ``explain``: EXPLAIN the top statements after the session, on a
      connection of an instrumented SQLAlchemy engine of the meter.
    - ``waits``: sample what the database server waited for (PostgreSQL,
      MariaDB/MySQL), on one separate connection.
    """
    return Session(
        duration,
        objective=objective,
        sample=sample,
        slower_than=slower_than,
        focus=focus,
        max_samples=max_samples,
        explain=explain,
        waits=waits,
        meter=meter,
    )


class _SessionLog(SampleLog):
    """The session's samples: capture ends (detailed capture stops) at the bound."""

    __slots__ = ("_full",)

    def __init__(self, *args: Any, full: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._full = full

    def _capture(self, *args: Any) -> None:
        super()._capture(*args)
        if len(self) >= self.capacity:
            self._full()


class Session:
    """A profiling session (made by :func:`profile`; see the module's doc)."""

    def __init__(
        self,
        duration: float = 60.0,
        *,
        objective: str | None = None,
        sample: float = 0.05,
        slower_than: float | None = None,
        focus: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None = None,
        max_samples: int = 10_000,
        explain: bool = False,
        waits: bool = False,
        meter: Meter | None = None,
    ) -> None:
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            raise TypeError(f"duration must be seconds, not {type(duration).__name__}")
        if not 0 < duration < float("inf"):
            raise ValueError(f"duration must be more than 0 seconds, not {duration!r}")
        if isinstance(sample, bool) or not isinstance(sample, int | float):
            raise TypeError(f"sample must be a number from 0 to 1, not {type(sample).__name__}")
        if not 0 <= sample <= 1:
            raise ValueError(f"sample must be from 0 to 1, not {sample!r}")
        if isinstance(max_samples, bool) or not isinstance(max_samples, int):
            raise TypeError(f"max_samples must be an int, not {type(max_samples).__name__}")
        if max_samples < 1:
            raise ValueError(f"max_samples must be at least 1, not {max_samples}")
        if objective is not None and not isinstance(objective, str):
            raise TypeError(f"objective must be a str, not {type(objective).__name__}")
        self.meter = meter_argument(meter)
        self.duration = float(duration)
        self.objective = objective
        self.sample = float(sample)
        self.slower_than = slower_than
        self.focus = focus
        self._predicate = _predicate(focus)
        self.max_samples = max_samples
        self.explain = bool(explain)
        self.waits = bool(waits)
        # Checked now, at the call: a bad value never reaches a hook.
        SampleLog(self.sample, slower_than, max_samples)
        self._state = "new"
        self._lock = threading.Lock()
        self._notes: list[str] = []
        self._report: Report | None = None
        self._scope_ns = [0, 0, 0]  # scopes ended in the session: count, time, DB time
        self._full = False

    def __repr__(self) -> str:
        what = f" {self.objective!r}" if self.objective else ""
        return f"<querymeter.Session{what} {self._state}, {self.duration:g} s>"

    # ----------------------------------------------------------- starting

    def start(self) -> Session:
        """Start capturing; raises RuntimeError if the meter already runs a session."""
        with _lock:
            if self._state != "new":
                raise RuntimeError(f"this session is {self._state}; make a new one")
            running = _running.get(self.meter)
            if running is not None:
                raise RuntimeError(f"the meter already runs a profiling session: {running!r}")
            _running[self.meter] = self
            self._state = "running"
        try:
            self._begin()
        except BaseException:
            # Nothing left behind: not observing, not registered, not running.
            self.meter._observe_session(None, None, None)
            with _lock:
                if _running.get(self.meter) is self:
                    del _running[self.meter]
            self._state = "new"
            raise
        return self

    def _begin(self) -> None:
        cores = core_module(self.meter)
        self._table = StatementTable(core_type=cores.Statements)
        self._log = _SessionLog(
            self.sample,
            self.slower_than,
            self.max_samples,
            full=self._samples_full,
            core_type=cores.Sampling,
        )
        self._key = object() if self._predicate is not None else None
        if self._predicate is not None:
            scopes.add_focus(self._key, self._predicate)
        scopes.add_exit_listener(self._scope_ended)
        self._engines = _engines_of(self.meter)
        self._pools_before = _pool_snapshots(self._engines)
        self._waits = self._start_waits() if self.waits else None
        self._started_wall_ns = time.time_ns()
        self._before: Snapshot = self.meter.snapshot()
        self.meter._observe_session(self._table._core, self._log._core, self._key)
        switch.on_disable(self)
        self._timer = threading.Timer(self.duration, self._expired)
        self._timer.daemon = True
        self._timer.start()

    def __enter__(self) -> Session:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------- stopping

    @property
    def running(self) -> bool:
        return self._state == "running"

    def stop(self, *, ended_by: str = "stop") -> Report:
        """End the session (again: nothing more) and return its report."""
        with self._lock:
            if self._state != "running":
                if self._state == "forked":
                    raise RuntimeError("this session ran in the parent process (before a fork)")
                if self._report is None:
                    raise RuntimeError("this session has not started")
                return self._report
            self._state = "stopping"
        try:
            self._timer.cancel()
            self.meter._observe_session(None, None, None)
            if self._key is not None:
                scopes.remove_focus(self._key)
            scopes.remove_exit_listener(self._scope_ended)
            after = self.meter.snapshot()
            ended_wall_ns = time.time_ns()
            pools_after = _pool_snapshots(self._engines)
            server_waits = self._stop_waits()
            report = self._build(after, ended_wall_ns, pools_after, ended_by, server_waits)
            if self.explain:
                report = self._explained(report)
            self._report = report
        finally:
            with _lock:
                if _running.get(self.meter) is self:
                    del _running[self.meter]
            self._state = "ended"
        return self._report

    def _on_disable(self) -> None:
        if self._state == "running":
            self.stop(ended_by="disable")

    def _expired(self) -> None:
        try:
            self.stop(ended_by="duration")
        except Exception as exc:  # noqa: BLE001 - the timer's thread: ours, reported
            _faults.report("profile: could not end a session at its duration", exc)

    def _samples_full(self) -> None:
        # Called from inside a capture (the core holds what it uses), once.
        with self._lock:
            if self._full:
                return
            self._full = True
        self.meter._observe_session(self._table._core, None, self._key)
        self._notes.append(
            f"max_samples ({self.max_samples}) reached: detailed capture of samples ended "
            f"at {_utc(time.time_ns())}; statements and counters went on"
        )

    def _scope_ended(self, scope: scopes.Scope) -> None:
        if self._predicate is not None and not self._predicate(scope.tags):
            return
        self._scope_ns[0] += 1
        self._scope_ns[1] += scope.elapsed_ns or 0
        self._scope_ns[2] += scope.db_ns

    # ----------------------------------------------------------- the report

    def report(self) -> Report:
        """The session's report: the final one once it has ended, else what it found so far."""
        if self._report is not None:
            return self._report
        if self._state == "forked":
            raise RuntimeError("this session ran in the parent process (before a fork)")
        if self._state != "running":
            raise RuntimeError("this session has not started")
        return self._build(
            self.meter.snapshot(), time.time_ns(), _pool_snapshots(self._engines), "running"
        )

    def _build(
        self,
        after: Snapshot,
        ended_wall_ns: int,
        pools_after: list[Any],
        ended_by: str,
        server_waits: dict[str, Any] | None = None,
    ) -> Report:
        interval = Interval(self._before, after)
        reading = self._table.snapshot()
        db_ns = reading.total_ns
        statements = []
        for stats in reading.statements:
            row = stats.as_dict()
            row["share"] = stats.total_ns / db_ns if db_ns else 0.0
            statements.append(row)
        samples = self._log.samples()
        effect = self._observer_effect(interval, db_ns)
        data: dict[str, Any] = {
            "format": FORMAT,
            "objective": self.objective,
            "settings": {
                "duration": self.duration,
                "sample": self.sample,
                "slower_than": self.slower_than,
                "focus": _describe(self.focus),
                "max_samples": self.max_samples,
                "explain": self.explain,
                "waits": self.waits,
                "core": core_module(self.meter).__name__.rsplit(".", 1)[-1],
            },
            "started_wall_ns": self._started_wall_ns,
            "ended_wall_ns": ended_wall_ns,
            "ended_by": ended_by,
            "figures": _figures(interval),
            "statements": statements,
            "untexted": reading.untexted.as_dict(),
            "waits": {
                "client": self._client_waits(db_ns, pools_after),
                "server": server_waits,
            },
            "samples": sample_dicts(samples),
            "samples_dropped": self._log.dropped,
            "markers": marker_dicts(self._started_wall_ns, ended_wall_ns),
            "observer_effect": effect,
            "environment": _environment(self._engines),
            "notes": list(self._notes),
        }
        return Report(data)

    # ---------------------------------------- server waits and plans (opt-in)

    def _engine_for(self, what: str) -> Any:
        """The engine whose server a session's extra connection goes to, or None (noted)."""
        if not self._engines:
            self._notes.append(
                f"{what}: no SQLAlchemy engine is instrumented with this meter "
                "(querymeter.sqlalchemy.instrument(engine, meter=...)): skipped"
            )
            return None
        return self._engines[0]

    def _start_waits(self) -> Any:
        engine = self._engine_for("waits")
        if engine is None:
            return None
        dialect = _fingerprint_dialect(engine)
        if dialect not in ("postgresql", "mysql", "mariadb"):
            self._notes.append(f"waits: {engine.dialect.name} has no server waits to sample")
            return None
        # The application's connections: those querymeter.dbapi counts, and those the
        # engines check out while the session runs (their pools' listeners).
        self._engine_ids: set[int] = set()
        self._id_listeners = _listen_checkouts(self._engines, self._engine_ids)
        try:
            sampler = ServerWaitSampler(
                _raw_connector(engine),
                dialect=dialect,
                backend_ids=lambda: backend_ids_for(self.meter, dialect=dialect) | self._engine_ids,
            )
            sampler.start()
        except Exception as exc:  # noqa: BLE001 - opt-in figures: a note, never an error
            _faults.report("profile: could not start sampling the server's waits", exc)
            self._notes.append(f"waits: could not start: {exc}")
            return None
        return sampler

    def _stop_waits(self) -> dict[str, Any] | None:
        sampler, self._waits = getattr(self, "_waits", None), None
        _unlisten(getattr(self, "_id_listeners", []))
        if sampler is None:
            return None
        try:
            profile = sampler.stop()
        except Exception as exc:  # noqa: BLE001 - opt-in figures: a note, never an error
            _faults.report("profile: could not stop sampling the server's waits", exc)
            self._notes.append(f"waits: {exc}")
            return None
        self._notes.extend(f"waits: {note}" for note in profile.notes)
        data: dict[str, Any] = profile.as_dict()
        return data

    def _explained(self, report: Report) -> Report:
        """The report with the plans of its top statements (after the session: the
        explaining never competes with the work under study)."""
        engine = self._engine_for("explain")
        if engine is None:
            return Report({**report.as_dict(), "notes": list(self._notes)})
        top = [(s["fingerprint"], s["sample_sql"]) for s in report.top(5, by="total")]
        try:
            plans = [plan.as_dict() for plan in explain_statements(top, engine)]
        except Exception as exc:  # noqa: BLE001 - opt-in: a note, never an error
            _faults.report("profile: could not explain the top statements", exc)
            self._notes.append(f"explain: {exc}")
            plans = []
        return Report({**report.as_dict(), "plans": plans, "notes": list(self._notes)})

    def _observer_effect(self, interval: Interval, db_ns: int) -> dict[str, Any]:
        try:
            # What the session's own table and sampling add (the meter's own
            # statements and sampling, when on, come on top).
            per_query = settings_overhead(
                type(self.meter),
                statements=True,
                rate=self.sample,
                slower_than=self.slower_than,
            )
        except Exception as exc:  # noqa: BLE001 - a figure of the report: a note instead
            _faults.report("profile: could not measure the observer effect", exc)
            return {"ns_per_query": None, "share_of_db_time": None, "summary": "not measured"}
        queries = interval.queries
        total = interval.total_ns
        share = per_query * queries / total if total else None
        summary = f"instrumentation ≈ {per_query / 1000:.2f} µs/query"
        if share is not None:
            summary += f" ≈ {share * 100:.2f} % of DB time in this session"
        return {"ns_per_query": per_query, "share_of_db_time": share, "summary": summary}

    def _client_waits(self, db_ns: int, pools_after: list[Any]) -> dict[str, Any]:
        pool_ns = sum(
            (after - before).wait_ns
            for before, after in zip(self._pools_before, pools_after, strict=True)
            if before is not None and after is not None
        )
        scopes_seen, scope_ns, scope_db_ns = self._scope_ns
        if scopes_seen:
            application_ns = max(0, scope_ns - scope_db_ns - pool_ns)
            whole = scope_ns or 1
            parts = [
                ("the database (queries)", scope_db_ns),
                ("a pool connection", pool_ns),
                ("itself (the application's own time)", application_ns),
            ]
        else:
            whole = (db_ns + pool_ns) or 1
            parts = [("the database (queries)", db_ns), ("a pool connection", pool_ns)]
        named = [{"name": name, "ns": ns, "share": ns / whole} for name, ns in parts]
        top = max(named, key=lambda part: part["ns"])
        if not any(part["ns"] for part in named):
            verdict = "no time recorded"
        elif scopes_seen:
            verdict = f"the application was mostly waiting for {top['name']}"
        else:
            verdict = (
                f"mostly waiting for {top['name']}; open querymeter.scope() around the work "
                "(or use the middleware) to see the application's own share"
            )
        return {"parts": named, "verdict": verdict, "scopes": scopes_seen, "scope_ns": scope_ns}


def _end_sessions_in_child() -> None:
    """A forked child has no session: its timer did not survive the fork, and the
    parent's figures are the parent's.  The child's meters stop observing for them."""
    global _lock
    _lock = threading.Lock()
    for meter, session in list(_running.items()):
        session._lock = threading.Lock()
        session._state = "forked"
        try:
            meter._observe_session(None, None, None)
        except Exception as exc:  # noqa: BLE001 - ours, in a child being set up
            _faults.report("profile: could not end a session in a forked child", exc)
    _running.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_end_sessions_in_child)


def _predicate(
    focus: Mapping[str, Any] | Callable[[Mapping[str, Any]], bool] | None,
) -> Callable[[Mapping[str, Any]], bool] | None:
    if focus is None:
        return None
    if callable(focus):
        return focus
    if not isinstance(focus, Mapping):
        raise TypeError(
            f"focus must be a mapping of tags or a predicate, not {type(focus).__name__}"
        )
    if not focus:
        raise ValueError("focus must name at least one tag")
    for key in focus:
        if not isinstance(key, str) or not key.isidentifier() or key == "n_plus_one":
            raise ValueError(f"focus keys must be tag names (identifiers), not {key!r}")
    wanted = dict(focus)

    def matches(tags: Mapping[str, Any]) -> bool:
        return all(key in tags and tags[key] == value for key, value in wanted.items())

    return matches


def _describe(focus: object) -> str | dict[str, Any] | None:
    if focus is None or isinstance(focus, Mapping):
        return None if focus is None else {str(k): repr(v) for k, v in focus.items()}
    return getattr(focus, "__qualname__", repr(focus))


def _fingerprint_dialect(engine: Any) -> str | None:
    # An engine is instrumented only once querymeter.sqlalchemy is loaded.
    return sys.modules["querymeter.sqlalchemy._engine"].fingerprint_dialect(engine.dialect)  # type: ignore[no-any-return]


def _listen_checkouts(engines: list[Any], ids: set[int]) -> list[tuple[Any, Any]]:
    """Collect the server ids of the connections ``engines`` check out, into ``ids``."""
    sqlalchemy_event = sys.modules.get("sqlalchemy.event")
    if sqlalchemy_event is None:
        return []

    def checked_out(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        found = backend_id(dbapi_connection)
        if found is not None:
            ids.add(found)

    listeners = []
    for engine in engines:
        sqlalchemy_event.listen(engine, "checkout", checked_out)
        listeners.append((engine, checked_out))
    return listeners


def _unlisten(listeners: list[tuple[Any, Any]]) -> None:
    sqlalchemy_event = sys.modules.get("sqlalchemy.event")
    for engine, listener in listeners:
        try:
            if sqlalchemy_event is not None:
                sqlalchemy_event.remove(engine, "checkout", listener)
        except Exception as exc:  # noqa: BLE001 - ours: reported
            _faults.report("profile: could not remove a checkout listener", exc)


def _raw_connector(engine: Any) -> Callable[[], Any]:
    """A DB-API connection to the engine's server, outside its pool and counted by no meter."""

    def connect() -> Any:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        connection = engine.dialect.loaded_dbapi.connect(*cargs, **cparams)
        connections = sys.modules.get("querymeter.dbapi._connections")
        if connections is not None:
            # An instrumented driver counts what it connects: not this one.
            connections.forget_connection(connection)
        return connection

    return connect


def _figures(interval: Interval) -> dict[str, Any]:
    return {
        "queries": interval.queries,
        "errors": interval.errors,
        "duration_s": interval.duration,
        "throughput": interval.throughput,
        "concurrency": interval.concurrency,
        "response_time": interval.response_time,
        "utilization": interval.utilization,
        "service_time": interval.service_time,
        "total_ns": interval.total_ns,
        "busy_ns": interval.busy_ns,
    }


def _engines_of(meter: Meter) -> list[Any]:
    """The SQLAlchemy engines instrumented with this meter (their pools' figures)."""
    qs = sys.modules.get("querymeter.sqlalchemy")
    if qs is None:
        return []
    return [e for e in qs.instrumented_engines() if qs.instrumented_meter(e) is meter]


def _pool_snapshots(engines: list[Any]) -> list[Any]:
    qs = sys.modules.get("querymeter.sqlalchemy")
    snapshots = []
    for engine in engines:
        try:
            snapshots.append(qs.pool_snapshot(engine) if qs is not None else None)
        except Exception as exc:  # noqa: BLE001 - an uninstrumented engine: no figure
            _faults.report("profile: could not read a pool", exc)
            snapshots.append(None)
    return snapshots


def _environment(engines: list[Any]) -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    try:
        versions["querymeter"] = importlib.metadata.version("querymeter")
    except importlib.metadata.PackageNotFoundError:
        versions["querymeter"] = "unknown"
    for name in (*_DRIVERS, "sqlalchemy"):
        module = sys.modules.get(name)
        if module is None:
            continue
        version = getattr(module, "__version__", None) or getattr(module, "version", None)
        if name == "sqlite3":
            version = f"SQLite {module.sqlite_version}"
        versions[name] = str(version)
    for engine in engines:
        info = getattr(engine.dialect, "server_version_info", None)
        if info:
            versions[f"server {engine.dialect.name}"] = ".".join(str(part) for part in info)
    return {"versions": versions, "host": socket.gethostname(), "pid": os.getpid()}


def _utc(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9))
