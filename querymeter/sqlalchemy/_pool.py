"""Pool accounting of one instrumented engine: counters, and the wrappers and events feeding them.

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

``pool.recreate()`` is wrapped too, so that the pool ``engine.dispose()``
puts in place is accounted from its first checkout.  Connections in use,
invalidations and closes come from the pool events, registered through the
engine so that they move to the new pool on ``dispose()`` by themselves.
Nothing here is on the path of a statement.
"""

from __future__ import annotations

import secrets
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import queue as sa_queue

from .. import _faults
from .._patching import Patch, like
from ._figures import PoolSnapshot

__all__ = ["PoolAccounting"]

# Where a pool keeps the patches of the accounting that wraps it (so that a
# pool is wrapped once, and its wrappers go when it goes).
_PATCHES_ATTRIBUTE = "_querymeter_pool_patches"


class _Occupancy:
    """Things that start and end (waits, checkouts, creations, connections held).

    ``under_way`` of them now, ``ended`` so far, and the sum of their durations
    in ns, the time so far of those under way included: the meter's bookkeeping
    for ``concurrency``, ``queries`` and ``total_ns`` (DESIGN §1), under the
    accounting's lock.
    """

    __slots__ = ("ended", "stamp_ns", "total_ns", "under_way")

    def __init__(self, now_ns: int) -> None:
        self.under_way = 0
        self.ended = 0
        self.total_ns = 0
        self.stamp_ns = now_ns

    def advance(self, now_ns: int) -> None:
        if now_ns > self.stamp_ns:
            self.total_ns += (now_ns - self.stamp_ns) * self.under_way
            self.stamp_ns = now_ns

    def begin(self, now_ns: int) -> None:
        self.advance(now_ns)
        self.under_way += 1

    def end(self, now_ns: int) -> None:
        self.advance(now_ns)
        # Never below zero, whatever the order of events.
        if self.under_way:
            self.under_way -= 1
        self.ended += 1

    def lose(self, now_ns: int) -> None:
        """One that stops without having ended (it is not counted as ended)."""
        self.advance(now_ns)
        if self.under_way:
            self.under_way -= 1

    def total_at(self, now_ns: int) -> int:
        """``total_ns`` brought up to ``now_ns``, without changing the state."""
        return self.total_ns + max(0, now_ns - self.stamp_ns) * self.under_way


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

    def __init__(self, take_connection: Callable[[Any], None]) -> None:
        self.active = True
        self.pool_id = secrets.randbits(63)
        self._take_connection = take_connection
        # Reentrant: an allocation under the lock can run the garbage
        # collector, whose finalizer of a lost connection checks it in, which
        # fires our checkin listener in the same thread.  Every update here
        # is complete in itself, so a nested one leaves the figures consistent.
        self._lock = threading.RLock()
        self._clock = time.monotonic_ns
        now_ns = self._clock()
        self._started_ns = now_ns
        self._checkouts = _Occupancy(now_ns)
        self._waits = _Occupancy(now_ns)
        self._creations = _Occupancy(now_ns)
        self._in_use = _Occupancy(now_ns)
        self._checkout_failures = 0
        self._timeouts = 0
        self._creation_failures = 0
        self._invalidations = 0
        self._soft_invalidations = 0
        self._closes = 0
        # Records, not a counter: a checkin without a checkout (a failed
        # reconnect) or a checkout event fired twice (a reconnect retry)
        # cannot make "in use" wrong, let alone negative.  By id, with a weak
        # reference each: cheaper than a WeakSet, and a record is never kept.
        self._records: dict[int, weakref.ref[Any]] = {}
        self._pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self._current_pool: weakref.ref[Any] | None = None
        self._engine: weakref.ref[Any] | None = None
        self._listeners = self._make_listeners()

    # ------------------------------------------------------------- counting

    def _checkout_began(self) -> None:
        try:
            with self._lock:
                self._checkouts.begin(self._clock())
        except Exception as exc:  # noqa: BLE001 - ours, never the application's
            _faults.report("sqlalchemy: pool accounting (checkout)", exc)

    def _checkout_ended(self, error: BaseException | None) -> None:
        try:
            with self._lock:
                self._checkouts.end(self._clock())
                if error is not None:
                    # ended counts every checkout; failures are kept apart,
                    # so checkouts = ended - failures.
                    self._checkout_failures += 1
                    # sqlalchemy.exc.TimeoutError, not the builtin: a
                    # cancelled wait (asyncio) is not a timeout.
                    if isinstance(error, sa_exc.TimeoutError):
                        self._timeouts += 1
        except Exception as exc:  # noqa: BLE001
            _faults.report("sqlalchemy: pool accounting (checkout)", exc)

    def _wait_began(self) -> None:
        try:
            with self._lock:
                self._waits.begin(self._clock())
        except Exception as exc:  # noqa: BLE001
            _faults.report("sqlalchemy: pool accounting (wait)", exc)

    def _wait_ended(self) -> None:
        try:
            with self._lock:
                self._waits.end(self._clock())
        except Exception as exc:  # noqa: BLE001
            _faults.report("sqlalchemy: pool accounting (wait)", exc)

    def _creation_began(self) -> None:
        try:
            with self._lock:
                self._creations.begin(self._clock())
        except Exception as exc:  # noqa: BLE001
            _faults.report("sqlalchemy: pool accounting (creation)", exc)

    def _creation_ended(self, failed: bool) -> None:
        try:
            with self._lock:
                self._creations.end(self._clock())
                if failed:
                    self._creation_failures += 1
        except Exception as exc:  # noqa: BLE001
            _faults.report("sqlalchemy: pool accounting (creation)", exc)

    def _drop_lost_records(self, now_ns: int) -> None:
        # A record collected while counted (its pool gone with it) never gets
        # a checkin: it stops counting as in use, not as a release.
        lost = [key for key, ref in self._records.items() if ref() is None]
        for key in lost:
            del self._records[key]
            self._in_use.lose(now_ns)

    def _checked_out(self, record: Any) -> None:
        key = id(record)
        with self._lock:
            now_ns = self._clock()
            known = self._records.get(key)
            if known is not None:
                if known() is record:
                    return  # the checkout event again, on a reconnect retry
                # A lost record's id, reused by a new one.
                self._in_use.lose(now_ns)
            self._records[key] = weakref.ref(record)
            self._in_use.begin(now_ns)

    def _released(self, record: Any) -> None:
        key = id(record)
        with self._lock:
            known = self._records.get(key)
            if known is not None and known() is record:
                del self._records[key]
                self._in_use.end(self._clock())

    # -------------------------------------------------------------- reading

    def snapshot(self) -> PoolSnapshot:
        """Every figure, the counters read at one instant under the lock."""
        pool = self._current_pool() if self._current_pool is not None else None
        try:
            idle, overflow, size, max_overflow, timeout_ns = _gauges(pool)
        except Exception as exc:  # noqa: BLE001 - a pool of an unexpected kind
            _faults.report("sqlalchemy: could not read the pool's gauges", exc)
            idle = overflow = size = max_overflow = timeout_ns = None
        with self._lock:
            now_ns = self._clock()
            wall_ns = time.time_ns()
            self._drop_lost_records(now_ns)
            checkouts, waits, creations, in_use = (
                self._checkouts,
                self._waits,
                self._creations,
                self._in_use,
            )
            return PoolSnapshot(
                uptime_ns=now_ns - self._started_ns,
                in_use=in_use.under_way,
                idle=idle,
                overflow=overflow,
                waiting=waits.under_way,
                size=size,
                max_overflow=max_overflow,
                timeout_ns=timeout_ns,
                checkouts=checkouts.ended - self._checkout_failures,
                checkout_failures=self._checkout_failures,
                checkout_ns=checkouts.total_at(now_ns),
                waits=waits.ended,
                wait_ns=waits.total_at(now_ns),
                timeouts=self._timeouts,
                creations=creations.ended - self._creation_failures,
                creation_failures=self._creation_failures,
                creation_ns=creations.total_at(now_ns),
                invalidations=self._invalidations,
                soft_invalidations=self._soft_invalidations,
                closes=self._closes,
                releases=in_use.ended,
                in_use_ns=in_use.total_at(now_ns),
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
                self._checked_out(record)
            except Exception as exc:  # noqa: BLE001
                _faults.report("sqlalchemy: pool accounting (checkout event)", exc)
            # Also here, for connections the pool opened before the engine
            # was instrumented.
            self._take_connection(dbapi_connection)

        def on_release(dbapi_connection: Any, record: Any) -> None:
            if not self.active:
                return
            try:
                self._released(record)
            except Exception as exc:  # noqa: BLE001
                _faults.report("sqlalchemy: pool accounting (checkin event)", exc)

        def counter(name: str) -> Callable[..., None]:
            def on_event(*args: Any) -> None:
                if not self.active:
                    return
                try:
                    with self._lock:
                        setattr(self, name, getattr(self, name) + 1)
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
            ("invalidate", counter("_invalidations"), False),
            ("soft_invalidate", counter("_soft_invalidations"), False),
            ("close", counter("_closes"), False),
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
            Patch(pool, "connect", lambda patch: self._counted_connect(patch.original)),
            Patch(pool, "recreate", lambda patch: self._recreating(patch.original)),
        ]
        if callable(getattr(pool, "_invoke_creator", None)):
            patches.append(
                Patch(pool, "_invoke_creator", lambda p: self._counted_creator(p.original))
            )
        queue = getattr(pool, "_pool", None) if isinstance(pool, QueuePool) else None
        if queue is not None and callable(getattr(queue, "get", None)):
            patches.append(Patch(queue, "get", lambda patch: self._counted_get(patch.original)))
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

    def _counted_connect(self, original: Callable[..., Any]) -> Callable[..., Any]:
        began, ended = self._checkout_began, self._checkout_ended

        def connect(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            began()
            try:
                connection = original(*args, **kwargs)
            except BaseException as error:
                ended(error)
                raise
            ended(None)
            return connection

        return like(connect, original)

    def _counted_get(self, original: Callable[..., Any]) -> Callable[..., Any]:
        began, ended = self._wait_began, self._wait_ended
        empty = sa_queue.Empty

        def get(block: bool = True, timeout: float | None = None) -> Any:
            if not block or not self.active:
                return original(block, timeout)
            # First without blocking: only a call that has to block is a wait.
            try:
                return original(False)
            except empty:
                pass
            began()
            try:
                return original(True, timeout)
            finally:
                ended()

        return like(get, original)

    def _counted_creator(self, original: Callable[..., Any]) -> Callable[..., Any]:
        began, ended = self._creation_began, self._creation_ended

        def invoke_creator(*args: Any, **kwargs: Any) -> Any:
            if not self.active:
                return original(*args, **kwargs)
            began()
            try:
                connection = original(*args, **kwargs)
            except BaseException:
                ended(True)
                raise
            ended(False)
            return connection

        return like(invoke_creator, original)

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
