"""DB-API hooks for PyMySQL: a counting Connection subclass and counted cursor classes.

Counted: ``cursor.execute``, ``callproc`` and ``executemany`` (one query per
call: PyMySQL sends a batch through ``execute``, which is not counted again
inside it), for every cursor class (DictCursor, SSCursor, your own).  The
connection's ``cursor()`` counts the class it is asked for, or its
``cursorclass``.  ``pymysql.connect`` is patched; an existing connection
changes class in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors

from .._patching import Patch, like
from ..meter import Meter
from ._counting import (
    ConnectionClasses,
    batch,
    connection_meter,
    connection_namespace,
    counted_class,
    report_fault,
    set_connection_meter,
    tracked,
    unwrap_in_place,
    wrap_in_place,
)

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "pymysql"
CURSOR_METHODS = {"execute": tracked, "callproc": tracked, "executemany": batch("execute")}
BASE_CONNECTION = pymysql.connections.Connection


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of a PyMySQL cursor class."""
    return counted_class(base, meter, CURSOR_METHODS)


def _counting_connection_class(base: Any) -> type:
    base_cursor = base.cursor

    def cursor(self: Any, cursor: Any = None) -> Any:
        meter = connection_meter(self)
        if meter is not None:
            requested = cursor or self.cursorclass
            if isinstance(requested, type):
                cursor = cursor_class(requested, meter)
            else:
                report_fault("pymysql: a cursor class that is not a class is not counted")
        return base_cursor(self, cursor)

    cursor.__doc__ = base_cursor.__doc__
    namespace = connection_namespace(base)
    namespace["cursor"] = cursor
    return type(base.__name__, (base,), namespace)


#: The counting subclass of a PyMySQL connection class (its meter is per connection).
connection_class = ConnectionClasses(_counting_connection_class)


def instrument(module: Any, meter: Meter) -> list[Patch]:
    """Patch pymysql.connect and pymysql.Connect (pymysql.Connection stays the class)."""

    def make(patch: Patch) -> Callable[..., Any]:
        original = patch.original

        def connect(*args: Any, **kwargs: Any) -> Any:
            if not patch.active:
                return original(*args, **kwargs)
            try:
                counting: Any = connection_class(BASE_CONNECTION)
                connection = counting.__new__(counting)
                # Before __init__: PyMySQL runs init_command through cursor()
                # while it connects, and that statement counts too.
                set_connection_meter(connection, meter)
            except Exception as exc:  # noqa: BLE001 - ours, never the application's
                report_fault("pymysql: could not prepare a counted connection", exc)
                return original(*args, **kwargs)
            connection.__init__(*args, **kwargs)
            return connection

        return like(connect, original)

    patches = [Patch(module, "connect", make)]
    if getattr(module, "Connect", None) is patches[0].original:
        patches.append(Patch(module, "Connect", make))
    return patches


def wrap(connection: Any, meter: Meter) -> Any:
    return wrap_in_place(connection, meter, NAME, connection_class)


def unwrap(connection: Any) -> Any:
    return unwrap_in_place(connection)
