"""Chooses the counter core: the C extension unless QUERYMETER_PURE_PYTHON=1.

Python first, C overrides it: type checkers see the typed Python twin, and an
interpreter without the compiled module still works.  ``IMPLEMENTATION`` says
which one is in use ("c" or "python").
"""

from __future__ import annotations

import os

from ._py import MeterCore, Occupancies, Sampling, Statements, Token, Tracker

__all__ = [
    "IMPLEMENTATION",
    "MeterCore",
    "Occupancies",
    "Sampling",
    "Statements",
    "Token",
    "Tracker",
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
