"""querymeter.usl._tdist: Student's t quantile against scipy, closed forms and textbook values."""

from __future__ import annotations

import math

import pytest

from querymeter.usl import t_quantile

T_PROBS = [1e-12, 1e-6, 1e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.4, 0.6, 0.75, 0.9, 0.95,
           0.975, 0.99, 0.999, 1 - 1e-6]  # fmt: skip
T_DFS = [0.5, 1, 1.5, 2, 3, 4, 5, 8, 10, 19.5, 20, 21, 30, 100, 1e3, 1e4, 1e5]


@pytest.mark.parametrize("df", T_DFS)
def test_t_quantile_matches_scipy(df: float) -> None:
    """t_quantile agrees with scipy.stats.t.ppf to 1e-11 relative."""
    stats = pytest.importorskip("scipy.stats")
    for p in T_PROBS:
        assert t_quantile(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-11)


def test_t_quantile_closed_forms() -> None:
    """For df = 1 (Cauchy) and df = 2 the quantile has a closed form, matched to 1e-13."""
    for p in (1e-9, 0.01, 0.3, 0.4999, 0.5001, 0.8, 0.975, 1 - 1e-9):
        # tan(pi (p - 1/2)) written as -+cot(pi min(p, 1 - p)), accurate in the tails.
        cauchy = -1 / math.tan(math.pi * p) if p < 0.5 else 1 / math.tan(math.pi * (1 - p))
        assert t_quantile(p, 1) == pytest.approx(cauchy, rel=1e-13)
        exact = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
        assert t_quantile(p, 2) == pytest.approx(exact, rel=1e-13)
    assert t_quantile(0.5, 7) == 0.0


def test_t_quantile_known_values() -> None:
    """Textbook values: t(0.975, 8) = 2.306004, t(0.95, 10) = 1.812461."""
    assert t_quantile(0.975, 8) == pytest.approx(2.306004135204166, rel=1e-13)
    assert t_quantile(0.95, 10) == pytest.approx(1.812461122811676, rel=1e-13)


@pytest.mark.parametrize(("p", "df"), [(0.0, 5), (1.0, 5), (0.5, 0), (0.5, -1), (0.5, math.inf)])
def test_t_quantile_rejects_invalid_arguments(p: float, df: float) -> None:
    """p outside (0, 1) or df not finite and positive is a ValueError."""
    with pytest.raises(ValueError, match="must be"):
        t_quantile(p, df)
