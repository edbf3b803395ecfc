"""The demo report: the fit read in words, and HTML whose SVG charts show every level and model."""

from __future__ import annotations

import csv
import html
import itertools
import math
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from querymeter.report import (
    Measurement,
    fit_text,
    level_points,
    nice_ticks,
    read_fit,
    render_html,
)
from querymeter.usl import Model, fit

from ..conftest import load_meter_class

SVG = "{http://www.w3.org/2000/svg}"


@given(
    offset=st.floats(0, 10, allow_nan=False),
    span=st.floats(1e-6, 1e9, allow_nan=False),
)
def test_nice_ticks_cover_the_range_in_round_steps(offset: float, span: float) -> None:
    """Ticks start at or below the low end, end at or above the high end, in 1-2-5 steps."""
    low = offset * span  # the charts start at 0; a small offset is tried too
    high = low + span
    ticks = nice_ticks(low, high)
    assert ticks[0] <= low * (1 + 1e-9) + 1e-12
    assert ticks[-1] >= high * (1 - 1e-9)
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    step = ticks[1] - ticks[0]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5, 10))
    assert len(steps) <= 2  # equal, up to rounding in the last digit


def levels_of(implementation: str, model: Model) -> list[Measurement]:
    """Levels whose intervals have exactly the model's throughput at 1, 2, 4 and 8."""
    now = [0]
    meter = load_meter_class(implementation)(clock=lambda: now[0])
    levels = []
    for threads in (1, 2, 4, 8):
        before = meter.snapshot()
        tokens = [meter.begin() for _ in range(threads)]
        now[0] += 10**9
        for token in tokens:
            meter.end(token)
        for _ in range(round(model.throughput(threads)) - threads):
            meter.end(meter.begin())
        levels.append(Measurement(threads, meter.snapshot() - before))
    return levels


def svgs_of(page: str) -> list[ElementTree.Element]:
    """Every SVG of the page, parsed as XML (which fails on anything malformed)."""
    return [ElementTree.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", page, re.S)]


def test_the_report_draws_every_level_and_the_model(implementation: str) -> None:
    """Each level is a point on both charts, the model a curve, and the table lists them."""
    truth = Model(sigma=0.1, kappa=0.01, lam=1000.0)
    levels = levels_of(implementation, truth)
    model = fit([(level.interval.concurrency, level.interval.throughput) for level in levels])
    page = render_html(
        levels,
        model,
        database="SQLite <test> & co",
        implementation=implementation,
        duration_s=1.0,
        generated="now",
    )
    throughput_chart, response_chart = svgs_of(page)
    assert len(throughput_chart.findall(f"{SVG}circle")) == len(levels) + 1  # + legend
    assert len(response_chart.findall(f"{SVG}circle")) == len(levels) + 1
    assert len(throughput_chart.findall(f"{SVG}polyline")) == 2  # model and linear scaling
    assert "SQLite &lt;test&gt; &amp; co" in page
    assert page.count("<tr><td>") == len(levels)
    assert f"{model.sigma:.4g}" in page and "limiting factor" in page


def modules_loaded_by(module: str) -> set[str]:
    """The querymeter modules a fresh interpreter holds after importing ``module``."""
    code = (
        f"import sys, {module}; "
        "print(*sorted(name for name in sys.modules if name.startswith('querymeter')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


def test_the_report_does_not_import_the_demo() -> None:
    """Importing the report layer loads no workload generator: querymeter.demo stays out."""
    loaded = modules_loaded_by("querymeter.report")
    assert "querymeter.report" in loaded and "querymeter.demo" not in loaded
    # The same check sees the demo where it is imported.
    assert "querymeter.demo" in modules_loaded_by("querymeter.cli")


def test_the_report_is_self_contained() -> None:
    """No script, stylesheet, image or link is fetched: the page is one file."""
    page = render_html([], None, database="d", implementation="c", duration_s=1, generated="g")
    assert "<script" not in page and "<link" not in page and "<img" not in page
    assert "src=" not in page and "href=" not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"] * 2


def test_without_a_model_the_report_says_why() -> None:
    """When no model could be fitted, the report shows the reason instead."""
    page = render_html(
        [],
        None,
        database="d",
        implementation="c",
        duration_s=1,
        generated="g",
        fit_problem="need at least 3 points <here>",
    )
    assert "No model: need at least 3 points &lt;here&gt;." in page
    assert 'class="warning"' in page


def test_nice_ticks_refuse_a_non_finite_range() -> None:
    """A non-finite range raises ValueError."""
    with pytest.raises(ValueError, match="finite range"):
        nice_ticks(0, math.inf)


# -- reading a fit -------------------------------------------------------------

DATA = Path(__file__).resolve().parent.parent / "data" / "usl"

#: Six levels measured by the SQLite demo on a two-core machine, (N, X): the
#: first level was the fastest, and no USL curve follows them.
SATURATED = [(0.93, 7221), (1.88, 6187), (3.84, 6254), (7.56, 4872), (15.55, 4207), (31.33, 5257)]
#: A climb to a sharp knee at N 6, then a collapse: the best curve peaks below a measured level.
KNEE = [(1, 1000), (2, 2000), (3, 3000), (4, 4000), (5, 4900), (6, 5000), (8, 3500), (12, 3000)]


def published(name: str) -> list[tuple[float, float]]:
    """A published (N, X) data set from tests/data/usl."""
    with (DATA / f"{name}.csv").open() as rows:
        return [(float(row["N"]), float(row["X"])) for row in csv.DictReader(rows)]


@pytest.mark.parametrize("name", ["cisco", "specsdm91", "raytracer"])
def test_a_published_data_set_is_described_by_its_fit(name: str) -> None:
    """The published data sets fit well: the reading states what the model means, no problem."""
    points = published(name)
    model = fit(points)
    reading = read_fit(model, points, cores=2)
    assert reading.describes_data
    assert reading.problems == ()
    if math.isinf(model.peak_concurrency):  # the ray tracer: kappa 0, a ceiling
        assert f"ceiling of about {model.max_throughput:,.0f} queries/s" in reading.summary
        assert f"{model.sigma:.1%} of the work" in reading.summary
    else:
        assert f"peaks near {model.peak_concurrency:.1f} concurrent queries" in reading.summary
        assert f"at about {model.max_throughput:,.0f} queries/s" in reading.summary
        assert "only adds waiting" in reading.summary
        assert model.limiting_factor in reading.summary


def test_the_cisco_fit_reads_as_a_peak_near_36_limited_by_coherency() -> None:
    """Cisco's published fit (N* 35.6, coherency-bound) is told in words with those figures."""
    points = published("cisco")
    reading = read_fit(fit(points), points)
    assert reading.summary.startswith(
        "Throughput peaks near 35.6 concurrent queries, at about 12,343 queries/s;"
    )
    assert "What limits it most is coherency" in reading.summary


def test_saturated_measurements_are_not_described_and_say_what_to_do() -> None:
    """Levels whose throughput fell from the start: the fit is refused, and advice is given."""
    model = fit(SATURATED)
    assert model.sigma == 1.0 and "sigma" in model.at_bound  # the confident-looking result
    reading = read_fit(model, SATURATED, cores=2)
    assert not reading.describes_data
    assert "does not describe these measurements" in reading.summary
    problems = " ".join(reading.problems)
    assert "the lowest level was the fastest (7,221 queries/s at N 0.93)" in problems
    assert "sigma ended at its bound 1" in problems and "N* = 0" in problems
    assert f"R² is {model.r_squared:.2f}" in problems
    advice = " ".join(reading.advice)
    assert "--duration" in advice and "--levels" in advice
    assert "2 here" in advice  # the machine's cores, for levels around them


def test_a_fit_that_peaks_below_a_measured_level_is_not_described() -> None:
    """A measured throughput above the model's maximum means the curve misses the data."""
    model = fit(KNEE)
    assert model.max_throughput < 5000 / 1.05
    reading = read_fit(model, KNEE, cores=8)
    assert not reading.describes_data
    assert any(
        f"than the model's maximum ({model.max_throughput:,.0f} queries/s)" in problem
        and "5,000 queries/s at N 6.00" in problem
        for problem in reading.problems
    )
    assert any("8 CPU cores" in advice for advice in reading.advice)


def test_three_points_test_nothing() -> None:
    """Three points for three coefficients: however well the curve fits, the reading says so."""
    points = [(1.0, 100.0), (2.0, 180.0), (4.0, 290.0)]
    model = fit(points)
    assert model.r_squared == pytest.approx(1.0)
    reading = read_fit(model, points)
    assert not reading.describes_data
    assert reading.problems == (
        "3 points for 3 coefficients: the curve passes through them whatever they are, "
        "so the fit tests nothing.",
    )


def test_a_peak_far_beyond_the_levels_is_an_extrapolation() -> None:
    """A peak far beyond the highest measured concurrency is given with a caution."""
    points = published("cisco")[:8]
    model = fit(points)
    assert model.peak_concurrency > 1.5 * 8
    reading = read_fit(model, points)
    assert reading.describes_data
    assert "still rising at the highest concurrency measured (N 8.0)" in reading.summary
    assert reading.cautions == (
        "The peak lies well beyond the levels measured: it is an extrapolation.",
    )


def test_linear_scaling_reads_as_no_cost_yet() -> None:
    """Throughput proportional to concurrency reads as no contention or coherency cost yet."""
    points = [(n, 100.0 * n) for n in (1.0, 2.0, 4.0, 8.0)]
    model = fit(points)
    assert (model.sigma, model.kappa) == (0.0, 0.0)
    reading = read_fit(model, points)
    assert reading.describes_data
    assert reading.summary.startswith("Throughput grows in proportion to concurrency")


def test_no_model_reads_as_its_reason() -> None:
    """Without a model the reading gives the reason and what to measure."""
    reading = read_fit(None, [], fit_problem="2 levels measured")
    assert not reading.describes_data
    assert reading.summary == "No model: 2 levels measured."
    assert reading.advice


def test_the_terminal_states_a_good_fit_and_its_meaning() -> None:
    """For a published data set the terminal gives the meaning, the coefficients and the peak."""
    points = published("cisco")
    model = fit(points)
    reading = read_fit(model, points)
    text = fit_text(model, reading)
    assert "Universal Scalability Law, fitted to 32 points (R² 0.9972" in text
    assert " ".join(text.split()).count(reading.summary) == 1
    assert re.search(r"^  N\* +35\.6 ", text, re.M)
    assert re.search(r"^  X max +12,343 queries/s ", text, re.M)
    assert "does not describe" not in text and "What to do" not in text


def test_the_terminal_says_plainly_when_the_model_does_not_fit() -> None:
    """For saturated levels the terminal says the model does not fit, why, and what to do."""
    model = fit(SATURATED)
    reading = read_fit(model, SATURATED, cores=2)
    text = fit_text(model, reading)
    flat = " ".join(text.split())
    assert "The model does not describe these measurements" in flat
    assert all(" ".join(problem.split()) in flat for problem in reading.problems)
    assert "What to do:" in text
    assert "for the record only: sigma 1, kappa" in flat
    assert "N*" not in text.replace("N* = 0", "") and "X max" not in text


def levels_at(implementation: str, points: list[tuple[float, float]]) -> list[Measurement]:
    """Levels measured over 10 s whose (N, X) are the points, N whole, X to 0.1 queries/s."""
    now = [0]
    meter = load_meter_class(implementation)(clock=lambda: now[0])
    levels = []
    for concurrency, throughput in points:
        threads = round(concurrency)
        before = meter.snapshot()
        tokens = [meter.begin() for _ in range(threads)]
        now[0] += 10 * 10**9
        for token in tokens:
            meter.end(token)
        for _ in range(round(throughput * 10) - threads):
            meter.end(meter.begin())
        levels.append(Measurement(threads, meter.snapshot() - before))
    return levels


def test_the_report_states_a_good_fit_and_draws_it(implementation: str) -> None:
    """The page tells what a good fit means, lists N* and X max, and draws the model's curve."""
    levels = levels_at(implementation, published("specsdm91"))
    model = fit(level_points(levels))
    reading = read_fit(model, level_points(levels))
    assert reading.describes_data
    page = render_html(
        levels, model, database="d", implementation=implementation, duration_s=10, generated="g"
    )
    assert f'<p class="summary">{html.escape(reading.summary)}</p>' in page
    assert "N* (peak concurrency)" in page and "X max" in page
    assert 'class="warning"' not in page
    throughput_chart, _ = svgs_of(page)
    assert len(throughput_chart.findall(f"{SVG}polyline")) == 2  # model and linear scaling


def test_the_report_says_plainly_when_the_model_does_not_fit(implementation: str) -> None:
    """For saturated levels the page warns, gives the reasons and advice, and no peak."""
    levels = levels_at(implementation, [(round(n), x) for n, x in SATURATED])
    model = fit(level_points(levels))
    reading = read_fit(model, level_points(levels), cores=2)
    assert not reading.describes_data
    page = render_html(
        levels,
        model,
        database="d",
        implementation=implementation,
        duration_s=10,
        generated="g",
        reading=reading,
    )
    assert '<div class="warning"><p>The model does not describe these measurements' in page
    assert all(f"<li>{html.escape(problem)}</li>" in page for problem in reading.problems)
    assert "What to do:" in page
    assert "N* (peak concurrency)" not in page and "X max" not in page
    assert "linear scaling" not in page
    assert "USL fit: does not describe the data" in page  # drawn, labelled as such


def test_the_report_shows_the_first_error_of_a_level_and_an_interruption(
    implementation: str,
) -> None:
    """Errors in a level are shown with the first one; an interruption notice is on top."""
    meter = load_meter_class(implementation)()
    before = meter.snapshot()
    meter.end(meter.begin(), error=True)
    meter.end(meter.begin())
    failed = Measurement(
        4, meter.snapshot() - before, 'UniqueViolation: duplicate key <"id">\nDETAIL'
    )
    page = render_html(
        [failed],
        None,
        database="d",
        implementation=implementation,
        duration_s=1,
        generated="g",
        notice="Interrupted during level 2 of 6.",
    )
    assert "4 threads: 1 errors; the first: <code>UniqueViolation: duplicate key &lt;" in page
    assert "DETAIL" not in page
    assert '<div class="warning"><p>Interrupted during level 2 of 6.</p></div>' in page


def test_the_report_explains_every_column() -> None:
    """Each column of the levels table has its meaning below it."""
    page = render_html([], None, database="d", implementation="c", duration_s=1, generated="g")
    for name in ("threads", "N", "X", "R", "U", "S", "queries", "errors"):
        assert f"<dt>{name}</dt><dd>" in page
