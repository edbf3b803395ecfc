"""Sampling: single queries captured into a bounded ring, at random and every slow one.

The decision is the core's, at each query's end, on the duration it has just
counted: every query at least ``slower_than`` seconds slow, and otherwise one
random draw against ``rate``.  Only a chosen query reaches Python, here, to be
made into a :class:`QuerySample`.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import itertools
import secrets
import sys
import threading
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import core
from ._fingerprint import fingerprint, statement_id
from ._table import MAX_SQL_CHARS, _identify, statement_text

__all__ = ["QuerySample", "SampleLog", "redact"]

_NO_TAGS: Mapping[str, str] = types.MappingProxyType({})


@dataclass(frozen=True, slots=True)
class QuerySample:
    """One query, captured: what ran, when, for how long, and how it ended."""

    #: The statement's text, cut at ``MAX_SQL_CHARS`` characters.
    sql: str
    fingerprint: str
    #: Unix time the query started, ns (its end less its duration).
    start_wall_ns: int
    #: How long it ran, ns, as the meter counted it.
    duration_ns: int
    #: The exception's type name if it raised (``psycopg.errors.UndefinedTable``), else None.
    error: str | None
    #: The rows the cursor reported, None where it did not know.
    rows: int | None
    #: Name of the thread that ran it.
    thread: str
    #: Name of the asyncio task that ran it, if any.
    task: str | None
    #: The tags of the scope it ran in.
    tags: Mapping[str, str] = field(default_factory=lambda: _NO_TAGS)
    #: The parameters, redacted unless sampling was enabled with ``params="raw"``;
    #: None unless enabled with ``params``.
    params: Any = None

    @property
    def statement_id(self) -> str:
        return statement_id(self.fingerprint)

    @property
    def start(self) -> datetime.datetime:
        """When it started (UTC)."""
        return datetime.datetime.fromtimestamp(self.start_wall_ns / 1e9, tz=datetime.UTC)

    def as_dict(self) -> dict[str, Any]:
        """The sample as plain data (for JSON); raw parameters as their repr."""
        params = self.params
        if params is not None and not isinstance(params, str | int | float | list | dict):
            params = repr(params)
        return {
            "sql": self.sql,
            "fingerprint": self.fingerprint,
            "statement_id": self.statement_id,
            "start_wall_ns": self.start_wall_ns,
            "duration_ns": self.duration_ns,
            "error": self.error,
            "rows": self.rows,
            "thread": self.thread,
            "task": self.task,
            "tags": dict(self.tags),
            "params": params,
        }


_SIZED = (str, bytes, bytearray, memoryview)
# The most items of a parameter list a redacted sample keeps.
_MOST = 32
_PLAIN = (bool, int, float, decimal.Decimal, datetime.date, datetime.time, datetime.timedelta)


def _kind(value: Any) -> str:
    """A parameter as its type, and its length where it has one; never its value."""
    if value is None:
        return "None"
    name = type(value).__name__
    if isinstance(value, _SIZED):
        return f"{name}[{len(value)}]"
    if isinstance(value, list | tuple | dict):
        return f"{name}[{len(value)}]"
    return name


def redact(params: Any) -> Any:
    """Parameters as types and lengths: ``(5, "abc")`` gives ``["int", "str[3]"]``.

    A mapping keeps its keys; a list or tuple its order (one level deep, so an
    executemany's rows show as ``tuple[3]``), the first 32 items only, then
    how many more; anything else, a generator say, is named by its type only
    and never iterated.
    """
    if params is None:
        return None
    if isinstance(params, Mapping):
        kinds = {str(key): _kind(value) for key, value in itertools.islice(params.items(), _MOST)}
        if len(params) > _MOST:
            kinds["..."] = f"{len(params) - _MOST} more"
        return kinds
    if isinstance(params, list | tuple):
        listed = [_kind(value) for value in params[:_MOST]]
        if len(params) > _MOST:
            listed.append(f"... {len(params) - _MOST} more")
        return listed
    return _kind(params)


def _raw(params: Any) -> Any:
    """Parameters as given, but never an iterator consumed: those by type only."""
    if params is None or isinstance(params, (list, tuple, Mapping, *_SIZED, *_PLAIN)):
        return params
    return _kind(params)


def _error_name(error_type: Any) -> str | None:
    if error_type is None:
        return None
    module = getattr(error_type, "__module__", "")
    name = getattr(error_type, "__qualname__", repr(error_type))
    return name if module == "builtins" else f"{module}.{name}"


def _tags(core_module: Any) -> Mapping[str, Any]:
    """The tags of the innermost scope the query ran in."""
    scope = core_module._current_scope()
    tags: Mapping[str, Any] = _NO_TAGS if scope is None else scope._tags()
    return tags


def _task_name() -> str | None:
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        return None
    return None if task is None else str(task.get_name())


class SampleLog:
    """The queries a meter captured (``meter.sampling``), made by ``meter.enable_sampling()``.

    Keeps the newest ``capacity`` samples and counts the older ones it let go
    in ``dropped``.
    """

    __slots__ = (
        "_core",
        "_core_module",
        "_lock",
        "_ring",
        "_taken",
        "capacity",
        "params",
        "rate",
        "slower_than",
    )

    def __init__(
        self,
        rate: float = 0.01,
        slower_than: float | None = None,
        capacity: int = 1000,
        params: bool | str = False,
        *,
        core_type: Any = None,
    ) -> None:
        """``core_type`` is the core's Sampling type, for a meter over the core
        that is not the default (``meter_class("python")``); the meter passes it."""
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise TypeError(f"rate must be a number from 0 to 1, not {type(rate).__name__}")
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be from 0 to 1, not {rate!r}")
        threshold_ns = -1
        if slower_than is not None:
            if isinstance(slower_than, bool) or not isinstance(slower_than, int | float):
                raise TypeError(
                    f"slower_than must be seconds or None, not {type(slower_than).__name__}"
                )
            if not 0 <= slower_than < 2**63 / 1e9:
                raise ValueError(f"slower_than must be seconds, 0 or more, not {slower_than!r}")
            threshold_ns = round(slower_than * 1e9)
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if params not in (False, True, "raw"):
            raise ValueError(f'params must be False, True or "raw", not {params!r}')
        self.rate = float(rate)
        self.slower_than = slower_than
        self.capacity = capacity
        self.params = params
        self._ring: collections.deque[QuerySample] = collections.deque(maxlen=capacity)
        self._taken = 0
        self._lock = threading.Lock()
        sampling_type = core.Sampling if core_type is None else core_type
        # The core this log samples for: its scopes give the samples' tags.
        self._core_module = sys.modules[sampling_type.__module__]
        self._core = sampling_type(self.rate, threshold_ns, self._capture, secrets.randbits(64))

    def _capture(
        self,
        sql: Any,
        dialect: str | None,
        params: Any,
        end_wall_ns: int,
        duration_ns: int,
        error_type: Any,
        rows: int,
    ) -> None:
        """Called by the core for each query it chose, after the query was counted."""
        text = statement_text(sql)
        if text is not None:
            shape = fingerprint(text, dialect)
        elif sql is None:
            text, shape = "", "(no statement text)"
        else:
            shape, text = _identify(sql, dialect)
        captured: Any = None
        if self.params == "raw":
            captured = _raw(params)
        elif self.params:
            captured = redact(params)
        sample = QuerySample(
            sql=text[:MAX_SQL_CHARS],
            fingerprint=shape,
            start_wall_ns=end_wall_ns - duration_ns,
            duration_ns=duration_ns,
            error=_error_name(error_type),
            rows=rows if rows >= 0 else None,
            thread=threading.current_thread().name,
            task=_task_name(),
            tags=_tags(self._core_module),
            params=captured,
        )
        with self._lock:
            self._ring.append(sample)
            self._taken += 1

    def samples(self) -> list[QuerySample]:
        """The samples kept, oldest first."""
        with self._lock:
            return list(self._ring)

    @property
    def dropped(self) -> int:
        """How many samples were let go to keep the newest ``capacity``."""
        with self._lock:
            return self._taken - len(self._ring)

    def __len__(self) -> int:
        return len(self._ring)

    def __repr__(self) -> str:
        return (
            f"<SampleLog rate={self.rate} slower_than={self.slower_than} "
            f"samples={len(self)} dropped={self.dropped}>"
        )
