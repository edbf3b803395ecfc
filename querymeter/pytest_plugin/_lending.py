"""Lend the drivers and SQLAlchemy to one test's meter, and give them back exactly as they were.

For the test's duration every supported DB-API driver already imported is
instrumented with the test's meter (one instrumented before with another
meter is taken over), every SQLAlchemy engine created meanwhile is too
(through ``querymeter.sqlalchemy.instrument_all``), and so is every engine
that exists already (the application's, made at import) and every open
connection that counts (a pool's, opened by an earlier test): otherwise a
test that reuses them would count nothing, and its budget would pass
unchecked.  Afterwards each driver, engine and connection counts as before
(or not at all); engines created in the test are uninstrumented (or given to
the meter that ``instrument_all`` had before); connections opened in the
test and still open (in a pool) count into the test's meter until the next
test takes them.
"""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

from ..meter import Meter

__all__ = ["Lending", "new_session"]


class Lending:
    """What one test's meter has taken over, to give back (``start()``, then ``stop()``)."""

    __slots__ = (
        "_connections",
        "_drivers",
        "_engines",
        "_every_engine_before",
        "_sqlalchemy",
        "meter",
    )

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        # (driver module, the meter it counted into before, or None)
        self._drivers: list[tuple[Any, Meter | None]] = []
        self._sqlalchemy: Any = None
        self._every_engine_before: Meter | None = None
        # Engines and connections that existed before the test, each with the
        # meter it counted into then (None: none).
        self._engines: list[tuple[weakref.ref[Any], Meter | None]] = []
        self._connections: list[tuple[weakref.ref[Any], Meter | None]] = []

    def start(self) -> None:
        """Count the drivers imported so far, and engines created from now on, into the meter."""
        # Imported here, not with the plugin: a run that meters no test loads no hook.
        from .. import dbapi

        for name in dbapi.SUPPORTED_DRIVERS:
            module = sys.modules.get(name)
            # MySQLdb may be PyMySQL installed under that name: counted as pymysql.
            if module is None or getattr(module, "__name__", None) != name:
                continue
            before = dbapi.instrumented_meter(module)
            if before is self.meter:
                continue
            if before is not None:
                dbapi.uninstrument(module)
            self._drivers.append((module, before))
            dbapi.instrument(module, meter=self.meter)
        self._lend_connections()
        if "sqlalchemy" in sys.modules:
            self._start_sqlalchemy()

    def _lend_connections(self) -> None:
        """Every open connection that counts (into the application's meter, or an earlier
        test's) counts into this test's meter until ``stop()``."""
        connections = sys.modules.get("querymeter.dbapi._connections")
        if connections is None:
            return  # querymeter.dbapi never imported: no connection counts
        for connection in connections.counting_connections():
            before = connections.connection_meter(connection)
            if before is None or before is self.meter:
                continue
            self._connections.append((weakref.ref(connection), before))
            connections.set_connection_meter(connection, self.meter)

    def _start_sqlalchemy(self) -> None:
        try:
            from .. import sqlalchemy as hooks
        except ImportError:
            return  # SQLAlchemy 1.x: querymeter does not count it
        # instrument_all() on with another meter (the application's): taken over.
        every_engine = getattr(hooks, "_every_engine", None)
        self._every_engine_before = None if every_engine is None else every_engine.meter
        if self._every_engine_before is not None:
            hooks.uninstrument_all()
        self._sqlalchemy = hooks
        hooks.instrument_all(meter=self.meter)
        for engine in _engines_before():
            before = hooks.instrumented_meter(engine)
            if before is self.meter:
                continue
            if before is not None:
                hooks.uninstrument(engine)
            self._engines.append((weakref.ref(engine), before))
            hooks.instrument(engine, meter=self.meter)

    def stop(self) -> None:
        """Give everything back as it was before ``start()``; raise the first problem after all."""
        problems: list[BaseException] = []
        hooks, self._sqlalchemy = self._sqlalchemy, None
        if hooks is not None:
            # Engines first: uninstrumenting one gives its connections back to
            # querymeter.dbapi, whose turn comes next.
            _attempt(problems, hooks.uninstrument_all)
            lent, self._engines = self._engines, []
            for ref, earlier in lent:
                engine = ref()
                if engine is not None and hooks.instrumented_meter(engine) is self.meter:
                    _attempt(problems, hooks.uninstrument, engine)
                    if earlier is not None:
                        _attempt(problems, hooks.instrument, engine, meter=earlier)
            before = self._every_engine_before
            for engine in _attempt(problems, hooks.instrumented_engines) or []:
                if hooks.instrumented_meter(engine) is self.meter:
                    _known_engines.add(engine)  # lent to the tests that follow
                    _attempt(problems, hooks.uninstrument, engine)
                    if before is not None:
                        # Created in the test: the application's instrument_all
                        # would have counted it.
                        _attempt(problems, hooks.instrument, engine, meter=before)
            if before is not None:
                _attempt(problems, hooks.instrument_all, meter=before)
        if self._drivers or "querymeter.dbapi" in sys.modules:
            from .. import dbapi

            drivers, self._drivers = self._drivers, []
            for module, before in reversed(drivers):
                _attempt(problems, dbapi.uninstrument, module)
                if before is not None:
                    _attempt(problems, dbapi.instrument, module, meter=before)
            from ..dbapi import _connections as connections

            lent_connections, self._connections = self._connections, []
            for ref, earlier in lent_connections:
                connection = ref()
                if connection is not None and dbapi.meter_of(connection) is self.meter:
                    _attempt(problems, connections.set_connection_meter, connection, earlier)
        if problems:
            raise problems[0]


# Engines that existed when a test first lent SQLAlchemy (made at import, by
# conftest, by a session fixture), found once by a scan of the heap (an
# engine keeps no registry), and every engine a test saw created since.
_known_engines: weakref.WeakSet[Any] = weakref.WeakSet()
_scanned = False


def new_session() -> None:
    """Scan the heap for engines again at the next lending: a new pytest session in this
    process (pytester's in-process runs) imports new test modules, with new engines."""
    global _scanned
    _scanned = False
    _known_engines.clear()


def _engines_before() -> list[Any]:
    """The SQLAlchemy engines alive now that this module knows of: on the first call
    every one in the heap, later those found then and those created in tests since."""
    global _scanned
    from sqlalchemy.engine import Engine
    from sqlalchemy.engine.base import OptionEngineMixin

    if not _scanned:
        _scanned = True
        for candidate in gc.get_objects():
            # Option engines share their parent's pool and listeners: the parent is lent.
            if isinstance(candidate, Engine) and not isinstance(candidate, OptionEngineMixin):
                _known_engines.add(candidate)
    hooks = sys.modules.get("querymeter.sqlalchemy")
    if hooks is not None:
        for engine in hooks.instrumented_engines():
            _known_engines.add(engine)
    return list(_known_engines)


def _attempt(problems: list[BaseException], step: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the other steps still run; raised after them
        problems.append(exc)
        return None
