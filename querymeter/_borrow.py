"""Borrowing a database connection for querymeter's own statements, counted by no meter.

An engine's pool lends a connection only when one is free now (never a new
one past the pool's limit, never a wait), for the shortest time; while
borrowed, the connection counts into no meter, so querymeter's own EXPLAIN or
health check neither waits behind the application nor shows in its figures.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["borrow_from_engine", "first_line", "pool_refusal", "quietly", "uncounted"]


@contextmanager
def borrow_from_engine(engine: Any) -> Iterator[Any]:
    """A DB-API connection of the engine's pool, checked out only if one is free now.

    The connection comes from the pool, not from a new connect: the pool's
    limits hold (the explain never opens a connection the pool would not),
    its figures stay true (a checkout is a checkout), and the connection is
    set up as the application's are (connect listeners, search_path).  The
    statements go to the driver's connection, below the dialect's counted
    methods.  With ``pool_pre_ping`` the checkout's ping is the pool's own
    work, counted as every checkout's ping is.
    """
    refusal = pool_refusal(engine.pool)
    if refusal is not None:
        yield refusal
        return
    try:
        fairy = engine.raw_connection()
    except Exception as exc:  # noqa: BLE001 - the server's or the pool's: a note
        yield f"could not borrow a connection from the engine: {first_line(exc)}"
        return
    try:
        with uncounted(fairy.driver_connection) as connection:
            yield connection
    finally:
        # Back to the pool, which resets it (a rollback) as it does every connection.
        quietly(fairy.close)


def pool_refusal(pool: Any) -> str | None:
    """Why no connection of this pool can be borrowed without waiting, or None."""
    from sqlalchemy import pool as sa_pool

    if isinstance(pool, sa_pool.QueuePool):
        # Read without the pool's lock, as QueuePool.status() reads them: a
        # checkout racing ours for the last free connection can still make
        # ours wait, at most the pool's own timeout.
        max_overflow = int(getattr(pool, "_max_overflow", 0))
        if pool.checkedin() > 0 or max_overflow < 0 or pool.overflow() < max_overflow:
            return None
        return (
            f"no connection free in the engine's pool (size {pool.size()}, "
            f"{pool.checkedout()} checked out, no overflow left)"
        )
    if isinstance(pool, sa_pool.NullPool):
        return None  # a new connection per checkout, nothing to wait for
    if isinstance(pool, sa_pool.SingletonThreadPool):
        # One connection per thread: this thread's may be in the application's hands.
        current = getattr(getattr(pool, "_fairy", None), "current", None)
        if current is None or current() is None:
            return None
        return "this thread's connection of the engine's pool is in use"
    return f"the engine's {type(pool).__name__} may share its connection with the application"


@contextmanager
def uncounted(connection: Any) -> Iterator[Any]:
    """The connection with no meter in the DB-API side table while in use, restored after.

    A counted DB-API connection finds its meter in querymeter.dbapi's side
    table at each cursor; taking the entry out for the time of the explain
    makes the cursors opened meanwhile plain driver cursors.  The connection
    is ours alone meanwhile (borrowed, opened, or handed over by the caller),
    so no statement of the application's goes uncounted.
    """
    connections = sys.modules.get("querymeter.dbapi._connections")
    meter = None if connections is None else connections.connection_meter(connection)
    if meter is not None:
        connections.forget_connection(connection)  # type: ignore[union-attr]
    try:
        yield connection
    finally:
        if meter is not None:
            connections.set_connection_meter(connection, meter)  # type: ignore[union-attr]


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def quietly(action: Callable[[], Any]) -> None:
    """Run a clean-up step whose failure must not hide the outcome."""
    # A clean-up of ours failing (a closed connection): the plan or note stands.
    with contextlib.suppress(Exception):
        action()
