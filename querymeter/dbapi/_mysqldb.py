"""DB-API hooks for mysqlclient (MySQLdb): counted cursors, made by MySQLdb's own Connection.

Counted: ``cursor.execute``, ``callproc`` and ``executemany`` (one query per
call: MySQLdb sends a batch through ``execute``, which is not counted again
inside it), for every cursor class (DictCursor, SSCursor, SSDictCursor,
yours), and ``connection.query()`` called by the application itself.

The connection stays MySQLdb's: ``Connection.__init__`` is patched while
instrumented (so ``MySQLdb.connect``, ``MySQLdb.Connect`` and
``MySQLdb.connections.Connection``, and your subclasses, all count), and
``Connection.cursor`` and ``Connection.query`` are counted in place while a
connection counts, each finding the connection's meter in the side table.
``cursor()`` runs with the application's arguments untouched; the cursor it
made then changes class in place to a counted subclass of its own class.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import MySQLdb  # type: ignore[import-untyped]
import MySQLdb._mysql  # type: ignore[import-untyped]
import MySQLdb.connections  # type: ignore[import-untyped]
import MySQLdb.cursors  # type: ignore[import-untyped]

from .._patching import Patch, like
from ..meter import Meter
from ._counting import (
    already_counted_by_other,
    batch,
    connection_meter,
    counted_class,
    counted_meter,
    forget_connection,
    original_class,
    report_fault,
    set_connection_meter,
    tracked,
)

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "MySQLdb"
BASE_CONNECTION = MySQLdb.connections.Connection
BASE_CURSOR = MySQLdb.cursors.BaseCursor
CURSOR_METHODS = {"execute": tracked, "callproc": tracked, "executemany": batch("execute")}
# Code of these modules calls Connection.query as part of a cursor's statement
# (BaseCursor._query) or for MySQLdb's own bookkeeping (begin, SET NAMES).
_DRIVER_GLOBALS = (vars(MySQLdb.cursors), vars(MySQLdb.connections))
# The C type's own member: a property of a subclass is application code.
_is_open = MySQLdb._mysql.connection.open.__get__


def connection_types() -> tuple[type, ...]:
    return (BASE_CONNECTION,)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of a MySQLdb cursor class."""
    return counted_class(base, meter, CURSOR_METHODS)


def _subclassing_runs_no_code(cls: type) -> bool:
    """Whether ``type(name, (cls,), namespace)`` would run none of the application's code:
    no metaclass, and no ``__init_subclass__``, of its own."""
    return type(cls) is type and not any(
        "__init_subclass__" in vars(k) for k in cls.__mro__ if k is not object
    )


def _count_cursor(cursor: Any, meter: Meter) -> None:
    """Make a cursor that MySQLdb made count, by changing its class in place."""
    cls = type(cursor)
    if counted_meter(cls) is meter:
        return
    if not isinstance(cursor, BASE_CURSOR):
        report_fault("MySQLdb: a cursor that is not a MySQLdb cursor is not counted")
        return
    if not _subclassing_runs_no_code(original_class(cls)):
        report_fault("MySQLdb: a cursor class with a metaclass or __init_subclass__ is not counted")
        return
    # object.__setattr__: a __setattr__ of the cursor class is application code.
    object.__setattr__(cursor, "__class__", cursor_class(cls, meter))


# ------------------------------------------------------ counted in place


def _counting_cursor(patch: Patch) -> Any:
    original = patch.original

    def cursor(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = original(self, *args, **kwargs)
        meter = connection_meter(self)
        if meter is not None and patch.active:
            try:
                _count_cursor(made, meter)
            except Exception as exc:  # noqa: BLE001 - ours, never the application's
                report_fault("MySQLdb: could not count a cursor", exc)
        return made

    return like(cursor, original)


def _counting_query(patch: Patch) -> Any:
    original = patch.original
    cursors_globals, connections_globals = _DRIVER_GLOBALS
    caller_frame = sys._getframe

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Called by MySQLdb itself: part of a cursor's counted statement, or
        # MySQLdb's own bookkeeping.  Only the application's calls count.
        caller = caller_frame(1).f_globals
        if caller is cursors_globals or caller is connections_globals or not patch.active:
            return original(self, *args, **kwargs)
        meter = connection_meter(self)
        if meter is None:
            return original(self, *args, **kwargs)
        return meter._call(original, self, *args, **kwargs)

    return like(query, original)


IN_PLACE: tuple[tuple[str, Callable[[Patch], Any]], ...] = (
    ("cursor", _counting_cursor),
    ("query", _counting_query),
)


class _InPlace:
    """The counting methods on MySQLdb's Connection: there while instrumented or a
    counting connection is open.

    Stands in the list of patches that ``instrument`` returns (``install`` /
    ``remove``), and is held by each connection it counts.
    """

    def __init__(self) -> None:
        self._patches: list[Patch] = []
        self._instrumented = False
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    def install(self) -> None:
        with self._lock:
            self._instrumented = True
            self._put_on()

    def remove(self) -> bool:
        with self._lock:
            self._instrumented = False
            return self._take_off_if_unused()

    def hold(self, connection: Any) -> None:
        with self._lock:
            self._connections.add(connection)
            self._put_on()

    def release(self, connection: Any) -> None:
        with self._lock:
            self._connections.discard(connection)
            self._take_off_if_unused()

    def _put_on(self) -> None:
        if not self._patches:
            patches = [Patch(BASE_CONNECTION, name, make) for name, make in IN_PLACE]
            for patch in patches:
                patch.install()
            self._patches = patches

    def _take_off_if_unused(self) -> bool:
        if self._instrumented or any(_is_open(c) for c in list(self._connections)):
            return False
        put_back = all([patch.remove() for patch in reversed(self._patches)])
        self._patches = []
        self._connections = weakref.WeakSet()
        return put_back


_in_place = _InPlace()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_in_place._after_fork_in_child)


# --------------------------------------------------------------- connections


def _count(connection: Any, meter: Meter) -> None:
    already_counted_by_other(connection, meter, NAME)
    _in_place.hold(connection)
    set_connection_meter(connection, meter)


def instrument(module: Any, meter: Meter) -> list[Any]:
    """Patch Connection.__init__ (what MySQLdb.connect, MySQLdb.Connect and
    MySQLdb.connections.Connection all run), and count Connection in place."""

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

    return [_in_place, Patch(BASE_CONNECTION, "__init__", make)]


def wrap(connection: Any, meter: Meter) -> Any:
    _count(connection, meter)
    return connection


def unwrap(connection: Any) -> Any:
    forget_connection(connection)
    _in_place.release(connection)
    return connection
