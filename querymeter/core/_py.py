"""The counters in pure Python: the twin of the C core, with identical behaviour.

Everything here mirrors ``_c.c`` in meaning: the same bookkeeping (see
docs/concepts.md), the same clamping of out-of-order readings, the same
handling of a faulty injected clock, the same token rules and messages, and
the same shapes for the hooks to compose (a call, an awaitable, an iterator,
an async iterator, occupancies).  Only the hot path lives here; the API around
it is in ``meter.py``.

One difference is inherent: the C core pairs begin and end with no Python
bytecode in between, so an exception raised asynchronously (a signal
handler's, ``PyThreadState_SetAsyncExc``) can never separate them.  Here the
pairing is Python code, and such an exception arriving at the wrong bytecode
can still leave a query counted in flight.  Production runs on the C core.

Critical sections hold the meter's lock and allocate no object that the
garbage collector tracks, so that no finalizer (a pool's check-in of a lost
connection, say) can run inside one and wait for the lock its thread holds.
"""

from __future__ import annotations

import fcntl
import inspect
import itertools
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar

from .. import _faults
from ._py_statements import (
    Sampling,
    Scope,
    StatementRef,
    Statements,
    _current_scope,
    notify_observer,
    observe,
    scopes_open,
)
from ._py_statements import enter_scope as _enter_scope
from ._py_statements import exit_scope as _exit_scope

__all__ = [
    "MeterCore",
    "Occupancies",
    "Sampling",
    "Scope",
    "Statements",
    "Token",
    "Tracker",
    "_current_scope",
    "_enabled",
    "_enter_scope",
    "_exit_scope",
    "_set_enabled",
]

# The kill switch: while off, no query begins (every shape calls straight
# through and no counter moves); a query begun before keeps its end.
_switch = [os.environ.get("QUERYMETER_DISABLE", "0") != "1"]
# An epoch no meter reaches: a query "begun" while disabled ends as nothing.
_UNCOUNTED = -1


def _set_enabled(flag: object) -> None:
    """_set_enabled(flag) -> None

    The kill switch: while off, no query begins.
    """
    _switch[0] = bool(flag)


def _enabled() -> bool:
    """_enabled() -> bool

    Whether queries are counted.
    """
    return _switch[0]


_F = TypeVar("_F", bound=Callable[..., Any])
_R = TypeVar("_R")
_T = TypeVar("_T", bound=tuple[Any, ...])

_tuple_new = tuple.__new__

# Serials come from one counter for the whole process, never from id(): a dead
# meter's id can be reused, and its stale tokens must not match the new meter.
_serials = itertools.count(1)

# The clock time.monotonic_ns() reads; the C core reads the same one directly.
_monotonic_ns = time.monotonic_ns
_wall_ns = time.time_ns
# A reading that failed: no time passes (it is clamped to the stamp).
_NO_READING = -(2**63)
_U64 = 2**64


def _user_clock_ns(clock: Callable[[], int]) -> int:
    """Read an injected clock; a fault counts as "no time passed" and is reported.

    KeyboardInterrupt, SystemExit and every other exception that is not an
    ``Exception`` are the application's, not faults: they propagate.
    """
    try:
        reading = clock()
    except Exception as exc:  # noqa: BLE001 - whatever the clock raises is its fault
        _faults.report("clock raised", exc)
        return _NO_READING
    if not isinstance(reading, int):
        _faults.report(
            "clock returned a non-int", TypeError("the clock must return int nanoseconds")
        )
        return _NO_READING
    if not -(2**63) <= reading < 2**63:
        _faults.report(
            "clock overflowed", OverflowError("the clock reading does not fit in 64 bits")
        )
        return _NO_READING
    return int(reading)


class Token:
    """A query in flight, returned by begin() and passed to end()."""

    __slots__ = ("_ended", "_epoch", "_serial", "_start_ns")

    _ended: bool
    _epoch: int
    _serial: int
    _start_ns: int

    def __init__(self) -> None:
        raise TypeError("cannot create 'querymeter.core._py.Token' instances")

    def __repr__(self) -> str:
        ended = ", ended" if self._ended else ""
        return f"<querymeter token started at {self._start_ns} ns{ended}>"


def _new_token(serial: int) -> Token:
    token = object.__new__(Token)
    token._serial = serial
    token._epoch = 0
    token._start_ns = 0
    token._ended = False
    return token


def _elapsed_since(now: int, start_ns: int) -> int:
    return now - start_ns if now > start_ns else 0


class MeterCore:
    """MeterCore(clock=None, *, meter_id=0)

    The counters of one meter.
    """

    __slots__ = (
        "__weakref__",
        "_busy_ns",
        "_clock",
        "_concurrency",
        "_epoch",
        "_errors",
        "_in_flight",
        "_initialized",
        "_lock",
        "_meter_id",
        "_observer",
        "_queries",
        "_sampling",
        "_serial",
        "_session_focus",
        "_session_sampling",
        "_session_statements",
        "_shared",
        "_stamp_ns",
        "_start_ns",
        "_started",
        "_statements",
        "_total_ns",
    )

    _busy_ns: int
    _clock: Callable[[], int] | None
    _concurrency: int
    _epoch: int
    _errors: int
    _in_flight: list[int]
    _initialized: bool
    _lock: threading.Lock
    _meter_id: int
    _observer: Callable[..., object] | None
    _queries: int
    _sampling: Sampling | None
    _serial: int
    _session_focus: Any
    _session_sampling: Sampling | None
    _session_statements: Statements | None
    _shared: _SharedCounters | None
    _statements: Statements | None
    _stamp_ns: int
    _start_ns: int
    _started: bool
    _total_ns: int

    def __new__(cls, *args: Any, **kwargs: Any) -> MeterCore:
        # As in C: a meter whose __init__ was skipped still counts.
        self = super().__new__(cls)
        self._lock = threading.Lock()
        self._clock = None
        self._statements = None
        self._sampling = None
        self._observer = None
        self._session_statements = None
        self._session_sampling = None
        self._session_focus = None
        self._initialized = False
        self._serial = next(_serials)
        self._epoch = 0
        self._meter_id = 0
        self._shared = None
        self._start(_monotonic_ns())
        return self

    def __init__(self, clock: Callable[[], int] | None = None, *, meter_id: int = 0) -> None:
        if not isinstance(meter_id, int):
            raise TypeError(f"meter_id must be an int, not {type(meter_id).__name__}")
        if not 0 <= meter_id < _U64:
            raise OverflowError("meter_id must fit in 64 unsigned bits")
        if self._initialized:
            raise RuntimeError("a meter cannot be initialised twice")
        if clock is not None and not callable(clock):
            raise TypeError(
                "clock must be a callable returning int nanoseconds, or None, "
                f"not {type(clock).__name__}"
            )
        self._initialized = True
        self._meter_id = int(meter_id)
        self._clock = clock
        self._start(self._now())

    @property
    def meter_id(self) -> int:
        """Identity of this meter, stamped on its readings; new after fork."""
        return self._meter_id

    def _start(self, now: int) -> None:
        # A failed first reading leaves the meter unstarted: the first good
        # reading starts it, and until then no time passes (uptime 0).
        self._started = now != _NO_READING
        self._start_ns = now if self._started else 0
        self._stamp_ns = self._start_ns
        self._concurrency = 0
        self._queries = 0
        self._errors = 0
        self._busy_ns = 0
        self._total_ns = 0
        # The start times of the queries in flight: they begin in time order,
        # so the first is the oldest's.  A list, not a dict: reading its head
        # and removing from it allocate nothing the garbage collector tracks.
        self._in_flight = []

    def _now(self) -> int:
        clock = self._clock
        if clock is None:
            return _monotonic_ns()
        return _user_clock_ns(clock)

    def _injected_reading(self) -> int | None:
        """The injected clock's reading, taken before the lock; None for the built-in clock.

        The built-in clock is read under the lock, as the C core reads it under
        the GIL: a reading taken outside could reach the counters after a
        snapshot that reported a later instant.  An injected clock runs Python
        code, so it cannot be read under the lock (it could deadlock); both
        cores read it outside, and the counters clamp it to the stamp.
        """
        clock = self._clock
        if clock is None:
            return None
        return _user_clock_ns(clock)

    # The critical sections; callers hold the lock.

    def _advance(self, now: int) -> int:
        """Bring busy and total up to ``now`` and commit it as the stamp; returns ``now`` used."""
        if not self._started:
            if now == _NO_READING:
                return self._stamp_ns
            self._started = True
            self._start_ns = self._stamp_ns = now
            return now
        # Readings from different threads can arrive out of order, and an
        # injected clock can run back: time never runs back for the counters.
        if now < self._stamp_ns:
            now = self._stamp_ns
        if self._concurrency > 0:
            elapsed = now - self._stamp_ns
            self._busy_ns += elapsed
            self._total_ns += elapsed * self._concurrency
        self._stamp_ns = now
        return now

    def _begin_locked(self, now: int) -> int:
        shared = self._shared
        in_flight = self._in_flight
        if shared is not None:
            now = shared.begin(now, not in_flight)
        else:
            now = self._advance(now)
            self._concurrency += 1
        in_flight.append(now)
        return now

    def _end_locked(self, now: int, start_ns: int, error: bool) -> int:
        in_flight = self._in_flight
        if start_ns in in_flight:
            in_flight.remove(start_ns)
        shared = self._shared
        if shared is not None:
            return shared.end(now, start_ns, error, in_flight[0] if in_flight else None)
        now = self._advance(now)
        # Never below zero, whatever a caller did (as in C).
        if self._concurrency > 0:
            self._concurrency -= 1
        self._queries += 1
        if error:
            self._errors += 1
        return _elapsed_since(now, start_ns)

    # One query, begun and ended: the pairs every shape below is made of.

    def _enter(self) -> tuple[int, int]:
        """Begin a query; (start, epoch).  A clock that raises KeyboardInterrupt begins nothing.
        While the kill switch is off, nothing begins: the epoch is one no meter has."""
        if not _switch[0]:
            return 0, _UNCOUNTED
        reading = self._injected_reading()
        with self._lock:
            start = self._begin_locked(_monotonic_ns() if reading is None else reading)
            epoch = self._epoch
        return start, epoch

    def _exit(
        self,
        start_ns: int,
        epoch: int,
        error: bool,
        statement: StatementRef | None = None,
        error_type: type[BaseException] | None = None,
    ) -> int:
        """End a query begun by ``_enter``; its elapsed ns.  Then observe it
        (statement table, sampling, the observer) if the meter observes anything.

        If the clock raises KeyboardInterrupt here, the query still ends (at
        the stamp) before the exception propagates: nothing stays in flight.
        """
        if epoch == _UNCOUNTED:
            return 0
        try:
            reading = self._injected_reading()
        except BaseException:
            with self._lock:
                counted = epoch == self._epoch
                elapsed = self._end_locked(_NO_READING, start_ns, error) if counted else 0
            if counted:
                self._observed(statement, elapsed, error, error_type)
            raise
        with self._lock:
            now = _monotonic_ns() if reading is None else reading
            if epoch != self._epoch:
                return _elapsed_since(now, start_ns)
            elapsed = self._end_locked(now, start_ns, error)
        if self._observes():
            self._observed(statement, elapsed, error, error_type)
        return elapsed

    def _observes(self) -> bool:
        return (
            self._statements is not None
            or self._sampling is not None
            or self._observer is not None
            or self._session_statements is not None
            or self._session_sampling is not None
            or scopes_open()
        )

    def _observed(
        self,
        statement: StatementRef | None,
        elapsed: int,
        error: bool,
        error_type: type[BaseException] | None,
    ) -> None:
        if not self._observes():
            return
        if error and error_type is None:
            error_type = sys.exc_info()[0]
        try:
            observe(
                self._statements,
                self._sampling,
                self._session_statements,
                self._session_sampling,
                self._session_focus,
                statement,
                elapsed,
                error,
                error_type,
            )
        finally:
            # Read again: the observing above may have run code that replaced it.
            observer = self._observer
            if observer is not None:
                notify_observer(observer, statement, elapsed, error, error_type)

    def begin(self) -> Token:
        """begin() -> token

        Start a query; pass the token to end().
        """
        # Made first: the critical section allocates nothing.
        token = _new_token(self._serial)
        token._start_ns, token._epoch = self._enter()
        return token

    def end(self, token: Token, error: bool = False) -> int:
        """end(token, error=False) -> int

        End the query that begin() returned `token` for; return its elapsed ns.
        """
        if type(token) is not Token:
            raise TypeError(
                f"end() expects a token returned by begin(), not {type(token).__name__}"
            )
        failed = bool(error)
        if token._serial != self._serial:
            raise ValueError("end() got a token that belongs to another meter")
        with self._lock:
            # Marked under the lock, before the clock runs: as in C, a second
            # end() of the same token raises and changes nothing.
            ended = token._ended
            token._ended = True
        if ended:
            raise ValueError("end() got a token that has already ended")
        return self._exit(token._start_ns, token._epoch, failed)

    def track(self, sql: str | None = None) -> Tracker:
        """track(sql=None) -> context manager counting its block as one query."""
        if sql is not None and not isinstance(sql, str):
            raise TypeError(f"sql must be a str or None, not {type(sql).__name__}")
        return _new_tracker(self, sql, None)

    def _track_statement(self, sql: str | None, dialect: str | None) -> Tracker:
        """_track_statement(sql, dialect) -> track(sql) with the dialect of its text."""
        _check_dialect(dialect)
        tracker = self.track(sql)
        tracker._dialect = dialect
        return tracker

    def _timed(self, func: _F) -> _F:
        """_timed(func) -> callable counting each call of func as one query."""
        if not callable(func):
            raise TypeError(f"cannot track {type(func).__name__}: it is not callable")
        # The bound methods, not the lock: a forked child gets a new lock,
        # which the wrapper must use from then on.
        enter, exit_ = self._enter, self._exit

        def timed(*args: Any, **kwargs: Any) -> Any:
            start, epoch = enter()
            try:
                result = func(*args, **kwargs)
            except BaseException:
                exit_(start, epoch, True)
                raise
            exit_(start, epoch, False)
            return result

        return timed  # type: ignore[return-value]

    def _timed_statement(self, func: _F, dialect: str | None, layout: int = 0) -> _F:
        """_timed_statement(func, dialect, layout=0) -> callable

        _timed for a method whose calls hold a statement where layout says
        (0: cursor, sql, params): each call is also observed under it.
        """
        _check_dialect(dialect)
        _check_layout(layout)
        if not callable(func):
            raise TypeError(f"cannot track {type(func).__name__}: it is not callable")
        enter, exit_ = self._enter, self._exit
        meter = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            start, epoch = enter()
            try:
                result = func(*args, **kwargs)
            except BaseException:
                exit_(start, epoch, True, _statement_of_call(meter, dialect, layout, args, kwargs))
                raise
            exit_(start, epoch, False, _statement_of_call(meter, dialect, layout, args, kwargs))
            return result

        return timed  # type: ignore[return-value]

    def _call_statement(
        self,
        dialect: str | None,
        layout: int,
        func: Callable[..., _R],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> _R:
        """_call_statement(dialect, layout, func, /, *args, **kwargs) -> result

        Call func(*args, **kwargs), counted as one query and observed under the
        statement where layout says (0: cursor, sql, params).
        """
        _check_dialect(dialect)
        _check_layout(layout)
        start, epoch = self._enter()
        try:
            result = func(*args, **kwargs)
        except BaseException:
            self._exit(start, epoch, True, _statement_of_call(self, dialect, layout, args, kwargs))
            raise
        self._exit(start, epoch, False, _statement_of_call(self, dialect, layout, args, kwargs))
        return result

    def _observe(
        self,
        statements: Statements | None,
        sampling: Sampling | None,
        observer: Callable[..., object] | None,
    ) -> None:
        """_observe(statements, sampling, observer) -> None

        What the meter observes of each query it counts from now on (None: nothing);
        observer(sql, dialect, elapsed_ns, error, error_type) is called after each.
        """
        if statements is not None and type(statements) is not Statements:
            raise TypeError("statements must be a Statements or None")
        if sampling is not None and type(sampling) is not Sampling:
            raise TypeError("sampling must be a Sampling or None")
        if observer is not None and not callable(observer):
            raise TypeError("observer must be callable or None")
        self._statements = statements
        self._sampling = sampling
        self._observer = observer

    def _observe_session(
        self, statements: Statements | None, sampling: Sampling | None, focus: Any
    ) -> None:
        """_observe_session(statements, sampling, focus) -> None

        A profiling session's own table and sampling, for the queries of scopes
        whose focus holds focus (None: every query).
        """
        if statements is not None and type(statements) is not Statements:
            raise TypeError("statements must be a Statements or None")
        if sampling is not None and type(sampling) is not Sampling:
            raise TypeError("sampling must be a Sampling or None")
        self._session_statements = statements
        self._session_sampling = sampling
        self._session_focus = focus

    def _call(self, func: Callable[..., _R], /, *args: Any, **kwargs: Any) -> _R:
        """_call(func, /, *args, **kwargs) -> result

        Call func(*args, **kwargs), counted as one query.
        """
        start, epoch = self._enter()
        try:
            result = func(*args, **kwargs)
        except BaseException:
            self._exit(start, epoch, True)
            raise
        self._exit(start, epoch, False)
        return result

    def _awaiting(
        self, awaitable: Awaitable[_R], statement: tuple[Any, ...] | None = None, /
    ) -> Awaitable[_R]:
        """_awaiting(awaitable, statement=None, /) -> awaitable counted as one query
        from its first step to its end."""
        return _Awaiting(self, awaitable, _shape_statement("_awaiting", statement))

    def _iterating(
        self, iterator: Iterable[_R], statement: tuple[Any, ...] | None = None, /
    ) -> Iterator[_R]:
        """_iterating(iterator, statement=None, /) -> iterator counted as one query
        from the first item to its end."""
        ref = _shape_statement("_iterating", statement)
        return _Iterating(self, iter(iterator), ref)

    def _async_iterating(
        self, iterator: AsyncIterator[_R], statement: tuple[Any, ...] | None = None, /
    ) -> AsyncIterator[_R]:
        """_async_iterating(iterator, statement=None, /) -> async iterator counted as
        one query, first item to end."""
        ref = _shape_statement("_async_iterating", statement)
        if not hasattr(type(iterator), "__anext__"):
            raise TypeError(f"'{type(iterator).__name__}' object is not an async iterator")
        return _AsyncIterating(self, iterator, ref)

    def _occupancies(self, count: int) -> Occupancies:
        """_occupancies(count) -> Occupancies: `count` occupancy counters on this meter's clock."""
        if not isinstance(count, int) or not 1 <= count <= 64:
            raise ValueError("count must be an int from 1 to 64")
        now = self._now()
        occupancies = object.__new__(Occupancies)
        occupancies._meter = self
        occupancies._count = count
        occupancies._restart(now, self._epoch)
        return occupancies

    def _read(self, cls: type[_T]) -> _T:
        """_read(cls) -> cls((uptime_ns, queries, errors, concurrency, total_ns, busy_ns,
        wall_ns, meter_id))"""
        if not (isinstance(cls, type) and issubclass(cls, tuple)):
            raise TypeError("_read() needs a tuple subclass")
        reading = self._injected_reading()
        shared = self._shared
        if shared is not None:
            with self._lock:
                service = shared.read_service()
            return _tuple_new(cls, (*service, _wall_ns(), self._meter_id))
        with self._lock:
            # Catch up to `now` exactly as begin would, and commit it: a reading
            # applied later can then never hand back time reported here.
            now = self._advance(_monotonic_ns() if reading is None else reading)
            uptime = now - self._start_ns
            queries = self._queries
            errors = self._errors
            concurrency = self._concurrency
            total = self._total_ns
            busy = self._busy_ns
            wall = _wall_ns()
            meter_id = self._meter_id
        return _tuple_new(cls, (uptime, queries, errors, concurrency, total, busy, wall, meter_id))

    def _reset(self, meter_id: int) -> None:
        """_reset(meter_id) -> None

        Start again from zero under a new identity; tokens from before go inert.
        """
        if not isinstance(meter_id, int):
            raise TypeError("meter_id must be an int")
        if not 0 <= meter_id < _U64:
            raise OverflowError("meter_id must fit in 64 unsigned bits")
        # After fork() the parent's lock may be held by a thread that does not
        # exist in the child: replace it rather than wait on it.
        self._lock = threading.Lock()
        reading = self._injected_reading()
        with self._lock:
            self._detach()
            self._start(_monotonic_ns() if reading is None else reading)
            self._epoch += 1
            self._meter_id = int(meter_id)

    def _detach(self) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.release()

    def oldest_in_flight_ns(self) -> int | None:
        """oldest_in_flight_ns() -> int | None

        Age in ns of the oldest query still in flight (of every process, for a
        shared meter); None when none is.
        """
        reading = self._injected_reading()
        with self._lock:
            now = _monotonic_ns() if reading is None else reading
            shared = self._shared
            if shared is not None:
                oldest = shared.oldest()
            else:
                oldest = self._in_flight[0] if self._in_flight else None
            if now == _NO_READING:
                now = self._stamp_ns
        return None if oldest is None else _elapsed_since(now, oldest)

    def _share(self, mapping: Any, fd: int, slot: int, meter_id: int) -> None:
        """_share(mapping, fd, slot, meter_id) -> None

        Count into a shared file's service counters and slot from now on.
        """
        if self._clock is not None:
            raise ValueError("a shared meter reads the built-in clock only")
        shared = _SharedCounters(mapping, fd, slot)
        with self._lock:
            self._detach()
            self._start(_monotonic_ns())
            self._shared = shared
            self._epoch += 1
            self._meter_id = int(meter_id)


def _check_dialect(dialect: object) -> None:
    if dialect is not None and type(dialect) is not str:
        raise TypeError(f"dialect must be a str or None, not {type(dialect).__name__}")


def _check_layout(layout: object) -> None:
    if not isinstance(layout, int) or not 0 <= layout <= 15:
        raise ValueError("layout must be an int from 0 to 15")


# Where a call's statement is: the cursor at args[layout & 3], the text after
# it, then the parameters unless layout & 4; rowcount read unless layout & 8
# (see _c.c).
_LAYOUT_CURSOR = 3
_LAYOUT_NO_PARAMS = 4
_LAYOUT_NO_ROWS = 8


def _shape_statement(name: str, statement: object) -> StatementRef | None:
    """A shape's statement, (dialect, sql, params[, cursor]), as observing takes it."""
    if statement is None:
        return None
    if type(statement) is not tuple or not 3 <= len(statement) <= 4:
        raise TypeError(
            f"{name}(): statement must be a tuple (dialect, sql, params[, cursor]) or None"
        )
    _check_dialect(statement[0])
    cursor = statement[3] if len(statement) == 4 else None
    return (statement[0], statement[1], statement[2], cursor)


_SQL_NAMES = ("sql", "query", "operation", "statement", "sql_script", "procname")
_PARAMS_NAMES = (
    "parameters",
    "params",
    "args",
    "vars",
    "seq_of_parameters",
    "params_seq",
    "vars_list",
)


def _statement_of_call(
    meter: MeterCore,
    dialect: str | None,
    layout: int,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> StatementRef | None:
    """The statement of a call laid out as ``layout`` says, when the meter observes."""
    if not meter._observes():
        return None
    at = layout & _LAYOUT_CURSOR
    rows_from = args[at] if len(args) > at and not layout & _LAYOUT_NO_ROWS else None
    sql = args[at + 1] if len(args) > at + 1 else None
    params = args[at + 2] if len(args) > at + 2 and not layout & _LAYOUT_NO_PARAMS else None
    for name, value in kwargs.items():
        if sql is None and name in _SQL_NAMES:
            sql = value
        elif params is None and name in _PARAMS_NAMES:
            params = value
    return (dialect, sql, params, rows_from)


class Tracker:
    """Counts a `with` block as one query; an exception counts as an error."""

    __slots__ = ("_dialect", "_elapsed_ns", "_entered", "_epoch", "_meter", "_sql", "_start_ns")

    _elapsed_ns: int
    _entered: bool
    _epoch: int
    _meter: MeterCore
    _sql: str | None
    _dialect: str | None
    _start_ns: int

    def __init__(self) -> None:
        raise TypeError("cannot create 'querymeter.core._py.Tracker' instances")

    @property
    def elapsed_ns(self) -> int | None:
        """Elapsed ns of the block once it has ended, else None."""
        return None if self._elapsed_ns < 0 else self._elapsed_ns

    def __enter__(self) -> Tracker:
        meter = self._meter
        with meter._lock:
            entered = self._entered
            self._entered = True
        if entered:
            raise RuntimeError(
                "this track() block is already running; use a new track() for each block"
            )
        self._elapsed_ns = -1
        try:
            self._start_ns, self._epoch = meter._enter()
        except BaseException:
            self._entered = False
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        meter = self._meter
        with meter._lock:
            entered = self._entered
            self._entered = False
        if not entered:
            raise RuntimeError("__exit__() called on a track() block that is not running")
        statement = None if self._sql is None else (self._dialect, self._sql, None, None)
        self._elapsed_ns = meter._exit(
            self._start_ns, self._epoch, exc_type is not None, statement, exc_type
        )
        # Never suppress the block's exception.
        return False


def _new_tracker(meter: MeterCore, sql: str | None, dialect: str | None) -> Tracker:
    tracker = object.__new__(Tracker)
    tracker._meter = meter
    tracker._sql = sql
    tracker._dialect = dialect
    tracker._start_ns = 0
    tracker._epoch = 0
    tracker._elapsed_ns = -1
    tracker._entered = False
    return tracker


# ------------------------------------------------------- the hooks' shapes

_NOT_STARTED, _RUNNING, _DONE = 0, 1, 2


def _await_iterator(awaitable: Any) -> Any:
    """What ``await awaitable`` iterates: its ``__await__()``."""
    if isinstance(awaitable, types.GeneratorType) and (
        awaitable.gi_code.co_flags & inspect.CO_ITERABLE_COROUTINE
    ):
        return awaitable
    get = getattr(type(awaitable), "__await__", None)
    if get is None:
        raise TypeError(f"object {type(awaitable).__name__} can't be used in 'await' expression")
    return get(awaitable)


def _throw(
    iterator: Any, typ: Any, value: Any = None, traceback: TracebackType | None = None
) -> Any:
    """Throw an exception into an iterator, or raise it where the iterator takes none."""
    throw = getattr(iterator, "throw", None)
    if throw is not None:
        if value is None and traceback is None:
            return throw(typ)
        return throw(typ, value, traceback)
    if isinstance(typ, BaseException):
        exc = typ
    elif isinstance(value, BaseException):
        exc = value
    else:
        exc = typ() if value is None else typ(value)
    raise exc.with_traceback(traceback) if traceback is not None else exc


class _Awaiting:
    """An awaitable counted as one query, from its first step until it completes.

    A coroutine in all but name (``send``, ``throw``, ``close``, ``__await__``),
    so that asyncio takes it for one.  An exception, a cancellation thrown in,
    ``close()`` or being collected mid-way count as an error.
    """

    __slots__ = (
        "_awaitable",
        "_epoch",
        "_iterator",
        "_meter",
        "_start_ns",
        "_state",
        "_statement",
    )

    def __init__(
        self, meter: MeterCore, awaitable: Any, statement: StatementRef | None = None
    ) -> None:
        self._meter = meter
        self._awaitable = awaitable
        self._statement = statement
        self._iterator: Any = None
        self._state = _NOT_STARTED
        self._start_ns = 0
        self._epoch = 0

    def __await__(self) -> Generator[Any, Any, Any]:
        return self  # type: ignore[return-value]

    def __next__(self) -> Any:
        return self.send(None)

    def _start(self) -> Any:
        if self._state == _DONE:
            raise RuntimeError("cannot reuse an awaitable that querymeter has counted")
        if self._state == _NOT_STARTED:
            iterator = _await_iterator(self._awaitable)
            self._iterator = iterator
            self._start_ns, self._epoch = self._meter._enter()
            self._state = _RUNNING
        return self._iterator

    def _finish(self, error: bool) -> None:
        if self._state == _RUNNING:
            self._state = _DONE
            self._meter._exit(self._start_ns, self._epoch, error, self._statement)
        self._state = _DONE

    def _ended(self, exc: BaseException) -> None:
        """A step raised ``exc``: StopIteration is the return, anything else an error."""
        self._finish(not isinstance(exc, StopIteration))

    def send(self, value: Any) -> Any:
        iterator = self._start()
        try:
            if value is None:
                return next(iterator)
            return iterator.send(value)
        except BaseException as exc:
            self._ended(exc)
            raise

    def throw(self, typ: Any, value: Any = None, traceback: TracebackType | None = None) -> Any:
        if self._state == _DONE:
            return _throw(None, typ, value, traceback)
        iterator = self._start()
        try:
            return _throw(iterator, typ, value, traceback)
        except BaseException as exc:
            self._ended(exc)
            raise

    def close(self) -> None:
        state = self._state
        if state == _DONE:
            return
        target = self._iterator if state == _RUNNING else self._awaitable
        try:
            close = getattr(target, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(True)

    def __del__(self) -> None:
        if self._state == _RUNNING:
            self._finish(True)


class _Iterating:
    """An iterator counted as one query, from the first item asked for until its end.

    Exhausted: ended; raising: ended as an error; closed early or collected
    mid-way: ended (stopping early is not an error).
    """

    __slots__ = ("_epoch", "_iterator", "_meter", "_start_ns", "_state", "_statement")

    def __init__(
        self, meter: MeterCore, iterator: Iterator[Any], statement: StatementRef | None = None
    ) -> None:
        self._meter = meter
        self._iterator = iterator
        self._statement = statement
        self._state = _NOT_STARTED
        self._start_ns = 0
        self._epoch = 0

    def __iter__(self) -> _Iterating:
        return self

    def _finish(self, error: bool) -> None:
        if self._state == _RUNNING:
            self._state = _DONE
            self._meter._exit(self._start_ns, self._epoch, error, self._statement)
        self._state = _DONE

    def __next__(self) -> Any:
        if self._state == _DONE:
            raise StopIteration
        if self._state == _NOT_STARTED:
            self._start_ns, self._epoch = self._meter._enter()
            self._state = _RUNNING
        try:
            return next(self._iterator)
        except StopIteration:
            self._finish(False)
            raise
        except BaseException:
            self._finish(True)
            raise

    def close(self) -> None:
        if self._state == _DONE:
            return
        try:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
        finally:
            self._finish(False)

    def __del__(self) -> None:
        if self._state == _RUNNING:
            self._finish(False)


async def _closed() -> None:
    """What ``aclose()`` returns for an iterator that has nothing to close."""


class _AsyncIterating:
    """The async twin of ``_Iterating``: counted from the first ``__anext__`` awaited."""

    __slots__ = ("_epoch", "_iterator", "_meter", "_start_ns", "_state", "_statement")

    def __init__(
        self, meter: MeterCore, iterator: AsyncIterator[Any], statement: StatementRef | None = None
    ) -> None:
        self._meter = meter
        self._iterator = iterator
        self._statement = statement
        self._state = _NOT_STARTED
        self._start_ns = 0
        self._epoch = 0

    def __aiter__(self) -> _AsyncIterating:
        return self

    def _finish(self, error: bool) -> None:
        if self._state == _RUNNING:
            self._state = _DONE
            self._meter._exit(self._start_ns, self._epoch, error, self._statement)
        self._state = _DONE

    def __anext__(self) -> Awaitable[Any]:
        if self._state == _DONE:
            return _AnextStep(self, None)
        return _AnextStep(self, type(self._iterator).__anext__(self._iterator))

    def aclose(self) -> Awaitable[None]:
        if self._state == _DONE:
            return _closed()
        self._finish(False)
        close = getattr(self._iterator, "aclose", None)
        return close() if close is not None else _closed()

    def __del__(self) -> None:
        if self._state == _RUNNING:
            self._finish(False)


class _AnextStep(_Awaiting):
    """One ``__anext__`` of an ``_AsyncIterating``: its end, or its error, ends the query."""

    __slots__ = ("_owner",)

    def __init__(self, owner: _AsyncIterating, awaitable: Any) -> None:
        super().__init__(owner._meter, awaitable)
        self._owner = owner

    def _start(self) -> Any:
        if self._state == _DONE:
            raise RuntimeError("cannot reuse an awaitable that querymeter has counted")
        if self._state == _NOT_STARTED:
            owner = self._owner
            if self._awaitable is None:
                self._state = _DONE
                raise StopAsyncIteration
            self._iterator = _await_iterator(self._awaitable)
            if owner._state == _NOT_STARTED:
                owner._start_ns, owner._epoch = owner._meter._enter()
                owner._state = _RUNNING
            self._state = _RUNNING
        return self._iterator

    def _finish(self, error: bool) -> None:
        # Closed or collected mid-way: the owner's query ends as an error.
        running = self._state == _RUNNING
        self._state = _DONE
        if running and error:
            self._owner._finish(True)

    def _ended(self, exc: BaseException) -> None:
        # A step that returns an item leaves the query running; the end of
        # the iteration (StopAsyncIteration), or an error, ends it.
        self._state = _DONE
        if not isinstance(exc, StopIteration):
            self._owner._finish(not isinstance(exc, StopAsyncIteration))

    def __del__(self) -> None:
        pass


# ----------------------------------------------------------- occupancies

# The fields of one occupancy, as _read() gives them.
_UNDER_WAY, _ENDED, _FAILURES, _TIMEOUTS, _TOTAL_NS, _STAMP_NS = range(6)


class Occupancies:
    """Occupancy counters on a meter's clock, made by meter._occupancies(count).

    Things that start and end (a wait for a pool connection, a checkout, a
    connection held), each counted as the meter counts queries: under way now,
    ended, failed, timed out, and the sum of their durations in ns, the time so
    far of those under way included.  Restarted from zero with their meter (in
    a forked child).
    """

    __slots__ = ("__weakref__", "_count", "_epoch", "_meter", "_slots", "_start_ns", "_started")

    _count: int
    _epoch: int
    _meter: MeterCore
    _slots: list[list[int]]
    _start_ns: int
    _started: bool

    def __init__(self) -> None:
        raise TypeError("cannot create 'querymeter.core._py.Occupancies' instances")

    def _restart(self, now: int, epoch: int) -> None:
        self._epoch = epoch
        self._started = now != _NO_READING
        self._start_ns = now if self._started else 0
        self._slots = [[0, 0, 0, 0, 0, self._start_ns] for _ in range(self._count)]

    @staticmethod
    def _check_records(records: object) -> None:
        if not isinstance(records, dict):
            raise TypeError("records must be a dict")

    def _slot(self, index: int) -> list[int]:
        if not isinstance(index, int) or not 0 <= index < self._count:
            raise IndexError(f"occupancy index out of range: {index!r}")
        return self._slots[index]

    def _at(self, now: int) -> int:
        """The clock reading to use, clamped and starting the counters; caller holds the lock."""
        meter = self._meter
        if self._epoch != meter._epoch:
            # The meter started again (fork): so do its occupancies.  Slots
            # are replaced in place: no allocation under the lock.
            self._epoch = meter._epoch
            self._started = False
            for slot in self._slots:
                slot[:] = (0, 0, 0, 0, 0, 0)
        if not self._started:
            if now == _NO_READING:
                return self._start_ns
            self._started = True
            self._start_ns = now
            for slot in self._slots:
                slot[_STAMP_NS] = now
        return now

    @staticmethod
    def _advance(slot: list[int], now: int) -> None:
        stamp = slot[_STAMP_NS]
        if now > stamp:
            slot[_TOTAL_NS] += (now - stamp) * slot[_UNDER_WAY]
            slot[_STAMP_NS] = now

    def _change(self, index: int, delta: int, ended: int, failed: bool, timed_out: bool) -> None:
        slot = self._slot(index)
        meter = self._meter
        reading = meter._injected_reading()
        with meter._lock:
            self._advance(slot, self._at(_monotonic_ns() if reading is None else reading))
            if delta > 0 or slot[_UNDER_WAY] > 0:
                slot[_UNDER_WAY] += delta
            slot[_ENDED] += ended
            if failed:
                slot[_FAILURES] += 1
            if timed_out:
                slot[_TIMEOUTS] += 1

    def _timed(self, index: int, func: _F, timeout: type[BaseException] | None = None) -> _F:
        """_timed(index, func, timeout=None) -> callable

        Each call of func is one occupancy of slot `index`: under way during
        the call, then ended; a call that raises is also a failure, and one
        that raises `timeout` (an exception class) also a timeout.
        """
        self._slot(index)
        if not callable(func):
            raise TypeError(f"cannot time {type(func).__name__}: it is not callable")
        if timeout is not None and not (
            isinstance(timeout, type) and issubclass(timeout, BaseException)
        ):
            raise TypeError("timeout must be an exception class or None")
        change = self._change

        def timed(*args: Any, **kwargs: Any) -> Any:
            epoch = self._meter._epoch
            change(index, 1, 0, False, False)
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                if epoch == self._meter._epoch:
                    timed_out = timeout is not None and isinstance(exc, timeout)
                    change(index, -1, 1, True, timed_out)
                raise
            if epoch == self._meter._epoch:
                change(index, -1, 1, False, False)
            return result

        return timed  # type: ignore[return-value]

    def _hold(self, index: int, records: dict[int, Any], key: int, record: object) -> bool:
        """_hold(index, records, key, record) -> bool

        `record` starts being held (under way in slot `index`), keyed by `key`
        in `records` with a weak reference; False if it was held already.  A
        dead record found under the key stops being held without ending.
        """
        self._slot(index)
        self._check_records(records)
        ref = weakref.ref(record)
        known = records.get(key)
        if known is not None and known() is record:
            return False
        records[key] = ref
        if known is not None:
            self._change(index, -1, 0, False, False)
        self._change(index, 1, 0, False, False)
        return True

    def _release(self, index: int, records: dict[int, Any], key: int, record: object) -> bool:
        """_release(index, records, key, record) -> bool

        `record` stops being held and counts as ended; False if it was not held.
        """
        self._slot(index)
        self._check_records(records)
        known = records.get(key)
        if known is None or known() is not record:
            return False
        del records[key]
        self._change(index, -1, 1, False, False)
        return True

    def _drop_lost(self, index: int, records: dict[int, Any]) -> int:
        """_drop_lost(index, records) -> int

        Records collected while held stop being held, without ending; how many.
        """
        self._slot(index)
        self._check_records(records)
        lost = [key for key, ref in list(records.items()) if ref() is None]
        for key in lost:
            if records.pop(key, None) is not None:
                self._change(index, -1, 0, False, False)
        return len(lost)

    def _bump(self, index: int) -> None:
        """_bump(index) -> None

        Count one event in slot `index` (ended, never under way).
        """
        self._change(index, 0, 1, False, False)

    def _read(self) -> tuple[int, int, tuple[tuple[int, int, int, int, int], ...]]:
        """_read() -> (uptime_ns, wall_ns, ((under_way, ended, failures, timeouts, total_ns), ...))

        Every slot at one instant, the time so far of what is under way included.
        """
        meter = self._meter
        width = _STAMP_NS + 1
        # Allocated before the lock, filled under it: no allocation inside.
        copy = [0] * (self._count * width)
        reading = meter._injected_reading()
        with meter._lock:
            now = self._at(_monotonic_ns() if reading is None else reading)
            if now < self._start_ns:
                now = self._start_ns
            for slot in self._slots:
                self._advance(slot, now)
            uptime = now - self._start_ns
            wall = _wall_ns()
            offset = 0
            for slot in self._slots:
                copy[offset : offset + width] = slot
                offset += width
        rows = tuple(
            (copy[i], copy[i + 1], copy[i + 2], copy[i + 3], copy[i + 4])
            for i in range(0, len(copy), width)
        )
        return uptime, wall, rows


# ------------------------------------------------------ the shared file
#
# The layout of querymeter/shared/_meter.py's file, in 64-bit words (see the
# structs in _c.c): the header's fields, the service's counters at word 16,
# each slot's own counters at its word 8.  A file of the pure-Python core
# (lock protocol 2) is guarded by an fcntl record lock on the lock word,
# taken under a process-wide thread lock (a record lock does not exclude the
# threads of its own process); the kernel drops it when its process dies.

_SHM_HEADER_SIZE = 4096
_SHM_SLOT_SIZE = 256
_SHM_PROTOCOL_FCNTL = 2
_SHM_LOCK_OFFSET = 64
_W_FILE_SIZE = 3
_W_PROTOCOL = 4  # lock_protocol (low half) and ready (high half)
_W_SLOTS = 2  # slot_count is the low half of word 2
_W_STEALS, _W_REAPED_SLOTS, _W_REAPED_QUERIES, _W_CLAIMS = 9, 10, 11, 12
_W_SERVICE = 16
# Within a block of counters (qm_counters):
_C_START, _C_STAMP, _C_STARTED, _C_CONCURRENCY = 0, 1, 2, 3
_C_QUERIES, _C_ERRORS, _C_BUSY, _C_TOTAL_LO, _C_TOTAL_HI = 4, 5, 6, 8, 9
# Within a slot:
_S_STATE_PID, _S_TICKS, _S_GENERATION, _S_OPENED, _S_OLDEST, _S_HAS_OLDEST = 0, 1, 2, 3, 4, 5
_S_COUNTERS = 8
_MASK64 = _U64 - 1

_shm_thread_lock = threading.Lock()


def _shm_after_fork_in_child() -> None:
    global _shm_thread_lock
    _shm_thread_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_shm_after_fork_in_child)


class _ShmLocked:
    """The shared file's lock, held for one critical section."""

    __slots__ = ("_fd", "_thread_lock")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._thread_lock = _shm_thread_lock

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, 8, _SHM_LOCK_OFFSET)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 8, _SHM_LOCK_OFFSET)
        finally:
            self._thread_lock.release()


def _shm_views(mapping: Any) -> tuple[memoryview, memoryview, int]:
    """Signed and unsigned 64-bit views of a shared file's mapping, and its slot count."""
    view = memoryview(mapping)
    try:
        if view.readonly or len(view) < _SHM_HEADER_SIZE or bytes(view[:8]) != b"QMSHARED":
            raise ValueError("not a shared meter mapping of the pure-Python core's layout")
        signed = view.cast("q")
        unsigned = view.cast("Q")
    finally:
        view.release()
    slots = unsigned[_W_SLOTS] & 0xFFFFFFFF
    if (
        unsigned[_W_PROTOCOL] & 0xFFFFFFFF != _SHM_PROTOCOL_FCNTL
        or unsigned[_W_FILE_SIZE] != len(unsigned) * 8
        or unsigned[_W_FILE_SIZE] != _SHM_HEADER_SIZE + slots * _SHM_SLOT_SIZE
    ):
        signed.release()
        unsigned.release()
        raise ValueError("not a shared meter mapping of the pure-Python core's layout")
    return signed, unsigned, slots


def _shm_slot_word(index: int) -> int:
    return (_SHM_HEADER_SIZE + index * _SHM_SLOT_SIZE) // 8


def _shm_settle(signed: memoryview, now: int) -> int:
    """The reading to use for the service: never before its stamp."""
    stamp = signed[_W_SERVICE + _C_STAMP]
    return now if now > stamp else stamp


def _shm_advance(signed: memoryview, unsigned: memoryview, base: int, now: int) -> None:
    """Bring one block of counters' busy and total up to ``now``; commit it as the stamp."""
    concurrency = signed[base + _C_CONCURRENCY]
    if concurrency > 0:
        elapsed = now - signed[base + _C_STAMP]
        unsigned[base + _C_BUSY] = (unsigned[base + _C_BUSY] + elapsed) & _MASK64
        total = unsigned[base + _C_TOTAL_LO] | unsigned[base + _C_TOTAL_HI] << 64
        total += elapsed * concurrency
        unsigned[base + _C_TOTAL_LO] = total & _MASK64
        unsigned[base + _C_TOTAL_HI] = (total >> 64) & _MASK64
    signed[base + _C_STAMP] = now


def _shm_end_block(
    signed: memoryview, unsigned: memoryview, base: int, now: int, count: int, errors: int
) -> None:
    _shm_advance(signed, unsigned, base, now)
    concurrency = signed[base + _C_CONCURRENCY]
    signed[base + _C_CONCURRENCY] = concurrency - count if concurrency > count else 0
    unsigned[base + _C_QUERIES] += count
    unsigned[base + _C_ERRORS] += errors


def _shm_total(unsigned: memoryview, base: int) -> int:
    return int(unsigned[base + _C_TOTAL_LO] | unsigned[base + _C_TOTAL_HI] << 64)


class _SharedCounters:
    """A meter's counters in a shared file: the service's and its own slot's."""

    __slots__ = ("_fd", "_signed", "_slot", "_slots", "_unsigned")

    def __init__(self, mapping: Any, fd: int, slot: int) -> None:
        signed, unsigned, slots = _shm_views(mapping)
        if (
            not isinstance(slot, int)
            or not 0 <= slot < slots
            or (unsigned[_shm_slot_word(slot)] & 0xFFFFFFFF) != 1
        ):
            signed.release()
            unsigned.release()
            raise ValueError("_share() needs a slot taken by _shared_claim()")
        self._signed = signed
        self._unsigned = unsigned
        self._slots = slots
        self._slot = _shm_slot_word(slot)
        self._fd = fd

    def release(self) -> None:
        self._signed.release()
        self._unsigned.release()

    def begin(self, now: int, first: bool) -> int:
        signed, unsigned, slot = self._signed, self._unsigned, self._slot
        with _ShmLocked(self._fd):
            now = _shm_settle(signed, now)
            _shm_advance(signed, unsigned, _W_SERVICE, now)
            signed[_W_SERVICE + _C_CONCURRENCY] += 1
            _shm_advance(signed, unsigned, slot + _S_COUNTERS, now)
            signed[slot + _S_COUNTERS + _C_CONCURRENCY] += 1
            if first:
                signed[slot + _S_OLDEST] = now
                unsigned[slot + _S_HAS_OLDEST] = 1
        return now

    def end(self, now: int, start_ns: int, error: bool, oldest: int | None) -> int:
        signed, unsigned, slot = self._signed, self._unsigned, self._slot
        failed = 1 if error else 0
        with _ShmLocked(self._fd):
            now = _shm_settle(signed, now)
            _shm_end_block(signed, unsigned, _W_SERVICE, now, 1, failed)
            _shm_end_block(signed, unsigned, slot + _S_COUNTERS, now, 1, failed)
            if oldest is None:
                unsigned[slot + _S_HAS_OLDEST] = 0
            else:
                signed[slot + _S_OLDEST] = oldest
        return _elapsed_since(now, start_ns)

    def read_service(self) -> tuple[int, int, int, int, int, int]:
        """(uptime_ns, queries, errors, concurrency, total_ns, busy_ns) of the service, now."""
        signed, unsigned = self._signed, self._unsigned
        base = _W_SERVICE
        with _ShmLocked(self._fd):
            now = _shm_settle(signed, _monotonic_ns())
            _shm_advance(signed, unsigned, base, now)
            uptime = now - signed[base + _C_START]
            queries = unsigned[base + _C_QUERIES]
            errors = unsigned[base + _C_ERRORS]
            concurrency = signed[base + _C_CONCURRENCY]
            total = _shm_total(unsigned, base)
            busy = unsigned[base + _C_BUSY]
        return uptime, queries, errors, concurrency, total, busy

    def oldest(self) -> int | None:
        """The start of the oldest query in flight in any process, or None."""
        signed, unsigned = self._signed, self._unsigned
        oldest = None
        with _ShmLocked(self._fd):
            for index in range(self._slots):
                word = _shm_slot_word(index)
                if (
                    unsigned[word] & 0xFFFFFFFF == 1
                    and unsigned[word + _S_HAS_OLDEST]
                    and signed[word + _S_COUNTERS + _C_CONCURRENCY] > 0
                ):
                    start = signed[word + _S_OLDEST]
                    if oldest is None or start < oldest:
                        oldest = start
        return oldest


def _shared_claim(mapping: Any, fd: int, pid: int, start_ticks: int, wall_ns: int) -> Any:
    """_shared_claim(mapping, fd, pid, start_ticks, wall_ns) -> (slot, generation) or None"""
    signed, unsigned, slots = _shm_views(mapping)
    try:
        with _ShmLocked(fd):
            now = _shm_settle(signed, _monotonic_ns())
            _shm_advance(signed, unsigned, _W_SERVICE, now)
            for index in range(slots):
                word = _shm_slot_word(index)
                if unsigned[word] & 0xFFFFFFFF == 0:
                    for offset in range(_SHM_SLOT_SIZE // 8):
                        unsigned[word + offset] = 0
                    unsigned[word + _S_TICKS] = start_ticks
                    signed[word + _S_OPENED] = wall_ns
                    generation = unsigned[_W_CLAIMS] + 1
                    unsigned[_W_CLAIMS] = generation
                    unsigned[word + _S_GENERATION] = generation
                    base = word + _S_COUNTERS
                    signed[base + _C_START] = signed[base + _C_STAMP] = now
                    signed[base + _C_STARTED] = 1
                    unsigned[word] = 1 | pid << 32
                    return index, generation
            return None
    finally:
        signed.release()
        unsigned.release()


def _shared_settle(mapping: Any, fd: int, slot: int, generation: int, dead: int) -> int:
    """_shared_settle(mapping, fd, slot, generation, dead) -> int"""
    signed, unsigned, slots = _shm_views(mapping)
    try:
        if not 0 <= slot < slots:
            raise IndexError("slot index out of range")
        word = _shm_slot_word(slot)
        with _ShmLocked(fd):
            if unsigned[word] & 0xFFFFFFFF != 1 or unsigned[word + _S_GENERATION] != generation:
                return -1
            now = _shm_settle(signed, _monotonic_ns())
            _shm_advance(signed, unsigned, _W_SERVICE, now)
            _shm_advance(signed, unsigned, word + _S_COUNTERS, now)
            count = max(signed[word + _S_COUNTERS + _C_CONCURRENCY], 0)
            _shm_end_block(signed, unsigned, _W_SERVICE, now, count, count)
            if dead:
                unsigned[_W_REAPED_SLOTS] += 1
                unsigned[_W_REAPED_QUERIES] += count
            unsigned[word] = 0
            unsigned[word + _S_HAS_OLDEST] = 0
            return int(count)
    finally:
        signed.release()
        unsigned.release()


def _shared_read(mapping: Any, fd: int) -> Any:
    """_shared_read(mapping, fd) -> (service, slots, (lock_steals, reaped_slots, reaped_queries))"""
    signed, unsigned, slots = _shm_views(mapping)
    # Allocated before the lock, filled under it: nothing the garbage
    # collector tracks is made inside (a finalizer could wait for the lock).
    words = _SHM_SLOT_SIZE // 8
    first = _SHM_HEADER_SIZE // 8
    copy = [0] * (slots * words)
    header = [0] * 16
    service_words = [0] * 10
    service_unsigned = [0] * 10
    try:
        with _ShmLocked(fd):
            now = _shm_settle(signed, _monotonic_ns())
            _shm_advance(signed, unsigned, _W_SERVICE, now)
            for word in range(16):
                header[word] = unsigned[word]
            for word in range(10):
                service_words[word] = signed[_W_SERVICE + word]
                service_unsigned[word] = unsigned[_W_SERVICE + word]
            for index in range(slots):
                word = first + index * words
                if unsigned[word] & 0xFFFFFFFF == 1:
                    _shm_advance(signed, unsigned, word + _S_COUNTERS, now)
                    at = index * words
                    for offset in range(words):
                        copy[at + offset] = signed[word + offset]
        wall = _wall_ns()
    finally:
        signed.release()
        unsigned.release()
    meter_id = header[7]
    service = (
        now - service_words[_C_START],
        service_unsigned[_C_QUERIES],
        service_unsigned[_C_ERRORS],
        service_words[_C_CONCURRENCY],
        service_unsigned[_C_TOTAL_LO] | service_unsigned[_C_TOTAL_HI] << 64,
        service_unsigned[_C_BUSY],
        wall,
        meter_id,
    )
    taken = []
    for index in range(slots):
        at = index * words
        state_pid = copy[at] & _MASK64
        if state_pid & 0xFFFFFFFF != 1:
            continue
        base = at + _S_COUNTERS
        generation = copy[at + _S_GENERATION] & _MASK64
        concurrency = copy[base + _C_CONCURRENCY]
        has_oldest = copy[at + _S_HAS_OLDEST] and concurrency > 0
        own = (
            now - copy[base + _C_START],
            copy[base + _C_QUERIES] & _MASK64,
            copy[base + _C_ERRORS] & _MASK64,
            concurrency,
            (copy[base + _C_TOTAL_LO] & _MASK64) | (copy[base + _C_TOTAL_HI] & _MASK64) << 64,
            copy[base + _C_BUSY] & _MASK64,
            wall,
            (meter_id ^ (generation * 0x9E3779B97F4A7C15 & _MASK64)) & (2**63 - 1),
        )
        taken.append(
            (
                index,
                state_pid >> 32,
                copy[at + _S_TICKS] & _MASK64,
                generation,
                copy[at + _S_OPENED],
                _elapsed_since(now, copy[at + _S_OLDEST]) if has_oldest else None,
                own,
            )
        )
    reaped = (header[_W_STEALS], header[_W_REAPED_SLOTS], header[_W_REAPED_QUERIES])
    return service, tuple(taken), reaped
