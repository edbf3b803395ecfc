"""Alerts on symptoms: a callback once per episode of slow responses, errors or saturation.

``recorder.alert(callback, response_time_above=0.25, for_=60.0)`` checks each
new step of one resolution (the finest by default) through the recorder's
step listeners.  The rule has two states, with hysteresis:

* armed: a step breaches when any threshold is exceeded in it.  Once the
  consecutive breaching steps span ``for_`` seconds, ``callback(alert)`` is
  called, once, and the rule is firing;
* firing: no further call, however long the symptom lasts.  Once the
  consecutive clear steps span ``clear_for`` seconds (default ``for_``), the
  rule re-arms.

So a symptom that flickers around its threshold makes one alert, not one per
flicker.  The callback runs on the thread that took the step (the
recorder's, or ``take()``'s caller); its exceptions are counted in
``querymeter.faults()`` and never reach the application.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .. import _faults
from ..readings import Interval
from ._baseline import METRICS, Anomaly, RecorderLike, _duration, _utc, _value, anomalies_since

if TYPE_CHECKING:
    from ..markers import Marker

__all__ = ["Alert", "AlertRule", "alert"]

_NS_PER_S = 1_000_000_000
#: Markers of this many seconds before an episode began are listed with its alert.
MARKERS_LOOKBACK = 3600.0
#: Most markers an alert lists (the newest).
MAX_ALERT_MARKERS = 10

_THRESHOLDS = {
    "response_time": "response_time_above",
    "error_rate": "error_rate_above",
    "utilization": "utilization_above",
}


@dataclass(frozen=True, slots=True)
class Alert:
    """What a callback gets: the symptom, its figures, the anomalies and the recent markers.

    ``reasons`` names what breached in the step that fired, e.g.
    ``("response_time 310 ms > 250 ms",)``; ``thresholds`` the rule's
    thresholds by metric.  ``interval`` is the episode so far (from the start
    of its first breaching step to the end of the step that fired): its
    ``response_time``, ``error_rate``, ``utilization``, ``throughput`` are the
    episode's figures (also in ``figures``).  ``started_wall_ns`` and
    ``fired_wall_ns`` are Unix times (ns) on the meter's clock.
    ``anomalies``: the steps of the episode outside the baseline's band (at the
    rule's resolution); ``markers``: the change markers from an hour before
    the episode on, newest last.
    """

    reasons: tuple[str, ...]
    thresholds: Mapping[str, float]
    figures: Mapping[str, float | None]
    interval: Interval
    started_wall_ns: int
    fired_wall_ns: int
    resolution: float
    anomalies: tuple[Anomaly, ...]
    markers: tuple[Marker, ...]

    @property
    def duration(self) -> float:
        """How long the symptom had held when the alert fired, s."""
        return (self.fired_wall_ns - self.started_wall_ns) / _NS_PER_S

    def __str__(self) -> str:
        text = (
            f"{_utc(self.fired_wall_ns)}: {'; '.join(self.reasons)} for {_duration(self.duration)}"
        )
        if self.markers:
            text += "; recent changes: " + ", ".join(repr(m.label) for m in self.markers)
        if self.anomalies:
            text += f"; {len(self.anomalies)} anomalies"
        return text


class AlertRule:
    """One alert rule on a recorder (made by :func:`alert`); ``cancel()`` removes it.

    ``firing`` says whether an episode is on (its alert sent); ``alerts``
    counts the alerts sent; ``thresholds`` maps each metric to its threshold.
    """

    def __init__(
        self,
        recorder: RecorderLike,
        callback: Callable[[Alert], object],
        thresholds: Mapping[str, float],
        for_: float,
        clear_for: float,
        resolution: float,
    ) -> None:
        self.recorder = recorder
        self.callback = callback
        self.thresholds: Mapping[str, float] = MappingProxyType(dict(thresholds))
        self.for_ = for_
        self.clear_for = clear_for
        self.resolution = resolution
        self.firing = False
        self.alerts = 0
        self._lock = threading.Lock()
        # The current run of breaching (or, while firing, clear) steps.
        self._breach_start: Interval | None = None
        self._breach_start_wall_ns = 0
        self._clear_ns = 0
        self._remove: Callable[[], None] | None = None
        _rules.add(self)

    def cancel(self) -> None:
        """Stop checking (idempotent)."""
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()

    def __enter__(self) -> AlertRule:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        limits = ", ".join(f"{_THRESHOLDS[k]}={v:g}" for k, v in self.thresholds.items())
        state = "firing" if self.firing else "armed"
        return f"<AlertRule {limits}, for_={self.for_:g} s: {state}, {self.alerts} sent>"

    def reasons(self, step: Interval) -> tuple[str, ...]:
        """What of ``step`` exceeds a threshold (nothing for a figure it does not define)."""
        found = []
        for metric, limit in self.thresholds.items():
            value: float | None = getattr(step, metric)
            if value is not None and value > limit:
                unit = METRICS[metric]
                found.append(f"{metric} {_value(value, unit)} > {_value(limit, unit)}")
        return tuple(found)

    def on_step(self, recorder: Any, resolution: float) -> None:
        """The step listener: advance the state machine by the newest step."""
        if resolution != self.resolution:
            return
        try:
            fired = self._advance(recorder)
        except Exception as exc:  # noqa: BLE001 - checking must never reach the application
            _faults.report("alert: checking a step failed", exc)
            return
        if fired is not None:
            try:
                self.callback(fired)
            except Exception as exc:  # noqa: BLE001 - the callback's failure is the rule's fault
                _faults.report("alert: the callback raised", exc)

    def _advance(self, recorder: Any) -> Alert | None:
        timeline = recorder.timeline(resolution=self.resolution)
        if not timeline:
            return None
        step = timeline[-1]
        reasons = self.reasons(step)
        with self._lock:
            if self.firing:
                if reasons:
                    self._clear_ns = 0
                    return None
                self._clear_ns += step.duration_ns
                if self._clear_ns >= self.clear_for * _NS_PER_S:
                    self.firing = False
                    self._breach_start = None
                    self._clear_ns = 0
                return None
            if not reasons:
                self._breach_start = None
                return None
            if (
                self._breach_start is None
                or self._breach_start.later.meter_id != step.later.meter_id
            ):
                self._breach_start = step
                self._breach_start_wall_ns = recorder.step_wall_ns(step) - step.duration_ns
            episode = Interval(self._breach_start.earlier, step.later)
            if episode.duration_ns < self.for_ * _NS_PER_S:
                return None
            self.firing = True
            self.alerts += 1
            self._clear_ns = 0
            started = self._breach_start_wall_ns
        fired_at = recorder.step_wall_ns(step)
        return Alert(
            reasons=reasons,
            thresholds=self.thresholds,
            figures=MappingProxyType(
                {
                    "response_time": episode.response_time,
                    "error_rate": episode.error_rate,
                    "utilization": episode.utilization,
                    "throughput": episode.throughput,
                    "concurrency": episode.concurrency,
                }
            ),
            interval=episode,
            started_wall_ns=started,
            fired_wall_ns=fired_at,
            resolution=self.resolution,
            anomalies=tuple(_episode_anomalies(recorder, self.resolution, started)),
            markers=tuple(
                m
                for m in recorder.markers()
                if started - MARKERS_LOOKBACK * _NS_PER_S <= m.wall_ns <= fired_at
            )[-MAX_ALERT_MARKERS:],
        )


def _episode_anomalies(recorder: Any, resolution: float, started_wall_ns: int) -> list[Anomaly]:
    try:
        # The steps that end after the episode began: its own.
        return anomalies_since(recorder, resolution, None, 10, 4.0, 3600.0, started_wall_ns)
    except Exception as exc:  # noqa: BLE001 - the alert still goes out without them
        _faults.report("alert: the anomalies could not be computed", exc)
        return []


def _threshold(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or None, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    if name == "utilization_above" and number >= 1.0:
        raise ValueError(f"utilization_above must be below 1 (utilization is 0..1), got {value!r}")
    return number


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number > 0.0):
        raise ValueError(f"{name} must be finite and > 0 seconds, got {value!r}")
    return number


def alert(
    recorder: RecorderLike,
    callback: Callable[[Alert], object],
    *,
    response_time_above: float | None = None,
    error_rate_above: float | None = None,
    utilization_above: float | None = None,
    for_: float = 60.0,
    clear_for: float | None = None,
    resolution: float | None = None,
) -> AlertRule:
    """Call ``callback(Alert)`` once per episode in which a threshold is exceeded for ``for_`` s.

    Thresholds (at least one): ``response_time_above`` (mean response time
    of a step, s), ``error_rate_above`` (errors/s), ``utilization_above``
    (0..1).  A step breaches when any of them is exceeded.  The rule fires
    when the consecutive breaching steps span ``for_`` seconds, and re-arms
    once the consecutive clear steps span ``clear_for`` seconds (default
    ``for_``).  ``resolution``: the ring whose steps are checked (default the
    finest).  Returns the :class:`AlertRule`; ``rule.cancel()`` removes it.
    """
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    given = {
        "response_time": _threshold("response_time_above", response_time_above),
        "error_rate": _threshold("error_rate_above", error_rate_above),
        "utilization": _threshold("utilization_above", utilization_above),
    }
    thresholds = {metric: value for metric, value in given.items() if value is not None}
    if not thresholds:
        raise ValueError(
            "alert() needs at least one threshold: response_time_above, error_rate_above "
            "or utilization_above"
        )
    hold = _seconds("for_", for_)
    clear = hold if clear_for is None else _seconds("clear_for", clear_for)
    resolutions = [float(r) for r, _ in recorder.resolutions]
    if resolution is None:
        chosen = min(resolutions)
    else:
        chosen = _seconds("resolution", resolution)
        if chosen not in resolutions:
            raise ValueError(
                f"resolution {resolution!r} is not one of the recorder's: "
                f"{', '.join(f'{r:g}' for r in resolutions)}"
            )
    rule = AlertRule(recorder, callback, thresholds, hold, clear, chosen)
    rule._remove = recorder.add_step_listener(rule.on_step)
    return rule


# Rules made in a parent keep working in a forked child (with the child's
# recorder): their locks are renewed there.
_rules: weakref.WeakSet[AlertRule] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for rule in list(_rules):
        rule._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
