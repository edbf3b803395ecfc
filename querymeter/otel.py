"""OpenTelemetry export: observable instruments that read a meter at every collection.

>>> import querymeter.otel
>>> instrumentation = querymeter.otel.instrument_metrics()  # doctest: +SKIP
>>> instrumentation.uninstrument()  # doctest: +SKIP

The instruments are read from one reading per collection (one
``meter.snapshot()``, the pools of the SQLAlchemy engines instrumented with
the meter, and the top statements), however many instruments there are.
With ``histogram=True``, each query the meter counts is also recorded, as it
ends, in the ``db.client.operation.duration`` histogram.
See docs/export.md.

Importing ``querymeter`` never imports OpenTelemetry; importing this module does
(the API only: the SDK, readers and exporters are the application's choice).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

try:
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "querymeter.otel needs the OpenTelemetry API: pip install 'querymeter[otel]'"
    ) from exc

from . import _faults
from ._pools import MAX_POOLS, pool_limit, pool_snapshots
from .meter import Meter, QueryObserver, add_query_observer, meter_argument, remove_query_observer
from .readings import Snapshot
from .statements import StatementStats, fingerprint, tables_of
from .statements._fingerprint import DIALECTS

__all__ = [
    "DURATION_BUCKETS",
    "MAX_COLLECTIONS",
    "MAX_OPERATIONS",
    "MAX_POOLS",
    "MAX_SUMMARY_CHARS",
    "MetricsInstrumentation",
    "instrument_metrics",
]

_NS_PER_S = 1e9

#: A fingerprint is cut to this many characters in the ``db.query.summary`` attribute.
MAX_SUMMARY_CHARS = 200
#: At most this many engines' pools are exported per meter (the rest are a fault).

# Attribute names of the OpenTelemetry semantic conventions for databases.
POOL_NAME = "db.client.connection.pool.name"
CONNECTION_STATE = "db.client.connection.state"
QUERY_SUMMARY = "db.query.summary"
# Ours: tells apart two statements whose summaries were cut to the same text.
STATEMENT_ID = "querymeter.statement.id"

OPERATION_DURATION = "db.client.operation.duration"
#: The bucket boundaries, s, the semantic conventions advise for ``db.client.operation.duration``.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
SYSTEM_NAME = "db.system.name"
OPERATION_NAME = "db.operation.name"
COLLECTION_NAME = "db.collection.name"
ERROR_TYPE = "error.type"
# The conventions' value for an error whose type is not known (end(token, error=True)).
OTHER_ERROR = "_OTHER"
# db.system.name by the dialect a hook gives its statements (the conventions' values).
_SYSTEM_NAMES = {
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "sqlite": "sqlite",
}


class _Reading(NamedTuple):
    """What one collection observes: read together, once."""

    snapshot: Snapshot
    pools: list[tuple[str, Any]]
    statements: list[StatementStats]


class _Rounds:
    """One reading per collection, whatever order the instruments are called in.

    The SDK calls each instrument's callback once per collection, one after
    the other.  A reading is handed to every instrument until one of them
    asks a second time: that is the next collection, which takes a new
    reading.  So the instruments of one collection see one reading, and no
    collection sees a reading of an earlier one.
    """

    def __init__(self, read: Callable[[], _Reading]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._reading: _Reading | None = None
        self._served: set[str] = set()

    def reading(self, instrument: str) -> _Reading:
        with self._lock:
            if self._reading is None or instrument in self._served:
                # Cleared first: a reading that raises is not served again.
                self._reading, self._served = None, set()
                self._reading = self._read()
            self._served.add(instrument)
            return self._reading

    def renew_after_fork(self) -> None:
        # A parent's thread may have held the lock at the fork, and the
        # reading is of the parent's meter.
        self._lock = threading.Lock()
        self._reading, self._served = None, set()


class MetricsInstrumentation:
    """What :func:`instrument_metrics` started; ``uninstrument()`` ends it."""

    def __init__(self, meter_provider: Any, meter: Meter, statements: int, histogram: bool) -> None:
        self.meter_provider = meter_provider
        self.meter = meter
        self.statements = statements
        self.histogram = histogram
        self.active = True
        self._rounds = _Rounds(self._read)
        # What the meter calls with each query while histogram=True: kept, to take it out.
        self._observer: QueryObserver | None = None

    def uninstrument(self) -> None:
        """Stop observing: the instruments report nothing from the next collection on.

        The OpenTelemetry API cannot take an instrument out of its provider:
        they stay registered, empty, until ``instrument_metrics()`` is called
        again with the provider.  The histogram records no query from now on.
        Calling it again does nothing.
        """
        with _lock:
            self.active = False
            observed = _observed.get(self.meter_provider)
            if observed is not None and observed.current is self:
                observed.current = None
            observer, self._observer = self._observer, None
            if observer is not None:
                remove_query_observer(self.meter, observer)

    def _read(self) -> _Reading:
        snapshot = self.meter.snapshot()
        pools = pool_snapshots(self.meter, "otel")
        top: list[StatementStats] = []
        if self.statements:
            try:
                table = self.meter.statements
                if table is not None:
                    top = table.top(self.statements, by="total")
            except Exception as exc:  # noqa: BLE001 - the meter's figures still go out
                _faults.report("otel: could not read the statement table", exc)
        return _Reading(snapshot, pools, top)

    def __repr__(self) -> str:
        state = "active" if self.active else "ended"
        return (
            f"<querymeter.otel.MetricsInstrumentation {state} meter={self.meter!r} "
            f"statements={self.statements} histogram={self.histogram}>"
        )


class _Observed:
    """The instruments registered with one provider, once: they observe its
    current instrumentation, if any.

    A provider keeps the first instrument of a name and ignores the callbacks
    of a second, so instrumenting a provider again reuses these.
    """

    def __init__(self, otel: Any) -> None:
        self.current: MetricsInstrumentation | None = None
        self.otel = otel  # the provider's Meter named "querymeter"
        self._histogram: Any = None

    def histogram(self) -> Any:
        """The duration histogram, made the first time it is asked for; caller holds _lock."""
        if self._histogram is None:
            self._histogram = self.otel.create_histogram(
                OPERATION_DURATION,
                unit="s",
                description="Duration of database client operations.",
                explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
            )
        return self._histogram

    def callback(
        self, name: str, observe: Callable[[_Reading], Iterable[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            instrumentation = self.current
            if instrumentation is None:
                return []
            try:
                return list(observe(instrumentation._rounds.reading(name)))
            except Exception as exc:  # noqa: BLE001 - never raise into the SDK's collection
                _faults.report(f"otel: could not observe {name}", exc)
                return []

        return callback


_lock = threading.Lock()
_live: weakref.WeakSet[MetricsInstrumentation] = weakref.WeakSet()
_observed: weakref.WeakKeyDictionary[Any, _Observed] = weakref.WeakKeyDictionary()


def _after_fork_in_child() -> None:
    global _lock, _attributes
    _lock = threading.Lock()
    _attributes = {}
    for instrumentation in list(_live):
        instrumentation._rounds.renew_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _version() -> str | None:
    try:
        return importlib.metadata.version("querymeter")
    except importlib.metadata.PackageNotFoundError:
        return None


def instrument_metrics(
    meter_provider: metrics.MeterProvider | None = None,
    *,
    meter: Meter | None = None,
    statements: int = 10,
    histogram: bool = False,
) -> MetricsInstrumentation:
    """Register observable instruments for ``meter`` (the default meter if None)
    with ``meter_provider`` (the global one if None).

    ``statements`` is how many statements, those with the most total time in
    ``meter.statements`` (when statement aggregation is on), are observed by
    fingerprint; 0 for none.  ``histogram=True`` also records each query the
    meter counts, as it ends, in the ``db.client.operation.duration``
    histogram (s, the conventions' buckets ``DURATION_BUCKETS``), with
    ``db.system.name``, ``db.operation.name`` and ``db.collection.name`` where
    the hook knows the statement, and ``error.type`` when it failed; this costs
    the SDK's recording on every query (see docs/export.md).  One
    instrumentation per provider at a time: again while one is active raises
    ValueError.  Returns the instrumentation; its ``uninstrument()`` ends it.
    """
    if meter_provider is not None and not isinstance(meter_provider, metrics.MeterProvider):
        raise TypeError(
            "meter_provider must be an opentelemetry.metrics.MeterProvider, not "
            f"{type(meter_provider).__name__}"
        )
    counted = meter_argument(meter)
    if isinstance(statements, bool) or not isinstance(statements, int):
        raise TypeError(f"statements must be an int, not {type(statements).__name__}")
    if statements < 0:
        raise ValueError(f"statements must be 0 or more, not {statements}")
    if not isinstance(histogram, bool):
        raise TypeError(f"histogram must be a bool, not {type(histogram).__name__}")
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    with _lock:
        observed = _observed.get(provider)
        if observed is None:
            observed = _Observed(provider.get_meter("querymeter", _version()))
            _register(observed, observed.otel)
            _observed[provider] = observed
        elif observed.current is not None:
            raise ValueError(
                "this meter provider already observes a querymeter meter; call "
                "uninstrument() on its instrumentation first"
            )
        instrumentation = MetricsInstrumentation(provider, counted, statements, histogram)
        if histogram:
            instrumentation._observer = _duration_recorder(observed.histogram())
            add_query_observer(counted, instrumentation._observer)
        observed.current = instrumentation
        _live.add(instrumentation)
    return instrumentation


def _register(observed: _Observed, otel: Any) -> None:
    def register(
        create: Callable[..., Any],
        name: str,
        unit: str,
        description: str,
        observe: Callable[[_Reading], Iterable[Observation]],
    ) -> None:
        create(
            name, callbacks=[observed.callback(name, observe)], unit=unit, description=description
        )

    counter = otel.create_observable_counter
    up_down = otel.create_observable_up_down_counter
    gauge = otel.create_observable_gauge

    register(
        counter,
        "db.client.querymeter.queries",
        "{query}",
        "Queries completed (with an error or not).",
        lambda r: [Observation(r.snapshot.queries)],
    )
    register(
        counter,
        "db.client.querymeter.errors",
        "{error}",
        "Queries that raised.",
        lambda r: [Observation(r.snapshot.errors)],
    )
    register(
        counter,
        "db.client.querymeter.total_time",
        "s",
        "Time spent in queries, summed over queries, in-flight time included.",
        lambda r: [Observation(r.snapshot.total_ns / _NS_PER_S)],
    )
    register(
        counter,
        "db.client.querymeter.busy_time",
        "s",
        "Time with at least one query executing, up to the collection.",
        lambda r: [Observation(r.snapshot.busy_ns / _NS_PER_S)],
    )
    register(
        up_down,
        "db.client.querymeter.in_flight",
        "{query}",
        "Queries executing now.",
        lambda r: [Observation(r.snapshot.concurrency)],
    )
    register(
        gauge,
        "db.client.querymeter.uptime",
        "s",
        "Time since the meter started.",
        lambda r: [Observation(r.snapshot.uptime_ns / _NS_PER_S)],
    )
    register(
        up_down,
        "db.client.connection.count",
        "{connection}",
        "The number of connections that are currently in the state of the state attribute.",
        _connection_count,
    )
    register(
        up_down,
        "db.client.connection.idle.max",
        "{connection}",
        "The maximum number of idle open connections allowed.",
        lambda r: [
            Observation(pool.size, {POOL_NAME: name})
            for name, pool in r.pools
            if pool.size is not None
        ],
    )
    register(
        up_down,
        "db.client.connection.max",
        "{connection}",
        "The maximum number of open connections allowed.",
        lambda r: [
            Observation(limit, {POOL_NAME: name})
            for name, pool in r.pools
            if (limit := pool_limit(pool)) is not None
        ],
    )
    register(
        up_down,
        "db.client.connection.pending_requests",
        "{request}",
        "The number of current pending requests for an open connection.",
        lambda r: [Observation(pool.waiting, {POOL_NAME: name}) for name, pool in r.pools],
    )
    register(
        counter,
        "db.client.connection.timeouts",
        "{timeout}",
        "The number of connection timeouts that have occurred trying to obtain a "
        "connection from the pool.",
        lambda r: [Observation(pool.timeouts, {POOL_NAME: name}) for name, pool in r.pools],
    )
    # Registered whatever ``statements``: a provider is instrumented anew only once.
    register(
        counter,
        "db.client.querymeter.statement.time",
        "s",
        "Time spent in one of the statements with the most time.",
        lambda r: [
            Observation(s.total_ns / _NS_PER_S, _statement_attributes(s)) for s in r.statements
        ],
    )
    register(
        counter,
        "db.client.querymeter.statement.calls",
        "{call}",
        "Calls of one of the statements with the most time.",
        lambda r: [Observation(s.calls, _statement_attributes(s)) for s in r.statements],
    )
    register(
        counter,
        "db.client.querymeter.statement.errors",
        "{error}",
        "Calls that raised, of one of the statements with the most time.",
        lambda r: [Observation(s.errors, _statement_attributes(s)) for s in r.statements],
    )


def _connection_count(reading: _Reading) -> list[Observation]:
    observations = []
    for name, pool in reading.pools:
        observations.append(Observation(pool.in_use, {POOL_NAME: name, CONNECTION_STATE: "used"}))
        if pool.idle is not None:
            observations.append(Observation(pool.idle, {POOL_NAME: name, CONNECTION_STATE: "idle"}))
    return observations


def _statement_attributes(stats: StatementStats) -> dict[str, str]:
    return {
        QUERY_SUMMARY: stats.fingerprint[:MAX_SUMMARY_CHARS],
        STATEMENT_ID: stats.statement_id,
    }


# ------------------------------------------------------------ the histogram

# The attributes of each statement text, by (text, dialect): a repeated
# statement costs one dictionary lookup.  Bounded: emptied when full (a
# workload of more distinct texts pays the fingerprint's cache lookup again).
_ATTRIBUTES_MAX_ENTRIES = 10_000
_ATTRIBUTES_MAX_TEXT_CHARS = 16_384
_attributes: dict[tuple[object, object], dict[str, str]] = {}
# Every distinct value is a series of its own in the SDK, for the life of the
# process: past these many distinct names, a new one is left out.
#: At most this many distinct ``db.operation.name`` values are exported per process.
MAX_OPERATIONS = 100
#: At most this many distinct ``db.collection.name`` values are exported per process.
MAX_COLLECTIONS = 1000
_operations: set[str] = set()
_collections: set[str] = set()
_error_names: dict[type, str] = {}
_ERROR_NAMES_MAX = 256

# A statement's first word; then, after WITH, the first word at depth 0 that is
# a statement of its own (the CTEs' bodies are in parentheses).
_FIRST_WORD = re.compile(r"[(\s]*([a-z]+)\b")
_WORD_OR_PAREN = re.compile(r"[()]|\b[a-z]+\b")
_AFTER_WITH = frozenset({"select", "insert", "update", "delete", "merge"})


def _duration_recorder(histogram: Any) -> QueryObserver:
    """The meter's observer that records each query in ``histogram``, in seconds."""
    record = histogram.record

    def record_duration(
        sql: Any,
        dialect: str | None,
        elapsed_ns: int,
        error: bool,
        error_type: type[BaseException] | None,
    ) -> None:
        try:
            attributes = _attributes[sql, dialect]
        except (KeyError, TypeError):  # TypeError: a text that cannot be a key
            attributes = _query_attributes(sql, dialect)
        if error:
            attributes = {**attributes, ERROR_TYPE: _error_name(error_type)}
        record(elapsed_ns / _NS_PER_S, attributes)

    return record_duration


def _query_attributes(sql: Any, dialect: str | None) -> dict[str, str]:
    """db.system.name from the dialect, db.operation.name and db.collection.name
    from the statement's fingerprint; cached by text and dialect."""
    attributes: dict[str, str] = {}
    system = _SYSTEM_NAMES.get(dialect) if isinstance(dialect, str) else None
    if system is not None:
        attributes[SYSTEM_NAME] = system
    if isinstance(sql, (str, bytes)) and sql:
        try:
            statement = fingerprint(sql, dialect if dialect in DIALECTS else None)
        except Exception as exc:  # noqa: BLE001 - the duration goes out without them
            _faults.report("otel: could not fingerprint a statement", exc)
        else:
            operation = _operation_name(statement)
            if operation is not None and _bounded(_operations, operation, MAX_OPERATIONS):
                attributes[OPERATION_NAME] = operation
            # The conventions want the collection only when the call is on one.
            tables = tables_of(statement)
            if len(tables) == 1 and _bounded(_collections, tables[0], MAX_COLLECTIONS):
                attributes[COLLECTION_NAME] = tables[0]
        if len(sql) <= _ATTRIBUTES_MAX_TEXT_CHARS:
            cache = _attributes
            if len(cache) >= _ATTRIBUTES_MAX_ENTRIES:
                cache.clear()
            cache[sql, dialect] = attributes
    return attributes


def _bounded(seen: set[str], name: str, limit: int) -> bool:
    """Whether ``name`` may be exported: seen before, or one of the first ``limit``."""
    if name in seen:
        return True
    if len(seen) >= limit:
        return False
    seen.add(name)
    return True


def _operation_name(statement: str) -> str | None:
    """The statement's operation, upper case (SELECT, INSERT, CREATE...), from its
    fingerprint; None for several statements, whose call has no single operation."""
    if ";" in statement.rstrip("; "):
        return None
    first = _FIRST_WORD.match(statement)
    if first is None:
        return None
    word: str | None = first.group(1)
    if word == "with":
        word, depth = None, 0
        for token in _WORD_OR_PAREN.finditer(statement, first.end()):
            text = token.group()
            if text == "(":
                depth += 1
            elif text == ")":
                depth -= 1
            elif depth == 0 and text in _AFTER_WITH:
                word = text
                break
    return None if word is None else word.upper()


def _error_name(error_type: type[BaseException] | None) -> str:
    """error.type: the exception class's module-qualified name (builtins bare)."""
    if error_type is None:
        return OTHER_ERROR
    try:
        return _error_names[error_type]
    except KeyError:
        pass
    module = getattr(error_type, "__module__", None)
    name = getattr(error_type, "__qualname__", None) or error_type.__name__
    if isinstance(module, str) and module != "builtins":
        name = f"{module}.{name}"
    if len(_error_names) >= _ERROR_NAMES_MAX:
        _error_names.clear()
    _error_names[error_type] = name
    return name
