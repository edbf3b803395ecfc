"""instrument, uninstrument, wrap_connection, unwrap_connection: validation and exact undo."""

from __future__ import annotations

import logging
import sqlite3
import threading
import types
from typing import Any

import pytest

import querymeter
import querymeter.dbapi as dbapi
from querymeter._patching import Patch
from querymeter.meter import Meter as MeterType

from ..servers import driver


def test_instrument_refuses_what_is_not_a_module(meter: MeterType) -> None:
    """A non-module raises TypeError naming what was passed."""
    with pytest.raises(TypeError, match="driver module"):
        dbapi.instrument("sqlite3", meter=meter)  # type: ignore[arg-type]


def test_instrument_refuses_unsupported_modules(meter: MeterType) -> None:
    """An unsupported module raises ValueError listing the supported drivers."""
    with pytest.raises(ValueError, match="supported drivers: sqlite3, psycopg"):
        dbapi.instrument(types.ModuleType("oracledb"), meter=meter)


def test_instrument_refuses_a_meter_that_is_not_one() -> None:
    """A meter argument that is not a Meter raises TypeError."""
    with pytest.raises(TypeError, match=r"querymeter\.Meter"):
        dbapi.instrument(sqlite3, meter=object())  # type: ignore[arg-type]


def test_instrument_defaults_to_the_default_meter() -> None:
    """Without a meter, connections count into querymeter.default_meter()."""
    dbapi.instrument(sqlite3)
    assert dbapi.instrumented_meter(sqlite3) is querymeter.default_meter()
    before = querymeter.snapshot().queries
    sqlite3.connect(":memory:").execute("SELECT 1")
    assert querymeter.snapshot().queries == before + 1


def test_instrumenting_twice_is_a_no_op(meter: MeterType) -> None:
    """A second instrument() with the same meter changes nothing: statements count once."""
    dbapi.instrument(sqlite3, meter=meter)
    patched = sqlite3.connect
    dbapi.instrument(sqlite3, meter=meter)
    assert sqlite3.connect is patched
    sqlite3.connect(":memory:").execute("SELECT 1")
    assert meter.snapshot().queries == 1


def test_instrumenting_with_a_second_meter_raises(Meter: type[MeterType]) -> None:
    """instrument() with another meter raises ValueError instead of counting twice."""
    dbapi.instrument(sqlite3, meter=Meter())
    with pytest.raises(ValueError, match="another meter"):
        dbapi.instrument(sqlite3, meter=Meter())


@pytest.mark.parametrize("name", ["sqlite3", "psycopg", "psycopg2", "pymysql", "aiosqlite"])
def test_uninstrument_restores_the_exact_originals(name: str, meter: MeterType) -> None:
    """After uninstrument, every patched attribute is the very object it was before."""
    module = driver(name)
    watched: list[tuple[Any, str]] = [(module, "connect")]
    if name == "psycopg":
        watched += [(module.Connection, "connect"), (module.AsyncConnection, "connect")]
    if name == "sqlite3":
        watched.append((module.dbapi2, "connect"))
    if name == "pymysql":
        watched.append((module, "Connect"))
    if name == "aiosqlite":
        watched.append((module.core, "connect"))
    before = [vars(owner).get(attribute) for owner, attribute in watched]
    dbapi.instrument(module, meter=meter)
    assert [vars(owner).get(attribute) for owner, attribute in watched] != before
    dbapi.uninstrument(module)
    assert all(
        vars(owner).get(attribute) is original
        for (owner, attribute), original in zip(watched, before, strict=True)
    )
    dbapi.uninstrument(module)  # idempotent


def test_uninstrument_under_another_wrapper_leaves_it_in_place(meter: MeterType) -> None:
    """If another tool wrapped connect after us, uninstrument keeps theirs and stops counting."""
    dbapi.instrument(sqlite3, meter=meter)
    ours = sqlite3.connect
    calls: list[str] = []

    def theirs(*args: Any, **kwargs: Any) -> Any:
        calls.append("theirs")
        return ours(*args, **kwargs)

    sqlite3.connect = theirs
    try:
        dbapi.uninstrument(sqlite3)
        assert sqlite3.connect is theirs
        sqlite3.connect(":memory:").execute("SELECT 1")
        assert calls == ["theirs"]
        assert meter.snapshot().queries == 0
    finally:
        sqlite3.connect = ours.__wrapped__  # type: ignore[attr-defined]


def test_wrap_connection_refuses_what_is_not_a_connection(meter: MeterType) -> None:
    """wrap_connection() of an unknown object raises TypeError naming the drivers."""
    with pytest.raises(TypeError, match="supported driver"):
        dbapi.wrap_connection(object(), meter=meter)
    with pytest.raises(TypeError, match="supported driver"):
        dbapi.unwrap_connection(42)


def test_a_connection_counts_into_one_meter_only(Meter: type[MeterType]) -> None:
    """Counting a connection into a second meter raises ValueError; the same meter is a no-op."""
    first, second = Meter(), Meter()
    dbapi.instrument(sqlite3, meter=first)
    connection = sqlite3.connect(":memory:")
    assert dbapi.wrap_connection(connection, meter=first) is connection
    with pytest.raises(ValueError, match="another meter"):
        dbapi.wrap_connection(connection, meter=second)
    dbapi.unwrap_connection(connection)
    dbapi.wrap_connection(connection, meter=second)
    connection.execute("SELECT 1")
    assert (first.snapshot().queries, second.snapshot().queries) == (0, 1)


def test_a_fault_of_ours_at_connect_never_reaches_the_application(
    meter: MeterType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If querymeter fails while preparing a connection, connect() still works, uncounted."""
    from querymeter.dbapi import _sqlite3

    def broken(base: type) -> type:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(_sqlite3, "connection_class", broken)
    dbapi.instrument(sqlite3, meter=meter)
    before = querymeter.faults().get("sqlite3: could not prepare a counted connection", 0)
    with caplog.at_level(logging.WARNING, logger="querymeter"):
        for _ in range(3):
            assert sqlite3.connect(":memory:").execute("SELECT 7").fetchone() == (7,)
    assert querymeter.faults()["sqlite3: could not prepare a counted connection"] == before + 3
    logged = [r for r in caplog.records if "could not prepare" in r.getMessage()]
    assert len(logged) <= 1


def test_a_faulty_clock_inside_a_hook_never_reaches_the_application(
    Meter: type[MeterType],
) -> None:
    """A meter whose clock raises still lets every statement run and counts it."""
    ticks = iter(range(1_000_000))

    def clock() -> int:
        value = next(ticks)
        if value > 2:
            raise OSError("clock unplugged")
        return value

    meter = Meter(clock=clock)
    dbapi.instrument(sqlite3, meter=meter)
    connection = sqlite3.connect(":memory:")
    for n in range(5):
        assert connection.execute("SELECT ?", (n,)).fetchone() == (n,)
    snap = meter.snapshot()
    assert (snap.queries, snap.errors, snap.concurrency) == (5, 0, 0)
    assert querymeter.faults()["clock raised"] > 0


# What each driver counted in place has on its own classes while instrumented.
IN_PLACE = {
    "psycopg": {
        "Cursor": ("execute", "executemany", "stream", "copy"),
        "ServerCursor": ("execute",),
        "AsyncCursor": ("execute", "executemany", "stream", "copy"),
        "AsyncServerCursor": ("execute",),
    },
    "pymysql": {"cursors.Cursor": ("execute", "executemany", "callproc")},
    "aiosqlite": {
        "Connection": (
            "execute",
            "executemany",
            "executescript",
            "execute_fetchall",
            "execute_insert",
            "_connect",
        ),
        "Cursor": ("execute", "executemany", "executescript"),
    },
}


@pytest.mark.parametrize("name", list(IN_PLACE))
def test_counting_in_place_puts_the_drivers_own_methods_back(name: str, meter: MeterType) -> None:
    """instrument puts counting methods on the driver's classes; uninstrument the very originals."""
    module = driver(name)
    watched: list[tuple[type, str]] = []
    for path, attributes in IN_PLACE[name].items():
        owner: Any = module
        for part in path.split("."):
            owner = getattr(owner, part)
        watched += [(owner, attribute) for attribute in attributes]
    others = {
        (owner, attribute): value
        for owner, _ in watched
        for attribute, value in vars(owner).items()
    }
    before = [vars(owner)[attribute] for owner, attribute in watched]
    dbapi.instrument(module, meter=meter)
    during = [vars(owner)[attribute] for owner, attribute in watched]
    assert all(now is not then for now, then in zip(during, before, strict=True))
    assert all(getattr(now, "__wrapped__", None) is not None for now in during)
    dbapi.uninstrument(module)
    assert all(
        vars(owner)[attribute] is original
        for (owner, attribute), original in zip(watched, before, strict=True)
    )
    assert {
        (owner, attribute): value
        for owner, _ in watched
        for attribute, value in vars(owner).items()
    } == others


def test_an_instrument_racing_an_uninstrument_leaves_the_driver_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """instrument() in another thread while uninstrument() removes its patches stacks nothing."""
    original = sqlite3.connect
    dbapi.instrument(sqlite3)
    real_remove = Patch.remove
    racers: list[threading.Thread] = []

    def remove(patch: Patch) -> bool:
        if not racers:
            # Another thread instruments the driver right now, mid-uninstrument.
            racer = threading.Thread(target=dbapi.instrument, args=(sqlite3,))
            racers.append(racer)
            racer.start()
            racer.join(0.3)
        return real_remove(patch)

    monkeypatch.setattr(Patch, "remove", remove)
    dbapi.uninstrument(sqlite3)
    racers[0].join()
    monkeypatch.undo()
    dbapi.uninstrument(sqlite3)
    assert sqlite3.connect is original
