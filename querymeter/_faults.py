"""querymeter's own faults: logged once per cause, counted, never raised.

A fault is something that went wrong inside querymeter (an injected clock that
raised, a hook that could not install itself on a connection).  The
application must never see it: the hook carries on, the counters stay
consistent, and the fault is counted and logged once per cause on the
``querymeter`` logger, as one line (the cause, and the exception's type and
message), so that a dashboard can show it without a log flood.  The traceback
is added only where the ``querymeter`` logger is enabled for DEBUG.
"""

from __future__ import annotations

import logging
import os
import threading

__all__ = ["counts", "report"]

_logger = logging.getLogger("querymeter")
_lock = threading.Lock()
_counts: dict[str, int] = {}

# Causes are short fixed strings, but a bug could make them vary: the table is
# capped and the overflow is counted under one cause of its own.
_MAX_CAUSES = 256
_OVERFLOW_CAUSE = "other causes (too many distinct causes to list)"
# An exception's message is cut to this many characters in the one line logged.
_MAX_MESSAGE = 300


def report(cause: str, exc: BaseException | None = None) -> None:
    """Count a fault of querymeter's own; log it the first time its cause is seen.

    Never raises an ``Exception``; a KeyboardInterrupt or SystemExit arriving
    meanwhile is the application's, and propagates.
    """
    try:
        with _lock:
            if cause not in _counts and len(_counts) >= _MAX_CAUSES:
                cause = _OVERFLOW_CAUSE
            first = cause not in _counts
            _counts[cause] = _counts.get(cause, 0) + 1
        if first:
            _logger.warning(
                "querymeter fault: %s%s (the application is unaffected; "
                "further faults of this cause are counted, not logged)",
                cause,
                _describe(exc),
                # A traceback is many lines on the application's stderr (the
                # last-resort handler): only for who asked for DEBUG.
                exc_info=exc if exc is not None and _logger.isEnabledFor(logging.DEBUG) else None,
            )
    except Exception:  # noqa: BLE001, S110 - reporting a fault must never raise
        pass


def _describe(exc: BaseException | None) -> str:
    """``": <type>: <message>"`` on one line, or nothing without an exception."""
    if exc is None:
        return ""
    kind = type(exc)
    name = kind.__qualname__
    if kind.__module__ != "builtins":
        name = f"{kind.__module__}.{name}"
    try:
        message = " ".join(str(exc).split())
    except Exception:  # noqa: BLE001 - an exception whose str() fails still has a type
        message = "<the message could not be read>"
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return f": {name}: {message}" if message else f": {name}"


def counts() -> dict[str, int]:
    """How many faults of each cause querymeter has absorbed in this process."""
    with _lock:
        return dict(_counts)


def _after_fork_in_child() -> None:
    # Another thread of the parent may have held the lock at the fork: in the
    # child it would never be released.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
