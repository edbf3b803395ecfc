"""The counters in pure Python: the twin of the C core, with identical behaviour.

Everything here mirrors ``_core.c`` line for line in meaning: the same
bookkeeping (DESIGN §1), the same clamping of out-of-order readings, the same
handling of a faulty injected clock, the same token rules and messages.  Only
the hot path lives here; the API around it is in ``meter.py``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar

from . import _faults

__all__ = ["MeterCore", "Token", "Tracker"]

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T", bound=tuple[Any, ...])

_tuple_new = tuple.__new__

# Serials come from one counter for the whole process, never from id(): a dead
# meter's id can be reused, and its stale tokens must not match the new meter.
_serials = itertools.count(1)

# The clock time.monotonic_ns() reads; the C core reads the same one directly.
_monotonic_ns = time.monotonic_ns
_wall_ns = time.time_ns
_NO_READING = -(2**63)


def _user_clock_ns(clock: Callable[[], int]) -> int:
    """Read an injected clock; a fault counts as "no time passed" and is reported."""
    try:
        reading = clock()
    except BaseException as exc:  # noqa: BLE001 - whatever the clock raises is its fault
        _faults.report("clock raised", exc)
        return _NO_READING
    if not isinstance(reading, int):
        _faults.report(
            "clock returned a non-int", TypeError("the clock must return int nanoseconds")
        )
        return _NO_READING
    if not -(2**63) <= reading < 2**63:
        _faults.report(
            "clock overflowed", OverflowError("the clock reading does not fit in 64 bits")
        )
        return _NO_READING
    return int(reading)


class Token:
    """A query in flight, returned by begin() and passed to end()."""

    __slots__ = ("_ended", "_epoch", "_serial", "_start_ns")

    _ended: bool
    _epoch: int
    _serial: int
    _start_ns: int

    def __init__(self) -> None:
        raise TypeError("cannot create 'querymeter._core_py.Token' instances")

    def __repr__(self) -> str:
        ended = ", ended" if self._ended else ""
        return f"<querymeter token started at {self._start_ns} ns{ended}>"


def _new_token(serial: int, epoch: int, start_ns: int) -> Token:
    token = object.__new__(Token)
    token._serial = serial
    token._epoch = epoch
    token._start_ns = start_ns
    token._ended = False
    return token


class MeterCore:
    """MeterCore(clock=None, *, meter_id=0)

    The counters of one meter.
    """

    __slots__ = (
        "__weakref__",
        "_busy_ns",
        "_clock",
        "_concurrency",
        "_epoch",
        "_errors",
        "_initialized",
        "_lock",
        "_meter_id",
        "_queries",
        "_serial",
        "_stamp_ns",
        "_start_ns",
        "_total_ns",
    )

    _busy_ns: int
    _clock: Callable[[], int] | None
    _concurrency: int
    _epoch: int
    _errors: int
    _initialized: bool
    _lock: threading.Lock
    _meter_id: int
    _queries: int
    _serial: int
    _stamp_ns: int
    _start_ns: int
    _total_ns: int

    def __new__(cls, *args: Any, **kwargs: Any) -> MeterCore:
        # As in C: a meter whose __init__ was skipped still counts.
        self = super().__new__(cls)
        self._lock = threading.Lock()
        self._clock = None
        self._initialized = False
        self._serial = next(_serials)
        self._epoch = 0
        self._meter_id = 0
        self._start(_monotonic_ns())
        return self

    def __init__(self, clock: Callable[[], int] | None = None, *, meter_id: int = 0) -> None:
        if not isinstance(meter_id, int):
            raise TypeError(f"meter_id must be an int, not {type(meter_id).__name__}")
        if not 0 <= meter_id < 2**64:
            raise OverflowError("meter_id must fit in 64 unsigned bits")
        if self._initialized:
            raise RuntimeError("a meter cannot be initialised twice")
        if clock is not None and not callable(clock):
            raise TypeError(
                "clock must be a callable returning int nanoseconds, or None, "
                f"not {type(clock).__name__}"
            )
        self._initialized = True
        self._meter_id = int(meter_id)
        self._clock = clock
        self._start(self._now())

    @property
    def meter_id(self) -> int:
        """Identity of this meter, stamped on its readings; new after fork."""
        return self._meter_id

    def _start(self, now: int) -> None:
        self._start_ns = now
        self._stamp_ns = now
        self._concurrency = 0
        self._queries = 0
        self._errors = 0
        self._busy_ns = 0
        self._total_ns = 0

    def _now(self) -> int:
        clock = self._clock
        if clock is None:
            return _monotonic_ns()
        return _user_clock_ns(clock)

    def _injected_reading(self) -> int | None:
        """The injected clock's reading, taken before the lock; None for the built-in clock.

        The built-in clock is read under the lock, as the C core reads it under
        the GIL: a reading taken outside could reach the counters after a
        snapshot that reported a later instant, and re-attribute time already
        reported.  An injected clock runs Python code, so it cannot be read
        under the lock (it could deadlock); both cores read it outside.
        """
        clock = self._clock
        if clock is None:
            return None
        return _user_clock_ns(clock)

    # The three critical sections; callers hold the lock.

    def _advance(self, now: int) -> int:
        # Readings from different threads can arrive out of order, and an
        # injected clock can run back: time never runs back for the counters.
        if now < self._stamp_ns:
            now = self._stamp_ns
        if self._concurrency > 0:
            elapsed = now - self._stamp_ns
            self._busy_ns += elapsed
            self._total_ns += elapsed * self._concurrency
        self._stamp_ns = now
        return now

    def _begin_locked(self, now: int) -> int:
        now = self._advance(now)
        self._concurrency += 1
        return now

    def _end_locked(self, now: int, start_ns: int, error: bool) -> int:
        now = self._advance(now)
        # Never below zero, whatever a caller did (as in C).
        if self._concurrency > 0:
            self._concurrency -= 1
        self._queries += 1
        if error:
            self._errors += 1
        return now - start_ns if now > start_ns else 0

    def begin(self) -> Token:
        """begin() -> token

        Start a query; pass the token to end().
        """
        reading = self._injected_reading()
        with self._lock:
            start = self._begin_locked(_monotonic_ns() if reading is None else reading)
            return _new_token(self._serial, self._epoch, start)

    def end(self, token: Token, error: bool = False) -> int:
        """end(token, error=False) -> int

        End the query that begin() returned `token` for; return its elapsed ns.
        """
        if type(token) is not Token:
            raise TypeError(
                f"end() expects a token returned by begin(), not {type(token).__name__}"
            )
        failed = bool(error)
        if token._serial != self._serial:
            raise ValueError("end() got a token that belongs to another meter")
        with self._lock:
            # Marked under the lock, before the clock runs: as in C, a second
            # end() of the same token raises and changes nothing.
            if token._ended:
                raise ValueError("end() got a token that has already ended")
            token._ended = True
        reading = self._injected_reading()
        with self._lock:
            now = _monotonic_ns() if reading is None else reading
            if token._epoch == self._epoch:
                return self._end_locked(now, token._start_ns, failed)
        return _elapsed_since(now, token._start_ns)

    def track(self) -> Tracker:
        """track() -> context manager counting its block as one query."""
        return Tracker(self)

    def _timed(self, func: _F) -> _F:
        """_timed(func) -> callable counting each call of func as one query."""
        if not callable(func):
            raise TypeError(f"cannot track {type(func).__name__}: it is not callable")
        reading = self._injected_reading
        lock = self._lock
        begin = self._begin_locked
        end = self._end_locked

        def timed(*args: Any, **kwargs: Any) -> Any:
            injected = reading()
            with lock:
                start = begin(_monotonic_ns() if injected is None else injected)
                epoch = self._epoch
            try:
                result = func(*args, **kwargs)
            except BaseException:
                injected = reading()
                with lock:
                    if epoch == self._epoch:
                        end(_monotonic_ns() if injected is None else injected, start, True)
                raise
            injected = reading()
            with lock:
                if epoch == self._epoch:
                    end(_monotonic_ns() if injected is None else injected, start, False)
            return result

        return timed  # type: ignore[return-value]

    def _read(self, cls: type[_T]) -> _T:
        """_read(cls) -> cls((uptime_ns, queries, errors, concurrency, total_ns, busy_ns,
        wall_ns, meter_id))"""
        if not (isinstance(cls, type) and issubclass(cls, tuple)):
            raise TypeError("_read() needs a tuple subclass")
        reading = self._injected_reading()
        with self._lock:
            # Catch up to `now` exactly as begin would, on copies.
            now = _monotonic_ns() if reading is None else reading
            if now < self._stamp_ns:
                now = self._stamp_ns
            busy = self._busy_ns
            total = self._total_ns
            concurrency = self._concurrency
            if concurrency > 0:
                elapsed = now - self._stamp_ns
                busy += elapsed
                total += elapsed * concurrency
            counters = (
                now - self._start_ns,
                self._queries,
                self._errors,
                concurrency,
                total,
                busy,
                _wall_ns(),
                self._meter_id,
            )
        return _tuple_new(cls, counters)

    def _reset(self, meter_id: int) -> None:
        """_reset(meter_id) -> None

        Start again from zero under a new identity; tokens from before go inert.
        """
        if not isinstance(meter_id, int):
            raise TypeError("meter_id must be an int")
        if not 0 <= meter_id < 2**64:
            raise OverflowError("meter_id must fit in 64 unsigned bits")
        # After fork() the parent's lock may be held by a thread that does not
        # exist in the child: replace it rather than wait on it.
        self._lock = threading.Lock()
        reading = self._injected_reading()
        with self._lock:
            self._start(_monotonic_ns() if reading is None else reading)
            self._epoch += 1
            self._meter_id = int(meter_id)


def _elapsed_since(now: int, start_ns: int) -> int:
    return now - start_ns if now > start_ns else 0


class Tracker:
    """Counts a `with` block as one query; an exception counts as an error."""

    __slots__ = ("_elapsed_ns", "_entered", "_epoch", "_meter", "_start_ns")

    def __init__(self, meter: MeterCore) -> None:
        self._meter = meter
        self._start_ns = 0
        self._epoch = 0
        self._elapsed_ns = -1
        self._entered = False

    @property
    def elapsed_ns(self) -> int | None:
        """Elapsed ns of the block once it has ended, else None."""
        return None if self._elapsed_ns < 0 else self._elapsed_ns

    def __enter__(self) -> Tracker:
        meter = self._meter
        with meter._lock:
            if self._entered:
                raise RuntimeError(
                    "this track() block is already running; use a new track() for each block"
                )
            self._entered = True
            self._elapsed_ns = -1
        reading = meter._injected_reading()
        with meter._lock:
            self._start_ns = meter._begin_locked(_monotonic_ns() if reading is None else reading)
            self._epoch = meter._epoch
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]:
        meter = self._meter
        with meter._lock:
            if not self._entered:
                raise RuntimeError("__exit__() called on a track() block that is not running")
            self._entered = False
            start = self._start_ns
            epoch = self._epoch
        reading = meter._injected_reading()
        with meter._lock:
            now = _monotonic_ns() if reading is None else reading
            if epoch == meter._epoch:
                self._elapsed_ns = meter._end_locked(now, start, exc_type is not None)
            else:
                self._elapsed_ns = _elapsed_since(now, start)
        # Never suppress the block's exception.
        return False
