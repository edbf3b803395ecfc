"""DB-API hooks for psycopg2: a counting connection_factory, counted cursor_factory classes.

Counted: ``cursor.execute``, ``executemany``, ``callproc``, ``copy_expert``,
``copy_from`` and ``copy_to``, for every cursor class (extras' DictCursor,
RealDictCursor, NamedTupleCursor, your own).  New connections get a counting
class through ``connection_factory``.  Its counting ``cursor()`` sits just
above psycopg2's own, below the ``cursor()`` of your connection class (the
extras' ``DictConnection`` and its kin): that one gets exactly the arguments
the application gave, and what it asks of psycopg2 is counted.  psycopg2's
classes are immutable, so an existing connection is counted through its
``cursor_factory`` attribute instead: its cursors are counted unless a call
passes its own ``cursor_factory``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import psycopg2
import psycopg2.extensions

from .._faults import report as report_fault
from .._patching import Patch, like
from ..meter import Meter
from ._classes import (
    BASE_ATTRIBUTE,
    counted_class,
    counted_meter,
    quiet_subclass,
    timed,
    timed_statement,
)
from ._connections import (
    ConnectionClasses,
    already_counted_by_other,
    connection_meter,
    forget_connection,
    set_connection_meter,
)

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "psycopg2"
# copy_from and copy_to take a file and a table, not a statement: counted
# without statement text.
_POSTGRESQL = timed_statement("postgresql")
CURSOR_METHODS = {
    "execute": _POSTGRESQL,
    "executemany": _POSTGRESQL,
    "callproc": _POSTGRESQL,
    "copy_expert": timed_statement("postgresql", 4),  # (sql, file): no parameters
    "copy_from": timed,
    "copy_to": timed,
}
BASE_CONNECTION = psycopg2.extensions.connection
BASE_CURSOR = psycopg2.extensions.cursor
# psycopg2's own attribute, not an override of the application's.
_cursor_factory_of = BASE_CONNECTION.__dict__["cursor_factory"].__get__
_base_cursor = BASE_CONNECTION.cursor
# connection.cursor(name=None, cursor_factory=None, withhold=False, scrollable=None)
FACTORY_POSITION = 1
MAX_CURSOR_ARGUMENTS = 4


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of a psycopg2 cursor class (the class itself if it cannot be)."""
    return counted_class(base, meter, CURSOR_METHODS)


def counted_cursor_factory(factory: Any, meter: Meter) -> Any:
    if isinstance(factory, type) and issubclass(factory, BASE_CURSOR):
        return cursor_class(factory, meter)
    report_fault("psycopg2: a cursor_factory that is not a cursor subclass is not counted")
    return factory


def _counted_arguments(
    connection: Any, args: tuple[Any, ...], kwargs: dict[str, Any], meter: Meter
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments for psycopg2's cursor(), with the cursor factory it would use counted.

    Arguments psycopg2 would refuse are left as they are, for psycopg2 to
    raise its own error.
    """
    if len(args) > MAX_CURSOR_ARGUMENTS:
        return args, kwargs
    positional = len(args) > FACTORY_POSITION
    if positional and "cursor_factory" in kwargs:
        return args, kwargs
    factory = args[FACTORY_POSITION] if positional else kwargs.get("cursor_factory")
    if factory is None:
        # What psycopg2 falls back to: the connection's, or its own cursor.
        factory = _cursor_factory_of(connection)
        if factory is None:
            factory = BASE_CURSOR
    counted = counted_cursor_factory(factory, meter)
    if positional:
        return (*args[:FACTORY_POSITION], counted, *args[FACTORY_POSITION + 1 :]), kwargs
    return args, {**kwargs, "cursor_factory": counted}


# Named as psycopg2's class, which it stands for.
class connection(BASE_CONNECTION):
    """A psycopg2 connection that counts its cursors' statements (when it has a meter)."""

    __slots__ = ()
    __module__ = BASE_CONNECTION.__module__
    __qualname__ = BASE_CONNECTION.__qualname__
    __doc__ = BASE_CONNECTION.__doc__

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self)
        if meter is not None:
            try:
                args, kwargs = _counted_arguments(self, args, kwargs, meter)
            except Exception as exc:  # noqa: BLE001 - ours, never the application's
                report_fault("psycopg2: could not count a cursor", exc)
        return _base_cursor(self, *args, **kwargs)

    cursor.__doc__ = _base_cursor.__doc__


setattr(connection, BASE_ATTRIBUTE, BASE_CONNECTION)
CountingConnection = connection


def _counting_connection_class(base: Any) -> type:
    """The counting class for a connection class: its ``cursor()`` first, then ours.

    ``class X(base, CountingConnection)``: in X's method order, a ``cursor()``
    of ``base`` (DictConnection's ``kwargs.setdefault('cursor_factory', ...)``)
    comes first and gets the application's arguments; its ``super().cursor()``
    reaches the counting one, just above psycopg2's.  Made without running
    code of the application's class (see quiet_subclass).
    """
    if base is BASE_CONNECTION:
        return CountingConnection
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        BASE_ATTRIBUTE: base,
    }
    return quiet_subclass(base.__name__, (base, CountingConnection), namespace)


#: The counting class of a psycopg2 connection class (its meter is per connection).
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
    if type(connection).__dict__.get(BASE_ATTRIBUTE) is None:
        # Not of a counting class, and psycopg2's classes cannot change: count
        # the cursors made from its default factory.
        current = connection.cursor_factory
        if current is None and type(connection).cursor is not _base_cursor:
            # Its class's cursor() has a default of its own (DictConnection):
            # setting the attribute would change which cursor it makes.
            raise ValueError(
                f"this existing psycopg2 {type(connection).__name__} chooses its cursor "
                "class in its own cursor(), and its cursor_factory is None: it cannot be "
                "counted without changing its cursors; open it with an instrumented "
                "psycopg2.connect, or give it a cursor_factory"
            )
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
