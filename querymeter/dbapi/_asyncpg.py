"""DB-API hooks for asyncpg: counted in place on asyncpg's own classes, where the application waits.

Counted, each as one query from the moment its coroutine starts until its
result is back (so many can be in flight at once from one thread, and a
cancelled query ends, as an error, when its coroutine does):

- ``Connection``: ``execute``, ``executemany``, ``fetch``, ``fetchrow``,
  ``fetchval``, ``fetchmany``, ``copy_from_table``, ``copy_from_query``,
  ``copy_to_table``, ``copy_records_to_table``;
- ``PreparedStatement``: ``fetch``, ``fetchrow``, ``fetchval``, ``fetchmany``,
  ``executemany`` (``explain`` goes through ``Connection.fetchval``);
- cursors: ``async for`` over ``conn.cursor(...)`` is one query from the
  first row asked for until the last; on a cursor opened with
  ``await conn.cursor(...)``, each ``fetch``, ``fetchrow`` and ``forward``.

What runs nothing on the server yet is not counted: ``prepare()`` and
opening a cursor (the round trip that prepares a statement implicitly is
part of the query that needed it).  Nor are the statements asyncpg sends by
itself (a transaction's ``BEGIN``, ``COMMIT``, ``ROLLBACK`` and savepoints, a
pool's reset of a released connection), so that ``pool.fetch(...)`` is one
query and the count equals the server's in autocommit.

asyncpg's classes are counted in place: a counting method finds the
connection's meter in the side table and counts, or calls asyncpg's own at
once.  ``type(connection)`` stays what ``asyncpg.connect(connection_class=...)``
made, no class of the application is subclassed, and connections of every
class (a pool's too) count.  The counting methods are on asyncpg's classes
while asyncpg is instrumented or a counting connection is open, and are
put back, exactly, once neither is so.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Generator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import asyncpg.connection  # type: ignore[import-untyped]
import asyncpg.cursor  # type: ignore[import-untyped]
import asyncpg.prepared_stmt  # type: ignore[import-untyped]
import asyncpg.transaction  # type: ignore[import-untyped]

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

NAME = "asyncpg"
BASE_CONNECTION = asyncpg.connection.Connection
CONNECTION_QUERIES = (
    "execute",
    "executemany",
    "fetch",
    "fetchrow",
    "fetchval",
    "fetchmany",
    "copy_from_table",
    "copy_from_query",
    "copy_to_table",
    "copy_records_to_table",
)
STATEMENT_QUERIES = ("fetch", "fetchrow", "fetchval", "fetchmany", "executemany")
CURSOR_QUERIES = ("fetch", "fetchrow", "forward")
# asyncpg's own bookkeeping, which sends statements through the counted
# methods above: what they send is not the application's query.
DRIVER_OWN = (
    (asyncpg.transaction.Transaction, ("start", "commit", "rollback", "__aexit__")),
    (BASE_CONNECTION, ("reset", "_reset")),
)

# True while asyncpg runs a coroutine of its own bookkeeping (see _DriverOwn).
_driver_own: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "querymeter_asyncpg_driver_own", default=False
)


def connection_types() -> tuple[type, ...]:
    # A pool's connection proxy passes too: asyncpg's metaclass says so.
    return (BASE_CONNECTION,)


def _mark_coroutine_function(function: Callable[..., Any]) -> Callable[..., Any]:
    """Let inspect take a function returning an awaitable for a coroutine function
    (Python 3.12+; asyncpg marks its pool proxies' methods the same way)."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(function)
    return function


# ------------------------------------------------------------- counting methods
#
# Each takes the Patch that installs it: ``patch.original`` is asyncpg's own,
# and a patch that was removed while another tool's wrapper kept it in a
# chain becomes a pass-through (``patch.active``).


# The dialect of asyncpg's statements, for their fingerprints.
POSTGRESQL = "postgresql"
# The Connection methods whose first argument is the statement; the copy_*
# methods that take a table are counted without statement text.
_QUERY_METHODS = frozenset(
    ("execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany", "copy_from_query")
)


def _query_statement(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """(dialect, sql, params) of a call (query, *args)."""
    sql = args[0] if args else kwargs.get("query")
    return (POSTGRESQL, sql, args[1:] or None)


def _batch_statement(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """(dialect, sql, rows) of executemany(command, args): its rows are its one argument."""
    sql = args[0] if args else kwargs.get("command")
    return (POSTGRESQL, sql, args[1] if len(args) > 1 else kwargs.get("args"))


def _no_statement(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    return None


def _connection_query(patch: Patch) -> Any:
    """A Connection method returning a coroutine: the coroutine is the query."""
    original = patch.original
    driver_own = _driver_own.get

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self)
        if meter is None or not patch.active or driver_own():
            return original(self, *args, **kwargs)
        return meter._awaiting(original(self, *args, **kwargs), statement(args, kwargs))

    statement: Callable[[tuple[Any, ...], dict[str, Any]], tuple[Any, ...] | None] = _no_statement
    if patch.name == "executemany":
        statement = _batch_statement
    elif patch.name in _QUERY_METHODS:
        statement = _query_statement
    return _mark_coroutine_function(like(query, original))


def _resource_query(patch: Patch) -> Any:
    """A method of a prepared statement or cursor (its connection is ``self._connection``)."""
    original = patch.original

    def query(self: Any, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self._connection)
        if meter is None or not patch.active:
            return original(self, *args, **kwargs)
        # A prepared statement's or cursor's query is its own (``_query``, a slot).
        return meter._awaiting(
            original(self, *args, **kwargs), (POSTGRESQL, self._query, args or None)
        )

    return _mark_coroutine_function(like(query, original))


def _cursor_iteration(patch: Patch) -> Any:
    """``CursorFactory.__aiter__``: the iteration, first row to last, is the query."""
    original = patch.original

    def __aiter__(self: Any) -> Any:
        rows = original(self)
        meter = connection_meter(self._connection)
        if meter is None or not patch.active:
            return rows
        return meter._async_iterating(rows, (POSTGRESQL, self._query, self._args or None))

    return like(__aiter__, original)


class _DriverOwn:
    """A coroutine of asyncpg's own bookkeeping, run with ``_driver_own`` set.

    Each step runs in a copy of the caller's context in which the flag is
    true, so the statements it sends are not counted, and nothing is left to
    undo afterwards: the caller's context never had the flag set.
    """

    __slots__ = ("_context", "_coroutine")

    def __init__(self, coroutine: Any) -> None:
        self._coroutine = coroutine
        self._context = contextvars.copy_context()
        self._context.run(_driver_own.set, True)

    def __await__(self) -> Generator[Any, Any, Any]:
        return self  # type: ignore[return-value]

    def __next__(self) -> Any:
        return self._context.run(self._coroutine.send, None)

    def send(self, value: Any) -> Any:
        return self._context.run(self._coroutine.send, value)

    def throw(self, *exception: Any) -> Any:
        return self._context.run(self._coroutine.throw, *exception)

    def close(self) -> None:
        self._context.run(self._coroutine.close)


def _driver_own_method(connection_of: Callable[[Any], Any]) -> Callable[[Patch], Any]:
    def make(patch: Patch) -> Any:
        original = patch.original

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            coroutine = original(self, *args, **kwargs)
            if not patch.active or connection_meter(connection_of(self)) is None:
                return coroutine
            return _DriverOwn(coroutine)

        return _mark_coroutine_function(like(method, original))

    return make


def _targets() -> list[InPlaceTarget]:
    """Every (class, method, how it counts) of asyncpg's that is counted in place."""
    targets: list[InPlaceTarget] = []
    targets += [(BASE_CONNECTION, name, _connection_query) for name in CONNECTION_QUERIES]
    statement = asyncpg.prepared_stmt.PreparedStatement
    targets += [(statement, name, _resource_query) for name in STATEMENT_QUERIES]
    targets += [(asyncpg.cursor.Cursor, name, _resource_query) for name in CURSOR_QUERIES]
    factory = asyncpg.cursor.CursorFactory
    targets.append((factory, "__aiter__", _cursor_iteration))
    for owner, names in DRIVER_OWN:
        connection_of = (lambda c: c) if owner is BASE_CONNECTION else (lambda t: t._connection)
        targets += [(owner, name, _driver_own_method(connection_of)) for name in names]
    return [target for target in targets if target[1] in vars(target[0])]


def _is_closed(connection: Any) -> bool:
    # asyncpg's is_closed, not an override of the application's.
    closed: bool = BASE_CONNECTION.is_closed(connection)
    return closed


#: asyncpg's classes, counting while asyncpg is instrumented or a counting connection is open.
in_place = InPlaceCounting(_targets, _is_closed)


# --------------------------------------------------------------- connections


def _count(connection: Any, meter: Meter) -> None:
    already_counted_by_other(connection, meter, NAME)
    in_place.hold(connection)
    set_connection_meter(connection, meter)


def _own_connection(connection: Any) -> Any:
    """The connection itself: a pool's proxy stands for the connection it lends."""
    if isinstance(connection, asyncpg.connection._ConnectionProxy):
        lent = getattr(connection, "_con", None)
        if lent is None:
            raise ValueError("this pooled asyncpg connection was released back to its pool")
        return lent
    return connection


def instrument(module: Any, meter: Meter) -> list[Any]:
    """Patch asyncpg.connect (and asyncpg.connection.connect, which pools call),
    and put the counting methods on asyncpg's classes."""

    def make(patch: Patch) -> Callable[..., Any]:
        original = patch.original

        async def connect(*args: Any, **kwargs: Any) -> Any:
            connection = await original(*args, **kwargs)
            if patch.active:
                try:
                    _count(connection, meter)
                except Exception as exc:  # noqa: BLE001 - ours, never the application's
                    report_fault("asyncpg: could not count a new connection", exc)
            return connection

        return like(connect, original)

    patches: list[Any] = [in_place, Patch(asyncpg.connection, "connect", make)]
    if getattr(module, "connect", None) is patches[1].original:
        patches.append(Patch(module, "connect", make))
    return patches


def wrap(connection: Any, meter: Meter) -> Any:
    _count(_own_connection(connection), meter)
    return connection


def unwrap(connection: Any) -> Any:
    own = _own_connection(connection)
    forget_connection(own)
    in_place.release(own)
    return connection
