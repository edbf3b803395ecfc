"""Chooses the counter core: the C extension unless QUERYMETER_PURE_PYTHON=1.

Python first, C overrides it: type checkers see the typed Python twin, and an
interpreter without the compiled module still works.  ``IMPLEMENTATION`` says
which one is in use ("c" or "python").  Both are loaded where C is built
(meters of either can exist: ``meter_class``), so what concerns every meter of
the process, the kill switch and the scopes, is set on both: ``cores()``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from . import _py
from ._py import MeterCore, Occupancies, Sampling, Statements, Token, Tracker

__all__ = [
    "IMPLEMENTATION",
    "MeterCore",
    "Occupancies",
    "Sampling",
    "Statements",
    "Token",
    "Tracker",
    "cores",
    "enabled",
    "set_enabled",
]

IMPLEMENTATION = "python"

# Strict parsing, as for every switch of ours: only "1" turns it on.
if os.environ.get("QUERYMETER_PURE_PYTHON", "0") != "1":
    try:
        from ._c import (  # type: ignore[assignment]
            MeterCore,
            Occupancies,
            Sampling,
            Statements,
            Token,
            Tracker,
        )

        IMPLEMENTATION = "c"
    except ImportError:
        pass


def cores() -> list[Any]:
    """Every core module loaded: the Python twin, and the C core where it is built."""
    loaded: list[Any] = [_py]
    c_core = sys.modules.get("querymeter.core._c")
    if c_core is None:
        try:
            from . import _c as c_core
        except ImportError:
            c_core = None
    if c_core is not None:
        loaded.append(c_core)
    return loaded


def set_enabled(flag: bool) -> None:
    """The kill switch of every core: while off, no query begins anywhere."""
    for module in cores():
        module._set_enabled(flag)


def enabled() -> bool:
    """Whether queries are counted (the kill switch is on)."""
    return all(module._enabled() for module in cores())
