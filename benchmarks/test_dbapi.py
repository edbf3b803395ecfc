"""DB-API hooks on sqlite3 in memory, with a reused cursor, beside the raw driver and peers.

Two workloads: ``cursor.execute("SELECT 1")`` alone, and the round trip that
applications make: execute, ``fetchall()`` and one read of ``rowcount``.  Each
variant runs both, in one run, against the raw driver as baseline:

- querymeter, C core and pure-Python core (instrumented sqlite3.connect);
- a hand-written wrapt ObjectProxy around the cursor with pure-Python accounting;
- prometheus_client: a Histogram and a Gauge around execute;
- opentelemetry-instrumentation-dbapi without an SDK, and with an SDK TracerProvider.

Goals (issue: DB-API hooks): with the C core, at most +0.25 us on execute alone
and +0.3 us on the round trip, and at most 1/40 of what OpenTelemetry's dbapi
instrumentation adds without an SDK.

Then asyncpg (``fetchval``) and mysqlclient (execute + ``fetchall``) on the real
PostgreSQL and MariaDB servers: raw driver, querymeter on each core, and
OpenTelemetry's asyncpg and mysqlclient instrumentations without and with an SDK;
and the cost of asyncpg's counting method alone, without a server.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import querymeter.dbapi

from .conftest import (
    OPS,
    interleaved_medians,
    load_meter_class,
    mark_baseline,
    print_interleaved,
    quick_mode,
)

RANGE = range(OPS)
SQL = "SELECT 1"


def raw_cursor() -> Any:
    return sqlite3.connect(":memory:").cursor()


def querymeter_cursor(implementation: str) -> Callable[[], Any]:
    def make() -> Any:
        meter = load_meter_class(implementation)()
        querymeter.dbapi.instrument(sqlite3, meter=meter)
        try:
            return sqlite3.connect(":memory:").cursor()
        finally:
            querymeter.dbapi.uninstrument(sqlite3)

    return make


def wrapt_cursor() -> Any:
    """A hand-written wrapt proxy, accounting in pure Python under a lock."""
    import wrapt

    class Stats:
        lock = threading.Lock()
        in_flight = 0
        queries = 0
        total_ns = 0

    class AccountingCursor(wrapt.ObjectProxy):  # type: ignore[misc]
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter_ns()
            with Stats.lock:
                Stats.in_flight += 1
            try:
                self.__wrapped__.execute(*args, **kwargs)
                return self
            finally:
                elapsed = time.perf_counter_ns() - start
                with Stats.lock:
                    Stats.in_flight -= 1
                    Stats.queries += 1
                    Stats.total_ns += elapsed

    return AccountingCursor(raw_cursor())


def prometheus_cursor() -> Any:
    """prometheus_client's Histogram and Gauge around execute, as its docs show."""
    from prometheus_client import CollectorRegistry, Gauge, Histogram

    registry = CollectorRegistry()
    latency = Histogram("query_seconds", "Query latency", registry=registry)
    in_progress = Gauge("queries_in_progress", "Queries running", registry=registry)

    class PrometheusCursor(sqlite3.Cursor):
        @in_progress.track_inprogress()
        @latency.time()
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            return super().execute(*args, **kwargs)

    return sqlite3.connect(":memory:").cursor(PrometheusCursor)


def opentelemetry_cursor(with_sdk: bool) -> Callable[[], Any]:
    def make() -> Any:
        from opentelemetry import metrics, trace
        from opentelemetry.instrumentation.dbapi import instrument_connection

        if with_sdk:
            from opentelemetry.sdk.trace import TracerProvider

            tracer_provider: Any = TracerProvider()
        else:
            tracer_provider = trace.NoOpTracerProvider()
        connection = instrument_connection(
            "querymeter-benchmark",
            sqlite3.connect(":memory:"),
            "sqlite",
            tracer_provider=tracer_provider,
            meter_provider=metrics.NoOpMeterProvider(),
        )
        return connection.cursor()

    return make


VARIANTS: dict[str, Callable[[], Any]] = {
    "raw": raw_cursor,
    "querymeter-c": querymeter_cursor("c"),
    "querymeter-python": querymeter_cursor("python"),
    "wrapt-proxy": wrapt_cursor,
    "prometheus": prometheus_cursor,
    "opentelemetry-no-sdk": opentelemetry_cursor(with_sdk=False),
    "opentelemetry-sdk": opentelemetry_cursor(with_sdk=True),
}


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest, benchmark: Any) -> Iterator[tuple[str, Any]]:
    name = request.param
    if name == "raw":
        mark_baseline(benchmark)
    yield name, VARIANTS[name]()


@pytest.mark.benchmark(group="dbapi: execute alone", min_rounds=20)
def test_execute(benchmark: Any, variant: tuple[str, Any]) -> None:
    """cursor.execute("SELECT 1") on a reused cursor."""
    _, cursor = variant
    execute = cursor.execute

    def run() -> None:
        for _ in RANGE:
            execute(SQL)

    benchmark(run)


@pytest.mark.benchmark(group="dbapi: execute + fetchall + rowcount", min_rounds=20)
def test_round_trip(benchmark: Any, variant: tuple[str, Any]) -> None:
    """execute, fetchall() and one read of rowcount on a reused cursor."""
    _, cursor = variant

    def run() -> None:
        for _ in RANGE:
            cursor.execute(SQL)
            cursor.fetchall()
            cursor.rowcount  # noqa: B018 - the read is the point

    benchmark(run)


def test_added_cost_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every variant in turn, round after round, for both workloads: the figures to judge by."""
    cursors = {name: make() for name, make in VARIANTS.items()}

    def execute_alone(cursor: Any) -> Callable[[], None]:
        execute = cursor.execute

        def run() -> None:
            for _ in RANGE:
                execute(SQL)

        return run

    def round_trip(cursor: Any) -> Callable[[], None]:
        def run() -> None:
            for _ in RANGE:
                cursor.execute(SQL)
                cursor.fetchall()
                cursor.rowcount  # noqa: B018 - the read is the point

        return run

    rounds = 1 if quick_mode(request.config) else 41
    for title, workload in (("execute alone", execute_alone), ("round trip", round_trip)):
        medians = interleaved_medians(
            {name: workload(cursor) for name, cursor in cursors.items()}, rounds
        )
        if not quick_mode(request.config):
            print_interleaved(f"dbapi, {title}", medians, "raw", capsys)


# ------------------------------------------------------------ on real servers
#
# asyncpg and mysqlclient (MySQLdb) against the local PostgreSQL and MariaDB,
# where one statement costs tens of microseconds: the figures are ratios to the
# raw driver on the same server, in the same run.  querymeter counts these two
# in place, on the driver's own classes (for every connection, counting or
# not), and OpenTelemetry's asyncpg instrumentation wraps asyncpg's classes
# too: each such variant switches its instrumentation on before its run and off
# after (microseconds, against a run of tens of milliseconds), so that the raw
# driver runs with nothing of anyone's on its path.

SERVER_ROUNDS = 21


class ServerVariant:
    """A connection (or cursor) to measure, and what to switch on around each run."""

    def __init__(
        self,
        target: Any,
        switch_on: Callable[[], object] = lambda: None,
        switch_off: Callable[[], object] = lambda: None,
    ) -> None:
        self.target = target
        self.switch_on = switch_on
        self.switch_off = switch_off

    def run(self, workload: Callable[[Any], None]) -> Callable[[], None]:
        def run() -> None:
            self.switch_on()
            try:
                workload(self.target)
            finally:
                self.switch_off()

        return run


def _tracer_provider(with_sdk: bool) -> Any:
    from opentelemetry import trace

    if with_sdk:
        from opentelemetry.sdk.trace import TracerProvider

        return TracerProvider()
    return trace.NoOpTracerProvider()


# ------------------------------------------------------------------- asyncpg


@pytest.fixture(scope="module")
def asyncpg_variants() -> Iterator[tuple[Any, dict[str, ServerVariant]]]:
    """One event loop and one connection per variant: raw, querymeter on each core, and
    OpenTelemetry's asyncpg instrumentation without and with an SDK."""
    asyncpg = pytest.importorskip("asyncpg")
    from tests.dbapi.test_asyncpg import asyncpg_params
    from tests.servers import postgres_dsn

    params = asyncpg_params(postgres_dsn())
    loop = asyncio.new_event_loop()
    variants: dict[str, ServerVariant] = {}
    connections = []

    def connect() -> Any:
        connection = loop.run_until_complete(asyncpg.connect(**params))
        connections.append(connection)
        return connection

    variants["raw"] = ServerVariant(connect())
    for implementation in ("c", "python"):
        meter = load_meter_class(implementation)()
        connection = connect()
        variants[f"querymeter-{implementation}"] = ServerVariant(
            connection,
            functools.partial(querymeter.dbapi.wrap_connection, connection, meter=meter),
            functools.partial(querymeter.dbapi.unwrap_connection, connection),
        )
    otel = pytest.importorskip("opentelemetry.instrumentation.asyncpg")
    instrumentor = otel.AsyncPGInstrumentor()
    for name, with_sdk in (("opentelemetry-no-sdk", False), ("opentelemetry-sdk", True)):
        variants[name] = ServerVariant(
            connect(),
            functools.partial(instrumentor.instrument, tracer_provider=_tracer_provider(with_sdk)),
            instrumentor.uninstrument,
        )
    yield loop, variants
    for connection in connections:
        loop.run_until_complete(connection.close())
    loop.close()


def _fetchval_loop(loop: Any) -> Callable[[Any], None]:
    async def fetchvals(connection: Any) -> None:
        fetchval = connection.fetchval
        for _ in RANGE:
            await fetchval(SQL)

    return lambda connection: loop.run_until_complete(fetchvals(connection))


SERVER_VARIANTS = [
    "raw",
    "querymeter-c",
    "querymeter-python",
    "opentelemetry-no-sdk",
    "opentelemetry-sdk",
]


@pytest.mark.parametrize("name", SERVER_VARIANTS)
@pytest.mark.benchmark(group="dbapi: asyncpg fetchval on PostgreSQL", min_rounds=10)
def test_asyncpg_fetchval(
    benchmark: Any, name: str, asyncpg_variants: tuple[Any, dict[str, ServerVariant]]
) -> None:
    """await connection.fetchval("SELECT 1") on one connection, one event loop."""
    loop, variants = asyncpg_variants
    if name == "raw":
        mark_baseline(benchmark)
    benchmark(variants[name].run(_fetchval_loop(loop)))


def test_asyncpg_added_cost_interleaved(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    asyncpg_variants: tuple[Any, dict[str, ServerVariant]],
) -> None:
    """Every asyncpg variant in turn, round after round: the figures to judge by."""
    loop, variants = asyncpg_variants
    workload = _fetchval_loop(loop)
    rounds = 1 if quick_mode(request.config) else SERVER_ROUNDS
    medians = interleaved_medians(
        {name: variant.run(workload) for name, variant in variants.items()}, rounds
    )
    if not quick_mode(request.config):
        print_interleaved("asyncpg fetchval on PostgreSQL", medians, "raw", capsys)


def test_asyncpg_counting_method_alone_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """What one counted call adds, without a server: asyncpg's counting method around a
    coroutine that returns at once, driven by hand; the connection counts, or not."""
    pytest.importorskip("asyncpg")
    from querymeter._patching import Patch
    from querymeter.dbapi import _asyncpg
    from querymeter.dbapi._connections import forget_connection, set_connection_meter

    class StandIn:
        """A connection whose fetchval returns at once."""

        async def fetchval(self, query: str) -> str:
            return query

        async def counted(self, query: str) -> str:
            return query

    patch = Patch(StandIn, "counted", _asyncpg._connection_query)
    patch.install()
    try:
        uncounted, c_counted, python_counted = StandIn(), StandIn(), StandIn()
        set_connection_meter(c_counted, load_meter_class("c")())
        set_connection_meter(python_counted, load_meter_class("python")())

        def drive(method: Callable[[str], Any]) -> Callable[[], None]:
            def run() -> None:
                for _ in RANGE:
                    step = method(SQL)
                    try:  # noqa: SIM105 - a with block costs more than what is measured
                        step.send(None)
                    except StopIteration:
                        pass

            return run

        runs = {
            "asyncpg's own (stand-in)": drive(uncounted.fetchval),
            "counting method, not counted": drive(uncounted.counted),
            "counting method, C core": drive(c_counted.counted),
            "counting method, Python core": drive(python_counted.counted),
        }
        rounds = 1 if quick_mode(request.config) else 41
        medians = interleaved_medians(runs, rounds)
        if not quick_mode(request.config):
            print_interleaved(
                "asyncpg counting method alone", medians, "asyncpg's own (stand-in)", capsys
            )
    finally:
        patch.remove()
        forget_connection(c_counted)
        forget_connection(python_counted)


# --------------------------------------------------------- mysqlclient (MySQLdb)


@pytest.fixture(scope="module")
def mysqlclient_variants() -> Iterator[dict[str, ServerVariant]]:
    """A connection and a reused cursor per variant: raw, querymeter on each core, and
    OpenTelemetry's mysqlclient instrumentation without and with an SDK."""
    mysqldb = pytest.importorskip("MySQLdb")
    from tests.servers import mysql_params

    params = mysql_params()
    variants: dict[str, ServerVariant] = {}
    connections = []

    def connect() -> Any:
        connection = mysqldb.connect(autocommit=True, **params)
        connections.append(connection)
        return connection

    variants["raw"] = ServerVariant(connect().cursor())
    for implementation in ("c", "python"):
        meter = load_meter_class(implementation)()
        connection = connect()
        variants[f"querymeter-{implementation}"] = ServerVariant(
            connection.cursor(),
            functools.partial(querymeter.dbapi.wrap_connection, connection, meter=meter),
            functools.partial(querymeter.dbapi.unwrap_connection, connection),
        )
    otel = pytest.importorskip("opentelemetry.instrumentation.mysqlclient")
    for name, with_sdk in (("opentelemetry-no-sdk", False), ("opentelemetry-sdk", True)):
        traced = otel.MySQLClientInstrumentor.instrument_connection(
            connect(), tracer_provider=_tracer_provider(with_sdk)
        )
        variants[name] = ServerVariant(traced.cursor())
    yield variants
    for connection in connections:
        connection.close()


def _execute_fetchall(cursor: Any) -> None:
    execute, fetchall = cursor.execute, cursor.fetchall
    for _ in RANGE:
        execute(SQL)
        fetchall()


@pytest.mark.parametrize("name", SERVER_VARIANTS)
@pytest.mark.benchmark(group="dbapi: MySQLdb execute + fetchall on MariaDB", min_rounds=10)
def test_mysqlclient_execute(
    benchmark: Any, name: str, mysqlclient_variants: dict[str, ServerVariant]
) -> None:
    """cursor.execute("SELECT 1") and fetchall() on a reused cursor."""
    if name == "raw":
        mark_baseline(benchmark)
    benchmark(mysqlclient_variants[name].run(_execute_fetchall))


def test_mysqlclient_added_cost_interleaved(
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
    mysqlclient_variants: dict[str, ServerVariant],
) -> None:
    """Every mysqlclient variant in turn, round after round: the figures to judge by."""
    rounds = 1 if quick_mode(request.config) else SERVER_ROUNDS
    medians = interleaved_medians(
        {name: v.run(_execute_fetchall) for name, v in mysqlclient_variants.items()}, rounds
    )
    if not quick_mode(request.config):
        print_interleaved("MySQLdb execute + fetchall on MariaDB", medians, "raw", capsys)


# ------------------------------------------------------- psycopg 3, in place
#
# psycopg's cursor classes count in place: a counting execute finds its
# connection's meter in the side table, then makes one C call.  Measured on the
# real PostgreSQL against the raw driver, and against the counted subclass
# querymeter used before (psycopg's execute in one C call, meter bound, no
# lookup); and the methods alone, without a server.  The in-place variants
# count for their run only (wrap_connection / unwrap_connection around it), so
# that the other variants run with psycopg's own methods.

PSYCOPG_ROUNDS = 21


def test_psycopg_added_cost_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """cursor.execute("SELECT 1") on PostgreSQL: raw, in place on each core, the former subclass."""
    psycopg = pytest.importorskip("psycopg")
    from tests.servers import postgres_dsn

    dsn = postgres_dsn()
    opened: list[Any] = []

    def cursor(**kwargs: Any) -> Any:
        connection = psycopg.connect(dsn, autocommit=True, **kwargs)
        opened.append(connection)
        return connection.cursor()

    def executes(target: Any, switch_on: Callable[[], object] = lambda: None) -> Callable[[], None]:
        execute = target.execute

        def run() -> None:
            switch_on()
            try:
                for _ in RANGE:
                    execute(SQL)
            finally:
                querymeter.dbapi.unwrap_connection(target.connection)

        return run

    runs = {"raw": executes(cursor())}
    for implementation in ("c", "python"):
        meter = load_meter_class(implementation)()
        target = cursor()
        runs[f"in place, {implementation} core"] = executes(
            target,
            functools.partial(querymeter.dbapi.wrap_connection, target.connection, meter=meter),
        )
        subclass = type(
            "Cursor",
            (psycopg.Cursor,),
            {"__slots__": (), "execute": meter._timed(psycopg.Cursor.execute)},
        )
        runs[f"subclass, {implementation} core"] = executes(cursor(cursor_factory=subclass))
    try:
        rounds = 1 if quick_mode(request.config) else PSYCOPG_ROUNDS
        medians = interleaved_medians(runs, rounds)
        if not quick_mode(request.config):
            print_interleaved("psycopg execute on PostgreSQL", medians, "raw", capsys)
    finally:
        for connection in opened:
            connection.close()


def test_psycopg_counting_method_alone_interleaved(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """What one counted execute adds, without a server: the in-place method and the previous
    subclass's around a method that returns at once; the connection counts, or not."""
    pytest.importorskip("psycopg")
    from querymeter._patching import Patch
    from querymeter.dbapi import _psycopg
    from querymeter.dbapi._connections import forget_connection, set_connection_meter

    class Connection:
        """Stands for a psycopg connection (weakly referenced by the side table)."""

    class StandIn:
        """A cursor whose execute returns at once."""

        __slots__ = ("_conn",)

        def __init__(self, connection: Connection) -> None:
            self._conn = connection

        def execute(self, query: str) -> Any:
            return self

        def counted(self, query: str) -> Any:
            return self

    patch = Patch(StandIn, "counted", _psycopg._counted_call)
    patch.install()
    connections = [Connection(), Connection(), Connection()]
    try:
        uncounted, c_counted, python_counted = (StandIn(c) for c in connections)
        c_meter, python_meter = load_meter_class("c")(), load_meter_class("python")()
        set_connection_meter(connections[1], c_meter)
        set_connection_meter(connections[2], python_meter)
        subclass_c = type(
            "Counted", (StandIn,), {"__slots__": (), "execute": c_meter._timed(StandIn.execute)}
        )

        def calls(method: Callable[[str], Any]) -> Callable[[], None]:
            def run() -> None:
                for _ in RANGE:
                    method(SQL)

            return run

        runs = {
            "psycopg's own (stand-in)": calls(uncounted.execute),
            "in place, not counted": calls(uncounted.counted),
            "in place, C core": calls(c_counted.counted),
            "in place, Python core": calls(python_counted.counted),
            "subclass, C core": calls(subclass_c(connections[1]).execute),
        }
        rounds = 1 if quick_mode(request.config) else 41
        medians = interleaved_medians(runs, rounds)
        if not quick_mode(request.config):
            print_interleaved(
                "psycopg counting method alone", medians, "psycopg's own (stand-in)", capsys
            )
    finally:
        patch.remove()
        for connection in connections:
            forget_connection(connection)
