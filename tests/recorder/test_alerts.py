"""Recorder alerts: once per episode after for_ seconds, re-armed after clear_for, never raising."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

import querymeter
from querymeter import markers
from querymeter.markers import Marker
from querymeter.meter import Meter as MeterType
from querymeter.recorder import FlightRecorder
from querymeter.recorder._alerts import Alert, AlertRule

NS = 1_000_000_000


@pytest.fixture(autouse=True)
def clean_markers() -> Iterator[None]:
    """Each test starts and ends with an empty marker log."""
    markers.clear()
    yield
    markers.clear()


class Seconds:
    """A meter on a fake clock and a recorder of 1 s steps; each second runs known queries."""

    def __init__(self, meter_type: type[MeterType]) -> None:
        self.now = 1_000_000
        self.meter = meter_type(clock=lambda: self.now)
        self.recorder = FlightRecorder(self.meter, ((1.0, 900), (60.0, 60)))
        self.recorder.take()
        self.alerts: list[Alert] = []

    def second(self, *durations: float, errors: int = 0) -> None:
        """Run queries of these durations one after the other (the first ``errors`` fail)."""
        start = self.now
        for index, seconds in enumerate(durations):
            try:
                with self.meter.track(sql="SELECT * FROM orders"):
                    self.now += round(seconds * NS)
                    if index < errors:
                        raise LookupError("a failing query")
            except LookupError:
                pass
        self.now = start + NS
        self.recorder.take()

    def run(self, count: int, *durations: float, errors: int = 0) -> None:
        for _ in range(count):
            self.second(*durations, errors=errors)

    def wall_ns(self) -> int:
        """The simulated Unix time now (ns)."""
        last = self.recorder.timeline()[-1]
        return self.recorder.step_wall_ns(last)


def test_fires_once_after_for_seconds_with_the_episode_figures(Meter: type[MeterType]) -> None:
    """Ten slow seconds with for_=10 fire one alert, on the tenth, with the episode's figures."""
    sim = Seconds(Meter)
    rule = sim.recorder.alert(sim.alerts.append, response_time_above=0.1, for_=10.0)
    assert isinstance(rule, AlertRule)
    sim.run(60, 0.01, 0.01)
    sim.run(9, 0.3, 0.1)
    assert sim.alerts == []
    assert not rule.firing
    sim.second(0.3, 0.1)
    assert len(sim.alerts) == 1
    alert = sim.alerts[0]
    assert rule.firing
    assert rule.alerts == 1
    assert alert.duration == pytest.approx(10.0)
    assert alert.interval.duration == pytest.approx(10.0)
    assert alert.figures["response_time"] == pytest.approx(0.2)
    assert alert.figures["throughput"] == pytest.approx(2.0)
    assert alert.figures["utilization"] == pytest.approx(0.4)
    assert alert.figures["error_rate"] == 0.0
    assert alert.reasons == ("response_time 200 ms > 100 ms",)
    assert dict(alert.thresholds) == {"response_time": 0.1}
    assert alert.fired_wall_ns == sim.wall_ns()
    assert alert.resolution == 1.0
    # The episode's steps are outside the baseline of the last minutes.
    assert {a.metric for a in alert.anomalies} >= {"response_time", "utilization"}
    assert all(a.start_wall_ns >= alert.started_wall_ns for a in alert.anomalies)
    sim.run(100, 0.3, 0.1)
    assert len(sim.alerts) == 1
    assert "response_time 200 ms > 100 ms for 10 s" in str(alert)


def test_rearms_only_after_clear_for_seconds(Meter: type[MeterType]) -> None:
    """A clear spell shorter than clear_for keeps the episode; a longer one ends it."""
    sim = Seconds(Meter)
    rule = sim.recorder.alert(sim.alerts.append, response_time_above=0.1, for_=5.0, clear_for=20.0)
    sim.run(5, 0.3)
    assert len(sim.alerts) == 1
    sim.run(19, 0.01)
    assert rule.firing
    sim.run(10, 0.3)
    assert len(sim.alerts) == 1
    sim.run(20, 0.01)
    assert not rule.firing
    sim.run(4, 0.3)
    assert len(sim.alerts) == 1
    sim.run(1, 0.3)
    assert len(sim.alerts) == 2
    assert rule.alerts == 2


def test_a_break_in_the_symptom_restarts_the_wait(Meter: type[MeterType]) -> None:
    """Before firing, the breaching steps must be consecutive: one clear step starts over."""
    sim = Seconds(Meter)
    sim.recorder.alert(sim.alerts.append, utilization_above=0.5, for_=5.0)
    for _ in range(5):
        sim.run(4, 0.9)
        sim.run(1, 0.1)
    assert sim.alerts == []
    sim.run(5, 0.9)
    assert len(sim.alerts) == 1
    assert sim.alerts[0].reasons == ("utilization 90 % > 50 %",)


def test_error_rate_and_any_threshold(Meter: type[MeterType]) -> None:
    """Any of the thresholds breaches a step; the reasons name each one exceeded."""
    sim = Seconds(Meter)
    sim.recorder.alert(sim.alerts.append, error_rate_above=1.0, response_time_above=5.0, for_=3.0)
    sim.run(3, 0.01, 0.01, 0.01, errors=1)
    assert sim.alerts == []
    sim.run(3, 0.01, 0.01, 0.01, errors=2)
    (alert,) = sim.alerts
    assert alert.reasons == ("error_rate 2/s > 1/s",)
    assert alert.figures["error_rate"] == pytest.approx(2.0)


def test_the_alert_lists_the_recent_markers(Meter: type[MeterType]) -> None:
    """Markers of the hour before the episode are in the alert; older ones are not."""
    sim = Seconds(Meter)
    sim.run(30, 0.01)
    old = markers.add(Marker("cron nightly-report", sim.wall_ns() - 7200 * NS, 0))
    deploy = markers.add(Marker("deploy v1.2", sim.wall_ns() - 5 * NS, 1))
    sim.recorder.alert(sim.alerts.append, response_time_above=0.1, for_=3.0)
    sim.run(3, 0.5)
    (alert,) = sim.alerts
    assert deploy in alert.markers
    assert old not in alert.markers
    assert "recent changes: 'deploy v1.2'" in str(alert)


def test_a_failing_callback_is_a_counted_fault_and_the_rule_goes_on(
    Meter: type[MeterType],
) -> None:
    """The callback's exception never reaches take(); it is counted; later episodes still fire."""
    sim = Seconds(Meter)
    calls: list[Alert] = []

    def callback(alert: Alert) -> None:
        calls.append(alert)
        raise RuntimeError("the pager is down")

    before = querymeter.faults().get("alert: the callback raised", 0)
    rule = sim.recorder.alert(callback, response_time_above=0.1, for_=2.0)
    sim.run(2, 0.5)
    sim.run(2, 0.01)
    sim.run(2, 0.5)
    assert len(calls) == 2
    assert rule.alerts == 2
    assert querymeter.faults()["alert: the callback raised"] == before + 2


def test_cancel_removes_the_rule(Meter: type[MeterType]) -> None:
    """After cancel() (or leaving its with block) the rule sees no more steps."""
    sim = Seconds(Meter)
    with sim.recorder.alert(sim.alerts.append, response_time_above=0.1, for_=2.0) as rule:
        sim.run(1, 0.5)
    rule.cancel()
    sim.run(10, 0.5)
    assert sim.alerts == []
    assert "response_time_above=0.1" in repr(rule)


def test_a_coarser_resolution_checks_its_own_steps(Meter: type[MeterType]) -> None:
    """resolution=60 checks the minute steps: a slow minute fires once it has lasted for_."""
    sim = Seconds(Meter)
    sim.recorder.alert(sim.alerts.append, response_time_above=0.1, for_=120.0, resolution=60.0)
    sim.run(119, 0.5)
    assert sim.alerts == []
    sim.run(1, 0.5)
    (alert,) = sim.alerts
    assert alert.resolution == 60.0
    assert alert.duration == pytest.approx(120.0)


def test_the_callback_runs_on_the_recorder_thread() -> None:
    """With the recorder's thread running, a query stuck in flight fires on that thread."""
    meter = querymeter.Meter()
    recorder = FlightRecorder(meter, ((0.01, 100),))
    fired = threading.Event()
    threads: list[str] = []

    def callback(alert: Alert) -> None:
        threads.append(threading.current_thread().name)
        fired.set()

    recorder.alert(callback, utilization_above=0.5, for_=0.05)
    with recorder, meter.track():
        assert fired.wait(30.0)
    assert threads[0] == "querymeter-flight-recorder"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda r: r.alert(print), ValueError, "at least one threshold"),
        (lambda r: r.alert("print", utilization_above=0.5), TypeError, "callback must be callable"),
        (lambda r: r.alert(print, utilization_above=1.0), ValueError, "below 1"),
        (lambda r: r.alert(print, utilization_above="high"), TypeError, "utilization_above"),
        (lambda r: r.alert(print, response_time_above=-1), ValueError, "response_time_above"),
        (lambda r: r.alert(print, error_rate_above=float("inf")), ValueError, "error_rate_above"),
        (lambda r: r.alert(print, error_rate_above=1, for_=0), ValueError, "for_ must be finite"),
        (lambda r: r.alert(print, error_rate_above=1, for_=None), TypeError, "for_ must be"),
        (lambda r: r.alert(print, error_rate_above=1, clear_for=-5), ValueError, "clear_for"),
        (lambda r: r.alert(print, error_rate_above=1, resolution=5.0), ValueError, "not one of"),
    ],
)
def test_bad_arguments_are_named(
    Meter: type[MeterType],
    call: Callable[[FlightRecorder], object],
    error: type[Exception],
    message: str,
) -> None:
    """A bad argument raises TypeError or ValueError naming it."""
    sim = Seconds(Meter)
    with pytest.raises(error, match=message):
        call(sim.recorder)
