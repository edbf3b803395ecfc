"""Instrument the drivers a test suite uses as the interpreter starts, before the suite imports.

Python imports ``sitecustomize`` at start-up from the first directory of
``sys.path`` that has one: the runner puts this folder first on PYTHONPATH, so
every interpreter of a suite's run, subprocesses included, starts counted.

- ``QUERYMETER_TRANSPARENCY_DRIVERS``: comma-separated modules to instrument
  (``sqlite3``, ``psycopg2``, ...; ``sqlalchemy`` means
  ``querymeter.sqlalchemy.instrument_all()``).
- ``QUERYMETER_TRANSPARENCY_MODE``: ``on`` instruments them; ``off`` only
  imports them, so that an uninstrumented run loads the very same modules.
- ``QUERYMETER_TRANSPARENCY_REPORT``: a file to which each instrumented
  process appends one JSON line at exit (the default meter's counters and
  querymeter's faults): the proof that instrumentation was active.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os


def _report(path: str, drivers: list[str]) -> None:
    import querymeter

    reading = querymeter.snapshot()
    line = {
        "pid": os.getpid(),
        "implementation": querymeter.IMPLEMENTATION,
        "drivers": drivers,
        "queries": reading.queries,
        "errors": reading.errors,
        "concurrency": reading.concurrency,
        "faults": querymeter.faults(),
    }
    # One write in append mode: lines of concurrent processes do not interleave.
    with open(path, "a", encoding="utf-8") as report:
        report.write(json.dumps(line) + "\n")


def _start() -> None:
    drivers = [
        name for name in os.environ.get("QUERYMETER_TRANSPARENCY_DRIVERS", "").split(",") if name
    ]
    if not drivers:
        return
    mode = os.environ.get("QUERYMETER_TRANSPARENCY_MODE", "on")
    if mode == "off":
        for name in drivers:
            importlib.import_module(name)
        return
    if mode != "on":
        raise ValueError(f"QUERYMETER_TRANSPARENCY_MODE must be 'on' or 'off', not {mode!r}")

    import querymeter
    import querymeter.dbapi

    for name in drivers:
        if name == "sqlalchemy":
            import querymeter.sqlalchemy

            querymeter.sqlalchemy.instrument_all()
            continue
        module = importlib.import_module(name)
        querymeter.dbapi.instrument(module)
        if querymeter.dbapi.instrumented_meter(module) is not querymeter.default_meter():
            raise RuntimeError(f"{name} is not instrumented with the default meter")
    path = os.environ.get("QUERYMETER_TRANSPARENCY_REPORT")
    if path:
        atexit.register(_report, path, drivers)


_start()
