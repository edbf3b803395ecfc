"""DB-API hooks for mysqlclient (MySQLdb): counted in place, on MySQLdb's own classes.

Counted: ``cursor.execute``, ``callproc`` and ``executemany`` (one query per
call: MySQLdb sends a batch through ``execute``, which is not counted again
inside it), for every cursor class (DictCursor, SSCursor, SSDictCursor, your
own: they inherit MySQLdb's methods), and ``connection.query()`` when the
application calls it itself (MySQLdb's own calls are part of a cursor's
statement, or its own bookkeeping).

Each counting method finds the meter of its connection in the side table,
and a connection that does not count calls MySQLdb's own at once:
``type(connection)``, ``type(cursor)`` and ``cursorclass`` stay exactly what
the application made and chose, and no class of the application is
subclassed.  ``Connection.__init__`` is patched while instrumented, so
``MySQLdb.connect``, ``MySQLdb.Connect``, ``MySQLdb.connections.Connection``
and subclasses all count.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import MySQLdb  # type: ignore[import-untyped]
import MySQLdb._mysql  # type: ignore[import-untyped]
import MySQLdb.connections  # type: ignore[import-untyped]
import MySQLdb.cursors  # type: ignore[import-untyped]

from .._faults import report as report_fault
from .._patching import Patch, like
from ..meter import Meter
from ._connections import (
    already_counted_by_other,
    connection_meter,
    forget_connection,
    set_connection_meter,
)
from ._in_place import MYSQL, InPlaceCounting, InPlaceTarget, cursor_batch, cursor_call

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "MySQLdb"
BASE_CONNECTION = MySQLdb.connections.Connection
BASE_CURSOR = MySQLdb.cursors.BaseCursor
# MySQLdb's own execute, which a batch calls where the cursor's class keeps it.
_own_execute = BASE_CURSOR.__dict__["execute"]
# Code of these modules calls Connection.query as part of a cursor's statement
# (BaseCursor._query) or for MySQLdb's own bookkeeping (begin, SET NAMES).
_DRIVER_GLOBALS = (vars(MySQLdb.cursors), vars(MySQLdb.connections))
# The C type's own member: a property of a subclass is application code.
_is_open = MySQLdb._mysql.connection.open.__get__


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


# ------------------------------------------------------------ counting methods
#
# execute, callproc and executemany: the shared makers of _in_place.
# Connection.query: ``patch.own`` is MySQLdb's function, and a patch removed
# while another tool's wrapper kept it in a chain becomes a pass-through.


def _counted_query(patch: Patch) -> Any:
    """``Connection.query``: counted where the application calls it itself."""
    own = patch.own
    cursors_globals, connections_globals = _DRIVER_GLOBALS
    caller_frame = sys._getframe

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Called by MySQLdb itself: part of a cursor's counted statement, or
        # MySQLdb's own bookkeeping.  Only the application's calls count.
        caller = caller_frame(1).f_globals
        if caller is cursors_globals or caller is connections_globals or not patch.active:
            return own(self, *args, **kwargs)
        meter = connection_meter(self)
        if meter is None:
            return own(self, *args, **kwargs)
        return meter._call_statement(MYSQL, 0, own, self, *args, **kwargs)

    return like(query, own)


def _targets() -> list[InPlaceTarget]:
    """Every method of MySQLdb's counted in place."""
    methods: dict[str, Callable[[Patch], Any]] = {
        "execute": cursor_call,
        "callproc": cursor_call,
        "executemany": cursor_batch(_own_execute),
    }
    own = vars(BASE_CURSOR)
    targets: list[InPlaceTarget] = [
        (BASE_CURSOR, name, make) for name, make in methods.items() if name in own
    ]
    if "query" in vars(BASE_CONNECTION):
        targets.append((BASE_CONNECTION, "query", _counted_query))
    return targets


def _is_closed(connection: Any) -> bool:
    return not _is_open(connection)


#: MySQLdb's classes, counting while MySQLdb is instrumented or a counting connection is open.
in_place = InPlaceCounting(_targets, _is_closed)


# --------------------------------------------------------------- connections


def _count(connection: Any, meter: Meter) -> None:
    already_counted_by_other(connection, meter, NAME)
    in_place.hold(connection)
    set_connection_meter(connection, meter)


def instrument(module: Any, meter: Meter) -> list[Any]:
    """Put the counting methods on MySQLdb's classes, and patch Connection.__init__
    (what MySQLdb.connect, MySQLdb.Connect and MySQLdb.connections.Connection run)."""

    def make(patch: Patch) -> Any:
        original = patch.original

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            if patch.active:
                try:
                    _count(self, meter)
                except Exception as exc:  # noqa: BLE001 - ours, never the application's
                    report_fault("MySQLdb: could not count a new connection", exc)

        return like(__init__, original)

    return [in_place, Patch(BASE_CONNECTION, "__init__", make)]


def wrap(connection: Any, meter: Meter) -> Any:
    _count(connection, meter)
    return connection


def unwrap(connection: Any) -> Any:
    forget_connection(connection)
    in_place.release(connection)
    return connection
