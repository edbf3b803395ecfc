"""Counting in place: for drivers whose classes are Python classes.

psycopg, PyMySQL, aiosqlite, asyncpg and mysqlclient get their own methods
replaced on their classes while instrumented or while a counting connection is
open (``InPlaceCounting``), so ``type(cursor)`` stays the application's; and
the cursor methods PyMySQL and mysqlclient share (``cursor_call``,
``cursor_batch``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from .._faults import report as report_fault
from .._patching import Patch, like
from ._classes import lock_owners
from ._connections import connection_meter, forget_connection

__all__ = [
    "COUNTING",
    "IN_BATCH",
    "InPlaceCounting",
    "InPlaceTarget",
    "cursor_batch",
    "cursor_call",
]

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
        lock_owners.add(self)

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


# The dialect of the statements these cursors send, for their fingerprints.
MYSQL = "mysql"


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
                return meter._call_statement(MYSQL, 0, own, self, args[0])
            if len(args) == 2:
                return meter._call_statement(MYSQL, 0, own, self, args[0], args[1])
        return meter._call_statement(MYSQL, 0, own, self, *args, **kwargs)

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
                return meter._call_statement(MYSQL, 0, own, self, *args, **kwargs)
            finally:
                state.pop(name, None)

        return like(executemany, own)

    return make
