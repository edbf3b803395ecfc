"""querymeter.autoinstrument(): drivers and SQLAlchemy instrumented on import, in new processes."""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from typing import Any

import pytest

import querymeter

from ..servers import postgres_dsn
from ._child import clean_environment, run


def run_script(source: str, implementation: str, *args: str) -> dict[str, Any]:
    """Run a script in a fresh interpreter over one core; the JSON it prints last."""
    result = run(
        [sys.executable, "-c", textwrap.dedent(source), *args], clean_environment(implementation)
    )
    assert result.returncode == 0, result.stderr.decode()
    found: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    found["stderr"] = result.stderr.decode()
    return found


def table_name() -> str:
    return f"h5b_auto_{uuid.uuid4().hex[:10]}"


PSYCOPG_WORK = """
def work(psycopg, dsn, table, n):
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE TABLE {table} (id int)")
        for i in range(n):
            connection.execute(f"INSERT INTO {table} VALUES (%s)", (i,))
        connection.execute(f"DROP TABLE {table}")
    return n + 2
"""


@pytest.mark.parametrize("order", ["imported-after", "imported-before"])
def test_psycopg_is_instrumented_whatever_the_import_order(implementation: str, order: str) -> None:
    """psycopg imported after autoinstrument() or before counts every statement into the meter."""
    dsn = postgres_dsn()
    found = run_script(
        PSYCOPG_WORK
        + """
import json, sys
import querymeter
order, dsn, table = sys.argv[1:4]
if order == "imported-before":
    import psycopg
before = "psycopg" in sys.modules
meter = querymeter.Meter()
querymeter.autoinstrument(meter)
import psycopg
import querymeter.dbapi
sent = work(psycopg, dsn, table, 7)
print(json.dumps({
    "before": before,
    "sent": sent,
    "counted": meter.snapshot().queries,
    "same_meter": querymeter.dbapi.instrumented_meter(psycopg) is meter,
    "core": querymeter.IMPLEMENTATION,
}))
""",
        implementation,
        order,
        dsn,
        table_name(),
    )
    assert found["before"] is (order == "imported-before")
    assert found["core"] == implementation
    assert found["same_meter"]
    assert found["counted"] == found["sent"] == 9


def test_sqlite3_imported_with_querymeter_is_instrumented_at_the_call(implementation: str) -> None:
    """sqlite3, which importing querymeter loads, is instrumented at once; statements count once."""
    found = run_script(
        """
import json, sys
import querymeter
meter = querymeter.Meter()
querymeter.autoinstrument(meter)
import sqlite3
connection = sqlite3.connect(":memory:")
connection.execute("CREATE TABLE t (x)")
connection.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
rows = connection.execute("SELECT count(*) FROM t").fetchone()[0]
print(json.dumps({"counted": meter.snapshot().queries, "rows": rows}))
""",
        implementation,
    )
    assert found == {"counted": 3, "rows": 2, "stderr": ""}


@pytest.mark.parametrize("order", ["engine-created-after", "engine-existing-before"])
def test_sqlalchemy_engines_created_after_and_existing_before_count_once(
    implementation: str, order: str
) -> None:
    """An engine made after autoinstrument(), or one that existed before, counts statements once."""
    found = run_script(
        """
import json, sys
import querymeter
order = sys.argv[1]
meter = querymeter.Meter()
engine = None
if order == "engine-existing-before":
    import sqlalchemy
    engine = sqlalchemy.create_engine("sqlite://")
imported = "sqlalchemy" in sys.modules
querymeter.autoinstrument(meter)
meter.enable_statements()
import sqlalchemy
if engine is None:
    engine = sqlalchemy.create_engine("sqlite://")
with engine.begin() as connection:
    connection.exec_driver_sql("CREATE TABLE h5b_items (x int)")
    for i in range(5):
        connection.execute(sqlalchemy.text("INSERT INTO h5b_items VALUES (:x)"), {"x": i})
    connection.exec_driver_sql("SELECT * FROM h5b_items").fetchall()
import querymeter.sqlalchemy as qs
table = meter.statements.snapshot()
ours = sum(s.calls for s in table.statements if "h5b_items" in s.fingerprint)
print(json.dumps({"imported": imported, "ours": ours,
                  "same_meter": qs.instrumented_meter(engine) is meter}))
""",
        implementation,
        order,
    )
    assert found["imported"] is (order == "engine-existing-before")
    assert found["same_meter"]
    assert found["ours"] == 7  # CREATE, 5 INSERTs, SELECT: once each, not twice


def test_drivers_restricts_what_is_instrumented(implementation: str) -> None:
    """drivers=["psycopg"] instruments psycopg and leaves sqlite3 and SQLAlchemy alone."""
    dsn = postgres_dsn()
    found = run_script(
        PSYCOPG_WORK
        + """
import json, sys
import querymeter, querymeter.dbapi
dsn, table = sys.argv[1:3]
meter = querymeter.Meter()
querymeter.autoinstrument(meter, drivers=["psycopg"])
import sqlite3, psycopg, sqlalchemy
sqlite3.connect(":memory:").execute("SELECT 1")
sqlalchemy.create_engine("sqlite://").connect().exec_driver_sql("SELECT 1")
sent = work(psycopg, dsn, table, 3)
print(json.dumps({
    "sent": sent,
    "counted": meter.snapshot().queries,
    "sqlite3": querymeter.dbapi.instrumented_meter(sqlite3) is not None,
    "sqlalchemy_hooks": "querymeter.sqlalchemy" in sys.modules,
    "watched": sorted(querymeter.autoinstrument.drivers),
}))
""",
        implementation,
        dsn,
        table_name(),
    )
    assert found["counted"] == found["sent"] == 5
    assert not found["sqlite3"]
    assert not found["sqlalchemy_hooks"]
    assert found["watched"] == ["psycopg"]


def test_again_with_the_same_meter_changes_nothing_and_another_meter_is_refused(
    implementation: str,
) -> None:
    """Twice with one meter counts once; another meter raises ValueError and changes nothing."""
    found = run_script(
        """
import json
import querymeter
meter = querymeter.Meter()
querymeter.autoinstrument(meter, drivers=["sqlite3"])
querymeter.autoinstrument(meter, drivers=["sqlite3"])
querymeter.autoinstrument(meter, drivers=["psycopg"])
try:
    querymeter.autoinstrument(querymeter.Meter())
    refused = None
except ValueError as exc:
    refused = str(exc)
import sqlite3
sqlite3.connect(":memory:").execute("SELECT 1")
print(json.dumps({"counted": meter.snapshot().queries, "refused": refused,
                  "watched": sorted(querymeter.autoinstrument.drivers),
                  "on": querymeter.autoinstrument.meter is meter}))
""",
        implementation,
    )
    assert found["counted"] == 1
    assert "already on with another meter" in found["refused"]
    assert found["watched"] == ["psycopg", "sqlite3"]
    assert found["on"]


@pytest.mark.parametrize("how", ["undo", "uninstrument_all"])
def test_undo_and_uninstrument_all_take_it_out(implementation: str, how: str) -> None:
    """After undo() or uninstrument_all(), no driver counts, imported before or after."""
    dsn = postgres_dsn()
    found = run_script(
        PSYCOPG_WORK
        + """
import json, sqlite3, sys
import querymeter, querymeter.dbapi
how, dsn, table = sys.argv[1:4]
original_connect = sqlite3.connect
meter = querymeter.Meter()
querymeter.autoinstrument(meter)
import sqlalchemy
engine = sqlalchemy.create_engine("sqlite://")
import querymeter.sqlalchemy as qs
counting_engine = qs.instrumented_meter(engine) is meter
if how == "undo":
    querymeter.autoinstrument.undo()
else:
    querymeter.uninstrument_all()
import psycopg
work(psycopg, dsn, table, 2)
sqlite3.connect(":memory:").execute("SELECT 1")
with engine.connect() as connection:
    connection.exec_driver_sql("SELECT 1")
later = sqlalchemy.create_engine("sqlite://")
print(json.dumps({
    "counting_engine": counting_engine,
    "counted": meter.snapshot().queries,
    "connect_restored": sqlite3.connect is original_connect,
    "psycopg": querymeter.dbapi.instrumented_meter(psycopg) is not None,
    "engines": [qs.instrumented_meter(e) is not None for e in (engine, later)],
    "off": querymeter.autoinstrument.meter is None,
}))
""",
        implementation,
        how,
        dsn,
        table_name(),
    )
    assert found["counting_engine"]
    assert found["counted"] == 0
    assert found["connect_restored"]
    assert not found["psycopg"]
    assert found["engines"] == [False, False]
    assert found["off"]


def test_a_failing_hook_never_fails_the_import(implementation: str) -> None:
    """When instrumenting a driver fails, its import succeeds and the fault is counted."""
    found = run_script(
        """
import json
import querymeter, querymeter.dbapi

def broken(module, *, meter=None):
    raise RuntimeError("injected")

querymeter.dbapi.instrument = broken
querymeter.autoinstrument(drivers=["psycopg"])
import psycopg
print(json.dumps({"imported": psycopg.__name__, "faults": querymeter.faults()}))
""",
        implementation,
    )
    assert found["imported"] == "psycopg"
    assert found["faults"] == {"autoinstrument: could not instrument psycopg": 1}
    assert "RuntimeError: injected" in found["stderr"]


def test_importing_querymeter_imports_no_wrapt_and_no_driver_hook() -> None:
    """import querymeter loads neither wrapt nor querymeter.dbapi; autoinstrument() loads wrapt."""
    found = run_script(
        """
import json, sys
import querymeter
before = [m for m in ("wrapt", "querymeter.dbapi", "psycopg", "sqlalchemy") if m in sys.modules]
querymeter.autoinstrument(drivers=["psycopg"])
print(json.dumps({"before": before, "wrapt": "wrapt" in sys.modules,
                  "psycopg": "psycopg" in sys.modules}))
""",
        "c",
    )
    assert found["before"] == []
    assert found["wrapt"]
    assert not found["psycopg"]


@pytest.mark.parametrize(
    ("drivers", "error", "message"),
    [
        ("sqlite3", TypeError, "a list of names"),
        (["sqlite3", "oracledb"], ValueError, "does not know the driver 'oracledb'"),
        ([], ValueError, "names no driver"),
        (3, TypeError, "not int"),
    ],
)
def test_bad_drivers_are_refused_with_a_clear_error(
    drivers: Any, error: type[Exception], message: str
) -> None:
    """A drivers argument that is not a list of known names raises, naming the problem."""
    assert querymeter.autoinstrument.meter is None
    with pytest.raises(error, match=message):
        querymeter.autoinstrument(drivers=drivers)
    assert querymeter.autoinstrument.meter is None


def test_a_meter_that_is_not_a_meter_is_refused() -> None:
    """meter= must be a querymeter Meter."""
    with pytest.raises(TypeError):
        querymeter.autoinstrument("default")  # type: ignore[arg-type]
    assert querymeter.autoinstrument.meter is None


def test_without_wrapt_a_clear_import_error_and_nothing_changed() -> None:
    """Where wrapt cannot be imported, autoinstrument() says what to install and stays off."""
    found = run_script(
        """
import json, sys
sys.modules["wrapt"] = None   # as if it were not installed
import querymeter, querymeter.dbapi, sqlite3
try:
    querymeter.autoinstrument()
    error = None
except ImportError as exc:
    error = str(exc)
print(json.dumps({"error": error, "off": querymeter.autoinstrument.meter is None,
                  "sqlite3": querymeter.dbapi.instrumented_meter(sqlite3) is not None}))
""",
        "c",
    )
    assert "pip install 'querymeter[auto]'" in found["error"]
    assert found["off"]
    assert not found["sqlite3"]
