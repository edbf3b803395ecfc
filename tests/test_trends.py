"""querymeter.trends: Theil-Sen against scipy, Sen's ranks worked by hand, simulated drifts."""

from __future__ import annotations

import contextlib
import io
import math
import random
import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from querymeter.trends import MAX_POINTS, Trend, trend

DAY = 86_400.0
START = 1_700_000_000.0  # a Unix time: late 2023


def drifting(
    seed: int, drift_per_day: float, *, days: int = 14, step: float = 3600.0
) -> list[tuple[float, float]]:
    """A 20 ms statement, Gaussian noise of 10 % (2 ms), drifting linearly, one point per step."""
    rng = random.Random(seed)
    count = int(days * DAY / step)
    return [
        (START + i * step, 20.0 + drift_per_day * i * step / DAY + rng.gauss(0.0, 2.0))
        for i in range(count)
    ]


def pairwise_slopes(points: list[tuple[float, float]]) -> list[float]:
    """Every slope between two points with distinct t, sorted: the order statistics' oracle."""
    return sorted(
        (y_b - y_a) / (t_b - t_a)
        for a, (t_a, y_a) in enumerate(points)
        for b, (t_b, y_b) in enumerate(points)
        if t_b > t_a and a != b
    )


# --- agreement with scipy.stats.theilslopes ---------------------------------------------


@pytest.mark.parametrize("n", [5, 6, 10, 31, 100, 400])
@pytest.mark.parametrize("level", [0.8, 0.95, 0.99])
def test_agrees_with_scipy_on_random_data(n: int, level: float) -> None:
    """Slope, intercept (scipy's 'joint' method) and bounds equal scipy's on data without ties."""
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(n * 1000 + int(level * 100))
    for _ in range(10):
        ts = [rng.uniform(-1e6, 1e6) for _ in range(n)]
        ys = [rng.uniform(-5, 5) + 3e-6 * t + rng.expovariate(1.0) for t in ts]
        result = trend(zip(ts, ys, strict=True), level=level)
        oracle = stats.theilslopes(ys, ts, level, method="joint")
        assert result.slope == pytest.approx(float(oracle.slope), rel=1e-9, abs=0)
        assert result.intercept == pytest.approx(float(oracle.intercept), rel=1e-9, abs=0)
        # Where Sen's rank falls outside the slopes, scipy clamps it to the
        # extreme slope and we give no bound: then scipy's bound is that slope.
        slopes = pairwise_slopes(list(zip(ts, ys, strict=True)))
        low = slopes[0] if result.low == -math.inf else result.low
        high = slopes[-1] if result.high == math.inf else result.high
        assert low == pytest.approx(float(oracle.low_slope), rel=1e-9, abs=0)
        assert high == pytest.approx(float(oracle.high_slope), rel=1e-9, abs=0)
        assert result.n == n
        assert result.level == level


def test_agrees_with_scipy_with_tied_times() -> None:
    """Repeated times: pairs at equal t are left out; Sen's tie correction matches scipy's."""
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for n in (8, 20, 60):
        ts = [float(rng.randrange(n // 3)) * 3600.0 for _ in range(n)]
        ts[0], ts[1] = 0.0, 3600.0  # at least two distinct times
        ys = [rng.gauss(10.0, 1.0) + t / 7200.0 for t in ts]
        result = trend(zip(ts, ys, strict=True))
        oracle = stats.theilslopes(ys, ts, 0.95, method="joint")
        assert result.slope == pytest.approx(float(oracle.slope), rel=1e-9, abs=0)
        assert result.intercept == pytest.approx(float(oracle.intercept), rel=1e-9, abs=0)
        assert (result.low, result.high) == pytest.approx(
            (float(oracle.low_slope), float(oracle.high_slope)), rel=1e-9, abs=0
        )


# --- the ranks of Sen's interval, worked by hand ----------------------------------------


def test_bounds_are_the_order_statistics_sen_prescribes() -> None:
    """n = 10, no ties, 95 %: N = 45, V = 125, C = 1.96 * 11.18 = 21.91, so ranks 12 and 34."""
    # M1 = (45 - 21.91) / 2 = 11.54 -> 12;  M2 + 1 = (45 + 21.91) / 2 + 1 = 33.46 + 1 -> 34.
    rng = random.Random(3)
    points = [(float(t), rng.gauss(0.0, 1.0)) for t in range(10)]
    slopes = pairwise_slopes(points)
    assert len(slopes) == 45
    result = trend(points, level=0.95)
    assert result.low == slopes[12 - 1]
    assert result.high == slopes[34 - 1]
    assert result.slope == slopes[22]  # the 23rd of 45

    # Tied values leave V alone (Sen's V has ties among the times only; scipy
    # also subtracts ties among the values): still ranks 12 and 34.
    rounded = [(t, float(round(y))) for t, y in points]
    assert len({y for _, y in rounded}) < 10
    slopes = pairwise_slopes(rounded)
    result = trend(rounded, level=0.95)
    assert (result.low, result.high) == (slopes[12 - 1], slopes[34 - 1])


def test_bounds_at_90_percent_and_with_one_tie() -> None:
    """90 %: ranks 13 and 33; one tied pair of times: N = 44, V = 124, ranks 11 and 34."""
    # 90 %: C = 1.645 * 11.18 = 18.39; M1 = 13.30 -> 13; M2 + 1 = 31.70 -> 32, + 1 = 33.
    rng = random.Random(4)
    points = [(float(t), rng.gauss(0.0, 1.0)) for t in range(10)]
    slopes = pairwise_slopes(points)
    result = trend(points, level=0.90)
    assert (result.low, result.high) == (slopes[13 - 1], slopes[33 - 1])

    # t = 0, 0, 1, ..., 8: V = (10*9*25 - 2*1*9) / 18 = 124, C = 1.96 * 11.14 = 21.83;
    # M1 = (44 - 21.83) / 2 = 11.09 -> 11;  (44 + 21.83) / 2 = 32.91 -> 33, + 1 = 34.
    tied = [(0.0, rng.gauss(0.0, 1.0))] + [(float(t), rng.gauss(0.0, 1.0)) for t in range(9)]
    slopes = pairwise_slopes(tied)
    assert len(slopes) == 44
    result = trend(tied, level=0.95)
    assert (result.low, result.high) == (slopes[11 - 1], slopes[34 - 1])
    assert result.slope == (slopes[21] + slopes[22]) / 2  # the median of an even count


def test_too_few_points_leave_the_slope_unbounded() -> None:
    """With 3 or 4 points Sen's lower rank is below 1 at 95 %: no bound, so never significant."""
    # n = 3: N = 3, C = 1.96 * sqrt(66 / 18) = 3.75 > N; n = 4: C = 1.96 * sqrt(156 / 18) = 5.77,
    # M1 = 0.12 -> 0.  Perfectly rising points are still not evidence of a trend.
    for n in (3, 4):
        result = trend([(float(t), float(t)) for t in range(n)])
        assert result.slope == 1.0
        assert (result.low, result.high) == (-math.inf, math.inf)
        assert not result.significant
    # n = 5: N = 10, C = 1.96 * sqrt(300 / 18) = 8.0015, M1 = 0.9993 -> 1: the smallest slope.
    result = trend([(float(t), float(t) + 0.1 * (t % 2)) for t in range(5)])
    assert result.low == pytest.approx(0.9)
    assert result.significant


# --- simulation: the silent killer ------------------------------------------------------

SEEDS = 200


def binomial_quantile(p: float, size: int, prob: float) -> float:
    """The p-quantile of a binomial(size, prob) count, as a fraction of size (scipy's)."""
    stats = pytest.importorskip("scipy.stats")
    return float(stats.binom.ppf(p, size, prob)) / size


def test_a_query_one_ms_slower_every_day_is_found_within_two_weeks() -> None:
    """1 ms/day on 20 ms with 10 % noise, hourly for 14 days: significant and bounded right."""
    true_slope = 1.0 / DAY  # ms per second
    for level in (0.95, 0.99):
        significant = covered = 0
        for seed in range(SEEDS):
            result = trend(drifting(seed, 1.0), level=level)
            significant += result.significant
            covered += result.significant and result.low <= true_slope <= result.high
        # The drift is some 37 standard errors of the slope (2 ms / sqrt(sum of
        # squared deviations of t, 5488 days^2) = 0.027 ms/day): every seed sees it.
        assert significant == SEEDS
        # Bounding the true slope is what the level promises: a method with the
        # nominal coverage falls below this floor in fewer than 1 in 1000 sets
        # of seeds (0.895 at 95 %, 0.96 at 99 %).
        assert covered / SEEDS >= binomial_quantile(0.001, SEEDS, level)
        if level == 0.99:
            # Found and bounded in at least 95 % of seeds (measured: 100 %).
            assert covered / SEEDS >= 0.95


@pytest.mark.parametrize("level", [0.95, 0.99])
def test_a_flat_series_rarely_raises_a_false_alarm(level: float) -> None:
    """No drift: significant in about 1 - level of seeds, hourly for 14 days, daily for 60."""
    hourly = sum(trend(drifting(seed, 0.0), level=level).significant for seed in range(SEEDS))
    daily_seeds = 2000
    daily = sum(
        trend(drifting(seed, 0.0, days=60, step=DAY), level=level).significant
        for seed in range(daily_seeds)
    )
    # Ceilings that a test at the nominal level exceeds in fewer than 1 in 1000 sets of
    # seeds: 10.5 % and 6.55 % at 95 %, 4 % and 1.75 % at 99 % (measured: 3 %, 4.75 %;
    # 0 %, 0.65 %).
    assert hourly / SEEDS <= binomial_quantile(0.999, SEEDS, 1 - level)
    assert daily / daily_seeds <= binomial_quantile(0.999, daily_seeds, 1 - level)
    # Nor is the test so conservative that it never fires.
    assert daily / daily_seeds >= binomial_quantile(0.001, daily_seeds, 1 - level)


def test_outliers_barely_move_the_slope() -> None:
    """20 % of points made spikes of 3-10x: Theil-Sen stays within 0.15 ms/day, OLS does not."""
    stats = pytest.importorskip("scipy.stats")
    worst_theil_sen = worst_least_squares = 0.0
    for seed in range(20):
        points = drifting(seed, 1.0)
        rng = random.Random(seed + 500)
        for index in rng.sample(range(len(points)), k=len(points) // 5):
            t, y = points[index]
            points[index] = (t, y * rng.uniform(3.0, 10.0))
        result = trend(points)
        least_squares = stats.linregress([t for t, _ in points], [y for _, y in points])
        worst_theil_sen = max(worst_theil_sen, abs(result.per_day - 1.0))
        worst_least_squares = max(worst_least_squares, abs(least_squares.slope * DAY - 1.0))
    assert worst_theil_sen < 0.15
    assert worst_least_squares > 1.0  # the same spikes throw least squares off


# --- invariances (exact on integers, whose differences floats hold exactly) -------------

integer_points = st.lists(
    st.tuples(st.integers(-10_000, 10_000), st.integers(-10_000, 10_000)),
    min_size=3,
    max_size=40,
).filter(lambda points: len({t for t, _ in points}) > 1)


def slope_and_bounds(result: Trend) -> tuple[float, float, float]:
    """The slope and its bounds."""
    return (result.slope, result.low, result.high)


@settings(max_examples=150, deadline=None)
@given(points=integer_points, shift=st.integers(-(10**6), 10**6), data=st.data())
def test_invariances(points: list[tuple[int, int]], shift: int, data: st.DataObject) -> None:
    """Order, a shift of t or y, scaling y and flipping its sign act on the trend as they should."""
    result = trend(points)
    assert result.low <= result.slope <= result.high
    assert trend(data.draw(st.permutations(points))) == result

    shifted_y = trend([(t, y + shift) for t, y in points])
    assert slope_and_bounds(shifted_y) == slope_and_bounds(result)
    assert shifted_y.intercept == pytest.approx(result.intercept + shift, rel=1e-12, abs=1e-6)

    shifted_t = trend([(t + shift, y) for t, y in points])
    assert slope_and_bounds(shifted_t) == slope_and_bounds(result)

    scaled = trend([(t, y * 1024) for t, y in points])
    assert (scaled.slope, scaled.low, scaled.high) == (
        result.slope * 1024,
        result.low * 1024,
        result.high * 1024,
    )

    flipped = trend([(t, -y) for t, y in points])
    assert (flipped.slope, flipped.low, flipped.high) == (-result.slope, -result.high, -result.low)


def test_a_perfect_line_is_recovered_exactly() -> None:
    """Points on y = 3 + 2t give slope 2, intercept 3 and bounds 2 to 2."""
    result = trend([(t, 3 + 2 * t) for t in range(20)])
    assert (result.slope, result.low, result.high, result.intercept) == (2.0, 2.0, 2.0, 3.0)
    assert result.at(100) == 203.0
    assert result.significant


def test_accepts_any_real_numbers_and_any_iterable() -> None:
    """Ints, Fractions and floats, from a generator, in any order."""
    points = ((Fraction(t, 2), 5 - t) for t in (4, 0, 2, 6, 8))
    result = trend(points)
    assert result.slope == -2.0
    assert result.n == 5


def test_accepts_numpy_rows() -> None:
    """An (n, 2) numpy array is a series of rows; numpy's floats are real numbers."""
    np = pytest.importorskip("numpy")
    result = trend(np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 5.0], [3.0, 7.0]]))
    assert (result.slope, result.intercept, result.n) == (2.0, 1.0, 4)


# --- reading it -------------------------------------------------------------------------


def test_per_day_and_text() -> None:
    """per_day is slope * 86400; the text gives the slope per day, its bounds and the level."""
    drift = Trend(slope=1.1 / DAY, low=0.8 / DAY, high=1.4 / DAY, intercept=20.0, n=336, level=0.95)
    assert drift.per_day == pytest.approx(1.1, rel=1e-15)
    assert drift.format("ms") == "+1.1 ms/day (0.8 to 1.4, 95 %)"
    assert str(drift) == "+1.1/day (0.8 to 1.4, 95 %)"
    # A narrow interval gets the digits that tell its ends apart.
    narrow = Trend(slope=1.02 / DAY, low=0.96 / DAY, high=1.09 / DAY, intercept=0, n=336,
                   level=0.95)  # fmt: skip
    assert narrow.format("ms") == "+1.02 ms/day (0.96 to 1.09, 95 %)"
    falling = Trend(slope=-250e3 / DAY, low=-310e3 / DAY, high=-12e3 / DAY, intercept=0, n=9,
                    level=0.99)  # fmt: skip
    assert falling.format("ns") == "-250000 ns/day (-310000 to -12000, 99 %)"
    small = Trend(slope=0.0123 / DAY, low=-0.004 / DAY, high=0.031 / DAY, intercept=0, n=50,
                  level=0.9)  # fmt: skip
    assert str(small) == "+0.012/day (-0.004 to 0.031, 90 %)"
    assert not small.significant
    unbounded = Trend(slope=0.0, low=-math.inf, high=math.inf, intercept=0, n=3, level=0.95)
    assert str(unbounded) == "+0.0/day (-inf to inf, 95 %)"
    # No "-0.0": a slope that rounds to zero reads +0.0 whatever its sign.
    flat = Trend(slope=-0.001 / DAY, low=-0.5 / DAY, high=0.6 / DAY, intercept=0, n=99,
                 level=0.95)  # fmt: skip
    assert str(flat) == "+0.0/day (-0.5 to 0.6, 95 %)"


def test_is_frozen() -> None:
    """A Trend is an immutable value."""
    result = trend([(0, 1), (1, 2), (2, 4)])
    with pytest.raises(AttributeError):
        result.slope = 0.0  # type: ignore[misc]


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("series", "message"),
    [
        ([(0, 1), (1, 2)], "at least 3 points, got 2"),
        ([], "at least 3 points, got 0"),
        ([(5, 1), (5, 2), (5, 3)], "same t"),
        ([(0, 1), (1, math.nan), (2, 3)], "point 1: value must be finite"),
        ([(0, 1), (math.inf, 2), (2, 3)], "point 1: t must be finite"),
        ([(0, 1), (1, 2, 3), (2, 3)], "point 1: expected a \\(t, value\\) pair, got 3 items"),
        ([(0, 1e308), (1, -1e308), (2, 0)], "too large"),
    ],
)
def test_bad_values_raise_value_error(series: list[tuple[float, ...]], message: str) -> None:
    """Too few points, one time only, non-finite numbers, wrong pair sizes, overflow."""
    with pytest.raises(ValueError, match=message):
        trend(series)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("series", "message"),
    [
        ("abc", "not a string"),
        (42, "got int"),
        ([(0, 1), 7, (2, 3)], "point 1: expected a \\(t, value\\) pair, got int"),
        ([(0, 1), (1, "2"), (2, 3)], "point 1: value must be a real number, got str"),
        ([(0, 1), (True, 2), (2, 3)], "point 1: t must be a real number, got bool"),
        ([(0, 1), (None, 2), (2, 3)], "point 1: t must be a real number, got NoneType"),
    ],
)
def test_bad_types_raise_type_error(series: object, message: str) -> None:
    """What is not an iterable of pairs of real numbers."""
    with pytest.raises(TypeError, match=message):
        trend(series)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", [0, 1, 1.5, -0.1, math.nan, math.inf])
def test_level_outside_the_open_unit_interval_raises(level: float) -> None:
    """level must be strictly between 0 and 1."""
    with pytest.raises(ValueError, match="level must be in \\(0, 1\\)"):
        trend([(0, 1), (1, 2), (2, 3)], level=level)


def test_level_of_the_wrong_type_raises() -> None:
    """A level given as text or as True is a type error."""
    for level in ("0.95", True, None):
        with pytest.raises(TypeError, match="level must be a real number"):
            trend([(0, 1), (1, 2), (2, 3)], level=level)  # type: ignore[arg-type]


def test_too_many_points_raise_before_any_work() -> None:
    """Above MAX_POINTS the series must be aggregated first."""
    with pytest.raises(ValueError, match=f"at most {MAX_POINTS} points"):
        trend((float(t), 1.0) for t in range(MAX_POINTS + 1))


# --- the documentation ------------------------------------------------------------------


def test_the_documented_example_prints_what_it_says() -> None:
    """docs/trends.md's example prints, line by line, the comments of its print calls."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "trends.md").read_text()
    example = re.findall(r"```python\n(.*?)```", text.split("## Example", 1)[1], re.S)[0]
    expected = re.findall(r"^print\(.*?\)\s+# (.*)$", example, re.M)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(example, "docs/trends.md", "exec"), {})
    assert output.getvalue().splitlines() == expected
    assert len(expected) == 3
