"""Change markers: a bounded, process-wide log of what changed and when ("deploy v1.2").

``querymeter.mark("deploy v1.2", version="1.2")`` records a :class:`Marker`
with the wall time and the monotonic time of the call.  The flight recorder,
its timelines and dumps, and the session reports show the markers that fall
in their span, so that a change in the figures can be put next to the change
that came just before it ("what changed?").

What a marker may hold is checked when it is made, so that every marker can
be written as JSON and the log stays small:

- ``label``: a non-empty ``str`` (not only white space), at most
  :data:`MAX_LABEL_CHARS` characters;
- ``attrs``: at most :data:`MAX_ATTRS` keyword arguments whose values are JSON
  scalars: ``str`` (at most :data:`MAX_VALUE_CHARS` characters), ``int``,
  ``bool``, a finite ``float``, or ``None``.  Anything else (a list, a dict, a
  date, NaN) is refused with a TypeError or ValueError naming the attribute:
  format it into a string yourself.

The log keeps the newest :data:`MAX_MARKERS` markers; older ones are dropped
and counted (:func:`dropped`).  It is thread-safe, and its lock is renewed in a
forked child, which keeps the parent's markers (they are its history too).
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_ATTRS",
    "MAX_LABEL_CHARS",
    "MAX_MARKERS",
    "MAX_VALUE_CHARS",
    "Marker",
    "add",
    "clear",
    "dropped",
    "mark",
    "markers",
]

#: How many markers the process keeps (the newest).
MAX_MARKERS = 1000
#: The longest label, characters.
MAX_LABEL_CHARS = 200
#: The most attributes one marker may have.
MAX_ATTRS = 32
#: The longest string value of an attribute, characters.
MAX_VALUE_CHARS = 1000


def _check_label(label: object) -> str:
    if not isinstance(label, str):
        raise TypeError(f"a marker's label must be a str, not {type(label).__name__}")
    if not label.strip():
        raise ValueError("a marker's label must not be empty")
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(
            f"a marker's label must be at most {MAX_LABEL_CHARS} characters, not {len(label)}"
        )
    return str.__str__(label)


def _check_attrs(attrs: Mapping[str, object]) -> Mapping[str, object]:
    if len(attrs) > MAX_ATTRS:
        raise ValueError(f"a marker may have at most {MAX_ATTRS} attributes, not {len(attrs)}")
    checked: dict[str, object] = {}
    for name, value in attrs.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"a marker's attribute names must be non-empty str, not {name!r}")
        if value is None or isinstance(value, bool):
            checked[name] = value
        elif isinstance(value, int):
            checked[name] = int(value)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ValueError(
                    f"marker attribute {name!r} must be a finite number, not {value!r}"
                )
            checked[name] = float(value)
        elif isinstance(value, str):
            if len(value) > MAX_VALUE_CHARS:
                raise ValueError(
                    f"marker attribute {name!r} must be at most {MAX_VALUE_CHARS} "
                    f"characters, not {len(value)}"
                )
            checked[name] = str.__str__(value)
        else:
            raise TypeError(
                f"marker attribute {name!r} must be a str, int, float, bool or None, "
                f"not {type(value).__name__} (format it into a str)"
            )
    return types.MappingProxyType(checked)


@dataclass(frozen=True, slots=True)
class Marker:
    """A change marker: what changed (``label``, ``attrs``) and when.

    ``wall_ns`` is Unix time in ns (``time.time_ns()``), for calendars and
    timelines; ``monotonic_ns`` is ``time.monotonic_ns()`` at the same call,
    for ordering within the process.  ``attrs`` is a read-only mapping of JSON
    scalars.  Made by :func:`mark`; constructing one directly validates the
    same way (for replaying markers from elsewhere, see :func:`add`).
    """

    label: str
    wall_ns: int
    monotonic_ns: int
    attrs: Mapping[str, object] = field(default_factory=lambda: types.MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", _check_label(self.label))
        for name in ("wall_ns", "monotonic_ns"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"a marker's {name} must be an int, not {type(value).__name__}")
        if not isinstance(self.attrs, Mapping):
            raise TypeError(f"a marker's attrs must be a mapping, not {type(self.attrs).__name__}")
        object.__setattr__(self, "attrs", _check_attrs(self.attrs))

    @property
    def wall(self) -> float:
        """Unix time of the marker, s (``time.time()`` scale)."""
        return self.wall_ns / 1e9

    def as_dict(self) -> dict[str, Any]:
        """The marker as plain data (for JSON)."""
        return {
            "label": self.label,
            "wall_ns": self.wall_ns,
            "monotonic_ns": self.monotonic_ns,
            "attrs": dict(self.attrs),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Marker:
        """The marker that :meth:`as_dict` gave."""
        return cls(data["label"], data["wall_ns"], data["monotonic_ns"], data.get("attrs", {}))

    def __hash__(self) -> int:
        return hash((self.label, self.wall_ns, self.monotonic_ns))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Marker):
            return NotImplemented
        return (
            self.label == other.label
            and self.wall_ns == other.wall_ns
            and self.monotonic_ns == other.monotonic_ns
            and dict(self.attrs) == dict(other.attrs)
        )

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.wall_ns // 1_000_000_000))
        extra = ", ".join(f"{name}={value!r}" for name, value in self.attrs.items())
        return f"{when} UTC {self.label}" + (f" ({extra})" if extra else "")


_lock = threading.Lock()
_log: collections.deque[Marker] = collections.deque(maxlen=MAX_MARKERS)
_dropped = 0


def add(marker: Marker) -> Marker:
    """Keep a marker made elsewhere (replayed from a log, or at a simulated time); returns it."""
    global _dropped
    if not isinstance(marker, Marker):
        raise TypeError(f"add() takes a Marker, not {type(marker).__name__}")
    with _lock:
        if len(_log) == MAX_MARKERS:
            _dropped += 1
        _log.append(marker)
    return marker


def mark(label: str, /, **attrs: object) -> Marker:
    """Record a change marker now: ``mark("deploy v1.2", version="1.2")``; returns it.

    ``label`` is a non-empty str; ``attrs`` are JSON scalars (str, int, float,
    bool, None).  A bad argument raises TypeError or ValueError naming it.
    """
    marker = Marker(_check_label(label), time.time_ns(), time.monotonic_ns(), attrs)
    return add(marker)


def markers(since_wall_ns: int | None = None) -> list[Marker]:
    """The kept markers, oldest first (by wall time); only those at or after
    ``since_wall_ns`` (Unix ns) if given."""
    if since_wall_ns is not None and (
        isinstance(since_wall_ns, bool) or not isinstance(since_wall_ns, int)
    ):
        raise TypeError(f"since_wall_ns must be an int or None, not {type(since_wall_ns).__name__}")
    with _lock:
        kept = list(_log)
    kept.sort(key=lambda marker: (marker.wall_ns, marker.monotonic_ns))
    if since_wall_ns is None:
        return kept
    return [marker for marker in kept if marker.wall_ns >= since_wall_ns]


def dropped() -> int:
    """How many markers were dropped to keep the log at :data:`MAX_MARKERS`."""
    with _lock:
        return _dropped


def clear() -> None:
    """Forget every marker (for tests)."""
    global _dropped
    with _lock:
        _log.clear()
        _dropped = 0


def _after_fork_in_child() -> None:
    # A parent's thread may have held the lock at the fork.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
