"""Counted subclasses of driver classes: built once per (class, meter), transparent, undoable.

A driver's cursor class gets a subclass whose statement-sending methods are
the meter's call wrappers (C in the C core): a counted ``cur.execute(...)`` is
one C call around the driver's own, with no proxy and no attribute forwarding.
The subclass keeps the base's name, module and layout (``__slots__ = ()``),
so isinstance, C-level type checks, ``__class__`` assignment and repr behave
as the driver's own.  Connections keep their meter in a side table, so that
a connection whose class cannot be changed back can still be switched off.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from .. import _faults
from ..meter import Meter

__all__ = [
    "ConnectionClasses",
    "CountedMethod",
    "batch",
    "connection_meter",
    "connection_namespace",
    "counted_async_context",
    "counted_async_iteration",
    "counted_class",
    "counted_context",
    "counted_iteration",
    "forget_connection",
    "report_fault",
    "set_connection_meter",
    "tracked",
    "unwrap_in_place",
    "wrap_in_place",
]

# How one method of a counted class is made: (meter, the base class, the
# method's name) -> the attribute of the counted class.
CountedMethod = Callable[[Meter, type, str], Any]

METER_ATTRIBUTE = "__querymeter_meter__"
BASE_ATTRIBUTE = "__querymeter_base__"


def report_fault(cause: str, exc: BaseException | None = None) -> None:
    """A fault of querymeter's own inside a hook: logged once, counted, never raised."""
    _faults.report(cause, exc)


# ------------------------------------------------------------ counted classes

# Values are weak: a counted class holds its meter, and both go when no
# cursor of the class is left.
_classes: weakref.WeakValueDictionary[tuple[type, int], type] = weakref.WeakValueDictionary()
_classes_lock = threading.Lock()

# Every object with a ``_lock`` of its own, for a forked child to renew.
_lock_owners: weakref.WeakSet[Any] = weakref.WeakSet()


def _renew_locks_in_child() -> None:
    # A thread of the parent may have held a lock at the fork: in the child it
    # would never be released.
    global _classes_lock
    _classes_lock = threading.Lock()
    for owner in list(_lock_owners):
        owner._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_locks_in_child)


def original_class(cls: type) -> type:
    """The driver (or user) class a counted class was made from; the class itself otherwise."""
    base: type = cls.__dict__.get(BASE_ATTRIBUTE, cls)
    return base


def counted_meter(cls: type) -> Meter | None:
    """The meter a counted class counts into, or None for a class of the driver's."""
    meter: Meter | None = cls.__dict__.get(METER_ATTRIBUTE)
    return meter


def counted_class(base: type, meter: Meter, methods: Mapping[str, CountedMethod]) -> type:
    """The subclass of ``base`` whose ``methods`` count into ``meter``; made once, then cached.

    A class that is already counted is taken back to its original first, so
    that counting never stacks.
    """
    original = original_class(base)
    key = (original, id(meter))
    cls = _classes.get(key)
    if cls is not None:
        return cls
    with _classes_lock:
        cls = _classes.get(key)
        if cls is None:
            namespace: dict[str, Any] = {
                "__slots__": (),
                "__module__": original.__module__,
                "__qualname__": original.__qualname__,
                "__doc__": original.__doc__,
                METER_ATTRIBUTE: meter,
                BASE_ATTRIBUTE: original,
            }
            for name, make in methods.items():
                if hasattr(original, name):
                    namespace[name] = make(meter, original, name)
            cls = type(original.__name__, (original,), namespace)
            _classes[key] = cls
    return cls


# --------------------------------------------------------- how methods count


def tracked(meter: Meter, base: type, name: str) -> Any:
    """Each call is one query: the meter's call wrapper around the base's method."""
    return meter.tracked(getattr(base, name))


def batch(execute_name: str) -> CountedMethod:
    """A method that sends a batch through ``self.<execute_name>``: the batch is one query.

    (PyMySQL's executemany calls self.execute per row or per chunk.)  The
    batch is timed by the meter's call wrapper; inside it, an instance
    attribute shadows the counted execute with the driver's own, so the inner
    calls are not counted again, and the counted execute stays a plain class
    attribute, with nothing added to its path.  The shadow is set and removed
    inside the timed call, where nothing can separate the end from the begin.
    """

    def make(meter: Meter, base: type, name: str) -> Any:
        method = getattr(base, name)
        plain_execute = getattr(base, execute_name)

        def shadowing_batch(self: Any, *args: Any, **kwargs: Any) -> Any:
            instance = self.__dict__
            shadowed = execute_name in instance
            # A store, then the try at once: no bytecode in between at
            # which an asynchronous exception could leave the shadow behind.
            instance[execute_name] = plain_execute.__get__(self, type(self))
            try:
                return method(self, *args, **kwargs)
            finally:
                if not shadowed:
                    instance.pop(execute_name, None)

        return _like(meter._timed(shadowing_batch), method)

    return make


def _like(wrapper: Any, method: Any) -> Any:
    """The wrapper, named and documented as the method it counts."""
    functools.update_wrapper(wrapper, method)
    return wrapper


def counted_iteration(meter: Meter, base: type, name: str) -> Any:
    """A method returning an iterator whose consumption is the query (a streamed result).

    The query runs from the first row asked for until the iterator is
    exhausted, fails, or is closed early; closing early is not an error.  The
    core's iterator pairs begin and end.
    """
    method = getattr(base, name)
    iterating = meter._iterating

    @functools.wraps(method)
    def counted_stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
        return iterating(method(*args, **kwargs))

    return counted_stream


def counted_async_iteration(meter: Meter, base: type, name: str) -> Any:
    """The async twin of :func:`counted_iteration`."""
    method = getattr(base, name)
    async_iterating = meter._async_iterating

    @functools.wraps(method)
    def counted_stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        return async_iterating(method(*args, **kwargs))

    return counted_stream


def counted_context(meter: Meter, base: type, name: str) -> Any:
    """A method returning a context manager whose block is the query (COPY)."""
    method = getattr(base, name)

    @functools.wraps(method)
    @contextlib.contextmanager
    def counted_block(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with meter.track(), method(*args, **kwargs) as inner:
            yield inner

    return counted_block


def counted_async_context(meter: Meter, base: type, name: str) -> Any:
    """A method returning an async context manager whose block is the query."""
    method = getattr(base, name)

    @functools.wraps(method)
    @contextlib.asynccontextmanager
    async def counted_block(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        with meter.track():
            async with method(*args, **kwargs) as inner:
                yield inner

    return counted_block


# ------------------------------------------------------- connections' meters


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
        _lock_owners.add(self)

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
        _lock_owners.add(self)

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
