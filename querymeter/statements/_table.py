"""A meter's statement table: every query the meter counts, aggregated under its fingerprint.

The counting happens in the core (C, or its Python twin): at each query's
end, after the counters, the statement's entry is found by its exact text
in a cache and updated, so a repeated statement costs one dictionary lookup.
A text seen for the first time is fingerprinted here, in Python.
"""

from __future__ import annotations

import heapq
import secrets
import time
from typing import Any

from .. import core
from ._fingerprint import fingerprint
from ._readings import StatementsSnapshot, StatementStats, _stats

# The special rows of a partial reading (top()): empty.
_EMPTY = _stats(("", "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b""))

__all__ = ["MAX_SQL_CHARS", "StatementTable", "statement_text"]

# Sort keys on the core's raw rows (see _readings._stats for their layout):
# (fingerprint, sample, serial, calls, errors, total, total_sq, min, max,
# rows, rows_calls, first_seen, last_seen, histogram_lo, histogram).
_RAW_KEYS: dict[str, Any] = {
    "total": lambda row: row[5],
    "calls": lambda row: row[3],
    "errors": lambda row: row[4],
    "max": lambda row: row[8],
    "mean": lambda row: row[5] / row[3] if row[3] else -1.0,
    "rows": lambda row: row[9] if row[10] else -1,
}

#: The longest statement text kept as a sample (a statement's ``sample_sql``,
#: a sample's ``sql``); longer ones are cut there.
MAX_SQL_CHARS = 1024
# How many distinct texts each dialect's cache keeps: enough for a table full
# of statements written with literals a few different ways.
_CACHE_PER_STATEMENT = 4
_MIN_CACHE = 1024


def statement_text(sql: Any) -> str | None:
    """The text of a statement as a hook sees it: str, or bytes decoded; None for anything else."""
    if type(sql) is str:
        return sql
    if isinstance(sql, bytes | bytearray | memoryview):
        return bytes(sql).decode("utf-8", "replace")
    if isinstance(sql, str):
        return str.__str__(sql)
    return None


def _identify(sql: Any, dialect: str | None) -> tuple[str, str]:
    """The fingerprint and sample text of a statement the table has not seen in this form."""
    text = statement_text(sql)
    if text is None:
        # A composed statement object (psycopg.sql.Composed, say): its text is
        # only known to the driver, and no code of it is run here.
        kind = f"({type(sql).__module__}.{type(sql).__qualname__})"
        return kind, kind
    return fingerprint(text, dialect), text[:MAX_SQL_CHARS]


class StatementTable:
    """The statement table of a meter (``meter.statements``), made by ``meter.enable_statements()``.

    Holds at most ``max_statements`` fingerprints.  When a new one arrives at
    a full table, the least used are evicted as pg_stat_statements does:
    every statement's usage (one per call) decays by 1 %, and the least used
    5 % (at least one) are dropped, their figures merged into the ``evicted``
    row and counted in ``dropped``.  The statements, ``evicted`` and
    ``untexted`` (queries counted without statement text) add up to the
    meter's own counts since the table was enabled.
    """

    __slots__ = ("_core", "max_statements", "started_wall_ns", "table_id")

    def __init__(self, max_statements: int = 5000, *, core_type: Any = None) -> None:
        """``core_type`` is the core's Statements type, for a meter over the core
        that is not the default (``meter_class("python")``); the meter passes it."""
        if isinstance(max_statements, bool) or not isinstance(max_statements, int):
            raise TypeError(f"max_statements must be an int, not {type(max_statements).__name__}")
        if max_statements < 1:
            raise ValueError(f"max_statements must be at least 1, not {max_statements}")
        self.max_statements = max_statements
        #: Identity of this table, stamped on its readings.
        self.table_id = secrets.randbits(63)
        #: Unix time the table was enabled, ns.
        self.started_wall_ns = time.time_ns()
        cache_limit = max(_MIN_CACHE, _CACHE_PER_STATEMENT * max_statements)
        statements_type = core.Statements if core_type is None else core_type
        self._core = statements_type(_identify, max_statements, cache_limit)

    def snapshot(self) -> StatementsSnapshot:
        """Every statement's figures, read at one instant."""
        dropped, evicted, untexted, rows = self._core._read()
        return StatementsSnapshot(
            tuple(_stats(row) for row in rows),
            _stats(evicted),
            _stats(untexted),
            dropped,
            self.table_id,
            time.time_ns(),
        )

    def top(self, n: int = 10, by: str = "total") -> list[StatementStats]:
        """The ``n`` statements with the largest ``by`` since the table started
        (see :meth:`StatementsSnapshot.top`).

        Reads the table at one instant, and makes readings of the ``n`` chosen
        only (an exporter's scrape of a full table), except by "p99", which
        needs every histogram.
        """
        key = _RAW_KEYS.get(by)
        if key is None:
            return self.snapshot().top(n, by)
        rows = self._core._read()[3]
        chosen = heapq.nsmallest(n, rows, key=lambda row: (-key(row), row[0]))
        reading = StatementsSnapshot(
            tuple(_stats(row) for row in chosen),
            _EMPTY,
            _EMPTY,
            0,
            self.table_id,
            time.time_ns(),
        )
        return reading.top(n, by)

    def __len__(self) -> int:
        return self._core.size

    def __repr__(self) -> str:
        return f"<StatementTable statements={len(self)} max_statements={self.max_statements}>"
