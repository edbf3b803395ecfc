"""The demo: a small shop workload, driven at increasing concurrency and metered.

A few tables (customers, products, orders, order items), seeded once; each
worker thread runs a mix of reads and writes through the instrumented
DB-API driver, against an embedded SQLite database in a temporary file, a
PostgreSQL server (psycopg 3) or a MariaDB/MySQL server (PyMySQL).  Each
concurrency level runs for a fixed time and gives one Interval of the meter:
one (N, X) point for the Universal Scalability Law.

The workload lives in ``_workload``, the databases it runs on and the URLs
that name them in ``_targets``.
"""

from __future__ import annotations

from ._targets import (
    CUSTOMERS,
    HISTORY_ORDERS,
    PRODUCTS,
    Database,
    DatabaseURL,
    MySQLDatabase,
    PostgresDatabase,
    SQLiteDatabase,
    open_database,
    parse_database_url,
)
from ._workload import (
    DEFAULT_DURATION_S,
    DEFAULT_LEVELS,
    RECENT_ORDERS,
    WARM_UP_S,
    Level,
    Progress,
    run_levels,
)

__all__ = [
    "CUSTOMERS",
    "DEFAULT_DURATION_S",
    "DEFAULT_LEVELS",
    "HISTORY_ORDERS",
    "PRODUCTS",
    "RECENT_ORDERS",
    "WARM_UP_S",
    "Database",
    "DatabaseURL",
    "Level",
    "MySQLDatabase",
    "PostgresDatabase",
    "Progress",
    "SQLiteDatabase",
    "open_database",
    "parse_database_url",
    "run_levels",
]
