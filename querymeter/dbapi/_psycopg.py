"""DB-API hooks for psycopg 3, sync and async: counted cursor factories on counting connections.

Counted, on Cursor, ClientCursor, RawCursor and their async twins:
``execute``, ``executemany``, ``stream`` (from the first row asked for until
the stream ends) and ``copy`` (the ``with`` block); on server-side cursors,
``execute``.  ``Connection.execute`` goes through ``cursor()``, so it is
counted there, once.  ``Connection.connect`` and ``AsyncConnection.connect``
(and ``psycopg.connect``) are patched, so connections of subclasses and of
psycopg_pool are counted too.  An existing connection changes class in place.
"""

from __future__ import annotations

import inspect
from typing import Any

import psycopg

from .._patching import Patch, like
from ..meter import Meter
from ._counting import (
    ConnectionClasses,
    CountedMethod,
    connection_meter,
    connection_namespace,
    counted_async_context,
    counted_async_iteration,
    counted_class,
    counted_context,
    counted_iteration,
    counted_meter,
    original_class,
    report_fault,
    tracked,
    unwrap_in_place,
    wrap_in_place,
)

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "psycopg"
SERVER_CURSORS = (psycopg.ServerCursor, psycopg.AsyncServerCursor)
SYNC_METHODS: dict[str, CountedMethod] = {
    "execute": tracked,
    "executemany": tracked,
    "stream": counted_iteration,
    "copy": counted_context,
}
ASYNC_METHODS: dict[str, CountedMethod] = {
    "execute": tracked,
    "executemany": tracked,
    "stream": counted_async_iteration,
    "copy": counted_async_context,
}
SERVER_METHODS: dict[str, CountedMethod] = {"execute": tracked}
FACTORY_ATTRIBUTES = ("cursor_factory", "server_cursor_factory")


def connection_types() -> tuple[type, ...]:
    return (psycopg.Connection, psycopg.AsyncConnection)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of a psycopg cursor class."""
    if issubclass(base, SERVER_CURSORS):
        methods = SERVER_METHODS
    elif inspect.iscoroutinefunction(getattr(base, "execute", None)):
        methods = ASYNC_METHODS
    else:
        methods = SYNC_METHODS
    return counted_class(base, meter, methods)


def count_factories(connection: Any, meter: Meter) -> None:
    """Make the connection's cursor factories counted ones (also ones assigned later)."""
    for attribute in FACTORY_ATTRIBUTES:
        factory = getattr(connection, attribute, None)
        if isinstance(factory, type) and counted_meter(factory) is not meter:
            setattr(connection, attribute, cursor_class(factory, meter))


def restore_factories(connection: Any) -> None:
    for attribute in FACTORY_ATTRIBUTES:
        factory = getattr(connection, attribute, None)
        if isinstance(factory, type) and counted_meter(factory) is not None:
            setattr(connection, attribute, original_class(factory))


def _counting_connection_class(base: Any) -> type:
    base_cursor = base.cursor

    def cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self)
        if meter is not None:
            count_factories(self, meter)
        return base_cursor(self, *args, **kwargs)

    cursor.__doc__ = base_cursor.__doc__
    namespace = connection_namespace(base)
    namespace["cursor"] = cursor
    return type(base.__name__, (base,), namespace)


#: The counting subclass of a psycopg connection class (its meter is per connection).
connection_class = ConnectionClasses(_counting_connection_class)


def count_connection(connection: Any, meter: Meter) -> None:
    """Count a connection (new or existing) into a meter, in place."""
    wrap_in_place(connection, meter, NAME, connection_class)
    count_factories(connection, meter)


def instrument(module: Any, meter: Meter) -> list[Patch]:
    """Patch Connection.connect, AsyncConnection.connect and psycopg.connect."""

    def count_new(connection: Any) -> None:
        try:
            count_connection(connection, meter)
        except Exception as exc:  # noqa: BLE001 - ours, never the application's
            report_fault("psycopg: could not count a new connection", exc)

    def make_sync(patch: Patch) -> Any:
        own = patch.own  # the classmethod: bound to the class it is called on

        def connect(cls: type, *args: Any, **kwargs: Any) -> Any:
            connection = own.__get__(None, cls)(*args, **kwargs)
            if patch.active:
                count_new(connection)
            return connection

        return classmethod(like(connect, own.__func__))

    def make_async(patch: Patch) -> Any:
        own = patch.own

        async def connect(cls: type, *args: Any, **kwargs: Any) -> Any:
            connection = await own.__get__(None, cls)(*args, **kwargs)
            if patch.active:
                count_new(connection)
            return connection

        return classmethod(like(connect, own.__func__))

    sync_patch = Patch(module.Connection, "connect", make_sync)
    async_patch = Patch(module.AsyncConnection, "connect", make_async)

    def make_module(patch: Patch) -> Any:
        # psycopg.connect is Connection.connect, bound when psycopg was imported.
        return sync_patch.replacement.__get__(None, module.Connection)

    return [sync_patch, async_patch, Patch(module, "connect", make_module)]


def wrap(connection: Any, meter: Meter) -> Any:
    count_connection(connection, meter)
    return connection


def unwrap(connection: Any) -> Any:
    restore_factories(connection)
    return unwrap_in_place(connection)
