"""Pool accounting of one instrumented engine: core counters, and the wrappers feeding them.

SQLAlchemy has no event for "a checkout starts waiting" or "a checkout timed
out", so the waits and timeouts are measured by wrapping, on the pool
instance, the three calls they happen in (pool/impl.py, pool/base.py):

- ``pool.connect()``: one checkout, from the application's request to the
  connection (waiting, creating and pre-ping included); a
  ``sqlalchemy.exc.TimeoutError`` escaping it is a timeout.
- ``pool._pool.get(block, timeout)``, the QueuePool's only blocking call: the
  wrapper first tries without blocking, so a blocking call is a real wait,
  and times it.
- ``pool._invoke_creator(record)``: opening one DBAPI connection, whatever
  opens it (the dialect, ``creator=``, a ``do_connect`` listener).

Each is timed by the core (``Occupancies._timed``: begin and end paired in
C), on the meter's clock, so pool and statement intervals share one time
base, and no lock of ours is held anywhere: the core's counters are updated
under the GIL with no Python code in between.  The wrappers call the pool's
method as its class has it at the time of the call, so a class-level patch
made later (a test's ``mock.patch.object``, another tool) runs too.

``pool.recreate()`` is wrapped too, so that the pool ``engine.dispose()``
puts in place is accounted from its first checkout.  Connections in use,
invalidations and closes come from the pool events, registered through the
engine so that they move to the new pool on ``dispose()`` by themselves.
Nothing here is on the path of a statement.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import queue as sa_queue

from .. import _faults
from .._patching import Patch, like
from ..meter import Meter
from ._pool_readings import PoolSnapshot

__all__ = ["PoolAccounting"]

# Where a pool keeps the patches of the accounting that wraps it (so that a
# pool is wrapped once, and its wrappers go when it goes).
_PATCHES_ATTRIBUTE = "_querymeter_pool_patches"

# The occupancies of one engine's pool, slots of the core's Occupancies.
_CHECKOUTS, _WAITS, _CREATIONS, _IN_USE = 0, 1, 2, 3
# Events, counted as ended occupancies that never were under way.
_INVALIDATIONS, _SOFT_INVALIDATIONS, _CLOSES = 4, 5, 6
_SLOTS = 7


def _following_class(patch: Patch) -> Callable[..., Any]:
    """What the patched attribute is now, looked up at each call.

    The pool's own attribute, if it had one before us; else its class's, as
    the class has it when called, so that a class-level patch made after
    instrumenting runs, and one undone stops running.
    """
    if patch.name in vars(patch.owner):
        return patch.original  # type: ignore[no-any-return]
    owner_ref = weakref.ref(patch.owner)
    name = patch.name

    def current(*args: Any, **kwargs: Any) -> Any:
        owner = owner_ref()
        return getattr(type(owner), name).__get__(owner, type(owner))(*args, **kwargs)

    return like(current, patch.original)


def _gauges(pool: Any) -> tuple[int | None, int | None, int | None, int | None, int | None]:
    """(idle, overflow, size, max_overflow, timeout_ns) from a QueuePool's public read-outs."""
    if not isinstance(pool, QueuePool):
        return None, None, None, None, None
    # Read without the pool's lock, as its own status() does: approximate
    # under contention.  overflow() is negative while the pool is below its size.
    return (
        max(0, pool.checkedin()),
        max(0, pool.overflow()),
        pool.size(),
        int(getattr(pool, "_max_overflow", -1)),
        round(pool.timeout() * 1_000_000_000),
    )


class PoolAccounting:
    """The pool figures of one instrumented engine, and what feeds them.

    ``take_connection(dbapi_connection)`` is called for each connection the
    pool opens or hands out (the DB-API handover, see _handover.py).
    """

    def __init__(self, meter: Meter, take_connection: Callable[[Any], None]) -> None:
        self.active = True
        self.pool_id = secrets.randbits(63)
        self._take_connection = take_connection
        self._counts = meter._occupancies(_SLOTS)
        # Records, not a counter: a checkin without a checkout (a failed
        # reconnect) or a checkout event fired twice (a reconnect retry)
        # cannot make "in use" wrong, let alone negative.  By id, with a weak
        # reference each, updated by the core with its counter in one step.
        self._records: dict[int, weakref.ref[Any]] = {}
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._current_pool: weakref.ref[Any] | None = None
        self._engine: weakref.ref[Any] | None = None
        self._listeners = self._make_listeners()

    # -------------------------------------------------------------- reading

    def snapshot(self) -> PoolSnapshot:
        """Every figure, the counters read at one instant by the core."""
        pool = self._current_pool() if self._current_pool is not None else None
        try:
            idle, overflow, size, max_overflow, timeout_ns = _gauges(pool)
        except Exception as exc:  # noqa: BLE001 - a pool of an unexpected kind
            _faults.report("sqlalchemy: could not read the pool's gauges", exc)
            idle = overflow = size = max_overflow = timeout_ns = None
        # A record collected while counted (its pool gone with it) never gets
        # a checkin: it stops counting as in use, not as a release.
        self._counts._drop_lost(_IN_USE, self._records)
        uptime_ns, wall_ns, slots = self._counts._read()
        checkouts, waits, creations, in_use = (slots[i] for i in range(4))
        # Each slot: (under way, ended, failures, timeouts, total ns).
        return PoolSnapshot(
            uptime_ns=uptime_ns,
            in_use=in_use[0],
            idle=idle,
            overflow=overflow,
            waiting=waits[0],
            size=size,
            max_overflow=max_overflow,
            timeout_ns=timeout_ns,
            checkouts=checkouts[1] - checkouts[2],
            checkout_failures=checkouts[2],
            checkout_ns=checkouts[4],
            waits=waits[1],
            wait_ns=waits[4],
            timeouts=checkouts[3],
            creations=creations[1] - creations[2],
            creation_failures=creations[2],
            creation_ns=creations[4],
            invalidations=slots[_INVALIDATIONS][1],
            soft_invalidations=slots[_SOFT_INVALIDATIONS][1],
            closes=slots[_CLOSES][1],
            releases=in_use[1],
            in_use_ns=in_use[4],
            wall_ns=wall_ns,
            pool_id=self.pool_id,
        )

    # --------------------------------------------------------- pool events

    def _make_listeners(self) -> list[tuple[str, Callable[..., None], bool]]:
        """(event name, listener, insert): made once, so that event.remove gets the same."""

        def on_connect(dbapi_connection: Any, record: Any) -> None:
            if self.active:
                self._take_connection(dbapi_connection)

        def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
            if not self.active:
                return
            try:
                self._counts._hold(_IN_USE, self._records, id(record), record)
            except Exception as exc:  # noqa: BLE001
                _faults.report("sqlalchemy: pool accounting (checkout event)", exc)
            # Also here, for connections the pool opened before the engine
            # was instrumented.
            self._take_connection(dbapi_connection)

        def on_release(dbapi_connection: Any, record: Any) -> None:
            if not self.active:
                return
            try:
                self._counts._release(_IN_USE, self._records, id(record), record)
            except Exception as exc:  # noqa: BLE001
                _faults.report("sqlalchemy: pool accounting (checkin event)", exc)

        def counter(index: int) -> Callable[..., None]:
            def on_event(*args: Any) -> None:
                if not self.active:
                    return
                try:
                    self._counts._bump(index)
                except Exception as exc:  # noqa: BLE001
                    _faults.report("sqlalchemy: pool accounting (event)", exc)

            return on_event

        return [
            # insert=True: before the engine's own connect listeners (the
            # dialect's on_connect and first-connect initialize), so that a
            # connection that querymeter.dbapi counts is handed over before
            # any of them runs a statement on it.
            ("connect", on_connect, True),
            ("checkout", on_checkout, False),
            ("checkin", on_release, False),
            ("detach", on_release, False),
            ("invalidate", counter(_INVALIDATIONS), False),
            ("soft_invalidate", counter(_SOFT_INVALIDATIONS), False),
            ("close", counter(_CLOSES), False),
        ]

    def listen(self, engine: Any) -> None:
        """Register the pool events through the engine (they survive ``dispose()``)."""
        self._engine = weakref.ref(engine)
        for name, listener, insert in self._listeners:
            event.listen(engine, name, listener, insert=insert)

    def unlisten(self) -> None:
        """Remove the pool events with the exact (engine, name, listener) registered."""
        engine = self._engine() if self._engine is not None else None
        if engine is None:
            return
        for name, listener, _ in self._listeners:
            try:
                if event.contains(engine, name, listener):
                    event.remove(engine, name, listener)
            except Exception as exc:  # noqa: BLE001
                _faults.report("sqlalchemy: could not remove a pool event listener", exc)

    # ------------------------------------------------------- pool wrappers

    def install(self, pool: Any) -> None:
        """Wrap the pool's checkout, wait, creation and recreate calls; once per pool."""
        self._current_pool = weakref.ref(pool)
        if _PATCHES_ATTRIBUTE in vars(pool):
            if vars(pool)[_PATCHES_ATTRIBUTE][0] is not self:
                # create_engine(pool=shared): one pool, several engines.
                _faults.report(
                    "sqlalchemy: a pool shared by several engines is accounted "
                    "to the first engine instrumented"
                )
            return
        patches = [
            Patch(pool, "connect", self._counted_connect),
            Patch(pool, "recreate", lambda patch: self._recreating(_following_class(patch))),
        ]
        if callable(getattr(pool, "_invoke_creator", None)):
            patches.append(Patch(pool, "_invoke_creator", self._counted_creator))
        queue = getattr(pool, "_pool", None) if isinstance(pool, QueuePool) else None
        if queue is not None and callable(getattr(queue, "get", None)):
            patches.append(Patch(queue, "get", self._counted_get))
        for patch in patches:
            patch.install()
        setattr(pool, _PATCHES_ATTRIBUTE, (self, patches))
        self._pools.add(pool)

    def uninstall(self) -> None:
        """Stop counting, and put every wrapped pool's attributes back where ours are outermost."""
        self.active = False
        for pool in list(self._pools):
            entry = vars(pool).get(_PATCHES_ATTRIBUTE)
            if entry is None or entry[0] is not self:
                continue
            for patch in reversed(entry[1]):
                # One that another tool wrapped since stays in its chain, as a
                # pass-through: every wrapper here checks self.active.
                patch.remove()
            delattr(pool, _PATCHES_ATTRIBUTE)
        self._pools = weakref.WeakSet()

    def _counted_connect(self, patch: Patch) -> Callable[..., Any]:
        original = _following_class(patch)
        timed = self._counts._timed(_CHECKOUTS, original, sa_exc.TimeoutError)

        def connect(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            return timed(*args, **kwargs)

        return like(connect, patch.original)

    def _counted_get(self, patch: Patch) -> Callable[..., Any]:
        original = _following_class(patch)
        timed = self._counts._timed(_WAITS, original)
        empty = sa_queue.Empty

        def get(block: bool = True, timeout: float | None = None) -> Any:
            if not block or not self.active:
                return original(block, timeout)
            # First without blocking: only a call that has to block is a wait.
            try:
                return original(False)
            except empty:
                pass
            return timed(True, timeout)

        return like(get, patch.original)

    def _counted_creator(self, patch: Patch) -> Callable[..., Any]:
        original = _following_class(patch)
        timed = self._counts._timed(_CREATIONS, original)

        def invoke_creator(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            return timed(*args, **kwargs)

        return like(invoke_creator, patch.original)

    def _recreating(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def recreate(*args: Any, **kwargs: Any) -> Any:
            new_pool = original(*args, **kwargs)
            if self.active:
                try:
                    self.install(new_pool)
                except Exception as exc:  # noqa: BLE001
                    _faults.report("sqlalchemy: could not account a recreated pool", exc)
            return new_pool

        return like(recreate, original)
