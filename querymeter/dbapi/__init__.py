"""DB-API hooks: count every statement that a PEP 249 driver sends.

>>> import sqlite3, querymeter, querymeter.dbapi
>>> querymeter.dbapi.instrument(sqlite3)
>>> connection = sqlite3.connect(":memory:")   # counted, and still a sqlite3.Connection

Each driver is counted through its own extension points (connection
factories, cursor factories, subclasses), never through a generic proxy: a
counted ``cursor.execute`` is the driver's own, wrapped in one C call.  What is
counted for each driver is listed in docs/dbapi/.

Supported drivers: sqlite3, psycopg (3, sync and async), psycopg2, pymysql,
aiosqlite, asyncpg and MySQLdb (mysqlclient).
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Callable
from typing import Any, Protocol

from .._patching import Patch
from ..meter import Meter, meter_argument
from ._connections import connection_meter, counting_connections

__all__ = [
    "SUPPORTED_DRIVERS",
    "DriverAdapter",
    "counting_connections",
    "instrument",
    "instrumented_drivers",
    "instrumented_meter",
    "meter_of",
    "uninstrument",
    "unwrap_connection",
    "wrap_connection",
]


class DriverAdapter(Protocol):
    """What a driver's adapter module (``_<driver>.py`` beside this one) provides."""

    def connection_types(self) -> tuple[type, ...]:
        """The driver's connection classes (and proxies of ours) it can count."""

    def instrument(self, module: types.ModuleType, meter: Meter) -> list[Any]:
        """The patches (``install()``/``remove()``) that count new connections into meter."""

    def wrap(self, connection: Any, meter: Meter) -> Any:
        """Count one open connection into meter; the connection to use."""

    def unwrap(self, connection: Any) -> Any:
        """Stop counting a connection; the driver's own connection object."""


# Each adapter imports its driver, so it is imported only when asked for.
def _load_sqlite3() -> DriverAdapter:
    from . import _sqlite3 as adapter

    return adapter


def _load_psycopg() -> DriverAdapter:
    from . import _psycopg as adapter

    return adapter


def _load_psycopg2() -> DriverAdapter:
    from . import _psycopg2 as adapter

    return adapter


def _load_pymysql() -> DriverAdapter:
    from . import _pymysql as adapter

    return adapter


def _load_aiosqlite() -> DriverAdapter:
    from . import _aiosqlite as adapter

    return adapter


def _load_asyncpg() -> DriverAdapter:
    from . import _asyncpg as adapter

    return adapter


def _load_mysqldb() -> DriverAdapter:
    from . import _mysqldb as adapter

    return adapter


#: The registry, one line per driver: the name of the driver's module -> its adapter.
_ADAPTERS: dict[str, Callable[[], DriverAdapter]] = {
    "sqlite3": _load_sqlite3,
    "psycopg": _load_psycopg,
    "psycopg2": _load_psycopg2,
    "pymysql": _load_pymysql,
    "aiosqlite": _load_aiosqlite,
    "asyncpg": _load_asyncpg,
    "MySQLdb": _load_mysqldb,
}

SUPPORTED_DRIVERS = tuple(_ADAPTERS)

_instrumented: dict[str, tuple[Meter, list[Patch]]] = {}
_lock = threading.Lock()


def _renew_lock_in_child() -> None:
    # A thread of the parent may have held the lock at the fork: in the child
    # it would never be released.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_lock_in_child)


def _adapter(name: str) -> DriverAdapter:
    return _ADAPTERS[name]()


def _driver_name(module: object) -> str:
    if not isinstance(module, types.ModuleType):
        raise TypeError(
            f"expected a driver module such as sqlite3 or psycopg, not {type(module).__name__}"
        )
    name = module.__name__
    if name not in SUPPORTED_DRIVERS:
        raise ValueError(
            f"querymeter.dbapi does not support {name!r}; "
            f"supported drivers: {', '.join(SUPPORTED_DRIVERS)}"
        )
    return name


def instrument(module: types.ModuleType, *, meter: Meter | None = None) -> None:
    """Count every statement of every connection the driver opens from now on.

    Patches the driver's ``connect`` (for psycopg also ``Connection.connect``
    and ``AsyncConnection.connect``) so that new connections and their cursors
    count into ``meter`` (the default meter unless given).  Connections opened
    before are not affected: see :func:`wrap_connection`.  Instrumenting again
    with the same meter does nothing; with another meter it raises
    ``ValueError`` (a statement would be counted twice).
    """
    name = _driver_name(module)
    counted_into = meter_argument(meter)
    with _lock:
        current = _instrumented.get(name)
        if current is not None:
            if current[0] is counted_into:
                return
            raise ValueError(
                f"{name} is already instrumented with another meter; "
                f"call querymeter.dbapi.uninstrument({name}) first"
            )
        patches = _adapter(name).instrument(module, counted_into)
        for patch in patches:
            patch.install()
        _instrumented[name] = (counted_into, patches)


def uninstrument(module: types.ModuleType) -> None:
    """Put the driver's original ``connect`` back, exactly; does nothing if not instrumented.

    Connections opened while instrumented keep counting until closed, or until
    :func:`unwrap_connection`.
    """
    name = _driver_name(module)
    # Removed under the lock: an instrument() in another thread between the
    # pop and the removal would wrap our patch, which would then stay in its
    # chain as a pass-through, and chains would grow with every toggle.
    with _lock:
        entry = _instrumented.pop(name, None)
        if entry is not None:
            for patch in reversed(entry[1]):
                patch.remove()


def instrumented_drivers() -> list[types.ModuleType]:
    """The driver modules instrumented now."""
    with _lock:
        names = list(_instrumented)
    return [sys.modules[name] for name in names if name in sys.modules]


def instrumented_meter(module: types.ModuleType) -> Meter | None:
    """The meter a driver module is instrumented with, or None."""
    entry = _instrumented.get(_driver_name(module))
    return entry[0] if entry else None


def _adapter_for_connection(connection: object) -> DriverAdapter:
    for name in SUPPORTED_DRIVERS:
        # A connection of a driver never imported cannot exist (nor of MySQLdb
        # where sys.modules["MySQLdb"] is PyMySQL, installed as MySQLdb).
        if getattr(sys.modules.get(name), "__name__", None) != name:
            continue
        adapter = _adapter(name)
        if isinstance(connection, adapter.connection_types()):
            return adapter
    raise TypeError(
        "expected a connection of a supported driver "
        f"({', '.join(SUPPORTED_DRIVERS)}), not {type(connection).__name__}"
    )


def wrap_connection(connection: Any, *, meter: Meter | None = None) -> Any:
    """Count every statement of one existing connection; returns the connection to use.

    For every driver but sqlite3 this is the same object, changed in place.
    sqlite3's connection class is immutable, so an existing sqlite3 connection
    is returned behind a thin proxy (see docs/dbapi/sqlite.md).  Wrapping again
    with the same meter does nothing; a connection that counts into another
    meter raises ``ValueError``.
    """
    adapter = _adapter_for_connection(connection)
    return adapter.wrap(connection, meter_argument(meter))


def unwrap_connection(connection: Any) -> Any:
    """Stop counting a connection; returns the driver's own connection object.

    The inverse of :func:`wrap_connection`, and also stops connections opened by
    an instrumented ``connect``.  Cursors opened before keep counting.
    """
    adapter = _adapter_for_connection(connection)
    return adapter.unwrap(connection)


def meter_of(connection: object) -> Meter | None:
    """The meter a connection counts into, or None."""
    return connection_meter(connection)
