"""The counters in C: the hot path of every query (stub; must match _py.py)."""

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Literal, TypeVar, final

_F = TypeVar("_F", bound=Callable[..., Any])
_R = TypeVar("_R")
_T = TypeVar("_T", bound=tuple[Any, ...])

@final
class Token:
    """A query in flight, returned by begin() and passed to end()."""

@final
class Tracker:
    """Counts a `with` block as one query; an exception counts as an error."""

    @property
    def elapsed_ns(self) -> int | None: ...
    def __enter__(self) -> Tracker: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> Literal[False]: ...

@final
class Occupancies:
    """Occupancy counters on a meter's clock, made by meter._occupancies(count)."""

    def _timed(self, index: int, func: _F, timeout: type[BaseException] | None = None) -> _F: ...
    def _hold(self, index: int, records: dict[int, Any], key: int, record: object) -> bool: ...
    def _release(self, index: int, records: dict[int, Any], key: int, record: object) -> bool: ...
    def _drop_lost(self, index: int, records: dict[int, Any]) -> int: ...
    def _bump(self, index: int) -> None: ...
    def _read(self) -> tuple[int, int, tuple[tuple[int, int, int, int, int], ...]]: ...

class MeterCore:
    """MeterCore(clock=None, *, meter_id=0)

    The counters of one meter.
    """

    def __init__(self, clock: Callable[[], int] | None = None, *, meter_id: int = 0) -> None: ...
    @property
    def meter_id(self) -> int:
        """Identity of this meter, stamped on its readings; new after fork."""
    def begin(self) -> Token: ...
    def end(self, token: Token, error: bool = False) -> int: ...
    def track(self, sql: str | None = None) -> Tracker: ...
    def _track_statement(self, sql: str | None, dialect: str | None) -> Tracker: ...
    def _timed(self, func: _F) -> _F: ...
    def _timed_statement(self, func: _F, dialect: str | None, layout: int = 0) -> _F: ...
    def _call(self, func: Callable[..., _R], /, *args: Any, **kwargs: Any) -> _R: ...
    def _call_statement(
        self,
        dialect: str | None,
        layout: int,
        func: Callable[..., _R],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> _R: ...
    def _observe(
        self,
        statements: Statements | None,
        sampling: Sampling | None,
        observer: Callable[..., object] | None,
    ) -> None: ...
    def _observe_session(
        self, statements: Statements | None, sampling: Sampling | None, focus: Any
    ) -> None: ...
    def _awaiting(
        self, awaitable: Awaitable[_R], statement: tuple[Any, ...] | None = None, /
    ) -> Awaitable[_R]: ...
    def _iterating(
        self, iterator: Iterable[_R], statement: tuple[Any, ...] | None = None, /
    ) -> Iterator[_R]: ...
    def _async_iterating(
        self, iterator: AsyncIterator[_R], statement: tuple[Any, ...] | None = None, /
    ) -> AsyncIterator[_R]: ...
    def _occupancies(self, count: int) -> Occupancies: ...
    def _read(self, cls: type[_T]) -> _T: ...
    def _reset(self, meter_id: int) -> None: ...
    def oldest_in_flight_ns(self) -> int | None: ...
    def _share(self, mapping: Any, fd: int, slot: int, meter_id: int) -> None: ...

class Statements:
    """Statements(miss, max_statements, cache_limit, region=None, lock_fd=-1)

    A meter's statement table: figures per fingerprint, found by exact text;
    with a region, the table many processes share in it.
    """

    def __init__(
        self,
        miss: Callable[[Any, str | None], tuple[Any, ...]],
        max_statements: int,
        cache_limit: int,
        region: Any = None,
        lock_fd: int = -1,
    ) -> None: ...
    @property
    def size(self) -> int:
        """How many statements the table holds."""
    def _record(
        self,
        sql: Any,
        dialect: str | None,
        elapsed_ns: int,
        error: bool,
        rows: int,
        times: int = 1,
    ) -> None: ...
    def _read(
        self,
    ) -> tuple[int, tuple[Any, ...], tuple[Any, ...], tuple[tuple[Any, ...], ...]]: ...
    def _read_rows(
        self,
    ) -> tuple[int, tuple[Any, ...], tuple[Any, ...], tuple[tuple[Any, ...], ...]]: ...
    def _changed(
        self, rows: dict[str, tuple[Any, ...]], earlier: dict[str, tuple[Any, ...]], top: int
    ) -> tuple[list[str], int, int]: ...
    def _totals(self, rows: Iterable[tuple[Any, ...]]) -> tuple[int, int, int, int, int, int]: ...

class Sampling:
    """Sampling(rate, threshold_ns, capture, seed)

    Which counted queries a meter captures: at random, and every slow one.
    """

    def __init__(
        self, rate: float, threshold_ns: int, capture: Callable[..., Any], seed: int
    ) -> None: ...
    def _chooses(self, elapsed_ns: int) -> bool: ...

@final
class Scope:
    """A scope's figures, made by _enter_scope(focus, tags): the queries counted inside it."""

    def _retag(self, focus: frozenset[Any] | None, tags: Any) -> None: ...
    def _tags(self) -> Any: ...
    def _read(self) -> tuple[int, int, int, dict[Any, int], dict[Any, Any]]: ...

def _set_enabled(flag: object) -> None: ...
def _enabled() -> bool: ...
def _enter_scope(focus: frozenset[Any] | None, tags: Any) -> tuple[Scope, Any]: ...
def _exit_scope(token: Any) -> None: ...
def _current_scope() -> Scope | None: ...
def _shared_claim(
    mapping: Any, fd: int, pid: int, start_ticks: int, wall_ns: int
) -> tuple[int, int] | None: ...
def _shared_settle(mapping: Any, fd: int, slot: int, generation: int, dead: int) -> int: ...
def _shared_read(
    mapping: Any, fd: int
) -> tuple[tuple[int, ...], tuple[tuple[Any, ...], ...], tuple[int, int, int]]: ...
