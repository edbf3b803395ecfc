"""Profiling sessions: detailed capture on a leash, focused by scope, reported and saved.

``querymeter.profile(...)`` runs a session; its :class:`Report` holds what was
found with the settings that found it; ``querymeter.overhead()`` is what the
instrumentation itself costs per query (the observer effect).  See
docs/profiling.md.
"""

from ._overhead import overhead
from ._report import Change, Comparison, Report
from ._session import Session, profile

__all__ = ["Change", "Comparison", "Report", "Session", "overhead", "profile"]
