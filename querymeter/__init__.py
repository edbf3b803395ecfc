"""querymeter: count every database query with five exact counters, and read them as laws.

>>> import querymeter
>>> meter = querymeter.Meter()
>>> with meter.track():
...     pass
>>> meter.snapshot().queries
1
"""

from __future__ import annotations

from ._faults import counts as faults
from .autoinstrument import autoinstrument
from .core import IMPLEMENTATION
from .markers import Marker, mark
from .meter import Meter, default_meter, snapshot
from .readings import Interval, Snapshot
from .recorder import FlightRecorder
from .scopes import Scope, current_scope, scope
from .sessions import Report, Session, overhead, profile
from .shared import SharedMeter, SharedMeterError
from .statements import (
    QuerySample,
    StatementsInterval,
    StatementsSnapshot,
    StatementStats,
    StatementTable,
    fingerprint,
    statement_id,
)
from .switch import disable, enable, is_enabled, uninstrument_all
from .trends import Trend, trend
from .triage import Health, health

__all__ = [
    "IMPLEMENTATION",
    "FlightRecorder",
    "Health",
    "Interval",
    "Marker",
    "Meter",
    "QuerySample",
    "Report",
    "Scope",
    "Session",
    "SharedMeter",
    "SharedMeterError",
    "Snapshot",
    "StatementStats",
    "StatementTable",
    "StatementsInterval",
    "StatementsSnapshot",
    "Trend",
    "autoinstrument",
    "current_scope",
    "default_meter",
    "disable",
    "enable",
    "faults",
    "fingerprint",
    "health",
    "is_enabled",
    "mark",
    "overhead",
    "profile",
    "scope",
    "snapshot",
    "statement_id",
    "trend",
    "uninstrument_all",
]

__version__ = "0.1.0.dev0"
