"""The demo report: self-contained HTML whose SVG charts show every level and the model."""

from __future__ import annotations

import itertools
import math
import re
import xml.etree.ElementTree as ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from querymeter.demo import Level
from querymeter.report import nice_ticks, render_html
from querymeter.usl import Model, fit

from .conftest import load_meter_class

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


def levels_of(implementation: str, model: Model) -> list[Level]:
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
        levels.append(Level(threads, meter.snapshot() - before))
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


def test_nice_ticks_refuse_a_non_finite_range() -> None:
    """A non-finite range raises ValueError."""
    with pytest.raises(ValueError, match="finite range"):
        nice_ticks(0, math.inf)
