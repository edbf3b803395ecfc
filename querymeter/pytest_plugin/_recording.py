"""One test's queries: its meter (the ``querymeter`` fixture), its readings, and its checks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pytest

from ..meter import Meter
from ..readings import Snapshot
from ..scopes import Scope, add_exit_listener, current_scope, remove_exit_listener, scope
from ..statements import StatementsInterval, StatementsSnapshot, StatementTable
from ._checks import (
    Counts,
    IgnorePatterns,
    check_count,
    describe,
    repeated,
    statement_counts,
)
from ._lending import Lending

__all__ = ["NPlusOne", "QueryBudget", "QueryMeter", "Recording"]

# A scope of the test's that repeats a statement is kept for the failure
# message; more than this many are only counted (bounded memory).
_MAX_SCOPES_KEPT = 20
# The statements of each test kept for the summary and the JSON file.
_STATEMENTS_KEPT = 10


class QueryMeter(Meter):
    """The ``querymeter`` fixture: a fresh :class:`querymeter.Meter` counting the test's queries.

    Every supported DB-API driver imported before the test, and every
    SQLAlchemy engine created in it, counts into this meter for the test's
    duration.  Its statement table is on (``querymeter.statements``), so the
    statements are known by fingerprint.  Besides the Meter API it has
    :meth:`assert_queries`.
    """

    def __init__(self, ignore: IgnorePatterns | None = None) -> None:
        super().__init__()
        self.default_ignore = IgnorePatterns() if ignore is None else ignore
        self.enable_statements()

    def assert_queries(
        self,
        max: int | None = None,
        exactly: int | None = None,
        ignore: object = (),
    ) -> QueryBudget:
        """``with querymeter.assert_queries(max=3):`` fails the test if the block runs more
        than 3 statements (``exactly=3``: other than 3), counting neither those whose
        fingerprint an ``ignore`` pattern matches nor the ``querymeter_ignore`` ones of
        the ini file.  The failure lists the statements, the most repeated first.
        """
        return QueryBudget(self, max, exactly, self.default_ignore + IgnorePatterns(ignore))

    def _table(self) -> StatementTable:
        table = self.statements
        return table if table is not None else self.enable_statements()


class QueryBudget:
    """The block of :meth:`QueryMeter.assert_queries`; after it, ``counts`` holds what ran."""

    __slots__ = ("_before", "counts", "exactly", "ignore", "max", "meter")

    def __init__(
        self, meter: QueryMeter, max: object, exactly: object, ignore: IgnorePatterns
    ) -> None:
        if max is None and exactly is None:
            raise TypeError("assert_queries() needs max= or exactly=")
        if max is not None and exactly is not None:
            raise TypeError("assert_queries() takes max= or exactly=, not both")
        self.meter = meter
        self.max = None if max is None else check_count("max", max, minimum=0)
        self.exactly = None if exactly is None else check_count("exactly", exactly, minimum=0)
        self.ignore = ignore
        self._before: StatementsSnapshot | None = None
        #: The block's statements by fingerprint, once it has ended.
        self.counts: Counts | None = None

    def __enter__(self) -> QueryBudget:
        self._before = self.meter._table().snapshot()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        if self._before is None:
            raise RuntimeError("__exit__() called on an assert_queries() block that is not open")
        before, self._before = self._before, None
        self.counts = statement_counts(self.meter._table().snapshot() - before, self.ignore)
        if exc_type is not None:
            return  # the block's own failure is the one to see
        queries = self.counts.queries
        if self.max is not None and queries > self.max:
            pytest.fail(
                "\n".join(
                    [
                        f"{_statements(queries)} ran, more than the {self.max} allowed:",
                        *describe(self.counts.statements, self.counts.ignored),
                    ]
                )
            )
        if self.exactly is not None and queries != self.exactly:
            pytest.fail(
                "\n".join(
                    [
                        f"{_statements(queries)} ran, not exactly {self.exactly}:",
                        *describe(self.counts.statements, self.counts.ignored),
                    ]
                )
            )


def _statements(count: int) -> str:
    return f"{count} statement" if count == 1 else f"{count} statements"


@dataclass(frozen=True)
class NPlusOne:
    """A statement repeated more than the threshold in one scope (``where``)."""

    where: str
    fingerprint: str
    calls: int


class Recording:
    """The queries of one test: set-up, call and teardown readings, and the checks on the call.

    ``start()`` before the test's fixtures are set up, ``call_started()`` and
    ``call_ended()`` around the test function, ``stop()`` after teardown.
    """

    def __init__(
        self,
        nodeid: str,
        *,
        ignore: IgnorePatterns,
        max_queries: tuple[int, IgnorePatterns] | None,
        n_plus_one: tuple[int, IgnorePatterns] | None,
    ) -> None:
        self.nodeid = nodeid
        self.meter = QueryMeter(ignore)
        self.lending = Lending(self.meter)
        self.max_queries = max_queries
        self.n_plus_one = n_plus_one
        self.started: Snapshot | None = None
        self.call_start: Snapshot | None = None
        self.call_end: Snapshot | None = None
        self.stopped: Snapshot | None = None
        self.call_statements: StatementsInterval | None = None
        self._table_before: StatementsSnapshot | None = None
        self._test_scope: Scope | None = None
        self._listener: Callable[[Scope], None] | None = None
        self._lock = threading.Lock()
        # Statements of the scopes the test opened (on their own), by fingerprint.
        self._in_scopes: dict[str, int] = {}
        self._scope_findings: list[NPlusOne] = []
        self._scopes_repeating = 0
        self.findings: list[NPlusOne] = []
        self.active = False

    # ------------------------------------------------------------ phases

    def start(self) -> None:
        """Lend the drivers and SQLAlchemy to the test's meter."""
        self.active = True
        try:
            self.lending.start()
        except BaseException:
            self.lending.stop()
            raise
        self.started = self.meter.snapshot()

    def call_started(self) -> None:
        """The test function starts: readings, and the test's scope."""
        if self.n_plus_one is not None:
            listener = self._scope_ended
            add_exit_listener(listener)
            self._listener = listener
        self._test_scope = scope(test=self.nodeid).__enter__()
        self._table_before = self.meter._table().snapshot()
        self.call_start = self.meter.snapshot()

    def call_ended(self) -> None:
        """The test function has returned or raised."""
        self.call_end = self.meter.snapshot()
        if self._table_before is not None:
            self.call_statements = self.meter._table().snapshot() - self._table_before
        if self._test_scope is not None:
            self._test_scope.__exit__(None, None, None)
        if self._listener is not None:
            remove_exit_listener(self._listener)
            self._listener = None

    def stop(self) -> None:
        """After teardown: the last reading, and the drivers given back."""
        if not self.active:
            return
        self.active = False
        self.stopped = self.meter.snapshot()
        self.lending.stop()

    # ------------------------------------------------------------ N+1

    def _scope_ended(self, ended: Scope) -> None:
        # Called in the thread that ends a scope, after it has ended: the
        # context's current scope is the ended one's parent.
        test_scope = self._test_scope
        if ended is test_scope or self.n_plus_one is None:
            return
        parent = current_scope()
        if parent is not None and parent is not test_scope:
            return  # nested in another scope, which is judged as a whole
        threshold, ignore = self.n_plus_one
        counts = ended.statements
        found = repeated(counts, threshold, ignore)
        tags = ", ".join(f"{key}={value!r}" for key, value in ended.tags.items() if key != "test")
        where = f"scope({tags})"
        with self._lock:
            for name, calls in counts.items():
                self._in_scopes[name] = self._in_scopes.get(name, 0) + calls
            if found:
                self._scopes_repeating += 1
                if len(self._scope_findings) < _MAX_SCOPES_KEPT:
                    self._scope_findings.extend(NPlusOne(where, name, c) for name, c in found)

    def check_n_plus_one(self) -> str | None:
        """The failure message of the N+1 check, or None when it passes (or is off)."""
        if self.n_plus_one is None or self.call_statements is None:
            return None
        threshold, ignore = self.n_plus_one
        with self._lock:
            in_scopes = dict(self._in_scopes)
            scope_findings = list(self._scope_findings)
            scopes_repeating = self._scopes_repeating
        # The test's own: what it ran outside the scopes it opened.
        outside = {}
        for stats in self.call_statements.statements:
            calls = stats.calls - in_scopes.get(stats.fingerprint, 0)
            if calls > 0:
                outside[stats.fingerprint] = calls
        own = [
            NPlusOne("the test", name, calls)
            for name, calls in repeated(outside, threshold, ignore)
        ]
        self.findings = own + scope_findings
        if not self.findings:
            return None
        lines = [f"N+1: a statement ran more than {threshold} times in one scope:"]
        for where in dict.fromkeys(finding.where for finding in self.findings):
            lines.append(f" in {where}:")
            lines.extend(
                describe((f.fingerprint, f.calls) for f in self.findings if f.where == where)
            )
        if scopes_repeating > _MAX_SCOPES_KEPT:
            lines.append(f" ({scopes_repeating} scopes in all repeated a statement)")
        return "\n".join(lines)

    def check_max_queries(self) -> str | None:
        """The failure message of the ``max_queries`` marker, or None when it passes (or is off)."""
        if self.max_queries is None or self.call_statements is None:
            return None
        allowed, ignore = self.max_queries
        counts = statement_counts(self.call_statements, ignore)
        if counts.queries <= allowed:
            return None
        return "\n".join(
            [
                f"{_statements(counts.queries)} ran, more than the {allowed} of max_queries:",
                *describe(counts.statements, counts.ignored),
            ]
        )

    # ------------------------------------------------------------ the summary

    def summary(self) -> dict[str, Any]:
        """The test's figures as plain data (one entry of the JSON file's ``tests``)."""
        call = _figures(self.call_start, self.call_end)
        whole = _figures(self.started, self.stopped)
        statements = []
        if self.call_statements is not None:
            for stats in self.call_statements.top(_STATEMENTS_KEPT, by="calls"):
                statements.append(
                    {
                        "fingerprint": stats.fingerprint,
                        "statement_id": stats.statement_id,
                        "calls": stats.calls,
                        "errors": stats.errors,
                        "db_seconds": stats.total_ns / 1e9,
                    }
                )
        return {
            "nodeid": self.nodeid,
            "queries": call[0],
            "errors": call[1],
            "db_seconds": call[2] / 1e9,
            "fixture_queries": max(0, whole[0] - call[0]),
            "fixture_db_seconds": max(0, whole[2] - call[2]) / 1e9,
            "statements": statements,
            "n_plus_one": [
                {"where": f.where, "fingerprint": f.fingerprint, "calls": f.calls}
                for f in self.findings
            ],
        }


def _figures(earlier: Snapshot | None, later: Snapshot | None) -> tuple[int, int, int]:
    """(queries, errors, DB time ns) between two readings; zeros if either is missing."""
    if earlier is None or later is None:
        return 0, 0, 0
    return (
        later.queries - earlier.queries,
        later.errors - earlier.errors,
        later.total_ns - earlier.total_ns,
    )
