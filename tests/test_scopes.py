"""Scopes: the queries of a block of code, tagged, with their figures and the N+1 pattern;
following asyncio tasks and copied contexts; on both cores."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import threading
from collections.abc import Iterator

import pytest

import querymeter
from querymeter import dbapi
from querymeter.meter import Meter as MeterType

from .conftest import FakeClock


def run(
    meter: MeterType, clock: FakeClock, sql: str | None, ns: int, *, fail: bool = False
) -> None:
    try:
        with meter.track(sql):
            clock.advance(ns)
            if fail:
                raise LookupError("the query failed")
    except LookupError:
        pass


def test_a_scope_counts_the_queries_inside_it(fake_meter: MeterType, clock: FakeClock) -> None:
    run(fake_meter, clock, "select 0", 1)  # before: not the scope's
    with querymeter.scope(route="/orders") as outer:
        assert querymeter.current_scope() is outer
        run(fake_meter, clock, "select * from orders where id = 1", 100)
        with querymeter.scope(user="ann") as inner:
            assert dict(inner.tags) == {"route": "/orders", "user": "ann"}
            run(fake_meter, clock, "select * from orders where id = 2", 200, fail=True)
            run(fake_meter, clock, None, 50)
        assert querymeter.current_scope() is outer
    run(fake_meter, clock, "select 0", 1)  # after: not the scope's
    assert querymeter.current_scope() is None

    assert (outer.queries, outer.errors, outer.db_ns) == (3, 1, 350)
    assert (inner.queries, inner.errors, inner.db_ns) == (2, 1, 250)
    assert dict(outer.tags) == {"route": "/orders"}
    assert outer.statements == {"select * from orders where id = ?": 2}
    assert fake_meter.snapshot().queries == 5


def test_the_n_plus_one_pattern_is_named(Meter: type[MeterType]) -> None:
    meter = Meter()
    dbapi.instrument(sqlite3, meter=meter)
    try:
        connection = sqlite3.connect(":memory:")
        connection.execute("create table items (id integer, owner integer)")
        with querymeter.scope(view="list", n_plus_one=3) as scope:
            owners = [1, 2, 3, 4, 5]
            for owner in owners:  # one query per row: N+1
                connection.execute("select * from items where owner = ?", (owner,)).fetchall()
            connection.execute("select count(*) from items").fetchall()
        assert scope.repeated == {"select * from items where owner = ?": 5}
        assert scope.statements["select count(*) from items"] == 1
        with querymeter.scope(n_plus_one=5) as fine:
            for owner in range(5):
                connection.execute(f"select * from items where owner = {owner}").fetchall()
        assert fine.repeated == {}, "five runs are within n_plus_one=5"
    finally:
        dbapi.uninstrument(sqlite3)


def test_scopes_follow_asyncio_tasks(Meter: type[MeterType]) -> None:
    meter = Meter()

    async def request(name: str, queries: int) -> querymeter.Scope:
        with querymeter.scope(request=name) as scope:
            for _ in range(queries):
                await meter._awaiting(asyncio.sleep(0), (None, "select 1", None))
            return scope

    async def main() -> list[querymeter.Scope]:
        return await asyncio.gather(request("a", 3), request("b", 5), request("c", 1))

    scopes = asyncio.run(main())
    assert [(dict(s.tags), s.queries) for s in scopes] == [
        ({"request": "a"}, 3),
        ({"request": "b"}, 5),
        ({"request": "c"}, 1),
    ]


def test_a_thread_counts_in_the_scope_only_in_a_copied_context(Meter: type[MeterType]) -> None:
    meter = Meter()

    def query() -> None:
        with meter.track("select 1"):
            pass

    with querymeter.scope(job="nightly") as scope:
        plain = threading.Thread(target=query)
        plain.start()
        plain.join()
        context = contextvars.copy_context()
        copied = threading.Thread(target=context.run, args=(query,))
        copied.start()
        copied.join()
    assert scope.queries == 1


def test_samples_carry_the_scopes_tags(Meter: type[MeterType]) -> None:
    meter = Meter()
    meter.enable_sampling(rate=1.0)
    with querymeter.scope(user="ann"), querymeter.scope(route="/x"), meter.track("select 1"):
        pass
    with meter.track("select 2"):
        pass
    inside, outside = meter.samples()
    assert dict(inside.tags) == {"user": "ann", "route": "/x"}
    assert dict(outside.tags) == {}


def test_bad_use_is_refused() -> None:
    with pytest.raises(ValueError, match="n_plus_one must be at least 1"):
        querymeter.scope(n_plus_one=0)
    with pytest.raises(TypeError, match="n_plus_one must be an int"):
        querymeter.scope(n_plus_one="5")  # type: ignore[arg-type]
    scope = querymeter.scope(a=1)
    with scope, pytest.raises(RuntimeError, match="already open"):
        scope.__enter__()
    with pytest.raises(RuntimeError, match="not open"):
        scope.__exit__(None, None, None)


def test_an_exception_leaves_the_scope_closed(Meter: type[MeterType]) -> None:
    meter = Meter()
    with pytest.raises(KeyError), querymeter.scope(a=1) as scope:
        with meter.track("select 1"):
            pass
        raise KeyError("boom")
    assert querymeter.current_scope() is None and scope.queries == 1
    with meter.track("select 1"):
        pass
    assert scope.queries == 1


@pytest.fixture(autouse=True)
def no_scope_left_open() -> Iterator[None]:
    yield
    assert querymeter.current_scope() is None


def test_retag_names_the_queries_after_it_and_decides_focus_again(Meter: type[MeterType]) -> None:
    meter = Meter()
    meter.enable_sampling(rate=1.0)
    focus = {"route": "/users/<id>"}
    with (
        querymeter.profile(10, sample=1.0, focus=focus, meter=meter) as session,
        querymeter.scope(route="/users/4") as scope,
    ):
        with meter.track("select 'before routing'"):
            pass
        scope.retag(route="/users/<id>")
        with meter.track("select 'after routing'"):
            pass
    assert dict(scope.tags) == {"route": "/users/<id>"}
    assert [dict(s.tags)["route"] for s in meter.samples()] == ["/users/4", "/users/<id>"]
    assert [s.sql for s in session.report().samples] == ["select 'after routing'"]
    scope.retag(status="200")  # closed: renamed only
    assert dict(scope.tags) == {"route": "/users/<id>", "status": "200"}
