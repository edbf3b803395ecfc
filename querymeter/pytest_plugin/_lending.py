"""Lend the drivers and SQLAlchemy to one test's meter, and give them back exactly as they were.

For the test's duration every supported DB-API driver already imported is
instrumented with the test's meter (one instrumented before with another
meter is taken over), and every SQLAlchemy engine created meanwhile is too
(through ``querymeter.sqlalchemy.instrument_all``).  Afterwards each driver
is instrumented as before, or not at all; engines created in the test are
uninstrumented (or given to the meter that ``instrument_all`` had before);
connections opened in the test and still open stop counting.
"""

from __future__ import annotations

import sys
from typing import Any

from ..meter import Meter

__all__ = ["Lending"]


class Lending:
    """What one test's meter has taken over, to give back (``start()``, then ``stop()``)."""

    __slots__ = ("_drivers", "_every_engine_before", "_sqlalchemy", "meter")

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        # (driver module, the meter it counted into before, or None)
        self._drivers: list[tuple[Any, Meter | None]] = []
        self._sqlalchemy: Any = None
        self._every_engine_before: Meter | None = None

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
        if "sqlalchemy" in sys.modules:
            self._start_sqlalchemy()

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

    def stop(self) -> None:
        """Give everything back as it was before ``start()``; raise the first problem after all."""
        problems: list[BaseException] = []
        hooks, self._sqlalchemy = self._sqlalchemy, None
        if hooks is not None:
            # Engines first: uninstrumenting one gives its connections back to
            # querymeter.dbapi, whose turn comes next.
            _attempt(problems, hooks.uninstrument_all)
            before = self._every_engine_before
            for engine in _attempt(problems, hooks.instrumented_engines) or []:
                if hooks.instrumented_meter(engine) is self.meter:
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
            for connection in dbapi.counting_connections():
                if dbapi.meter_of(connection) is self.meter:
                    _attempt(problems, dbapi.unwrap_connection, connection)
        if problems:
            raise problems[0]


def _attempt(problems: list[BaseException], step: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the other steps still run; raised after them
        problems.append(exc)
        return None
