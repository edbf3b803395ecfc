"""querymeter.prometheus: a scrape reads one snapshot, the pools and the top statements."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import querymeter
from querymeter.meter import Meter as MeterType

from ..conftest import FakeClock
from .conftest import Expected, run_statements

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from querymeter.prometheus import Collector  # noqa: E402

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: Any) -> Samples:
    """Every sample of the registry's exposition, parsed back, by name and labels."""
    text = prometheus_client.generate_latest(registry).decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"{key} twice in one scrape"
            samples[key] = sample.value
    return samples


def registry_of(collector: Collector) -> Any:
    registry = prometheus_client.CollectorRegistry()
    registry.register(collector)
    return registry


def by_name(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def test_a_scrape_gives_the_meters_counters(scheduled: tuple[MeterType, Expected]) -> None:
    """Each counter of the meter comes out exactly, times in seconds, under its name and type."""
    meter, expected = scheduled
    samples = scrape(registry_of(Collector(meter)))
    assert samples[("querymeter_queries_total", ())] == expected.queries
    assert samples[("querymeter_errors_total", ())] == expected.errors
    assert samples[("querymeter_queries_in_flight", ())] == expected.concurrency
    assert samples[("querymeter_query_seconds_total", ())] == expected.total_ns / 1e9
    assert samples[("querymeter_busy_seconds_total", ())] == expected.busy_ns / 1e9
    assert samples[("querymeter_uptime_seconds", ())] == expected.uptime_ns / 1e9
    # The fake clock stands still: a snapshot taken after the scrape is the scrape's.
    snapshot = meter.snapshot()
    assert samples[("querymeter_query_seconds_total", ())] == snapshot.total_ns / 1e9
    assert samples[("querymeter_busy_seconds_total", ())] == snapshot.busy_ns / 1e9


def test_the_families_have_their_types(fake_meter: MeterType) -> None:
    """Counters are counters and gauges gauges, as the exposition declares them."""
    text = prometheus_client.generate_latest(registry_of(Collector(fake_meter))).decode()
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["querymeter_queries"] == "counter"
    assert types["querymeter_errors"] == "counter"
    assert types["querymeter_query_seconds"] == "counter"
    assert types["querymeter_busy_seconds"] == "counter"
    assert types["querymeter_queries_in_flight"] == "gauge"
    assert types["querymeter_uptime_seconds"] == "gauge"
    assert types["querymeter_pool_connections_in_use"] == "gauge"
    assert types["querymeter_pool_timeouts"] == "counter"


def test_a_scrape_reads_the_meter_once(fake_meter: MeterType, clock: FakeClock) -> None:
    """One scrape is one reading of the meter's clock; registering reads nothing."""
    collector = Collector(fake_meter)
    registry = prometheus_client.CollectorRegistry()
    before = clock.reads
    registry.register(collector)
    assert clock.reads == before
    scrape(registry)
    assert clock.reads == before + 1


def test_the_pools_of_the_meters_engines(
    fake_meter: MeterType, make_engine: Callable[..., Any], tmp_path: Any
) -> None:
    """A SQLite QueuePool with a connection held, one returned and one timeout, as SQLAlchemy
    counts them; another meter's engine is not in the scrape."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    path = tmp_path / "export_prom.db"
    engine = make_engine(
        f"sqlite:///{path}",
        poolclass=sqlalchemy.pool.QueuePool,
        pool_size=2,
        max_overflow=0,
        pool_timeout=0.01,
    )
    qs.instrument(engine, meter=fake_meter)
    other = make_engine(f"sqlite:///{tmp_path / 'export_prom_other.db'}")
    qs.instrument(other, meter=querymeter.Meter())
    held = engine.connect()
    engine.connect().close()
    second = engine.connect()
    with pytest.raises(sqlalchemy.exc.TimeoutError):
        engine.connect()
    second.close()
    try:
        samples = scrape(registry_of(Collector(fake_meter)))
        label = (("pool", f"sqlite:///{path}"),)
        assert by_name(samples, "querymeter_pool_connections_in_use") == {
            label: engine.pool.checkedout()
        }
        assert samples[("querymeter_pool_connections_in_use", label)] == 1
        assert samples[("querymeter_pool_connections_idle", label)] == engine.pool.checkedin() == 1
        assert samples[("querymeter_pool_connections_max", label)] == 2
        assert samples[("querymeter_pool_pending_requests", label)] == 0
        assert samples[("querymeter_pool_checkouts_total", label)] == 3
        assert samples[("querymeter_pool_timeouts_total", label)] == 1
        assert samples[("querymeter_pool_waits_total", label)] == 1
        # The pool counts on the meter's clock, which stands still: read again, the same.
        wait_ns = qs.pool_snapshot(engine).wait_ns
        assert samples[("querymeter_pool_wait_seconds_total", label)] == wait_ns / 1e9
    finally:
        held.close()


def test_a_pool_is_named_by_its_url_without_secrets(
    fake_meter: MeterType, make_engine: Callable[..., Any]
) -> None:
    """The pool label drops the password and the query string; no connection is made."""
    pytest.importorskip("psycopg")
    qs = pytest.importorskip("querymeter.sqlalchemy")
    engine = make_engine(
        "postgresql+psycopg://export_user:s3cret@127.0.0.1:1/export_db?sslpassword=k3y"
    )
    qs.instrument(engine, meter=fake_meter)
    text = prometheus_client.generate_latest(registry_of(Collector(fake_meter))).decode()
    assert 'pool="postgresql+psycopg://export_user:***@127.0.0.1:1/export_db"' in text
    assert "s3cret" not in text
    assert "k3y" not in text


def test_a_broken_engine_is_a_fault_and_the_rest_is_scraped(
    fake_meter: MeterType,
    make_engine: Callable[..., Any],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An engine whose pool cannot be read is left out and counted as a fault."""
    qs = pytest.importorskip("querymeter.sqlalchemy")
    broken = make_engine(f"sqlite:///{tmp_path / 'export_broken.db'}")
    working = make_engine(f"sqlite:///{tmp_path / 'export_working.db'}")
    qs.instrument(broken, meter=fake_meter)
    qs.instrument(working, meter=fake_meter)
    original = qs.pool_snapshot

    def pool_snapshot(engine: Any) -> Any:
        if engine is broken:
            raise RuntimeError("a broken pool")
        return original(engine)

    monkeypatch.setattr(qs, "pool_snapshot", pool_snapshot)
    before = querymeter.faults().get("prometheus: could not read an engine's pool", 0)
    samples = scrape(registry_of(Collector(fake_meter)))
    assert querymeter.faults()["prometheus: could not read an engine's pool"] == before + 1
    assert list(by_name(samples, "querymeter_pool_connections_in_use")) == [
        (("pool", f"sqlite:///{tmp_path / 'export_working.db'}"),)
    ]
    assert samples[("querymeter_queries_total", ())] == 0


def test_the_top_statements_by_time(fake_meter: MeterType, clock: FakeClock) -> None:
    """statements=K exports the K statements with the most time, by fingerprint id."""
    fake_meter.enable_statements()
    ran = run_statements(fake_meter, clock)
    samples = scrape(registry_of(Collector(fake_meter, statements=2)))
    exported = by_name(samples, "querymeter_statement_calls_total")
    # The two with the most time: the SELECT (6 s) and the UPDATE (2 s), not the DELETE.
    top = ["SELECT a FROM t WHERE id = 1", "UPDATE t SET a = 2"]
    expected = {}
    for sql in top:
        fingerprint = querymeter.fingerprint(sql)
        expected[
            (("fingerprint", fingerprint), ("fingerprint_id", querymeter.statement_id(fingerprint)))
        ] = ran[sql]
    assert set(exported) == set(expected)
    for labels, (calls, errors, total_ns) in expected.items():
        assert samples[("querymeter_statement_calls_total", labels)] == calls
        assert samples[("querymeter_statement_errors_total", labels)] == errors
        assert samples[("querymeter_statement_seconds_total", labels)] == total_ns / 1e9


def test_a_statement_leaving_the_top_leaves_the_scrape(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """When another statement overtakes it, a statement's series end."""
    fake_meter.enable_statements()
    run_statements(fake_meter, clock)
    registry = registry_of(Collector(fake_meter, statements=1))
    first = by_name(scrape(registry), "querymeter_statement_calls_total")
    assert [dict(labels)["fingerprint"] for labels in first] == [
        querymeter.fingerprint("SELECT a FROM t WHERE id = 1")
    ]
    with fake_meter.track("DELETE FROM t"):
        clock.advance(60 * 1_000_000_000)
    second = by_name(scrape(registry), "querymeter_statement_calls_total")
    assert [dict(labels)["fingerprint"] for labels in second] == [
        querymeter.fingerprint("DELETE FROM t")
    ]


def test_no_statements_without_a_table_or_without_k(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    """Without statement aggregation, or with statements=0, no statement family has samples."""
    run_statements(fake_meter, clock)
    assert not by_name(
        scrape(registry_of(Collector(fake_meter, statements=5))),
        "querymeter_statement_calls_total",
    )
    fake_meter.enable_statements()
    run_statements(fake_meter, clock)
    samples = scrape(registry_of(Collector(fake_meter)))
    assert not [key for key in samples if key[0].startswith("querymeter_statement")]


def test_a_broken_statement_table_is_a_fault(
    fake_meter: MeterType, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement table that cannot be read leaves the meter's counters in the scrape."""
    table = fake_meter.enable_statements()
    run_statements(fake_meter, clock)

    def top(self: Any, n: int = 10, by: str = "total") -> Any:
        raise RuntimeError("a broken table")

    monkeypatch.setattr(type(table), "top", top)
    cause = "prometheus: could not read the statement table"
    before = querymeter.faults().get(cause, 0)
    samples = scrape(registry_of(Collector(fake_meter, statements=3)))
    assert querymeter.faults()[cause] == before + 1
    assert samples[("querymeter_queries_total", ())] == 6  # 2 + 1 + 3 calls


def test_two_collectors_in_one_registry_are_refused(fake_meter: MeterType) -> None:
    """Their series would clash: the registry refuses the second."""
    registry = registry_of(Collector(fake_meter))
    with pytest.raises(ValueError, match="Duplicated"):
        registry.register(Collector(querymeter.Meter()))


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"statements": -1}, ValueError, "statements must be 0 or more, not -1"),
        ({"statements": "3"}, TypeError, "statements must be an int, not str"),
        ({"statements": True}, TypeError, "statements must be an int, not bool"),
        ({"meter": object()}, TypeError, "meter must be a querymeter.Meter, not object"),
    ],
)
def test_bad_arguments_are_refused(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A bad argument raises, naming the problem."""
    with pytest.raises(error, match=message):
        Collector(**kwargs)


def test_the_default_meter_by_default() -> None:
    """Without a meter, the collector reads the default meter."""
    assert Collector().meter is querymeter.default_meter()


def test_importing_querymeter_imports_no_exporter_library() -> None:
    """prometheus_client and OpenTelemetry load only with their exporter modules."""
    code = (
        "import sys, querymeter\n"
        "loaded = [m for m in sys.modules if m.startswith(('prometheus_client', "
        "'opentelemetry', 'querymeter.prometheus', 'querymeter.otel'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
