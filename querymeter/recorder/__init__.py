"""The flight recorder: the last minutes at full detail and the last day by minute, in memory.

``querymeter.FlightRecorder(meter).start()`` reads the meter (and its
statement table) on a daemon thread into fixed-size rings, one per
resolution; ``timeline()``, ``statement_timeline()``, ``markers()`` and
``dump()`` read them back.  See docs/incident-response.md.
"""

from ._alerts import Alert, AlertRule
from ._baseline import Anomaly, Band, Baseline, MetricBaseline, StatementBaseline
from ._dump import RecorderDump, load_dump
from ._forecast import Forecast, Horizon
from ._recorder import (
    DEFAULT_RESOLUTIONS,
    DEFAULT_STATEMENTS_PER_STEP,
    FlightRecorder,
    StepStatements,
    running_recorder,
)
from ._trends import NotEnoughHistory, StatementTrend

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "DEFAULT_STATEMENTS_PER_STEP",
    "Alert",
    "AlertRule",
    "Anomaly",
    "Band",
    "Baseline",
    "FlightRecorder",
    "Forecast",
    "Horizon",
    "MetricBaseline",
    "NotEnoughHistory",
    "RecorderDump",
    "StatementBaseline",
    "StatementTrend",
    "StepStatements",
    "load_dump",
    "running_recorder",
]
