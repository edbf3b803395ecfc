"""Meter: the public counter API over the chosen core, the default meter, fork safety."""

from __future__ import annotations

import functools
import inspect
import os
import secrets
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

from . import _faults, core
from .readings import Snapshot
from .statements import QuerySample, SampleLog, StatementTable

if TYPE_CHECKING:
    from .core import Token

__all__ = [
    "Meter",
    "QueryObserver",
    "add_query_observer",
    "core_module",
    "default_meter",
    "meter_argument",
    "meter_class",
    "remove_query_observer",
    "snapshot",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T", bound=tuple[Any, ...])


def _new_meter_id() -> int:
    # Random, not a counter: snapshots from different processes (after fork,
    # or aggregated later) must never be taken for the same meter's.
    return secrets.randbits(63)


class _Core(Protocol):
    """What the API needs from a core (C or Python)."""

    @property
    def meter_id(self) -> int: ...
    def begin(self) -> Token: ...
    def end(self, token: Token, error: bool = False) -> int: ...
    def _timed(self, func: Callable[_P, _R]) -> Callable[_P, _R]: ...
    def _awaiting(self, awaitable: Awaitable[_R]) -> Awaitable[_R]: ...
    def _read(self, cls: type[_T]) -> _T: ...
    def _reset(self, meter_id: int) -> None: ...
    def _observe(self, statements: Any, sampling: Any, observer: Any) -> None: ...


#: What the core calls after each query a meter counts, when asked:
#: ``observer(sql, dialect, elapsed_ns, error, error_type)``.  ``sql`` and
#: ``dialect`` are None where the hook does not know them; ``error_type`` is
#: the class of the exception that ended the query (None on success, or for an
#: error that was not an exception, such as ``end(token, error=True)``).
QueryObserver = Callable[[Any, "str | None", int, bool, "type[BaseException] | None"], object]


class _Observing:
    """What a meter observes besides its counters: its statement table, its
    sampling, and the observers called with each query."""

    __slots__ = ("last_sampling", "lock", "observers", "sampling", "statements")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statements: StatementTable | None = None
        self.sampling: SampleLog | None = None
        # The samples of the latest sampling, kept after it is disabled.
        self.last_sampling: SampleLog | None = None
        self.observers: tuple[QueryObserver, ...] = ()

    def apply(self, meter: _Core) -> None:
        """Hand the core what to observe; caller holds the lock."""
        meter._observe(
            None if self.statements is None else self.statements._core,
            None if self.sampling is None else self.sampling._core,
            _one_observer(self.observers),
        )


def _one_observer(observers: tuple[QueryObserver, ...]) -> QueryObserver | None:
    """The one callable the core calls for ``observers``: None for none (the core
    then skips a branch), the observer itself for one, else a fan-out."""
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]

    def fan_out(
        sql: Any,
        dialect: str | None,
        elapsed_ns: int,
        error: bool,
        error_type: type[BaseException] | None,
    ) -> None:
        for observer in observers:
            # Each in turn: one observer's fault does not keep the query from the others.
            try:
                observer(sql, dialect, elapsed_ns, error, error_type)
            except Exception as exc:  # noqa: BLE001 - a fault, as the core counts its observer's
                _faults.report("could not call a query observer", exc)

    return fan_out


def add_query_observer(meter: Any, observer: QueryObserver) -> None:
    """Call ``observer`` after each query ``meter`` counts (see ``QueryObserver``).

    Its exceptions are faults (``querymeter.faults()``), never the
    application's.  The same observer added twice is called twice.
    """
    if not callable(observer):
        raise TypeError(f"observer must be callable, not {type(observer).__name__}")
    observing = _observing(meter)
    with observing.lock:
        observing.observers = (*observing.observers, observer)
        observing.apply(meter)


def remove_query_observer(meter: Any, observer: QueryObserver) -> bool:
    """Stop calling ``observer`` (once, if it was added twice); False if it was not there."""
    observing = _observing(meter)
    with observing.lock:
        observers = list(observing.observers)
        for index, added in enumerate(observers):
            # By identity (the caller keeps what it added): an observer's __eq__ is not ours to run.
            if added is observer:
                del observers[index]
                observing.observers = tuple(observers)
                observing.apply(meter)
                return True
    return False


_observing_lock = threading.Lock()


def core_module(meter: Any) -> Any:
    """The core module (C or Python) a meter counts with: its tables must be of the same."""
    for cls in type(meter).__mro__:
        if cls.__name__ == "MeterCore":
            return sys.modules[cls.__module__]
    return core


def _observing(meter: Any) -> _Observing:
    observing: _Observing | None = getattr(meter, "_observing", None)
    if observing is None:
        # A meter whose __init__ did not run: made once, under a lock.
        with _observing_lock:
            observing = getattr(meter, "_observing", None)
            if observing is None:
                observing = meter._observing = _Observing()
    return observing


# Every live meter, so that a forked child can restart them all.
_live_meters: weakref.WeakSet[Any] = weakref.WeakSet()


class _MeterAPI:
    """The public API of a meter, over either core (see ``meter_class``).

    The counters are the core's; the concrete classes add one slot,
    ``_observing``, for the statement table and sampling.
    """

    __slots__ = ()

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        super().__init__(clock, meter_id=_new_meter_id())  # type: ignore[call-arg]
        self._observing = _Observing()  # type: ignore[misc]
        _live_meters.add(self)

    # ------------------------------------------------ statements and sampling

    @property
    def statements(self) -> StatementTable | None:
        """The statement table while aggregation by statement is on, else None."""
        return _observing(self).statements

    def enable_statements(self, max_statements: int = 5000) -> StatementTable:
        """Aggregate every query the meter counts under its statement's fingerprint.

        Returns the table (also ``meter.statements``).  Enabling it again with
        the same ``max_statements`` returns the table in use; with another,
        raises ValueError (disable it first).
        """
        table = StatementTable(max_statements, core_type=core_module(self).Statements)
        observing = _observing(self)
        with observing.lock:
            current = observing.statements
            if current is not None:
                if current.max_statements != max_statements:
                    raise ValueError(
                        f"statements are already enabled with max_statements="
                        f"{current.max_statements}; call disable_statements() first"
                    )
                return current
            observing.statements = table
            observing.apply(self)  # type: ignore[arg-type]
        return table

    def disable_statements(self) -> StatementTable | None:
        """Stop aggregating by statement; returns the table that was in use (still readable)."""
        observing = _observing(self)
        with observing.lock:
            table, observing.statements = observing.statements, None
            observing.apply(self)  # type: ignore[arg-type]
        return table

    @property
    def sampling(self) -> SampleLog | None:
        """The sample log while sampling is on, else None."""
        return _observing(self).sampling

    def enable_sampling(
        self,
        rate: float = 0.01,
        slower_than: float | None = None,
        capacity: int = 1000,
        params: bool | str = False,
    ) -> SampleLog:
        """Capture single queries: each with probability ``rate``, and every one that
        takes at least ``slower_than`` seconds, into a ring of the newest ``capacity``.

        Parameters are not captured unless ``params`` is True (then as types and
        lengths only) or "raw".  Enabling sampling again replaces the running one.
        """
        log = SampleLog(rate, slower_than, capacity, params, core_type=core_module(self).Sampling)
        observing = _observing(self)
        with observing.lock:
            observing.sampling = observing.last_sampling = log
            observing.apply(self)  # type: ignore[arg-type]
        return log

    def disable_sampling(self) -> SampleLog | None:
        """Stop sampling; returns the log that was in use (its samples stay readable)."""
        observing = _observing(self)
        with observing.lock:
            log, observing.sampling = observing.sampling, None
            observing.apply(self)  # type: ignore[arg-type]
        return log

    def samples(self) -> list[QuerySample]:
        """The samples of the latest sampling, running or stopped, oldest first."""
        log = _observing(self).last_sampling
        return [] if log is None else log.samples()

    def snapshot(self: _Core) -> Snapshot:
        """Read every counter at one instant, the time of queries in flight included."""
        return self._read(Snapshot)

    @overload
    def tracked(
        self: _Core, func: Callable[_P, Coroutine[Any, Any, _R]]
    ) -> Callable[_P, Coroutine[Any, Any, _R]]: ...

    @overload
    def tracked(self: _Core, func: Callable[_P, _R]) -> Callable[_P, _R]: ...

    def tracked(self: _Core, func: Callable[_P, Any]) -> Callable[_P, Any]:
        """Decorate a function so that each call counts as one query.

        A coroutine function counts until its coroutine finishes; an exception,
        or the coroutine's cancellation, counts as an error and passes through
        unchanged.  Generator functions are refused: their work happens after
        the call returns, so the call is not the query.
        """
        if inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func):
            raise TypeError(
                f"cannot track generator function {func.__qualname__}: its work runs "
                "after the call returns; track the code that consumes it instead"
            )
        wrapper: Callable[..., Any]
        if inspect.iscoroutinefunction(func):
            wrapper = _tracked_coroutine(self, func)
        else:
            wrapper = self._timed(func)
        # Copied here for both cores, so that their wrappers look alike.
        functools.update_wrapper(wrapper, func)
        return wrapper

    def _after_fork_in_child(self: _Core) -> None:
        self._reset(_new_meter_id())
        # The parent's table and samples are the parent's: the child starts
        # its own, with the same settings, as its counters start from zero.
        old = getattr(self, "_observing", None)
        if old is None:
            return
        observing = _Observing()
        module = core_module(self)
        if old.statements is not None:
            observing.statements = StatementTable(
                old.statements.max_statements, core_type=module.Statements
            )
        if old.sampling is not None:
            log = old.sampling
            observing.sampling = observing.last_sampling = SampleLog(
                log.rate, log.slower_than, log.capacity, log.params, core_type=module.Sampling
            )
        # Observers go on, as the table and sampling do: each is the
        # exporter's, and the exporter decides what a child reports.
        observing.observers = old.observers
        self._observing = observing  # type: ignore[attr-defined]
        observing.apply(self)

    def __repr__(self: _Core) -> str:
        reading = self._read(Snapshot)
        return (
            f"<querymeter.Meter {reading.meter_id:#x} queries={reading.queries} "
            f"errors={reading.errors} concurrency={reading.concurrency}>"
        )


def _tracked_coroutine(
    meter: _Core, func: Callable[..., Awaitable[Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    awaiting = meter._awaiting

    async def tracked(*args: Any, **kwargs: Any) -> Any:
        # The core's awaitable pairs begin and end: from its first step until
        # it completes; an exception, a cancellation or close() is an error.
        return await awaiting(func(*args, **kwargs))

    return tracked


class Meter(_MeterAPI, core.MeterCore):
    """Meter(clock=None): one set of the five counters (see docs/concepts.md).

    ``clock``, if given, is a zero-argument callable returning monotonic
    integer nanoseconds (for tests and simulation); by default the meter reads
    the clock of ``time.monotonic_ns()`` directly.  A clock that raises or
    returns a non-int is a fault: the reading counts as no time passed, and the
    fault is logged once and counted (``querymeter.faults()``).

    - ``begin()`` returns a token; ``end(token, error=False)`` ends that query
      and returns its elapsed nanoseconds.  Ending a token twice, a token of
      another meter, or something that is not a token raises and changes
      nothing.
    - ``with meter.track():`` counts the block as one query (an error if it
      raises); ``@meter.tracked`` does the same for each call of a function.
    - ``snapshot()`` reads every counter at one instant.
    - ``meter_id`` identifies the meter (anew after fork) on its snapshots.
    - ``enable_statements()`` aggregates queries by statement
      (``meter.statements``); ``enable_sampling()`` captures single queries
      (``meter.samples()``).  See docs/statements.md.
    """

    __slots__ = ("_observing",)


_classes: dict[str, type[Meter]] = {core.IMPLEMENTATION: Meter}


def meter_class(implementation: str) -> type[Meter]:
    """The Meter class over the named core, "c" or "python" (for tests and benchmarks)."""
    if implementation not in ("c", "python"):
        raise ValueError(f'implementation must be "c" or "python", not {implementation!r}')
    cls = _classes.get(implementation)
    if cls is None:
        if implementation == "c":
            from .core import _c as _core  # raises ImportError where the C core was not built

            base: type[Any] = _core.MeterCore
        else:
            from .core import _py as _core_py

            base = _core_py.MeterCore
        namespace = {
            "__slots__": ("_observing",),
            "__doc__": Meter.__doc__,
            "__module__": __name__,
        }
        cls = cast("type[Meter]", type("Meter", (_MeterAPI, base), namespace))
        _classes[implementation] = cls
    return cls


def _after_fork_in_child() -> None:
    # A parent's thread may have held the lock at the fork.
    global _observing_lock
    _observing_lock = threading.Lock()
    # Queries in flight in the parent's other threads will never end in the
    # child: every meter starts again from zero there.
    for meter in list(_live_meters):
        meter._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_default_meter = Meter()


def default_meter() -> Meter:
    """The process-wide meter that the hooks count into unless given another."""
    return _default_meter


def meter_argument(meter: object) -> Meter:
    """The meter a ``meter=`` argument names: the one given, or the default meter.

    Raises TypeError, naming what was passed, for anything that is not a meter.
    """
    if meter is None:
        return _default_meter
    if not isinstance(meter, _MeterAPI):
        raise TypeError(f"meter must be a querymeter.Meter, not {type(meter).__name__}")
    return meter  # type: ignore[return-value]


def snapshot() -> Snapshot:
    """A snapshot of the default meter."""
    return _default_meter.snapshot()
