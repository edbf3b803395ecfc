"""The report as terminal text, 88 columns wide: the levels table, line by line, and the fit."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from ..readings import Interval
from ..usl import Model
from ._content import COLUMNS, FitReading, Measurement, level_points, read_fit

#: The width that paragraphs are wrapped to.
WIDTH = 88


def _row(threads: object, *cells: str) -> str:
    return f"{threads!s:>8} " + " ".join(f"{cell:>13}" for cell in cells)


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


def _paragraph(text: str, bullet: str = "", indent: str = "  ") -> str:
    indent += bullet
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=" " * len(indent))


def text_legend() -> str:
    """What the columns of the levels table mean, one wrapped paragraph each."""
    lines = ["What the columns mean:"]
    for name, meaning in COLUMNS:
        if name == "queries":  # a column of the other formats only
            continue
        lines.append(
            textwrap.fill(meaning, WIDTH, initial_indent=f"  {name:<9}", subsequent_indent=" " * 11)
        )
    return "\n".join(lines)


def text_header() -> str:
    """The levels table's heading line."""
    return _row("threads", "N", "X (queries/s)", "R (ms)", "U", "S (ms)", "errors")


def interval_cells(interval: Interval) -> tuple[str, str, str, str, str]:
    """An interval's N, X (queries/s), R (ms), U and S (ms) as printed; "-" where undefined."""
    return (
        _number(interval.concurrency, ".2f"),
        _number(interval.throughput, ",.0f"),
        _number(None if interval.response_time is None else interval.response_time * 1e3, ".3f"),
        _number(interval.utilization, ".2f"),
        _number(None if interval.service_time is None else interval.service_time * 1e3, ".3f"),
    )


def text_level(level: Measurement) -> str:
    """One level's line of the table, and a second line when its queries raised errors."""
    interval = level.interval
    line = _row(level.threads, *interval_cells(interval), f"{interval.errors:,}")
    if not interval.errors:
        return line
    first = f"; the first: {_first_line(level.first_error)}" if level.first_error else ""
    return f"{line}\n{'':>9}! {interval.errors:,} queries raised an error{first}"


def fit_text(model: Model | None, reading: FitReading) -> str:
    """The terminal's account of the model: what it means, or why it means nothing, and advice."""
    out: list[str] = []
    if model is None:
        out.append(f"No scalability model.\n{_paragraph(reading.summary)}")
    else:
        r_squared = "-" if model.r_squared is None else f"{model.r_squared:.4f}"
        out.append(
            f"Universal Scalability Law, fitted to {model.n_points} points "
            f"(R² {r_squared}; 1 is a perfect fit):\n{_paragraph(reading.summary)}"
        )
    for problem in reading.problems:
        out.append(_paragraph(problem, "- "))
    if model is not None and reading.describes_data:
        peak = (
            "none (kappa is 0)"
            if math.isinf(model.peak_concurrency)
            else f"{model.peak_concurrency:.1f}"
        )
        max_x = (
            "unbounded"
            if math.isinf(model.max_throughput)
            else f"{model.max_throughput:,.0f} queries/s"
        )
        out.append("")
        for name, value, meaning in (
            ("sigma", f"{model.sigma:.4g}", "contention: the share of work done one at a time"),
            ("kappa", f"{model.kappa:.4g}", "coherency: the cost of agreeing, per pair"),
            ("lambda", f"{model.lam:,.0f} queries/s", "one query at a time, without overhead"),
            ("N*", peak, "the concurrency of highest throughput"),
            ("X max", max_x, "the highest throughput"),
            ("limited by", model.limiting_factor, ""),
        ):
            out.append(f"  {name:<11} {value:<18} {meaning}".rstrip())
        for caution in reading.cautions:
            out.append(_paragraph(caution, "! "))
    if reading.advice:
        out.append("  What to do:")
        for advice in reading.advice:
            out.append(_paragraph(advice, "- ", "    "))
    if model is not None and not reading.describes_data:
        out.append(
            _paragraph(
                f"The fitted coefficients, for the record only: sigma {model.sigma:.4g}, "
                f"kappa {model.kappa:.4g}, lambda {model.lam:,.0f} queries/s."
            )
        )
    return "\n".join(out)


def render_text(
    levels: Sequence[Measurement],
    model: Model | None,
    *,
    fit_problem: str | None = None,
    reading: FitReading | None = None,
) -> str:
    """The levels table and the model read in words, as the command line prints them.

    ``reading`` is :func:`read_fit` of the model (computed here when not given).
    """
    if reading is None:
        reading = read_fit(model, level_points(levels), fit_problem=fit_problem)
    table = "\n".join([text_header(), *(text_level(level) for level in levels)])
    return f"{table}\n\n{fit_text(model, reading)}"
