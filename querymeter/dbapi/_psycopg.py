"""DB-API hooks for psycopg 3, sync and async: counted in place, on psycopg's own cursor classes.

Counted, on ``Cursor`` and ``AsyncCursor`` (so on ``ClientCursor``,
``RawCursor`` and every subclass, the application's included): ``execute``,
``executemany``, ``stream`` (from the first row asked for until the stream
ends) and ``copy`` (the ``with`` block); on ``ServerCursor`` and
``AsyncServerCursor``: ``execute``.  ``Connection.execute`` goes through a
cursor, so it is counted there, once.

Each counting method finds the meter of its cursor's connection in the side
table, and a connection that does not count calls psycopg's own at once.  So
``type(connection)``, ``type(cursor)``, ``cursor_factory`` and
``server_cursor_factory`` stay exactly what the application made and chose:
psycopg's code and the application's that branch on them see their own
classes.  ``Connection.connect`` and ``AsyncConnection.connect`` (and
``psycopg.connect``) are patched, so connections of subclasses and of
psycopg_pool are counted too.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg

from .._faults import report as report_fault
from .._patching import Patch, like
from ..meter import Meter
from ._connections import (
    already_counted_by_other,
    connection_meter,
    forget_connection,
    set_connection_meter,
)
from ._in_place import InPlaceCounting, InPlaceTarget

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "psycopg"
CURSOR_METHODS = ("execute", "executemany", "stream", "copy")
# A server-side cursor's executemany raises NotSupportedError without sending anything.
SERVER_CURSOR_METHODS = ("execute",)


def connection_types() -> tuple[type, ...]:
    return (psycopg.Connection, psycopg.AsyncConnection)


# ------------------------------------------------------------ counting methods
#
# Each takes the Patch that installs it: ``patch.own`` is psycopg's function,
# and a patch that was removed while another tool's wrapper kept it in a
# chain becomes a pass-through (``patch.active``).  A cursor's connection is
# ``self._conn`` (psycopg's slot, which ``cursor.connection`` returns).


# The dialect of psycopg's statements, for their fingerprints.
POSTGRESQL = "postgresql"


def _statement(
    args: tuple[Any, ...], kwargs: dict[str, Any], cursor: Any = None
) -> tuple[Any, ...]:
    """(dialect, sql, params, cursor) of a cursor method's call (query, params=None, ...)."""
    sql = args[0] if args else kwargs.get("query")
    params = args[1] if len(args) > 1 else kwargs.get("params", kwargs.get("params_seq"))
    return (POSTGRESQL, sql, params, cursor)


def _copy_text(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The text of a COPY statement, where it is a str (not a composed statement)."""
    sql = args[0] if args else kwargs.get("statement")  # copy(statement, params=None, ...)
    return sql if type(sql) is str else None


def _counted_call(patch: Patch) -> Any:
    """A method that sends a statement and returns once it is done."""
    own = patch.own

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self._conn)
        # Most calls pass one or two arguments and no keyword: passed one by
        # one, they cost less than half what forwarding *args and **kwargs does.
        if meter is None or not patch.active:
            if not kwargs:
                if len(args) == 1:
                    return own(self, args[0])
                if len(args) == 2:
                    return own(self, args[0], args[1])
            return own(self, *args, **kwargs)
        if not kwargs:
            if len(args) == 1:
                return meter._call_statement(POSTGRESQL, 0, own, self, args[0])
            if len(args) == 2:
                return meter._call_statement(POSTGRESQL, 0, own, self, args[0], args[1])
        return meter._call_statement(POSTGRESQL, 0, own, self, *args, **kwargs)

    return like(method, own)


def _counted_coroutine(patch: Patch) -> Any:
    """The async twin: counted from the coroutine's first step until it is done."""
    own = patch.own

    # A coroutine function still (inspect.iscoroutinefunction holds), as psycopg's.
    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self._conn)
        if meter is None or not patch.active:
            return await own(self, *args, **kwargs)
        return await meter._awaiting(own(self, *args, **kwargs), _statement(args, kwargs, self))

    return like(method, own)


def _counted_stream(patch: Patch) -> Any:
    """``stream``: from the first row asked for until the rows end, fail or are closed."""
    own = patch.own

    def stream(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        rows = own(self, *args, **kwargs)
        meter = connection_meter(self._conn)
        if meter is None or not patch.active:
            return rows  # type: ignore[no-any-return]
        return meter._iterating(rows, _statement(args, kwargs))

    return like(stream, own)


def _counted_async_stream(patch: Patch) -> Any:
    own = patch.own

    def stream(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        rows = own(self, *args, **kwargs)
        meter = connection_meter(self._conn)
        if meter is None or not patch.active:
            return rows  # type: ignore[no-any-return]
        return meter._async_iterating(rows, _statement(args, kwargs))

    return like(stream, own)


@contextlib.contextmanager
def _counted_block(meter: Meter, block: Any, sql: str | None) -> Iterator[Any]:
    with meter._track_statement(sql, POSTGRESQL), block as inner:
        yield inner


@contextlib.asynccontextmanager
async def _counted_async_block(meter: Meter, block: Any, sql: str | None) -> AsyncIterator[Any]:
    with meter._track_statement(sql, POSTGRESQL):
        async with block as inner:
            yield inner


def _counted_copy(patch: Patch) -> Any:
    """``copy``: the ``with`` block, from the COPY statement to the end of the data."""
    own = patch.own

    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        block = own(self, *args, **kwargs)
        meter = connection_meter(self._conn)
        if meter is None or not patch.active:
            return block
        return _counted_block(meter, block, _copy_text(args, kwargs))

    return like(copy, own)


def _counted_async_copy(patch: Patch) -> Any:
    own = patch.own

    def copy(self: Any, *args: Any, **kwargs: Any) -> Any:
        block = own(self, *args, **kwargs)
        meter = connection_meter(self._conn)
        if meter is None or not patch.active:
            return block
        return _counted_async_block(meter, block, _copy_text(args, kwargs))

    return like(copy, own)


SYNC = {
    "execute": _counted_call,
    "executemany": _counted_call,
    "stream": _counted_stream,
    "copy": _counted_copy,
}
ASYNC = {
    "execute": _counted_coroutine,
    "executemany": _counted_coroutine,
    "stream": _counted_async_stream,
    "copy": _counted_async_copy,
}


def _targets() -> list[InPlaceTarget]:
    """Every (class, method, how it counts) of psycopg's counted in place.

    Only where the class defines the method itself: ClientCursor and
    RawCursor inherit Cursor's, and a method counted twice in one chain
    would count one statement twice.
    """
    cursors = (
        (psycopg.Cursor, CURSOR_METHODS, SYNC),
        (psycopg.ClientCursor, CURSOR_METHODS, SYNC),
        (psycopg.RawCursor, CURSOR_METHODS, SYNC),
        (psycopg.ServerCursor, SERVER_CURSOR_METHODS, SYNC),
        (psycopg.AsyncCursor, CURSOR_METHODS, ASYNC),
        (psycopg.AsyncClientCursor, CURSOR_METHODS, ASYNC),
        (psycopg.AsyncRawCursor, CURSOR_METHODS, ASYNC),
        (psycopg.AsyncServerCursor, SERVER_CURSOR_METHODS, ASYNC),
    )
    return [
        (owner, name, how[name])
        for owner, names, how in cursors
        for name in names
        if name in vars(owner)
    ]


def _is_closed(connection: Any) -> bool:
    # psycopg's property, not an override of the application's.
    closed: bool = psycopg.BaseConnection.closed.fget(connection)  # type: ignore[attr-defined]
    return closed


#: psycopg's cursor classes, counting while instrumented or a counting connection is open.
in_place = InPlaceCounting(_targets, _is_closed)


# ----------------------------------------------------------------- connections


def count_connection(connection: Any, meter: Meter) -> None:
    """Count a connection (new or existing) into a meter; nothing of it changes."""
    already_counted_by_other(connection, meter, NAME)
    in_place.hold(connection)
    set_connection_meter(connection, meter)


def instrument(module: Any, meter: Meter) -> list[Any]:
    """Put the counting methods on psycopg's cursor classes, and patch
    Connection.connect, AsyncConnection.connect and psycopg.connect."""

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

    return [in_place, sync_patch, async_patch, Patch(module, "connect", make_module)]


def wrap(connection: Any, meter: Meter) -> Any:
    count_connection(connection, meter)
    return connection


def unwrap(connection: Any) -> Any:
    forget_connection(connection)
    in_place.release(connection)
    return connection
