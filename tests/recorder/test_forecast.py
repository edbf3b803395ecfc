"""Recorder forecasts: simulated growth of +3 %/week and a known USL model, to their limits."""

from __future__ import annotations

import contextlib
import math
import random

import pytest

from querymeter.meter import Meter as MeterType
from querymeter.recorder import FlightRecorder
from querymeter.recorder._baseline import steps
from querymeter.recorder._forecast import Forecast, Horizon
from querymeter.recorder._trends import NotEnoughHistory
from querymeter.usl import Model

NS = 1_000_000_000
HOUR = 3600.0
WEEK = 7 * 86_400.0
COARSE = ((HOUR, 24 * 90),)
RATE = math.log(1.03) / WEEK  # +3 %/week, per second


def sequential(
    meter_type: type[MeterType],
    *,
    weeks: int,
    growth: float = RATE,
    u0: float = 0.6,
    per_hour: int = 60,
    noise: float = 0.1,
    seed: int = 1,
    resolutions: tuple[tuple[float, int], ...] = COARSE,
) -> FlightRecorder:
    """Queries one at a time, each 36 s at u0 = 0.6: their number per hour grows at ``growth``."""
    rng = random.Random(seed)
    now = [1_000_000]
    meter = meter_type(clock=lambda: now[0])
    recorder = FlightRecorder(meter, resolutions)
    recorder.take()
    service_ns = round(u0 * HOUR / per_hour * NS)
    for hour in range(weeks * 168):
        start = now[0]
        count = max(1, round(per_hour * math.exp(growth * hour * HOUR) * rng.gauss(1.0, noise)))
        for _ in range(min(count, 99)):
            with meter.track():
                now[0] += service_ns
        now[0] = start + round(HOUR * NS)
        recorder.take()
    return recorder


def test_utilization_and_pool_horizons_at_3_percent_a_week(Meter: type[MeterType]) -> None:
    """Eight weeks of +3 %/week: the growth's bounds hold 3 %, the true horizons lie in theirs."""
    recorder = sequential(Meter, weeks=8)
    forecast = recorder.forecast(utilization=0.8, pool=1)
    assert isinstance(forecast, Forecast)
    assert forecast.days == pytest.approx(56.0)
    low, high = forecast.growth_per_week_bounds
    assert low < 0.03 < high
    assert forecast.growth_per_week == pytest.approx(0.03, abs=0.005)
    assert forecast.service_time == pytest.approx(36.0)
    assert forecast.response_time == pytest.approx(36.0)
    now_utilization = 0.6 * 1.03**8
    assert forecast.utilization == pytest.approx(now_utilization, rel=0.05)
    assert forecast.model is None  # one query at a time: too few concurrency levels
    utilization = forecast.horizon("utilization")
    assert isinstance(utilization, Horizon)
    truth = math.log(0.8 / now_utilization) / RATE
    assert utilization.earliest <= truth <= utilization.latest
    assert utilization.seconds == pytest.approx(truth, rel=0.25)
    assert utilization.throughput == pytest.approx(0.8 / 36.0)
    # A pool of one connection fills when the mean concurrency (= U here) reaches 1.
    pool = forecast.horizon("pool")
    assert pool is not None
    truth = math.log(1.0 / now_utilization) / RATE
    assert pool.earliest <= truth <= pool.latest
    assert pool.seconds / WEEK == pytest.approx(9.2, abs=1.0)
    assert forecast.horizon("peak") is None
    text = str(forecast)
    assert text.startswith("at +")
    assert "%/week" in text
    assert "the pool (1 connection) saturates in about" in text
    assert "weeks" in text


def test_the_horizon_is_the_log_distance_over_the_growth_rate(Meter: type[MeterType]) -> None:
    """seconds = ln(limit / now) / slope; earliest and latest from the slope's bounds, each
    line through the middle of the history (its median day), so the level now is uncertain."""
    recorder = sequential(Meter, weeks=4, seed=2)
    forecast = recorder.forecast(utilization=0.9)
    (horizon,) = forecast.horizons
    needed = math.log(horizon.throughput / forecast.throughput)
    assert horizon.seconds == pytest.approx(needed / forecast.growth.slope)
    # 28 whole days counted back from the end: their median is 14 days before it.
    end_s = steps(recorder, HOUR)[-1].end_wall_ns / NS
    middle_s = end_s - 14 * 86_400.0
    middle = forecast.growth.at(middle_s)
    for bound, rate in (
        (horizon.earliest, forecast.growth.high),
        (horizon.latest, forecast.growth.low),
    ):
        now = middle + rate * (end_s - middle_s)
        assert bound == pytest.approx((math.log(horizon.throughput) - now) / rate)
    assert horizon.earliest < horizon.seconds < horizon.latest


def test_the_days_do_not_depend_on_the_hour_the_history_ends(Meter: type[MeterType]) -> None:
    """Days are counted back from the end: the same load ending at other hours of the
    day (the simulated calendar starts at the real time the test runs) forecasts the same."""
    recorder = sequential(Meter, weeks=2)
    first = recorder.forecast()
    anchor = recorder._anchor_wall_ns
    for hours in (1, 7, 13, 23):
        # The recorder's calendar is the wall time of its first reading: move it.
        recorder._anchor_wall_ns = anchor + hours * 3600 * NS
        shifted = recorder.forecast()
        assert shifted.growth.slope == first.growth.slope, hours
        assert (shifted.growth.low, shifted.growth.high) == (first.growth.low, first.growth.high)
        assert str(shifted) == str(first)


def test_a_flat_load_is_not_forecast_to_reach_its_limits(Meter: type[MeterType]) -> None:
    """Without growth, the limit is never reached, or only at the growth's upper bound."""
    forecast = sequential(Meter, weeks=3, growth=0.0).forecast()
    (horizon,) = forecast.horizons
    assert forecast.growth.low < 0.0 < forecast.growth.high
    assert horizon.latest == math.inf
    if math.isinf(horizon.seconds):
        assert str(horizon).startswith("utilization does not reach 80 % at this growth")
    else:
        assert str(horizon).endswith(" to never)")


def test_a_limit_already_passed_is_reached_now(Meter: type[MeterType]) -> None:
    """Utilization above the level asked for: the horizon is 0."""
    forecast = sequential(Meter, weeks=2).forecast(utilization=0.5)
    (horizon,) = forecast.horizons
    assert (horizon.seconds, horizon.earliest, horizon.latest) == (0.0, 0.0, 0.0)
    assert str(horizon) == "utilization is at 50 % or above already"


TRUE_MODEL = Model(sigma=0.05, kappa=0.002, lam=0.01)


def usl_load(meter_type: type[MeterType], weeks: int, seed: int = 3) -> FlightRecorder:
    """Each hour runs rounds of k overlapping queries that last R(k) of TRUE_MODEL: the hour's
    mean concurrency is k and its throughput X(k).  k follows a daily cycle and grows."""
    rng = random.Random(seed)
    now = [1_000_000]
    meter = meter_type(clock=lambda: now[0])
    recorder = FlightRecorder(meter, COARSE)
    recorder.take()
    for hour in range(weeks * 168):
        start = now[0]
        cycle = 1.0 + 0.5 * math.sin(2 * math.pi * hour / 24)
        level = max(1, round(6 * cycle * math.exp(RATE * hour * HOUR) * rng.gauss(1.0, 0.05)))
        rounds = round(HOUR / TRUE_MODEL.response_time(level))
        duration_ns = round(HOUR * NS) // rounds
        for _ in range(rounds):
            with contextlib.ExitStack() as stack:
                for _ in range(level):
                    stack.enter_context(meter.track())
                now[0] += duration_ns
        now[0] = start + round(HOUR * NS)
        recorder.take()
    return recorder


def test_enough_concurrency_levels_give_a_usl_model_and_its_horizons(
    Meter: type[MeterType],
) -> None:
    """The steps' (N, X) points recover the model; the pool and the peak are forecast from it."""
    recorder = usl_load(Meter, weeks=3)
    forecast = recorder.forecast(pool=14)
    model = forecast.model
    assert model is not None
    assert model.sigma == pytest.approx(TRUE_MODEL.sigma, abs=0.02)
    assert model.kappa == pytest.approx(TRUE_MODEL.kappa, rel=0.5)
    assert model.max_throughput == pytest.approx(TRUE_MODEL.max_throughput, rel=0.1)
    pool = forecast.horizon("pool")
    peak = forecast.horizon("peak")
    assert pool is not None
    assert peak is not None
    assert pool.throughput == pytest.approx(model.throughput(14.0))
    assert peak.throughput == pytest.approx(model.max_throughput)
    assert 0.0 < pool.seconds < peak.seconds < math.inf
    assert "USL" in str(forecast)
    # A pool larger than the peak concurrency never fills before the peak.
    larger = recorder.forecast(pool=1000).horizon("pool")
    assert larger is not None
    assert larger.throughput == pytest.approx(model.max_throughput)


def test_default_rings_do_not_hold_enough_history(Meter: type[MeterType]) -> None:
    """With the default rings (24 h), forecast() says so and how to keep more."""
    now = [1_000_000]
    meter = Meter(clock=lambda: now[0])
    recorder = FlightRecorder(meter)
    recorder.take()
    for _ in range(2000):
        with meter.track():
            now[0] += NS
        now[0] += 59 * NS
        recorder.take()
    with pytest.raises(NotEnoughHistory, match=r"hold at most 24 h: add a coarse ring"):
        recorder.forecast()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"utilization": 0}, ValueError, "utilization must be finite and > 0"),
        ({"utilization": 1.5}, ValueError, r"utilization must be in \(0, 1\]"),
        ({"utilization": "80%"}, TypeError, "utilization must be a real number"),
        ({"pool": 0}, ValueError, "pool must be at least 1"),
        ({"pool": 2.5}, TypeError, "pool must be an int"),
        ({"min_days": -1}, ValueError, "min_days must be finite and > 0"),
        ({"level": 0}, ValueError, r"level must be in \(0, 1\)"),
        ({"resolution": 1.0}, ValueError, "not one of the recorder's"),
    ],
)
def test_bad_arguments_are_named(
    Meter: type[MeterType], kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    """A bad argument raises TypeError or ValueError naming it."""
    recorder = sequential(Meter, weeks=1)
    with pytest.raises(error, match=message):
        recorder.forecast(**kwargs)
