"""The report as one JSON document, for scripts and CI: the levels, the model, the reading.

Every figure is a number or null: JSON has no infinity, so an unbounded
peak or maximum is null, as is a figure that an interval does not define.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..readings import Interval
from ..usl import Model
from ._content import FitReading, Measurement, level_points, read_fit


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def interval_fields(interval: Interval) -> dict[str, Any]:
    """An interval's counters (ns, counts) and its figures (seconds, queries/s), for JSON."""
    return {
        "duration_ns": interval.duration_ns,
        "queries": interval.queries,
        "errors": interval.errors,
        "total_ns": interval.total_ns,
        "busy_ns": interval.busy_ns,
        "concurrency": interval.concurrency,
        "throughput": interval.throughput,
        "response_time_s": interval.response_time,
        "utilization": interval.utilization,
        "service_time_s": interval.service_time,
    }


def _level(level: Measurement) -> dict[str, Any]:
    return {
        "threads": level.threads,
        **interval_fields(level.interval),
        "first_error": level.first_error,
    }


def _model(model: Model | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {
        "sigma": model.sigma,
        "kappa": model.kappa,
        "lambda": model.lam,
        "peak_concurrency": _finite(model.peak_concurrency),
        "max_throughput": _finite(model.max_throughput),
        "limiting_factor": model.limiting_factor,
        "n_points": model.n_points,
        "r_squared": model.r_squared,
        "at_bound": list(model.at_bound),
        "converged": model.converged,
    }


def _reading(reading: FitReading) -> dict[str, Any]:
    return {
        "describes_data": reading.describes_data,
        "summary": reading.summary,
        "problems": list(reading.problems),
        "cautions": list(reading.cautions),
        "advice": list(reading.advice),
    }


def json_document(
    levels: Sequence[Measurement],
    model: Model | None,
    *,
    version: str,
    implementation: str,
    database: str,
    duration_s: float,
    levels_requested: Sequence[int],
    interrupted: bool = False,
    report: str | None = None,
    fit_problem: str | None = None,
    reading: FitReading | None = None,
) -> dict[str, Any]:
    """The report as JSON-ready data: the run's details, the levels, the model and its reading.

    ``version`` and ``implementation`` name the querymeter that measured;
    ``report`` is where the HTML report was written, if it was; ``reading``
    is :func:`read_fit` of the model (computed here when not given).
    """
    if reading is None:
        reading = read_fit(model, level_points(levels), fit_problem=fit_problem)
    return {
        "querymeter": version,
        "core": implementation,
        "database": database,
        "duration_s": duration_s,
        "levels_requested": list(levels_requested),
        "interrupted": interrupted,
        "levels": [_level(level) for level in levels],
        "model": _model(model),
        "fit": _reading(reading),
        "report": report,
    }


def render_json(
    levels: Sequence[Measurement],
    model: Model | None,
    *,
    version: str,
    implementation: str,
    database: str,
    duration_s: float,
    levels_requested: Sequence[int],
    interrupted: bool = False,
    report: str | None = None,
    fit_problem: str | None = None,
    reading: FitReading | None = None,
) -> str:
    """:func:`json_document` as text, indented by 2, without a final newline."""
    document = json_document(
        levels,
        model,
        version=version,
        implementation=implementation,
        database=database,
        duration_s=duration_s,
        levels_requested=levels_requested,
        interrupted=interrupted,
        report=report,
        fit_problem=fit_problem,
        reading=reading,
    )
    return json.dumps(document, indent=2, allow_nan=False)
