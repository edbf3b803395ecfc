"""DB-API hooks for PyMySQL: counted in place, on PyMySQL's own Cursor class.

Counted: ``Cursor.execute``, ``callproc`` and ``executemany`` (one query per
call: PyMySQL sends a batch through ``execute``, which is not counted again
inside it), for every cursor class (DictCursor, SSCursor, your own: they
inherit PyMySQL's methods).  Each counting method finds the meter of its
cursor's connection in the side table, and a connection that does not count
calls PyMySQL's own at once: ``type(connection)``, ``type(cursor)`` and
``cursorclass`` stay exactly what the application made and chose.
``pymysql.connect`` is patched; it counts the connection before PyMySQL
connects, so that ``init_command`` counts too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors

from .._faults import report as report_fault
from .._patching import Patch, like
from ..meter import Meter
from ._connections import already_counted_by_other, forget_connection, set_connection_meter
from ._in_place import InPlaceCounting, InPlaceTarget, cursor_batch, cursor_call

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "pymysql"
BASE_CONNECTION = pymysql.connections.Connection
BASE_CURSOR = pymysql.cursors.Cursor
# PyMySQL's own execute, which a batch calls where the cursor's class keeps it.
_own_execute = BASE_CURSOR.__dict__["execute"]


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


# ------------------------------------------------------------ counting methods
# execute, callproc and executemany: the shared makers of _in_place.


def _targets() -> list[InPlaceTarget]:
    methods = {
        "execute": cursor_call,
        "callproc": cursor_call,
        "executemany": cursor_batch(_own_execute),
    }
    own = vars(BASE_CURSOR)
    return [(BASE_CURSOR, name, make) for name, make in methods.items() if name in own]


def _is_closed(connection: Any) -> bool:
    # PyMySQL's own test (the `open` property), not an override of the application's.
    return connection.__dict__.get("_sock") is None


#: PyMySQL's Cursor class, counting while PyMySQL is instrumented or a counting connection is open.
in_place = InPlaceCounting(_targets, _is_closed)


# ----------------------------------------------------------------- connections


def count_connection(connection: Any, meter: Meter) -> None:
    """Count a connection (new or existing) into a meter; nothing of it changes."""
    already_counted_by_other(connection, meter, NAME)
    in_place.hold(connection)
    set_connection_meter(connection, meter)


def instrument(module: Any, meter: Meter) -> list[Any]:
    """Put the counting methods on PyMySQL's Cursor, and patch pymysql.connect and
    pymysql.Connect (pymysql.Connection stays the class)."""

    def make(patch: Patch) -> Callable[..., Any]:
        original = patch.original

        def connect(*args: Any, **kwargs: Any) -> Any:
            if not patch.active:
                return original(*args, **kwargs)
            try:
                connection = original.__new__(original)
                # Before __init__: PyMySQL runs init_command through a cursor
                # while it connects, and that statement counts too.
                count_connection(connection, meter)
            except Exception as exc:  # noqa: BLE001 - ours, never the application's
                report_fault("pymysql: could not prepare a counted connection", exc)
                return original(*args, **kwargs)
            connection.__init__(*args, **kwargs)
            return connection

        return like(connect, original)

    patches: list[Any] = [in_place, Patch(module, "connect", make)]
    if getattr(module, "Connect", None) is patches[1].original:
        patches.append(Patch(module, "Connect", make))
    return patches


def wrap(connection: Any, meter: Meter) -> Any:
    count_connection(connection, meter)
    return connection


def unwrap(connection: Any) -> Any:
    forget_connection(connection)
    in_place.release(connection)
    return connection
