"""Scopes: the queries of one piece of work (a request, a job, a user's session), tagged.

``with querymeter.scope(user="ann", route="/orders"):`` tags every query
counted inside the block, by any meter, and keeps the block's figures:
queries, errors, DB time, and how often each statement ran, so that a
statement repeated more than ``n_plus_one`` times (the N+1 pattern) is named.
A scope lives in a context variable: it follows asyncio tasks, and threads
started inside it when they run in a copy of the context
(``contextvars.copy_context().run``).  Scopes nest: an inner scope's tags
merge with the outer's, and its queries count in both.

The counting is the core's (C, or its twin): at each query's end, after the
counters, the innermost scope and its parents are updated in place; with no
scope open anywhere, a query pays one integer test.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Any

from . import _faults, core
from .statements import fingerprint

__all__ = [
    "Scope",
    "add_exit_listener",
    "add_focus",
    "current_scope",
    "remove_exit_listener",
    "remove_focus",
    "scope",
]

# Tags are matched by the focus of profiling sessions: key -> predicate.
_focus_rules: dict[object, Callable[[Mapping[str, Any]], bool]] = {}
_current: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "querymeter_scope", default=None
)


class Scope:
    """The queries of a block of code, made by :func:`scope` (see the module's doc).

    ``queries``, ``errors`` and ``db_ns`` are the figures so far (read at any
    time, inside the block or after it); ``statements`` maps each fingerprint
    that ran to how often, and ``repeated`` keeps those that ran more than
    ``n_plus_one`` times; ``tags`` are the scope's, merged with its parents'.
    """

    __slots__ = (
        "_cores",
        "_entered",
        "_own_tags",
        "_started_ns",
        "_tokens",
        "elapsed_ns",
        "n_plus_one",
        "tags",
    )

    def __init__(self, tags: Mapping[str, Any], n_plus_one: int) -> None:
        self._own_tags = dict(tags)
        self.n_plus_one = n_plus_one
        self.tags: Mapping[str, Any] = MappingProxyType(dict(tags))
        self._cores: list[Any] = []
        self._tokens: list[tuple[Any, Any]] = []
        self._entered = False
        self._started_ns = 0
        #: How long the block ran, ns (monotonic), once it has ended; None before.
        self.elapsed_ns: int | None = None

    def __enter__(self) -> Scope:
        if self._entered:
            raise RuntimeError("this scope is already open; use a new scope() for each block")
        parent = _current.get()
        merged = dict(parent.tags) if parent is not None else {}
        merged.update(self._own_tags)
        self.tags = MappingProxyType(merged)
        focus = _focus_of(self.tags)
        self._cores, self._tokens = [], []
        for module in core.cores():
            scope, token = module._enter_scope(focus, self.tags)
            self._cores.append(scope)
            self._tokens.append((module, token))
        self._tokens.append((None, _current.set(self)))
        self._entered = True
        self._started_ns = time.monotonic_ns()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._entered:
            raise RuntimeError("__exit__() called on a scope that is not open")
        self._entered = False
        self.elapsed_ns = time.monotonic_ns() - self._started_ns
        for module, token in reversed(self._tokens):
            if module is None:
                _current.reset(token)
            else:
                module._exit_scope(token)
        self._tokens = []
        for listener in list(_exit_listeners):
            try:
                listener(self)
            except Exception as exc:  # noqa: BLE001 - a session's: never the application's
                _faults.report("scope: a listener of scopes raised", exc)

    def retag(self, **tags: Any) -> None:
        """Add or change tags from now on (a request's route, once the framework has
        routed it): in an open scope, the queries after it carry them and a profiling
        session's focus is decided again; a closed scope is only renamed."""
        self._own_tags.update(tags)
        self.tags = MappingProxyType({**self.tags, **tags})
        if not self._entered:
            return
        focus = _focus_of(self.tags)
        for scope in self._cores:
            scope._retag(focus, self.tags)

    def _figures(self) -> tuple[int, int, int, dict[tuple[Any, Any], int]]:
        queries = errors = db_ns = 0
        texts: dict[tuple[Any, Any], int] = {}
        for scope in self._cores:
            q, e, d, counts, dialects = scope._read()
            queries, errors, db_ns = queries + q, errors + e, db_ns + d
            for sql, count in counts.items():
                key = (sql, dialects.get(sql))
                texts[key] = texts.get(key, 0) + count
        return queries, errors, db_ns, texts

    @property
    def queries(self) -> int:
        """Queries counted in the scope so far."""
        return self._figures()[0]

    @property
    def errors(self) -> int:
        """Of those, the ones that raised."""
        return self._figures()[1]

    @property
    def db_ns(self) -> int:
        """The time of those queries, ns (their response times summed)."""
        return self._figures()[2]

    @property
    def statements(self) -> dict[str, int]:
        """How often each statement ran in the scope, by fingerprint."""
        counts: dict[str, int] = {}
        for (sql, dialect), count in self._figures()[3].items():
            try:
                shape = fingerprint(sql, dialect)
            except Exception as exc:  # noqa: BLE001 - ours: the text counts under itself
                _faults.report("scope: could not fingerprint a statement", exc)
                shape = str(sql)
            counts[shape] = counts.get(shape, 0) + count
        return counts

    @property
    def repeated(self) -> dict[str, int]:
        """The statements that ran more than ``n_plus_one`` times: the N+1 pattern."""
        return {shape: count for shape, count in self.statements.items() if count > self.n_plus_one}

    def __repr__(self) -> str:
        queries, errors, db_ns, _ = self._figures()
        return (
            f"<querymeter.Scope {dict(self.tags)!r} queries={queries} errors={errors} "
            f"db_ns={db_ns}>"
        )


def scope(*, n_plus_one: int = 5, **tags: Any) -> Scope:
    """A scope for a block of code: ``with querymeter.scope(route="/orders") as s:``.

    ``tags`` name the work (their values are kept as given); ``n_plus_one``
    is how many runs of one statement are still fine in the scope.
    """
    if isinstance(n_plus_one, bool) or not isinstance(n_plus_one, int):
        raise TypeError(f"n_plus_one must be an int, not {type(n_plus_one).__name__}")
    if n_plus_one < 1:
        raise ValueError(f"n_plus_one must be at least 1, not {n_plus_one}")
    return Scope(tags, n_plus_one)


def current_scope() -> Scope | None:
    """The innermost open scope of the running context, or None."""
    return _current.get()


_focus_lock = threading.Lock()


# Called with each scope as it ends (profiling sessions sum up their scopes).
_exit_listeners: list[Callable[[Scope], None]] = []


def add_exit_listener(listener: Callable[[Scope], None]) -> None:
    with _focus_lock:
        _exit_listeners.append(listener)


def remove_exit_listener(listener: Callable[[Scope], None]) -> None:
    with _focus_lock:
        if listener in _exit_listeners:
            _exit_listeners.remove(listener)


def add_focus(key: object, predicate: Callable[[Mapping[str, Any]], bool]) -> None:
    """Mark the scopes opened from now on whose tags satisfy ``predicate`` with ``key``
    (a profiling session's focus: the core gives it their queries)."""
    with _focus_lock:
        _focus_rules[key] = predicate


def remove_focus(key: object) -> None:
    with _focus_lock:
        _focus_rules.pop(key, None)


def _renew_lock_in_child() -> None:
    global _focus_lock
    _focus_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_lock_in_child)


def _focus_of(tags: Mapping[str, Any]) -> frozenset[object] | None:
    rules = list(_focus_rules.items())
    if not rules:
        return None
    keys = set()
    for key, predicate in rules:
        try:
            if predicate(tags):
                keys.add(key)
        except Exception as exc:  # noqa: BLE001 - the application's predicate: not focused
            _faults.report("scope: a session's focus predicate raised", exc)
    return frozenset(keys) if keys else None
