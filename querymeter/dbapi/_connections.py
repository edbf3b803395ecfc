"""Each connection's meter: a side table, and the counting connection classes that use it.

Both counting mechanisms (counted subclasses and counting in place) look a
connection's meter up here, so no driver layout has to make room for it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from ..meter import Meter
from ._classes import BASE_ATTRIBUTE, lock_owners, original_class

__all__ = [
    "ConnectionClasses",
    "already_counted_by_other",
    "connection_meter",
    "connection_namespace",
    "connections_of",
    "counting_connections",
    "forget_connection",
    "set_connection_meter",
    "unwrap_in_place",
    "wrap_in_place",
]


def connection_namespace(base: type) -> dict[str, Any]:
    """The start of a counting connection class's namespace: the base's names, and
    a weak-reference slot where the base has none (the side table needs it)."""
    return {
        "__slots__": () if base.__weakrefoffset__ else ("__weakref__",),
        "__module__": base.__module__,
        "__qualname__": base.__qualname__,
        "__doc__": base.__doc__,
        BASE_ATTRIBUTE: base,
    }


class _ConnectionMeters:
    """Which meter each connection counts into: a side table, so that no driver
    layout has to make room for it, and an entry goes with its connection."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[Any], Meter]] = {}
        self._lock = threading.Lock()
        lock_owners.add(self)

    def get(self, connection: object) -> Meter | None:
        entry = self._entries.get(id(connection))
        if entry is None or entry[0]() is not connection:
            return None
        return entry[1]

    def set(self, connection: object, meter: Meter | None) -> None:
        key = id(connection)
        with self._lock:
            if meter is None:
                self._entries.pop(key, None)
                return
            entries = self._entries

            def forget(ref: weakref.ref[Any], key: int = key) -> None:
                entry = entries.get(key)
                if entry is not None and entry[0] is ref:
                    del entries[key]

            self._entries[key] = (weakref.ref(connection, forget), meter)


_connection_meters = _ConnectionMeters()


def connection_meter(connection: object) -> Meter | None:
    """The meter a connection counts into, or None."""
    return _connection_meters.get(connection)


def set_connection_meter(connection: object, meter: Meter) -> None:
    """Make a connection count into a meter."""
    _connection_meters.set(connection, meter)


def forget_connection(connection: object) -> None:
    """Make a connection count no more."""
    _connection_meters.set(connection, None)


def already_counted_by_other(connection: object, meter: Meter, driver: str) -> None:
    """Refuse to count one connection into two meters (it would count twice)."""
    current = connection_meter(connection)
    if current is not None and current is not meter:
        raise ValueError(
            f"this {driver} connection already counts into another meter; "
            "call querymeter.dbapi.unwrap_connection() on it first"
        )


class ConnectionClasses:
    """The counting subclass of each connection class of a driver, built once by ``build``.

    Per class, not per meter: a counting connection finds its meter in the side
    table, so one subclass serves every meter.
    """

    def __init__(self, build: Callable[[Any], type]) -> None:
        self._build = build
        self._classes: weakref.WeakValueDictionary[type, type] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        lock_owners.add(self)

    def __call__(self, base: type) -> type[Any]:
        base = original_class(base)
        cls = self._classes.get(base)
        if cls is None:
            with self._lock:
                cls = self._classes.get(base)
                if cls is None:
                    cls = self._classes[base] = self._build(base)
        return cls


def wrap_in_place(connection: Any, meter: Meter, driver: str, classes: ConnectionClasses) -> Any:
    """Count an open connection of a driver whose classes can change: its class changes."""
    already_counted_by_other(connection, meter, driver)
    counting = classes(type(connection))
    if type(connection) is not counting:
        connection.__class__ = counting
    set_connection_meter(connection, meter)
    return connection


def unwrap_in_place(connection: Any) -> Any:
    """Stop counting a connection; give it back its own class where it has a counting one."""
    forget_connection(connection)
    base = type(connection).__dict__.get(BASE_ATTRIBUTE)
    if base is not None:
        connection.__class__ = base
    return connection


def counting_connections() -> list[Any]:
    """Every live connection that counts into a meter now."""
    with _connection_meters._lock:
        refs = [ref for ref, _ in _connection_meters._entries.values()]
    return [connection for connection in (ref() for ref in refs) if connection is not None]


def connections_of(meter: Meter) -> list[Any]:
    """Every live connection that counts into ``meter`` now."""
    with _connection_meters._lock:
        refs = [ref for ref, owner in _connection_meters._entries.values() if owner is meter]
    return [connection for connection in (ref() for ref in refs) if connection is not None]
