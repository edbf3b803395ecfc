"""DB-API hooks for psycopg2: a counting connection_factory, counted cursor_factory classes.

Counted: ``cursor.execute``, ``executemany``, ``callproc``, ``copy_expert``,
``copy_from`` and ``copy_to``, for every cursor class (extras' DictCursor,
RealDictCursor, NamedTupleCursor, your own).  New connections get a subclass
through ``connection_factory``, whose ``cursor()`` counts whatever cursor
factory is asked for.  psycopg2's classes are immutable, so an existing
connection is counted through its ``cursor_factory`` attribute instead: its
cursors are counted unless a call passes its own ``cursor_factory``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions

from .._patching import Patch, like
from ..meter import Meter
from ._counting import (
    ConnectionClasses,
    already_counted_by_other,
    connection_meter,
    connection_namespace,
    counted_class,
    counted_meter,
    forget_connection,
    report_fault,
    set_connection_meter,
    tracked,
)

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "psycopg2"
CURSOR_METHODS = {
    name: tracked
    for name in ("execute", "executemany", "callproc", "copy_expert", "copy_from", "copy_to")
}
BASE_CONNECTION = psycopg2.extensions.connection
BASE_CURSOR = psycopg2.extensions.cursor


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of a psycopg2 cursor class."""
    return counted_class(base, meter, CURSOR_METHODS)


def counted_cursor_factory(factory: Any, meter: Meter) -> Any:
    if isinstance(factory, type) and issubclass(factory, BASE_CURSOR):
        return cursor_class(factory, meter)
    report_fault("psycopg2: a cursor_factory that is not a cursor subclass is not counted")
    return factory


def _counting_connection_class(base: Any) -> type:
    base_cursor = base.cursor

    def cursor(
        self: Any, name: Any = None, cursor_factory: Any = None, *args: Any, **kwargs: Any
    ) -> Any:
        meter = connection_meter(self)
        if meter is not None:
            factory = cursor_factory or self.cursor_factory or BASE_CURSOR
            cursor_factory = counted_cursor_factory(factory, meter)
        return base_cursor(self, name, cursor_factory, *args, **kwargs)

    cursor.__doc__ = base_cursor.__doc__
    namespace = connection_namespace(base)
    namespace["cursor"] = cursor
    return type(base.__name__, (base,), namespace)


#: The counting subclass of a psycopg2 connection class (its meter is per connection).
connection_class = ConnectionClasses(_counting_connection_class)


def instrument(module: Any, meter: Meter) -> list[Patch]:
    """Patch psycopg2.connect to open counted connections."""

    def make(patch: Patch) -> Callable[..., Any]:
        original = patch.original

        def connect(
            dsn: Any = None, connection_factory: Any = None, *args: Any, **kwargs: Any
        ) -> Any:
            if not patch.active:
                return original(dsn, connection_factory, *args, **kwargs)
            factory = connection_factory
            try:
                base = connection_factory or BASE_CONNECTION
                if isinstance(base, type) and issubclass(base, BASE_CONNECTION):
                    factory = connection_class(base)
                else:
                    report_fault("psycopg2: a connection_factory that is not a class")
            except Exception as exc:  # noqa: BLE001 - ours, never the application's
                report_fault("psycopg2: could not prepare a counted connection", exc)
            connection = original(dsn, factory, *args, **kwargs)
            try:
                if factory is not connection_factory:
                    set_connection_meter(connection, meter)
            except Exception as exc:  # noqa: BLE001
                report_fault("psycopg2: could not count a new connection", exc)
            return connection

        return like(connect, original)

    return [Patch(module, "connect", make)]


# The cursor_factory an existing connection had before wrap_connection.
_replaced_factories: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def wrap(connection: Any, meter: Meter) -> Any:
    already_counted_by_other(connection, meter, NAME)
    if type(connection).__dict__.get("__querymeter_base__") is None:
        # Not of a counting class, and psycopg2's classes cannot change: count
        # the cursors made from its default factory.
        current = connection.cursor_factory
        if not (isinstance(current, type) and counted_meter(current) is meter):
            _replaced_factories.setdefault(connection, current)
            connection.cursor_factory = counted_cursor_factory(current or BASE_CURSOR, meter)
    set_connection_meter(connection, meter)
    return connection


def unwrap(connection: Any) -> Any:
    forget_connection(connection)
    if connection in _replaced_factories:
        original = _replaced_factories.pop(connection)
        current = connection.cursor_factory
        if isinstance(current, type) and counted_meter(current) is not None:
            connection.cursor_factory = original
    return connection
