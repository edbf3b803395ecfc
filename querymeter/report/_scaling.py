"""A scalability run as a report: terminal text, one JSON document, or an HTML page with charts.

It renders plain data: any object shaped as
:class:`querymeter.scaling.ScalingResult` (see :class:`ScalingData`), whose
levels each have their workers, the meter's
:class:`~querymeter.readings.Interval`, and the workload's calls and
errors; its model and :class:`~querymeter.usl.FitReading` say what the fit
means, in the same words as the demo's report.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, Protocol

from ..readings import Interval
from ..usl import FitReading, Model
from ._content import COLUMNS
from ._html import _STYLE, _model_section, chart_series, interval_cells, svg_chart
from ._json import _finite, _model, _reading, interval_fields
from ._text import _first_line, fit_text
from ._text import interval_cells as text_cells

__all__ = [
    "SCALING_COLUMNS",
    "ScalingData",
    "ScalingLevelData",
    "render_scaling_html",
    "render_scaling_json",
    "render_scaling_text",
    "scaling_document",
]


class ScalingLevelData(Protocol):
    """One level of a scalability run, as the report reads it."""

    @property
    def workers(self) -> int: ...
    @property
    def interval(self) -> Interval: ...
    @property
    def calls(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def first_error(self) -> str | None: ...


class ScalingData(Protocol):
    """A scalability run, as the report reads it: a ``querymeter.scaling.ScalingResult``."""

    @property
    def levels(self) -> Sequence[ScalingLevelData]: ...
    @property
    def model(self) -> Model | None: ...
    @property
    def reading(self) -> FitReading: ...
    @property
    def duration_s(self) -> float: ...
    @property
    def warmup_s(self) -> float: ...


_LAWS = dict(COLUMNS)

#: What each column of the levels table means; N to S are the demo report's.
SCALING_COLUMNS = (
    ("workers", "threads (or tasks) calling the workload at once"),
    *((name, _LAWS[name]) for name in ("N", "X", "R", "U", "S")),
    ("queries", "queries completed in the level's measured time, as the meter counted them"),
    ("failed", "of those queries, the ones that raised, as the meter counted them"),
    ("calls", "calls of the workload that ended in the measured time"),
    ("raised", "of those calls, the ones that raised (a query's error or the workload's own)"),
)


def _heading(result: ScalingData) -> str:
    workers = ", ".join(str(level.workers) for level in result.levels)
    return (
        f"{len(result.levels)} levels ({workers or '-'} workers), {result.duration_s:g} s each "
        f"after {result.warmup_s:g} s of warm-up"
    )


#: The widths of the text table's columns, which fit in 88.
_WIDTHS = (8, 7, 13, 9, 5, 9, 7, 9, 7)


def _row(*cells: object) -> str:
    return " ".join(f"{cell!s:>{width}}" for cell, width in zip(cells, _WIDTHS, strict=True))


def _text_row(level: ScalingLevelData) -> str:
    interval = level.interval
    return _row(
        level.workers,
        *text_cells(interval),
        f"{interval.errors:,}",
        f"{level.calls:,}",
        f"{level.errors:,}",
    )


def render_scaling_text(result: ScalingData) -> str:
    """The levels table and the model read in words, for a terminal (88 columns)."""
    lines = [
        f"Scalability run: {_heading(result)}",
        "",
        _row("workers", "N", "X (queries/s)", "R (ms)", "U", "S (ms)", "failed", "calls", "raised"),
    ]
    for level in result.levels:
        lines.append(_text_row(level))
        if level.first_error:
            lines.append(f"{'':>9}! the first call that raised: {_first_line(level.first_error)}")
    return "\n".join(lines) + f"\n\n{fit_text(result.model, result.reading)}"


def _level(level: ScalingLevelData) -> dict[str, Any]:
    return {
        "workers": level.workers,
        **interval_fields(level.interval),
        "calls": level.calls,
        "calls_raised": level.errors,
        "first_error": level.first_error,
    }


def scaling_document(result: ScalingData) -> dict[str, Any]:
    """The run as JSON-ready data: the settings, the levels, the model and its reading.

    ``errors`` of a level counts queries that raised (the meter's count);
    ``calls_raised`` counts calls of the workload that raised.  A figure that
    is undefined or infinite (no peak when kappa is 0) is null.
    """
    model = _model(result.model)
    if model is not None and result.model is not None:
        model["sigma_ci"] = _interval_or_none(result.model.sigma_ci)
        model["kappa_ci"] = _interval_or_none(result.model.kappa_ci)
        model["lambda_ci"] = _interval_or_none(result.model.lam_ci)
        model["residual_standard_error"] = result.model.residual_standard_error
    return {
        "duration_s": result.duration_s,
        "warmup_s": result.warmup_s,
        "levels": [_level(level) for level in result.levels],
        "model": model,
        "fit": _reading(result.reading),
    }


def _interval_or_none(bounds: tuple[float, float] | None) -> list[float | None] | None:
    return None if bounds is None else [_finite(bounds[0]), _finite(bounds[1])]


def render_scaling_json(result: ScalingData) -> str:
    """:func:`scaling_document` as text, indented by 2, without a final newline."""
    return json.dumps(scaling_document(result), indent=2, allow_nan=False)


def render_scaling_html(result: ScalingData, *, title: str = "querymeter scalability run") -> str:
    """One self-contained page: the run, the levels table, the model read in words, two charts."""
    throughput_series, response_series = chart_series(
        [level.interval for level in result.levels], result.model, result.reading
    )
    rows = "\n".join(
        f"<tr><td>{level.workers}</td>{interval_cells(level.interval)}"
        f"<td>{level.calls:,}</td><td>{level.errors:,}</td></tr>"
        for level in result.levels
    )
    raised = [level for level in result.levels if level.first_error]
    errors = (
        '<div class="warning"><p>Calls of the workload raised:</p>\n<ul>\n'
        + "\n".join(
            f"<li>{level.workers} workers: {level.errors:,} of {level.calls:,} calls; the first: "
            f"<code>{html.escape(_first_line(level.first_error or ''))}</code></li>"
            for level in raised
        )
        + "\n</ul></div>"
        if raised
        else ""
    )
    columns = "\n".join(
        f"<dt>{html.escape(name)}</dt><dd>{html.escape(meaning)}</dd>"
        for name, meaning in SCALING_COLUMNS
    )
    throughput_chart = svg_chart(
        "Throughput against concurrency",
        "mean concurrency N",
        "throughput X (queries/s)",
        throughput_series,
        chart_id="throughput",
    )
    response_chart = svg_chart(
        "Response time against concurrency",
        "mean concurrency N",
        "response time R (ms)",
        response_series,
        chart_id="response-time",
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">{html.escape(_heading(result))}</p>
<h2>Levels</h2>
<table>
<tr><th>workers</th><th>N</th><th>X (queries/s)</th><th>R (ms)</th><th>U</th><th>S (ms)</th>
<th>queries</th><th>failed</th><th>calls</th><th>raised</th></tr>
{rows}
</table>
{errors}
<dl class="columns">
{columns}
</dl>

<h2>Universal Scalability Law</h2>
{_model_section(result.model, result.reading)}

<h2>Throughput against concurrency</h2>
{throughput_chart}

<h2>Response time against concurrency</h2>
{response_chart}
</body>
</html>
"""
