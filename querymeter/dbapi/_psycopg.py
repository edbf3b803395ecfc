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
import threading
import weakref
from collections.abc import Callable
from typing import Any

import psycopg

from ..meter import Meter
from ._counting import (
    CountedMethod,
    already_counted_by_other,
    connection_meter,
    connection_namespace,
    counted_async_context,
    counted_async_iteration,
    counted_class,
    counted_context,
    counted_iteration,
    counted_meter,
    forget_connection,
    original_class,
    report_fault,
    set_connection_meter,
    tracked,
)
from ._patching import Patch

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


_connection_classes: weakref.WeakValueDictionary[type, type] = weakref.WeakValueDictionary()
_connection_classes_lock = threading.Lock()


def connection_class(base: type) -> type[Any]:
    """The counting subclass of a psycopg connection class (its meter is per connection)."""
    base = original_class(base)
    base_cursor = base.cursor  # type: ignore[attr-defined]
    cls = _connection_classes.get(base)
    if cls is not None:
        return cls
    with _connection_classes_lock:
        cls = _connection_classes.get(base)
        if cls is None:

            def cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
                meter = connection_meter(self)
                if meter is not None:
                    count_factories(self, meter)
                return base_cursor(self, *args, **kwargs)

            cursor.__doc__ = base_cursor.__doc__
            namespace = connection_namespace(base)
            namespace["cursor"] = cursor
            cls = _connection_classes[base] = type(base.__name__, (base,), namespace)
    return cls


def count_connection(connection: Any, meter: Meter) -> None:
    """Count a connection (new or existing) into a meter, in place."""
    counting = connection_class(type(connection))
    if type(connection) is not counting:
        connection.__class__ = counting
    set_connection_meter(connection, meter)
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

        return classmethod(_like(connect, own.__func__))

    def make_async(patch: Patch) -> Any:
        own = patch.own

        async def connect(cls: type, *args: Any, **kwargs: Any) -> Any:
            connection = await own.__get__(None, cls)(*args, **kwargs)
            if patch.active:
                count_new(connection)
            return connection

        return classmethod(_like(connect, own.__func__))

    sync_patch = Patch(module.Connection, "connect", make_sync)
    async_patch = Patch(module.AsyncConnection, "connect", make_async)

    def make_module(patch: Patch) -> Any:
        # psycopg.connect is Connection.connect, bound when psycopg was imported.
        return sync_patch.replacement.__get__(None, module.Connection)

    return [sync_patch, async_patch, Patch(module, "connect", make_module)]


def _like(function: Callable[..., Any], original: Callable[..., Any]) -> Callable[..., Any]:
    function.__name__ = original.__name__
    function.__qualname__ = original.__qualname__
    function.__doc__ = original.__doc__
    function.__wrapped__ = original  # type: ignore[attr-defined]
    return function


def wrap(connection: Any, meter: Meter) -> Any:
    already_counted_by_other(connection, meter, NAME)
    count_connection(connection, meter)
    return connection


def unwrap(connection: Any) -> Any:
    forget_connection(connection)
    restore_factories(connection)
    base = type(connection).__dict__.get("__querymeter_base__")
    if base is not None:
        connection.__class__ = base
    return connection
