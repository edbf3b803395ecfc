"""A profiling session's report: what was found, with the settings that found it.

A :class:`Report` is plain data (``as_dict()``, the JSON that ``save`` writes
and ``Report.load`` reads back) with accessors for what a reader asks first:
the interval's figures, the top statements by time, by calls and by p99 with
their share of the session's DB time, where the time went (the wait
analysis), the samples, the change markers made during the session
(``querymeter.mark``), the observer effect, and the settings, versions,
host and times.  ``report.compare(baseline)`` lists the statements that got
slower or more frequent since a report saved earlier.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..markers import Marker, markers
from ..report import render_session_html, render_session_markdown
from ..statements import QuerySample

__all__ = ["FORMAT", "Change", "Comparison", "Report", "marker_dicts", "markers_between"]

#: The version of the saved JSON's layout; Report.load refuses others.
FORMAT = 1
_SUFFIXES = (".json", ".md", ".html")


@dataclass(frozen=True)
class Change:
    """One statement's change between a baseline report and this one."""

    fingerprint: str
    before: float | None
    after: float | None

    @property
    def ratio(self) -> float | None:
        if not self.before or self.after is None:
            return None
        return self.after / self.before


@dataclass(frozen=True)
class Comparison:
    """What changed from a baseline report to this one, statement by statement."""

    #: Mean time per call grew by more than the threshold (ns before, after).
    slower: tuple[Change, ...]
    #: Calls per second grew by more than the threshold.
    more_frequent: tuple[Change, ...]
    #: Ran in this session only, or in the baseline only.
    new: tuple[str, ...]
    gone: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.slower or self.more_frequent or self.new)


class Report:
    """The report of a profiling session (see the module's doc)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not a querymeter session report of format {FORMAT}: {data.get('format')!r}"
            )
        self._data = dict(data)

    # ------------------------------------------------------------ reading

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data, as saved in JSON."""
        return json.loads(json.dumps(self._data))  # type: ignore[no-any-return]

    @property
    def objective(self) -> str | None:
        """Why the session was run, as given."""
        objective: str | None = self._data.get("objective")
        return objective

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self._data["settings"])

    @property
    def figures(self) -> dict[str, Any]:
        """The interval's figures: queries, errors, X, N, R, U, S (all queries, focused or not)."""
        return dict(self._data["figures"])

    @property
    def statements(self) -> list[dict[str, Any]]:
        """Every statement of the session, largest total time first, with its share."""
        return list(self._data["statements"])

    def top(self, n: int = 10, by: str = "total") -> list[dict[str, Any]]:
        """The top ``n`` statements by "total" (time), "calls" or "p99"."""
        keys = {"total": "total_ns", "calls": "calls", "p99": "p99_ns"}
        if by not in keys:
            raise ValueError(f"by must be one of {', '.join(keys)}, not {by!r}")
        key = keys[by]
        ranked = sorted(self.statements, key=lambda s: (-(s.get(key) or 0), s["fingerprint"]))
        return ranked[:n]

    @property
    def waits(self) -> dict[str, Any]:
        """Where the time went: client side (pool, database, application), and the
        server's waits when the session sampled them."""
        return dict(self._data["waits"])

    @property
    def samples(self) -> list[QuerySample]:
        """The captured queries, oldest first."""
        return [_sample(data) for data in self._data["samples"]]

    def slowest(self, n: int = 10) -> list[QuerySample]:
        """The ``n`` slowest captured queries, slowest first."""
        return sorted(self.samples, key=lambda s: -s.duration_ns)[:n]

    @property
    def markers(self) -> list[Marker]:
        """The change markers made from the session's start to its end, oldest first
        (none in a report saved before reports kept them)."""
        return [Marker.from_dict(data) for data in self._data.get("markers", [])]

    @property
    def observer_effect(self) -> dict[str, Any]:
        """What the instrumentation itself cost in this session (see querymeter.overhead)."""
        return dict(self._data["observer_effect"])

    @property
    def plans(self) -> list[dict[str, Any]]:
        """EXPLAIN plans of the top statements, when the session asked for them."""
        return list(self._data.get("plans", []))

    @property
    def notes(self) -> list[str]:
        """What the session could not do, or stopped doing, and why."""
        return list(self._data["notes"])

    @property
    def environment(self) -> dict[str, Any]:
        """Versions (Python, querymeter, drivers, servers), host and process."""
        return dict(self._data["environment"])

    @property
    def started(self) -> datetime.datetime:
        return _datetime(self._data["started_wall_ns"])

    @property
    def ended(self) -> datetime.datetime:
        return _datetime(self._data["ended_wall_ns"])

    @property
    def ended_by(self) -> str:
        """ "stop", "duration" (the leash) or "disable" (the kill switch)."""
        return str(self._data["ended_by"])

    def __repr__(self) -> str:
        figures = self._data["figures"]
        return (
            f"<querymeter.Report {self.started:%Y-%m-%d %H:%M:%S} "
            f"queries={figures['queries']} statements={len(self._data['statements'])} "
            f"ended_by={self.ended_by}>"
        )

    # ------------------------------------------------------------- saving

    def save(self, path: str | Path) -> Path:
        """Write the report: JSON, Markdown or self-contained HTML by the suffix
        (``.json``, ``.md``, ``.html``).  Raises ValueError for another suffix and
        OSError where the file cannot be written."""
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in _SUFFIXES:
            raise ValueError(
                f"cannot tell the format of {str(target)!r}: use one of {', '.join(_SUFFIXES)}"
            )
        data = self.as_dict()
        if suffix == ".json":
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        elif suffix == ".md":
            text = render_session_markdown(data)
        else:
            text = render_session_html(data)
        target.write_text(text, encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | Path) -> Report:
        """Read a report saved as JSON."""
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        if not isinstance(data, dict):
            raise ValueError(f"{str(path)!r} does not hold a querymeter session report")
        return cls(data)

    # ---------------------------------------------------------- comparing

    def compare(self, baseline: Report, *, threshold: float = 0.1) -> Comparison:
        """What changed since ``baseline`` (a report of an earlier session): statements
        whose mean time or whose calls per second grew by more than ``threshold``
        (0.1: 10 %), and those that are new or gone."""
        if not isinstance(baseline, Report):
            raise TypeError(f"baseline must be a Report, not {type(baseline).__name__}")
        if not threshold >= 0:
            raise ValueError(f"threshold must be 0 or more, not {threshold!r}")
        before = {s["fingerprint"]: s for s in baseline.statements}
        after = {s["fingerprint"]: s for s in self.statements}
        slower, frequent = [], []
        for fingerprint, now in after.items():
            then = before.get(fingerprint)
            if then is None:
                continue
            change = Change(fingerprint, then.get("mean_ns"), now.get("mean_ns"))
            if change.ratio is not None and change.ratio > 1 + threshold:
                slower.append(change)
            rate = Change(fingerprint, _rate(then, baseline), _rate(now, self))
            if rate.ratio is not None and rate.ratio > 1 + threshold:
                frequent.append(rate)
        return Comparison(
            slower=tuple(sorted(slower, key=lambda c: -(c.ratio or 0))),
            more_frequent=tuple(sorted(frequent, key=lambda c: -(c.ratio or 0))),
            new=tuple(sorted(set(after) - set(before))),
            gone=tuple(sorted(set(before) - set(after))),
        )


def _rate(statement: Mapping[str, Any], report: Report) -> float | None:
    duration = report.figures.get("duration_s")
    return statement["calls"] / duration if duration else None


def _datetime(ns: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)


def _sample(data: Mapping[str, Any]) -> QuerySample:
    return QuerySample(
        sql=data["sql"],
        fingerprint=data["fingerprint"],
        start_wall_ns=data["start_wall_ns"],
        duration_ns=data["duration_ns"],
        error=data["error"],
        rows=data["rows"],
        thread=data["thread"],
        task=data["task"],
        tags=dict(data["tags"]),
        params=data["params"],
    )


def sample_dicts(samples: Sequence[QuerySample]) -> list[dict[str, Any]]:
    return [sample.as_dict() for sample in samples]


def markers_between(start_wall_ns: int, end_wall_ns: int) -> list[Marker]:
    """The kept change markers from ``start_wall_ns`` to ``end_wall_ns`` (Unix ns, both
    included), oldest first."""
    return [m for m in markers(start_wall_ns) if m.wall_ns <= end_wall_ns]


def marker_dicts(start_wall_ns: int, end_wall_ns: int) -> list[dict[str, Any]]:
    """:func:`markers_between` as plain data."""
    return [m.as_dict() for m in markers_between(start_wall_ns, end_wall_ns)]
