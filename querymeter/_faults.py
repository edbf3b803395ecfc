"""querymeter's own faults: logged once per cause, counted, never raised.

A fault is something that went wrong inside querymeter (an injected clock that
raised, a hook that could not install itself on a connection).  The
application must never see it: the hook carries on, the counters stay
consistent, and the fault is logged once per cause on the ``querymeter``
logger and counted, so that a dashboard can show it without a log flood.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["counts", "report"]

_logger = logging.getLogger("querymeter")
_lock = threading.Lock()
_counts: dict[str, int] = {}

# Causes are short fixed strings, but a bug could make them vary: the table is
# capped and the overflow is counted under one cause of its own.
_MAX_CAUSES = 256
_OVERFLOW_CAUSE = "other causes (too many distinct causes to list)"


def report(cause: str, exc: BaseException | None = None) -> None:
    """Count a fault of querymeter's own; log it the first time its cause is seen."""
    try:
        with _lock:
            if cause not in _counts and len(_counts) >= _MAX_CAUSES:
                cause = _OVERFLOW_CAUSE
            first = cause not in _counts
            _counts[cause] = _counts.get(cause, 0) + 1
        if first:
            _logger.warning(
                "querymeter fault: %s (the application is unaffected; "
                "further faults of this cause are counted, not logged)",
                cause,
                exc_info=exc,
            )
    except BaseException:  # noqa: BLE001, S110 - reporting a fault must never raise
        pass


def counts() -> dict[str, int]:
    """How many faults of each cause querymeter has absorbed in this process."""
    with _lock:
        return dict(_counts)
