"""Post-import hooks: each supported driver and SQLAlchemy instrumented as the program imports it.

``autoinstrument()`` registers one wrapt post-import hook per module it
watches (``wrapt.register_post_import_hook``, what ``wrapt.when_imported``
decorates with), once per process and name: a hook fires when its module
has been imported, and for a module imported already the work is done at the
call.  Whatever the import order, the driver is instrumented before the
application can open a connection through it.  A hook does its work only
while autoinstrument is on, so ``undo()`` (and ``querymeter.uninstrument_all()``)
turns every pending hook into nothing: wrapt has no way to take one back.

Nothing here imports wrapt, a driver or a hook package before it is needed:
``import querymeter`` stays light.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import types
import weakref
from collections.abc import Iterable
from typing import Any

from .. import _faults
from ..meter import Meter, meter_argument

__all__ = ["SQLALCHEMY", "TARGETS", "AutoInstrument"]

#: The name that stands for SQLAlchemy (every engine) among the drivers.
SQLALCHEMY = "sqlalchemy"
#: What autoinstrument watches: querymeter.dbapi's drivers (its registry's
#: names, without importing it) and SQLAlchemy.
TARGETS = (
    "sqlite3",
    "psycopg",
    "psycopg2",
    "pymysql",
    "MySQLdb",
    "aiosqlite",
    "asyncpg",
    SQLALCHEMY,
)

_lock = threading.RLock()
# Names whose wrapt hook is registered and has not fired yet: one each, ever.
_pending: set[str] = set()
# What a hook tells when it fires: every AutoInstrument (there is one, unless
# someone makes another), each doing its work only while it is on.
_instances: weakref.WeakSet[AutoInstrument] = weakref.WeakSet()


def _renew_lock_in_child() -> None:
    # A thread of the parent may have held the lock at the fork: in the child
    # it would never be released.
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_lock_in_child)


class _On:
    """What autoinstrument does while it is on, and what it put in (to take it out)."""

    def __init__(self, meter: Meter, targets: frozenset[str]) -> None:
        self.meter = meter
        self.targets = targets
        # Driver modules that autoinstrument instrumented (not those it found so).
        self.drivers: set[str] = set()
        self.every_engine = False
        # Engines that counted into the meter before autoinstrument: the user's.
        self.engines_before: weakref.WeakSet[Any] = weakref.WeakSet()


class AutoInstrument:
    """``querymeter.autoinstrument``: call it to instrument on import; ``.undo()`` to stop.

    The one instance is ``querymeter.autoinstrument``.
    """

    __slots__ = ("__weakref__", "_on")

    def __init__(self) -> None:
        self._on: _On | None = None
        _instances.add(self)

    def __repr__(self) -> str:
        on = self._on
        if on is None:
            return "<querymeter.autoinstrument: off>"
        return f"<querymeter.autoinstrument: on, {', '.join(sorted(on.targets))}>"

    # ------------------------------------------------------------- the API

    def __call__(self, meter: Meter | None = None, *, drivers: Iterable[str] | None = None) -> None:
        """Instrument every supported driver and SQLAlchemy into ``meter`` when the
        application imports it, and those imported already at once.

        ``drivers`` restricts it to some names: ``"sqlite3"``, ``"psycopg"``,
        ``"psycopg2"``, ``"pymysql"``, ``"MySQLdb"``, ``"aiosqlite"``,
        ``"asyncpg"`` and ``"sqlalchemy"`` (every engine: those created from now
        on, and those that exist).  Again with the same meter: nothing, or the
        names not watched yet are added; with another meter: ``ValueError``
        (call ``querymeter.autoinstrument.undo()`` first).  A driver imported
        already and instrumented with another meter is a ``ValueError`` too,
        before anything changes.  Connections opened before are not counted
        (see ``querymeter.dbapi.wrap_connection``).
        """
        counted_into = meter_argument(meter)
        targets = _targets(drivers)
        _wrapt()  # before anything changes: a clear ImportError without it
        with _lock:
            on = self._on
            if on is not None and on.meter is not counted_into:
                raise ValueError(
                    "querymeter.autoinstrument is already on with another meter; "
                    "call querymeter.autoinstrument.undo() first"
                )
            _check_imported(targets, counted_into)
            if on is None:
                on = _On(counted_into, frozenset(targets))
                on.engines_before.update(_engines_counting_into(counted_into))
                self._on = on
            else:
                on.targets = on.targets | targets
        # The wrapt hooks outside our lock: one that fires at once (the module
        # came in meanwhile) takes it again.
        for name in sorted(targets):
            module = sys.modules.get(name)
            if module is not None:
                self._imported(name, module, existing=True)
            else:
                _watch(name)

    def undo(self) -> None:
        """Stop instrumenting on import, and take out what autoinstrument put in.

        The drivers it instrumented are uninstrumented, SQLAlchemy's
        ``instrument_all`` stops if it turned it on, and the engines that began
        counting into the meter since it was called are uninstrumented.
        Connections opened meanwhile keep counting until closed (as after
        ``querymeter.dbapi.uninstrument``).  Does nothing when off.
        """
        with _lock:
            on, self._on = self._on, None
        if on is None:
            return
        if SQLALCHEMY in on.targets and "querymeter.sqlalchemy" in sys.modules:
            _step("stop instrumenting SQLAlchemy engines", _undo_engines, on)
        dbapi = sys.modules.get("querymeter.dbapi")
        if dbapi is None:
            return
        for name in sorted(on.drivers):
            module = sys.modules.get(name)
            if module is None or getattr(module, "__name__", None) != name:
                continue
            if dbapi.instrumented_meter(module) is on.meter:
                _step(f"uninstrument {name}", dbapi.uninstrument, module)

    @property
    def meter(self) -> Meter | None:
        """The meter autoinstrument counts into while on, else None."""
        on = self._on
        return None if on is None else on.meter

    @property
    def drivers(self) -> frozenset[str]:
        """The names watched while on (empty when off)."""
        on = self._on
        return frozenset() if on is None else on.targets

    # ------------------------------------------------------------ the hook

    def _imported(self, name: str, module: types.ModuleType, *, existing: bool = False) -> None:
        """Instrument ``module`` (imported as ``name``) if it is watched; never raises."""
        try:
            on = self._on
            if on is None or name not in on.targets:
                return
            # MySQLdb may be PyMySQL installed under that name: the pymysql hook counts it.
            if getattr(module, "__name__", None) != name:
                return
            if name == SQLALCHEMY:
                _instrument_sqlalchemy(on, existing=existing)
            else:
                _instrument_driver(on, name, module)
        except Exception as exc:  # noqa: BLE001 - never fail the application's import
            _faults.report(f"autoinstrument: could not instrument {name}", exc)


# ---------------------------------------------------------------- helpers


def _targets(drivers: Iterable[str] | None) -> set[str]:
    if drivers is None:
        return set(TARGETS)
    if isinstance(drivers, str | bytes):
        raise TypeError(f"drivers must be a list of names, like [{drivers!r}], not a string")
    try:
        names = list(drivers)
    except TypeError:
        raise TypeError(f"drivers must be a list of names, not {type(drivers).__name__}") from None
    if not names:
        raise ValueError("drivers names no driver; leave it out to instrument every one")
    for name in names:
        if name not in TARGETS:
            raise ValueError(
                f"querymeter.autoinstrument does not know the driver {name!r}; "
                f"known: {', '.join(TARGETS)}"
            )
    return set(names)


def _check_imported(targets: set[str], meter: Meter) -> None:
    """Refuse, before changing anything, what would count a statement into two meters."""
    dbapi = sys.modules.get("querymeter.dbapi")
    if dbapi is not None:
        for module in dbapi.instrumented_drivers():
            current = dbapi.instrumented_meter(module)
            if module.__name__ in targets and current is not None and current is not meter:
                raise ValueError(
                    f"{module.__name__} is already instrumented with another meter; call "
                    f"querymeter.dbapi.uninstrument({module.__name__}) first"
                )
    qs = sys.modules.get("querymeter.sqlalchemy")
    if SQLALCHEMY in targets and qs is not None:
        every = qs._every_engine
        if every is not None and every.meter is not meter:
            raise ValueError(
                "querymeter.sqlalchemy.instrument_all() is on with another meter; call "
                "querymeter.sqlalchemy.uninstrument_all() first"
            )


def _wrapt() -> Any:
    """wrapt, imported here and not at import: the core needs no dependency."""
    try:
        import wrapt
    except ImportError as exc:
        raise ImportError(
            "querymeter.autoinstrument needs wrapt (its post-import hooks): "
            "pip install 'querymeter[auto]'"
        ) from exc
    return wrapt


def _watch(name: str) -> None:
    """Register the wrapt hook of ``name`` unless one is pending already."""
    with _lock:
        if name in _pending:
            return
        _pending.add(name)

    def imported(module: types.ModuleType) -> None:
        with _lock:
            _pending.discard(name)
            instances = list(_instances)
        for auto in instances:
            auto._imported(name, module)

    try:
        _wrapt().register_post_import_hook(imported, name)
    except Exception:
        with _lock:
            _pending.discard(name)
        raise


def _instrument_driver(on: _On, name: str, module: types.ModuleType) -> None:
    from .. import dbapi

    if dbapi.instrumented_meter(module) is None:
        dbapi.instrument(module, meter=on.meter)
        with _lock:
            on.drivers.add(name)
    else:
        # Instrumented already: with our meter, nothing to do (and nothing to
        # undo); with another, the statements of its connections count there.
        dbapi.instrument(module, meter=on.meter)


def _instrument_sqlalchemy(on: _On, *, existing: bool) -> None:
    from .. import sqlalchemy as qs

    if qs._every_engine is None:
        qs.instrument_all(meter=on.meter)
        on.every_engine = True
    else:
        qs.instrument_all(meter=on.meter)  # ValueError with another meter: reported
    if not existing:
        return  # imported just now: no engine can exist yet
    from sqlalchemy.engine import Engine

    # SQLAlchemy keeps no list of its engines: the collector knows every one.
    for engine in [obj for obj in gc.get_objects() if isinstance(obj, Engine)]:
        if qs.instrumented_meter(engine) is not None:
            continue  # counting already, into this meter or (the user's choice) another
        try:
            qs.instrument(engine, meter=on.meter)
        except Exception as exc:  # noqa: BLE001 - one engine: the others still go
            _faults.report("autoinstrument: could not instrument an existing engine", exc)


def _engines_counting_into(meter: Meter) -> list[Any]:
    qs = sys.modules.get("querymeter.sqlalchemy")
    if qs is None:
        return []
    return [e for e in qs.instrumented_engines() if qs.instrumented_meter(e) is meter]


def _undo_engines(on: _On) -> None:
    qs = sys.modules["querymeter.sqlalchemy"]
    every = qs._every_engine
    if on.every_engine and every is not None and every.meter is on.meter:
        qs.uninstrument_all()
    for engine in _engines_counting_into(on.meter):
        if engine not in on.engines_before:
            qs.uninstrument(engine)


def _step(what: str, step: Any, *args: Any) -> None:
    try:
        step(*args)
    except Exception as exc:  # noqa: BLE001 - ours: the rest is still taken out
        _faults.report(f"autoinstrument: could not {what}", exc)
