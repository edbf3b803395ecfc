"""DB-API hooks for sqlite3: counted Connection and Cursor subclasses; a proxy for old connections.

Counted: ``Cursor.execute``, ``executemany`` and ``executescript``, and the
connection shortcuts ``Connection.execute``, ``executemany`` and
``executescript`` (through a counted cursor, so that re-executing the cursor
they return is counted too).  New connections get a subclass through
``sqlite3.connect(factory=...)``.  sqlite3's classes are immutable, so an
existing connection cannot change class: ``wrap_connection`` returns a thin
proxy for it, whose forwarding is plain attribute access (no exception path).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from .._patching import Patch, like
from ..meter import Meter
from ._counting import (
    ConnectionClasses,
    already_counted_by_other,
    connection_meter,
    connection_namespace,
    counted_class,
    forget_connection,
    report_fault,
    set_connection_meter,
    tracked,
)

__all__ = ["connection_types", "instrument", "unwrap", "wrap"]

NAME = "sqlite3"
CURSOR_METHODS = {"execute": tracked, "executemany": tracked, "executescript": tracked}
SHORTCUTS = ("execute", "executemany", "executescript")
# sqlite3.connect(database, timeout, detect_types, isolation_level,
# check_same_thread, factory, ...): where factory sits when passed positionally.
FACTORY_POSITION = 5


def connection_types() -> tuple[type, ...]:
    return (sqlite3.Connection, ConnectionProxy)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of a sqlite3 cursor class."""
    return counted_class(base, meter, CURSOR_METHODS)


def counted_cursor_factory(factory: Any, meter: Meter | None) -> Any:
    """The factory to pass to Connection.cursor(): counted where it is a Cursor class."""
    if meter is None:
        return factory
    if isinstance(factory, type) and issubclass(factory, sqlite3.Cursor):
        return cursor_class(factory, meter)
    report_fault("sqlite3: a cursor factory that is not a Cursor subclass is not counted")
    return factory


def _make_connection_class(base: Any) -> type[Any]:
    base_cursor = base.cursor

    def cursor(self: Any, factory: Any = sqlite3.Cursor) -> Any:
        return base_cursor(self, counted_cursor_factory(factory, connection_meter(self)))

    def shortcut(name: str) -> Callable[..., Any]:
        base_method = getattr(base, name)

        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            if connection_meter(self) is None:
                return base_method(self, *args, **kwargs)
            return getattr(self.cursor(), name)(*args, **kwargs)

        method.__name__ = name
        method.__qualname__ = f"{base.__qualname__}.{name}"
        method.__doc__ = getattr(base, name).__doc__
        return method

    namespace = connection_namespace(base)
    namespace["cursor"] = cursor
    for name in SHORTCUTS:
        # In C, the shortcuts make a cursor of their own and skip any
        # subclass's cursor() and execute(); going through self.cursor()
        # counts them once.  A factory class that overrides a shortcut keeps
        # its own (its statements are counted where they meet a cursor).
        if getattr(base, name) is getattr(sqlite3.Connection, name):
            namespace[name] = shortcut(name)
    return type(base.__name__, (base,), namespace)


#: The counting subclass of a sqlite3 Connection class (its meter is per connection).
connection_class = ConnectionClasses(_make_connection_class)


def instrument(module: Any, meter: Meter) -> list[Patch]:
    """Patch sqlite3.connect (and sqlite3.dbapi2.connect) to open counted connections."""

    def make(patch: Patch) -> Callable[..., Any]:
        original = patch.original

        def connect(*args: Any, **kwargs: Any) -> Any:
            if not patch.active:
                return original(*args, **kwargs)
            try:
                args, kwargs = _with_counted_factory(args, kwargs)
            except Exception as exc:  # noqa: BLE001 - ours, never the application's
                report_fault("sqlite3: could not prepare a counted connection", exc)
            connection = original(*args, **kwargs)
            try:
                if type(connection).__dict__.get("__querymeter_base__") is not None:
                    set_connection_meter(connection, meter)
            except Exception as exc:  # noqa: BLE001 - ours, never the application's
                report_fault("sqlite3: could not count a new connection", exc)
            return connection

        return like(connect, original)

    patches = [Patch(module, "connect", make)]
    dbapi2 = getattr(module, "dbapi2", None)
    if dbapi2 is not None and getattr(dbapi2, "connect", None) is patches[0].original:
        patches.append(Patch(dbapi2, "connect", make))
    return patches


def _with_counted_factory(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(args) > FACTORY_POSITION:
        factory = args[FACTORY_POSITION]
    else:
        factory = kwargs.get("factory", sqlite3.Connection)
    if not (isinstance(factory, type) and issubclass(factory, sqlite3.Connection)):
        report_fault("sqlite3: a connection factory that is not a Connection subclass")
        return args, kwargs
    counted = connection_class(factory.__dict__.get("__querymeter_base__", factory))
    if len(args) > FACTORY_POSITION:
        args = (*args[:FACTORY_POSITION], counted, *args[FACTORY_POSITION + 1 :])
    else:
        kwargs = {**kwargs, "factory": counted}
    return args, kwargs


def wrap(connection: Any, meter: Meter) -> Any:
    """Count one connection: a counting-class connection in place, any other by a proxy."""
    if isinstance(connection, ConnectionProxy):
        already_counted_by_other(connection, meter, NAME)
        set_connection_meter(connection, meter)
        return connection
    if type(connection).__dict__.get("__querymeter_base__") is not None:
        already_counted_by_other(connection, meter, NAME)
        set_connection_meter(connection, meter)
        return connection
    proxy = ConnectionProxy(connection)
    set_connection_meter(proxy, meter)
    return proxy


def unwrap(connection: Any) -> Any:
    """The connection, counting no more: the proxied one for a proxy, else itself."""
    forget_connection(connection)
    if isinstance(connection, ConnectionProxy):
        return connection.__wrapped__
    return connection


# ------------------------------------------------------------------- proxy


class ConnectionProxy:
    """An existing sqlite3 connection, counted.

    Every attribute of sqlite3.Connection is a property of this class that
    reads (or writes) the wrapped connection's: no ``__getattr__``, so no
    failed lookup and no exception on the way.  ``isinstance(proxy,
    sqlite3.Connection)`` holds; C functions that check the exact type (such
    as ``Connection.backup``'s target) need ``unwrap_connection(proxy)``.
    """

    __slots__ = ("__weakref__", "__wrapped__")

    __wrapped__: sqlite3.Connection

    def __init__(self, connection: sqlite3.Connection) -> None:
        object.__setattr__(self, "__wrapped__", connection)

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self.__wrapped__)

    def cursor(self, factory: Any = sqlite3.Cursor) -> Any:
        return self.__wrapped__.cursor(counted_cursor_factory(factory, connection_meter(self)))

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executemany(*args, **kwargs)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executescript(*args, **kwargs)

    def __enter__(self) -> ConnectionProxy:
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self.__wrapped__.__exit__(*exc_info)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)

    def __repr__(self) -> str:
        return repr(self.__wrapped__)

    def __dir__(self) -> list[str]:
        return dir(self.__wrapped__)


def _forwarding(name: str, writable: bool) -> property:
    def read(self: ConnectionProxy) -> Any:
        return getattr(self.__wrapped__, name)

    def write(self: ConnectionProxy, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    return property(read, write if writable else None, doc=f"The connection's {name}.")


def _add_forwarding() -> None:
    own = set(vars(ConnectionProxy))
    for name, value in vars(sqlite3.Connection).items():
        if name.startswith("__") or name in own:
            continue
        writable = hasattr(value, "__set__")
        setattr(ConnectionProxy, name, _forwarding(name, writable))


_add_forwarding()
