"""DB-API hooks for PyMySQL: a counting Connection subclass and counted cursor classes.

Counted: ``cursor.execute``, ``callproc`` and ``executemany`` (one query per
call: PyMySQL sends a batch through ``execute``, which is not counted again
inside it), for every cursor class (DictCursor, SSCursor, your own).  The
connection's ``cursor()`` counts the class it is asked for, or its
``cursorclass``.  ``pymysql.connect`` is patched; an existing connection
changes class in place.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors

from ..meter import Meter
from ._counting import (
    already_counted_by_other,
    batch,
    connection_meter,
    connection_namespace,
    counted_class,
    forget_connection,
    original_class,
    report_fault,
    set_connection_meter,
    tracked,
)
from ._patching import Patch

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "pymysql"
CURSOR_METHODS = {"execute": tracked, "callproc": tracked, "executemany": batch("execute")}
BASE_CONNECTION = pymysql.connections.Connection


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of a PyMySQL cursor class."""
    return counted_class(base, meter, CURSOR_METHODS)


_connection_classes: weakref.WeakValueDictionary[type, type] = weakref.WeakValueDictionary()
_connection_classes_lock = threading.Lock()


def connection_class(base: type) -> type[Any]:
    """The counting subclass of a PyMySQL connection class (its meter is per connection)."""
    base = original_class(base)
    base_cursor = base.cursor  # type: ignore[attr-defined]
    cls = _connection_classes.get(base)
    if cls is not None:
        return cls
    with _connection_classes_lock:
        cls = _connection_classes.get(base)
        if cls is None:

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
            cls = _connection_classes[base] = type(base.__name__, (base,), namespace)
    return cls


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

        connect.__name__ = connect.__qualname__ = "connect"
        connect.__doc__ = original.__doc__
        connect.__wrapped__ = original  # type: ignore[attr-defined]
        return connect

    patches = [Patch(module, "connect", make)]
    if getattr(module, "Connect", None) is patches[0].original:
        patches.append(Patch(module, "Connect", make))
    return patches


def wrap(connection: Any, meter: Meter) -> Any:
    already_counted_by_other(connection, meter, NAME)
    counting = connection_class(type(connection))
    if type(connection) is not counting:
        connection.__class__ = counting
    set_connection_meter(connection, meter)
    return connection


def unwrap(connection: Any) -> Any:
    forget_connection(connection)
    base = type(connection).__dict__.get("__querymeter_base__")
    if base is not None:
        connection.__class__ = base
    return connection
