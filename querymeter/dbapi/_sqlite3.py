"""DB-API hooks for sqlite3: a counting Connection, counted Cursors; a proxy for old connections.

Counted: ``Cursor.execute``, ``executemany`` and ``executescript``, and the
connection shortcuts ``Connection.execute``, ``executemany`` and
``executescript`` (through a counted cursor, so that re-executing the cursor
they return is counted too).  New connections get a counting class through
``sqlite3.connect(factory=...)``: its counting ``cursor()`` sits just above
sqlite3's own, below the ``cursor()`` of your factory class (which gets
exactly the arguments the application gave, its own default included), and
counts the cursor class sqlite3 is asked for.  The shortcuts behave as
sqlite3's C ones: a plain ``sqlite3.Cursor``, made without calling any
``cursor()`` written in Python.  sqlite3's classes are immutable, so an
existing connection cannot change class: ``wrap_connection`` returns a thin
proxy for it, whose forwarding is plain attribute access (no exception path).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from .._faults import report as report_fault
from .._patching import Patch, like
from ..meter import Meter
from ._classes import (
    BASE_ATTRIBUTE,
    counted_class,
    counted_meter,
    quiet_subclass,
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

NAME = "sqlite3"
# executescript leaves the cursor's rowcount as it was: its rows are not read.
SCRIPT_LAYOUT = 8
CURSOR_METHODS = {
    "execute": timed_statement("sqlite"),
    "executemany": timed_statement("sqlite"),
    "executescript": timed_statement("sqlite", SCRIPT_LAYOUT),
}
# The connection shortcuts, and how many positional arguments each takes
# (none by keyword): sqlite3 raises its own error for any other call.
SHORTCUTS = {"execute": (1, 2), "executemany": (2, 2), "executescript": (1, 1)}
# sqlite3.connect(database, timeout, detect_types, isolation_level,
# check_same_thread, factory, ...): where factory sits when passed positionally.
FACTORY_POSITION = 5
_IMMUTABLE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: a class of C whose instances cannot change class
_base_cursor = sqlite3.Connection.cursor


def connection_types() -> tuple[type, ...]:
    return (sqlite3.Connection, ConnectionProxy)


def cursor_class(base: type, meter: Meter) -> type:
    """The counted subclass of a sqlite3 cursor class (the class itself if it cannot be)."""
    return counted_class(base, meter, CURSOR_METHODS)


def counted_cursor_factory(factory: Any, meter: Meter | None) -> Any:
    """The factory to pass to sqlite3's cursor(): counted where it is a Cursor class."""
    if meter is None:
        return factory
    if isinstance(factory, type) and issubclass(factory, sqlite3.Cursor):
        return cursor_class(factory, meter)
    report_fault("sqlite3: a cursor factory that is not a Cursor subclass is not counted")
    return factory


def _counted_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], meter: Meter
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments for sqlite3's cursor(), with the factory it would use counted.

    Arguments sqlite3 would refuse are left as they are, for sqlite3 to raise
    its own error.
    """
    if len(args) == 1 and not kwargs:
        return (counted_cursor_factory(args[0], meter),), kwargs
    if not args and set(kwargs) <= {"factory"}:
        factory = kwargs.get("factory", sqlite3.Cursor)
        return args, {"factory": counted_cursor_factory(factory, meter)}
    return args, kwargs


def counted_cursor(connection: sqlite3.Connection, meter: Meter, args: Any, kwargs: Any) -> Any:
    """sqlite3's own cursor() of a connection, making a counted cursor."""
    try:
        args, kwargs = _counted_arguments(args, kwargs, meter)
    except Exception as exc:  # noqa: BLE001 - ours, never the application's
        report_fault("sqlite3: could not count a cursor", exc)
    return _base_cursor(connection, *args, **kwargs)


def plain_cursor(connection: sqlite3.Connection, meter: Meter) -> Any:
    """The cursor a connection shortcut runs on, as sqlite3's C one makes it, counted.

    sqlite3 makes a plain Cursor with its own cursor(), never with a
    ``cursor()`` written in Python, and calls the cursor's method: so here,
    a counted plain Cursor, whose method counts.
    """
    return _base_cursor(connection, cursor_class(sqlite3.Cursor, meter))


def _accepts(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    least, most = SHORTCUTS[name]
    return not kwargs and least <= len(args) <= most


class Connection(sqlite3.Connection):
    """A sqlite3 connection that counts its statements (when it has a meter)."""

    __slots__ = ("__weakref__",)  # the side table holds connections weakly
    __module__ = sqlite3.Connection.__module__
    __qualname__ = sqlite3.Connection.__qualname__
    __doc__ = sqlite3.Connection.__doc__

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self)
        if meter is None:
            return _base_cursor(self, *args, **kwargs)
        return counted_cursor(self, meter, args, kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self)
        if meter is None or not _accepts("execute", args, kwargs):
            return _plain_execute(self, *args, **kwargs)
        return plain_cursor(self, meter).execute(*args)

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self)
        if meter is None or not _accepts("executemany", args, kwargs):
            return _plain_executemany(self, *args, **kwargs)
        return plain_cursor(self, meter).executemany(*args)

    def executescript(self, *args: Any, **kwargs: Any) -> Any:
        meter = connection_meter(self)
        if meter is None or not _accepts("executescript", args, kwargs):
            return _plain_executescript(self, *args, **kwargs)
        return plain_cursor(self, meter).executescript(*args)


_plain_execute = sqlite3.Connection.execute
_plain_executemany = sqlite3.Connection.executemany
_plain_executescript = sqlite3.Connection.executescript
for _name in ("cursor", *SHORTCUTS):
    getattr(Connection, _name).__doc__ = getattr(sqlite3.Connection, _name).__doc__
setattr(Connection, BASE_ATTRIBUTE, sqlite3.Connection)
CountingConnection = Connection


def _make_connection_class(base: Any) -> type[Any]:
    """The counting class for a connection factory class: its methods first, then ours.

    ``class X(base, CountingConnection)``: in X's method order, a ``cursor()``
    or shortcut of ``base`` comes first and gets the application's
    arguments; its ``super()`` call reaches the counting one, just above
    sqlite3's.  Made without running code of the application's class (see
    quiet_subclass).
    """
    if base is sqlite3.Connection:
        return CountingConnection
    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        BASE_ATTRIBUTE: base,
    }
    return quiet_subclass(base.__name__, (base, CountingConnection), namespace)


#: The counting class of a sqlite3 Connection class (its meter is per connection).
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
                if type(connection).__dict__.get(BASE_ATTRIBUTE) is not None:
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
    counted = connection_class(factory.__dict__.get(BASE_ATTRIBUTE, factory))
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
    if type(connection).__dict__.get(BASE_ATTRIBUTE) is not None:
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


def _count_made_cursor(cursor: Any, meter: Meter) -> Any:
    """A cursor a connection's own cursor() made, counted by a change of class where it can be."""
    cls = type(cursor)
    if not isinstance(cursor, sqlite3.Cursor) or counted_meter(cls) is meter:
        return cursor
    if cls.__flags__ & _IMMUTABLE:
        report_fault("sqlite3: a plain Cursor a wrapped connection's cursor() made is not counted")
        return cursor
    counted = cursor_class(cls, meter)
    if counted is not cls:
        # object's own __class__ setter: no __setattr__ of the application's.
        object.__setattr__(cursor, "__class__", counted)
    return cursor


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

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        connection = self.__wrapped__
        meter = connection_meter(self)
        if meter is None:
            return connection.cursor(*args, **kwargs)
        if type(connection).cursor is _base_cursor:
            return counted_cursor(connection, meter, args, kwargs)
        # The connection's class has a cursor() of its own: it gets the
        # application's arguments, and what it makes is counted if it can be.
        cursor = connection.cursor(*args, **kwargs)
        try:
            return _count_made_cursor(cursor, meter)
        except Exception as exc:  # noqa: BLE001 - ours, never the application's
            report_fault("sqlite3: could not count a cursor", exc)
            return cursor

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


def _proxy_shortcut(name: str) -> Callable[..., Any]:
    plain = getattr(sqlite3.Connection, name)
    layout = SCRIPT_LAYOUT if name == "executescript" else 0

    def method(self: ConnectionProxy, *args: Any, **kwargs: Any) -> Any:
        connection = self.__wrapped__
        meter = connection_meter(self)
        own = getattr(type(connection), name)
        if meter is None or not _accepts(name, args, kwargs):
            return own(connection, *args, **kwargs)
        if own is not plain:
            # The connection's class has its own: the call is the query.
            return meter._call_statement("sqlite", layout, own, connection, *args, **kwargs)
        return getattr(plain_cursor(connection, meter), name)(*args)

    method.__name__ = name
    method.__qualname__ = f"ConnectionProxy.{name}"
    method.__doc__ = plain.__doc__
    return method


for _name in SHORTCUTS:
    setattr(ConnectionProxy, _name, _proxy_shortcut(_name))
_add_forwarding()
