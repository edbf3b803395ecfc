"""MariaDB/MySQL through PyMySQL: Core and ORM counts, and the skip_user_error_events path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import pytest

import querymeter.sqlalchemy as qs
from querymeter.meter import Meter as MeterType

from ..servers import driver
from .conftest import mysql_url

pytestmark = pytest.mark.servers

sqlalchemy = driver("sqlalchemy")
orm = driver("sqlalchemy.orm")
event = sqlalchemy.event


@pytest.fixture
def engine(meter: MeterType, make_engine: Callable[..., Any]) -> Any:
    """An instrumented PyMySQL engine, its first connection done."""
    engine = make_engine(mysql_url(), insertmanyvalues_page_size=2)
    qs.instrument(engine, meter=meter)
    with engine.connect():
        pass
    return engine


def test_core_and_orm_statements_count_once_each(engine: Any, meter: MeterType) -> None:
    """Core and ORM statements count once each; a flush of 5 keyed rows is one executemany."""

    class Base(orm.DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "qm_sa_mysql_item"
        __table_args__: ClassVar[dict[str, Any]] = {"prefixes": ["TEMPORARY"]}
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str | None] = orm.mapped_column(sqlalchemy.String(20))

    calls: list[str] = []
    event.listen(engine, "do_execute", lambda cursor, statement, *rest: calls.append(statement))
    event.listen(engine, "do_executemany", lambda cursor, statement, *rest: calls.append(statement))
    before = meter.snapshot()
    with orm.Session(engine) as session:
        connection = session.connection()
        connection.exec_driver_sql(
            "CREATE TEMPORARY TABLE qm_sa_mysql_item (id INT AUTO_INCREMENT PRIMARY KEY, "
            "name VARCHAR(20))"
        )
        connection.execute(Item.__table__.insert(), [{"name": f"core{n}"} for n in range(3)])
        session.add_all([Item(id=10 + n, name=f"orm{n}") for n in range(5)])
        session.flush()
        items = session.scalars(sqlalchemy.select(Item)).all()
        assert len(items) == 8
        items[0].name = "renamed"
        session.flush()
        session.rollback()
    interval = meter.snapshot() - before
    # CREATE, executemany, executemany (keys given), SELECT, UPDATE.
    assert interval.queries == len(calls) == 5
    assert (interval.errors, interval.later.concurrency) == (0, 0)


def test_reflection_errors_under_skip_user_error_events_are_counted_and_balanced(
    engine: Any, meter: MeterType
) -> None:
    """Reflecting a missing table fails with after_cursor_execute and handle_error skipped, and is
    still one error query with nothing left in flight."""
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append("before"))
    event.listen(engine, "after_cursor_execute", lambda *args: seen.append("after"))
    event.listen(engine, "handle_error", lambda context: seen.append("handle_error"))
    before = meter.snapshot()
    with pytest.raises(sqlalchemy.exc.NoSuchTableError):
        sqlalchemy.inspect(engine).get_columns("qm_no_such_table")
    interval = meter.snapshot() - before
    assert seen == ["before"]  # the trap: a before/after/handle_error pairing would leak here
    assert (interval.queries, interval.errors, interval.later.concurrency) == (1, 1, 0)


def test_a_connection_with_skip_user_error_events_still_counts_its_errors(
    engine: Any, meter: MeterType
) -> None:
    """A failing statement on a skip_user_error_events connection is an error query, balanced."""
    before = meter.snapshot()
    with engine.connect() as connection:
        quiet = connection.execution_options(skip_user_error_events=True)
        with pytest.raises(sqlalchemy.exc.ProgrammingError):
            quiet.exec_driver_sql("SELECT * FROM qm_no_such_table")
    interval = meter.snapshot() - before
    assert (interval.queries, interval.errors, interval.later.concurrency) == (1, 1, 0)
