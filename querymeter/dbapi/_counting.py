"""How the DB-API hooks count: counted subclasses, counting in place, and each connection's meter.

Three mechanisms the driver adapters share:

- Counted subclasses, for drivers whose classes are C types (sqlite3,
  psycopg2): a cursor class gets a subclass whose statement-sending methods
  are the meter's call wrappers, made once per (class, meter) by
  ``quiet_subclass`` without running any code of the application's.
- Counting in place, for drivers whose classes are Python classes (psycopg,
  PyMySQL, aiosqlite, asyncpg, mysqlclient): the driver's own methods are
  replaced on its classes while it is instrumented or a counting connection
  is open (``InPlaceCounting``), so ``type(cursor)`` stays the application's.
- A side table of each connection's meter, which both look up.

Every lock here is renewed in a forked child.
"""

from __future__ import annotations

import abc
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .. import _faults
from .._patching import Patch, like
from ..meter import Meter

__all__ = [
    "COUNTING",
    "IN_BATCH",
    "ConnectionClasses",
    "CountedMethod",
    "InPlaceCounting",
    "connection_meter",
    "connection_namespace",
    "counted_class",
    "cursor_batch",
    "cursor_call",
    "forget_connection",
    "quiet_subclass",
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
    that counting never stacks.  The subclass is made by :func:`quiet_subclass`,
    without running any code of the application's; a class that cannot be
    subclassed so is returned as it is, uncounted, and the fault is reported.
    This never raises.
    """
    original = original_class(base)
    key = (original, id(meter))
    cls = _classes.get(key)
    if cls is not None:
        return cls
    if original in _uncountable:
        report_fault(f"{original.__qualname__}: a class that cannot be counted quietly")
        return original
    try:
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
                cls = quiet_subclass(original.__name__, (original,), namespace)
                _classes[key] = cls
    except Exception as exc:  # noqa: BLE001 - ours, or a class we must not touch
        _uncountable.add(original)
        report_fault(f"{original.__qualname__}: a class that cannot be counted quietly", exc)
        return original
    return cls


# Classes that counted_class could not subclass quietly: not tried again.
_uncountable: weakref.WeakSet[type] = weakref.WeakSet()


class _NoSubclassHook:
    """First base while a quiet subclass is made: its ``__init_subclass__`` is
    the one ``type.__new__`` calls, and it calls no other."""

    __slots__ = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        pass


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement or type()


def quiet_subclass(name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> type:
    """A subclass of ``bases`` made without running any code of the application's.

    ``type(name, bases, namespace)`` would call the metaclass's ``__new__`` and
    ``__init__`` and the bases' ``__init_subclass__`` (an application's class
    may require a keyword there, or register every subclass).  Here the class
    is made by ``type.__new__`` of the bases' metaclass itself, so that
    neither runs; while it is made, a first base of ours answers the
    ``__init_subclass__`` call, and is then taken out of ``__bases__`` again.
    An ABC gets the abc module's own bookkeeping (so that an abstract class
    stays abstract).  Raises TypeError for what cannot be made so: a
    metaclass of C, one with its own ``mro()``, a metaclass conflict.
    """
    metaclass: Any = type
    for base in bases:
        candidate: Any = type(base)
        if candidate in metaclass.__mro__:
            continue
        if metaclass not in candidate.__mro__:
            raise TypeError(f"metaclass conflict among {bases}")
        metaclass = candidate
    for cls in metaclass.__mro__:
        if cls is type or cls is object:
            continue
        if not cls.__flags__ & _HEAPTYPE or "mro" in vars(cls):
            # A C metaclass has fields type.__new__ would leave unset; an
            # mro() of the application's would run on __bases__ assignment.
            raise TypeError(f"metaclass {metaclass.__qualname__} cannot be bypassed")
    hooked = any(
        "__init_subclass__" in vars(cls)
        for base in bases
        for cls in base.__mro__
        if cls is not object
    )
    # type.__new__ calls __set_name__ on the namespace's values: any value
    # whose class has one (an application's class with such a metaclass) is
    # set afterwards instead, by type's own __setattr__.
    named = {
        key: value
        for key, value in namespace.items()
        if any("__set_name__" in vars(cls) for cls in type(value).__mro__)
    }
    plain = {key: value for key, value in namespace.items() if key not in named}
    made: Any
    if not hooked:
        made = type.__new__(metaclass, name, bases, plain)
    else:
        made = type.__new__(metaclass, name, (_NoSubclassHook, *bases), plain)
        made.__bases__ = bases
    for key, value in named.items():
        type.__setattr__(made, key, value)
    if isinstance(made, abc.ABCMeta):
        abc_init = getattr(abc, "_abc_init", None)
        if abc_init is not None:
            abc_init(made)
    quiet: type = made
    return quiet


# --------------------------------------------------------- how methods count


def tracked(meter: Meter, base: type, name: str) -> Any:
    """Each call is one query: the meter's call wrapper around the base's method."""
    return meter.tracked(getattr(base, name))


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


# ------------------------------------------------- counting on driver classes

# (a driver's class, one of its methods, how the counting method is made from
# the Patch that installs it: ``patch.own`` is the driver's function).
InPlaceTarget = tuple[type, str, Callable[[Patch], Any]]


class InPlaceCounting:
    """Counting methods on a driver's own classes, there while they are needed.

    For drivers of Python classes: each counting method finds the meter of its
    connection in the side table and counts, or calls the driver's own at
    once, so ``type(connection)``, ``type(cursor)`` and the cursor factories
    stay the application's own, and no class of the application is
    subclassed.  The methods are put on while the driver is instrumented or a
    counting connection is open, and put back, exactly, once neither is so
    (checked at uninstrument and unwrap_connection).

    Stands in the list of patches ``instrument`` returns (``install`` /
    ``remove``), and is held by each connection it counts.  ``targets`` lists
    what to patch, ``is_closed`` tells an open connection from a closed one.
    """

    def __init__(
        self, targets: Callable[[], list[InPlaceTarget]], is_closed: Callable[[Any], bool]
    ) -> None:
        self._targets = targets
        self._is_closed = is_closed
        self._patches: list[Patch] = []
        self._instrumented = False
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()
        _lock_owners.add(self)

    @property
    def patches(self) -> list[Patch]:
        """The patches on the driver's classes now (none while not needed)."""
        return list(self._patches)

    def install(self) -> None:
        with self._lock:
            self._instrumented = True
            self._put_on()

    def remove(self) -> bool:
        with self._lock:
            self._instrumented = False
            return self._take_off_if_unused()

    def hold(self, connection: Any) -> None:
        """A connection counts: the counting methods stay while it is open."""
        with self._lock:
            self._connections.add(connection)
            self._put_on()

    def release(self, connection: Any) -> None:
        """A connection counts no more."""
        with self._lock:
            self._connections.discard(connection)
            self._take_off_if_unused()

    def _put_on(self) -> None:
        if not self._patches:
            patches = [Patch(owner, name, make) for owner, name, make in self._targets()]
            for patch in patches:
                patch.install()
            self._patches = patches

    def _take_off_if_unused(self) -> bool:
        if self._instrumented:
            return False
        connections = list(self._connections)
        if not all(self._closed(connection) for connection in connections):
            return False
        # Closed connections stop counting with the methods: their entries go too.
        for connection in connections:
            forget_connection(connection)
        put_back = all([patch.remove() for patch in reversed(self._patches)])
        self._patches = []
        self._connections = weakref.WeakSet()
        return put_back

    def _closed(self, connection: Any) -> bool:
        try:
            return bool(self._is_closed(connection))
        except Exception as exc:  # noqa: BLE001 - ours: taken for open
            report_fault("could not tell whether a connection is closed", exc)
            return False


# ------------------------------------- cursor methods counted in place (MySQL)
#
# PyMySQL and mysqlclient keep a cursor's connection in its ``connection``
# attribute and send executemany through execute.  Each maker takes the Patch
# that installs it: ``patch.own`` is the driver's function, and a patch that
# was removed while another tool's wrapper kept it in a chain becomes a
# pass-through (``patch.active``).  The connection is read from the cursor's
# __dict__, so no property of the application's runs.

# The mark of a cursor running a batch: the execute calls the driver makes
# inside it are part of it, not queries of their own.
IN_BATCH = "__querymeter_batch__"
# The mark of a counting execute, told apart from an application's override.
COUNTING = "__querymeter_counting__"


def cursor_call(patch: Patch) -> Any:
    """``execute`` and ``callproc``: each call is one query, except inside a batch."""
    own = patch.own

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        state = self.__dict__
        meter = connection_meter(state.get("connection"))
        # Most calls pass one or two arguments and no keyword: passed one by
        # one, they cost less than half what forwarding *args and **kwargs does.
        if meter is None or IN_BATCH in state or not patch.active:
            if not kwargs:
                if len(args) == 1:
                    return own(self, args[0])
                if len(args) == 2:
                    return own(self, args[0], args[1])
            return own(self, *args, **kwargs)
        if not kwargs:
            if len(args) == 1:
                return meter._call(own, self, args[0])
            if len(args) == 2:
                return meter._call(own, self, args[0], args[1])
        return meter._call(own, self, *args, **kwargs)

    setattr(method, COUNTING, True)
    return like(method, own)


def cursor_batch(own_execute: Callable[..., Any]) -> Callable[[Patch], Any]:
    """``executemany``: the batch is one query, the execute calls inside it are not counted.

    During the batch the cursor carries one mark: where its class keeps the
    counting execute, an instance attribute that shadows it with the driver's
    own (``own_execute``), so the driver's calls do not even pass through it;
    else (an application's execute), a flag that makes the counting execute
    pass them through.  One mark, set by one store and removed by one call,
    so no asynchronous exception can leave half of it behind.
    """

    def make(patch: Patch) -> Any:
        own = patch.own

        def executemany(self: Any, *args: Any, **kwargs: Any) -> Any:
            state = self.__dict__
            meter = connection_meter(state.get("connection"))
            if meter is None or IN_BATCH in state or not patch.active:
                return own(self, *args, **kwargs)
            mark: Any = True
            name = IN_BATCH
            if "execute" not in state and getattr(type(self).execute, COUNTING, False):
                name, mark = "execute", own_execute.__get__(self, type(self))
            try:
                state[name] = mark
                # Timed by the meter's call wrapper: begin and end paired in the core.
                return meter._call(own, self, *args, **kwargs)
            finally:
                state.pop(name, None)

        return like(executemany, own)

    return make
