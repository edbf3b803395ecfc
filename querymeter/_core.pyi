"""The counters in C: the hot path of every query (stub; must match _core_py.py)."""

from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, TypeVar, final

_F = TypeVar("_F", bound=Callable[..., Any])
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
    def track(self) -> Tracker: ...
    def _timed(self, func: _F) -> _F: ...
    def _read(self, cls: type[_T]) -> _T: ...
    def _reset(self, meter_id: int) -> None: ...
