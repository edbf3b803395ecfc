"""The triage table: which figures make an incident SEV-1, SEV-2 or SEV-3, and why.

Each rule is a plain predicate over the figures health() gathered; the first
rule that holds at the worst severity names the incident.  The thresholds are
the ones on-call runbooks commonly use for a database client: outright
failure (cannot connect, most queries fail, the pool is out of connections
with requests waiting) is SEV-1; a large excess over the baseline is SEV-2; a
measurable excess that users may not feel yet is SEV-3.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RULES", "SEVERITIES", "Figures", "Finding", "Rule", "findings", "severity_of"]

#: Severities from the worst; "OK" when no rule holds.
SEVERITIES = ("SEV-1", "SEV-2", "SEV-3", "OK")

#: Fewer completed queries than this in the window say nothing of a ratio.
MIN_QUERIES = 5
#: A response time's excess must also be this large, s: 0.2 ms against 0.1 ms is noise.
MIN_EXCESS_S = 0.005
#: The MAD of a normal sample is 0.6745 σ: this makes it a σ.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True, slots=True)
class Figures:
    """What the rules look at; None where it is not known."""

    connected: bool | None
    queries: int
    error_ratio: float | None
    baseline_error_ratio: float | None
    baseline_error_mad: float | None
    response_time: float | None
    baseline_response_time: float | None
    baseline_response_mad: float | None
    oldest_in_flight: float | None
    stuck_after: float
    #: The fullest pool: connections in use over the pool's limit, 0..1.
    pool_saturation: float | None
    pool_waiting: int


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of the triage table."""

    severity: str
    #: The rule in words, as the docs' table and ``str(health)`` show it.
    text: str
    holds: Callable[[Figures], bool]


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule that holds, with the figures that made it hold."""

    severity: str
    rule: str
    detail: str


def _errors_above_band(f: Figures, floor: float) -> bool:
    """The error ratio is at least ``floor`` and above the baseline's band (3 σ)."""
    if f.error_ratio is None or f.queries < MIN_QUERIES or f.error_ratio < floor:
        return False
    if f.baseline_error_ratio is None:
        return True
    band = 3 * MAD_TO_SIGMA * (f.baseline_error_mad or 0.0)
    return f.error_ratio > max(f.baseline_error_ratio + band, 2 * f.baseline_error_ratio)


def _slower_than_baseline(f: Figures, factor: float) -> bool:
    """The response time is ``factor`` times the baseline's and above its band (3 σ)."""
    if f.response_time is None or f.baseline_response_time is None or f.queries < MIN_QUERIES:
        return False
    band = 3 * MAD_TO_SIGMA * (f.baseline_response_mad or 0.0)
    return (
        f.response_time >= factor * f.baseline_response_time
        and f.response_time > f.baseline_response_time + band
        and f.response_time - f.baseline_response_time >= MIN_EXCESS_S
    )


def _stuck(f: Figures, fraction: float) -> bool:
    return f.oldest_in_flight is not None and f.oldest_in_flight >= fraction * f.stuck_after


def _pool_at(f: Figures, level: float) -> bool:
    return f.pool_saturation is not None and f.pool_saturation >= level


#: The triage table, worst first; docs/incident-response.md shows it.
RULES: tuple[Rule, ...] = (
    Rule("SEV-1", "cannot connect to the database", lambda f: f.connected is False),
    Rule(
        "SEV-1",
        "most queries fail (error ratio at least 50 %)",
        lambda f: f.error_ratio is not None and f.queries >= MIN_QUERIES and f.error_ratio >= 0.5,
    ),
    Rule(
        "SEV-1",
        "the pool is out of connections and requests wait",
        lambda f: _pool_at(f, 1.0) and f.pool_waiting > 0,
    ),
    Rule(
        "SEV-2",
        "error ratio at least 5 % and above the baseline's band",
        lambda f: _errors_above_band(f, 0.05),
    ),
    Rule(
        "SEV-2",
        "response time at least 3 times the baseline's",
        lambda f: _slower_than_baseline(f, 3.0),
    ),
    Rule("SEV-2", "a query in flight longer than stuck_after", lambda f: _stuck(f, 1.0)),
    Rule(
        "SEV-2",
        "the pool is at least 90 % used, or requests wait for it",
        lambda f: _pool_at(f, 0.9) or f.pool_waiting > 0,
    ),
    Rule(
        "SEV-3",
        "error ratio at least 1 % and above the baseline's band",
        lambda f: _errors_above_band(f, 0.01),
    ),
    Rule(
        "SEV-3",
        "response time at least 1.5 times the baseline's",
        lambda f: _slower_than_baseline(f, 1.5),
    ),
    Rule(
        "SEV-3",
        "a query in flight longer than a third of stuck_after",
        lambda f: _stuck(f, 1 / 3),
    ),
    Rule("SEV-3", "the pool is at least 75 % used", lambda f: _pool_at(f, 0.75)),
)


def _detail(rule: Rule, f: Figures) -> str:
    """The figures behind a rule, in words."""

    def pct(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{1000 * value:.1f} ms"

    text = rule.text
    if "connect" in text:
        return "the check query did not succeed"
    if "error ratio" in text or "queries fail" in text:
        return (
            f"{pct(f.error_ratio)} of {f.queries} queries failed "
            f"(baseline {pct(f.baseline_error_ratio)})"
        )
    if "response time" in text:
        return f"{ms(f.response_time)} against a baseline of {ms(f.baseline_response_time)}"
    if "in flight" in text:
        return f"the oldest has run {f.oldest_in_flight or 0.0:.1f} s"
    return f"{pct(f.pool_saturation)} of the pool in use, {f.pool_waiting} waiting"


def findings(figures: Figures, rules: tuple[Rule, ...] = RULES) -> list[Finding]:
    """Every rule that holds, worst first, with its figures."""
    return [Finding(r.severity, r.text, _detail(r, figures)) for r in rules if r.holds(figures)]


def severity_of(found: list[Finding]) -> tuple[str, str]:
    """The worst severity and the rule that made it, ("OK", "no rule holds") if none."""
    if not found:
        return "OK", "no rule holds"
    return found[0].severity, found[0].rule
