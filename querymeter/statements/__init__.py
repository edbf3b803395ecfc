"""Statements: what the application runs, by shape.

``fingerprint()`` gives a statement's shape; a meter's statement table
(``meter.enable_statements()``) aggregates its queries by that shape, and its
sampling (``meter.enable_sampling()``) keeps single queries.  See
docs/statements.md.
"""

from ._fingerprint import fingerprint, statement_id, tables_of
from ._readings import StatementsInterval, StatementsSnapshot, StatementStats
from ._sampling import QuerySample, SampleLog, redact
from ._table import MAX_SQL_CHARS, StatementTable

__all__ = [
    "MAX_SQL_CHARS",
    "QuerySample",
    "SampleLog",
    "StatementStats",
    "StatementTable",
    "StatementsInterval",
    "StatementsSnapshot",
    "fingerprint",
    "redact",
    "statement_id",
    "tables_of",
]
