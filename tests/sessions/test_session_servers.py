"""A profiling session's opt-in parts end to end: plans of the top statements (explain=True)
and the server's waits (waits=True), through an instrumented SQLAlchemy engine."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import querymeter
from querymeter.meter import Meter as MeterType

from ..servers import driver, postgres_dsn
from ..sqlalchemy.conftest import pg_url

TABLE = "qm_session_items"


@pytest.fixture
def engine_of(Meter: type[MeterType]) -> Iterator[Any]:
    sqlalchemy = driver("sqlalchemy")
    import querymeter.sqlalchemy as qs

    made: list[Any] = []

    def make(url: str, meter: MeterType, **kwargs: Any) -> Any:
        engine = sqlalchemy.create_engine(url, **kwargs)
        qs.instrument(engine, meter=meter)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        qs.uninstrument(engine)
        engine.dispose()


def test_explain_puts_the_plans_of_the_top_statements_in_the_report(
    Meter: type[MeterType], engine_of: Any, tmp_path: Path
) -> None:
    meter = Meter()
    engine = engine_of(f"sqlite:///{tmp_path / 'db.sqlite'}", meter)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"create table {TABLE} (id integer primary key, owner text)")
        connection.exec_driver_sql(f"insert into {TABLE} values (1, 'ann')")
    with (
        querymeter.profile(10, explain=True, meter=meter) as session,
        engine.connect() as connection,
    ):
        for _ in range(3):
            connection.exec_driver_sql(f"select * from {TABLE} where owner = 'ann'").fetchall()
        connection.exec_driver_sql(f"update {TABLE} set owner = 'bob' where id = 1")
    before = meter.snapshot().queries
    report = session.report()
    plans = {plan["fingerprint"]: plan for plan in report.plans}
    select = f"select * from {TABLE} where owner = ?"
    assert "SCAN" in (plans[select]["plan"] or "")
    update = f"update {TABLE} set owner = ? where id = ?"
    assert plans[update]["plan"] is None and plans[update]["note"]
    assert meter.snapshot().queries == before, "explaining counts nothing"
    assert "SCAN" in report.save(tmp_path / "r.md").read_text()


def test_explain_without_an_engine_is_a_note(Meter: type[MeterType]) -> None:
    meter = Meter()
    with querymeter.profile(10, explain=True, meter=meter) as session, meter.track("select 1"):
        pass
    report = session.report()
    assert report.plans == []
    assert any(note.startswith("explain: no SQLAlchemy engine") for note in report.notes)


def test_waits_show_a_lock_the_application_waited_for(
    Meter: type[MeterType], engine_of: Any
) -> None:
    """A row held by another connection: the application's UPDATE waits on it, and the
    session's server-side samples say Lock for that statement."""
    psycopg = driver("psycopg")
    dsn = postgres_dsn()
    meter = Meter()
    engine = engine_of(pg_url("psycopg"), meter)
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute(f"drop table if exists {TABLE}")
        setup.execute(f"create table {TABLE} (id integer primary key, owner text)")
        setup.execute(f"insert into {TABLE} values (1, 'ann')")
    holder = psycopg.connect(dsn)
    try:
        holder.execute(f"select * from {TABLE} where id = 1 for update")
        with querymeter.profile(10, waits=True, meter=meter) as session:

            def update() -> None:
                with engine.begin() as connection:
                    connection.exec_driver_sql(f"update {TABLE} set owner = 'bob' where id = 1")

            waiter = threading.Thread(target=update)
            waiter.start()
            time.sleep(1.0)
            holder.rollback()
            waiter.join()
        server = session.report().waits["server"]
        assert server is not None and server["by_class"].get("Lock", 0) >= 2, server
        update_shape = f"update {TABLE} set owner = ? where id = ?"
        assert server["by_fingerprint"][update_shape].get("Lock", 0) >= 2
    finally:
        holder.close()
        with psycopg.connect(dsn, autocommit=True) as cleanup:
            cleanup.execute(f"drop table if exists {TABLE}")


def test_waits_on_sqlite_are_a_note(Meter: type[MeterType], engine_of: Any) -> None:
    meter = Meter()
    engine_of("sqlite://", meter)
    with querymeter.profile(10, waits=True, meter=meter) as session:
        pass
    report = session.report()
    assert report.waits["server"] is None
    assert any("no server waits" in note for note in report.notes)
