"""OpenTelemetry export: observable instruments that read a meter at every collection.

>>> import querymeter.otel
>>> instrumentation = querymeter.otel.instrument_metrics()  # doctest: +SKIP
>>> instrumentation.uninstrument()  # doctest: +SKIP

The instruments are read from one reading per collection (one
``meter.snapshot()``, the pools of the SQLAlchemy engines instrumented with
the meter, and the top statements), however many instruments there are.
See docs/export.md.

Importing ``querymeter`` never imports OpenTelemetry; importing this module does
(the API only: the SDK, readers and exporters are the application's choice).
"""

from __future__ import annotations

import importlib.metadata
import os
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
from .meter import Meter, meter_argument
from .readings import Snapshot
from .statements import StatementStats

__all__ = ["MAX_POOLS", "MAX_SUMMARY_CHARS", "MetricsInstrumentation", "instrument_metrics"]

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

    def __init__(self, meter_provider: Any, meter: Meter, statements: int) -> None:
        self.meter_provider = meter_provider
        self.meter = meter
        self.statements = statements
        self.active = True
        self._rounds = _Rounds(self._read)

    def uninstrument(self) -> None:
        """Stop observing: the instruments report nothing from the next collection on.

        The OpenTelemetry API cannot take an instrument out of its provider:
        they stay registered, empty, until ``instrument_metrics()`` is called
        again with the provider.  Calling it again does nothing.
        """
        with _lock:
            self.active = False
            observed = _observed.get(self.meter_provider)
            if observed is not None and observed.current is self:
                observed.current = None

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
            f"statements={self.statements}>"
        )


class _Observed:
    """The instruments registered with one provider, once: they observe its
    current instrumentation, if any.

    A provider keeps the first instrument of a name and ignores the callbacks
    of a second, so instrumenting a provider again reuses these.
    """

    def __init__(self) -> None:
        self.current: MetricsInstrumentation | None = None

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
    global _lock
    _lock = threading.Lock()
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
) -> MetricsInstrumentation:
    """Register observable instruments for ``meter`` (the default meter if None)
    with ``meter_provider`` (the global one if None).

    ``statements`` is how many statements, those with the most total time in
    ``meter.statements`` (when statement aggregation is on), are observed by
    fingerprint; 0 for none.  One instrumentation per provider at a time:
    again while one is active raises ValueError.  Returns the
    instrumentation; its ``uninstrument()`` ends it.
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
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    with _lock:
        observed = _observed.get(provider)
        if observed is None:
            observed = _Observed()
            _register(observed, provider.get_meter("querymeter", _version()))
            _observed[provider] = observed
        elif observed.current is not None:
            raise ValueError(
                "this meter provider already observes a querymeter meter; call "
                "uninstrument() on its instrumentation first"
            )
        instrumentation = MetricsInstrumentation(provider, counted, statements)
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
