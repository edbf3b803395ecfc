"""A flight recorder's dump: its steps and markers as JSON, or as a self-contained HTML timeline.

The JSON document (``"format": "querymeter-flight-recorder"``, version 1) holds,
per resolution, every kept step: its two snapshots (exact integers), its
figures (the operational laws, for a reader without querymeter), its wall
times on the recorder's calendar and its statements (the top ones with their
histograms, and the rest summed); the markers in the recorder's span; and the
worst minute (the step of the resolution nearest 60 s with the most query
time) with its top statements.  :func:`load_dump` reads it back into
Intervals, StepStatements and Markers, exactly.
"""

from __future__ import annotations

import array
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import IMPLEMENTATION
from ..markers import Marker
from ..readings import Interval, Snapshot
from ..report._timeline import render_timeline_html
from ..statements import StatementStats

if TYPE_CHECKING:
    from ._recorder import FlightRecorder, StepStatements

__all__ = ["FORMAT", "VERSION", "RecorderDump", "dump_document", "load_dump", "write_dump"]

FORMAT = "querymeter-flight-recorder"
VERSION = 1
#: The worst "minute" is a step of the resolution nearest this, s.
WORST_STEP_SECONDS = 60.0


def _figures(interval: Interval) -> dict[str, Any]:
    return {
        "duration": interval.duration,
        "queries": interval.queries,
        "errors": interval.errors,
        "throughput": interval.throughput,
        "concurrency": interval.concurrency,
        "response_time": interval.response_time,
        "utilization": interval.utilization,
        "service_time": interval.service_time,
        "error_rate": interval.error_rate,
    }


def _stats_dict(stats: StatementStats) -> dict[str, Any]:
    data = stats.as_dict()
    data["total_sq"] = stats.total_sq
    data["serial"] = stats.serial
    data["histogram_lo"] = stats.histogram_lo
    data["histogram"] = list(memoryview(stats.histogram).cast("Q"))
    return data


def _statements_dict(statements: StepStatements | None) -> dict[str, Any] | None:
    if statements is None:
        return None
    return {
        "statements": [_stats_dict(s) for s in statements.statements],
        "rest": _stats_dict(statements.rest),
        "rest_statements": statements.rest_statements,
        "evicted": _stats_dict(statements.evicted),
        "untexted": _stats_dict(statements.untexted),
        "dropped": statements.dropped,
        "table_id": statements.table_id,
        "start_wall_ns": statements.start_wall_ns,
        "end_wall_ns": statements.end_wall_ns,
        "calls": statements.calls,
        "total_ns": statements.total_ns,
    }


def dump_document(recorder: FlightRecorder) -> dict[str, Any]:
    """The recorder's steps, markers and worst minute as plain data (the JSON dump)."""
    resolutions: list[dict[str, Any]] = []
    worst: dict[str, Any] | None = None
    nearest = min(
        (seconds for seconds, _ in recorder.resolutions),
        key=lambda seconds: abs(seconds - WORST_STEP_SECONDS),
    )
    for seconds, capacity in recorder.resolutions:
        intervals = recorder.timeline(resolution=seconds)
        statements = recorder.statement_timeline(resolution=seconds)
        steps: list[dict[str, Any]] = []
        for interval, step_statements in zip(intervals, statements, strict=True):
            end_wall_ns = recorder.step_wall_ns(interval)
            steps.append(
                {
                    "start_wall_ns": end_wall_ns - interval.duration_ns,
                    "end_wall_ns": end_wall_ns,
                    "earlier": interval.earlier._asdict(),
                    "later": interval.later._asdict(),
                    "figures": _figures(interval),
                    "statements": _statements_dict(step_statements),
                }
            )
        resolutions.append({"seconds": seconds, "capacity": capacity, "steps": steps})
        if seconds == nearest and steps:
            worst_index = max(
                range(len(steps)), key=lambda i: (intervals[i].total_ns, intervals[i].errors)
            )
            worst = {"seconds": seconds, **steps[worst_index]}
    if worst is None:
        # The coarse ring is still empty: the worst step of the finest one.
        finest = resolutions[0]
        if finest["steps"]:
            worst_step = max(
                finest["steps"],
                key=lambda step: (
                    step["later"]["total_ns"] - step["earlier"]["total_ns"],
                    step["figures"]["errors"],
                ),
            )
            worst = {"seconds": finest["seconds"], **worst_step}
    return {
        "format": FORMAT,
        "version": VERSION,
        "written_wall_ns": time.time_ns(),
        "pid": os.getpid(),
        "implementation": IMPLEMENTATION,
        "meter_id": recorder.meter.snapshot().meter_id,
        "running": recorder.running,
        "resolutions": resolutions,
        "markers": [marker.as_dict() for marker in recorder.markers()],
        "worst_step": worst,
    }


def write_dump(recorder: FlightRecorder, path: str | os.PathLike[str]) -> Path:
    """Write the dump to ``path`` (``.json`` or ``.html``), through a temporary file
    renamed into place, so that a reader never sees half a dump."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in (".json", ".html", ".htm"):
        raise ValueError(f"dump() writes .json or .html, not {target.name!r}")
    if not target.parent.is_dir():
        raise ValueError(f"dump(): {str(target.parent)!r} is not an existing directory")
    document = dump_document(recorder)
    if suffix == ".json":
        text = json.dumps(document, indent=1, allow_nan=False)
    else:
        text = render_timeline_html(document)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        partial.write_text(text, encoding="utf-8")
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class RecorderDump:
    """A JSON dump read back: per resolution (seconds), the steps as Intervals, their
    statements and end wall times; the markers; and the document itself."""

    resolutions: tuple[tuple[float, int], ...]
    timelines: Mapping[float, list[Interval]]
    statement_timelines: Mapping[float, list[StepStatements | None]]
    step_wall_ns: Mapping[float, list[int]]
    markers: list[Marker]
    document: Mapping[str, Any]


def _stats_from(data: Mapping[str, Any]) -> StatementStats:
    return StatementStats(
        fingerprint=data["fingerprint"],
        sample_sql=data["sample_sql"],
        calls=data["calls"],
        errors=data["errors"],
        total_ns=data["total_ns"],
        min_ns=data["min_ns"],
        max_ns=data["max_ns"],
        rows=data["rows"],
        first_seen_ns=data["first_seen_ns"],
        last_seen_ns=data["last_seen_ns"],
        total_sq=data["total_sq"],
        histogram_lo=data["histogram_lo"],
        histogram=array.array("Q", data["histogram"]).tobytes(),
        serial=data["serial"],
    )


def load_dump(path: str | os.PathLike[str]) -> RecorderDump:
    """Read a JSON dump written by ``recorder.dump(path)``."""
    from ._recorder import StepStatements

    document = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a querymeter flight recorder dump")
    if document.get("version") != VERSION:
        raise ValueError(
            f"{str(path)!r} is a dump of version {document.get('version')!r}; "
            f"this querymeter reads version {VERSION}"
        )
    timelines: dict[float, list[Interval]] = {}
    statement_timelines: dict[float, list[StepStatements | None]] = {}
    walls: dict[float, list[int]] = {}
    resolutions = []
    for resolution in document["resolutions"]:
        seconds = float(resolution["seconds"])
        resolutions.append((seconds, int(resolution["capacity"])))
        intervals: list[Interval] = []
        statements: list[StepStatements | None] = []
        ends: list[int] = []
        for step in resolution["steps"]:
            intervals.append(Interval(Snapshot(**step["earlier"]), Snapshot(**step["later"])))
            ends.append(step["end_wall_ns"])
            data = step["statements"]
            if data is None:
                statements.append(None)
                continue
            statements.append(
                StepStatements(
                    tuple(_stats_from(s) for s in data["statements"]),
                    _stats_from(data["evicted"]),
                    _stats_from(data["untexted"]),
                    data["dropped"],
                    data["table_id"],
                    data["start_wall_ns"],
                    data["end_wall_ns"],
                    _stats_from(data["rest"]),
                    data["rest_statements"],
                )
            )
        timelines[seconds] = intervals
        statement_timelines[seconds] = statements
        walls[seconds] = ends
    return RecorderDump(
        tuple(resolutions),
        timelines,
        statement_timelines,
        walls,
        [Marker.from_dict(marker) for marker in document["markers"]],
        document,
    )
