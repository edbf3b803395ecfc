"""Counted subclasses: for drivers whose classes are C types (sqlite3, psycopg2).

A cursor class gets a subclass whose statement-sending methods are the
meter's call wrappers, made once per (class, meter) by ``quiet_subclass``
without running any code of the application's.  Every lock here, and every
lock registered in ``lock_owners``, is renewed in a forked child.
"""

from __future__ import annotations

import abc
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from .. import core
from .._faults import report as report_fault
from ..meter import Meter

__all__ = [
    "BASE_ATTRIBUTE",
    "METER_ATTRIBUTE",
    "CountedMethod",
    "counted_class",
    "counted_meter",
    "lock_owners",
    "original_class",
    "quiet_subclass",
    "set_counting",
    "timed",
    "timed_statement",
]

CountedMethod = Callable[[Meter, type, str], Any]

METER_ATTRIBUTE = "__querymeter_meter__"
BASE_ATTRIBUTE = "__querymeter_base__"
# A counted class's counting methods by name, kept while the kill switch hides them.
COUNTED_ATTRIBUTE = "__querymeter_counted__"
# Whether counted classes show their counting methods (the kill switch; off
# from the start with QUERYMETER_DISABLE=1).
_counting = [core.enabled()]


def set_counting(enabled: bool) -> None:
    """The kill switch's part here: while off, every counted class shows its base's own
    methods (a call costs what the driver's does, with no wrapper in between); on
    again, its counting methods.  A method bound while off stays the driver's."""
    with _classes_lock:
        _counting[0] = enabled
        classes = list(_classes.values())
    for cls in classes:
        _show_counted_methods(cls, enabled)


def _show_counted_methods(cls: type, enabled: bool) -> None:
    for name, method in cls.__dict__.get(COUNTED_ATTRIBUTE, {}).items():
        try:
            if enabled:
                type.__setattr__(cls, name, method)
            elif name in cls.__dict__:
                type.__delattr__(cls, name)
        except Exception as exc:  # noqa: BLE001 - ours: that class keeps counting
            report_fault(f"{cls.__qualname__}: could not switch its counting methods", exc)


# ------------------------------------------------------------ counted classes

# Values are weak: a counted class holds its meter, and both go when no
# cursor of the class is left.
_classes: weakref.WeakValueDictionary[tuple[type, int], type] = weakref.WeakValueDictionary()
_classes_lock = threading.Lock()

# Every object with a ``_lock`` of its own, for a forked child to renew.
lock_owners: weakref.WeakSet[Any] = weakref.WeakSet()


def _renew_locks_in_child() -> None:
    # A thread of the parent may have held a lock at the fork: in the child it
    # would never be released.
    global _classes_lock
    _classes_lock = threading.Lock()
    for owner in list(lock_owners):
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
                counted = {
                    name: make(meter, original, name)
                    for name, make in methods.items()
                    if hasattr(original, name)
                }
                namespace[COUNTED_ATTRIBUTE] = counted
                namespace.update(counted)
                cls = quiet_subclass(original.__name__, (original,), namespace)
                if not _counting[0]:
                    _show_counted_methods(cls, False)
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
# --------------------------------------------------------- how methods count


def timed(meter: Meter, base: type, name: str) -> Any:
    """Each call is one query: the meter's call wrapper around the base's method."""
    return meter.tracked(getattr(base, name))


def timed_statement(dialect: str, layout: int = 0) -> CountedMethod:
    """Each call is one query, observed under its statement (cursor, sql, params, ...)
    in ``dialect`` when the meter aggregates statements or samples; ``layout`` as
    the core's (4: no parameters after the text, 8: the cursor's rowcount is stale)."""

    def make(meter: Meter, base: type, name: str) -> Any:
        return meter._timed_statement(getattr(base, name), dialect, layout)

    return make
