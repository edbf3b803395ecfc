"""The kill switch: stop all counting at once, resume cleanly, or take every hook out.

``querymeter.disable()`` turns every hook into a pass-through: no query
begins, no counter moves, no statement or sample is recorded, and running
profiling sessions end.  A query that began before keeps its end, so
``querymeter.enable()`` resumes with nothing left counted in flight or half
counted.  ``QUERYMETER_DISABLE=1`` in the environment starts the process
disabled.  ``querymeter.uninstrument_all()`` removes every hook querymeter
installed (driver modules, open connections, SQLAlchemy engines).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _faults, core

__all__ = ["disable", "enable", "is_enabled", "on_disable", "uninstrument_all"]

# What disable() ends (running profiling sessions), weakly: their _on_disable().
_on_disable: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def disable() -> None:
    """Stop counting everywhere, at once; running profiling sessions end."""
    core.set_enabled(False)
    _show_counting_methods(False)
    with _lock:
        stoppers = list(_on_disable)
    for stopper in stoppers:
        try:
            stopper._on_disable()
        except Exception as exc:  # noqa: BLE001 - ours: the switch itself must not fail
            _faults.report("disable: could not end a profiling session", exc)


def enable() -> None:
    """Count again; queries that begin from now on are counted."""
    core.set_enabled(True)
    _show_counting_methods(True)


def _show_counting_methods(enabled: bool) -> None:
    # querymeter.dbapi's counted classes (sqlite3, psycopg2) drop their wrappers
    # while disabled; never imported, it has none.
    classes = sys.modules.get("querymeter.dbapi._classes")
    if classes is not None:
        try:
            classes.set_counting(enabled)
        except Exception as exc:  # noqa: BLE001 - ours: the core's switch holds anyway
            _faults.report("the kill switch: could not switch the counted classes", exc)


def is_enabled() -> bool:
    """Whether querymeter counts (the kill switch is on)."""
    return core.enabled()


def on_disable(stoppable: Any) -> None:
    """Have ``stoppable._on_disable()`` called at the next :func:`disable` (weakly held)."""
    with _lock:
        _on_disable.add(stoppable)


def uninstrument_all() -> None:
    """Remove every hook querymeter installed, restoring the drivers' own classes and functions.

    Every instrumented DB-API driver is uninstrumented and every open counting
    connection unwrapped; SQLAlchemy's ``instrument_all`` stops and every
    instrumented engine is uninstrumented; ``querymeter.autoinstrument`` stops
    instrumenting drivers as they are imported.  Cursors opened before keep counting
    until closed (as after ``unwrap_connection``); :func:`disable` stops them too.
    """
    # A hook package never imported has nothing of ours to take out (and
    # importing querymeter loads neither).
    # Engines first: uninstrumenting one gives its connections back to
    # querymeter.dbapi, whose turn comes next.
    steps: list[tuple[str, Callable[[], None]]] = []
    # First, so that no driver imported from now on is instrumented again.
    if "querymeter.autoinstrument" in sys.modules:
        steps.append(("post-import hooks", sys.modules["querymeter.autoinstrument"].undo))
    if "querymeter.sqlalchemy" in sys.modules:
        steps.append(("SQLAlchemy engines", _uninstrument_engines))
    if "querymeter.dbapi" in sys.modules:
        steps.append(("DB-API drivers", _uninstrument_drivers))
    for what, step in steps:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - ours: the rest is still taken out
            _faults.report(f"uninstrument_all: could not uninstrument the {what}", exc)


def _uninstrument_drivers() -> None:
    dbapi = sys.modules["querymeter.dbapi"]
    for module in dbapi.instrumented_drivers():
        dbapi.uninstrument(module)
    for connection in dbapi.counting_connections():
        try:
            dbapi.unwrap_connection(connection)
        except Exception as exc:  # noqa: BLE001 - one connection: the others still go
            _faults.report("uninstrument_all: could not unwrap a connection", exc)


def _uninstrument_engines() -> None:
    sqlalchemy = sys.modules["querymeter.sqlalchemy"]
    sqlalchemy.uninstrument_all()
    for engine in sqlalchemy.instrumented_engines():
        sqlalchemy.uninstrument(engine)
