"""The report as Markdown: a table a Markdown reader parses back, the model, and the verdict."""

from __future__ import annotations

import math
import re

from querymeter.report import COLUMNS, render_markdown
from querymeter.usl import Model, fit

from .levels import LEVELS, SECOND, Counters

#: A Markdown backslash escape: the character after the backslash, as it is.
ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
#: Rising to a peak near N 25, as a published data set does; a fit that describes it.
GOOD = [(1.0, 1000.0), (2.0, 1950.0), (4.0, 3700.0), (8.0, 6400.0), (16.0, 9300.0), (32.0, 9800.0)]
#: Throughput that falls from the first level on: no USL curve describes it.
SATURATED = [(0.93, 7221), (1.88, 6187), (3.84, 6254), (7.56, 4872), (15.55, 4207), (31.33, 5257)]


def unescaped(text: str) -> str:
    return ESCAPE.sub(r"\1", text)


def table_cells(line: str) -> list[str]:
    """A GitHub table row's cells: split on pipes that no backslash escapes."""
    assert line.startswith("| ") and line.endswith(" |"), line
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line[1:-1])]


def tables(text: str) -> list[list[list[str]]]:
    """Every table of the page, as rows of cells, without the delimiter row."""
    found: list[list[list[str]]] = []
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("|") and (index == 0 or not lines[index - 1].startswith("|")):
            rows = []
            for row in lines[index:]:
                if not row.startswith("|"):
                    break
                rows.append(row)
            assert re.fullmatch(r"\|(:?-+:?\|)+", rows[1].replace(" ", "")), rows[1]
            found.append([table_cells(row) for row in rows[:1] + rows[2:]])
    return found


def test_the_levels_table_has_one_row_per_level_with_the_laws_figures() -> None:
    """Each row's figures are the counters' quotients; an undefined one is a dash, not 0."""
    page = render_markdown([level.measurement() for level in LEVELS], None)
    levels = tables(page)[0]
    assert levels[0] == [
        "threads",
        "N",
        "X (queries/s)",
        "R (ms)",
        "U",
        "S (ms)",
        "queries",
        "errors",
    ]
    assert len(levels) == 1 + len(LEVELS)
    for counters, row in zip(LEVELS, levels[1:], strict=True):
        seconds = counters.duration_ns / SECOND
        n, x = counters.total_ns / counters.duration_ns, counters.queries / seconds
        assert row[:3] == [str(counters.threads), f"{n:.2f}", f"{x:,.0f}"]
        assert row[4] == f"{counters.busy_ns / counters.duration_ns:.2f}"
        assert row[6:] == [f"{counters.queries:,}", f"{counters.errors:,}"]
        if counters.queries:
            assert float(row[3]) == round(counters.total_ns / counters.queries / 1e6, 3)
            assert float(row[5]) == round(counters.busy_ns / counters.queries / 1e6, 3)
        else:
            assert row[3] == row[5] == "\N{EN DASH}"


def test_the_first_error_is_shown_as_code_whatever_it_holds() -> None:
    """An error with pipes and backticks reads back whole from its code span, first line only."""
    page = render_markdown([level.measurement() for level in LEVELS], None)
    (line,) = [line for line in page.splitlines() if line.startswith("- 4 threads:")]
    assert line.startswith("- 4 threads: 3 errors; the first: ")
    span = line.removeprefix("- 4 threads: 3 errors; the first: ")
    fence = re.match(r"`+", span)
    assert fence is not None and span.endswith(fence.group())
    content = span[len(fence.group()) : -len(fence.group())]
    assert fence.group() not in content
    if content.startswith(" ") and content.endswith(" "):
        content = content[1:-1]  # CommonMark strips one space each side
    assert content == "OperationalError: a|b `x`"


def test_a_model_that_describes_the_data_gets_its_coefficients_and_a_positive_verdict() -> None:
    """The verdict says the model can be used; the table lists its coefficients and its peak."""
    model = fit(GOOD)
    levels = [
        Counters(round(n), 10 * SECOND, round(x * 10), 0, round(n * 10 * SECOND), 0).measurement()
        for n, x in GOOD
    ]
    page = render_markdown(levels, model)
    assert "**Verdict: usable for predictions.**" in page
    coefficients = dict(tables(page)[1][1:])
    assert coefficients["σ (contention)"] == f"{model.sigma:.4g}"
    assert coefficients["κ (coherency)"] == f"{model.kappa:.4g}"
    peak = math.sqrt((1 - model.sigma) / model.kappa)
    assert coefficients["N\\* (peak concurrency)"] == f"{peak:.1f}"
    assert coefficients[f"R² ({len(GOOD)} points)"] == f"{model.r_squared:.4f}"


def test_a_model_that_does_not_describe_the_data_says_so_and_why() -> None:
    """The verdict is negative, each problem is listed, and no peak is offered as a result."""
    model = fit(SATURATED)
    page = render_markdown([LEVELS[0].measurement()], model)
    assert "**Verdict: not usable for predictions.**" in page
    assert "for the record only" in page
    assert "sigma ended at its bound 1" in unescaped(page)
    coefficients = dict(tables(page)[1][1:])
    assert "N\\* (peak concurrency)" not in coefficients and "X max" not in coefficients


def test_without_a_model_the_verdict_gives_the_reason() -> None:
    """No model: the verdict is negative and says why, and no coefficient table is drawn."""
    page = render_markdown([LEVELS[0].measurement()], None, fit_problem="2 levels measured")
    assert "**Verdict: not usable for predictions.** No model: 2 levels measured." in page
    assert len(tables(page)) == 1


def test_text_from_outside_reads_back_as_it_was() -> None:
    """The run's details and the notice are escaped: Markdown shows them unchanged."""
    database = "db|with *stars* and _under_ <tags> [link](x)"
    page = render_markdown(
        [LEVELS[0].measurement()],
        Model(0.0, 0.0, 100.0),
        database=database,
        implementation="c",
        duration_s=2.5,
        generated="2026-12-02 16:00 UTC",
        notice="Interrupted | during *level* 2",
    )
    lines = page.splitlines()
    assert lines[0] == "# querymeter demo report"
    assert unescaped(lines[2]) == f"{database} · c core · 2.5 s per level · 2026-12-02 16:00 UTC"
    assert re.search(r"(?<!\\)[|*_<\[]", lines[2]) is None
    assert unescaped(lines[4]) == "> **Interrupted | during *level* 2**"
    for name, meaning in COLUMNS:
        assert f"- **{name}**: {meaning}" in unescaped(page)
