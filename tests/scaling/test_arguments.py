"""scaling.run's arguments: bad ones are refused before anything runs, naming the problem."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from querymeter import scaling
from querymeter.meter import Meter as MeterType


def never_called() -> None:
    raise AssertionError("the workload ran")


@pytest.mark.parametrize(
    ("levels", "error", "message"),
    [
        ((), ValueError, "levels is empty"),
        ([], ValueError, "levels is empty"),
        ((1, 0, 4), ValueError, r"levels\[1\] must be at least 1 worker, got 0"),
        ((-2,), ValueError, r"levels\[0\] must be at least 1 worker, got -2"),
        ((1, 2.5), TypeError, r"levels\[1\] must be a whole number of workers \(int\), got float"),
        ((1, 2.0), TypeError, r"levels\[1\] must be a whole number .* got float 2.0"),
        ((True, 2), TypeError, r"levels\[0\] .* got bool True"),
        (("1", 2), TypeError, r"levels\[0\] .* got str '1'"),
        ("1,2,4", TypeError, "levels must be a sequence of worker counts"),
        (8, TypeError, "levels must be a sequence of worker counts .* got int"),
        ((1, scaling.MAX_WORKERS + 1), ValueError, r"levels\[1\] is 10001 workers, more than"),
    ],
)
def test_bad_levels_are_refused(levels: Any, error: type[Exception], message: str) -> None:
    """Empty, non-positive, non-integer or absurd levels raise, naming the level at fault."""
    with pytest.raises(error, match=message):
        scaling.run(never_called, levels=levels)
    with pytest.raises(error, match=message):
        scaling.measure(never_called, levels=levels)


@pytest.mark.parametrize("duration", [0, -1.0, math.nan, math.inf])
def test_a_duration_must_be_positive_and_finite(duration: float) -> None:
    """A duration of zero, below zero, NaN or infinity raises ValueError naming duration."""
    with pytest.raises(ValueError, match="duration must be finite and more than 0 seconds"):
        scaling.run(never_called, duration=duration)


@pytest.mark.parametrize("warmup", [-0.1, math.nan, math.inf])
def test_a_warmup_must_not_be_negative(warmup: float) -> None:
    """A negative, NaN or infinite warm-up raises ValueError naming warmup; zero is allowed."""
    with pytest.raises(ValueError, match="warmup must be finite and 0 or more seconds"):
        scaling.run(never_called, warmup=warmup)


@pytest.mark.parametrize("name", ["duration", "warmup"])
def test_seconds_must_be_numbers(name: str) -> None:
    """Seconds given as a string or a bool raise TypeError naming the argument."""
    for value in ("3", True):
        with pytest.raises(TypeError, match=f"{name} must be a number of seconds"):
            scaling.run(never_called, **{name: value})


def test_the_workload_must_be_callable() -> None:
    """A workload that is not callable raises TypeError saying what it is."""
    with pytest.raises(TypeError, match="workload must be callable, got str 'SELECT 1'"):
        scaling.run("SELECT 1")  # type: ignore[arg-type]


def test_the_meter_must_be_a_meter() -> None:
    """A meter argument that is not a querymeter.Meter raises TypeError."""
    with pytest.raises(TypeError, match=r"meter must be a querymeter\.Meter, not dict"):
        scaling.run(never_called, meter={})  # type: ignore[arg-type]


def test_setup_and_progress_must_be_callable() -> None:
    """setup and progress, when given, must be callable."""
    with pytest.raises(TypeError, match="setup must be callable"):
        scaling.run(never_called, setup=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="progress must be callable"):
        scaling.run(never_called, progress="x")  # type: ignore[arg-type]


def test_setup_must_give_a_context_manager(Meter: type[MeterType]) -> None:
    """A setup that returns something other than a context manager raises TypeError."""
    meter = Meter()
    with pytest.raises(TypeError, match="setup must return a context manager"):
        scaling.run(
            lambda value: None, levels=(1,), duration=0.1, warmup=0, meter=meter, setup=lambda n: n
        )


def test_an_async_workload_cannot_run_inside_a_running_loop(Meter: type[MeterType]) -> None:
    """From inside a running event loop, an async workload is refused with a way out."""
    meter = Meter()

    async def workload() -> None:
        raise AssertionError("the workload ran")

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"asyncio.to_thread\(querymeter.scaling.run"):
            scaling.run(workload, levels=(1,), meter=meter)

    asyncio.run(main())
