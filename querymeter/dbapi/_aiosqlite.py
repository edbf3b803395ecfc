"""DB-API hooks for aiosqlite: counted at the coroutine, where the application waits.

Counted: ``Connection.execute``, ``executemany``, ``executescript``,
``execute_fetchall`` and ``execute_insert``, and ``Cursor.execute``,
``executemany`` and ``executescript``.  Each counts from the moment the
coroutine starts until its result is back, queueing for the connection's
worker thread included: that is the time the application waits, so many
coroutines can be in flight at once from one thread, and a cancelled query
ends, as an error, when its coroutine does.  The sqlite3 connection
underneath is not counted again, even if sqlite3 is instrumented too.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import aiosqlite
import aiosqlite.context

from .._patching import Patch, like
from ..meter import Meter
from ._counting import (
    ConnectionClasses,
    connection_meter,
    connection_namespace,
    counted_class,
    forget_connection,
    report_fault,
    tracked,
    unwrap_in_place,
    wrap_in_place,
)

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "aiosqlite"
CURSOR_METHODS = {"execute": tracked, "executemany": tracked, "executescript": tracked}
SHORTCUTS = ("execute", "executemany", "executescript", "execute_fetchall", "execute_insert")
BASE_CONNECTION = aiosqlite.Connection
BASE_CURSOR = aiosqlite.Cursor


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of an aiosqlite cursor class."""
    return counted_class(base, meter, CURSOR_METHODS)


def counted_cursor(result: Any, meter: Meter | None) -> Any:
    """A cursor the connection returned, made counted (aiosqlite makes plain ones)."""
    if meter is not None and isinstance(result, BASE_CURSOR):
        result.__class__ = cursor_class(type(result), meter)
    return result


def _coroutine_function(method: Any) -> Callable[..., Coroutine[Any, Any, Any]]:
    # aiosqlite's methods are `async def`s wrapped to return a Result that is
    # both awaitable and an async context manager; count the coroutine inside.
    inner: Callable[..., Coroutine[Any, Any, Any]] = getattr(method, "__wrapped__", method)
    return inner


def _make_connection_class(base: Any) -> type[Any]:
    namespace = connection_namespace(base)

    def shortcut(name: str) -> Any:
        inner = _coroutine_function(getattr(base, name))

        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            meter = connection_meter(self)
            if meter is None:
                return await inner(self, *args, **kwargs)
            # The core's awaitable pairs begin and end; a cancellation (the
            # application stopped waiting) ends the query as an error.
            result = await meter._awaiting(inner(self, *args, **kwargs))
            return counted_cursor(result, meter)

        counted.__name__ = name
        counted.__qualname__ = f"{base.__qualname__}.{name}"
        counted.__doc__ = inner.__doc__
        return aiosqlite.context.contextmanager(counted)

    for name in SHORTCUTS:
        if hasattr(base, name):
            namespace[name] = shortcut(name)

    make_cursor = _coroutine_function(base.cursor)

    async def cursor(self: Any) -> Any:
        return counted_cursor(await make_cursor(self), connection_meter(self))

    cursor.__doc__ = make_cursor.__doc__
    namespace["cursor"] = aiosqlite.context.contextmanager(cursor)

    base_connect = base._connect

    async def _connect(self: Any) -> Any:
        connected = await base_connect(self)
        # Counted here, where the application waits: the sqlite3 connection
        # underneath must not count the same statements again.
        inner = getattr(self, "_connection", None)
        if inner is not None:
            forget_connection(inner)
        return connected

    namespace["_connect"] = _connect
    return type(base.__name__, (base,), namespace)


#: The counting subclass of an aiosqlite Connection class (its meter is per connection).
connection_class = ConnectionClasses(_make_connection_class)


def instrument(module: Any, meter: Meter) -> list[Patch]:
    """Patch aiosqlite.connect (and aiosqlite.core.connect)."""

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

    patches = [Patch(module, "connect", make)]
    core = getattr(module, "core", None)
    if core is not None and getattr(core, "connect", None) is patches[0].original:
        patches.append(Patch(core, "connect", make))
    return patches


def wrap(connection: Any, meter: Meter) -> Any:
    wrap_in_place(connection, meter, NAME, connection_class)
    inner = getattr(connection, "_connection", None)
    if inner is not None:
        forget_connection(inner)
    return connection


def unwrap(connection: Any) -> Any:
    return unwrap_in_place(connection)
