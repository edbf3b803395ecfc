"""Comparing what a counted driver does with what the raw driver does, call by call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def outcome(action: Callable[[], Any], cursor_types: tuple[type, ...]) -> tuple[Any, ...]:
    """What an action gave: its result (any cursor as such), or its exception's type and message.

    Cursors are compared as "a cursor": a counted connection's cursor is a
    different object of a subclass, which is the point.
    """
    try:
        result = action()
    except Exception as exc:
        message = str(exc).splitlines()
        return ("raised", type(exc), message[0] if message else "")
    if isinstance(result, cursor_types):
        return ("returned a cursor",)
    return ("returned", result)
