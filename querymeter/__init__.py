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
from .core import IMPLEMENTATION
from .meter import Meter, default_meter, snapshot
from .readings import Interval, Snapshot
from .statements import (
    QuerySample,
    StatementsInterval,
    StatementsSnapshot,
    StatementStats,
    StatementTable,
    fingerprint,
    statement_id,
)

__all__ = [
    "IMPLEMENTATION",
    "Interval",
    "Meter",
    "QuerySample",
    "Snapshot",
    "StatementStats",
    "StatementTable",
    "StatementsInterval",
    "StatementsSnapshot",
    "default_meter",
    "faults",
    "fingerprint",
    "snapshot",
    "statement_id",
]

__version__ = "0.1.0.dev0"
