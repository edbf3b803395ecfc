"""Prometheus export: a custom collector that reads a meter at every scrape.

>>> import prometheus_client, querymeter.prometheus
>>> prometheus_client.REGISTRY.register(querymeter.prometheus.Collector())  # doctest: +SKIP
>>> prometheus_client.start_http_server(9464)  # doctest: +SKIP

Each scrape takes one ``meter.snapshot()``, so the meter's figures of one
scrape are of one instant; the pools of the SQLAlchemy engines instrumented
with the meter and, with ``statements=K``, the K statements with the most time
are read right after it.  Nothing is kept between scrapes.  See docs/export.md.

Importing ``querymeter`` never imports prometheus_client; importing this module does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "querymeter.prometheus needs prometheus_client: pip install 'querymeter[prometheus]'"
    ) from exc

from . import _faults
from ._pools import MAX_POOLS, pool_limit, pool_snapshots
from .meter import Meter, meter_argument
from .readings import Snapshot
from .statements import StatementStats

__all__ = ["MAX_FINGERPRINT_CHARS", "MAX_POOLS", "Collector"]

_NS_PER_S = 1e9

#: A fingerprint is cut to this many characters in the ``fingerprint`` label.
MAX_FINGERPRINT_CHARS = 200
#: At most this many engines' pools are exported per meter (the rest are a fault).


class Collector:
    """Collector(meter=None, *, statements=0): the figures of ``meter`` (the default
    meter if None) for a prometheus_client registry.

    ``statements=K`` adds the K statements with the most total time in
    ``meter.statements`` (when statement aggregation is on), labelled by
    ``fingerprint_id``; a statement that leaves the top K leaves the scrape.
    Register it once per registry: ``registry.register(Collector(meter))``.
    """

    __slots__ = ("meter", "statements")

    def __init__(self, meter: Meter | None = None, *, statements: int = 0) -> None:
        if isinstance(statements, bool) or not isinstance(statements, int):
            raise TypeError(f"statements must be an int, not {type(statements).__name__}")
        if statements < 0:
            raise ValueError(f"statements must be 0 or more, not {statements}")
        self.meter = meter_argument(meter)
        self.statements = statements

    def describe(self) -> list[Metric]:
        """Every family this collector can yield, without samples and without reading the meter.

        The registry checks the names for duplicates at ``register()``.
        """
        return list(_families(self.statements > 0).values())

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape: the meter, its engines' pools, its top statements."""
        snapshot = self.meter.snapshot()
        families = _families(self.statements > 0)
        _add_meter(families, snapshot)
        _add_pools(families, self.meter)
        if self.statements:
            _add_statements(families, self.meter, self.statements)
        return iter(families.values())

    def __repr__(self) -> str:
        return (
            f"<querymeter.prometheus.Collector meter={self.meter!r} statements={self.statements}>"
        )


def _families(with_statements: bool) -> dict[str, Metric]:
    pool = ["pool"]
    statement = ["fingerprint_id", "fingerprint"]
    families: list[Metric] = [
        CounterMetricFamily("querymeter_queries", "Queries completed (with an error or not)."),
        CounterMetricFamily("querymeter_errors", "Queries that raised."),
        CounterMetricFamily(
            "querymeter_query_seconds",
            "Time spent in queries, summed over queries, in-flight time included.",
            unit="seconds",
        ),
        CounterMetricFamily(
            "querymeter_busy_seconds",
            "Time with at least one query executing, the time up to the scrape included.",
            unit="seconds",
        ),
        GaugeMetricFamily("querymeter_queries_in_flight", "Queries executing now."),
        GaugeMetricFamily(
            "querymeter_uptime_seconds", "Time since the meter started.", unit="seconds"
        ),
        GaugeMetricFamily(
            "querymeter_pool_connections_in_use", "Connections checked out now.", labels=pool
        ),
        GaugeMetricFamily(
            "querymeter_pool_connections_idle", "Connections idle in the pool now.", labels=pool
        ),
        GaugeMetricFamily(
            "querymeter_pool_connections_max",
            "Connections the pool may open (size + max_overflow).",
            labels=pool,
        ),
        GaugeMetricFamily(
            "querymeter_pool_pending_requests",
            "Checkouts waiting for a connection now.",
            labels=pool,
        ),
        CounterMetricFamily(
            "querymeter_pool_checkouts", "Checkouts that gave a connection.", labels=pool
        ),
        CounterMetricFamily(
            "querymeter_pool_waits", "Checkouts that had to wait for a connection.", labels=pool
        ),
        CounterMetricFamily(
            "querymeter_pool_wait_seconds",
            "Time checkouts spent waiting for a connection, waits under way included.",
            labels=pool,
            unit="seconds",
        ),
        CounterMetricFamily(
            "querymeter_pool_timeouts", "Checkouts that gave up waiting.", labels=pool
        ),
    ]
    if with_statements:
        families += [
            CounterMetricFamily(
                "querymeter_statement_calls",
                "Calls of one of the statements with the most time.",
                labels=statement,
            ),
            CounterMetricFamily(
                "querymeter_statement_errors",
                "Calls that raised, of one of the statements with the most time.",
                labels=statement,
            ),
            CounterMetricFamily(
                "querymeter_statement_seconds",
                "Time spent in one of the statements with the most time.",
                labels=statement,
                unit="seconds",
            ),
        ]
    return {family.name: family for family in families}


def _add_meter(families: dict[str, Any], snapshot: Snapshot) -> None:
    families["querymeter_queries"].add_metric([], snapshot.queries)
    families["querymeter_errors"].add_metric([], snapshot.errors)
    families["querymeter_query_seconds"].add_metric([], snapshot.total_ns / _NS_PER_S)
    families["querymeter_busy_seconds"].add_metric([], snapshot.busy_ns / _NS_PER_S)
    families["querymeter_queries_in_flight"].add_metric([], snapshot.concurrency)
    families["querymeter_uptime_seconds"].add_metric([], snapshot.uptime_ns / _NS_PER_S)


def _add_pools(families: dict[str, Any], meter: Meter) -> None:
    for name, pool in pool_snapshots(meter, "prometheus"):
        labels = [name]
        families["querymeter_pool_connections_in_use"].add_metric(labels, pool.in_use)
        if pool.idle is not None:
            families["querymeter_pool_connections_idle"].add_metric(labels, pool.idle)
        limit = pool_limit(pool)
        if limit is not None:
            families["querymeter_pool_connections_max"].add_metric(labels, limit)
        families["querymeter_pool_pending_requests"].add_metric(labels, pool.waiting)
        families["querymeter_pool_checkouts"].add_metric(labels, pool.checkouts)
        families["querymeter_pool_waits"].add_metric(labels, pool.waits)
        families["querymeter_pool_wait_seconds"].add_metric(labels, pool.wait_ns / _NS_PER_S)
        families["querymeter_pool_timeouts"].add_metric(labels, pool.timeouts)


def _add_statements(families: dict[str, Any], meter: Meter, count: int) -> None:
    top: list[StatementStats] = []
    try:
        table = meter.statements
        if table is not None:
            top = table.top(count, by="total")
    except Exception as exc:  # noqa: BLE001 - the meter's figures still go out
        _faults.report("prometheus: could not read the statement table", exc)
    for stats in top:
        labels = [stats.statement_id, stats.fingerprint[:MAX_FINGERPRINT_CHARS]]
        families["querymeter_statement_calls"].add_metric(labels, stats.calls)
        families["querymeter_statement_errors"].add_metric(labels, stats.errors)
        families["querymeter_statement_seconds"].add_metric(labels, stats.total_ns / _NS_PER_S)
