"""Statements across processes: one statement table, in a file every worker maps.

A SharedMeter's statement table (``shared.enable_statements()``) keeps its
figures in ``<meter path>.statements``: fixed-size records keyed by the
fingerprint's 64-bit BLAKE2b, each with the fingerprint and a sample text
(bounded bytes), calls, errors, rows, exact 128-bit sums, min, max, first and
last seen and the log-linear histogram, plus the ``evicted`` and ``untexted``
rows: the same figures, the same eviction rule (pg_stat_statements'), the
same readings as a process's own table, for the whole service.  Each process
keeps its own cache from statement text to record (index and generation), so
a repeated statement costs a dictionary lookup and an update under the
table's lock, as in one process.  The core does the recording; this module
makes, checks and maps the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import secrets
import threading
import time
import weakref
from typing import Any

from ..core import _py_statements as layout
from ..meter import _observing, core_module
from ..statements import StatementTable, statement_id
from ..statements._table import _CACHE_PER_STATEMENT, _MIN_CACHE, _identify

__all__ = [
    "SharedStatementTable",
    "enable_shared_statements",
    "shared_statements_max",
    "statements_path",
]

#: The statement table of the shared meter at PATH is at PATH + this.
SUFFIX = ".statements"
#: How long a fingerprint or sample text may be in the file, UTF-8 bytes.
FINGERPRINT_BYTES = layout.FINGERPRINT_BYTES
SAMPLE_BYTES = layout.SAMPLE_BYTES
#: Bytes of one record (a statement) in the file.
RECORD_SIZE = layout.RECORD_SIZE
_U64_MAX = 2**64 - 1
# A fingerprint cut to fit ends with this and its statement id: two long
# fingerprints alike in their first kilobyte stay two statements.
_CUT_MARK = "…"


def statements_path(meter_path: str | os.PathLike[str]) -> str:
    """Where the statement table of the shared meter at ``meter_path`` lives."""
    return os.fspath(meter_path) + SUFFIX


def file_size(max_statements: int) -> int:
    """The size of a shared statement table's file, bytes."""
    return layout.shared_layout(max_statements)["size"]


def _utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes at a character's start."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return data
    data = data[:limit]
    start = len(data) - 1
    while start > 0 and data[start] & 0xC0 == 0x80:
        start -= 1
    lead = data[start]
    length = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
    return data if start + length <= len(data) else data[:start]


def _identify_shared(sql: Any, dialect: str | None) -> tuple[str, str, int, bytes, bytes]:
    """What the shared table keeps of a statement not cached in this process:
    its fingerprint and sample text as stored, its key, and their bytes."""
    fingerprint, sample = _identify(sql, dialect)
    key = int(statement_id(fingerprint), 16) or 1
    fingerprint_bytes = _utf8(fingerprint, FINGERPRINT_BYTES)
    if len(fingerprint_bytes) < len(fingerprint.encode("utf-8", "surrogatepass")):
        mark = (_CUT_MARK + statement_id(fingerprint)).encode()
        fingerprint_bytes = _utf8(fingerprint, FINGERPRINT_BYTES - len(mark)) + mark
    sample_bytes = _utf8(sample, SAMPLE_BYTES)
    return (
        fingerprint_bytes.decode("utf-8", "surrogatepass"),
        sample_bytes.decode("utf-8", "surrogatepass"),
        key,
        fingerprint_bytes,
        sample_bytes,
    )


def _lock_kind(core_type: Any) -> int:
    """The lock the processes of a core take: the C core's atomic word, or fcntl."""
    return layout.LOCK_ATOMIC if core_type.__module__.endswith("._c") else layout.LOCK_FCNTL


def _header(path: str, fd: int) -> tuple[Any, ...]:
    data = os.pread(fd, layout.HEADER_FORMAT.size, 0)
    if len(data) < layout.HEADER_FORMAT.size or data[:8] != layout.SHARED_MAGIC:
        raise ValueError(f"{path} is not a querymeter shared statement table")
    header = layout.HEADER_FORMAT.unpack(data)
    if header[1] != layout.SHARED_VERSION or header[4] != RECORD_SIZE:
        raise ValueError(
            f"{path} is a shared statement table of another querymeter version "
            f"(format {header[1]}); remove it or use another path"
        )
    return header


def _initialise(fd: int, max_statements: int, lock_kind: int) -> None:
    """Writes a new table into an empty file (the caller holds the file's flock)."""
    parts = layout.shared_layout(max_statements)
    os.ftruncate(fd, parts["size"])
    # The special rows have no calls yet: their min is the largest value.
    for row in (max_statements, max_statements + 1):
        at = parts["records"] + row * RECORD_SIZE + layout._R_MIN * 8
        os.pwrite(fd, _U64_MAX.to_bytes(8, "little" if layout._NATIVE_LITTLE else "big"), at)
    header = layout.HEADER_FORMAT.pack(
        layout.SHARED_MAGIC,
        layout.SHARED_VERSION,
        lock_kind,
        max_statements,
        RECORD_SIZE,
        0,  # the lock: free
        secrets.randbits(63),  # table_id: one for every process's readings
        time.time_ns(),  # started_wall_ns
        0,  # dropped
        1,  # next_serial
        0,  # live
        0,
        0,
        0,
        0,
        0,
        0,
    )
    os.pwrite(fd, header, 0)
    os.fsync(fd)


def _open(path: str, max_statements: int, lock_kind: int) -> tuple[int, mmap.mmap, tuple[Any, ...]]:
    """Opens (making it if missing or empty) and checks the file; its fd, mapping and header."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        # One process makes the table; the others wait for it, then check it.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                _initialise(fd, max_statements, lock_kind)
            header = _header(path, fd)
            if header[3] != max_statements:
                raise ValueError(
                    f"{path} holds a statement table of max_statements={header[3]}, "
                    f"not {max_statements}: use the same number in every process"
                )
            if os.fstat(fd).st_size != file_size(max_statements):
                raise ValueError(f"{path} is truncated or corrupt: its size does not fit its table")
            if header[2] != lock_kind:
                made, other = (
                    ("C", "pure-Python")
                    if header[2] == layout.LOCK_ATOMIC
                    else (
                        "pure-Python",
                        "C",
                    )
                )
                raise ValueError(
                    f"{path} was made by processes of the {made} core; the {other} core cannot "
                    f"share it (their locks differ): use one core in every process"
                )
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        region = mmap.mmap(fd, file_size(max_statements))
    except BaseException:
        os.close(fd)
        raise
    return fd, region, header


def shared_statements_max(path: str | os.PathLike[str]) -> int | None:
    """The ``max_statements`` of the shared statement table at ``path``; None if there is none."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if os.fstat(fd).st_size == 0:
            return None
        return int(_header(path, fd)[3])
    finally:
        os.close(fd)


class SharedStatementTable(StatementTable):
    """The statement table of a shared meter: one table for every process that opens ``path``.

    Readings (``snapshot()``, ``top()``, intervals) are the whole service's,
    from any process, and carry the table's one ``table_id``: a snapshot
    taken in one process can be subtracted from one taken in another.
    """

    __slots__ = ("__weakref__", "_fd", "_region", "path")

    def __init__(
        self, path: str | os.PathLike[str], max_statements: int = 5000, *, core_type: Any = None
    ) -> None:
        if isinstance(max_statements, bool) or not isinstance(max_statements, int):
            raise TypeError(f"max_statements must be an int, not {type(max_statements).__name__}")
        if max_statements < 1:
            raise ValueError(f"max_statements must be at least 1, not {max_statements}")
        from .. import core

        statements_type = core.Statements if core_type is None else core_type
        self.path = os.fspath(path)
        self.max_statements = max_statements
        fd, region, header = _open(self.path, max_statements, _lock_kind(statements_type))
        self._fd = fd
        self._region = region
        weakref.finalize(self, _release, fd, region)
        #: Identity of the table, the same in every process.
        self.table_id = header[6]
        #: Unix time the table was made, ns.
        self.started_wall_ns = header[7]
        self._core = self._new_core(statements_type)
        _tables.add(self)

    def _new_core(self, statements_type: Any) -> Any:
        cache_limit = max(_MIN_CACHE, _CACHE_PER_STATEMENT * self.max_statements)
        return statements_type(
            _identify_shared, self.max_statements, cache_limit, self._region, self._fd
        )

    def __repr__(self) -> str:
        return (
            f"<SharedStatementTable {self.path!r} statements={len(self)} "
            f"max_statements={self.max_statements}>"
        )


# Every table open in this process, for the fork handler.
_tables: weakref.WeakSet[SharedStatementTable] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child keeps the mapping, its caches (each entry checked by its
    # record's serial) and the table: the meter's counters are the service's,
    # so are its statements.  The pure-Python core's thread lock may have been
    # held by a thread of the parent: made anew (fcntl locks are not inherited;
    # the C core's lock word names the child's own pid from now on).
    for table in list(_tables):
        core = table._core
        if hasattr(core, "_lock"):
            core._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _release(fd: int, region: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # a core still maps it: closed with the core
        region.close()
    os.close(fd)


def enable_shared_statements(
    meter: Any, max_statements: int = 5000, *, path: str | os.PathLike[str] | None = None
) -> SharedStatementTable:
    """Aggregate every query ``meter`` counts into the shared statement table at ``path``
    (by default ``<meter.path>.statements``), made if missing.

    Returns the table (also ``meter.statements``).  Enabling it again with the
    same ``max_statements`` returns the table in use; with another, raises
    ValueError, as does a file made with another ``max_statements``.
    """
    if path is None:
        path = statements_path(meter.path)
    observing = _observing(meter)
    with observing.lock:
        current = observing.statements
        if current is not None:
            if current.max_statements != max_statements:
                raise ValueError(
                    f"statements are already enabled with max_statements="
                    f"{current.max_statements}; call disable_statements() first"
                )
            return current  # type: ignore[return-value]
        table = SharedStatementTable(path, max_statements, core_type=core_module(meter).Statements)
        observing.statements = table
        observing.apply(meter)
    return table
