"""The report as JSON: every figure a number or null, from the counters, as the laws define them."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from querymeter.report import json_document, read_fit, render_json
from querymeter.usl import Model, fit

from .levels import LEVELS, SECOND

RUN: dict[str, Any] = {
    "version": "9.8.7",
    "implementation": "c",
    "database": "SQLite 3 (embedded, /tmp/x.db)",
    "duration_s": 2.0,
    "levels_requested": (1, 2, 4, 8, 16),
}


def no_constants(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


def rendered(model: Model | None, **extra: Any) -> Any:
    text = render_json([level.measurement() for level in LEVELS], model, **RUN, **extra)
    return json.loads(text, parse_constant=no_constants)


def test_each_level_has_its_counters_and_the_laws_figures() -> None:
    """Throughput, concurrency, R, U and S are the counters' quotients; undefined ones are null."""
    document = rendered(None, fit_problem="not asked for")
    assert [level["threads"] for level in document["levels"]] == [1, 2, 4, 8]
    for counters, level in zip(LEVELS, document["levels"], strict=True):
        seconds = counters.duration_ns / SECOND
        assert level["duration_ns"] == counters.duration_ns
        assert level["queries"] == counters.queries and level["errors"] == counters.errors
        assert level["total_ns"] == counters.total_ns and level["busy_ns"] == counters.busy_ns
        assert level["throughput"] == pytest.approx(counters.queries / seconds, rel=1e-12)
        assert level["concurrency"] == pytest.approx(counters.total_ns / counters.duration_ns)
        assert level["utilization"] == pytest.approx(counters.busy_ns / counters.duration_ns)
        if counters.queries:
            per_query = counters.queries * SECOND
            assert level["response_time_s"] == pytest.approx(counters.total_ns / per_query)
            assert level["service_time_s"] == pytest.approx(counters.busy_ns / per_query)
        else:
            assert level["response_time_s"] is None and level["service_time_s"] is None
        assert level["first_error"] == counters.first_error
    # Little's Law holds in what is written, not only in what was measured.
    second = document["levels"][1]
    assert second["concurrency"] == pytest.approx(
        second["throughput"] * second["response_time_s"], rel=1e-12
    )


def test_the_run_is_described_first_and_the_report_last() -> None:
    """The run's details lead, in a fixed order; where the HTML went closes the document."""
    document = rendered(None, interrupted=True, report="/tmp/r.html")
    assert list(document) == [
        "querymeter",
        "core",
        "database",
        "duration_s",
        "levels_requested",
        "interrupted",
        "levels",
        "model",
        "fit",
        "report",
    ]
    assert document["querymeter"] == "9.8.7" and document["core"] == "c"
    assert document["levels_requested"] == [1, 2, 4, 8, 16]
    assert document["interrupted"] is True and document["report"] == "/tmp/r.html"
    assert document["model"] is None


def test_an_unbounded_peak_and_maximum_are_null() -> None:
    """sigma = kappa = 0 has no peak and no maximum: JSON has no infinity, so both are null."""
    model = Model(0.0, 0.0, 500.0)
    assert math.isinf(model.peak_concurrency) and math.isinf(model.max_throughput)
    document = rendered(model)
    assert document["model"]["peak_concurrency"] is None
    assert document["model"]["max_throughput"] is None
    assert document["model"]["lambda"] == 500.0


def test_a_fitted_model_and_its_reading_are_written_as_given() -> None:
    """The coefficients are the model's; the fit section says what read_fit says, word for word."""
    points = [(1.0, 1000.0), (2.0, 1900.0), (4.0, 3400.0), (8.0, 5000.0), (16.0, 5200.0)]
    model = fit(points)
    reading = read_fit(model, points, cores=4)
    levels = [level.measurement() for level in LEVELS]
    document = json_document(levels, model, reading=reading, **RUN)
    assert document["model"]["sigma"] == model.sigma
    assert document["model"]["kappa"] == model.kappa
    assert document["model"]["peak_concurrency"] == pytest.approx(
        math.sqrt((1 - model.sigma) / model.kappa)
    )
    assert document["model"]["n_points"] == 5
    assert document["fit"] == {
        "describes_data": reading.describes_data,
        "summary": reading.summary,
        "problems": list(reading.problems),
        "cautions": list(reading.cautions),
        "advice": list(reading.advice),
    }
    assert json.loads(render_json(levels, model, reading=reading, **RUN)) == document
