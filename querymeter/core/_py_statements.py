"""What a meter observes of each query it counted, in pure Python: the twin of ``_statements.c``.

The statement table (one entry per fingerprint, found by exact text in a
per-dialect cache; exact sums, min, max, rows, first and last seen, and a
log-linear histogram with a bounded window), its eviction rule, and the
sampling decision, with the same results as the C core.  The C core's
critical sections run under the GIL; here they hold the table's lock.
"""

from __future__ import annotations

import array
import contextvars
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import _faults

__all__ = [
    "Sampling",
    "Scope",
    "Statements",
    "_current_scope",
    "bucket_of",
    "enter_scope",
    "exit_scope",
    "observe",
    "scopes_open",
]

_wall_ns = time.time_ns

SUB_BITS = 5
SUB = 1 << SUB_BITS  # buckets per power of two
LINEAR = 2 * SUB  # values below this have a bucket each
MAX_BUCKETS = 640
USAGE_DECAY = 0.99
EVICT_PERCENT = 5
_U64 = 2**64
_MASK = _U64 - 1

# (dialect, sql, params, rows_from): what a shape knows of its query's statement.
StatementRef = tuple[Any, Any, Any, Any]


def bucket_of(value: int) -> int:
    """The histogram bucket of a duration in ns (as the C core computes it)."""
    if value < LINEAR:
        return value
    exponent = value.bit_length() - 1
    return LINEAR + (exponent - SUB_BITS - 1) * SUB + ((value >> (exponent - SUB_BITS)) & (SUB - 1))


class _Entry:
    """One statement's figures."""

    __slots__ = (
        "calls",
        "counts",
        "errors",
        "fingerprint",
        "first_seen",
        "last_seen",
        "live",
        "lo",
        "max_ns",
        "min_ns",
        "rows",
        "rows_calls",
        "sample_sql",
        "serial",
        "total_ns",
        "total_sq",
        "usage",
    )

    def __init__(self, fingerprint: str, sample_sql: str, serial: int) -> None:
        self.fingerprint = fingerprint
        self.sample_sql = sample_sql
        self.serial = serial
        self.live = True
        self.usage = 0.0
        self.calls = 0
        self.errors = 0
        self.total_ns = 0
        self.total_sq = 0
        self.min_ns = _MASK
        self.max_ns = 0
        self.rows = 0
        self.rows_calls = 0
        self.first_seen = 0
        self.last_seen = 0
        self.lo = 0
        self.counts: list[int] = []

    def _slot(self, bucket: int) -> int:
        """Where ``bucket`` is counted: the window grows, keeping its highest buckets."""
        counts = self.counts
        if not counts:
            self.lo = bucket
            self.counts = [0]
            return 0
        lo = self.lo
        hi = lo + len(counts) - 1
        if lo <= bucket <= hi:
            return bucket - lo
        new_lo = min(bucket, lo)
        new_hi = max(bucket, hi)
        if new_hi - new_lo + 1 > MAX_BUCKETS:
            new_lo = new_hi - MAX_BUCKETS + 1
        moved = [0] * (new_hi - new_lo + 1)
        for i, count in enumerate(counts):
            b = lo + i
            moved[0 if b < new_lo else b - new_lo] += count
        self.lo = new_lo
        self.counts = moved
        return 0 if bucket < new_lo else bucket - new_lo

    def add(self, elapsed: int, error: bool, rows: int, wall: int, times: int = 1) -> None:
        if self.calls == 0:
            self.first_seen = wall
        self.calls += times
        if error:
            self.errors += times
        self.total_ns += elapsed * times
        self.total_sq += elapsed * elapsed * times
        if elapsed < self.min_ns:
            self.min_ns = elapsed
        if elapsed > self.max_ns:
            self.max_ns = elapsed
        if rows >= 0:
            self.rows += rows * times
            self.rows_calls += times
        if wall > self.last_seen:
            self.last_seen = wall
        self.usage += float(times)
        slot = self._slot(bucket_of(elapsed))  # before self.counts: it may replace the list
        self.counts[slot] += times

    def merge(self, other: _Entry) -> None:
        if other.calls == 0:
            return
        if self.calls == 0 or other.first_seen < self.first_seen:
            self.first_seen = other.first_seen
        if other.last_seen > self.last_seen:
            self.last_seen = other.last_seen
        self.calls += other.calls
        self.errors += other.errors
        self.total_ns += other.total_ns
        self.total_sq += other.total_sq
        self.min_ns = min(self.min_ns, other.min_ns)
        self.max_ns = max(self.max_ns, other.max_ns)
        self.rows += other.rows
        self.rows_calls += other.rows_calls
        for i in range(len(other.counts) - 1, -1, -1):
            count = other.counts[i]
            if count:
                slot = self._slot(other.lo + i)
                self.counts[slot] += count

    def reading(self) -> tuple[Any, ...]:
        return (
            self.fingerprint,
            self.sample_sql,
            self.serial,
            self.calls,
            self.errors,
            self.total_ns,
            self.total_sq,
            self.min_ns if self.calls else 0,
            self.max_ns,
            self.rows,
            self.rows_calls,
            self.first_seen,
            self.last_seen,
            self.lo,
            array.array("Q", self.counts).tobytes(),
        )


class Statements:
    """Statements(miss, max_statements, cache_limit)

    A meter's statement table: figures per fingerprint, found by exact text.
    """

    __slots__ = (
        "_cache_limit",
        "_caches",
        "_dropped",
        "_entries",
        "_evicted",
        "_lock",
        "_max_statements",
        "_miss",
        "_next_serial",
        "_untexted",
    )

    def __init__(
        self,
        miss: Callable[[Any, str | None], tuple[str, str]],
        max_statements: int,
        cache_limit: int,
    ) -> None:
        if not callable(miss):
            raise TypeError("miss must be callable")
        if not isinstance(max_statements, int) or not isinstance(cache_limit, int):
            raise TypeError("max_statements and cache_limit must be int")
        if max_statements < 1 or cache_limit < 1:
            raise ValueError("max_statements and cache_limit must be at least 1")
        self._miss = miss
        self._max_statements = max_statements
        self._cache_limit = cache_limit
        self._entries: dict[str, _Entry] = {}
        self._caches: dict[str | None, dict[Any, _Entry]] = {}
        self._evicted = _Entry("(evicted)", "", 0)
        self._untexted = _Entry("(no statement text)", "", 0)
        self._dropped = 0
        self._next_serial = 1
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """How many statements the table holds."""
        return len(self._entries)

    def _record(
        self,
        sql: Any,
        dialect: str | None,
        elapsed_ns: int,
        error: bool,
        rows: int,
        times: int = 1,
    ) -> None:
        """_record(sql, dialect, elapsed_ns, error, rows, times=1) -> None

        Record a query, times over, as a hook's shape does at its end.
        """
        if dialect is not None and type(dialect) is not str:
            raise TypeError(f"dialect must be a str or None, not {type(dialect).__name__}")
        if not isinstance(times, int) or not 0 <= times < _U64:
            raise OverflowError("times must fit in 64 unsigned bits")
        if not isinstance(elapsed_ns, int) or not 0 <= elapsed_ns < _U64:
            raise OverflowError("elapsed_ns must fit in 64 unsigned bits")
        if not isinstance(rows, int) or not -(2**63) <= rows < 2**63:
            raise OverflowError("rows must fit in 64 bits")
        self._record_at(dialect, sql, elapsed_ns, bool(error), rows, _wall_ns(), times)

    def _record_at(
        self,
        dialect: Any,
        sql: Any,
        elapsed: int,
        error: bool,
        rows: int,
        wall: int,
        times: int = 1,
    ) -> None:
        """One query; a failure of ours is a fault and the query goes to ``untexted``."""
        if sql is None:
            with self._lock:
                self._untexted.add(elapsed, error, rows, wall, times)
            return
        cache = None
        if type(sql) is str or type(sql) is bytes:
            cache = self._caches.get(dialect)
            if cache is None:
                cache = self._caches.setdefault(dialect, {})
            hit = cache.get(sql)
            if hit is not None:
                with self._lock:
                    if hit.live:
                        hit.add(elapsed, error, rows, wall, times)
                        return
                cache.pop(sql, None)
        try:
            found = self._miss(sql, dialect)
            if (
                type(found) is not tuple
                or len(found) != 2
                or type(found[0]) is not str
                or type(found[1]) is not str
            ):
                raise TypeError("the miss function must return (fingerprint, sample_sql)")
        except Exception as exc:  # noqa: BLE001 - ours: a fault, and nothing is lost
            with self._lock:
                self._untexted.add(elapsed, error, rows, wall, times)
            _faults.report("could not record a statement", exc)
            return
        except BaseException:
            with self._lock:
                self._untexted.add(elapsed, error, rows, wall, times)
            raise
        fingerprint, sample_sql = found
        with self._lock:
            entry = self._entries.get(fingerprint)
            if entry is None:
                if len(self._entries) >= self._max_statements:
                    self._evict()
                entry = _Entry(fingerprint, sample_sql, self._next_serial)
                self._next_serial += 1
                self._entries[fingerprint] = entry
            entry.add(elapsed, error, rows, wall, times)
        if cache is not None:
            if len(cache) >= self._cache_limit:
                for key in list(cache)[: self._cache_limit // 4 + 1]:
                    cache.pop(key, None)
            cache[sql] = entry

    def _evict(self) -> None:
        """Decay every usage, drop the least used 5 % into ``evicted``; caller holds the lock."""
        entries = list(self._entries.values())
        for entry in entries:
            entry.usage *= USAGE_DECAY
        entries.sort(key=lambda entry: (entry.usage, entry.serial))
        drop = max(1, self._max_statements * EVICT_PERCENT // 100)
        for entry in entries[:drop]:
            self._evicted.merge(entry)
            entry.live = False
            self._dropped += 1
            del self._entries[entry.fingerprint]

    def _read(self) -> tuple[int, tuple[Any, ...], tuple[Any, ...], tuple[tuple[Any, ...], ...]]:
        """_read() -> (dropped, evicted, untexted, entries)

        Every entry's figures at one instant.
        """
        with self._lock:
            return (
                self._dropped,
                self._evicted.reading(),
                self._untexted.reading(),
                tuple(entry.reading() for entry in self._entries.values()),
            )


class Sampling:
    """Sampling(rate, threshold_ns, capture, seed)

    Which counted queries a meter captures: at random, and every slow one.
    """

    __slots__ = ("_capture", "_rate", "_rng", "_threshold_ns")

    def __init__(
        self, rate: float, threshold_ns: int, capture: Callable[..., Any], seed: int
    ) -> None:
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be from 0 to 1")
        if not callable(capture):
            raise TypeError("capture must be callable")
        self._rate = rate
        self._threshold_ns = -1 if threshold_ns < 0 else int(threshold_ns)
        self._rng = (int(seed) & _MASK) or 0x9E3779B97F4A7C15
        self._capture = capture

    def _random(self) -> int:
        # xorshift64*, as in C: the same seed draws the same sequence.
        x = self._rng
        x ^= x >> 12
        x ^= (x << 25) & _MASK
        x ^= x >> 27
        self._rng = x
        return (x * 0x2545F4914F6CDD1D) & _MASK

    def _chooses(self, elapsed_ns: int) -> bool:
        """_chooses(elapsed_ns) -> bool

        Whether a query that took elapsed_ns is captured.
        """
        if self._threshold_ns >= 0 and elapsed_ns >= self._threshold_ns:
            return True
        if self._rate <= 0.0:
            return False
        if self._rate >= 1.0:
            return True
        return (self._random() >> 11) * (1.0 / 9007199254740992.0) < self._rate


def _rowcount(cursor: Any) -> int:
    """A cursor's rowcount, or -1 where it does not know; an interrupt propagates."""
    try:
        value = cursor.rowcount
    except Exception:  # noqa: BLE001 - no rowcount: not known
        return -1
    if type(value) is int and 0 <= value < 2**63:
        return value
    return -1


class Scope:
    """A scope's figures, made by _enter_scope(focus, tags): the queries counted inside it."""

    __slots__ = ("db_ns", "dialects", "errors", "focus", "parent", "queries", "tags", "texts")

    db_ns: int
    dialects: dict[Any, Any]
    errors: int
    focus: frozenset[Any] | None
    parent: Scope | None
    queries: int
    tags: Any
    texts: dict[Any, int]

    def __init__(self) -> None:
        raise TypeError("cannot create 'querymeter.core._py.Scope' instances")

    def _retag(self, focus: frozenset[Any] | None, tags: Any) -> None:
        """_retag(focus, tags) -> None

        The scope's tags and focus from now on.
        """
        if focus is not None and type(focus) is not frozenset:
            raise TypeError("focus must be a frozenset or None")
        self.focus = focus
        self.tags = tags

    def _tags(self) -> Any:
        """_tags() -> mapping

        The scope's tags, merged with its parents'.
        """
        return self.tags

    def _read(self) -> tuple[int, int, int, dict[Any, int], dict[Any, Any]]:
        """_read() -> (queries, errors, db_ns, texts, dialects)

        The scope's figures so far, and how often each text ran.
        """
        with _scope_lock:
            return self.queries, self.errors, self.db_ns, dict(self.texts), dict(self.dialects)


_scope_var: contextvars.ContextVar[Scope] = contextvars.ContextVar("querymeter_core_py_scope")
_scope_lock = threading.Lock()
# Scopes entered and not exited, in every thread: none, and no query looks.
_scopes_open = [0]


def _renew_scope_lock_in_child() -> None:
    global _scope_lock
    _scope_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_scope_lock_in_child)


def enter_scope(focus: frozenset[Any] | None, tags: Any) -> tuple[Scope, contextvars.Token[Scope]]:
    """_enter_scope(focus, tags) -> (scope, token)

    A new innermost scope.
    """
    if focus is not None and type(focus) is not frozenset:
        raise TypeError("focus must be a frozenset or None")
    scope = object.__new__(Scope)
    scope.parent = _scope_var.get(None)
    scope.focus = focus
    scope.tags = tags
    scope.queries = scope.errors = scope.db_ns = 0
    scope.texts = {}
    scope.dialects = {}
    token = _scope_var.set(scope)
    with _scope_lock:
        _scopes_open[0] += 1
    return scope, token


def exit_scope(token: contextvars.Token[Scope]) -> None:
    """_exit_scope(token) -> None

    Back to the scope current at its enter.
    """
    _scope_var.reset(token)
    with _scope_lock:
        _scopes_open[0] -= 1


def _current_scope() -> Scope | None:
    """_current_scope() -> Scope | None

    The innermost scope of the context.
    """
    return _scope_var.get(None)


def scopes_open() -> bool:
    return _scopes_open[0] > 0


def _scope_record(
    scope: Scope | None, statement: StatementRef | None, elapsed: int, error: bool
) -> None:
    sql = None if statement is None else statement[1]
    texted = type(sql) is str or type(sql) is bytes
    with _scope_lock:
        while scope is not None:
            scope.queries += 1
            scope.errors += 1 if error else 0
            scope.db_ns += elapsed
            if texted:
                count = scope.texts.get(sql)
                scope.texts[sql] = 1 if count is None else count + 1
                if count is None:
                    scope.dialects[sql] = None if statement is None else statement[0]
            scope = scope.parent


def observe(
    statements: Statements | None,
    sampling: Sampling | None,
    session_statements: Statements | None,
    session_sampling: Sampling | None,
    session_focus: Any,
    statement: StatementRef | None,
    elapsed: int,
    error: bool,
    error_type: type[BaseException] | None,
) -> None:
    """Observe a counted query: into its scopes, the meter's table and sampling,
    and a profiling session's (when its focus wants the query).

    Everything is observed even if something is interrupted on the way; then
    the interrupt is raised (inside the caller's ``except`` block, it chains
    to the driver's exception, as in C).
    """
    chosen = sampling is not None and sampling._chooses(elapsed)
    session = session_statements is not None or session_sampling is not None
    if statements is None and not chosen and not session and not scopes_open():
        return
    scope = _scope_var.get(None) if scopes_open() else None
    if scope is not None:
        _scope_record(scope, statement, elapsed, error)
    focused = session and (
        session_focus is None
        or (scope is not None and scope.focus is not None and session_focus in scope.focus)
    )
    session_chosen = focused and session_sampling is not None and session_sampling._chooses(elapsed)
    tables = [t for t in (statements, session_statements if focused else None) if t is not None]
    samplings = [
        x
        for x in (sampling if chosen else None, session_sampling if session_chosen else None)
        if x is not None
    ]
    if not tables and not samplings:
        return
    stop: BaseException | None = None
    rows = -1
    if not error and statement is not None:
        rows_from = statement[3]
        if rows_from is not None:
            try:
                rows = _rowcount(rows_from)
            except BaseException as exc:  # noqa: BLE001 - kept, raised at the end
                stop = exc
    wall = _wall_ns()
    dialect, sql, params = (None, None, None) if statement is None else statement[:3]
    for table in tables:
        try:
            table._record_at(dialect, sql, elapsed, error, rows, wall)
        except BaseException as exc:  # noqa: BLE001 - kept, raised at the end
            stop = stop or exc
    for chosen_sampling in samplings:
        try:
            chosen_sampling._capture(
                sql, dialect, params, wall, elapsed, error_type if error else None, rows
            )
        except Exception as exc:  # noqa: BLE001 - ours: a fault
            _faults.report("could not capture a sample", exc)
        except BaseException as exc:  # noqa: BLE001 - kept, raised at the end
            stop = stop or exc
    if stop is not None:
        raise stop
