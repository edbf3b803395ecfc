"""The triage table: each rule holds where its words say, and the worst names the incident."""

from __future__ import annotations

import dataclasses

import pytest

from querymeter.triage._rules import RULES, SEVERITIES, Figures, findings, severity_of

CALM = Figures(
    connected=True,
    queries=1000,
    error_ratio=0.001,
    baseline_error_ratio=0.001,
    baseline_error_mad=0.0005,
    response_time=0.010,
    baseline_response_time=0.010,
    baseline_response_mad=0.001,
    oldest_in_flight=0.01,
    stuck_after=30.0,
    pool_saturation=0.2,
    pool_waiting=0,
)


def graded(**changes: object) -> tuple[str, str]:
    return severity_of(findings(dataclasses.replace(CALM, **changes)))  # type: ignore[arg-type]


def test_calm_figures_are_ok() -> None:
    """Figures at their baseline, a pool a fifth used and nothing stuck grade OK."""
    assert graded() == ("OK", "no rule holds")


def test_the_table_is_ordered_worst_first() -> None:
    """Rules are listed from SEV-1 to SEV-3, so the first that holds is the worst."""
    order = [SEVERITIES.index(rule.severity) for rule in RULES]
    assert order == sorted(order)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"connected": False}, ("SEV-1", "cannot connect to the database")),
        ({"connected": None}, ("OK", "no rule holds")),
        ({"error_ratio": 0.5}, ("SEV-1", "most queries fail (error ratio at least 50 %)")),
        (
            {"error_ratio": 0.49},
            ("SEV-2", "error ratio at least 5 % and above the baseline's band"),
        ),
        (
            {"pool_saturation": 1.0, "pool_waiting": 3},
            ("SEV-1", "the pool is out of connections and requests wait"),
        ),
        (
            {"pool_saturation": 1.0},
            ("SEV-2", "the pool is at least 90 % used, or requests wait for it"),
        ),
        ({"pool_saturation": 0.89}, ("SEV-3", "the pool is at least 75 % used")),
        ({"pool_saturation": 0.74}, ("OK", "no rule holds")),
        ({"response_time": 0.030}, ("SEV-2", "response time at least 3 times the baseline's")),
        ({"response_time": 0.0299}, ("SEV-3", "response time at least 1.5 times the baseline's")),
        ({"response_time": 0.0149}, ("OK", "no rule holds")),
        ({"oldest_in_flight": 30.0}, ("SEV-2", "a query in flight longer than stuck_after")),
        (
            {"oldest_in_flight": 10.0},
            ("SEV-3", "a query in flight longer than a third of stuck_after"),
        ),
        ({"oldest_in_flight": 9.9}, ("OK", "no rule holds")),
        (
            {"error_ratio": 0.02},
            ("SEV-3", "error ratio at least 1 % and above the baseline's band"),
        ),
        ({"error_ratio": 0.009}, ("OK", "no rule holds")),
    ],
)
def test_each_rule_holds_at_its_threshold(
    changes: dict[str, object], expected: tuple[str, str]
) -> None:
    """Each rule holds from its threshold on, and the one below it holds just under it."""
    assert graded(**changes) == expected


def test_ratios_of_a_few_queries_say_nothing() -> None:
    """Four queries, all failed, are not "most queries fail": too few to be a ratio."""
    assert graded(queries=4, error_ratio=1.0) == ("OK", "no rule holds")


def test_errors_within_the_baseline_band_are_normal() -> None:
    """A service that always fails 8 % of its queries is not graded on them."""
    usual = {"baseline_error_ratio": 0.08, "baseline_error_mad": 0.01}
    assert graded(error_ratio=0.09, **usual) == ("OK", "no rule holds")
    assert graded(error_ratio=0.2, **usual)[0] == "SEV-2"


def test_a_slowdown_of_less_than_five_ms_is_noise() -> None:
    """0.3 ms against 0.1 ms is three times the baseline, but no one feels 0.2 ms."""
    assert graded(
        response_time=0.0003, baseline_response_time=0.0001, baseline_response_mad=0.0
    ) == (
        "OK",
        "no rule holds",
    )


def test_without_a_baseline_only_absolute_rules_hold() -> None:
    """No baseline: a slow response time alone grades nothing, errors over 5 % still do."""
    no_baseline = {
        "baseline_response_time": None,
        "baseline_response_mad": None,
        "baseline_error_ratio": None,
        "baseline_error_mad": None,
    }
    assert graded(response_time=10.0, **no_baseline) == ("OK", "no rule holds")
    assert graded(error_ratio=0.06, **no_baseline)[0] == "SEV-2"


def test_every_holding_rule_is_listed_with_its_figures() -> None:
    """Findings list every rule that holds, worst first, each with the figures behind it."""
    found = findings(dataclasses.replace(CALM, connected=False, oldest_in_flight=45.0))
    assert [f.severity for f in found] == ["SEV-1", "SEV-2", "SEV-3"]
    assert "45.0 s" in found[1].detail
