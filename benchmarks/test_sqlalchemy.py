"""SQLAlchemy: ``conn.exec_driver_sql("SELECT 1")`` on one SQLite in-memory connection, per variant.

Each variant has an engine of its own, because SQLAlchemy never resets its
"has events" flags once a listener was added, and their cost would leak into
the next variant:

- plain engine (the baseline);
- two empty ``before_cursor_execute`` / ``after_cursor_execute`` listeners;
- querymeter, C core and pure-Python core (``querymeter.sqlalchemy.instrument``);
- opentelemetry-instrumentation-sqlalchemy without an SDK (no-op tracer and
  meter providers), instrumented and uninstrumented around the benchmark.

Goals (issue: SQLAlchemy integration): querymeter adds at most one fifth of
what the two empty listeners add, and at most one fifteenth of what
OpenTelemetry's SQLAlchemy instrumentation adds.

The added costs are a few hundred nanoseconds against a statement of about
10 us, so the drift of a shared machine between one benchmark and the next can
swamp them in the ratio table.  ``test_added_cost_interleaved`` measures the
same variants in turn, round after round, and prints the added cost of each
and querymeter's fraction of the peers': the figures to check the goals with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .conftest import (
    OPS,
    interleaved_medians,
    load_meter_class,
    mark_baseline,
    print_interleaved,
    quick_mode,
)

sqlalchemy = pytest.importorskip("sqlalchemy")
qs = pytest.importorskip("querymeter.sqlalchemy")

RANGE = range(OPS)
WARM_UP = 5 * OPS
SQL = "SELECT 1"
URL = "sqlite://"

# A variant: makes a fresh engine ready to benchmark, and undoes what it did.
Variant = Callable[[], Iterator[Any]]


def plain() -> Iterator[Any]:
    yield sqlalchemy.create_engine(URL)


def two_empty_listeners() -> Iterator[Any]:
    engine = sqlalchemy.create_engine(URL)

    def before_cursor_execute(*args: Any) -> None:
        pass

    def after_cursor_execute(*args: Any) -> None:
        pass

    sqlalchemy.event.listen(engine, "before_cursor_execute", before_cursor_execute)
    sqlalchemy.event.listen(engine, "after_cursor_execute", after_cursor_execute)
    yield engine


def querymeter_engine(implementation: str) -> Variant:
    def make() -> Iterator[Any]:
        meter = load_meter_class(implementation)()
        engine = sqlalchemy.create_engine(URL)
        qs.instrument(engine, meter=meter)
        yield engine
        qs.uninstrument(engine)

    return make


def opentelemetry_no_sdk() -> Iterator[Any]:
    otel_sqlalchemy = pytest.importorskip("opentelemetry.instrumentation.sqlalchemy")
    from opentelemetry import metrics, trace

    engine = sqlalchemy.create_engine(URL)
    instrumentor = otel_sqlalchemy.SQLAlchemyInstrumentor()
    instrumentor.instrument(
        engine=engine,
        tracer_provider=trace.NoOpTracerProvider(),
        meter_provider=metrics.NoOpMeterProvider(),
        # Its declared dependency stops short of SQLAlchemy 2.1.
        skip_dep_check=True,
    )
    yield engine
    instrumentor.uninstrument()


VARIANTS: dict[str, Variant] = {
    "plain": plain,
    "two-empty-listeners": two_empty_listeners,
    "querymeter-c": querymeter_engine("c"),
    "querymeter-python": querymeter_engine("python"),
    "opentelemetry-no-sdk": opentelemetry_no_sdk,
}


@pytest.fixture(params=list(VARIANTS))
def connection(request: pytest.FixtureRequest, benchmark: Any) -> Iterator[Any]:
    """One connection of the variant's fresh engine, warmed up."""
    if request.param == "plain":
        mark_baseline(benchmark)
    variant = VARIANTS[request.param]()
    engine = next(variant)
    with engine.connect() as connection:
        # The first connect, the statement cache and the interpreter, warm.
        for _ in range(WARM_UP):
            connection.exec_driver_sql(SQL)
        yield connection
    next(variant, None)
    engine.dispose()


@pytest.mark.benchmark(group="sqlalchemy: exec_driver_sql('SELECT 1')", min_rounds=100, warmup=True)
def test_exec_driver_sql(benchmark: Any, connection: Any) -> None:
    """conn.exec_driver_sql("SELECT 1") on one connection."""
    execute = connection.exec_driver_sql

    def run() -> None:
        for _ in RANGE:
            execute(SQL)

    benchmark(run)


INTERLEAVED_ROUNDS = 51


def test_added_cost_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every variant in turn, round after round: each one's added cost per statement."""
    quick = quick_mode(request.config)
    with contextlib.ExitStack() as stack:
        runs: dict[str, Callable[[], None]] = {}
        for name, variant in VARIANTS.items():
            steps = variant()
            engine = next(steps)
            # Undone in reverse: the connection closed, the variant undone, the engine disposed.
            stack.callback(engine.dispose)
            stack.callback(next, steps, None)
            connection = stack.enter_context(engine.connect())
            for _ in range(WARM_UP):
                connection.exec_driver_sql(SQL)
            runs[name] = _statements(connection.exec_driver_sql)
        medians = interleaved_medians(runs, 1 if quick else INTERLEAVED_ROUNDS)
    if quick:
        return
    print_interleaved("sqlalchemy, exec_driver_sql('SELECT 1')", medians, "plain", capsys)
    added = {name: median - medians["plain"] for name, median in medians.items()}
    lines = []
    for peer in ("two-empty-listeners", "opentelemetry-no-sdk"):
        for ours in ("querymeter-c", "querymeter-python"):
            fraction = added[ours] / added[peer] if added[peer] > 0 else float("nan")
            lines.append(f"  {ours} adds {fraction:6.3f} of what {peer} adds")
    with capsys.disabled():
        print("\n".join(lines))


def _statements(execute: Callable[[str], Any]) -> Callable[[], None]:
    def run() -> None:
        for _ in RANGE:
            execute(SQL)

    return run
