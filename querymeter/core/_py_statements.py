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
import fcntl
import heapq
import operator
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable
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

# The shared table (a SharedMeter's): the layout of its file, as _statements.c
# lays it out: header (4096 bytes) | keys[N] | undo area | records[N + 2],
# records[N] being `evicted` and records[N + 1] `untexted`.  All fields are
# native 8-byte words but four pairs of 4-byte ones, so the file is read as
# words here.
SHARED_MAGIC = b"QMSTMTS1"
SHARED_VERSION = 1
SHARED_HEADER = 4096
FINGERPRINT_BYTES = 1024
SAMPLE_BYTES = 1024
LOCK_ATOMIC = 1  # the C core's lock word
LOCK_FCNTL = 2  # this core's: an fcntl lock on the lock word's bytes
# header: magic, version, lock_kind, max_statements, record_size, lock,
# table_id, started_wall_ns, dropped, next_serial, live, undo_kind,
# undo_index, undo_dropped, undo_next_serial, undo_live, undo_slot
HEADER_FORMAT = struct.Struct("=8sIIQQQQqQQQQQQQQQ")
_H_LOCK, _H_DROPPED, _H_NEXT_SERIAL, _H_LIVE = 4, 7, 8, 9  # word indexes
_H_UNDO_KIND, _H_UNDO_INDEX, _H_UNDO_DROPPED, _H_UNDO_NEXT, _H_UNDO_LIVE = 10, 11, 12, 13, 14
_H_UNDO_SLOT = 15
# A record: serial, key, usage (double), calls, errors, total (lo, hi),
# total_sq (lo, hi), min, max, rows, rows_calls, first_seen, last_seen (signed),
# lo, span (int32), fingerprint_len, sample_len (uint32); the texts; the counts.
_R_SERIAL, _R_KEY, _R_USAGE, _R_CALLS, _R_ERRORS = 0, 1, 2, 3, 4
_R_TOTAL, _R_SQ, _R_MIN, _R_MAX, _R_ROWS, _R_ROWS_CALLS = 5, 7, 9, 10, 11, 12
_R_FIRST, _R_LAST, _R_WINDOW, _R_LENGTHS = 13, 14, 15, 16
HEAD_WORDS = 17
_R_TEXT = HEAD_WORDS * 8
_R_COUNTS = (_R_TEXT + FINGERPRINT_BYTES + SAMPLE_BYTES) // 8
RECORD_SIZE = _R_COUNTS * 8 + MAX_BUCKETS * 8
_UNDO_NONE, _UNDO_RECORD, _UNDO_INSERT, _UNDO_EVICT, _UNDO_BUCKET = 0, 1, 2, 3, 4


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def shared_layout(max_statements: int) -> dict[str, int]:
    """Where a shared table's parts are in its file, bytes (as the C core computes them)."""
    n = max_statements
    keys = SHARED_HEADER
    undo = _align(keys + 8 * n, 64)
    undo_usage = undo + RECORD_SIZE
    undo_serial = undo_usage + 8 * n
    undo_key = undo_serial + 8 * n
    records = _align(undo_key + 8 * n, 4096)
    return {
        "keys": keys,
        "undo": undo,
        "undo_usage": undo_usage,
        "undo_serial": undo_serial,
        "undo_key": undo_key,
        "records": records,
        "size": records + (n + 2) * RECORD_SIZE,
    }


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

    def flat_reading(self) -> tuple[Any, ...]:
        """The entry as a row of _read_rows: its histogram as (buffer, start, end)."""
        return (*self.reading(), 0, 8 * len(self.counts))

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
    """Statements(miss, max_statements, cache_limit, region=None, lock_fd=-1)

    A meter's statement table: figures per fingerprint, found by exact text;
    with a region, the table many processes share in it.
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
        "_shared",
        "_untexted",
    )

    def __init__(
        self,
        miss: Callable[[Any, str | None], tuple[Any, ...]],
        max_statements: int,
        cache_limit: int,
        region: Any = None,
        lock_fd: int = -1,
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
        self._caches: dict[str | None, dict[Any, Any]] = {}  # text -> _Entry, or (index, serial)
        self._evicted = _Entry("(evicted)", "", 0)
        self._untexted = _Entry("(no statement text)", "", 0)
        self._dropped = 0
        self._next_serial = 1
        self._lock = threading.Lock()
        self._shared = None if region is None else _Shared(region, lock_fd, max_statements)

    @property
    def size(self) -> int:
        """How many statements the table holds."""
        if self._shared is not None:
            return self._shared.q[_H_LIVE]
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
        if self._shared is not None:
            self._shared_record_at(dialect, sql, elapsed, error, rows, wall, times)
            return
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

    def _shared_record_at(
        self, dialect: Any, sql: Any, elapsed: int, error: bool, rows: int, wall: int, times: int
    ) -> None:
        """One query into the shared table: by the cached record's index and serial, else by key."""
        shared = self._shared
        assert shared is not None
        untexted = shared.n + 1
        if sql is None:
            with self._lock, shared.locked():
                shared.update(untexted, elapsed, error, rows, wall, times)
            return
        cache = None
        if type(sql) is str or type(sql) is bytes:
            cache = self._caches.get(dialect)
            if cache is None:
                cache = self._caches.setdefault(dialect, {})
            hit = cache.get(sql)
            if hit is not None:
                index, serial = hit
                with self._lock, shared.locked():
                    if shared.q[shared.word(index) + _R_SERIAL] == serial:
                        shared.update(index, elapsed, error, rows, wall, times)
                        return
                cache.pop(sql, None)  # evicted, by any process, since it was cached
        try:
            found = self._miss(sql, dialect)
            if (
                type(found) is not tuple
                or len(found) != 5
                or type(found[0]) is not str
                or type(found[1]) is not str
                or type(found[2]) is not int
                or not 0 < found[2] < _U64
                or type(found[3]) is not bytes
                or type(found[4]) is not bytes
                or len(found[3]) > FINGERPRINT_BYTES
                or len(found[4]) > SAMPLE_BYTES
            ):
                raise TypeError(
                    "the shared miss function must return (fingerprint, sample_sql, key, "
                    "fingerprint_bytes, sample_bytes)"
                )
        except Exception as exc:  # noqa: BLE001 - ours: a fault, and nothing is lost
            with self._lock, shared.locked():
                shared.update(untexted, elapsed, error, rows, wall, times)
            _faults.report("could not record a statement", exc)
            return
        except BaseException:
            with self._lock, shared.locked():
                shared.update(untexted, elapsed, error, rows, wall, times)
            raise
        key, fingerprint_bytes, sample_bytes = found[2], found[3], found[4]
        with self._lock, shared.locked():
            index = shared.find_or_insert(
                key, fingerprint_bytes, sample_bytes, self._max_statements
            )
            serial = shared.q[shared.word(index) + _R_SERIAL]
            shared.update(index, elapsed, error, rows, wall, times)
        if cache is not None:
            if len(cache) >= self._cache_limit:
                for stale in list(cache)[: self._cache_limit // 4 + 1]:
                    cache.pop(stale, None)
            cache[sql] = (index, serial)

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
        if self._shared is not None:
            with self._lock:
                return self._shared.read(self._evicted.fingerprint, self._untexted.fingerprint)
        with self._lock:
            return (
                self._dropped,
                self._evicted.reading(),
                self._untexted.reading(),
                tuple(entry.reading() for entry in self._entries.values()),
            )

    def _read_rows(
        self,
    ) -> tuple[int, tuple[Any, ...], tuple[Any, ...], tuple[tuple[Any, ...], ...]]:
        """_read_rows() -> (dropped, evicted, untexted, entries)

        As _read(), each histogram as (buffer, start, end) in buffers rows share.
        """
        if self._shared is not None:
            with self._lock:
                dropped, evicted, untexted, rows = self._shared.read(
                    self._evicted.fingerprint, self._untexted.fingerprint
                )
            flat = [(*row, 0, len(row[14])) for row in (evicted, untexted, *rows)]
            return dropped, flat[0], flat[1], tuple(flat[2:])
        # Each histogram in a buffer of its own: in Python, one big buffer costs
        # more (the copy into it, and fresh pages for it) than it saves.
        with self._lock:
            return (
                self._dropped,
                self._evicted.flat_reading(),
                self._untexted.flat_reading(),
                tuple(entry.flat_reading() for entry in self._entries.values()),
            )

    def _changed(
        self, rows: dict[str, tuple[Any, ...]], earlier: dict[str, tuple[Any, ...]], top: int
    ) -> tuple[list[str], int, int]:
        """_changed(rows, earlier, top) -> (fingerprints, changed, changed_with_rows)

        The top changed rows of a reading by time gained since an earlier one.
        """
        if not isinstance(rows, dict) or not isinstance(earlier, dict):
            raise TypeError("_changed() takes two dicts of a reading's rows")
        if top < 0:
            raise ValueError("top must be at least 0")
        get = earlier.get
        # (-gained, fingerprint): heapq compares them in C, ties in fingerprint order.
        changed: list[tuple[int, str]] = []
        append = changed.append
        with_rows = 0
        for fingerprint, row in rows.items():
            before = get(fingerprint)
            if before is None or before[2] != row[2]:
                if not row[3]:
                    continue
                append((-row[5], fingerprint))
            elif row[3] != before[3]:
                append((before[5] - row[5], fingerprint))
            else:
                continue
            if row[10]:
                with_rows += 1
        top_rows = heapq.nsmallest(top, changed)
        return [fingerprint for _, fingerprint in top_rows], len(changed), with_rows

    def _totals(self, rows: Iterable[tuple[Any, ...]]) -> tuple[int, int, int, int, int, int]:
        """_totals(rows) -> (calls, errors, total_ns, total_sq, rows, rows_calls)

        Those fields summed over a reading's rows.
        """
        listed = list(rows)
        calls, errors, total, total_sq, row_count, rows_calls = (
            sum(map(operator.itemgetter(field), listed)) for field in (3, 4, 5, 6, 9, 10)
        )
        return calls, errors, total, total_sq, row_count, rows_calls


class _Locked:
    """The shared table's lock while held: an fcntl lock on the lock word's bytes."""

    __slots__ = ("_shared",)

    def __init__(self, shared: _Shared) -> None:
        self._shared = shared

    def __enter__(self) -> None:
        shared = self._shared
        # The kernel drops the lock of a process that dies: a dead holder's
        # half-done update is put back by the next holder.
        fcntl.lockf(shared.fd, fcntl.LOCK_EX, 8, _H_LOCK * 8)
        if shared.q[_H_UNDO_KIND] != _UNDO_NONE:
            shared.repair()

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._shared.fd, fcntl.LOCK_UN, 8, _H_LOCK * 8)


class _Shared:
    """A shared table's mapping, read and written as native words (see ``shared_layout``)."""

    __slots__ = ("_locked", "d", "fd", "i32", "layout", "n", "q", "region", "s64")

    def __init__(self, region: Any, lock_fd: int, max_statements: int) -> None:
        view = memoryview(region)
        if view.readonly:
            raise TypeError("region must be a writable buffer")
        self.n = max_statements
        self.layout = shared_layout(max_statements)
        problem = None
        if view.nbytes < self.layout["size"]:
            problem = "the shared statement table is smaller than its layout"
        else:
            header = HEADER_FORMAT.unpack_from(view, 0)
            if header[0] != SHARED_MAGIC or header[1] != SHARED_VERSION or header[4] != RECORD_SIZE:
                problem = "not a shared statement table of this version"
            elif header[3] != max_statements:
                problem = "the shared statement table holds another max_statements"
            elif header[2] != LOCK_FCNTL:
                problem = (
                    "the shared statement table is locked with atomics (made by the C core): "
                    "open it with that core"
                )
        if problem is not None:
            raise ValueError(problem)
        if not isinstance(lock_fd, int) or lock_fd < 0:
            raise ValueError("lock_fd must be the open file of the shared statement table")
        self.region = region
        self.fd = lock_fd
        self.q = view.cast("B").cast("Q")
        self.s64 = view.cast("B").cast("q")
        self.d = view.cast("B").cast("d")
        self.i32 = view.cast("B").cast("i")
        self._locked = _Locked(self)

    def locked(self) -> _Locked:
        return self._locked

    def word(self, index: int) -> int:
        """The first word of record ``index``."""
        return (self.layout["records"] + index * RECORD_SIZE) // 8

    # ---- undo

    def _save(self, index: int) -> None:
        q = self.q
        base = self.word(index)
        undo = self.layout["undo"] // 8
        span = min(max(self.i32[(base + _R_WINDOW) * 2 + 1], 0), MAX_BUCKETS)
        q[undo : undo + HEAD_WORDS] = q[base : base + HEAD_WORDS]
        q[undo + _R_COUNTS : undo + _R_COUNTS + span] = q[
            base + _R_COUNTS : base + _R_COUNTS + span
        ]
        q[_H_UNDO_INDEX] = index

    def _save_header(self) -> None:
        q = self.q
        q[_H_UNDO_DROPPED] = q[_H_DROPPED]
        q[_H_UNDO_NEXT] = q[_H_NEXT_SERIAL]
        q[_H_UNDO_LIVE] = q[_H_LIVE]

    def _restore(self, index: int) -> None:
        q = self.q
        base = self.word(index)
        undo = self.layout["undo"] // 8
        span = min(max(self.i32[(undo + _R_WINDOW) * 2 + 1], 0), MAX_BUCKETS)
        q[base : base + HEAD_WORDS] = q[undo : undo + HEAD_WORDS]
        counts = base + _R_COUNTS
        q[counts : counts + span] = q[undo + _R_COUNTS : undo + _R_COUNTS + span]
        q[counts + span : counts + MAX_BUCKETS] = array.array("Q", bytes(8 * (MAX_BUCKETS - span)))

    def repair(self) -> None:
        """Puts back what a holder that died (or was interrupted) was changing."""
        q = self.q
        kind, index, n = q[_H_UNDO_KIND], q[_H_UNDO_INDEX], self.n
        if kind == _UNDO_BUCKET and index < n + 2 and q[_H_UNDO_SLOT] < MAX_BUCKETS:
            base, undo = self.word(index), self.layout["undo"] // 8
            q[base : base + HEAD_WORDS] = q[undo : undo + HEAD_WORDS]
            q[base + _R_COUNTS + q[_H_UNDO_SLOT]] = q[undo + _R_COUNTS]
        elif kind == _UNDO_RECORD and index < n + 2:
            self._restore(index)
        elif kind == _UNDO_INSERT and index < n:
            base = self.word(index)
            q[base + _R_SERIAL] = 0
            q[base + _R_KEY] = 0
            q[self.layout["keys"] // 8 + index] = 0
        elif kind == _UNDO_EVICT:
            self._restore(n)
            layout = self.layout
            usage, serial, key = (
                layout[name] // 8 for name in ("undo_usage", "undo_serial", "undo_key")
            )
            keys = layout["keys"] // 8
            for i in range(n):
                base = self.word(i)
                self.d[base + _R_USAGE] = self.d[usage + i]
                q[base + _R_SERIAL] = q[serial + i]
                q[base + _R_KEY] = q[key + i]
                q[keys + i] = q[key + i]
        if kind in (_UNDO_INSERT, _UNDO_EVICT):
            q[_H_DROPPED] = q[_H_UNDO_DROPPED]
            q[_H_NEXT_SERIAL] = q[_H_UNDO_NEXT]
            q[_H_LIVE] = q[_H_UNDO_LIVE]
        q[_H_UNDO_KIND] = _UNDO_NONE

    # ---- figures

    def _slot(self, base: int, bucket: int) -> int:
        """Where ``bucket`` is counted in a record's fixed window (as an entry's grows)."""
        i32 = self.i32
        window = (base + _R_WINDOW) * 2
        lo, span = i32[window], i32[window + 1]
        if span == 0:
            i32[window], i32[window + 1] = bucket, 1
            return 0
        hi = lo + span - 1
        if lo <= bucket <= hi:
            return bucket - lo
        new_lo, new_hi = min(bucket, lo), max(bucket, hi)
        if new_hi - new_lo + 1 > MAX_BUCKETS:
            new_lo = new_hi - MAX_BUCKETS + 1
        counts = base + _R_COUNTS
        q = self.q
        moved = [0] * MAX_BUCKETS
        for i in range(span):
            b = lo + i
            moved[0 if b < new_lo else b - new_lo] += q[counts + i]
        q[counts : counts + MAX_BUCKETS] = array.array("Q", moved)
        i32[window], i32[window + 1] = new_lo, new_hi - new_lo + 1
        return 0 if bucket < new_lo else bucket - new_lo

    def _add(self, index: int, elapsed: int, error: bool, rows: int, wall: int, times: int) -> None:
        q, s64 = self.q, self.s64
        base = self.word(index)
        calls = q[base + _R_CALLS]
        if calls == 0:
            s64[base + _R_FIRST] = wall
        q[base + _R_CALLS] = (calls + times) & _MASK
        if error:
            q[base + _R_ERRORS] = (q[base + _R_ERRORS] + times) & _MASK
        self._add128(base + _R_TOTAL, elapsed * times)
        self._add128(base + _R_SQ, elapsed * elapsed * times)
        if elapsed < q[base + _R_MIN]:
            q[base + _R_MIN] = elapsed
        if elapsed > q[base + _R_MAX]:
            q[base + _R_MAX] = elapsed
        if rows >= 0:
            q[base + _R_ROWS] = (q[base + _R_ROWS] + rows * times) & _MASK
            q[base + _R_ROWS_CALLS] = (q[base + _R_ROWS_CALLS] + times) & _MASK
        if wall > s64[base + _R_LAST]:
            s64[base + _R_LAST] = wall
        self.d[base + _R_USAGE] += float(times)
        slot = base + _R_COUNTS + self._slot(base, bucket_of(elapsed))
        q[slot] = (q[slot] + times) & _MASK

    def _add128(self, at: int, value: int) -> None:
        q = self.q
        total = ((q[at + 1] << 64) | q[at]) + value
        q[at] = total & _MASK
        q[at + 1] = (total >> 64) & _MASK

    def _merge(self, into: int, source: int) -> None:
        q, s64 = self.q, self.s64
        to, src = self.word(into), self.word(source)
        calls = q[src + _R_CALLS]
        if calls == 0:
            return
        if q[to + _R_CALLS] == 0 or s64[src + _R_FIRST] < s64[to + _R_FIRST]:
            s64[to + _R_FIRST] = s64[src + _R_FIRST]
        if s64[src + _R_LAST] > s64[to + _R_LAST]:
            s64[to + _R_LAST] = s64[src + _R_LAST]
        q[to + _R_CALLS] = (q[to + _R_CALLS] + calls) & _MASK
        q[to + _R_ERRORS] = (q[to + _R_ERRORS] + q[src + _R_ERRORS]) & _MASK
        self._add128(to + _R_TOTAL, (q[src + _R_TOTAL + 1] << 64) | q[src + _R_TOTAL])
        self._add128(to + _R_SQ, (q[src + _R_SQ + 1] << 64) | q[src + _R_SQ])
        q[to + _R_MIN] = min(q[to + _R_MIN], q[src + _R_MIN])
        q[to + _R_MAX] = max(q[to + _R_MAX], q[src + _R_MAX])
        q[to + _R_ROWS] = (q[to + _R_ROWS] + q[src + _R_ROWS]) & _MASK
        q[to + _R_ROWS_CALLS] = (q[to + _R_ROWS_CALLS] + q[src + _R_ROWS_CALLS]) & _MASK
        window = (src + _R_WINDOW) * 2
        lo, span = self.i32[window], self.i32[window + 1]
        for i in range(span - 1, -1, -1):
            count = q[src + _R_COUNTS + i]
            if count:
                slot = to + _R_COUNTS + self._slot(to, lo + i)
                q[slot] = (q[slot] + count) & _MASK

    def update(
        self, index: int, elapsed: int, error: bool, rows: int, wall: int, times: int
    ) -> None:
        """One query into record ``index``, undoable; the caller holds the lock.

        Within the window (nearly always) the head and the one count it
        changes are saved, else the whole window."""
        q, base = self.q, self.word(index)
        window = (base + _R_WINDOW) * 2
        lo, span = self.i32[window], self.i32[window + 1]
        slot = bucket_of(elapsed) - lo
        if span > 0 and 0 <= slot < span:
            undo = self.layout["undo"] // 8
            q[undo : undo + HEAD_WORDS] = q[base : base + HEAD_WORDS]
            q[undo + _R_COUNTS] = q[base + _R_COUNTS + slot]
            q[_H_UNDO_INDEX] = index
            q[_H_UNDO_SLOT] = slot
            q[_H_UNDO_KIND] = _UNDO_BUCKET
        else:
            self._save(index)
            q[_H_UNDO_KIND] = _UNDO_RECORD
        self._add(index, elapsed, error, rows, wall, times)
        self.q[_H_UNDO_KIND] = _UNDO_NONE

    def _evict(self, max_statements: int) -> None:
        q, d, n, layout = self.q, self.d, self.n, self.layout
        usage, serial, key = (
            layout[name] // 8 for name in ("undo_usage", "undo_serial", "undo_key")
        )
        keys = layout["keys"] // 8
        for i in range(n):
            base = self.word(i)
            d[usage + i] = d[base + _R_USAGE]
            q[serial + i] = q[base + _R_SERIAL]
            q[key + i] = q[base + _R_KEY]
        self._save(n)
        self._save_header()
        q[_H_UNDO_KIND] = _UNDO_EVICT
        live = []
        for i in range(n):
            base = self.word(i)
            if q[base + _R_SERIAL]:
                d[base + _R_USAGE] *= USAGE_DECAY
                live.append((d[base + _R_USAGE], q[base + _R_SERIAL], i))
        live.sort()
        drop = min(max(1, max_statements * EVICT_PERCENT // 100), len(live))
        for _usage, _serial, i in live[:drop]:
            self._merge(n, i)
            base = self.word(i)
            q[base + _R_SERIAL] = 0
            q[base + _R_KEY] = 0
            q[keys + i] = 0
            q[_H_DROPPED] += 1
            q[_H_LIVE] -= 1
        q[_H_UNDO_KIND] = _UNDO_NONE

    def find_or_insert(
        self, key: int, fingerprint: bytes, sample: bytes, max_statements: int
    ) -> int:
        """The live record of ``key``, or a new one (evicting first when full); lock held."""
        q, n = self.q, self.n
        keys = self.layout["keys"] // 8
        at = self._find(key)
        if at >= 0:
            return at
        if q[_H_LIVE] >= max_statements:
            self._evict(max_statements)
        index = self._find(0)
        base = self.word(index)
        q[_H_UNDO_INDEX] = index
        self._save_header()
        q[_H_UNDO_KIND] = _UNDO_INSERT
        # The old window's counts first, then the head (as the C core): the
        # counts beyond a window are zero, and pages never written stay so.
        span = min(max(self.i32[(base + _R_WINDOW) * 2 + 1], 0), MAX_BUCKETS)
        q[base + _R_COUNTS : base + _R_COUNTS + span] = array.array("Q", bytes(8 * span))
        q[base : base + HEAD_WORDS] = array.array("Q", bytes(8 * HEAD_WORDS))
        q[base + _R_MIN] = _MASK
        q[base + _R_KEY] = key
        self.region[base * 8 + _R_TEXT : base * 8 + _R_TEXT + len(fingerprint)] = fingerprint
        text = base * 8 + _R_TEXT + FINGERPRINT_BYTES
        self.region[text : text + len(sample)] = sample
        lengths = (base + _R_LENGTHS) * 2
        self.i32[lengths] = len(fingerprint)
        self.i32[lengths + 1] = len(sample)
        q[base + _R_SERIAL] = q[_H_NEXT_SERIAL]
        q[_H_NEXT_SERIAL] += 1
        q[_H_LIVE] += 1
        q[keys + index] = key
        q[_H_UNDO_KIND] = _UNDO_NONE
        del n
        return index

    def _find(self, key: int) -> int:
        """The index of ``key`` in the keys array (0: a free record), or -1."""
        keys = self.layout["keys"]
        needle = key.to_bytes(8, "little" if _NATIVE_LITTLE else "big")
        region = self.region
        at = keys
        end = keys + 8 * self.n
        while True:
            at = int(region.find(needle, at, end))
            if at < 0:
                return -1
            if (at - keys) % 8 == 0:
                return (at - keys) // 8
            at += 1

    def _row(self, index: int, fingerprint: str | None, sample: str | None) -> tuple[Any, ...]:
        q, s64, i32 = self.q, self.s64, self.i32
        base = self.word(index)
        calls = q[base + _R_CALLS]
        lo, span = (
            i32[(base + _R_WINDOW) * 2],
            min(max(i32[(base + _R_WINDOW) * 2 + 1], 0), MAX_BUCKETS),
        )
        if fingerprint is None or sample is None:
            lengths = (base + _R_LENGTHS) * 2
            text = base * 8 + _R_TEXT
            fingerprint = bytes(self.region[text : text + i32[lengths]]).decode(
                "utf-8", "surrogatepass"
            )
            text += FINGERPRINT_BYTES
            sample = bytes(self.region[text : text + i32[lengths + 1]]).decode(
                "utf-8", "surrogatepass"
            )
        return (
            fingerprint,
            sample,
            q[base + _R_SERIAL],
            calls,
            q[base + _R_ERRORS],
            (q[base + _R_TOTAL + 1] << 64) | q[base + _R_TOTAL],
            (q[base + _R_SQ + 1] << 64) | q[base + _R_SQ],
            q[base + _R_MIN] if calls else 0,
            q[base + _R_MAX],
            q[base + _R_ROWS],
            q[base + _R_ROWS_CALLS],
            s64[base + _R_FIRST],
            s64[base + _R_LAST],
            lo,
            bytes(self.q[base + _R_COUNTS : base + _R_COUNTS + span]),
        )

    def read(
        self, evicted: str, untexted: str
    ) -> tuple[int, tuple[Any, ...], tuple[Any, ...], tuple[tuple[Any, ...], ...]]:
        """Every live record's figures at one instant."""
        with self.locked():
            keys = self.layout["keys"] // 8
            return (
                self.q[_H_DROPPED],
                self._row(self.n, evicted, ""),
                self._row(self.n + 1, untexted, ""),
                tuple(self._row(i, None, None) for i in range(self.n) if self.q[keys + i]),
            )


_NATIVE_LITTLE = struct.pack("=H", 1) == b"\x01\x00"


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


def notify_observer(
    observer: Callable[..., object],
    statement: StatementRef | None,
    elapsed: int,
    error: bool,
    error_type: type[BaseException] | None,
) -> None:
    """Call a meter's observer with a counted query:
    ``observer(sql, dialect, elapsed_ns, error, error_type)``.

    The statement's text and dialect are None where the shape does not know
    them; ``error_type`` is None on success (and for an error that was not an
    exception).  An Exception from the observer is a fault: counted and
    logged, never raised.  Anything else is the application's and propagates
    (inside the caller's ``except`` block, chained to the driver's exception).
    """
    dialect, sql = (None, None) if statement is None else statement[:2]
    try:
        observer(sql, dialect, elapsed, error, error_type if error else None)
    except Exception as exc:  # noqa: BLE001 - ours: a fault
        _faults.report("could not call a query observer", exc)
