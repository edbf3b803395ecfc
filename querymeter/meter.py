"""Meter: the public counter API over the chosen core, the default meter, fork safety."""

from __future__ import annotations

import functools
import inspect
import os
import secrets
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, cast, overload

from . import core
from .readings import Snapshot

if TYPE_CHECKING:
    from .core import Token

__all__ = ["Meter", "default_meter", "meter_argument", "meter_class", "snapshot"]

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


# Every live meter, so that a forked child can restart them all.
_live_meters: weakref.WeakSet[Any] = weakref.WeakSet()


class _MeterAPI:
    """The public API of a meter, over either core (see ``meter_class``).

    Stateless: all state is the core's, so this one mixin serves both cores.
    """

    __slots__ = ()

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        super().__init__(clock, meter_id=_new_meter_id())  # type: ignore[call-arg]
        _live_meters.add(self)

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
    """

    __slots__ = ()


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
        namespace = {"__slots__": (), "__doc__": Meter.__doc__, "__module__": __name__}
        cls = cast("type[Meter]", type("Meter", (_MeterAPI, base), namespace))
        _classes[implementation] = cls
    return cls


def _after_fork_in_child() -> None:
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
