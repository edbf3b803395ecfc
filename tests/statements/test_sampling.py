"""Sampling: which queries are captured (at random, and every slow one), what a sample
holds, the bounded ring, and the privacy of parameters; on both cores."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterator

import pytest

import querymeter
from querymeter.meter import Meter as MeterType
from querymeter.statements import redact

from ..conftest import FakeClock, load_meter_class


def run(
    meter: MeterType, clock: FakeClock, sql: str | None, ns: int, *, fail: bool = False
) -> None:
    try:
        with meter.track(sql):
            clock.advance(ns)
            if fail:
                raise LookupError("the query failed")
    except LookupError:
        pass


def cursor_call(meter: MeterType, sql: object, params: object = None) -> None:
    """A DB-API call (cursor, sql, params) through the core's statement shape."""

    class Cursor:
        rowcount = 4

    meter._call_statement("postgresql", 0, lambda cursor, sql, params: None, Cursor(), sql, params)


def test_every_query_at_rate_one(fake_meter: MeterType, clock: FakeClock) -> None:
    log = fake_meter.enable_sampling(rate=1.0)
    assert fake_meter.sampling is log
    run(fake_meter, clock, "SELECT * FROM t WHERE a = 1", 1_500)
    run(fake_meter, clock, "select * from t where a = 2", 2_500, fail=True)
    first, second = fake_meter.samples()
    assert first.sql == "SELECT * FROM t WHERE a = 1"
    assert first.fingerprint == querymeter.fingerprint(first.sql) == "select * from t where a = ?"
    assert first.statement_id == querymeter.statement_id(first.fingerprint)
    assert (first.duration_ns, first.error, first.rows) == (1_500, None, None)
    assert second.error == "LookupError" and second.duration_ns == 2_500
    assert first.thread == threading.current_thread().name and first.task is None
    assert dict(first.tags) == {} and first.params is None
    assert first.start_wall_ns <= second.start_wall_ns
    assert first.start.tzinfo is not None


def test_a_threshold_captures_every_slow_query_and_only_those(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    fake_meter.enable_sampling(rate=0.0, slower_than=0.001)
    durations = [999_999, 1_000_000, 5, 2_000_000, 1_000_001, 999_000]
    for ns in durations:
        run(fake_meter, clock, "select 1", ns)
    assert [s.duration_ns for s in fake_meter.samples()] == [1_000_000, 2_000_000, 1_000_001]


def test_the_ring_keeps_the_newest(fake_meter: MeterType, clock: FakeClock) -> None:
    log = fake_meter.enable_sampling(rate=1.0, capacity=3)
    for ns in range(1, 11):
        run(fake_meter, clock, "select 1", ns)
    assert [s.duration_ns for s in fake_meter.samples()] == [8, 9, 10]
    assert log.dropped == 7 and len(log) == 3


def test_the_rate_is_honoured(Meter: type[MeterType]) -> None:
    """Random sampling at 0.1: the count is binomial; 6 standard deviations is a bound
    a correct sampler exceeds about once in 10^9 runs."""
    meter = Meter()
    log = meter.enable_sampling(rate=0.1, capacity=100_000)
    n = 20_000
    for _ in range(n):
        with meter.track("select 1"):
            pass
    taken = len(log)
    sigma = math.sqrt(n * 0.1 * 0.9)
    assert abs(taken - n * 0.1) <= 6 * sigma, taken


def test_both_cores_draw_the_same_sequence_from_a_seed() -> None:
    sequences = []
    for implementation in ("c", "python"):
        load_meter_class(implementation)
        module = __import__(f"querymeter.core.{'_c' if implementation == 'c' else '_py'}",
                            fromlist=["Sampling"])  # fmt: skip
        sampling = module.Sampling(0.3, 500, lambda *args: None, 12345)
        sequences.append([sampling._chooses(ns) for ns in [10] * 200 + [500, 499, 10_000]])
    assert sequences[0] == sequences[1]
    assert sequences[0][-3:] == [True, sequences[0][-2], True]


def test_parameters_are_kept_only_when_asked(Meter: type[MeterType]) -> None:
    meter = Meter()
    meter.enable_sampling(rate=1.0)
    cursor_call(meter, "select * from users where email = %s", ("ann@example.com",))
    assert meter.samples()[-1].params is None, "never captured by default"
    assert meter.samples()[-1].rows == 4

    meter.enable_sampling(rate=1.0, params=True)
    cursor_call(meter, "select %(a)s, %(b)s", {"a": "secret", "b": 42})
    cursor_call(meter, "insert into t values (%s, %s)", ("x" * 10, None))
    named, positional = meter.samples()
    assert named.params == {"a": "str[6]", "b": "int"}
    assert positional.params == ["str[10]", "None"]

    meter.enable_sampling(rate=1.0, params="raw")
    cursor_call(meter, "select %s", ("ann@example.com",))
    assert meter.samples()[-1].params == ("ann@example.com",)


def test_redaction_never_consumes_an_iterator() -> None:
    def rows() -> Iterator[tuple[int]]:
        yield (1,)
        raise AssertionError("consumed")

    generator = rows()
    assert redact(generator) == "generator"
    assert next(generator) == (1,), "still unconsumed"
    many = redact([(i,) for i in range(100)])
    assert many[:2] == ["tuple[1]", "tuple[1]"] and many[-1] == "... 68 more"
    assert len(many) == 33


def test_a_generator_passed_raw_is_not_consumed(Meter: type[MeterType]) -> None:
    meter = Meter()
    meter.enable_sampling(rate=1.0, params="raw")
    consumed = []

    def rows() -> Iterator[tuple[int]]:
        consumed.append(True)
        yield (1,)

    cursor_call(meter, "insert into t values (%s)", rows())
    assert meter.samples()[-1].params == "generator" and consumed == []


def test_the_task_of_an_asyncio_query(Meter: type[MeterType]) -> None:
    meter = Meter()
    meter.enable_sampling(rate=1.0)

    async def query() -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        task = asyncio.create_task(meter._awaiting(query(), (None, "select 1", None)), name="q1")
        await task

    asyncio.run(main())
    (sample,) = meter.samples()
    assert (sample.task, sample.fingerprint) == ("q1", "select ?")


def test_disabling_stops_capturing_and_keeps_the_samples(
    fake_meter: MeterType, clock: FakeClock
) -> None:
    log = fake_meter.enable_sampling(rate=1.0)
    run(fake_meter, clock, "select 1", 10)
    assert fake_meter.disable_sampling() is log
    assert fake_meter.sampling is None
    run(fake_meter, clock, "select 2", 10)
    assert [s.sql for s in fake_meter.samples()] == ["select 1"]
    assert fake_meter.disable_sampling() is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rate": 1.5}, ValueError, "rate must be from 0 to 1"),
        ({"rate": -0.1}, ValueError, "rate must be from 0 to 1"),
        ({"rate": "0.1"}, TypeError, "rate must be a number"),
        ({"slower_than": -1}, ValueError, "slower_than must be seconds"),
        ({"slower_than": "1s"}, TypeError, "slower_than must be seconds"),
        ({"capacity": 0}, ValueError, "capacity must be at least 1"),
        ({"capacity": 1.0}, TypeError, "capacity must be an int"),
        ({"params": "yes"}, ValueError, "params must be False, True or"),
    ],
)
def test_bad_settings_are_refused(
    Meter: type[MeterType], kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    meter = Meter()
    with pytest.raises(error, match=message):
        meter.enable_sampling(**kwargs)  # type: ignore[arg-type]
    assert meter.sampling is None


def test_a_failing_capture_is_a_fault_not_the_applications(
    Meter: type[MeterType], monkeypatch: pytest.MonkeyPatch
) -> None:
    from querymeter.statements import _sampling

    def broken(*args: object) -> str:
        raise RuntimeError("threading broke")

    meter = Meter()
    meter.enable_sampling(rate=1.0)
    monkeypatch.setattr(_sampling, "_task_name", broken)
    before = querymeter.faults().get("could not capture a sample", 0)
    with meter.track("select 1"):
        pass
    assert meter.snapshot().queries == 1 and meter.samples() == []
    assert querymeter.faults()["could not capture a sample"] == before + 1
