"""Handing a pooled connection's counting over from querymeter.dbapi to the engine, and back.

When the driver is instrumented with ``querymeter.dbapi`` for the same meter
as the engine, each statement would be counted twice: once by the dialect's
``do_execute`` and once by the counted cursor below it.  The engine counts it
(it sees every statement that the dialect sends, pings included), so the
DB-API counting of that connection stops when the pool opens or hands it
out, and starts again when the engine is uninstrumented.  A connection that
counts into another meter is left alone: the user asked for two views.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

from sqlalchemy.engine.interfaces import AdaptedConnection

from .. import _faults
from ..meter import Meter

__all__ = ["Handover"]


class Handover:
    """The connections whose counting one instrumented engine took over."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        # By id, each with a weak reference: a driver connection may define
        # __eq__, and must not be kept open by us.
        self._taken: dict[int, weakref.ref[Any]] = {}

    def take(self, dbapi_connection: Any) -> None:
        """Stop the DB-API counting of this connection if it counts into our meter."""
        # querymeter.dbapi not imported: no connection can count through it.
        dbapi = sys.modules.get("querymeter.dbapi")
        if dbapi is None:
            return
        try:
            connection = dbapi_connection
            if isinstance(connection, AdaptedConnection):
                # An asyncio adapter: querymeter.dbapi counts its driver's connection.
                connection = connection.driver_connection
            if dbapi.meter_of(connection) is self.meter:
                dbapi.unwrap_connection(connection)
                self._remember(connection)
        except Exception as exc:  # noqa: BLE001 - ours, never the application's
            _faults.report(
                "sqlalchemy: could not hand a connection over from querymeter.dbapi", exc
            )

    def _remember(self, connection: Any) -> None:
        key = id(connection)
        taken = self._taken

        def forget(ref: weakref.ref[Any], key: int = key) -> None:
            if taken.get(key) is ref:
                del taken[key]

        taken[key] = weakref.ref(connection, forget)

    def give_back(self) -> None:
        """Let querymeter.dbapi count again every connection taken over that is still open."""
        dbapi = sys.modules.get("querymeter.dbapi")
        taken, self._taken = self._taken, {}
        if dbapi is None:
            return
        for ref in taken.values():
            connection = ref()
            if connection is None or dbapi.meter_of(connection) is not None:
                continue
            try:
                dbapi.wrap_connection(connection, meter=self.meter)
            except Exception as exc:  # noqa: BLE001
                _faults.report(
                    "sqlalchemy: could not give a connection back to querymeter.dbapi", exc
                )
