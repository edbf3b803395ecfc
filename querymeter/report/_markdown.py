"""The report as Markdown: the levels table, the model's coefficients, and the verdict in words.

For pasting into a pull request, an issue tracker or a wiki: GitHub-flavoured
tables, no HTML.  It says what the HTML page says, without the charts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..usl import Model
from ._content import COLUMNS, FitReading, Measurement, level_points, qps, read_fit

#: What a table cell shows for a figure the interval does not define.
NONE = "\N{EN DASH}"


def _cell(value: float | None, spec: str) -> str:
    return NONE if value is None else format(value, spec)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _escape(text: str) -> str:
    """Text that Markdown shows as it is, even inside a table cell."""
    for special in "\\`*_[]<>|":
        text = text.replace(special, "\\" + special)
    return text


def _code(text: str) -> str:
    """An inline code span holding ``text`` as it is, backticks included."""
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _levels_table(levels: Sequence[Measurement]) -> list[str]:
    lines = [
        "| threads | N | X (queries/s) | R (ms) | U | S (ms) | queries | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in levels:
        interval = level.interval
        cells = (
            str(level.threads),
            _cell(interval.concurrency, ".2f"),
            _cell(interval.throughput, ",.0f"),
            _cell(_ms(interval.response_time), ".3f"),
            _cell(interval.utilization, ".2f"),
            _cell(_ms(interval.service_time), ".3f"),
            f"{interval.queries:,}",
            f"{interval.errors:,}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _errors(levels: Sequence[Measurement]) -> list[str]:
    failed = [level for level in levels if level.interval.errors]
    if not failed:
        return []
    lines = [
        "",
        "**The workload raised errors**: they are counted in the figures above, "
        "and the workload is written to raise none.",
        "",
    ]
    for level in failed:
        first = (
            f"; the first: {_code(level.first_error.splitlines()[0])}" if level.first_error else ""
        )
        lines.append(f"- {level.threads} threads: {level.interval.errors:,} errors{first}")
    return lines


def _bullets(items: Sequence[str]) -> list[str]:
    return [f"- {_escape(item)}" for item in items]


def _model(model: Model | None, reading: FitReading) -> list[str]:
    verdict = "" if reading.describes_data else "not "
    lines = [f"**Verdict: {verdict}usable for predictions.** {_escape(reading.summary)}"]
    if reading.problems:
        lines += ["", *_bullets(reading.problems)]
    if model is not None:
        r2 = NONE if model.r_squared is None else f"{model.r_squared:.4f}"
        rows = [
            ("σ (contention)", f"{model.sigma:.4g}"),
            ("κ (coherency)", f"{model.kappa:.4g}"),
            ("λ (throughput at N = 1, no overhead)", qps(model.lam)),
        ]
        if reading.describes_data:
            peak = (
                "∞ (no peak: κ = 0)"
                if math.isinf(model.peak_concurrency)
                else f"{model.peak_concurrency:.1f}"
            )
            max_x = "∞" if math.isinf(model.max_throughput) else qps(model.max_throughput)
            rows += [
                ("N* (peak concurrency)", peak),
                ("X max", max_x),
                ("limiting factor", model.limiting_factor),
            ]
        rows.append((f"R² ({model.n_points} points)", r2))
        lines.append("")
        if not reading.describes_data:
            lines += ["The fitted coefficients, for the record only:", ""]
        lines += ["| | |", "|:---|---:|"]
        lines += [f"| {_escape(name)} | {value} |" for name, value in rows]
    if reading.cautions:
        lines += ["", *_bullets(reading.cautions)]
    if reading.advice:
        lines += ["", "What to do:", "", *_bullets(reading.advice)]
    return lines


def render_markdown(
    levels: Sequence[Measurement],
    model: Model | None,
    *,
    database: str | None = None,
    implementation: str | None = None,
    duration_s: float | None = None,
    generated: str | None = None,
    fit_problem: str | None = None,
    reading: FitReading | None = None,
    notice: str | None = None,
) -> str:
    """The report in Markdown: run details, the levels table, the model and its verdict.

    The run's details (``database``, ``implementation``, ``duration_s``,
    ``generated``) are shown when given; ``reading`` is :func:`read_fit` of
    the model (computed here when not given); ``notice`` is a sentence shown
    on top, such as an interruption.
    """
    if reading is None:
        reading = read_fit(model, level_points(levels), fit_problem=fit_problem)
    details = [
        _escape(database) if database is not None else None,
        f"{_escape(implementation)} core" if implementation is not None else None,
        f"{duration_s:g} s per level" if duration_s is not None else None,
        _escape(generated) if generated is not None else None,
    ]
    lines = ["# querymeter demo report", ""]
    if shown := [detail for detail in details if detail is not None]:
        lines += [" · ".join(shown), ""]
    if notice:
        lines += [f"> **{_escape(notice)}**", ""]
    lines += ["## Levels", "", *_levels_table(levels), *_errors(levels), ""]
    lines += [f"- **{_escape(name)}**: {_escape(meaning)}" for name, meaning in COLUMNS]
    lines += ["", "## Universal Scalability Law", "", *_model(model, reading)]
    return "\n".join(lines) + "\n"
