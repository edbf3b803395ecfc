"""DB-API hooks for aiosqlite: counted in place, at the coroutine, where the application waits.

Counted: ``Connection.execute``, ``executemany``, ``executescript``,
``execute_fetchall`` and ``execute_insert``, and ``Cursor.execute``,
``executemany`` and ``executescript``.  Each counts from the moment the
coroutine starts until its result is back, queueing for the connection's
worker thread included: that is the time the application waits, so many
coroutines can be in flight at once from one thread, and a cancelled query
ends, as an error, when its coroutine does.  The counting methods are on
aiosqlite's own classes and find the connection's meter in the side table,
so ``type(connection)`` and ``type(cursor)`` stay aiosqlite's.  The sqlite3
connection underneath is not counted again, even if sqlite3 is instrumented
too.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import aiosqlite
import aiosqlite.context

from .._faults import report as report_fault
from .._patching import Patch, like
from ..meter import Meter
from ._connections import (
    already_counted_by_other,
    connection_meter,
    forget_connection,
    set_connection_meter,
)
from ._in_place import InPlaceCounting, InPlaceTarget

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "aiosqlite"
CURSOR_METHODS = ("execute", "executemany", "executescript")
SHORTCUTS = ("execute", "executemany", "executescript", "execute_fetchall", "execute_insert")
BASE_CONNECTION = aiosqlite.Connection
BASE_CURSOR = aiosqlite.Cursor


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


def _coroutine_function(method: Any) -> Callable[..., Coroutine[Any, Any, Any]]:
    # aiosqlite's methods are `async def`s wrapped to return a Result that is
    # both awaitable and an async context manager; count the coroutine inside.
    inner: Callable[..., Coroutine[Any, Any, Any]] = getattr(method, "__wrapped__", method)
    return inner


# ------------------------------------------------------------ counting methods
#
# Each takes the Patch that installs it: ``patch.own`` is aiosqlite's
# function, and a patch that was removed while another tool's wrapper kept it
# in a chain becomes a pass-through (``patch.active``).


def _statement(
    args: tuple[Any, ...], kwargs: dict[str, Any], cursor: Any = None
) -> tuple[Any, ...]:
    """(dialect, sql, params, cursor) of a call (sql, parameters=None), as sqlite3 names them."""
    sql = args[0] if args else kwargs.get("sql", kwargs.get("sql_script"))
    params = args[1] if len(args) > 1 else kwargs.get("parameters")
    return ("sqlite", sql, params, cursor)


def shortcut(patch: Patch) -> Any:
    """A connection method: its coroutine is the query; it still returns aiosqlite's Result."""
    inner = _coroutine_function(patch.own)

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self)
        if meter is None or not patch.active:
            return await inner(self, *args, **kwargs)
        # The core's awaitable pairs begin and end; a cancellation (the
        # application stopped waiting) ends the query as an error.
        return await meter._awaiting(inner(self, *args, **kwargs), _statement(args, kwargs))

    like(counted, inner)
    return aiosqlite.context.contextmanager(counted)


def _counted_cursor_method(patch: Patch) -> Any:
    """A cursor method (an ``async def``): its coroutine is the query."""
    own = patch.own
    # executescript leaves the cursor's rowcount as it was: its rows are not read.
    reads_rows = patch.name != "executescript"

    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self._conn)
        if meter is None or not patch.active:
            return await own(self, *args, **kwargs)
        statement = _statement(args, kwargs, self if reads_rows else None)
        return await meter._awaiting(own(self, *args, **kwargs), statement)

    return like(method, own)


def _connecting(patch: Patch) -> Any:
    """``Connection._connect``: the sqlite3 connection it opens is not counted again."""
    own = patch.own

    async def _connect(self: Any) -> Any:
        connected = await own(self)
        if patch.active and connection_meter(self) is not None:
            _forget_inner(self)
        return connected

    return like(_connect, own)


def _forget_inner(connection: Any) -> None:
    # Counted here, where the application waits: the sqlite3 connection
    # underneath must not count the same statements again.
    inner = connection.__dict__.get("_connection")
    if inner is not None:
        forget_connection(inner)


def _targets() -> list[InPlaceTarget]:
    targets: list[InPlaceTarget] = [(BASE_CONNECTION, name, shortcut) for name in SHORTCUTS]
    targets += [(BASE_CURSOR, name, _counted_cursor_method) for name in CURSOR_METHODS]
    targets.append((BASE_CONNECTION, "_connect", _connecting))
    return [target for target in targets if target[1] in vars(target[0])]


def _is_closed(connection: Any) -> bool:
    # aiosqlite's own flag: false once stop() or close() ran.
    return not connection.__dict__.get("_running", False)


#: aiosqlite's classes, counting while aiosqlite is instrumented or a counting connection is open.
in_place = InPlaceCounting(_targets, _is_closed)


# ----------------------------------------------------------------- connections


def instrument(module: Any, meter: Meter) -> list[Any]:
    """Put the counting methods on aiosqlite's classes, and patch aiosqlite.connect
    (and aiosqlite.core.connect)."""

    def make(patch: Patch) -> Callable[..., Any]:
        original = patch.original

        def connect(*args: Any, **kwargs: Any) -> Any:
            connection = original(*args, **kwargs)
            if patch.active:
                try:
                    wrap(connection, meter)
                except Exception as exc:  # noqa: BLE001 - ours, never the application's
                    report_fault("aiosqlite: could not count a new connection", exc)
            return connection

        return like(connect, original)

    patches: list[Any] = [in_place, Patch(module, "connect", make)]
    core = getattr(module, "core", None)
    if core is not None and getattr(core, "connect", None) is patches[1].original:
        patches.append(Patch(core, "connect", make))
    return patches


def wrap(connection: Any, meter: Meter) -> Any:
    already_counted_by_other(connection, meter, NAME)
    in_place.hold(connection)
    set_connection_meter(connection, meter)
    _forget_inner(connection)
    return connection


def unwrap(connection: Any) -> Any:
    forget_connection(connection)
    in_place.release(connection)
    return connection
