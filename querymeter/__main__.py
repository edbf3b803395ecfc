"""python -m querymeter: count a small SQLite workload and print what the meter saw."""

from __future__ import annotations

import sqlite3
import sys

import querymeter


def main() -> int:
    meter = querymeter.Meter()
    connection = sqlite3.connect(":memory:")
    execute = meter.tracked(connection.execute)
    before = meter.snapshot()
    execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
    for n in range(1000):
        execute("INSERT INTO item (name) VALUES (?)", (f"item {n}",))
    for n in range(1000):
        execute("SELECT name FROM item WHERE id = ?", (n,)).fetchall()
    after = meter.snapshot()
    print(f"querymeter {querymeter.__version__} ({querymeter.IMPLEMENTATION} core)")
    print(after)
    print(after - before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
