"""Health triage: is the database all right, as the application sees it, and how bad is it?

``querymeter.health()`` gathers the figures (connection, errors and response
time against a baseline, pools, stuck queries, markers, the initial scope)
and grades them SEV-1, SEV-2, SEV-3 or OK by the triage table in
:mod:`querymeter.triage._rules`.  See docs/incident-response.md.
"""

from ._connect import Connectivity
from ._health import Baseline, Health, PoolHealth, health
from ._rules import RULES, Finding, Rule
from ._scope import Part, ScopeBreakdown, tables_of

__all__ = [
    "RULES",
    "Baseline",
    "Connectivity",
    "Finding",
    "Health",
    "Part",
    "PoolHealth",
    "Rule",
    "ScopeBreakdown",
    "health",
    "tables_of",
]
