"""Recorder baselines and anomalies: robust bands against statistics.median, by hour."""

from __future__ import annotations

import contextlib
import io
import math
import random
import re
import statistics
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from querymeter import markers
from querymeter.markers import Marker
from querymeter.meter import Meter as MeterType
from querymeter.recorder import FlightRecorder
from querymeter.recorder._baseline import (
    MAD_TO_SIGMA,
    MEANAD_TO_SIGMA,
    Anomaly,
    Baseline,
    band,
)

NS = 1_000_000_000
MINUTE = 60.0


@pytest.fixture(autouse=True)
def clean_markers() -> Iterator[None]:
    """Each test starts and ends with an empty marker log."""
    markers.clear()
    yield
    markers.clear()


class Simulation:
    """A meter on a fake clock and its recorder: each step runs queries of known durations."""

    def __init__(
        self,
        meter_type: type[MeterType],
        resolutions: Sequence[tuple[float, int]] = ((MINUTE, 1440),),
        *,
        statements: bool = True,
    ) -> None:
        self.start = self.now = 1_000_000
        self.meter = meter_type(clock=self.clock)
        if statements:
            self.meter.enable_statements()
        self.recorder = FlightRecorder(self.meter, resolutions)
        self.recorder.take()
        self.step_ns = round(resolutions[0][0] * NS)
        self.anchor_wall_ns: int | None = None

    def clock(self) -> int:
        return self.now

    def step(self, queries: Sequence[tuple[str | None, float]], errors: int = 0) -> None:
        """Run ``queries`` ((sql, seconds) one after the other), ``errors`` of them failing
        (the first ones), then close the step."""
        begin = self.now
        for index, (sql, seconds) in enumerate(queries):
            try:
                with self.meter.track(sql=sql):
                    self.now += round(seconds * NS)
                    if index < errors:
                        raise LookupError("a failing query")
            except LookupError:
                pass
        assert self.now - begin < self.step_ns
        self.now = begin + self.step_ns
        self.recorder.take()
        if self.anchor_wall_ns is None:
            self.anchor_wall_ns = self.recorder.step_wall_ns(self.recorder.timeline()[-1]) - (
                self.now - self.start
            )

    def wall_ns(self, clock_ns: int | None = None) -> int:
        """The simulated Unix time (ns) of a clock reading (now by default)."""
        assert self.anchor_wall_ns is not None, "run a step first"
        return self.anchor_wall_ns + ((self.now if clock_ns is None else clock_ns) - self.start)

    def next_mid_hour(self) -> int:
        """The UTC hour of day of the middle of the next step."""
        return ((self.wall_ns() + self.step_ns // 2) // (3600 * NS)) % 24


def oracle_band(values: Sequence[float], width: float = 4.0) -> tuple[float, float, float, float]:
    """(median, MAD, low, high) computed with the statistics module (the mean absolute
    deviation where the MAD is 0)."""
    centre = statistics.median(values)
    mad = statistics.median([abs(v - centre) for v in values])
    if mad > 0:
        scale = MAD_TO_SIGMA * mad
    else:
        scale = MEANAD_TO_SIGMA * statistics.fmean([abs(v - centre) for v in values])
    return centre, mad, max(centre - width * scale, 0.0), centre + width * scale


def test_metric_baselines_equal_the_median_and_mad_of_the_steps(Meter: type[MeterType]) -> None:
    """Each metric's median and MAD equal statistics.median over the steps' own figures."""
    sim = Simulation(Meter)
    rng = random.Random(1)
    expected: dict[str, list[float]] = {
        "response_time": [],
        "throughput": [],
        "error_rate": [],
        "utilization": [],
    }
    for _ in range(200):
        count = rng.randrange(1, 8)
        durations = [rng.uniform(0.005, 0.050) for _ in range(count)]
        errors = rng.randrange(0, 2)
        sim.step([("SELECT 1", d) for d in durations], errors=errors)
        total = sum(round(d * NS) for d in durations)
        expected["response_time"].append(total / count / NS)
        expected["throughput"].append(count / MINUTE)
        expected["error_rate"].append(errors / MINUTE)
        expected["utilization"].append(total / (MINUTE * NS))
    baseline = sim.recorder.baseline()
    assert isinstance(baseline, Baseline)
    assert baseline.resolution == MINUTE
    assert baseline.steps == 200
    assert not baseline.by_hour
    for metric, values in expected.items():
        got = baseline.metrics[metric]
        centre, mad, low, high = oracle_band(values)
        assert got.median == pytest.approx(centre, rel=1e-12)
        assert got.mad == pytest.approx(mad, rel=1e-9, abs=1e-15)
        assert got.overall.low == pytest.approx(low, rel=1e-9, abs=1e-15)
        assert got.overall.high == pytest.approx(high, rel=1e-9, abs=1e-15)
        assert got.overall.steps == 200
    assert baseline.response_time is baseline.metrics["response_time"]
    assert baseline.utilization is baseline.metrics["utilization"]


def test_top_statements_get_their_own_baseline(Meter: type[MeterType]) -> None:
    """The top statements by total time get a baseline of their mean response time per step."""
    sim = Simulation(Meter)
    rng = random.Random(2)
    slow, fast = [], []
    for _ in range(60):
        a = rng.uniform(0.040, 0.060)
        b = rng.uniform(0.001, 0.002)
        sim.step([("SELECT * FROM orders WHERE id = 1", a), ("SELECT 1", b)])
        slow.append(round(a * NS) / NS)
        fast.append(round(b * NS) / NS)
    baseline = sim.recorder.baseline(statements=1)
    assert len(baseline.statements) == 1
    (statement,) = baseline.statements.values()
    assert statement.sample_sql == "SELECT * FROM orders WHERE id = 1"
    assert statement.calls == 60
    assert statement.response_time is not None
    assert statement.response_time.median == pytest.approx(statistics.median(slow), rel=1e-9)
    assert statement.throughput is not None
    assert statement.throughput.median == pytest.approx(1 / MINUTE)
    both = sim.recorder.baseline(statements=5)
    medians = sorted(
        s.response_time.median for s in both.statements.values() if s.response_time is not None
    )
    assert medians == pytest.approx(sorted([statistics.median(fast), statistics.median(slow)]))
    assert sim.recorder.baseline(statements=0).statements == {}
    assert "SELECT * FROM orders" in str(baseline)


def test_a_day_of_data_gives_a_band_for_each_hour_of_the_day(Meter: type[MeterType]) -> None:
    """Over a day, the busy hours have their own band: their usual slowness is no anomaly there."""
    sim = Simulation(Meter)
    sim.step([("SELECT 1", 0.010)])
    rng = random.Random(3)
    for _ in range(1439):
        busy = 9 <= sim.next_mid_hour() < 17
        seconds = (0.050 if busy else 0.010) * rng.uniform(0.95, 1.05)
        sim.step([("SELECT 1", seconds)])
    baseline = sim.recorder.baseline()
    assert baseline.by_hour
    assert baseline.days == pytest.approx(1.0)
    response = baseline.response_time
    assert response is not None
    assert set(response.by_hour) == set(range(24))
    assert response.by_hour[12].median == pytest.approx(0.050, rel=0.03)
    assert response.by_hour[3].median == pytest.approx(0.010, rel=0.03)
    assert response.overall.median == pytest.approx(0.010, rel=0.03)
    # A busy hour's normal figure is an anomaly only where the hours are quiet.
    for hour in (12, 3):
        start = hour * 3600 * NS + 30 * MINUTE * NS
        applies = response.band(start)
        assert applies is response.by_hour[hour]
    assert response.band(12 * 3600 * NS).contains(0.050)
    assert not response.band(3 * 3600 * NS).contains(0.050)
    assert not [a for a in sim.recorder.anomalies() if a.metric == "response_time"]


def test_less_than_a_day_gives_one_band(Meter: type[MeterType]) -> None:
    """Under a day of data the band is the same at every hour."""
    sim = Simulation(Meter)
    for _ in range(100):
        sim.step([("SELECT 1", 0.01)])
    response = sim.recorder.baseline().response_time
    assert response is not None
    assert dict(response.by_hour) == {}
    assert response.band(0) is response.overall


def test_anomalies_are_the_steps_outside_the_band_with_the_markers_before(
    Meter: type[MeterType],
) -> None:
    """A slow step after a deploy is an anomaly naming the deploy; an older marker is not named."""
    sim = Simulation(Meter)
    rng = random.Random(4)
    for _ in range(120):
        sim.step([("SELECT 1", rng.uniform(0.018, 0.022)) for _ in range(3)])
    old = markers.add(Marker("cron nightly-report", sim.wall_ns() - 7200 * NS, 0))
    deploy = markers.add(Marker("deploy v1.2", sim.wall_ns() + 30 * NS, 1, {"version": "1.2"}))
    sim.step([("SELECT 1", 0.020) for _ in range(3)])
    sim.step([("SELECT 1", 0.200) for _ in range(3)])
    for _ in range(20):
        sim.step([("SELECT 1", rng.uniform(0.018, 0.022)) for _ in range(3)])
    found = sim.recorder.anomalies(statements=0)
    assert {a.metric for a in found} == {"response_time", "utilization"}
    assert all(isinstance(a, Anomaly) for a in found)
    slow = next(a for a in found if a.metric == "response_time")
    assert slow.value == pytest.approx(0.200)
    assert slow.direction == "above"
    assert slow.score > 3.0
    assert slow.interval.response_time == pytest.approx(0.200)
    assert slow.end_wall_ns - slow.start_wall_ns == 60 * NS
    assert slow.markers == (deploy,)
    assert old not in slow.markers
    assert "deploy v1.2" in str(slow)
    # A shorter lookback leaves the deploy (90 s before the step's end) out.
    short = sim.recorder.anomalies(statements=0, lookback=60.0)
    assert next(a for a in short if a.metric == "response_time").markers == ()


def test_a_statement_slower_than_its_band_is_an_anomaly_of_its_own(
    Meter: type[MeterType],
) -> None:
    """A top statement's slow step is reported with its fingerprint."""
    sim = Simulation(Meter)
    rng = random.Random(5)
    for index in range(80):
        slow = 0.500 if index == 70 else rng.uniform(0.009, 0.011)
        sim.step(
            [("SELECT * FROM t WHERE id = 1", slow)]
            + [("SELECT 2", rng.uniform(0.030, 0.034)) for _ in range(20)]
        )
    found = [a for a in sim.recorder.anomalies() if a.statement is not None]
    assert len(found) == 1
    assert found[0].statement == "select * from t where id = ?"
    assert found[0].value == pytest.approx(0.5)
    assert found[0].metric == "response_time"


def test_since_keeps_the_later_steps_only(Meter: type[MeterType]) -> None:
    """anomalies(since=...) checks the steps that end after that time against the whole window."""
    sim = Simulation(Meter)
    for index in range(100):
        sim.step([("SELECT 1", 0.5 if index in (30, 90) else 0.01)])
    everything = [a for a in sim.recorder.anomalies(statements=0) if a.metric == "response_time"]
    assert len(everything) == 2
    since = (everything[0].end_wall_ns + 30 * NS) / NS  # float seconds: ~0.2 us apart
    later = [
        a for a in sim.recorder.anomalies(statements=0, since=since) if a.metric == "response_time"
    ]
    assert [a.end_wall_ns for a in later] == [everything[1].end_wall_ns]


def test_window_limits_the_baseline_to_the_last_seconds(Meter: type[MeterType]) -> None:
    """window=N makes the baseline of the last N seconds only."""
    sim = Simulation(Meter)
    for _ in range(50):
        sim.step([("SELECT 1", 0.010)])
    for _ in range(50):
        sim.step([("SELECT 1", 0.030)])
    assert sim.recorder.baseline().steps == 100
    recent = sim.recorder.baseline(window=20 * MINUTE)
    assert recent.steps == 20
    assert recent.response_time is not None
    assert recent.response_time.median == pytest.approx(0.030)


def test_the_default_resolution_is_the_ring_spanning_the_longest_time(
    Meter: type[MeterType],
) -> None:
    """With a 1 s ring of 100 steps and a 10 s ring, the 10 s ring is read once it spans more."""
    sim = Simulation(Meter, ((1.0, 100), (10.0, 100)))
    for _ in range(50):
        sim.step([("SELECT 1", 0.01)])
    assert sim.recorder.baseline().resolution == 1.0  # both span 50 s: the finer
    for _ in range(200):
        sim.step([("SELECT 1", 0.01)])
    assert sim.recorder.baseline().resolution == 10.0
    assert sim.recorder.baseline(resolution=1.0).steps == 100


def test_too_few_steps_give_no_band_and_no_anomaly(Meter: type[MeterType]) -> None:
    """A metric needs 10 steps for a band; an empty recorder has an empty baseline."""
    sim = Simulation(Meter)
    empty = sim.recorder.baseline()
    assert empty.steps == 0
    assert empty.metrics == {}
    for _ in range(9):
        sim.step([("SELECT 1", 0.01)])
    assert sim.recorder.baseline().metrics == {}
    assert sim.recorder.anomalies() == []


def test_steps_without_queries_have_no_response_time(Meter: type[MeterType]) -> None:
    """Idle steps count for throughput and utilization, not for the response time."""
    sim = Simulation(Meter)
    for index in range(40):
        sim.step([("SELECT 1", 0.01)] if index % 2 else [])
    baseline = sim.recorder.baseline()
    assert baseline.response_time is not None
    assert baseline.response_time.overall.steps == 20
    assert baseline.throughput is not None
    assert baseline.throughput.overall.steps == 40


def test_band_falls_back_to_the_mean_absolute_deviation() -> None:
    """With a MAD of 0, the scale is 1.2533 times the mean absolute deviation."""
    values = [0.0] * 18 + [1.0, 3.0]
    made = band(values)
    assert made is not None
    assert made.mad == 0.0
    assert made.scale == pytest.approx(MEANAD_TO_SIGMA * 4.0 / 20)
    assert made.contains(0.5)
    assert not made.contains(3.0)
    flat = band([2.0] * 10)
    assert flat is not None
    assert (flat.low, flat.high, flat.scale) == (2.0, 2.0, 0.0)
    assert flat.score(2.0) == 0.0
    assert flat.score(2.5) == math.inf
    assert band([1.0] * 9) is None


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r: r.baseline(resolution=2.0), ValueError, "not one of the recorder's"),
        (lambda r: r.baseline(resolution="60"), TypeError, "resolution must be a real"),
        (lambda r: r.baseline(width=0), ValueError, "width must be finite and > 0"),
        (lambda r: r.baseline(window=-1.0), ValueError, "window must be finite and > 0"),
        (lambda r: r.baseline(statements=-1), ValueError, "statements must be >= 0"),
        (lambda r: r.baseline(statements=2.5), TypeError, "statements must be an int"),
        (lambda r: r.anomalies(lookback=math.nan), ValueError, "lookback must be finite"),
        (lambda r: r.anomalies(since="yesterday"), TypeError, "since must be a Unix time"),
    ],
)
def test_bad_arguments_are_named(
    Meter: type[MeterType],
    call: Callable[[FlightRecorder], object],
    error: type[Exception],
    message: str,
) -> None:
    """A bad argument raises TypeError or ValueError naming it."""
    sim = Simulation(Meter)
    with pytest.raises(error, match=message):
        call(sim.recorder)


def test_the_docs_examples_run_and_print_what_they_show() -> None:
    """docs/continuous-profiling.md: its Python blocks run in order, and print its outputs."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "continuous-profiling.md"
    text = doc.read_text()
    namespace: dict[str, object] = {"__name__": "continuous_profiling_doc"}
    printed = []
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(doc), "exec"), namespace)
        printed.append(out.getvalue())
    trend_line = next(line for line in printed if "ms/day over 28 days" in line)
    assert trend_line.strip() in text
    forecast_line = next(line for line in printed if line.startswith("at +"))
    assert forecast_line.strip() in text
    anomalies = next(line for line in printed if "deploy v1.2" in line)
    # The dates follow the simulated calendar, which starts when the test runs.
    undated = [re.sub(r"^\S+ \S+ UTC", "", line) for line in anomalies.splitlines()]
    assert all(line in text for line in undated)
