"""SQLAlchemy integration: count every statement an engine sends, and account its connection pool.

>>> import sqlalchemy, querymeter, querymeter.sqlalchemy
>>> engine = sqlalchemy.create_engine("sqlite://")
>>> querymeter.sqlalchemy.instrument(engine)
>>> with engine.connect() as connection:
...     _ = connection.exec_driver_sql("SELECT 1")
>>> querymeter.sqlalchemy.pool_snapshot(engine).checkouts
1

- :func:`instrument` / :func:`uninstrument`: one ``Engine`` or ``AsyncEngine``.
- :func:`instrument_all` / :func:`uninstrument_all`: every engine created from now on.
- :func:`pool_snapshot`: the engine's pool figures, a :class:`PoolSnapshot`;
  ``later - earlier`` is a :class:`PoolInterval` with the derived figures.

See docs/sqlalchemy.md.  Importing ``querymeter`` never imports SQLAlchemy;
importing this module does.
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any

try:
    import sqlalchemy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "querymeter.sqlalchemy needs SQLAlchemy 2.0 or later: pip install 'querymeter[sqlalchemy]'"
    ) from exc

from sqlalchemy.engine import Engine
from sqlalchemy.engine.base import OptionEngineMixin
from sqlalchemy.engine.interfaces import Dialect

from .. import _faults
from .._patching import Patch
from ..meter import Meter, meter_argument
from ._engine import Instrumentation, state_of
from ._pool_readings import PoolInterval, PoolSnapshot

__all__ = [
    "PoolInterval",
    "PoolSnapshot",
    "instrument",
    "instrument_all",
    "instrumented_engines",
    "instrumented_meter",
    "pool_snapshot",
    "uninstrument",
    "uninstrument_all",
]

if int(sqlalchemy.__version__.split(".")[0]) < 2:  # pragma: no cover
    raise ImportError(
        f"querymeter.sqlalchemy needs SQLAlchemy 2.0 or later, not {sqlalchemy.__version__}"
    )

# One lock for every change of what is instrumented: instrument, uninstrument
# and the engine_created hook may run in several threads at once.
_lock = threading.RLock()


def _renew_lock_in_child() -> None:
    # A thread of the parent may have held the lock at the fork: in the child
    # it would never be released.
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_lock_in_child)


def _engine_of(target: object) -> Any:
    """The Engine whose dialect and pool serve ``target`` (Engine, option engine, AsyncEngine)."""
    # An AsyncEngine can only exist once sqlalchemy.ext.asyncio is imported:
    # no need to import it (and greenlet) here.
    asyncio_module = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_module is not None and isinstance(target, asyncio_module.AsyncEngine):
        target = target.sync_engine
    if not isinstance(target, Engine):
        raise TypeError(
            "expected a SQLAlchemy Engine or AsyncEngine (as create_engine() or "
            f"create_async_engine() return), not {type(target).__name__}"
        )
    # Option engines share their parent's dialect and pool; listeners are kept
    # on the parent, which lives as long as the pool.
    engine: Any = target
    while isinstance(engine, OptionEngineMixin):
        engine = engine._proxied
    return engine


def instrument(engine: Any, *, meter: Meter | None = None) -> None:
    """Count every statement ``engine`` sends into ``meter``, and account its pool.

    ``engine`` is an ``Engine`` (option engines included) or an ``AsyncEngine``;
    the default meter unless ``meter`` is given.  Instrumenting again with the
    same meter does nothing, also through another engine that shares the
    dialect (an ``AsyncEngine`` and its ``sync_engine``, ``execution_options()``
    engines); with another meter it raises ``ValueError``: a statement would be
    counted twice.  Raises ``TypeError`` for anything that is not an engine,
    or a ``meter`` that is not a querymeter Meter.
    """
    counted_into = meter_argument(meter)
    root = _engine_of(engine)
    with _lock:
        current = state_of(root.dialect)
        if isinstance(current, Instrumentation):
            if current.meter is counted_into:
                return
            raise ValueError(
                "this engine is already instrumented with another meter; call "
                "querymeter.sqlalchemy.uninstrument(engine) first"
            )
        Instrumentation.check_lingering(root.dialect, counted_into)
        Instrumentation(root, counted_into).install(root)
        _engines.add(root)


def uninstrument(engine: Any) -> None:
    """Remove exactly what :func:`instrument` added; does nothing if the engine is not instrumented.

    The dialect's methods and the pool's get their original attributes back,
    the pool event listeners are removed, and connections whose counting was
    taken over from ``querymeter.dbapi`` count through it again.  A wrapper
    that another tool has wrapped since stays in that tool's chain (see
    docs/sqlalchemy.md).
    """
    root = _engine_of(engine)
    with _lock:
        current = state_of(root.dialect)
        if isinstance(current, Instrumentation):
            current.uninstall()


def instrumented_meter(engine: Any) -> Meter | None:
    """The meter ``engine`` counts into, or None if it is not instrumented."""
    current = state_of(_engine_of(engine).dialect)
    return current.meter if isinstance(current, Instrumentation) else None


def pool_snapshot(engine: Any) -> PoolSnapshot:
    """The instrumented engine's pool figures, read at one instant.

    Raises ``LookupError`` if the engine is not instrumented (there is nothing
    to read), ``TypeError`` if it is not an engine.
    """
    current = state_of(_engine_of(engine).dialect)
    if not isinstance(current, Instrumentation):
        raise LookupError(
            "this engine is not instrumented, so its pool is not accounted: call "
            "querymeter.sqlalchemy.instrument(engine) first"
        )
    return current.pool_snapshot()


def instrumented_engines() -> list[Any]:
    """Every engine instrumented now (the root engine of each; weakly held)."""
    with _lock:
        return [
            engine
            for engine in list(_engines)
            if isinstance(state_of(engine.dialect), Instrumentation)
        ]


# Engines instrumented, weakly: for querymeter.uninstrument_all().
_engines: weakref.WeakSet[Any] = weakref.WeakSet()


# ------------------------------------------------------------- every engine


class _EveryEngine:
    """The ``Dialect.engine_created`` hook of :func:`instrument_all`, while it is on."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.active = True
        own = vars(Dialect)["engine_created"]

        def engine_created(cls: type, engine: Any) -> None:
            # The original first: a dialect-wrapping class may set the engine
            # up there.  Through the descriptor, whatever kind of callable
            # another tool may have put there before us.
            own.__get__(None, cls)(engine)
            if not self.active:
                return
            try:
                # Called twice for some async dialects (once per dialect
                # class): the second call finds the engine instrumented.
                instrument(engine, meter=self.meter)
            except Exception as exc:  # noqa: BLE001 - never fail create_engine()
                _faults.report("sqlalchemy: could not instrument a new engine", exc)

        self.patch = Patch(Dialect, "engine_created", lambda _: classmethod(engine_created))


_every_engine: _EveryEngine | None = None


def instrument_all(*, meter: Meter | None = None) -> None:
    """Instrument every engine created from now on (``create_engine``,
    ``engine_from_config``, ``create_async_engine``) with ``meter``.

    Hooks ``Dialect.engine_created``, which SQLAlchemy calls for every new
    engine before its first connection, so the engine's initialize queries are
    counted too.  Engines that exist already are not affected: see
    :func:`instrument`.  Again with the same meter: nothing; with another
    meter: ``ValueError``.
    """
    global _every_engine
    counted_into = meter_argument(meter)
    with _lock:
        if _every_engine is not None:
            if _every_engine.meter is counted_into:
                return
            raise ValueError(
                "querymeter.sqlalchemy.instrument_all() is already on with another "
                "meter; call querymeter.sqlalchemy.uninstrument_all() first"
            )
        every_engine = _EveryEngine(counted_into)
        every_engine.patch.install()
        _every_engine = every_engine


def uninstrument_all() -> None:
    """Stop instrumenting new engines; puts ``Dialect.engine_created`` back exactly.

    Engines instrumented while it was on stay instrumented, until
    :func:`uninstrument`.  If another tool wrapped ``engine_created`` since,
    querymeter's hook stays in its chain as a pass-through.
    """
    global _every_engine
    with _lock:
        every_engine, _every_engine = _every_engine, None
        if every_engine is not None:
            every_engine.active = False
            every_engine.patch.remove()
